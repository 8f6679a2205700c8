//! The `learning_engine` example on PostgreSQL (`--postgres URL`), against a throwaway
//! server (`luca_testkit::TempPostgres`), with small sizes.
//!
//! As in `examples_run`, the example's own source is compiled in as a module and run
//! in-process (through `run`) and as child processes of this binary (through `main`, when
//! `LUCA_EXAMPLE_CHILD` is set). No test harness: `main` below is the test runner.
//!
//! Without PostgreSQL and without `CI` set, the tests that need a server print one loud
//! line saying what they skipped; with `CI` set they fail.

mod harness;
#[path = "../learning_engine.rs"]
mod learning_engine;

use harness::{Child, Test, os, runtime};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use learning_engine::{Database, PatternStore, PgStore, Table};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use luca_core::postgres::tokio_postgres::{self, NoTls};
use luca_testkit::TempPostgres;

const TESTS: [Test; 4] = [
    (
        "learning_engine_on_postgres_ranks_and_loses_nothing",
        ranking_in_process,
    ),
    (
        "learning_engine_on_postgres_process_exits_0_twice_on_one_database",
        process_twice,
    ),
    (
        "learning_engine_on_postgres_proof_catches_lost_and_double_updates",
        proof_catches_bad_stores,
    ),
    (
        "learning_engine_postgres_flags_and_unreachable_server",
        flags_and_unreachable_server,
    ),
];

fn main() -> ExitCode {
    harness::main(&TESTS, |example| {
        (example == "learning_engine").then(learning_engine::main)
    })
}

/// Runs this binary as the learning engine with `args`, for at most [`harness::CHILD_LIMIT`].
fn run_child(args: &[&str]) -> Child {
    harness::run_child("learning_engine", args)
}

/// A fresh database on the shared server, or `None` (skipped, outside CI) without
/// PostgreSQL.
fn fresh_database(test: &str) -> Option<String> {
    let pg = TempPostgres::shared_or_skip(test)?;
    Some(
        runtime()
            .block_on(pg.create_database())
            .expect("create a database"),
    )
}

/// The success rates of the ranking, in the order printed.
fn ranking_rates(t: &str) -> Vec<f64> {
    t.lines()
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
        .collect()
}

/// The same run as on SQLite: every pattern ranked once, best first, and the proof line
/// says 0 lost; the store line names PostgreSQL.
fn ranking_in_process() {
    let Some(url) = fresh_database("learning_engine_on_postgres_ranks_and_loses_nothing") else {
        return;
    };
    let cfg = learning_engine::parse_args(os(&[
        "--tasks",
        "16",
        "--records",
        "40",
        "--postgres",
        &url,
    ]))
    .unwrap();
    assert_eq!(cfg.db, Some(Database::Postgres(url.clone())));
    let report = runtime().block_on(learning_engine::run(&cfg)).unwrap();
    let t = &report.text;
    assert!(report.passed(), "{t}");
    assert_eq!((report.lost, report.rows_wrong, report.errors), (0, 0, 0));
    assert!(
        t.contains("store: PostgreSQL ") && t.contains("through luca_core::postgres::PgDb"),
        "{t}"
    );
    assert!(t.contains("recorded 640 in "), "{t}");
    assert!(t.contains("PgDb: 640 writes committed"), "{t}");
    assert!(
        t.contains("lost updates: 0 (acknowledged 640 records; the table's counts grew by 640"),
        "{t}"
    );
    let rates = ranking_rates(t);
    assert_eq!(rates.len(), 8, "{t}");
    assert!(
        rates.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {rates:?}\n{t}"
    );
    assert!(t.contains("best pattern per kind of site: shop -> "), "{t}");
    assert!(t.contains("ok: no update lost, no record failed"), "{t}");
}

/// The learning engine as a process, twice on one database: the second run adds to the
/// first's counts and still proves that it lost nothing.
fn process_twice() {
    let Some(url) =
        fresh_database("learning_engine_on_postgres_process_exits_0_twice_on_one_database")
    else {
        return;
    };
    for _ in 0..2 {
        let child = run_child(&["--tasks", "8", "--records", "25", "--postgres", &url]);
        let out = &child.stdout;
        assert!(
            child.status.success(),
            "exit {:?}\n{out}\n{}",
            child.status,
            child.stderr
        );
        assert!(out.contains("store: PostgreSQL "), "{out}");
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
    let total: i64 = runtime().block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .query_one(
                "SELECT SUM(success_count + failure_count)::bigint FROM pattern_stats",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(total, 400);
}

/// A store that acknowledges every `every`-th record without keeping it (`lose`), or
/// keeps it twice (`!lose`).
#[derive(Clone)]
struct FaultyStore {
    inner: PgStore,
    seen: Arc<AtomicU64>,
    every: u64,
    lose: bool,
}

impl PatternStore for FaultyStore {
    async fn record(
        &self,
        kind: &'static str,
        pattern: &'static str,
        success: bool,
    ) -> Result<(), BoxError> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(self.every) {
            if self.lose {
                return Ok(());
            }
            self.inner.record(kind, pattern, success).await?;
        }
        self.inner.record(kind, pattern, success).await
    }
    async fn counts(&self) -> Result<Table, BoxError> {
        self.inner.counts().await
    }
    fn describe(&self) -> String {
        "a faulty store".into()
    }
    fn summary(&self) -> String {
        String::new()
    }
}

/// The proof reads the counts back from PostgreSQL: a store that drops acknowledged
/// records, or counts some twice, makes the run fail, with the numbers.
fn proof_catches_bad_stores() {
    let rt = runtime();
    for lose in [true, false] {
        let Some(url) =
            fresh_database("learning_engine_on_postgres_proof_catches_lost_and_double_updates")
        else {
            return;
        };
        let report = rt.block_on(async {
            let store = FaultyStore {
                inner: PgStore::open(&url).await.unwrap(),
                seen: Default::default(),
                every: 10,
                lose,
            };
            let cfg = learning_engine::Config {
                tasks: 4,
                records: 25,
                db: Some(Database::Postgres(url.clone())),
            };
            learning_engine::run_on(&store, &cfg).await.unwrap()
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

/// `--postgres` needs a value and excludes `--db`; a server that cannot be reached ends
/// the run with exit 1 and the reason. Needs no server.
fn flags_and_unreachable_server() {
    for bad in [
        &["--postgres"][..],
        &["--db", "x.db", "--postgres", "host=/tmp"],
        &["--postgres", "host=/tmp", "--postgres", "host=/tmp"],
    ] {
        let err = learning_engine::parse_args(os(bad)).expect_err("refused");
        assert!(err.contains("usage: learning_engine"), "{bad:?}: {err}");
    }
    let child = run_child(&["--postgres", "host=/tmp", "--db", "x.db"]);
    assert_eq!(child.status.code(), Some(2), "{}", child.stderr);
    assert!(
        child
            .stderr
            .contains("give one database: `--db PATH` or `--postgres URL`, once"),
        "{}",
        child.stderr
    );

    let nowhere = tempfile_dir();
    let url = format!(
        "host={} port=5432 user=nobody dbname=nothing connect_timeout=5",
        nowhere.display()
    );
    let child = run_child(&["--tasks", "1", "--records", "1", "--postgres", &url]);
    assert_eq!(
        child.status.code(),
        Some(1),
        "{}\n{}",
        child.stdout,
        child.stderr
    );
    assert!(
        child.stderr.starts_with("learning_engine: ")
            && child.stderr.contains("error connecting to server"),
        "{}",
        child.stderr
    );
    assert!(child.stdout.is_empty(), "{}", child.stdout);
    let _ = std::fs::remove_dir(&nowhere);
}

/// An empty directory no server listens in.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("luca-no-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create an empty directory");
    dir
}
