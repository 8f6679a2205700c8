//! [`Fetcher`]: one call that does what a crawler does around every request —
//! breaker check, politeness slot, send, classify, metrics, breaker verdict, retry
//! scheduling — and returns a typed [`FetchOutcome`].
//!
//! ```
//! use std::sync::Arc;
//! use luca_http::{FetchOutcome, Fetcher, RetryQueue, RunMetrics};
//! use luca_testkit::{HttpStub, Reply};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stub = HttpStub::start().await?; // a loopback server: 127.0.0.1 only
//! stub.on("/page").respond(Reply::ok("hello"));
//! stub.on("/busy").respond(Reply::service_unavailable().retry_after_secs(120));
//!
//! let metrics = Arc::new(RunMetrics::new());
//! let queue = RetryQueue::new(10_000);
//! let fetcher = Fetcher::builder()
//!     .metrics(metrics.clone())
//!     .retry_queue(queue.clone())
//!     .build()
//!     .await?;
//!
//! match fetcher.fetch(format!("{}/page", stub.url())).await {
//!     FetchOutcome::Ok(page) => assert_eq!(&page.body[..], b"hello"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! // A 503: the host opens (for its Retry-After, 120 s) and the URL is queued for then.
//! let busy = format!("{}/busy", stub.url());
//! let outcome = fetcher.fetch(busy.as_str()).await;
//! assert!(matches!(outcome, FetchOutcome::ServerError { retry_at: Some(_), .. }));
//! assert_eq!(queue.len(), 1);
//! // The host is open now: no request is sent.
//! let outcome = fetcher.fetch(format!("{}/page", stub.url())).await;
//! assert!(matches!(outcome, FetchOutcome::HostOpen { .. }));
//! assert_eq!(stub.hits("/page"), 1);
//!
//! let snap = metrics.snapshot();
//! assert_eq!((snap.requests, snap.status_2xx, snap.status_5xx), (2, 1, 1));
//! assert_eq!(snap.breaker_trips, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # What one fetch does
//!
//! 0. **URL**: a URL without a host (`mailto:x`, `file:///x`, …) is refused at once with
//!    [`FetchOutcome::Failed`] (reqwest's builder error, naming the URL): it reaches
//!    neither the breaker nor politeness (no entry is made for it, nothing counts as a
//!    failure of any host), the metrics count no request, and nothing is scheduled.
//! 1. **Breaker**: [`HostBreaker::check`] for the URL's [`authority`]. An open host gives
//!    [`FetchOutcome::HostOpen`]`{ until }` without a request; the URL is queued for
//!    `until` (if a [`RetryQueue`] is configured, whatever the method: nothing was sent).
//! 2. **Politeness**: [`Politeness::acquire`] waits for a slot of the host (async,
//!    cancellation-safe); the slot is held until the body has been read.
//!
//!    With a [`HostGate`] ([`FetcherConfig::gate`]) steps 1 and 2 are one:
//!    [`HostGate::acquire`] checks the breaker and takes a slot under one lookup (an open
//!    host, also one that opens while the fetch waits for a slot, gives `HostOpen` as
//!    above); the gate's permit holds the slot until the verdict.
//! 3. **Send** with the client, [`RunMetrics::record_request`] first.
//! 4. **Classify** (see [`FetchOutcome`]) and record in the metrics: the status
//!    ([`RunMetrics::record_status`]), or a timeout, a connect error, a body error.
//! 5. **Breaker verdict**: success for 2xx, 3xx, 404 and other 4xx (and a body over the
//!    size limit); failure for 429, 5xx, timeout, connect error and body error, with the
//!    response's `Retry-After` ([`breaker::retry_after`],
//!    both forms). The breaker's trip count and open-hosts gauge are then copied into
//!    the metrics ([`RunMetrics::record_breaker_trip`] once per new trip,
//!    [`RunMetrics::set_open_hosts`]). Trips count from when the fetcher was built (a
//!    breaker shared with other code has all its trips copied, whoever caused them).
//! 6. **Retry**: for a retryable outcome (429, 5xx, timeout, connect error, body error) of
//!    a retryable request (see [`Retry`]), the URL is scheduled in the queue at
//!    `now + `[`Backoff::delay`]: exponential in the attempt number, with jitter, and
//!    never earlier than the server's `Retry-After`; and never earlier than the end of
//!    the host's open time when the host is open after the verdict (opened by this
//!    outcome or before it; [`HostBreaker::open_until`], [`HostGate::open_until`]): a
//!    retry due while the host is open would only be refused. (A URL already queued
//!    keeps its earlier due time: see the queue's deduplication.) The outcome carries
//!    the due time as `retry_at` (`None` when nothing was scheduled: no queue, a method
//!    not retried, the attempts used up, or the queue refused it — full, or a failed
//!    write, logged with `tracing::warn!`).
//!
//! # Redirects
//!
//! The fetcher classifies what its client returns. The default client (the shared
//! [`client()`](crate::client())) follows redirects as reqwest does (up to 10), so a
//! redirected URL comes back as [`FetchOutcome::Ok`] with the final URL in
//! [`Fetched::url`]; a redirect loop is [`FetchOutcome::Failed`]. To see redirects
//! yourself, give the fetcher a client built with `redirect::Policy::none()`: a 3xx is
//! then [`FetchOutcome::Redirect`] with its `Location` resolved against the URL.
//!
//! # Attempts
//!
//! The fetcher counts the retryable failures of each URL, in a bounded map keyed by the
//! URL as sent (before redirects): a failure that schedules a retry adds one; any final
//! outcome (a response that is not retried) forgets the URL; after
//! [`Backoff::max_attempts`] scheduled retries the next failure schedules nothing and
//! forgets the URL too. [`Fetcher::attempts`] reads a URL's count. Counts are per
//! fetcher (clones share them).
//!
//! Each retry is queued with its attempt number ([`RetryQueue::schedule_attempt`]; a
//! `HostOpen` queues the URL with its current count), and a fetcher starts with the
//! counts of the URLs queued in its [`RetryQueue`] when it is built
//! ([`RetryQueue::attempts`]). With a persistent queue the numbers are in its table, so
//! after a crash or a restart a URL taken from the reopened queue continues its backoff
//! and its [`Backoff::max_attempts`] limit where the previous run left off (build the
//! fetcher after opening the queue and before draining it). A URL fetched with a final
//! outcome while it is still queued keeps its stored number in the queue until it comes
//! back.
//!
//! The map holds at most [`FetcherConfig::max_tracked_urls`] URLs (100 000 by default,
//! also the most counts taken from the queue at build, the earliest due first); when full
//! it forgets the half touched longest ago (those URLs' next backoff starts again from
//! the first attempt).
//!
//! # Cancellation
//!
//! Dropping a fetch future is safe at any point. While it waits for a politeness slot it
//! holds nothing and has sent nothing (no request is counted). Once sent, dropping it
//! frees the slot and drops the breaker permit (with a gate: the gate's permit, which
//! does both): on a closed host that records nothing (the caller cancelled, the host did
//! not fail), a half-open probe counts as a failure (see [`breaker`]); the request stays
//! counted in
//! [`MetricsSnapshot::requests`](crate::MetricsSnapshot::requests) without an outcome, and
//! nothing is scheduled. A trip caused by a dropped probe reaches the metrics at the next
//! fetch, which copies the breaker's counts.
//!
//! # Bodies
//!
//! Only 2xx bodies are read (into [`Fetched::body`]); for other statuses the body is
//! not read and the connection is not reused. With [`FetcherConfig::max_body`], a body
//! longer than the limit (by its `Content-Length`, or while reading) gives
//! [`FetchOutcome::TooLarge`], which is not retried (it would be as large next time).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode, Url};
use tokio::time::Instant;

use crate::breaker::{self, HostBreaker, Open, authority};
use crate::client::ClientError;
use crate::gate::{GatePermit, HostGate};
use crate::metrics::RunMetrics;
use crate::polite::{Politeness, Slot};
use crate::retry_queue::{RetryQueue, Scheduled};

/// Which requests get a retry scheduled after a retryable outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Only idempotent methods: GET, HEAD, OPTIONS, PUT, DELETE, TRACE (the default).
    #[default]
    IfIdempotent,
    /// Any method, POST and PATCH included: the caller knows repeating it is safe.
    Always,
    /// Never schedule a retry for this request, not even after [`FetchOutcome::HostOpen`].
    Never,
}

impl Retry {
    /// Whether a request with `method` may be retried under this rule.
    pub fn allows(self, method: &Method) -> bool {
        match self {
            Retry::Always => true,
            Retry::Never => false,
            Retry::IfIdempotent => is_idempotent(method),
        }
    }
}

/// GET, HEAD, OPTIONS, PUT, DELETE and TRACE (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// The retry backoff: the delay before retry number `attempt` (1 for the first retry) is
/// `min(max, base · 2^(attempt-1))`, shortened by a random part of up to `jitter` of it,
/// and never shorter than the server's `Retry-After` (itself capped at `max`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
    max_attempts: u32,
}

impl Default for Backoff {
    /// Base 10 s, max 15 min, jitter 0.5 (a delay is in `[d/2, d]`), 5 attempts.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(900),
            jitter: 0.5,
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// The delay before the first retry.
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }
    /// The longest delay (backoff and `Retry-After` alike).
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }
    /// The share of each delay that is random, in `[0, 1]` (clamped; NaN counts as 0):
    /// a delay `d` becomes uniform in `[d · (1 - jitter), d]`.
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = if j.is_nan() { 0.0 } else { j.clamp(0.0, 1.0) };
        self
    }
    /// How many retries of one URL are scheduled at most; the next failure schedules none.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// The configured limit of retries per URL.
    pub fn attempts_limit(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before retry number `attempt` without jitter: `min(max, base · 2^(attempt-1))`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.max(1) - 1).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The shortest and longest delay [`Backoff::delay`] can give.
    pub fn bounds(&self, attempt: u32, retry_after: Option<Duration>) -> (Duration, Duration) {
        let d = self.nominal(attempt);
        let ra = retry_after.unwrap_or_default().min(self.max);
        (d.mul_f64(1.0 - self.jitter).max(ra), d.max(ra))
    }

    /// The delay before retry number `attempt` (1-based), given the server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let d = self.nominal(attempt);
        let jittered = d.mul_f64(1.0 - self.jitter * fastrand::f64());
        jittered.max(retry_after.unwrap_or_default().min(self.max))
    }
}

/// A 2xx response with its body read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Fetched {
    /// The final URL (after any redirects the client followed).
    pub url: Url,
    /// The status (2xx).
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// What became of one fetch. Match on it; every variant a crawler acts on differently is
/// its own variant, and `retry_at` says when the URL is due in the [`RetryQueue`]
/// (`None`: not scheduled). `#[non_exhaustive]`: keep a `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchOutcome {
    /// 2xx, body read.
    Ok(Fetched),
    /// 3xx returned by a client that does not follow redirects (see the module docs).
    Redirect {
        /// The status.
        status: StatusCode,
        /// The `Location`, resolved against the request URL (`None`: missing or invalid).
        location: Option<Url>,
        /// The response headers.
        headers: HeaderMap,
    },
    /// 404 Not Found.
    NotFound,
    /// Another 4xx, except 429. Not retried.
    ClientError {
        /// The status.
        status: StatusCode,
    },
    /// 429 Too Many Requests: the host opened, the URL is queued.
    TooManyRequests {
        /// The server's `Retry-After`, if well-formed.
        retry_after: Option<Duration>,
        /// When the URL is due in the queue.
        retry_at: Option<Instant>,
    },
    /// 5xx (or a status outside 100–599).
    ServerError {
        /// The status.
        status: StatusCode,
        /// The server's `Retry-After`, if well-formed.
        retry_after: Option<Duration>,
        /// When the URL is due in the queue.
        retry_at: Option<Instant>,
    },
    /// No response within the client's timeout.
    Timeout {
        /// The client's error.
        error: reqwest::Error,
        /// When the URL is due in the queue.
        retry_at: Option<Instant>,
    },
    /// No response: the connection could not be made (refused, or the client's connect
    /// timeout), or broke before a response head arrived (reset, closed).
    Connect {
        /// The client's error.
        error: reqwest::Error,
        /// When the URL is due in the queue.
        retry_at: Option<Instant>,
    },
    /// A 2xx response whose body could not be read (reset, truncated, timed out).
    Body {
        /// The response status.
        status: StatusCode,
        /// The client's error.
        error: reqwest::Error,
        /// When the URL is due in the queue.
        retry_at: Option<Instant>,
    },
    /// A 2xx body longer than [`FetcherConfig::max_body`]. Not retried.
    TooLarge {
        /// The response status.
        status: StatusCode,
        /// The limit.
        limit: usize,
    },
    /// The host's breaker is open until `until`: no request was sent.
    HostOpen {
        /// When the host may be asked again.
        until: Instant,
        /// When the URL is due in the queue (normally `until`).
        retry_at: Option<Instant>,
    },
    /// The request could not be made at all, or failed in a way that is not the host's
    /// health (an invalid URL, a redirect loop): not retried, a breaker success. A URL
    /// that does not parse or has no host is refused before the breaker and counts
    /// nothing; a failure after sending (a redirect loop) counts the request without an
    /// outcome.
    Failed {
        /// The client's error.
        error: reqwest::Error,
    },
}

impl FetchOutcome {
    /// When the URL is due in the retry queue, if it was scheduled.
    pub fn retry_at(&self) -> Option<Instant> {
        match self {
            FetchOutcome::TooManyRequests { retry_at, .. }
            | FetchOutcome::ServerError { retry_at, .. }
            | FetchOutcome::Timeout { retry_at, .. }
            | FetchOutcome::Connect { retry_at, .. }
            | FetchOutcome::Body { retry_at, .. }
            | FetchOutcome::HostOpen { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    /// The response status, for outcomes that had a response.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            FetchOutcome::Ok(f) => Some(f.status),
            FetchOutcome::Redirect { status, .. }
            | FetchOutcome::ClientError { status }
            | FetchOutcome::ServerError { status, .. }
            | FetchOutcome::Body { status, .. }
            | FetchOutcome::TooLarge { status, .. } => Some(*status),
            FetchOutcome::NotFound => Some(StatusCode::NOT_FOUND),
            FetchOutcome::TooManyRequests { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            _ => None,
        }
    }

    /// Whether the outcome is retryable (whether or not a retry was scheduled).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FetchOutcome::TooManyRequests { .. }
                | FetchOutcome::ServerError { .. }
                | FetchOutcome::Timeout { .. }
                | FetchOutcome::Connect { .. }
                | FetchOutcome::Body { .. }
                | FetchOutcome::HostOpen { .. }
        )
    }
}

/// Settings and parts of a [`Fetcher`]; made by [`Fetcher::builder`].
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct FetcherConfig {
    client: Option<reqwest::Client>,
    breaker: Option<HostBreaker>,
    polite: Option<Politeness>,
    gate: Option<HostGate>,
    metrics: Option<Arc<RunMetrics>>,
    queue: Option<RetryQueue>,
    backoff: Backoff,
    max_body: Option<usize>,
    max_tracked: Option<usize>,
}

impl FetcherConfig {
    /// The client (default: the shared [`client()`](crate::client())).
    pub fn client(mut self, c: reqwest::Client) -> Self {
        self.client = Some(c);
        self
    }
    /// The breaker (default: [`HostBreaker::default`]). Pass a clone to share it.
    pub fn breaker(mut self, b: HostBreaker) -> Self {
        self.breaker = Some(b);
        self
    }
    /// The politeness (default: [`Politeness::default`], 8 per host).
    pub fn politeness(mut self, p: Politeness) -> Self {
        self.polite = Some(p);
        self
    }
    /// Check the breaker and politeness through one [`HostGate`] (one table, one lookup
    /// per request) instead of a [`HostBreaker`] and a [`Politeness`]: the breaker and
    /// politeness given to this builder are then not used (and [`Fetcher::breaker`],
    /// [`Fetcher::politeness`] are idle defaults). Pass a clone to share it.
    pub fn gate(mut self, g: HostGate) -> Self {
        self.gate = Some(g);
        self
    }
    /// The metrics (default: fresh ones, read with [`Fetcher::metrics`]).
    pub fn metrics(mut self, m: Arc<RunMetrics>) -> Self {
        self.metrics = Some(m);
        self
    }
    /// The queue retries go to (default: none, nothing is scheduled).
    pub fn retry_queue(mut self, q: RetryQueue) -> Self {
        self.queue = Some(q);
        self
    }
    /// The retry backoff (default: [`Backoff::default`]).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }
    /// The largest 2xx body read (default: no limit).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = Some(bytes);
        self
    }
    /// How many URLs' attempt counts are kept (default 100 000, at least 2; see the
    /// module docs).
    pub fn max_tracked_urls(mut self, n: usize) -> Self {
        self.max_tracked = Some(n.max(2));
        self
    }

    /// The fetcher. Awaits the shared client only if none was given.
    ///
    /// # Errors
    /// The shared client could not be built.
    pub async fn build(self) -> Result<Fetcher, ClientError> {
        let client = match self.client {
            Some(c) => c,
            None => crate::client::client().await?,
        };
        let breaker = self.breaker.unwrap_or_default();
        let cap = self.max_tracked.unwrap_or(100_000);
        // Continue where a previous run left off: the attempt numbers stored with the
        // queued URLs (a persistent queue loads them from its table).
        let now = Instant::now();
        let map: HashMap<String, (u32, Instant)> = self
            .queue
            .as_ref()
            .map(RetryQueue::attempts)
            .unwrap_or_default()
            .into_iter()
            .take(cap)
            .map(|(url, n)| (url, (n, now)))
            .collect();
        let trips_seen = AtomicU64::new(match &self.gate {
            Some(g) => g.trips(),
            None => breaker.trips(),
        });
        Ok(Fetcher {
            inner: Arc::new(Inner {
                client,
                breaker,
                polite: self.polite.unwrap_or_default(),
                gate: self.gate,
                metrics: self.metrics.unwrap_or_default(),
                queue: self.queue,
                backoff: self.backoff,
                max_body: self.max_body,
                attempts: Mutex::new(Attempts { map, cap }),
                trips_seen,
            }),
        })
    }
}

/// A request's admission: a breaker permit and a politeness slot, or a gate permit
/// (which holds both). A verdict frees the slot, then records the outcome.
enum Pass<'a> {
    Split {
        permit: breaker::Permit<'a>,
        slot: Slot,
    },
    Gate(GatePermit<'a>),
}

impl Pass<'_> {
    fn success(self) {
        match self {
            Pass::Split { permit, slot } => {
                drop(slot);
                permit.success();
            }
            Pass::Gate(p) => p.success(),
        }
    }

    fn failure(self, retry_after: Option<Duration>) {
        match self {
            Pass::Split { permit, slot } => {
                drop(slot);
                permit.failure(retry_after);
            }
            Pass::Gate(p) => p.failure(retry_after),
        }
    }
}

struct Attempts {
    map: HashMap<String, (u32, Instant)>,
    cap: usize,
}

impl Attempts {
    fn bump(&mut self, url: &str, now: Instant) -> u32 {
        if let Some(e) = self.map.get_mut(url) {
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            return e.0;
        }
        if self.map.len() >= self.cap {
            // Forget the half touched longest ago: amortised O(log n) per insert.
            let mut times: Vec<Instant> = self.map.values().map(|e| e.1).collect();
            let mid = times.len() / 2;
            let (_, cut, _) = times.select_nth_unstable(mid);
            let cut = *cut;
            self.map.retain(|_, e| e.1 > cut);
        }
        self.map.insert(url.to_owned(), (1, now));
        1
    }
}

struct Inner {
    client: reqwest::Client,
    breaker: HostBreaker,
    polite: Politeness,
    gate: Option<HostGate>,
    metrics: Arc<RunMetrics>,
    queue: Option<RetryQueue>,
    backoff: Backoff,
    max_body: Option<usize>,
    attempts: Mutex<Attempts>,
    /// The breaker's trip count already copied into the metrics.
    trips_seen: AtomicU64,
}

/// Fetches URLs through a breaker, politeness, metrics and a retry queue; a cheap handle
/// (clones share everything). See the [module docs](self).
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("breaker", &self.inner.breaker)
            .field("politeness", &self.inner.polite)
            .field("gate", &self.inner.gate)
            .field(
                "retry_queue",
                &self.inner.queue.as_ref().map(RetryQueue::len),
            )
            .field("backoff", &self.inner.backoff)
            .field("max_body", &self.inner.max_body)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// The settings, with defaults for everything.
    pub fn builder() -> FetcherConfig {
        FetcherConfig::default()
    }

    /// The client.
    pub fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }
    /// The breaker.
    pub fn breaker(&self) -> &HostBreaker {
        &self.inner.breaker
    }
    /// The politeness.
    pub fn politeness(&self) -> &Politeness {
        &self.inner.polite
    }
    /// The gate, if the fetcher was given one (see [`FetcherConfig::gate`]).
    pub fn gate(&self) -> Option<&HostGate> {
        self.inner.gate.as_ref()
    }
    /// The metrics.
    pub fn metrics(&self) -> &Arc<RunMetrics> {
        &self.inner.metrics
    }
    /// The retry queue, if any.
    pub fn retry_queue(&self) -> Option<&RetryQueue> {
        self.inner.queue.as_ref()
    }
    /// The backoff.
    pub fn backoff(&self) -> &Backoff {
        &self.inner.backoff
    }

    /// Retries scheduled for `url` since its last final outcome (0 if none or forgotten).
    pub fn attempts(&self, url: &str) -> u32 {
        self.attempts_lock().map.get(url).map_or(0, |e| e.0)
    }

    /// `GET url`, retried if retryable. An unparsable URL gives [`FetchOutcome::Failed`].
    pub async fn fetch(&self, url: impl reqwest::IntoUrl) -> FetchOutcome {
        match self.inner.client.get(url).build() {
            Ok(req) => self.fetch_with(req, Retry::IfIdempotent).await,
            Err(error) => FetchOutcome::Failed { error },
        }
    }

    /// Sends `req` (built with [`Fetcher::client`]'s `request`/`get`/`post` …
    /// `.build()`); a retry is scheduled only for an idempotent method.
    pub async fn fetch_request(&self, req: reqwest::Request) -> FetchOutcome {
        self.fetch_with(req, Retry::IfIdempotent).await
    }

    /// Sends `req` with an explicit [`Retry`] rule, e.g. `Retry::Always` for a POST that
    /// is safe to repeat. The queue stores the URL only: the caller rebuilds the request
    /// (method, body) when the URL comes back.
    pub async fn fetch_with(&self, req: reqwest::Request, retry: Retry) -> FetchOutcome {
        let inner = &*self.inner;
        let url = req.url().clone();
        if url.host_str().is_none_or(str::is_empty) {
            // No host, nothing to send: refused before the breaker, politeness and the
            // metrics see it, with the error reqwest gives such a URL when a request is
            // built with it (a builder error naming the URL). (If a reqwest ever built
            // it, the fetch goes on as any other and its client refuses it: a URL
            // without a host has a scheme other than http and https.)
            if let Err(error) = inner
                .client
                .request(req.method().clone(), url.clone())
                .build()
            {
                return FetchOutcome::Failed { error };
            }
        }
        let may_retry = retry.allows(req.method());
        let host = authority(&url);

        let permit = match self.admit(&host).await {
            Ok(p) => p,
            Err(Open { until }) => {
                self.sync_breaker();
                let retry_at = if retry == Retry::Never {
                    None
                } else {
                    let attempt = self.attempts(url.as_str());
                    self.schedule(&url, until, attempt).await
                };
                return FetchOutcome::HostOpen { until, retry_at };
            }
        };
        inner.metrics.record_request();

        let resp = match inner.client.execute(req).await {
            Ok(r) => r,
            Err(error) => {
                if error.is_builder() || error.is_redirect() {
                    permit.success();
                    self.sync_breaker();
                    self.forget(&url);
                    return FetchOutcome::Failed { error };
                }
                let timeout = error.is_timeout() && !error.is_connect();
                if timeout {
                    inner.metrics.record_timeout();
                } else {
                    inner.metrics.record_connect_error();
                }
                permit.failure(None);
                self.sync_breaker();
                let retry_at = self.retry(&url, &host, may_retry, None).await;
                return if timeout {
                    FetchOutcome::Timeout { error, retry_at }
                } else {
                    FetchOutcome::Connect { error, retry_at }
                };
            }
        };

        let status = resp.status();
        inner.metrics.record_status(status.as_u16());
        let retry_after = breaker::retry_after(resp.headers());

        if status.is_success() {
            let final_url = resp.url().clone();
            let headers = resp.headers().clone();
            let body = read_body(resp, inner.max_body).await;
            return match body {
                Ok(body) => {
                    permit.success();
                    self.sync_breaker();
                    self.forget(&url);
                    FetchOutcome::Ok(Fetched {
                        url: final_url,
                        status,
                        headers,
                        body,
                    })
                }
                Err(BodyError::TooLarge(limit)) => {
                    permit.success();
                    self.sync_breaker();
                    self.forget(&url);
                    FetchOutcome::TooLarge { status, limit }
                }
                Err(BodyError::Read(error)) => {
                    inner.metrics.record_body_error();
                    permit.failure(None);
                    self.sync_breaker();
                    let retry_at = self.retry(&url, &host, may_retry, None).await;
                    FetchOutcome::Body {
                        status,
                        error,
                        retry_at,
                    }
                }
            };
        }
        let headers = resp.headers().clone();
        drop(resp);

        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || !(100..500).contains(&status.as_u16());
        if !retryable {
            permit.success();
            self.sync_breaker();
            self.forget(&url);
            return if status.is_redirection() {
                let location = headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| url.join(v).ok());
                FetchOutcome::Redirect {
                    status,
                    location,
                    headers,
                }
            } else if status == StatusCode::NOT_FOUND {
                FetchOutcome::NotFound
            } else {
                // 4xx; a 1xx cannot reach here (the client handles them).
                FetchOutcome::ClientError { status }
            };
        }
        permit.failure(retry_after);
        self.sync_breaker();
        let retry_at = self.retry(&url, &host, may_retry, retry_after).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            FetchOutcome::TooManyRequests {
                retry_after,
                retry_at,
            }
        } else {
            FetchOutcome::ServerError {
                status,
                retry_after,
                retry_at,
            }
        }
    }

    fn attempts_lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.inner
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, url: &Url) {
        let mut a = self.attempts_lock();
        if !a.map.is_empty() {
            a.map.remove(url.as_str());
        }
    }

    /// The breaker check and a politeness slot: through the gate in one step, or the
    /// breaker's permit first (its counts copied to the metrics), then a slot.
    async fn admit(&self, host: &str) -> Result<Pass<'_>, Open> {
        let inner = &*self.inner;
        if let Some(gate) = &inner.gate {
            return gate.acquire(host).await.map(Pass::Gate);
        }
        let permit = inner.breaker.check(host)?;
        self.sync_breaker();
        let slot = inner.polite.acquire(host).await;
        Ok(Pass::Split { permit, slot })
    }

    /// Copies the breaker's new trips and its open-hosts gauge into the metrics; each
    /// trip is recorded exactly once however many tasks sync at once.
    fn sync_breaker(&self) {
        let inner = &*self.inner;
        let (now, open) = match &inner.gate {
            Some(g) => (g.trips(), g.open_hosts()),
            None => (inner.breaker.trips(), inner.breaker.open_hosts()),
        };
        let prev = inner.trips_seen.fetch_max(now, Ordering::AcqRel);
        for _ in prev..now {
            inner.metrics.record_breaker_trip();
        }
        inner
            .metrics
            .set_open_hosts(u64::try_from(open).unwrap_or(u64::MAX));
    }

    /// Until when the host's breaker (the gate's, with a gate) refuses `host`, if open.
    fn open_until(&self, host: &str) -> Option<Instant> {
        match &self.inner.gate {
            Some(g) => g.open_until(host),
            None => self.inner.breaker.open_until(host),
        }
    }

    /// Schedules the retry of a retryable failure, if allowed; the due time: the backoff
    /// from now, or the end of the host's open time if that is later.
    async fn retry(
        &self,
        url: &Url,
        host: &str,
        may_retry: bool,
        retry_after: Option<Duration>,
    ) -> Option<Instant> {
        if !may_retry || self.inner.queue.is_none() {
            return None;
        }
        let now = Instant::now();
        let attempt = {
            let mut a = self.attempts_lock();
            let n = a.bump(url.as_str(), now);
            if n > self.inner.backoff.max_attempts {
                a.map.remove(url.as_str());
                return None;
            }
            n
        };
        let backoff = crate::shard::later(now, self.inner.backoff.delay(attempt, retry_after));
        // A retry due while the host is still open would only be refused by the breaker.
        let due = match self.open_until(host) {
            Some(until) if until > backoff => until,
            _ => backoff,
        };
        self.schedule(url, due, attempt).await
    }

    async fn schedule(&self, url: &Url, due: Instant, attempt: u32) -> Option<Instant> {
        let queue = self.inner.queue.as_ref()?;
        match queue.schedule_attempt(url.as_str(), due, attempt).await {
            Ok(s) => {
                self.inner.metrics.record_retry_scheduled();
                Some(match s {
                    Scheduled::Unchanged { due: kept } => kept,
                    _ => due,
                })
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %e, "retry not scheduled");
                None
            }
        }
    }
}

enum BodyError {
    TooLarge(usize),
    Read(reqwest::Error),
}

async fn read_body(mut resp: reqwest::Response, limit: Option<usize>) -> Result<Bytes, BodyError> {
    let Some(limit) = limit else {
        return resp.bytes().await.map_err(BodyError::Read);
    };
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
