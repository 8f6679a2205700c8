//! The `scraper` and `learning_engine` examples, run with small sizes.
//!
//! Both example files are compiled into this binary as modules (`#[path]`), so the tests
//! run the examples' own code, not a copy: in-process through their `run` functions
//! (checking the report's structure), and as child processes through their `main` (exit
//! code and printed report). No test harness: `main` below is the test runner, and — when
//! `LUCA_EXAMPLE_CHILD` names an example — that example's `main`, with the arguments
//! given. Spawning `cargo run --example` instead would need a second cargo on the same
//! target directory, with feature flags that may differ from this build's (under
//! `cargo test --workspace --all-features` a plain `cargo run --example` resolves other
//! features and rebuilds much of the tree), so a fresh clone would pay minutes.

mod harness;
#[path = "../learning_engine.rs"]
mod learning_engine;
#[path = "../scraper.rs"]
mod scraper;

use harness::{Test, os, run_child, runtime};
use std::process::ExitCode;
use std::time::Duration;

use learning_engine::{PatternStore, SqliteStore, Table};

const TESTS: [Test; 8] = [
    ("scraper_report_in_process", scraper_report_in_process),
    ("scraper_process_exits_0", scraper_process_exits_0),
    (
        "scraper_stopped_run_exits_1_and_the_next_drops_its_retries",
        scraper_stopped_then_rerun,
    ),
    ("scraper_bad_flags", scraper_bad_flags),
    (
        "learning_engine_ranking_in_process",
        learning_engine_ranking_in_process,
    ),
    (
        "learning_engine_process_exits_0_twice_on_one_file",
        learning_engine_process_twice,
    ),
    ("learning_engine_bad_flags", learning_engine_bad_flags),
    (
        "learning_engine_proof_catches_lost_and_double_updates",
        proof_catches_bad_stores,
    ),
];

fn main() -> ExitCode {
    harness::main(&TESTS, |example| match example {
        "scraper" => Some(scraper::main()),
        "learning_engine" => Some(learning_engine::main()),
        _ => None,
    })
}

/// The scraper's report has every part the README quotes, and its checks pass.
fn scraper_report_in_process() {
    let cfg = scraper::parse_args(os(&["--pages", "4", "--tasks", "8", "--deadline", "20"]))
        .expect("valid flags");
    let report = runtime()
        .block_on(scraper::run(&cfg))
        .expect("the crawl runs");
    let t = &report.text;
    assert!(report.passed(), "checks failed: {:?}\n{t}", report.failed);
    assert!(t.contains("crawl finished in "), "{t}");
    for role in ["healthy", "flaky (503)", "rate-limited (429)", "stalling"] {
        let row = t
            .lines()
            .find(|l| l.starts_with("127.0.0.1:") && l.contains(role))
            .unwrap_or_else(|| panic!("no row for the {role} host:\n{t}"));
        // ok column: the host's index and its 4 pages, all fetched in the end.
        let ok: u64 = row
            .split_once(role)
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ok, 5, "{row}");
    }
    assert!(t.contains("0 still queued"), "{t}");
    assert!(
        t.contains("scraper_retry_queue`:") && t.contains(" 0 left"),
        "{t}"
    );
    assert!(t.contains("breaker: 4 hosts tracked"), "{t}");
    assert!(t.contains("metric             count"), "{t}");
    assert!(t.contains("\nrequests "), "{t}");
    assert_eq!(t.matches("\n  ok   ").count(), 10, "{t}");
    assert!(!t.contains("FAIL"), "{t}");
}

/// The scraper as a process: exit code 0 and the final report on stdout.
fn scraper_process_exits_0() {
    let child = run_child(
        "scraper",
        &["--pages", "3", "--tasks", "4", "--deadline", "20"],
    );
    let out = &child.stdout;
    assert!(
        child.status.success(),
        "exit {:?}\n{out}\n{}",
        child.status,
        child.stderr
    );
    assert!(
        out.starts_with("scraper: 4 hosts on 127.0.0.1, 3 pages each, 4 fetch tasks"),
        "{out}"
    );
    assert!(out.contains("crawl finished in "), "{out}");
    assert!(out.contains("metric             count"), "{out}");
    assert!(out.contains("retries scheduled"), "{out}");
    assert!(out.contains("checks:\n"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

/// A crawl stopped by its deadline fails its checks and exits 1, leaving retries in the
/// queue's table; the next run on the same file drops them (their hosts are gone) and
/// passes. The rate-limited host's `Retry-After: 1` comes after the run's start, so a 1 s
/// deadline always stops the crawl with that retry still queued.
fn scraper_stopped_then_rerun() {
    let db = luca_testkit::TempDb::named("crawl.db");
    let path = db.path().to_str().expect("a UTF-8 temp path");
    let stopped = run_child(
        "scraper",
        &["--pages", "2", "--deadline", "1", "--db", path],
    );
    let out = &stopped.stdout;
    assert_eq!(stopped.status.code(), Some(1), "{out}\n{}", stopped.stderr);
    assert!(out.contains("crawl STOPPED AT THE DEADLINE"), "{out}");
    assert!(out.contains("  FAIL the retry queue is drained"), "{out}");
    let left: usize = out
        .split_once("retries scheduled, ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no queue line:\n{out}"));
    assert!(left >= 1, "{out}");

    let rerun = run_child(
        "scraper",
        &["--pages", "2", "--deadline", "20", "--db", path],
    );
    let out = &rerun.stdout;
    assert!(
        rerun.status.success(),
        "exit {:?}\n{out}\n{}",
        rerun.status,
        rerun.stderr
    );
    assert!(
        out.contains(&format!(
            "dropped {left} retries an earlier run left in `scraper_retry_queue`"
        )),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}

fn scraper_bad_flags() {
    assert_eq!(scraper::parse_args(os(&[])), Ok(scraper::Config::default()));
    let cfg = scraper::parse_args(os(&["--db", "x.db", "--deadline", "5"])).unwrap();
    assert_eq!(cfg.db.as_deref(), Some(std::path::Path::new("x.db")));
    assert_eq!(cfg.deadline, Duration::from_secs(5));
    for bad in [
        &["--pages", "0"][..],
        &["--tasks", "many"],
        &["--tasks"],
        &["--bogus"],
    ] {
        let err = scraper::parse_args(os(bad)).expect_err("refused");
        assert!(err.contains("usage: scraper"), "{bad:?}: {err}");
    }
    let child = run_child("scraper", &["--pages", "-1"]);
    assert_eq!(child.status.code(), Some(2), "{}", child.stderr);
    assert!(
        child
            .stderr
            .contains("`--pages` takes a number from 1 to 1000, not `-1`"),
        "{}",
        child.stderr
    );
    assert!(child.stdout.is_empty(), "{}", child.stdout);
}

/// The ranking lists every pattern once, best first, and the proof line says 0 lost.
fn learning_engine_ranking_in_process() {
    let cfg = learning_engine::parse_args(os(&["--tasks", "16", "--records", "40"])).unwrap();
    let report = runtime().block_on(learning_engine::run(&cfg)).unwrap();
    let t = &report.text;
    assert!(report.passed(), "{t}");
    assert_eq!((report.lost, report.rows_wrong, report.errors), (0, 0, 0));
    assert!(t.contains("recorded 640 in "), "{t}");
    assert!(
        t.contains("lost updates: 0 (acknowledged 640 records; the table's counts grew by 640"),
        "{t}"
    );
    let rates: Vec<f64> = t
        .lines()
        .skip_while(|l| !l.starts_with("rank"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            l.trim_end_matches('%')
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(rates.len(), 8, "{t}");
    assert!(
        rates.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {rates:?}\n{t}"
    );
    assert!(t.contains("best pattern per kind of site: shop -> "), "{t}");
}

/// The learning engine as a process, twice on one file: the second run adds to the
/// first's counts and still proves that it lost nothing.
fn learning_engine_process_twice() {
    let db = luca_testkit::TempDb::named("learning.db");
    let path = db.path().to_str().expect("a UTF-8 temp path");
    for _ in 0..2 {
        let child = run_child(
            "learning_engine",
            &["--tasks", "8", "--records", "25", "--db", path],
        );
        let out = &child.stdout;
        assert!(
            child.status.success(),
            "exit {:?}\n{out}\n{}",
            child.status,
            child.stderr
        );
        assert!(
            out.contains(
                "lost updates: 0 (acknowledged 200 records; the table's counts grew by 200"
            ),
            "{out}"
        );
        assert!(
            out.contains("ok: no update lost, no record failed"),
            "{out}"
        );
    }
    let conn = luca_core::rusqlite::Connection::open(db.path()).unwrap();
    let total: i64 = conn
        .query_row(
            "SELECT SUM(success_count + failure_count) FROM pattern_stats",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(total, 400);
}

fn learning_engine_bad_flags() {
    for bad in [
        &["--records", "0"][..],
        &["--tasks", "4097"],
        &["--db"],
        &["tasks"],
    ] {
        let err = learning_engine::parse_args(os(bad)).expect_err("refused");
        assert!(err.contains("usage: learning_engine"), "{bad:?}: {err}");
    }
    let child = run_child("learning_engine", &["--records", "ten"]);
    assert_eq!(child.status.code(), Some(2), "{}", child.stderr);
    assert!(
        child
            .stderr
            .contains("`--records` takes a number from 1 to 1000000, not `ten`"),
        "{}",
        child.stderr
    );
}

/// A store that acknowledges every `every`-th record without keeping it (`lose`), or
/// keeps it twice (`!lose`).
#[derive(Clone)]
struct FaultyStore {
    inner: SqliteStore,
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
    every: u64,
    lose: bool,
}

impl PatternStore for FaultyStore {
    async fn record(
        &self,
        kind: &'static str,
        pattern: &'static str,
        success: bool,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_multiple_of(self.every) {
            if self.lose {
                return Ok(());
            }
            self.inner.record(kind, pattern, success).await?;
        }
        self.inner.record(kind, pattern, success).await
    }
    async fn counts(&self) -> Result<Table, Box<dyn std::error::Error + Send + Sync>> {
        self.inner.counts().await
    }
    fn describe(&self) -> String {
        "a faulty store".into()
    }
    fn summary(&self) -> String {
        String::new()
    }
}

/// The end-of-run proof is not a formality: a store that drops acknowledged records, or
/// counts some twice, makes the run fail, with the numbers.
fn proof_catches_bad_stores() {
    let rt = runtime();
    for lose in [true, false] {
        let db = luca_testkit::TempDb::new();
        let report = rt.block_on(async {
            let store = FaultyStore {
                inner: SqliteStore::open(db.path()).await.unwrap(),
                seen: Default::default(),
                every: 10,
                lose,
            };
            let cfg = learning_engine::Config {
                tasks: 4,
                records: 25,
                db: None,
            };
            let report = learning_engine::run_on(&store, &cfg).await.unwrap();
            store.inner.close().await.unwrap();
            report
        });
        let t = &report.text;
        assert!(!report.passed(), "{t}");
        let expected = if lose { 10 } else { -10 };
        assert_eq!(report.lost, expected, "{t}");
        assert!(report.rows_wrong > 0, "{t}");
        assert!(
            t.contains(&format!(
                "lost updates: {expected} (acknowledged 100 records"
            )),
            "{t}"
        );
        assert!(t.contains("FAILED: the counts do not add up"), "{t}");
    }
}
