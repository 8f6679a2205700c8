//! `ContentionReport` and the `Contention` harness.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use luca_core::rusqlite::{self, ffi};
use luca_testkit::{ContentionReport, MAX_SAMPLES, extended_code, sqlite_code_name};

fn panic_text(f: impl FnOnce()) -> Option<String> {
    let payload = catch_unwind(AssertUnwindSafe(f)).err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    )
}

fn busy(code: i32) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(format!("code {code}")))
}

// --- ContentionReport ----------------------------------------------------------------------

#[test]
fn report_percentiles_are_nearest_rank() {
    let mut r = ContentionReport::new("lat");
    // 1..=1000 µs, shuffled order does not matter.
    for i in (1..=1000u64).rev() {
        r.record_ok(Duration::from_micros(i));
    }
    let l = r.latencies();
    assert_eq!(l.count, 1000);
    assert_eq!(l.p50, Duration::from_micros(500));
    assert_eq!(l.p99, Duration::from_micros(990));
    assert_eq!(l.p999, Duration::from_micros(999));
    assert_eq!(l.max, Duration::from_micros(1000));
    assert_eq!(r.p50(), l.p50);
    assert_eq!(r.p99(), l.p99);
    assert_eq!(r.p999(), l.p999);
    assert_eq!(r.max_latency(), l.max);
    assert_eq!(r.percentile(0.0), Duration::from_micros(1));

    let empty = ContentionReport::new("none");
    assert_eq!(empty.latencies().max, Duration::ZERO);
    assert_eq!(empty.p99(), Duration::ZERO);
    assert_eq!(empty.throughput(), 0.0);
}

#[test]
fn report_throughput_is_ok_per_wall_second() {
    let mut r = ContentionReport::new("t");
    for _ in 0..500 {
        r.record_ok(Duration::from_micros(1));
    }
    r.record_escaped(Some(5), "busy");
    r.elapsed = Duration::from_millis(250);
    assert_eq!(r.throughput(), 2000.0);
}

#[test]
fn report_classifies_errors_by_extended_code() {
    let mut r = ContentionReport::new("codes");
    r.record_error(&busy(5));
    r.record_error(&busy(517));
    r.record_error(&busy(517));
    r.record_error(&luca_core::Error::from(busy(773)));
    r.record_error(&std::io::Error::other("not sqlite"));
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(busy(6));
    r.record_error(&*boxed);
    assert_eq!(r.escaped(), 6);
    assert_eq!(r.escaped_with(5), 1);
    assert_eq!(r.escaped_with(517), 2);
    assert_eq!(r.escaped_with(773), 1);
    assert_eq!(r.escaped_with(6), 1);
    assert_eq!(r.escaped_other, 1);
    assert_eq!(r.escaped_with(19), 0);
    assert_eq!(r.error_samples.len(), 6);
    assert!(r.error_samples[1].starts_with("517 SQLITE_BUSY_SNAPSHOT: "));
    assert!(r.error_samples[4].starts_with("no SQLite code: not sqlite"));
}

#[derive(Debug)]
struct Wrapper(rusqlite::Error);

impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapper {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn extended_code_walks_the_source_chain() {
    assert_eq!(extended_code(&Wrapper(busy(517))), Some(517));
    assert_eq!(extended_code(&ffi::Error::new(261)), Some(261));
    assert_eq!(extended_code(&rusqlite::Error::InvalidQuery), None);
    assert_eq!(
        extended_code(&luca_core::Error::TransactionEnded),
        None,
        "a luca error without a SQLite code"
    );
    assert_eq!(sqlite_code_name(517), "SQLITE_BUSY_SNAPSHOT");
    assert_eq!(sqlite_code_name(5), "SQLITE_BUSY");
    assert_eq!(sqlite_code_name(5 | (9 << 8)), "SQLITE_BUSY_?");
    assert_eq!(sqlite_code_name(99_999), "SQLITE_?");
}

#[test]
fn report_samples_are_bounded() {
    let mut r = ContentionReport::new("many");
    for i in 0..100 {
        r.record_escaped(Some(5), &format!("failure {i}"));
        r.record_lost(1, format!("row {i}"));
    }
    assert_eq!(r.escaped(), 100);
    assert_eq!(r.lost, 100);
    assert_eq!(r.error_samples.len(), MAX_SAMPLES);
    assert_eq!(r.lost_samples.len(), MAX_SAMPLES);
    r.record_lost(0, "nothing");
    assert_eq!(r.lost, 100);
}

#[test]
fn merged_reports_add_up_and_keep_the_longest_wall_time() {
    let mut a = ContentionReport::new("insert");
    a.workers = 4;
    a.planned = 40;
    a.attempted = 40;
    a.seed = Some(7);
    a.db_path = Some(PathBuf::from("/tmp/a.db"));
    a.elapsed = Duration::from_millis(300);
    for i in 1..=38 {
        a.record_ok(Duration::from_micros(i));
    }
    a.record_escaped(Some(5), "busy");
    a.record_escaped(None, "panicked");
    a.add_retries(3);

    let mut b = ContentionReport::new("other label");
    b.workers = 4;
    b.planned = 40;
    b.attempted = 20;
    b.timed_out = true;
    b.seed = Some(9);
    b.elapsed = Duration::from_millis(500);
    for _ in 0..19 {
        b.record_ok(Duration::from_millis(2));
    }
    b.record_escaped(Some(517), "snapshot");
    b.record_lost(2, "ids 3, 4");
    b.add_retries(5);

    let mut m = a.clone();
    m.merge(&b);
    assert_eq!(m.label, "insert");
    assert_eq!(m.runs, 2);
    assert_eq!((m.workers, m.planned, m.attempted), (8, 80, 60));
    assert_eq!(m.ok, 57);
    assert_eq!(
        (m.escaped_with(5), m.escaped_with(517), m.escaped_other),
        (1, 1, 1)
    );
    assert_eq!((m.lost, m.retries), (2, 8));
    assert_eq!(m.elapsed, Duration::from_millis(500));
    assert!(m.timed_out);
    assert_eq!(m.seed, Some(7));
    assert_eq!(m.db_path, Some(PathBuf::from("/tmp/a.db")));
    assert_eq!(m.max_latency(), Duration::from_millis(2));
    assert_eq!(m.latencies_ns.len(), 57);
    assert_eq!(m.error_samples.len(), 3);
    assert_eq!(m.lost_samples, vec!["ids 3, 4".to_owned()]);

    let all = ContentionReport::merged([&a, &b]);
    assert_eq!(all.runs, 2);
    assert_eq!(all.label, "insert");
    assert_eq!(all.ok, m.ok);
    assert_eq!(all.latencies(), m.latencies());
    assert_eq!(all.seed, Some(7), "the first seed met");
    let none = ContentionReport::merged([]);
    assert_eq!((none.runs, none.ok), (0, 0));
}

#[test]
fn assertions_fail_with_seed_path_and_table() {
    let mut r = ContentionReport::new("rmw");
    r.workers = 2;
    r.planned = 4;
    r.attempted = 4;
    r.seed = Some(0xabc);
    r.db_path = Some(PathBuf::from("/tmp/luca-testkit/x/test.db"));
    for _ in 0..4 {
        r.record_ok(Duration::from_micros(10));
    }
    r.assert_no_lost();
    r.assert_no_escaped();
    r.assert_all_ran();
    r.assert_clean();

    let mut lost = r.clone();
    lost.record_lost(3, "counter is 1, expected 4");
    let msg = panic_text(|| lost.assert_no_lost()).expect("lost writes fail");
    assert!(msg.starts_with("3 lost write(s)"), "{msg}");
    assert!(msg.contains("seed 0xabc"), "{msg}");
    assert!(msg.contains("/tmp/luca-testkit/x/test.db"), "{msg}");
    assert!(msg.contains("| workload"), "{msg}");
    assert!(msg.contains("| rmw "), "{msg}");
    assert!(msg.contains("lost: counter is 1, expected 4"), "{msg}");
    lost.assert_no_escaped();
    assert!(panic_text(|| lost.assert_clean()).is_some());

    let mut escaped = r.clone();
    escaped.record_error(&busy(517));
    let msg = panic_text(|| escaped.assert_no_escaped()).expect("escaped errors fail");
    assert!(msg.starts_with("1 operation(s) escaped"), "{msg}");
    assert!(
        msg.contains("escaped by code: 517 SQLITE_BUSY_SNAPSHOT × 1"),
        "{msg}"
    );
    assert!(msg.contains("seed 0xabc"), "{msg}");
    escaped.assert_no_lost();

    let mut short = r.clone();
    short.planned = 8;
    short.timed_out = true;
    let msg = panic_text(|| short.assert_all_ran()).expect("a timed-out run fails");
    assert!(msg.contains("only 4 of 8 operations ran"), "{msg}");
    assert!(msg.contains("stopped by its time limit"), "{msg}");
    assert!(msg.contains("4/8"), "{msg}");
}

#[test]
fn the_table_lines_up() {
    let mut r = ContentionReport::new("insert Db");
    r.workers = 16;
    r.attempted = 160;
    r.planned = 160;
    r.elapsed = Duration::from_millis(80);
    for i in 0..160 {
        r.record_ok(Duration::from_micros(100 + i));
    }
    let header = ContentionReport::table_header();
    let row = r.table_row();
    let lines: Vec<&str> = header.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0].matches('|').count(),
        row.matches('|').count(),
        "{header}\n{row}"
    );
    assert_eq!(lines[1].matches('|').count(), row.matches('|').count());
    assert_eq!(
        lines[0].chars().count(),
        row.chars().count(),
        "{header}\n{row}"
    );
    assert!(row.contains("| insert Db "), "{row}");
    assert!(row.contains(" 2000 |"), "throughput 160 / 0.08 s: {row}");
    let text = r.to_string();
    assert!(
        text.starts_with("contention `insert Db`: seed none"),
        "{text}"
    );
    assert!(!text.contains("escaped by code"), "{text}");
}
