//! Two writer processes on one file: nothing is lost, no busy error escapes, and the
//! processes really collide.
//!
//! No test harness: `main` is the parent, and the parent re-executes this binary as the
//! child writer (with `LUCA_DB_TEST_CHILD_WRITER` set to the database path). The child
//! takes the write lock first and says so on its stdout; the parent's first write meets
//! that lock, and only once the parent's stats show the busy error does the parent tell
//! the child (on its stdin) to go on. Then both write `PER_PROCESS` rows at once.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use luca_core::rusqlite::Connection;
use luca_core::{Db, DbBuilder};
use luca_testkit::TempDb;

const T: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "LUCA_DB_TEST_CHILD_WRITER";
const PER_PROCESS: i64 = 1000;
const NAME: &str = "two_writer_processes_lose_nothing";

/// No busy_timeout at all: every collision with the other process is a SQLITE_BUSY that
/// the write path must retry, never hand to the caller. Gives up only after 30 s.
fn contended(path: impl AsRef<std::path::Path>) -> DbBuilder {
    Db::builder(path).busy_timeout(Duration::ZERO).retry_policy(
        luca_core::retry::RetryPolicy::new()
            .with_max_retries(u32::MAX)
            .with_delay(Duration::from_micros(200))
            .with_max_delay(Duration::from_millis(10))
            .with_deadline(Some(T)),
    )
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
        return;
    }
    if !selected(std::env::args().skip(1).collect()) {
        return;
    }
    println!("\nrunning 1 test (two processes)");
    let started = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(parent());
    println!("test {NAME} ... ok ({:.2?})", started.elapsed());
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

/// Reads `cargo test`'s arguments as the standard harness would, for the one test here:
/// `--list`, name filters (with `--exact`), `--skip`, and `--ignored` (this test is not
/// ignored). Options with a value (`--test-threads 2`) are not filters.
fn selected(args: Vec<String>) -> bool {
    const WITH_VALUE: [&str; 6] = [
        "--test-threads",
        "--format",
        "--color",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let (mut exact, mut list, mut only_ignored) = (false, false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--ignored" => only_ignored = true,
            "--skip" => skips.extend(args.next()),
            a if WITH_VALUE.contains(&a) => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    let matches = |f: &String| {
        if exact {
            f == NAME
        } else {
            NAME.contains(f.as_str())
        }
    };
    let chosen = !only_ignored
        && (filters.is_empty() || filters.iter().any(matches))
        && !skips.iter().any(matches);
    if list {
        if chosen {
            println!("{NAME}: test");
        }
        return false;
    }
    if !chosen {
        println!("\nrunning 0 tests (1 filtered out)");
    }
    chosen
}

/// The child writer: takes the write lock, says `locked`, holds it until the parent says
/// `go`, then writes its rows and reports what it met.
fn child(path: &str) {
    let db = contended(path).build_blocking().unwrap();
    let mut hold = Some(());
    db.write_blocking(move |_| {
        // The closure may run again after a busy retry; it holds the lock only once.
        if hold.take().is_some() {
            println!("locked");
            std::io::stdout().flush().unwrap();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "go", "the parent's go-ahead");
        }
        Ok(())
    })
    .unwrap();
    for i in 0..PER_PROCESS {
        db.write_blocking(move |c| {
            Ok(c.execute("INSERT INTO t (k, v) VALUES (?1, 2)", [format!("child{i}")])?)
        })
        .expect("no error escapes the child's writes");
    }
    let stats = db.stats();
    db.close_blocking().unwrap();
    println!(
        "busy {} writes_failed {}",
        stats.busy_total(),
        stats.writes_failed
    );
}

/// Polls `cond` until it holds; fails after the suite's 30 s bound.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {T:?}: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn parent() {
    let tmp = TempDb::new();
    let db = contended(tmp.path()).build().await.unwrap();
    db.write(|c| {
        Ok(c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER)")?)
    })
    .await
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    // The child's stdout, line by line, read on a thread so every wait is bounded.
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| {
        lines
            .recv_timeout(T)
            .unwrap_or_else(|e| panic!("the child did not say {what}: {e}"))
    };
    assert_eq!(next_line("that it holds the lock"), "locked");

    let writes = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 0..PER_PROCESS {
                db.write(move |c| {
                    Ok(c.execute(
                        "INSERT INTO t (k, v) VALUES (?1, 1)",
                        [format!("parent{i}")],
                    )?)
                })
                .await
                .expect("no error escapes the parent's writes");
            }
        })
    };
    // The parent's first write meets the child's lock: the processes collided.
    wait_until("the parent met the child's lock", || {
        db.stats().busy_total() > 0
    })
    .await;
    writeln!(to_child, "go").unwrap();
    to_child.flush().unwrap();
    writes.await.unwrap();
    let child_report = next_line("what it met");
    let status = {
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        done.recv_timeout(T)
            .expect("the child writer finished")
            .unwrap()
    };
    reader.join().unwrap();
    assert!(status.success(), "child writer failed: {status}");
    let stats = db.stats();
    db.close().await.unwrap();
    let c = Connection::open(tmp.path()).unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2 * PER_PROCESS, "0 lost");
    assert_eq!(stats.writes_failed, 0, "0 escaped\n{stats}");
    assert!(stats.busy_total() > 0, "{stats}");
    assert!(
        child_report.ends_with("writes_failed 0"),
        "the child: {child_report}"
    );
    println!(
        "parent met {} busy errors from the other process; child: {child_report}",
        stats.busy_total()
    );
}
