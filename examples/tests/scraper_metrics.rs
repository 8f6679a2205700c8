//! The scraper's `--metrics-addr`: run as a child process with small sizes, its Prometheus
//! text fetched over loopback with a plain HTTP/1.1 request, and the `Db` figures found in
//! it; bad addresses refused with a usage message.
//!
//! As in `examples_run.rs`, the example's source is compiled in as a module and this binary
//! is its own child (`LUCA_EXAMPLE_CHILD` set: the scraper's `main`), so there is no test
//! harness. The recorder is global to a process: only the children install one.

mod harness;
#[path = "../scraper.rs"]
mod scraper;

use harness::{CHILD_ENV, CHILD_LIMIT, Test, os};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TESTS: [Test; 3] = [
    (
        "scraper_metrics_addr_serves_db_figures",
        metrics_addr_serves_db_figures,
    ),
    (
        "scraper_serve_after_ends_and_exits_0",
        serve_after_ends_and_exits_0,
    ),
    ("scraper_bad_metrics_addr_exits_2", bad_metrics_addr_exits_2),
];

fn main() -> ExitCode {
    harness::main(&TESTS, |example| (example == "scraper").then(scraper::main))
}

struct Scraper {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line received so far.
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Scraper {
    fn spawn(args: &[&str]) -> Scraper {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args(args)
            .env(CHILD_ENV, "scraper")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the scraper");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Scraper {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits (at most [`CHILD_LIMIT`] from `since`) for the first stdout line that `want`
    /// accepts, and returns it.
    fn line(&mut self, since: Instant, what: &str, want: impl Fn(&str) -> bool) -> String {
        loop {
            let left = CHILD_LIMIT.saturating_sub(since.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no {what} ({e:?}); stdout so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to end by itself (at most [`CHILD_LIMIT`] from `since`; killed
    /// and a failure after that); returns its exit code, the rest of stdout and stderr.
    fn wait(mut self, since: Instant) -> (Option<i32>, String, String) {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the scraper") {
                break status;
            }
            if since.elapsed() > CHILD_LIMIT {
                panic!("the scraper still runs after {CHILD_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipe is closed: the reader thread sends what is left, then hangs up.
        self.seen.extend(self.lines.iter());
        let stderr = self
            .stderr
            .take()
            .expect("stderr reader")
            .join()
            .expect("stderr");
        (status.code(), self.seen.join("\n"), stderr)
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over a fresh loopback connection (HTTP/1.1, `Connection: close`); returns the
/// status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    assert!(addr.ip().is_loopback(), "{addr}");
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the answer from {addr}: {e}"));
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers:\n{raw}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    let chunked = head.lines().any(|h| {
        h.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// A chunked body's data.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The value of the sample `series` (a metric name with its labels, as printed) in
/// Prometheus text, if it is there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok())?
    })
}

/// A number from the report line that starts with `prefix`, right after it.
fn number_after(out: &str, prefix: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}N` line:\n{out}"))
}

/// `--metrics-addr 127.0.0.1:0 --serve-after 10`: the scraper prints the address it bound
/// before the crawl; after the report, that address serves Prometheus text whose `Db`
/// figures are the crawl's (commits and write latencies, non-zero; at least one
/// acknowledged write per page the report says was stored).
fn metrics_addr_serves_db_figures() {
    let started = Instant::now();
    let mut scraper = Scraper::spawn(&[
        "--pages",
        "2",
        "--tasks",
        "4",
        "--deadline",
        "20",
        "--metrics-addr",
        "127.0.0.1:0",
        "--serve-after",
        "10",
    ]);
    const AT: &str = "metrics: Prometheus text at http://";
    let first = scraper.line(started, "first line", |_| true);
    let addr: SocketAddr = first
        .strip_prefix(AT)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the first line names no address: {first}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let serving = format!("metrics: serving http://{addr}/metrics for 10 s more");
    scraper.line(started, "serving line after the report", |l| l == serving);
    let report = scraper.seen.join("\n");
    assert!(report.contains("crawl finished in "), "{report}");
    assert!(!report.contains("FAIL"), "{report}");
    let fetched = number_after(&report, "stored: ");

    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    let commits = sample(&text, "luca_db_commits_total")
        .unwrap_or_else(|| panic!("no luca_db_commits_total:\n{text}"));
    assert!(commits > 0.0, "{text}");
    let latencies = sample(&text, "luca_db_write_latency_seconds_count")
        .unwrap_or_else(|| panic!("no luca_db_write_latency_seconds:\n{text}"));
    assert!(latencies > 0.0, "{text}");
    assert!(
        sample(&text, "luca_db_write_latency_seconds_sum").is_some_and(|s| s > 0.0),
        "{text}"
    );
    // A histogram with buckets (not a summary), all of its writes in the last one.
    assert_eq!(
        sample(&text, r#"luca_db_write_latency_seconds_bucket{le="+Inf"}"#),
        Some(latencies),
        "{text}"
    );
    // Every stored page was one acknowledged `Db::write` (and the schema and the seed two
    // more); each acknowledged write was timed.
    let writes_ok = sample(&text, r#"luca_db_writes_total{outcome="ok"}"#)
        .unwrap_or_else(|| panic!("no luca_db_writes_total{{outcome=\"ok\"}}:\n{text}"));
    assert!(
        writes_ok >= fetched + 2.0,
        "{writes_ok} ok writes, {fetched} pages stored\n{text}"
    );
    assert!(latencies >= writes_ok, "{text}");
    assert!(writes_ok >= commits, "{text}");
    assert!(
        text.contains("# TYPE luca_db_group_size histogram"),
        "{text}"
    );

    // Still serving; now stop it (the drop kills it) rather than wait the 10 s out.
    drop(scraper);
}

/// `--serve-after 1`: the scraper serves a second past its report, then exits by itself
/// with its report's verdict (0).
fn serve_after_ends_and_exits_0() {
    let started = Instant::now();
    let mut scraper = Scraper::spawn(&[
        "--pages",
        "2",
        "--tasks",
        "4",
        "--deadline",
        "20",
        "--metrics-addr",
        "127.0.0.1:0",
        "--serve-after",
        "1",
    ]);
    scraper.line(started, "serving line after the report", |l| {
        l.starts_with("metrics: serving http://127.0.0.1:") && l.ends_with("/metrics for 1 s more")
    });
    let (code, out, err) = scraper.wait(started);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\nchecks:\n"), "{out}");
}

/// Addresses beyond loopback, and values that are no address, are refused before anything
/// listens: a usage message and exit code 2.
fn bad_metrics_addr_exits_2() {
    let cfg = scraper::parse_args(os(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--serve-after",
        "30",
    ]))
    .expect("valid flags");
    assert_eq!(cfg.metrics_addr, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(cfg.serve_after, Duration::from_secs(30));
    let cfg = scraper::parse_args(os(&["--metrics-addr", "[::1]:9898"])).expect("valid flags");
    assert_eq!(cfg.metrics_addr, Some("[::1]:9898".parse().unwrap()));
    assert_eq!(cfg.serve_after, Duration::ZERO);
    assert_eq!(
        scraper::parse_args(os(&[])).map(|c| (c.metrics_addr, c.serve_after)),
        Ok((None, Duration::ZERO))
    );

    for (bad, says) in [
        (&["--metrics-addr", "0.0.0.0:9000"][..], "loopback address"),
        (&["--metrics-addr", "[::]:9000"], "loopback address"),
        (&["--metrics-addr", "192.0.2.1:9000"], "loopback address"),
        (&["--metrics-addr", "garbage"], "not `garbage`"),
        (&["--metrics-addr", "127.0.0.1"], "IP address and port"),
        (&["--metrics-addr", "localhost:9000"], "IP address and port"),
        (&["--metrics-addr"], "needs a value"),
        (
            &["--serve-after", "5"],
            "`--serve-after` needs `--metrics-addr`",
        ),
        (
            &["--metrics-addr", "127.0.0.1:0", "--serve-after", "3601"],
            "from 0 to 3600",
        ),
    ] {
        let err = scraper::parse_args(os(bad)).expect_err("refused");
        assert!(err.contains(says), "{bad:?}: {err}");
        assert!(err.contains("usage: scraper"), "{bad:?}: {err}");
    }

    for addr in ["0.0.0.0:9000", "garbage"] {
        let started = Instant::now();
        let scraper = Scraper::spawn(&["--metrics-addr", addr, "--pages", "1"]);
        let (code, out, err) = scraper.wait(started);
        assert_eq!(code, Some(2), "{addr}: {out}\n{err}");
        assert!(out.is_empty(), "{addr}: {out}");
        assert!(
            err.contains("`--metrics-addr` takes ") && err.contains(addr),
            "{addr}: {err}"
        );
        assert!(err.contains("usage: scraper"), "{addr}: {err}");
        assert!(err.contains("--serve-after SECS"), "{addr}: {err}");
    }
}
