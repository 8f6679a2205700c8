//! A small crawler against an in-process "web" of four loopback hosts.
//!
//! Each host is a `luca_testkit::HttpStub` on its own port of `127.0.0.1` (so each is its
//! own authority for the breaker and the politeness limits) and misbehaves in its own way:
//!
//! | host | behaviour |
//! | --- | --- |
//! | healthy | answers every page at once |
//! | flaky | answers `503` to the first request of some pages |
//! | rate-limited | answers `429` with `Retry-After: 1` to the first request of its index |
//! | stalling | hangs past the client's timeout on its index's first request, always on `/s/hang` |
//!
//! Concurrent fetch tasks go through one `luca_http::Fetcher`: the host's circuit breaker,
//! a politeness slot (at most 4 requests per host at once), the request, a typed outcome,
//! the run metrics, and for 429, 5xx and timeouts a retry scheduled with backoff (never
//! before the server's `Retry-After`) in a `RetryQueue` kept in the crawl's database. The
//! crawl loop drains that queue until it is empty.
//!
//! Each page's links go through a `luca_core::Db` (one group-committing write path shared
//! by all tasks; the `pages` table doubles as the frontier's "seen" set), and the leads
//! found in it (e-mail addresses and phone numbers) are saved from blocking threads by a
//! `#[db_retry]` function on each thread's own connection (`luca_core::local`), the way
//! the original scraper's decorated functions did. Both write the same file.
//!
//! At the end it prints a table per host, what the database holds, the retry queue and
//! breaker state, the `RunMetrics` table, and a list of checks; it exits non-zero if a
//! check fails. Nothing leaves 127.0.0.1: links to other hosts are counted, never
//! fetched.
//!
//! ```text
//! cargo run --release --example scraper
//! cargo run --release --example scraper -- --pages 20 --tasks 32 --db crawl.db
//! ```
//!
//! ## A dashboard: `--metrics-addr` and `--serve-after`
//!
//! With `--metrics-addr 127.0.0.1:PORT` the scraper installs a `metrics-exporter-prometheus`
//! recorder for the whole process (once, and only with this flag) and serves its Prometheus
//! text over HTTP on that address, at any path (`/metrics` by convention), while it crawls:
//! the `Db`'s `luca_db_*` figures (commits, writes by outcome, queue depth, write latency,
//! lock wait, group size, busy errors, checkpoints) and the `luca_retry_*` figures of the
//! `#[db_retry]` calls (see luca-core's README, "Observability"). Latencies are histograms
//! with buckets from 50 µs to 10 s, `luca_db_group_size` one with buckets from 1 to 1024.
//! The address must be a loopback one (the examples never listen beyond the machine);
//! port 0 lets the system choose, and the line `metrics: Prometheus text at
//! http://ADDR/metrics` names the address bound, before the crawl starts.
//! `--serve-after SECS` keeps serving that long after the report (the figures stay as the
//! crawl left them), so that a person or a Prometheus server can scrape the final state:
//!
//! ```text
//! cargo run --release --example scraper -- --metrics-addr 127.0.0.1:9898 --serve-after 60
//! curl -s http://127.0.0.1:9898/metrics | grep '^luca_db_'
//! ```

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::error::Error as StdError;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use luca_core::rusqlite::params;
use luca_core::{Db, db_retry, local, shared_state};
use luca_http::breaker::authority;
use luca_http::{
    Backoff, BreakerConfig, ClientConfig, FetchOutcome, Fetcher, HostBreaker, PoliteConfig,
    Politeness, RetryQueue,
};
use luca_testkit::{HttpStub, Reply, TempDb};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use tokio::task::JoinSet;
use tokio::time::Instant;

type BoxError = Box<dyn StdError + Send + Sync>;

/// At most this many requests to one host at once.
const PER_HOST: usize = 4;
/// The client's whole-request timeout: the stalling host hangs far longer.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(400);
/// How long the stalling host hangs (it stops hanging when its stub is dropped).
const STALL: Duration = Duration::from_secs(30);
/// The rate-limited host's `Retry-After`, in seconds.
const RETRY_AFTER_SECS: u64 = 1;
/// Retries per URL before the crawler gives up on it.
const MAX_RETRIES: u32 = 3;
/// How long the healthy host takes to answer a product page.
const PAGE_TIME: Duration = Duration::from_millis(20);
/// The table of the persistent retry queue.
const QUEUE_TABLE: &str = "scraper_retry_queue";

const USAGE: &str = "\
usage: scraper [--pages N] [--tasks N] [--db PATH] [--deadline SECS]
               [--metrics-addr 127.0.0.1:PORT [--serve-after SECS]]

  --pages N              pages per host (1 to 1000, default 8)
  --tasks N              concurrent fetch tasks (1 to 1024, default 16)
  --db PATH              the crawl's SQLite file (default: a temporary file, removed at exit)
  --deadline SECS        give up the crawl after this long (1 to 3600, default 60)
  --metrics-addr ADDR    serve the process's figures (luca_db_*, luca_retry_*) as Prometheus
                         text over HTTP on ADDR, a loopback address and port (port 0: any
                         free port; the address bound is printed)
  --serve-after SECS     with --metrics-addr: keep serving this long after the report
                         (0 to 3600, default 0)";

/// How many free ports `--metrics-addr 127.0.0.1:0` tries, should another program take the
/// one found between its probe and the exporter's bind.
const BIND_TRIES: usize = 8;

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// Pages per host.
    pub(crate) pages: usize,
    /// Concurrent fetch tasks.
    pub(crate) tasks: usize,
    /// The database file; `None`: a temporary one.
    pub(crate) db: Option<PathBuf>,
    /// The crawl's time bound.
    pub(crate) deadline: Duration,
    /// Where to serve Prometheus text (a loopback address); `None`: no recorder, no listener.
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// How long to keep serving it after the report.
    pub(crate) serve_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pages: 8,
            tasks: 16,
            db: None,
            deadline: Duration::from_secs(60),
            metrics_addr: None,
            serve_after: Duration::ZERO,
        }
    }
}

/// Reads the flags (without the program name); `Err` holds the message to print.
pub(crate) fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "-h" || arg == "--help" {
            return Err(USAGE.to_owned());
        }
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("`{name}` needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--pages" => cfg.pages = number(&arg, value(&arg)?, 1, 1000)?,
            "--tasks" => cfg.tasks = number(&arg, value(&arg)?, 1, 1024)?,
            "--deadline" => {
                cfg.deadline = Duration::from_secs(number(&arg, value(&arg)?, 1, 3600)? as u64);
            }
            "--db" => cfg.db = Some(PathBuf::from(value(&arg)?)),
            "--metrics-addr" => cfg.metrics_addr = Some(loopback(&arg, value(&arg)?)?),
            "--serve-after" => {
                cfg.serve_after = Duration::from_secs(number(&arg, value(&arg)?, 0, 3600)? as u64);
            }
            _ => return Err(format!("unknown argument `{arg}`\n\n{USAGE}")),
        }
    }
    if cfg.metrics_addr.is_none() && !cfg.serve_after.is_zero() {
        return Err(format!(
            "`--serve-after` needs `--metrics-addr` (there is nothing to serve without it)\n\n{USAGE}"
        ));
    }
    Ok(cfg)
}

/// A `--metrics-addr` value: an IP address and port, the address a loopback one.
fn loopback(name: &str, v: OsString) -> Result<SocketAddr, String> {
    let s = v.to_string_lossy();
    match s.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => Ok(addr),
        Ok(addr) => Err(format!(
            "`{name}` takes a loopback address such as 127.0.0.1:9898, not `{addr}` \
             (the examples never listen beyond this machine)\n\n{USAGE}"
        )),
        Err(_) => Err(format!(
            "`{name}` takes an IP address and port such as 127.0.0.1:9898 (port 0: any free \
             port), not `{s}`\n\n{USAGE}"
        )),
    }
}

/// Installs the process's `metrics` recorder, a Prometheus one, and serves its text over
/// HTTP on `addr` from the current tokio runtime; returns the address bound. Call it once
/// per process, inside the runtime.
///
/// The exporter binds the address itself, so for port 0 a free port is found first (bound
/// and let go at once) and handed to it; should another program take that port in between,
/// the exporter's bind fails before anything is installed, and another port is tried.
pub(crate) fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr, BoxError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let target = if addr.port() == 0 {
            std::net::TcpListener::bind(addr)?.local_addr()?
        } else {
            addr
        };
        // Histograms rather than the default summaries: their buckets add up across
        // scrapes and processes, as a dashboard's rates and quantiles need.
        let builder = PrometheusBuilder::new()
            .with_http_listener(target)
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )?
            .set_buckets_for_metric(
                Matcher::Full("luca_db_group_size".into()),
                &[
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            )?;
        match builder.install() {
            Ok(()) => return Ok(target),
            Err(BuildError::FailedToCreateHTTPListener(_))
                if addr.port() == 0 && tries < BIND_TRIES => {}
            Err(e) => return Err(format!("cannot serve metrics on {target}: {e}").into()),
        }
    }
}

fn number(name: &str, v: OsString, min: usize, max: usize) -> Result<usize, String> {
    let s = v.to_string_lossy();
    match s.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{name}` takes a number from {min} to {max}, not `{s}`\n\n{USAGE}"
        )),
    }
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    let cfg = match parse_args(std::env::args_os().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let metrics_at = match cfg.metrics_addr.map(serve_metrics).transpose() {
        Ok(at) => at,
        Err(e) => {
            eprintln!("scraper: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(at) = metrics_at {
        println!("metrics: Prometheus text at http://{at}/metrics");
    }
    match run(&cfg).await {
        Ok(report) => {
            print!("{}", report.text);
            if let Some(at) = metrics_at.filter(|_| !cfg.serve_after.is_zero()) {
                println!(
                    "metrics: serving http://{at}/metrics for {} s more",
                    cfg.serve_after.as_secs()
                );
                tokio::time::sleep(cfg.serve_after).await;
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("scraper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a run found, and its printed report.
#[derive(Debug)]
pub(crate) struct Report {
    /// The whole report as printed.
    pub(crate) text: String,
    /// The checks that failed (empty: the run passed).
    pub(crate) failed: Vec<String>,
}

impl Report {
    pub(crate) fn passed(&self) -> bool {
        self.failed.is_empty()
    }
}

/// What one host did, as seen by the crawler.
#[derive(Debug, Default, Clone)]
struct HostTally {
    ok: u64,
    not_found: u64,
    server_errors: u64,
    too_many: u64,
    timeouts: u64,
    other_errors: u64,
    /// Fetches refused by the open breaker: no request sent, the URL queued.
    deferred: u64,
    /// Retryable failures that got no retry (the attempts were used up).
    gave_up: u64,
}

/// The crawl's counters, shared by every fetch task: each field behind its own guard.
#[shared_state]
#[derive(Debug, Default)]
struct Tally {
    hosts: BTreeMap<String, HostTally>,
    #[shared(counter)]
    links_found: u64,
    #[shared(counter)]
    outside_links: u64,
    /// URLs handed to a fetch task that are not in this run's web (never fetched).
    #[shared(counter)]
    out_of_scope: u64,
    /// Leads found, counting each page they are on.
    #[shared(counter)]
    leads_found: u64,
    /// Calls of `save_leads`.
    #[shared(counter)]
    lead_saves: u64,
    /// Leads `save_leads` acknowledged as new rows.
    #[shared(counter)]
    leads_saved: u64,
}

/// A lead found in a page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Lead {
    kind: &'static str,
    value: String,
}

/// Everything a fetch task needs.
struct Crawl {
    fetcher: Fetcher,
    db: Db,
    db_path: PathBuf,
    run: i64,
    /// The authorities of the stub web: links elsewhere are never fetched.
    scope: HashSet<String>,
    tally: Tally,
}

/// One host of the stub web.
struct Host {
    role: &'static str,
    stub: HttpStub,
}

impl Host {
    fn authority(&self) -> String {
        self.stub.addr().to_string()
    }
}

/// Starts the four hosts and scripts their pages.
async fn start_web(pages: usize) -> std::io::Result<Vec<Host>> {
    let healthy = HttpStub::start().await?;
    let flaky = HttpStub::start().await?;
    let limited = HttpStub::start().await?;
    let stalling = HttpStub::start().await?;
    let (h, f, r, s) = (healthy.url(), flaky.url(), limited.url(), stalling.url());

    let mut index = String::from("<html><body><h1>Healthy Widgets</h1><ul>");
    for i in 0..pages {
        let _ = write!(index, r#"<li><a href="/p/{i}">product {i}</a></li>"#);
    }
    let _ = write!(
        index,
        r#"</ul><a href="{f}/">partners</a> <a href="{r}/">api</a> <a href="{s}/">archive</a>
        <a href="{s}/s/hang">old archive</a> <a href="/p/missing">discontinued</a>
        <a href="https://example.org/">elsewhere (never fetched)</a>
        <p>Contact: <a href="mailto:info@healthy.test">info@healthy.test</a>, +44 20 7946 0000</p>
        </body></html>"#
    );
    healthy.on("/").respond(Reply::ok(index));
    for i in 0..pages {
        let next = (i + 1) % pages;
        let page = Reply::ok(format!(
            r#"<html><body><h1>Product {i}</h1>
            <p>Ask sales{i}@healthy.test or call +1 555 0100 {i:03}.</p>
            <a href="/p/{next}">next</a> <a href="{f}/f/{i}">reseller</a>
            <a href="{r}/r/{i}">price feed</a> <a href="{s}/s/{i}">history</a>
            </body></html>"#
        ));
        // A little server time, so that requests to this host overlap.
        healthy.on(format!("/p/{i}")).respond(page.delay(PAGE_TIME));
    }

    let mut index = String::from("<html><body><h1>Partners</h1>");
    for i in 0..pages {
        let _ = write!(index, r#"<a href="/f/{i}">partner {i}</a> "#);
    }
    index.push_str("</body></html>");
    flaky
        .on("/")
        .respond_seq([Reply::service_unavailable(), Reply::ok(index)]);
    for i in 0..pages {
        let page = Reply::ok(format!(
            r#"<html><body>Partner {i}: team{i}@flaky.test <a href="{h}/p/{i}">product</a></body></html>"#
        ));
        if i % 3 == 1 {
            flaky
                .on(format!("/f/{i}"))
                .respond_seq([Reply::service_unavailable(), page]);
        } else {
            flaky.on(format!("/f/{i}")).respond(page);
        }
    }

    let mut index = String::from("<html><body><h1>Price API</h1>");
    for i in 0..pages {
        let _ = write!(index, r#"<a href="/r/{i}">feed {i}</a> "#);
    }
    index.push_str("</body></html>");
    limited.on("/").respond_seq([
        Reply::too_many_requests().retry_after_secs(RETRY_AFTER_SECS),
        Reply::ok(index),
    ]);
    for i in 0..pages {
        limited.on(format!("/r/{i}")).respond(Reply::ok(format!(
            "<html><body>Feed {i}: desk +1 555 0200 {i:03}</body></html>"
        )));
    }

    let mut index = String::from("<html><body><h1>Archive</h1>");
    for i in 0..pages {
        let _ = write!(index, r#"<a href="/s/{i}">year {i}</a> "#);
    }
    index.push_str(r#"<a href="/s/hang">the big one</a></body></html>"#);
    stalling
        .on("/")
        .respond_seq([Reply::stall(STALL), Reply::ok(index)]);
    stalling.on("/s/hang").respond(Reply::stall(STALL));
    for i in 0..pages {
        stalling.on(format!("/s/{i}")).respond(Reply::ok(format!(
            "<html><body>Year {i}: archive{i}@stalling.test</body></html>"
        )));
    }

    Ok(vec![
        Host {
            role: "healthy",
            stub: healthy,
        },
        Host {
            role: "flaky (503)",
            stub: flaky,
        },
        Host {
            role: "rate-limited (429)",
            stub: limited,
        },
        Host {
            role: "stalling",
            stub: stalling,
        },
    ])
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started_unix INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    run INTEGER NOT NULL, url TEXT NOT NULL, host TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'fetched', 'not_found', 'gave_up', 'failed')),
    bytes INTEGER,
    PRIMARY KEY (run, url));
CREATE TABLE IF NOT EXISTS links (
    run INTEGER NOT NULL, from_url TEXT NOT NULL, to_url TEXT NOT NULL,
    PRIMARY KEY (run, from_url, to_url));
CREATE TABLE IF NOT EXISTS leads (
    run INTEGER NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, page TEXT NOT NULL,
    PRIMARY KEY (run, kind, value));
";

/// Saves a page's leads on this thread's own connection, in one `BEGIN IMMEDIATE`
/// transaction; the whole function is retried if the database is busy (the `Db`'s writer
/// holds the same file's write lock while it commits a group). Returns how many were new.
#[db_retry(max_retries = 8, delay_ms = 5, max_delay_ms = 200)]
fn save_leads(db_path: &Path, run: i64, page: &str, leads: &[Lead]) -> luca_core::Result<usize> {
    local::with_connection(db_path, |conn| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut added = 0;
        {
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO leads (run, kind, value, page) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for lead in leads {
                added += insert.execute(params![run, lead.kind, lead.value, page])?;
            }
        }
        // An early `?` above leaves the transaction open: `with_connection` rolls it back.
        conn.execute_batch("COMMIT")?;
        Ok(added)
    })
}

/// Stores a fetched page and its links in one write, and queues the links never seen in
/// this run; returns those (the new frontier). The closure may run more than once (a
/// group commit that is retried), so it only touches the database.
async fn store_page(
    db: &Db,
    run: i64,
    url: &str,
    bytes: usize,
    links: Vec<(String, String)>,
) -> luca_core::Result<Vec<String>> {
    let url = url.to_owned();
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    db.write(move |conn| {
        conn.execute(
            "UPDATE pages SET state = 'fetched', bytes = ?3 WHERE run = ?1 AND url = ?2",
            params![run, url, bytes],
        )?;
        let mut link = conn.prepare_cached(
            "INSERT OR IGNORE INTO links (run, from_url, to_url) VALUES (?1, ?2, ?3)",
        )?;
        let mut page = conn.prepare_cached(
            "INSERT OR IGNORE INTO pages (run, url, host, state) VALUES (?1, ?2, ?3, 'queued')",
        )?;
        let mut new = Vec::new();
        for (to, host) in &links {
            link.execute(params![run, url, to])?;
            if page.execute(params![run, to, host])? == 1 {
                new.push(to.clone());
            }
        }
        Ok(new)
    })
    .await
}

/// Sets the final state of a page that was not fetched.
async fn mark(db: &Db, run: i64, url: &str, state: &'static str) -> luca_core::Result<()> {
    let url = url.to_owned();
    db.write(move |conn| {
        conn.execute(
            "UPDATE pages SET state = ?3 WHERE run = ?1 AND url = ?2",
            params![run, url, state],
        )?;
        Ok(())
    })
    .await
}

/// The `href` targets of a page, resolved by `resolve` (against the page's URL): the
/// `(url, authority)` of those in the stub web, and how many pointed elsewhere.
fn extract_links(
    html: &str,
    resolve: impl Fn(&str) -> Option<(String, String)>,
    scope: &HashSet<String>,
) -> (Vec<(String, String)>, u64) {
    let mut links = Vec::new();
    let mut outside = 0;
    let mut seen = HashSet::new();
    let mut rest = html;
    while let Some(at) = rest.find("href=\"") {
        rest = &rest[at + 6..];
        let Some(end) = rest.find('"') else { break };
        let href = &rest[..end];
        rest = &rest[end..];
        if href.starts_with("mailto:") || href.starts_with("tel:") {
            continue;
        }
        match resolve(href) {
            Some((mut url, host)) if scope.contains(&host) => {
                if let Some(hash) = url.find('#') {
                    url.truncate(hash);
                }
                if seen.insert(url.clone()) {
                    links.push((url, host));
                }
            }
            _ => outside += 1,
        }
    }
    (links, outside)
}

/// The leads in a page's text: e-mail addresses, and phone numbers written `+` and 10 to
/// 15 digits (spaces and dashes allowed between them), normalised to `+digits`.
fn extract_leads(html: &str) -> Vec<Lead> {
    let mut leads: Vec<Lead> = Vec::new();
    let mut push = |kind, value: String| {
        let lead = Lead { kind, value };
        if !leads.contains(&lead) {
            leads.push(lead);
        }
    };
    let is_sep = |c: char| c.is_whitespace() || "<>\"'(),;:".contains(c);
    for token in html.split(is_sep) {
        let token = token.trim_end_matches('.');
        if let Some((user, domain)) = token.split_once('@') {
            let user_ok = !user.is_empty()
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._%+-".contains(c));
            let domain_ok = domain.contains('.')
                && !domain.starts_with('.')
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
            if user_ok && domain_ok {
                push("email", token.to_ascii_lowercase());
            }
        }
    }
    let bytes = html.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'+' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut digits = String::from("+");
        while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b' ' || bytes[j] == b'-')
        {
            if bytes[j].is_ascii_digit() {
                digits.push(char::from(bytes[j]));
            }
            j += 1;
        }
        if (11..=16).contains(&digits.len()) {
            push("phone", digits);
        }
        i = j;
    }
    leads
}

/// Fetches one URL and stores what it found; returns the URLs it discovered.
async fn visit(crawl: Arc<Crawl>, url: String) -> Result<Vec<String>, BoxError> {
    // `host_of` gives what `authority` gives for the URLs of this web (no default ports).
    let host = host_of(&url);
    if !crawl.scope.contains(&host) {
        // Only the queue could hand one out (links are scoped when found): never fetched.
        crawl.tally.incr_out_of_scope();
        return Ok(Vec::new());
    }
    let outcome = crawl.fetcher.fetch(url.as_str()).await;
    let count = |f: fn(&mut HostTally)| {
        crawl
            .tally
            .update_hosts(|hosts| f(hosts.entry(host.clone()).or_default()));
    };
    match outcome {
        FetchOutcome::Ok(page) => {
            let html = String::from_utf8_lossy(&page.body);
            let resolve = |href: &str| {
                let to = page.url.join(href).ok()?;
                Some((to.to_string(), authority(&to)))
            };
            let (links, outside) = extract_links(&html, resolve, &crawl.scope);
            let leads = extract_leads(&html);
            crawl.tally.add_links_found(links.len() as u64);
            crawl.tally.add_outside_links(outside);
            crawl.tally.add_leads_found(leads.len() as u64);
            if !leads.is_empty() {
                // `save_leads` blocks (SQLite, and #[db_retry]'s sleeps): a blocking thread.
                let (path, run, page_url) = (crawl.db_path.clone(), crawl.run, url.clone());
                let saved =
                    tokio::task::spawn_blocking(move || save_leads(&path, run, &page_url, &leads))
                        .await??;
                crawl.tally.incr_lead_saves();
                crawl.tally.add_leads_saved(saved as u64);
            }
            let new = store_page(&crawl.db, crawl.run, &url, page.body.len(), links).await?;
            count(|t| t.ok += 1);
            Ok(new)
        }
        FetchOutcome::NotFound => {
            mark(&crawl.db, crawl.run, &url, "not_found").await?;
            count(|t| t.not_found += 1);
            Ok(Vec::new())
        }
        outcome if outcome.is_retryable() => {
            match outcome {
                FetchOutcome::ServerError { .. } => count(|t| t.server_errors += 1),
                FetchOutcome::TooManyRequests { .. } => count(|t| t.too_many += 1),
                FetchOutcome::Timeout { .. } => count(|t| t.timeouts += 1),
                FetchOutcome::HostOpen { .. } => count(|t| t.deferred += 1),
                _ => count(|t| t.other_errors += 1),
            }
            // Queued for later (the crawl loop takes it back when due), or out of attempts.
            if outcome.retry_at().is_none() {
                mark(&crawl.db, crawl.run, &url, "gave_up").await?;
                count(|t| t.gave_up += 1);
            }
            Ok(Vec::new())
        }
        _ => {
            // Another 4xx, a body over a limit, an unusable URL: final, not retried.
            mark(&crawl.db, crawl.run, &url, "failed").await?;
            count(|t| t.other_errors += 1);
            Ok(Vec::new())
        }
    }
}

/// A SQL `COUNT(*)` as `u64`.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The crawl loop: at most `tasks` fetches at once; URLs come from the pages found and,
/// when due, from the retry queue. Ends when nothing is in flight, nothing is waiting and
/// the queue is empty (`Ok(true)`), or at the deadline (`Ok(false)`).
async fn crawl_loop(
    crawl: &Arc<Crawl>,
    queue: &RetryQueue,
    seeds: Vec<String>,
    tasks: usize,
    deadline: Instant,
) -> Result<bool, BoxError> {
    let mut frontier: VecDeque<String> = seeds.into();
    let mut running = JoinSet::new();
    loop {
        while running.len() < tasks {
            let Some(url) = frontier.pop_front() else {
                break;
            };
            running.spawn(visit(Arc::clone(crawl), url));
        }
        if running.is_empty() && frontier.is_empty() && queue.is_empty() {
            return Ok(true);
        }
        tokio::select! {
            Some(done) = running.join_next() => frontier.extend(done??),
            () = queue.wait_due(), if frontier.is_empty() => {
                frontier.extend(queue.due(Instant::now()).await?);
            }
            () = tokio::time::sleep_until(deadline) => {
                running.abort_all();
                return Ok(false);
            }
        }
    }
}

/// Runs the crawl and builds its report.
pub(crate) async fn run(cfg: &Config) -> Result<Report, BoxError> {
    let started = Instant::now();
    let temp;
    let db_path = match &cfg.db {
        Some(p) => p.clone(),
        None => {
            temp = TempDb::try_named("scraper.db")?;
            temp.path().to_path_buf()
        }
    };
    let db = Db::open(&db_path).await?;
    let run = db
        .write(|conn| {
            conn.execute_batch(SCHEMA)?;
            conn.execute("INSERT INTO runs (started_unix) VALUES (unixepoch())", [])?;
            Ok(conn.last_insert_rowid())
        })
        .await?;

    // The retry queue lives in the crawl's database: retries survive a crash. This web
    // lives for one run only, so retries an interrupted earlier run left are dropped.
    let queue = RetryQueue::persistent_in(&db, QUEUE_TABLE, 10_000).await?;
    let stale = queue.entries();
    for (url, _) in &stale {
        queue.remove(url).await?;
    }

    let web = start_web(cfg.pages).await?;
    let scope: HashSet<String> = web.iter().map(Host::authority).collect();

    let client = ClientConfig::default()
        .user_agent("luca-scraper-example/0.1")
        .connect_timeout(Duration::from_secs(2))
        .timeout(CLIENT_TIMEOUT)
        .build()?;
    let breaker = HostBreaker::new(
        BreakerConfig::default()
            .base(Duration::from_millis(50))
            .max(Duration::from_millis(1500))
            .probe_deadline(Duration::from_millis(600)),
    );
    let fetcher = Fetcher::builder()
        .client(client)
        .breaker(breaker.clone())
        .politeness(Politeness::new(
            PoliteConfig::default()
                .per_host(PER_HOST)
                .min_delay(Duration::from_millis(2))
                .jitter(Duration::from_millis(2)),
        ))
        .retry_queue(queue.clone())
        .backoff(
            Backoff::default()
                .base(Duration::from_millis(100))
                .max(Duration::from_millis(1500))
                .max_attempts(MAX_RETRIES),
        )
        .build()
        .await?;

    let seed = format!("{}/", web[0].stub.url());
    db.write({
        let (seed, host) = (seed.clone(), web[0].authority());
        move |conn| {
            conn.execute(
                "INSERT INTO pages (run, url, host, state) VALUES (?1, ?2, ?3, 'queued')",
                params![run, seed, host],
            )?;
            Ok(())
        }
    })
    .await?;

    let retries_before = luca_core::metrics().snapshot();
    let crawl = Arc::new(Crawl {
        fetcher: fetcher.clone(),
        db: db.clone(),
        db_path: db_path.clone(),
        run,
        scope,
        tally: Tally::default(),
    });
    let deadline = started + cfg.deadline;
    let finished = crawl_loop(&crawl, &queue, vec![seed], cfg.tasks, deadline).await?;
    let elapsed = started.elapsed();
    let db_retries = luca_core::metrics().snapshot().since(&retries_before);

    // What the database holds for this run.
    let (states, links, leads, sample) = db
        .read(move |conn| {
            let mut stmt =
                conn.prepare("SELECT state, COUNT(*) FROM pages WHERE run = ?1 GROUP BY state")?;
            let states: BTreeMap<String, u64> = stmt
                .query_map([run], |r| Ok((r.get(0)?, count(r.get(1)?))))?
                .collect::<Result<_, _>>()?;
            let links = count(conn.query_row(
                "SELECT COUNT(*) FROM links WHERE run = ?1",
                [run],
                |r| r.get(0),
            )?);
            let mut stmt =
                conn.prepare("SELECT kind, COUNT(*) FROM leads WHERE run = ?1 GROUP BY kind")?;
            let leads: BTreeMap<String, u64> = stmt
                .query_map([run], |r| Ok((r.get(0)?, count(r.get(1)?))))?
                .collect::<Result<_, _>>()?;
            let mut stmt = conn.prepare(
                "SELECT kind, value FROM (SELECT kind, value, row_number() OVER \
                 (PARTITION BY kind ORDER BY page, value) AS n FROM leads WHERE run = ?1) \
                 WHERE n <= 2 ORDER BY kind, value",
            )?;
            let sample: Vec<(String, String)> = stmt
                .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok((states, links, leads, sample))
        })
        .await?;

    let hosts = crawl.tally.hosts();
    let snap = fetcher.metrics().snapshot();
    let stored = |s: &str| states.get(s).copied().unwrap_or(0);
    let total = |f: fn(&HostTally) -> u64| hosts.values().map(f).sum::<u64>();
    let leads_stored: u64 = leads.values().sum();

    let mut t = String::new();
    let _ = writeln!(
        t,
        "scraper: {} hosts on 127.0.0.1, {} pages each, {} fetch tasks, at most {PER_HOST} requests per host",
        web.len(),
        cfg.pages,
        cfg.tasks
    );
    let _ = writeln!(t, "database: {}", db_path.display());
    if !stale.is_empty() {
        let _ = writeln!(
            t,
            "dropped {} retries an earlier run left in `{QUEUE_TABLE}` (their hosts are gone)",
            stale.len()
        );
    }
    let _ = writeln!(
        t,
        "crawl {} in {:.1} s\n",
        if finished {
            "finished"
        } else {
            "STOPPED AT THE DEADLINE"
        },
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "{:<17} {:<18} {:>4} {:>4} {:>4} {:>4} {:>7} {:>8} {:>7} {:>13}",
        "host",
        "role",
        "ok",
        "404",
        "5xx",
        "429",
        "timeout",
        "deferred",
        "gave up",
        "max in flight"
    );
    for h in &web {
        let a = h.authority();
        let c = hosts.get(&a).cloned().unwrap_or_default();
        let _ = writeln!(
            t,
            "{:<17} {:<18} {:>4} {:>4} {:>4} {:>4} {:>7} {:>8} {:>7} {:>13}",
            a,
            h.role,
            c.ok,
            c.not_found,
            c.server_errors,
            c.too_many,
            c.timeouts,
            c.deferred,
            c.gave_up,
            h.stub.max_concurrent("127.0.0.1")
        );
    }
    let _ = writeln!(
        t,
        "(deferred: the host's breaker was open, so no request was sent and the URL was queued)\n"
    );
    let _ = writeln!(
        t,
        "stored: {} pages fetched, {} not found, {} given up, {} failed, {} still queued; {} links; {} leads ({})",
        stored("fetched"),
        stored("not_found"),
        stored("gave_up"),
        stored("failed"),
        stored("queued"),
        links,
        leads_stored,
        leads
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (kind, value) in &sample {
        let _ = writeln!(t, "  lead: {kind:<5} {value}");
    }
    let _ = writeln!(
        t,
        "links to other hosts (never fetched): {}",
        crawl.tally.outside_links()
    );
    let _ = writeln!(
        t,
        "retry queue `{QUEUE_TABLE}`: {} retries scheduled, {} left",
        snap.retries_scheduled,
        queue.len()
    );
    let _ = writeln!(
        t,
        "breaker: {} hosts tracked, {} open now, {} trips",
        breaker.tracked_hosts(),
        breaker.open_hosts(),
        breaker.trips()
    );
    let _ = writeln!(
        t,
        "#[db_retry] save_leads: {} calls on blocking threads' own connections; {db_retries}",
        crawl.tally.lead_saves()
    );
    let _ = writeln!(t, "{}", fetcher.metrics());

    t.push_str("checks:\n");
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        let _ = writeln!(t, "  {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failed.push(what);
        }
    };
    check(
        finished,
        format!("the crawl ended within {:?}", cfg.deadline),
    );
    check(queue.is_empty(), "the retry queue is drained".to_owned());
    check(
        stored("queued") == 0,
        "every page found reached a final state".to_owned(),
    );
    check(
        stored("fetched") == total(|c| c.ok) && stored("fetched") == snap.status_2xx,
        format!(
            "pages stored as fetched ({}) = pages fetched ({}) = 2xx responses ({})",
            stored("fetched"),
            total(|c| c.ok),
            snap.status_2xx
        ),
    );
    check(
        leads_stored == crawl.tally.leads_saved(),
        format!(
            "leads stored ({leads_stored}) = leads acknowledged by save_leads ({}; found {} times)",
            crawl.tally.leads_saved(),
            crawl.tally.leads_found()
        ),
    );
    // Each host's index and pages; the healthy host's missing page and the stalling
    // host's hanging page are the two that cannot be had.
    let reachable = (web.len() * (cfg.pages + 1)) as u64;
    check(
        stored("fetched") == reachable && stored("not_found") == 1 && stored("gave_up") == 1,
        format!(
            "every page that answers was fetched in the end ({} of {reachable}); only the missing one and the hanging one were not",
            stored("fetched")
        ),
    );
    check(
        crawl.tally.out_of_scope() == 0,
        format!(
            "every URL the crawl took up is in this run's web ({} were not)",
            crawl.tally.out_of_scope()
        ),
    );
    check(
        snap.outcomes() == snap.requests,
        format!(
            "every request has an outcome ({} requests, {} outcomes)",
            snap.requests,
            snap.outcomes()
        ),
    );
    // A request the client gave up on (a timeout) stays in its server's count until the
    // server notices the closed connection, after the client has freed the slot: only
    // hosts without timeouts are held to the limit exactly.
    let answered = |h: &&Host| hosts.get(&h.authority()).is_none_or(|c| c.timeouts == 0);
    check(
        web.iter()
            .filter(answered)
            .all(|h| h.stub.max_concurrent("127.0.0.1") <= PER_HOST),
        format!(
            "no host saw more than {PER_HOST} requests at once (by its own count; {} hosts without timeouts)",
            web.iter().filter(answered).count()
        ),
    );
    check(
        total(|c| c.server_errors) > 0
            && total(|c| c.too_many) > 0
            && total(|c| c.timeouts) > 0
            && total(|c| c.gave_up) > 0,
        "the web misbehaved as scripted (5xx, 429, timeouts, a URL given up)".to_owned(),
    );

    drop(crawl);
    drop(fetcher);
    // Stops the hosts (and the stalled requests still hanging in them).
    drop(web);
    db.close().await?;
    Ok(Report { text: t, failed })
}
