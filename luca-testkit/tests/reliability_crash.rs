//! Reliability suite, crash row: 20 `SIGKILL` cycles of a `Db` writer with group commit
//! on. After every kill, `PRAGMA integrity_check` is `ok` and every write the child had
//! acknowledged (in this cycle or an earlier one) is in the file.
//!
//! The child runs eight writer tasks on one `Db` (group commit is the default), so the
//! writes queue up and commit in groups; each task appends a write's key to the
//! acknowledgement file only after `Db::write` returned `Ok`.
#![cfg(unix)]

use std::time::{Duration, Instant};

use luca_core::Db;
use luca_testkit::TempDb;
use luca_testkit::crash::{self, Acks, Crash};
use luca_testkit::process::ChildEnv;

const CYCLES: usize = 20;
const TASKS: usize = 8;
/// A child is killed long before it gets here; the bound keeps a stray child finite.
const MOST_PER_TASK: usize = 200_000;
const CHILD_BOUND: Duration = Duration::from_secs(25);

/// The child writer: eight tasks inserting uniquely keyed rows through one `Db`, each
/// write acknowledged on the side channel after it committed.
fn writer(child: &ChildEnv, acks: &Acks) -> luca_core::Result<()> {
    if child.role() == "quits" {
        // The harness's own failure path: a child that stops before it is killed.
        acks.ack("only-one")
            .map_err(|e| luca_core::Error::Panicked {
                message: e.to_string(),
            })?;
        eprintln!("quitting after one write");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| luca_core::Error::Panicked {
            message: e.to_string(),
        })?;
    rt.block_on(async {
        let db = Db::builder(child.db()).group_commit(true).build().await?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (db, acks, cycle) = (db.clone(), acks.clone(), child.index() as i64);
            tasks.push(tokio::spawn(async move {
                for i in 0..MOST_PER_TASK {
                    if started.elapsed() > CHILD_BOUND {
                        break;
                    }
                    let key = format!("c{cycle}-t{t}-{i}");
                    let k = key.clone();
                    db.write(move |c| {
                        c.execute("INSERT INTO ledger (k, cycle) VALUES (?1, ?2)", (&k, cycle))?;
                        Ok(())
                    })
                    .await?;
                    acks.ack(&key).map_err(|e| luca_core::Error::Panicked {
                        message: format!("ack: {e}"),
                    })?;
                }
                Ok::<(), luca_core::Error>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| luca_core::Error::Panicked {
                message: e.to_string(),
            })??;
        }
        Ok(())
    })
}

#[test]
fn sigkill_cycles_of_a_group_commit_writer_lose_no_acknowledged_write() {
    crash::child_main(writer);

    let tmp = TempDb::new();
    let conn = luca_core::rusqlite::Connection::open(tmp.path()).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE ledger (k TEXT PRIMARY KEY, cycle INTEGER NOT NULL);",
    )
    .unwrap();
    drop(conn);

    let report = Crash::new(tmp.path())
        .cycles(CYCLES)
        .kill_after_acks(20..=1000)
        .timeout(Duration::from_secs(30))
        .run(|conn, acked| crash::missing_keys(conn, "ledger", "k", acked))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");

    // The checks ran on real kills of real writers: every cycle was a SIGKILL after at
    // least its drawn number of acknowledged writes.
    assert_eq!(report.cycles.len(), CYCLES);
    for c in &report.cycles {
        assert!(c.acked_at_kill >= c.target, "{c:?}");
        assert!(
            c.killed_by.contains("SIGKILL") || c.killed_by.contains('9'),
            "{c:?}"
        );
    }
    let conn = luca_core::rusqlite::Connection::open(tmp.path()).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    println!(
        "rows in the file: {rows} (acknowledged: {})",
        report.acked_total()
    );
    assert!(rows as u64 >= report.acked_total());
}

#[test]
fn a_child_that_stops_before_the_kill_fails_the_cycle() {
    crash::child_main(writer);
    let tmp = TempDb::new();
    let err = Crash::new(tmp.path())
        .role("quits")
        .cycles(3)
        .kill_after_acks(5..=5)
        .run(|_, _| Ok(Vec::new()))
        .expect_err("a child that ends by itself was never killed mid-stream");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.cycle, 0, "{msg}");
    assert!(
        matches!(err.failure, crash::Failure::EndedByItself { target: 5, .. }),
        "{msg}"
    );
    assert!(msg.contains("ended by itself (exit status: 0)"), "{msg}");
    assert!(msg.contains("quitting after one write"), "{msg}");
    // The acknowledgement files are kept for inspection; this test removes them.
    let dir = err.acks_dir.clone().expect("kept with the error");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    let acked = crash::read_acks(&dir.join("cycle-0.acks")).unwrap();
    assert_eq!(acked, ["only-one"]);
    std::fs::remove_dir_all(dir).unwrap();
}
