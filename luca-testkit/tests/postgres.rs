//! `TempPostgres`: a real server that answers, runs unprivileged, and is gone after drop —
//! also after a panic, and after a process that never dropped it has exited.

#![cfg(feature = "postgres")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use luca_core::postgres::tokio_postgres::{self, NoTls};
use luca_testkit::{PgStartError, TempPostgres};

/// Starts a server of its own, or says why the test is skipped (and fails under CI).
fn start_or_skip(what: &str) -> Option<TempPostgres> {
    // The shared server decides whether PostgreSQL is here at all (and prints the skip
    // line); then each test starts its own, to watch it go away.
    TempPostgres::shared_or_skip(what)?;
    Some(TempPostgres::start().unwrap())
}

/// The server's uid, from `/proc/<pid>/status`.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `postmaster.pid`'s first line: the server's pid.
fn server_pid(pg: &TempPostgres) -> u32 {
    let dir = pg.socket_dir().parent().unwrap();
    let pid = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
    pid.lines().next().unwrap().trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) has a /proc entry too: count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// Waits (at most 20 s) until `dir` no longer exists; for the watchdog of a process that
/// is not ours to wait for.
fn gone_within_bound(dir: &Path) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if !dir.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test]
async fn answers_queries_and_runs_unprivileged() {
    let Some(pg) = start_or_skip("answers_queries") else {
        return;
    };
    let (client, conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT 40 + 2, current_user, version()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "postgres");
    assert!(row.get::<_, String>(2).starts_with("PostgreSQL"));
    assert!(pg.version().contains("PostgreSQL"), "{}", pg.version());
    assert_ne!(uid_of(server_pid(&pg)), 0, "PostgreSQL never runs as root");

    // A fresh database per caller, reachable by its own URL.
    let url = pg.create_database().await.unwrap();
    let (other, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let name: String = other
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(url.ends_with(&format!("/{name}")), "{url} vs {name}");

    // And a PgDb on it.
    let db = pg.pg_db().await.unwrap();
    let n = db
        .read(async |tx| Ok(tx.query_one("SELECT 7", &[]).await?.get::<_, i32>(0)))
        .await
        .unwrap();
    assert_eq!(n, 7);
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let Some(pg) = start_or_skip("drop_stops_the_server") else {
        return;
    };
    let dir = pg.socket_dir().parent().unwrap().to_path_buf();
    let pid = server_pid(&pg);
    assert!(alive(pid) && dir.exists());
    drop(pg);
    assert!(!alive(pid), "the server is stopped when drop returns");
    assert!(
        !dir.exists(),
        "{} is removed when drop returns",
        dir.display()
    );
}

#[test]
fn a_panicking_test_still_removes_its_server() {
    let Some(pg) = start_or_skip("a_panicking_test") else {
        return;
    };
    let dir = pg.socket_dir().parent().unwrap().to_path_buf();
    let pid = server_pid(&pg);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _pg = pg;
        panic!("the test failed");
    }));
    assert!(caught.is_err());
    assert!(!alive(pid), "stopped during unwinding");
    assert!(!dir.exists(), "removed during unwinding");
}

/// Re-run by `a_process_that_exits_without_dropping_leaves_nothing`: starts a server,
/// prints its directory and server pid, and exits without dropping it.
#[test]
fn child_exits_without_dropping() {
    if std::env::var_os("LUCA_PG_CHILD").is_none() {
        return; // only meaningful in the child process
    }
    let pg = TempPostgres::start().unwrap();
    let dir = pg.socket_dir().parent().unwrap().to_path_buf();
    println!("DIR={} PID={}", dir.display(), server_pid(&pg));
    std::process::exit(0);
}

#[test]
fn a_process_that_exits_without_dropping_leaves_nothing() {
    if TempPostgres::shared_or_skip("a_process_that_exits").is_none() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_exits_without_dropping", "--nocapture"])
        .env("LUCA_PG_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DIR="))
        .unwrap_or_else(|| {
            panic!(
                "no DIR line: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (dir, pid) = line.split_once(" PID=").unwrap();
    let (dir, pid) = (PathBuf::from(dir), pid.trim().parse::<u32>().unwrap());
    assert!(gone_within_bound(&dir), "{} was not removed", dir.display());
    assert!(!alive(pid), "server {pid} still runs");
}

#[test]
fn start_errors_say_what_is_missing() {
    let e = PgStartError::NotInstalled.to_string();
    assert!(e.contains("apt-get install -y postgresql"), "{e}");
    assert!(e.contains("/usr/lib/postgresql/*/bin"), "{e}");
}

/// Re-run by `without_postgres_one_loud_line_outside_ci_and_a_failure_under_ci`, with
/// `LUCA_PG_BIN` naming a directory without PostgreSQL.
#[test]
fn child_needs_postgres() {
    if std::env::var_os("LUCA_PG_SKIP_CHILD").is_none() {
        return; // only meaningful in the child process
    }
    for what in ["first probe", "second probe"] {
        assert!(TempPostgres::shared_or_skip(what).is_none());
    }
}

#[test]
fn without_postgres_one_loud_line_outside_ci_and_a_failure_under_ci() {
    let child = |ci: bool| {
        let mut c = Command::new(std::env::current_exe().unwrap());
        // No `--nocapture`: the line must get past libtest's capture by itself.
        c.args(["--exact", "child_needs_postgres"])
            .env("LUCA_PG_SKIP_CHILD", "1")
            .env("LUCA_PG_BIN", "/nonexistent/luca-no-postgres-here");
        if ci {
            c.env("CI", "true");
        } else {
            c.env_remove("CI");
        }
        c.output().unwrap()
    };
    let out = child(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "skipped, not failed: {stderr}");
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("SKIPPED PostgreSQL tests"))
        .collect();
    assert_eq!(loud.len(), 1, "one line for the whole binary: {stderr}");
    assert!(
        loud[0].contains("apt-get install -y postgresql"),
        "{}",
        loud[0]
    );
    assert!(loud[0].contains("first probe"), "{}", loud[0]);

    let out = child(true);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "under CI a missing PostgreSQL fails: {all}"
    );
    assert!(all.contains("PostgreSQL is not installed"), "{all}");
}
