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

// --- Contention ----------------------------------------------------------------------------

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use luca_core::retry::{Jitter, RetryPolicy, retry_sync};
use luca_testkit::{Acked, Contention, Counter, InsertLedger, Learning, Lost, TempDb, Workload};

#[test]
fn threads_run_every_operation_once_with_unique_ids() {
    let seen = Mutex::new(Vec::new());
    let report = Contention::new(8)
        .ops(25)
        .seed(42)
        .label("ids")
        .id_base(1000)
        .db_path("/nowhere/x.db")
        .run(|op| {
            seen.lock()
                .unwrap()
                .push((op.worker, op.index, op.id, op.seed));
            Ok::<(), std::io::Error>(())
        });
    report.assert_clean();
    assert_eq!(
        (report.workers, report.planned, report.attempted, report.ok),
        (8, 200, 200, 200)
    );
    assert_eq!(report.runs, 1);
    assert_eq!(report.label, "ids");
    assert_eq!(report.seed, Some(42));
    assert_eq!(report.db_path, Some(PathBuf::from("/nowhere/x.db")));
    assert_eq!(report.latencies_ns.len(), 200);
    assert!(!report.timed_out);
    let seen = seen.into_inner().unwrap();
    let ids: HashSet<u64> = seen.iter().map(|s| s.2).collect();
    assert_eq!(ids, (1000..1200).collect::<HashSet<u64>>());
    for (worker, index, id, _) in &seen {
        assert_eq!(*id, 1000 + (*worker as u64) * 25 + *index as u64);
    }
    let seeds: HashSet<u64> = seen.iter().map(|s| s.3).collect();
    assert_eq!(seeds.len(), 200, "every op has its own seed");
}

#[test]
fn the_same_seed_gives_the_same_op_seeds() {
    let run = |seed: u64| {
        let seeds = Mutex::new(Vec::new());
        let r = Contention::new(3).ops(4).seed(seed).run(|op| {
            seeds.lock().unwrap().push((op.id, op.seed));
            Ok::<(), std::io::Error>(())
        });
        assert_eq!(r.seed, Some(seed));
        let mut s = seeds.into_inner().unwrap();
        s.sort_unstable();
        s
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    // Without a seed (and without LUCA_TESTKIT_SEED) one is chosen and reported.
    let r = Contention::new(1)
        .ops(1)
        .run(|_| Ok::<(), std::io::Error>(()));
    assert!(r.seed.is_some());
}

#[test]
fn workers_are_released_together() {
    // Every worker's first operation waits (bounded) until all workers are in their first
    // operation: that only completes when all of them were started before any finished.
    const N: usize = 16;
    let arrived = AtomicUsize::new(0);
    let all_in = std::sync::Barrier::new(N);
    let report = Contention::new(N)
        .ops(1)
        .time_limit(Duration::from_secs(20))
        .run(|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            all_in.wait();
            Ok::<(), std::io::Error>(())
        });
    report.assert_clean();
    assert_eq!(arrived.load(Ordering::SeqCst), N);
}

#[test]
fn errors_and_panics_are_escaped_by_code() {
    let report = Contention::new(4)
        .ops(10)
        .label("failing")
        .run(|op| match op.id % 5 {
            0 => Err(luca_core::Error::from(busy(517))),
            1 => Err(luca_core::Error::from(busy(5))),
            2 => panic!("op {} broke", op.id),
            _ => Ok(()),
        });
    assert_eq!(report.attempted, 40);
    assert_eq!(report.ok, 16);
    assert_eq!(report.escaped_with(517), 8);
    assert_eq!(report.escaped_with(5), 8);
    assert_eq!(report.escaped_other, 8);
    assert!(
        report
            .error_samples
            .iter()
            .any(|s| s.contains("panicked: op ") && s.contains(" broke")),
        "{report}"
    );
    let msg = panic_text(|| report.assert_no_escaped()).unwrap();
    assert!(msg.contains("24 operation(s) escaped"), "{msg}");
    assert!(msg.contains("517 SQLITE_BUSY_SNAPSHOT × 8"), "{msg}");
    report.assert_no_lost();
}

#[test]
fn the_time_limit_stops_a_run() {
    let report = Contention::new(2)
        .ops(10_000)
        .time_limit(Duration::from_millis(200))
        .run(|_| {
            std::thread::sleep(Duration::from_millis(5));
            Ok::<(), std::io::Error>(())
        });
    assert!(report.timed_out);
    assert!(report.attempted < 200, "{report}");
    assert!(report.attempted >= 2);
    assert_eq!(report.ok, report.attempted);
    let msg = panic_text(|| report.assert_all_ran()).unwrap();
    assert!(msg.contains("of 20000 operations ran"), "{msg}");
}

#[test]
fn retries_are_counted_from_luca_metrics_and_the_ops() {
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_millis(1))
        .with_jitter(Jitter::None);
    let report = Contention::new(2).ops(5).run(|op| {
        let mut attempts = 0;
        retry_sync(&policy, || {
            attempts += 1;
            if attempts < 3 { Err(busy(5)) } else { Ok(()) }
        })?;
        op.add_retries(10);
        Ok::<(), rusqlite::Error>(())
    });
    report.assert_clean();
    // 2 retries per op through luca, 10 counted by each op; other tests may add to the
    // process-wide counters meanwhile, never subtract.
    assert!(report.retries >= 10 * 12, "{}", report.retries);
}

#[test]
fn a_failing_check_counts_as_lost() {
    let report = Contention::new(1)
        .ops(3)
        .check(|_| Err::<Lost, _>(std::io::Error::other("cannot open the file")))
        .run(|_| Ok::<(), std::io::Error>(()));
    assert_eq!(report.lost, 1);
    assert!(report.lost_samples[0].contains("check failed: cannot open the file"));
    let report = Contention::new(1)
        .ops(3)
        .check(|_| -> Result<Lost, std::io::Error> { panic!("check bug") })
        .run(|_| Ok::<(), std::io::Error>(()));
    assert_eq!(report.lost, 1);
    assert!(report.lost_samples[0].contains("check panicked: check bug"));
}

#[test]
fn the_check_sees_exactly_the_acknowledged_ids() {
    let got = Mutex::new(None);
    let (report, acked) = Contention::new(3)
        .ops(4)
        .check(|acked| {
            *got.lock().unwrap() = Some(acked.clone());
            Ok::<_, std::io::Error>(Lost::none())
        })
        .run_with_acked(|op| {
            if op.id % 2 == 0 {
                Ok(())
            } else {
                Err(std::io::Error::other("odd"))
            }
        });
    let expected = Acked::from_ids((0..12).filter(|i| i % 2 == 0));
    assert_eq!(acked, expected);
    assert_eq!(got.into_inner().unwrap(), Some(expected));
    assert_eq!(report.ok, 6);
    assert_eq!(report.lost, 0);
}

#[test]
fn acked_is_a_sorted_set() {
    let mut a = Acked::from_ids([5, 1, 3, 3]);
    assert_eq!(a.ids(), &[1, 3, 5]);
    a.merge(&Acked::from_ids([2, 5, 9]));
    assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 2, 3, 5, 9]);
    assert!(a.contains(9) && !a.contains(4));
    assert_eq!(a.len(), 5);
    assert!(!a.is_empty() && Acked::default().is_empty());
}

#[test]
fn a_lost_write_is_caught_by_the_workload_check() {
    // Operation 7 is acknowledged but never written: the ledger check finds it.
    let tmp = TempDb::new();
    InsertLedger.setup_path(tmp.path()).unwrap();
    let path = tmp.path().to_path_buf();
    let report = Contention::new(4)
        .ops(5)
        .check_workload(InsertLedger, tmp.path())
        .run(|op| {
            if op.id == 7 {
                return Ok(());
            }
            luca_core::local::with_connection(
                &path,
                |c| Ok(InsertLedger.apply_immediate(c, op.id)?),
            )
        });
    luca_core::local::cleanup_connections();
    assert_eq!(report.label, "insert");
    assert_eq!(report.db_path.as_deref(), Some(tmp.path()));
    assert_eq!(report.ok, 20);
    assert_eq!(report.lost, 1, "{report}");
    assert!(report.lost_samples[0].contains("ids 7"), "{report}");
    let msg = panic_text(|| report.assert_no_lost()).unwrap();
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_against_a_db() {
    let tmp = TempDb::new();
    let db = tmp.db().await.unwrap();
    Counter.setup_db(&db).await.unwrap();
    let handle = db.clone();
    let report = Contention::new(32)
        .ops(10)
        .check_workload(Counter, tmp.path())
        .run_async(move |op| {
            let db = handle.clone();
            async move { Counter.write(&db, op.id).await }
        })
        .await;
    println!("{report}");
    report.assert_clean();
    assert_eq!(report.ok, 320);
    let n = db.read(|c| Ok(Counter::value(c)?)).await.unwrap();
    assert_eq!(n, 320);
    db.close().await.unwrap();
}

#[tokio::test]
async fn tasks_that_hang_are_stopped_at_the_time_limit() {
    let report = Contention::new(3)
        .ops(5)
        .time_limit(Duration::from_millis(200))
        .run_async(|op| async move {
            if op.index == 1 {
                std::future::pending::<()>().await;
            }
            if op.worker == 2 {
                panic!("task op {} broke", op.id);
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
    assert!(report.timed_out);
    // Workers 0 and 1: op 0 ok, op 1 hangs; worker 2: op 0 panics, op 1 hangs.
    assert_eq!(report.ok, 2, "{report}");
    assert_eq!(report.attempted, 6, "{report}");
    assert_eq!(report.escaped_other, 4, "{report}");
    assert!(
        report
            .error_samples
            .iter()
            .any(|s| s.contains("did not finish before the time limit"))
    );
    assert!(
        report
            .error_samples
            .iter()
            .any(|s| s.contains("panicked: task op 10 broke"))
    );
}

#[test]
fn run_async_outside_a_runtime_says_so() {
    let report = futures_executor::block_on(
        Contention::new(2)
            .ops(3)
            .run_async(|_| async { Ok::<(), std::io::Error>(()) }),
    );
    assert_eq!(report.ok, 0);
    assert_eq!(report.escaped_other, 1);
    assert!(
        report.error_samples[0].contains("needs a tokio runtime"),
        "{report}"
    );
    assert!(report.timed_out || report.attempted < report.planned);
}

// --- Workload checks, deterministically ---------------------------------------------------

fn conn(tmp: &TempDb) -> rusqlite::Connection {
    luca_core::pragmas::open(
        tmp.path(),
        &luca_core::pragmas::Pragmas::new().with_busy_timeout(Duration::from_secs(5)),
    )
    .unwrap()
}

#[test]
fn counter_check_catches_a_lost_update() {
    let tmp = TempDb::new();
    let (a, b) = (conn(&tmp), conn(&tmp));
    Counter.setup(&a).unwrap();
    Counter.setup(&a).unwrap(); // idempotent
    // The racy pattern, interleaved by hand: a reads 0, b increments, a writes 1.
    let read_by_a = Counter::value(&a).unwrap();
    Counter.apply_racy(&b, 0).unwrap();
    a.execute(
        "UPDATE luca_counter SET n = ?1 WHERE id = 1",
        [read_by_a + 1],
    )
    .unwrap();
    let lost = Counter.check(&a, &Acked::from_ids([0, 1])).unwrap();
    assert_eq!(lost.count, 1);
    assert_eq!(
        lost.description,
        "counter is 1, 2 increment(s) were acknowledged"
    );
    // Applied twice is counted too.
    let extra = Counter.check(&a, &Acked::default()).unwrap();
    assert_eq!(extra.count, 1);
    assert_eq!(
        Counter.check(&a, &Acked::from_ids([9])).unwrap(),
        Lost::none()
    );
    // The correct pattern, interleaved as far as SQLite lets it: b's IMMEDIATE waits.
    Counter.apply_immediate(&a, 1).unwrap();
    Counter.apply_immediate(&b, 2).unwrap();
    assert_eq!(Counter::value(&a).unwrap(), 3);
}

#[test]
fn deferred_read_modify_write_fails_at_once_under_a_writer() {
    let tmp = TempDb::new();
    let a = conn(&tmp);
    Counter.setup(&a).unwrap();
    // a's DEFERRED transaction reads while another connection holds the write lock.
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    let err = Counter.apply_deferred(&a, 0).unwrap_err();
    assert_eq!(err.sqlite_error().map(|e| e.extended_code), Some(5));
    assert!(a.is_autocommit(), "rolled back");
    drop(lock);
    Counter.apply_deferred(&a, 0).unwrap();
    assert_eq!(Counter::value(&a).unwrap(), 1);
}

#[test]
fn ledger_check_names_missing_ids() {
    let tmp = TempDb::new();
    let c = conn(&tmp);
    InsertLedger.setup(&c).unwrap();
    for id in 0..20 {
        InsertLedger.apply_immediate(&c, id).unwrap();
    }
    assert_eq!(
        InsertLedger.check(&c, &Acked::from_ids(0..20)).unwrap(),
        Lost::none()
    );
    c.execute("DELETE FROM luca_ledger WHERE id IN (3, 11)", [])
        .unwrap();
    let lost = InsertLedger.check(&c, &Acked::from_ids(0..20)).unwrap();
    assert_eq!(lost.count, 2);
    assert!(
        lost.description.contains("ids 3, 11"),
        "{}",
        lost.description
    );
    // Unacknowledged rows in the file are not lost writes.
    assert_eq!(
        InsertLedger
            .check(&c, &Acked::from_ids([0, 1]))
            .unwrap()
            .count,
        0
    );
    // A duplicate id is a constraint error, not a silent success.
    let err = InsertLedger.apply_immediate(&c, 5).unwrap_err();
    assert_eq!(err.sqlite_error().map(|e| e.extended_code), Some(1555));
    assert!(c.is_autocommit());
}

#[test]
fn learning_check_compares_every_pattern() {
    let tmp = TempDb::new();
    let c = conn(&tmp);
    let w = Learning { patterns: 4 };
    assert_eq!(w.outcome(0), ("p0".to_owned(), false));
    assert_eq!(w.outcome(5), ("p1".to_owned(), true));
    w.setup(&c).unwrap();
    for id in 0..40 {
        w.apply_immediate(&c, id).unwrap();
    }
    let acked = Acked::from_ids(0..40);
    assert_eq!(w.check(&c, &acked).unwrap(), Lost::none());
    let (s, f): (i64, i64) = c
        .query_row(
            "SELECT sum(success), sum(failure) FROM luca_patterns",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((s, f), (26, 14));
    c.execute(
        "UPDATE luca_patterns SET success = success - 1 WHERE pattern = 'p2'",
        [],
    )
    .unwrap();
    let lost = w.check(&c, &acked).unwrap();
    assert_eq!(lost.count, 1);
    assert!(
        lost.description.starts_with("p2: success/failure"),
        "{}",
        lost.description
    );
    // A pattern nobody acknowledged is flagged too.
    c.execute("INSERT INTO luca_patterns VALUES ('zz', 1, 0)", [])
        .unwrap();
    assert_eq!(w.check(&c, &acked).unwrap().count, 2);
}

// --- Every workload through every API ------------------------------------------------------

#[luca_core::db_retry(max_retries = 8, delay_ms = 5)]
fn apply_local<W: Workload>(w: &W, path: &std::path::Path, id: u64) -> luca_core::Result<()> {
    luca_core::local::with_connection(path, |c| Ok(w.apply_immediate(c, id)?))
}

fn every_api<W: Workload>(w: W) {
    // A `Db`, tokio tasks.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = TempDb::new();
    rt.block_on(async {
        let db = tmp.db().await.unwrap();
        w.setup_db(&db).await.unwrap();
        let (handle, w2) = (db.clone(), w.clone());
        let report = Contention::new(16)
            .ops(10)
            .check_workload(w.clone(), tmp.path())
            .run_async(move |op| {
                let (db, w) = (handle.clone(), w2.clone());
                async move { w.write(&db, op.id).await }
            })
            .await;
        report.assert_clean();
        // The Db's own reader sees the same.
        let acked = Acked::from_ids(0..160);
        assert_eq!(w.check_db(&db, &acked).await.unwrap(), Lost::none());
        db.close().await.unwrap();
    });

    // `#[db_retry]` over thread-local connections, threads.
    let tmp = TempDb::new();
    w.setup_path(tmp.path()).unwrap();
    let path = tmp.path().to_path_buf();
    let report = Contention::new(16)
        .ops(10)
        .check_workload(w.clone(), tmp.path())
        .run(|op| apply_local(&w, &path, op.id));
    report.assert_clean();

    // Plain rusqlite, a connection per operation, BEGIN IMMEDIATE.
    let tmp = TempDb::new();
    w.setup_path(tmp.path()).unwrap();
    let report = Contention::new(8)
        .ops(10)
        .check_workload(w.clone(), tmp.path())
        .run(|op| {
            let c = rusqlite::Connection::open(tmp.path())?;
            c.busy_timeout(Duration::from_secs(10))?;
            w.apply_immediate(&c, op.id)
        });
    report.assert_clean();

    // And `write_blocking` from threads.
    let tmp = TempDb::new();
    let db = tmp.db_blocking().unwrap();
    let setup = w.clone();
    db.write_blocking(move |c| Ok(setup.setup(c)?)).unwrap();
    let report = Contention::new(8)
        .ops(10)
        .check_workload(w.clone(), tmp.path())
        .run(|op| w.write_blocking(&db, op.id));
    report.assert_clean();
    db.close_blocking().unwrap();
}

#[test]
fn insert_ledger_through_every_api() {
    every_api(InsertLedger);
}

#[test]
fn counter_through_every_api() {
    every_api(Counter);
}

#[test]
fn learning_through_every_api() {
    every_api(Learning::default());
    every_api(Learning { patterns: 1 });
}
