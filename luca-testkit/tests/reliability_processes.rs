//! Reliability suite, processes row: 4 processes × 8 writer tasks × 500 operations on one
//! file, through luca's `Db` (default settings: group commit on, busy_timeout 30 s),
//! insert and read-modify-write: 0 escaped, 0 lost.
//!
//! The test binary re-runs itself as the four child processes (`luca_testkit::process`);
//! each child returns a `ContentionReport` and checks its own acknowledged writes, and the
//! parent checks the shared file once all four have ended.

use std::time::{Duration, Instant};

use luca_core::Db;
use luca_core::rusqlite::{Connection, OptionalExtension};
use luca_testkit::process::{ChildEnv, Processes, child_main};
use luca_testkit::{ContentionReport, TempDb};

const PROCESSES: usize = 4;
const TASKS: usize = 8;
const OPS: usize = 500;
/// Each child stops starting operations after this (the run's bound is 30 s).
const CHILD_BOUND: Duration = Duration::from_secs(25);

fn schema(path: &std::path::Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE ledger (k TEXT PRIMARY KEY, process INTEGER NOT NULL);
         CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO counter (id, v) VALUES (0, 0), (1, 0), (2, 0), (3, 0), (4, 0);",
    )
    .unwrap();
}

/// One operation of `role`: an insert of a unique key, or a read-modify-write of the
/// shared counter (row 0) and of this process's own counter (row `process + 1`), each read
/// and written back in the same write transaction.
async fn op(db: &Db, role: &str, process: i64, key: String) -> luca_core::Result<()> {
    if role == "insert" {
        db.write(move |c| {
            c.execute(
                "INSERT INTO ledger (k, process) VALUES (?1, ?2)",
                (&key, process),
            )?;
            Ok(())
        })
        .await
    } else {
        db.write(move |c| {
            for id in [0, process + 1] {
                let v: i64 =
                    c.query_row("SELECT v FROM counter WHERE id = ?1", [id], |r| r.get(0))?;
                c.execute("UPDATE counter SET v = ?1 WHERE id = ?2", (v + 1, id))?;
            }
            Ok(())
        })
        .await
    }
}

/// A child: 8 tasks × 500 operations through one `Db`, released together; then its own
/// check of what it was told had committed.
fn child(env: &ChildEnv) -> ContentionReport {
    match env.role() {
        // The harness's own failure paths (see the last tests).
        "panics" if env.index() == 1 => panic!("child {} gives up on purpose", env.index()),
        "hangs" if env.index() == 2 => {
            eprintln!("child {} stops answering", env.index());
            std::thread::sleep(Duration::from_secs(60));
        }
        "panics" | "hangs" => return ContentionReport::new(env.role()),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let role = env.role().to_owned();
        let process = env.index() as i64;
        let db = Db::open(env.db()).await.unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (db, role, barrier) = (db.clone(), role.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let mut r = ContentionReport::new(role.clone());
                let mut acked = Vec::new();
                barrier.wait().await;
                for i in 0..OPS {
                    if started.elapsed() > CHILD_BOUND {
                        r.timed_out = true;
                        break;
                    }
                    r.attempted += 1;
                    let key = format!("p{process}-t{t}-{i}");
                    let t0 = Instant::now();
                    match op(&db, &role, process, key.clone()).await {
                        Ok(()) => {
                            r.record_ok(t0.elapsed());
                            acked.push(key);
                        }
                        Err(e) => r.record_error(&e),
                    }
                }
                (r, acked)
            }));
        }
        let mut report = ContentionReport::new(role.clone());
        report.runs = 0;
        let mut acked = Vec::new();
        for t in tasks {
            let (r, a) = t.await.unwrap();
            report.merge(&r);
            acked.extend(a);
        }
        report.workers = TASKS as u64;
        report.planned = (TASKS * OPS) as u64;
        report.elapsed = started.elapsed();
        let stats = db.stats();
        report.add_retries(stats.retries);
        // The child's own check: every write it was told had committed is in the file.
        let ok = report.ok;
        let (lost, sample) = db
            .read(move |c| {
                if role == "insert" {
                    let mut stmt = c.prepare("SELECT 1 FROM ledger WHERE k = ?1")?;
                    let mut missing = Vec::new();
                    for k in &acked {
                        if stmt.query_row([k], |_| Ok(())).optional()?.is_none() {
                            missing.push(k.clone());
                        }
                    }
                    Ok((missing.len() as u64, missing.join(", ")))
                } else {
                    let own: i64 =
                        c.query_row("SELECT v FROM counter WHERE id = ?1", [process + 1], |r| {
                            r.get(0)
                        })?;
                    let lost = ok.saturating_sub(own as u64);
                    Ok((lost, format!("own counter {own}, acknowledged {ok}")))
                }
            })
            .await
            .unwrap();
        report.record_lost(lost, sample);
        db.close().await.unwrap();
        eprintln!("child {process} stats: {stats}");
        report
    })
}

fn run(role: &str) {
    let tmp = TempDb::new();
    schema(tmp.path());
    let role_owned = role.to_owned();
    let report = Processes::new(PROCESSES)
        .db(tmp.path())
        .role(role)
        .verify(move |c, reports| {
            let acked: u64 = reports.iter().map(|r| r.ok).sum();
            let found: i64 = if role_owned == "insert" {
                c.query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))?
            } else {
                c.query_row("SELECT v FROM counter WHERE id = 0", [], |r| r.get(0))?
            };
            println!("parent's check: {found} in the file, {acked} acknowledged");
            // Fewer is a lost write; more would be a write applied twice.
            Ok(acked.abs_diff(found as u64))
        })
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    if role == "insert" {
        // The processes really wrote at the same time: in commit order, the rows change
        // hands between processes many times (run one after another, 3 times).
        let conn = Connection::open(tmp.path()).unwrap();
        let mut stmt = conn
            .prepare("SELECT process FROM ledger ORDER BY rowid")
            .unwrap();
        let order: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let handovers = order.windows(2).filter(|w| w[0] != w[1]).count();
        println!("the write lock changed hands between processes {handovers} times");
        assert!(
            handovers >= PROCESSES,
            "the processes did not overlap: {handovers}"
        );
    }
    assert_eq!(report.children.len(), PROCESSES);
    assert_eq!(report.total.planned, (PROCESSES * TASKS * OPS) as u64);
    report.total.assert_clean();
}

#[test]
fn four_processes_insert() {
    child_main(child);
    run("insert");
}

#[test]
fn four_processes_read_modify_write() {
    child_main(child);
    run("rmw");
}

// --- the harness's failure paths ----------------------------------------------------------

#[test]
fn a_child_that_panics_fails_the_run_with_its_status_and_stderr() {
    child_main(child);
    let tmp = TempDb::new();
    let err = Processes::new(3)
        .db(tmp.path())
        .role("panics")
        .run()
        .expect_err("a panicking child fails the run");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.failures.len(), 1, "{msg}");
    assert_eq!(err.failures[0].index, 1, "{msg}");
    assert!(
        msg.contains("child 1: ended with exit status: 101"),
        "{msg}"
    );
    assert!(msg.contains("child 1 gives up on purpose"), "{msg}");
}

#[test]
fn a_child_past_the_bound_is_killed_and_named() {
    child_main(child);
    let tmp = TempDb::new();
    let started = Instant::now();
    let err = Processes::new(3)
        .db(tmp.path())
        .role("hangs")
        .timeout(Duration::from_secs(3))
        .run()
        .expect_err("a hanging child fails the run");
    let msg = err.to_string();
    println!("{msg}");
    assert!(started.elapsed() < Duration::from_secs(20), "{msg}");
    assert_eq!(err.failures.len(), 1, "{msg}");
    assert!(
        msg.contains("child 2: still running after 3s: killed"),
        "{msg}"
    );
    assert!(msg.contains("child 2 stops answering"), "{msg}");
}

#[test]
fn children_of_a_test_name_that_does_not_exist_are_reported() {
    child_main(child);
    let tmp = TempDb::new();
    let err = Processes::new(2)
        .db(tmp.path())
        .test_name(Some("no_such_test"))
        .run()
        .expect_err("a child that runs no test sends no report");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.failures.len(), 2, "{msg}");
    assert!(msg.contains("sent no report"), "{msg}");
    assert!(msg.contains("\"no_such_test\""), "{msg}");
}
