//! [`HostBreaker`]: a circuit breaker per host (authority), closed → open → half-open.
//!
//! - **Closed**: every [`HostBreaker::check`] passes. A failure opens the host.
//! - **Open** until a time: `check` returns [`Open`] with that time. The penalty after the
//!   n-th consecutive failure is `min(max, base · 2^(n-1))` (base 30 s, API hosts 15 s,
//!   max 900 s by default); a server's `Retry-After` longer than the penalty extends it,
//!   still capped at max.
//! - **Half-open**: once the open time has passed, exactly one `check` gets a *probe*
//!   [`Permit`]; every other caller gets [`Open`] until the probe's verdict. A probe
//!   success closes the host (and resets n); a probe failure opens it again with the next
//!   penalty. A probe permit dropped without a verdict (its future cancelled) counts as a
//!   failure and frees the slot at once. A probe that neither reports nor drops by the
//!   probe deadline counts as failed at that deadline (the host opens again from then with
//!   the next penalty) and its late verdict is ignored, so a hung probe cannot pin a host.
//!
//! A permit given out while the host is **closed** reports what happened to an ordinary
//! request: `failure` opens the host, `success` changes nothing (the host is already
//! closed). Dropped without a verdict it records nothing — the caller cancelled the
//! request, the host did not fail it. Failures reported while the host is already open
//! (requests that were in flight when it opened) do not count as further consecutive
//! failures; their `Retry-After` may still extend the open time (capped at max).
//!
//! # Memory
//!
//! Hosts live in `shards` maps (64 by default), each behind its own mutex, chosen by a hash
//! of the host, so tasks working on different hosts rarely wait for each other. Every access
//! to a shard sweeps it when its last sweep is older than `idle_ttl / 4`; [`HostBreaker::sweep`]
//! sweeps all shards. A sweep drops closed hosts not used for `idle_ttl` (10 min by
//! default; nothing is lost: a closed host has no state) and open hosts whose open time
//! ended more than `idle_ttl` ago without any use (their failure count is forgiven). So the
//! number of hosts tracked is at most the hosts used in the last `idle_ttl · 5/4` plus those
//! still open or probing — not every host the crawl ever saw.
//!
//! # Cost
//!
//! A host is hashed once per call with a randomly seeded hasher (hosts may be chosen by
//! whoever writes the links being crawled); the shard and the bucket both come from that
//! hash. Checking a known closed host allocates nothing and takes one shard lock; the
//! `success` of a permit on a closed host touches no shared state at all.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hashbrown::HashTable;
use tokio::time::Instant;

use crate::shard::{Padded, host_hash, later, lock, log_transition, shard_index};

type ApiPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Settings of a [`HostBreaker`].
#[derive(Clone)]
pub struct BreakerConfig {
    pub(crate) base: Duration,
    pub(crate) api_base: Duration,
    pub(crate) max: Duration,
    pub(crate) api_hosts: Vec<String>,
    pub(crate) api_predicate: Option<ApiPredicate>,
    pub(crate) probe_deadline: Duration,
    pub(crate) idle_ttl: Duration,
    pub(crate) shards: usize,
}

impl std::fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("base", &self.base)
            .field("api_base", &self.api_base)
            .field("max", &self.max)
            .field("api_hosts", &self.api_hosts)
            .field("api_predicate", &self.api_predicate.is_some())
            .field("probe_deadline", &self.probe_deadline)
            .field("idle_ttl", &self.idle_ttl)
            .field("shards", &self.shards)
            .finish()
    }
}

impl Default for BreakerConfig {
    /// Base 30 s, API base 15 s, max 900 s, no API hosts, probe deadline 60 s, idle TTL
    /// 10 min, 64 shards.
    fn default() -> Self {
        BreakerConfig {
            base: Duration::from_secs(30),
            api_base: Duration::from_secs(15),
            max: Duration::from_secs(900),
            api_hosts: Vec::new(),
            api_predicate: None,
            probe_deadline: Duration::from_secs(60),
            idle_ttl: Duration::from_secs(600),
            shards: 64,
        }
    }
}

impl BreakerConfig {
    /// The penalty after the first failure of an ordinary host.
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }
    /// The penalty after the first failure of an API host.
    pub fn api_base(mut self, d: Duration) -> Self {
        self.api_base = d;
        self
    }
    /// The longest a host stays open (penalties and `Retry-After` alike).
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }
    /// Treat this host (compared ASCII-case-insensitively with the key passed to
    /// [`HostBreaker::check`]) as an API host.
    pub fn api_host(mut self, host: impl Into<String>) -> Self {
        let mut h = host.into();
        h.make_ascii_lowercase();
        self.api_hosts.push(h);
        self
    }
    /// Treat hosts for which `f` (given the lower-cased host key) returns true as API hosts,
    /// in addition to those named with [`BreakerConfig::api_host`].
    pub fn api_predicate(mut self, f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.api_predicate = Some(Arc::new(f));
        self
    }
    /// How long a half-open probe may take before it counts as failed.
    pub fn probe_deadline(mut self, d: Duration) -> Self {
        self.probe_deadline = d;
        self
    }
    /// How long an unused host stays tracked (see the module docs on memory).
    pub fn idle_ttl(mut self, d: Duration) -> Self {
        self.idle_ttl = d;
        self
    }
    /// The number of independently locked maps (at least 1).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.max(1);
        self
    }

    pub(crate) fn is_api(&self, host: &str) -> bool {
        self.api_hosts.iter().any(|h| h == host)
            || self.api_predicate.as_ref().is_some_and(|f| f(host))
    }

    /// The penalty after the `n`-th consecutive failure (`n ≥ 1`):
    /// `min(max, base · 2^(n-1))`.
    pub fn penalty(&self, api: bool, n: u32) -> Duration {
        let base = if api { self.api_base } else { self.base };
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }
}

/// `check` refused: the host is open (or its one probe is in flight) until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host is open (circuit breaker) for another {:?}", until.saturating_duration_since(Instant::now()))]
pub struct Open {
    /// When to ask again: the end of the open time, or the probe's deadline.
    pub until: Instant,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe: u64, deadline: Instant },
}

#[derive(Debug)]
struct Entry {
    /// The keyed hash of `key` (the table stores no hashes of its own).
    hash: u64,
    key: HostKey,
    state: State,
    failures: u32,
    api: bool,
    last_used: Instant,
}

struct Shard {
    map: HashTable<Entry>,
    last_sweep: Instant,
}

/// Hosts up to this length are stored inline, in a table's entry and in a [`Permit`]:
/// comparing a key then reads no other cache line, and a permit touches no shared counter.
const INLINE_HOST: usize = 30;

/// A host key: inline when short, else shared.
#[derive(Debug, Clone)]
pub(crate) enum HostKey {
    Inline { len: u8, buf: [u8; INLINE_HOST] },
    Shared(Arc<str>),
}

impl HostKey {
    pub(crate) fn new(host: &str) -> Self {
        let b = host.as_bytes();
        if b.len() <= INLINE_HOST {
            let mut buf = [0u8; INLINE_HOST];
            buf[..b.len()].copy_from_slice(b);
            HostKey::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            HostKey::Shared(Arc::from(host))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole: always valid UTF-8.
            HostKey::Inline { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or("")
            }
            HostKey::Shared(s) => s,
        }
    }

    /// The key's bytes (no UTF-8 check).
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            HostKey::Inline { len, buf } => &buf[..*len as usize],
            HostKey::Shared(s) => s.as_bytes(),
        }
    }

    #[inline]
    pub(crate) fn is(&self, host: &str) -> bool {
        match self {
            HostKey::Inline { len, buf } => &buf[..*len as usize] == host.as_bytes(),
            HostKey::Shared(s) => **s == *host,
        }
    }
}

struct Inner {
    cfg: BreakerConfig,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
    next_probe: AtomicU64,
    trips: AtomicU64,
    open_hosts: AtomicUsize,
}

/// A circuit breaker per host; a cheap handle (clones share the state).
#[derive(Clone)]
pub struct HostBreaker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HostBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBreaker")
            .field("tracked_hosts", &self.tracked_hosts())
            .field("open_hosts", &self.open_hosts())
            .field("trips", &self.trips())
            .finish()
    }
}

impl Default for HostBreaker {
    fn default() -> Self {
        HostBreaker::new(BreakerConfig::default())
    }
}

/// Which kind of permit: an ordinary request on a closed host, or the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Closed,
    Probe(u64),
}

/// The right to send one request to a host; report the outcome with
/// [`Permit::success`] or [`Permit::failure`]. It borrows the breaker (clone the
/// [`HostBreaker`] handle into a spawned task to use it there).
///
/// A probe permit (the one request let through in half-open) dropped without a verdict
/// counts as a failure; see the module docs.
#[must_use = "report the request's outcome with `success()` or `failure(..)`"]
pub struct Permit<'a> {
    inner: &'a Inner,
    host: HostKey,
    hash: u64,
    kind: Kind,
    deadline: Option<Instant>,
    done: bool,
}

impl std::fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("host", &self.host())
            .field("probe", &self.is_probe())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Permit<'_> {
    /// True for the single half-open probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, Kind::Probe(_))
    }

    /// For a probe: the time by which it must report, after which it counts as failed.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The host this permit is for.
    pub fn host(&self) -> &str {
        self.host.as_str()
    }

    /// The request succeeded: a probe closes the host.
    pub fn success(mut self) {
        self.done = true;
        // On a closed host a success changes nothing: no lock taken.
        if self.is_probe() {
            self.inner
                .verdict(self.hash, self.host.as_str(), self.kind, None);
        }
    }

    /// The request failed (5xx, 429, timeout, connect error, …); `retry_after` is the
    /// server's `Retry-After` if any (see [`parse_retry_after`]).
    pub fn failure(mut self, retry_after: Option<Duration>) {
        self.done = true;
        self.inner
            .verdict(self.hash, self.host.as_str(), self.kind, Some(retry_after));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && matches!(self.kind, Kind::Probe(_)) {
            self.inner
                .verdict(self.hash, self.host.as_str(), self.kind, Some(None));
        }
    }
}

impl HostBreaker {
    /// A breaker with these settings.
    pub fn new(cfg: BreakerConfig) -> Self {
        let now = Instant::now();
        let shards = (0..cfg.shards.max(1))
            .map(|_| {
                Padded(Mutex::new(Shard {
                    map: HashTable::new(),
                    last_sweep: now,
                }))
            })
            .collect();
        HostBreaker {
            inner: Arc::new(Inner {
                cfg,
                hasher: foldhash::fast::RandomState::default(),
                shards,
                next_probe: AtomicU64::new(1),
                trips: AtomicU64::new(0),
                open_hosts: AtomicUsize::new(0),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.inner.cfg
    }

    /// May a request go to `host` now? `host` is the authority (`example.org`,
    /// `example.org:8443`), compared ASCII-case-insensitively; see [`authority`].
    pub fn check(&self, host: &str) -> Result<Permit<'_>, Open> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let inner = &self.inner;
        let hash = host_hash(&inner.hasher, host);
        let now = Instant::now();
        let mut shard = lock(inner.shard(hash));
        inner.maybe_sweep(&mut shard, now);
        if let Some(e) = shard
            .map
            .find_mut(hash, |e| e.hash == hash && e.key.is(host))
        {
            e.last_used = now;
            inner.expire_probe(e, now);
            match e.state {
                State::Closed => Ok(self.permit(&e.key, hash, Kind::Closed, None)),
                State::Open { until } if now < until => Err(Open { until }),
                State::HalfOpen { deadline, .. } => Err(Open { until: deadline }),
                State::Open { .. } => Ok(self.start_probe(e, hash, now)),
            }
        } else {
            let key = HostKey::new(host);
            let api = inner.cfg.is_api(host);
            let permit = self.permit(&key, hash, Kind::Closed, None);
            shard.map.insert_unique(
                hash,
                Entry {
                    hash,
                    key,
                    state: State::Closed,
                    failures: 0,
                    api,
                    last_used: now,
                },
                |e| e.hash,
            );
            Ok(permit)
        }
    }

    fn start_probe(&self, e: &mut Entry, hash: u64, now: Instant) -> Permit<'_> {
        let probe = self.inner.next_probe.fetch_add(1, Ordering::Relaxed);
        let deadline = later(now, self.inner.cfg.probe_deadline);
        e.state = State::HalfOpen { probe, deadline };
        self.permit(&e.key, hash, Kind::Probe(probe), Some(deadline))
    }

    fn permit(
        &self,
        key: &HostKey,
        hash: u64,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Permit<'_> {
        Permit {
            inner: &self.inner,
            host: key.clone(),
            hash,
            kind,
            deadline,
            done: false,
        }
    }

    /// Until when [`HostBreaker::check`] refuses `host` if it would refuse it now: the
    /// `until` of the [`Open`] it would return (the end of the open time, or for a host
    /// half-open the deadline of the probe in flight). `None` when the host is closed, not
    /// tracked, or open with its open time over (the next `check` starts the probe).
    ///
    /// Use it to plan work for the host (a retry due before this time would only be
    /// refused). It does not count as a use of the host (its idle time keeps running), but
    /// like any access it applies a probe past its deadline (the host opens again).
    pub fn open_until(&self, host: &str) -> Option<Instant> {
        let host = host.to_ascii_lowercase();
        let inner = &self.inner;
        let hash = host_hash(&inner.hasher, &host);
        let now = Instant::now();
        let mut shard = lock(inner.shard(hash));
        let e = shard
            .map
            .find_mut(hash, |e| e.hash == hash && e.key.is(&host))?;
        inner.expire_probe(e, now);
        match e.state {
            State::Open { until } if now < until => Some(until),
            State::HalfOpen { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Hosts currently tracked (closed ones included, until evicted).
    pub fn tracked_hosts(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(&s.0).map.len()).sum()
    }

    /// Hosts currently open or half-open (a gauge).
    pub fn open_hosts(&self) -> usize {
        self.inner.open_hosts.load(Ordering::Relaxed)
    }

    /// How many times a host went from closed or half-open to open.
    pub fn trips(&self) -> u64 {
        self.inner.trips.load(Ordering::Relaxed)
    }

    /// Sweeps every shard now: drops idle hosts (see the module docs).
    pub fn sweep(&self) {
        let now = Instant::now();
        for s in self.inner.shards.iter() {
            self.inner.sweep_shard(&mut lock(&s.0), now);
        }
    }
}

impl Inner {
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[shard_index(hash, self.shards.len())].0
    }

    /// A probe still out at its deadline failed then: open again from the deadline with
    /// the next penalty; its verdict, when it comes, is ignored.
    fn expire_probe(&self, e: &mut Entry, now: Instant) {
        if let State::HalfOpen { deadline, .. } = e.state
            && now >= deadline
        {
            e.failures = e.failures.saturating_add(1);
            let until = deadline + self.cfg.penalty(e.api, e.failures);
            e.state = State::Open { until };
            self.trips.fetch_add(1, Ordering::Relaxed);
            log_transition(
                e.key.as_str(),
                "half-open (probe past its deadline)",
                "open",
                e.failures,
                Some(until.saturating_duration_since(now)),
            );
        }
    }

    fn maybe_sweep(&self, shard: &mut Shard, now: Instant) {
        if now.saturating_duration_since(shard.last_sweep) >= self.cfg.idle_ttl / 4 {
            self.sweep_shard(shard, now);
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, now: Instant) {
        shard.last_sweep = now;
        let ttl = self.cfg.idle_ttl;
        let mut dropped_open = 0;
        shard.map.retain(|e| {
            let idle_since = match e.state {
                State::Closed => e.last_used,
                State::Open { until } => until.max(e.last_used),
                State::HalfOpen { deadline, .. } => deadline.max(e.last_used),
            };
            let keep = now.saturating_duration_since(idle_since) < ttl;
            if !keep && !matches!(e.state, State::Closed) {
                dropped_open += 1;
            }
            keep
        });
        if dropped_open > 0 {
            self.open_hosts.fetch_sub(dropped_open, Ordering::Relaxed);
        }
        if shard.map.capacity() > 64 && shard.map.capacity() > 4 * shard.map.len() {
            let n = shard.map.len() * 2;
            shard.map.shrink_to(n, |e| e.hash);
        }
    }

    /// `failure`: `None` for success, `Some(retry_after)` for a failure.
    fn verdict(&self, hash: u64, host: &str, kind: Kind, failure: Option<Option<Duration>>) {
        let now = Instant::now();
        let mut shard = lock(self.shard(hash));
        let Some(e) = shard
            .map
            .find_mut(hash, |e| e.hash == hash && e.key.is(host))
        else {
            return;
        };
        e.last_used = now;
        self.expire_probe(e, now);
        let retry_after = failure.map(|ra| ra.map(|d| d.min(self.cfg.max)));
        match (e.state, kind, retry_after) {
            (State::Closed, _, None) => {}
            (State::Closed, Kind::Closed, Some(ra)) => {
                e.failures = 1;
                let until = later(now, self.cfg.penalty(e.api, 1).max(ra.unwrap_or_default()));
                e.state = State::Open { until };
                self.trips.fetch_add(1, Ordering::Relaxed);
                self.open_hosts.fetch_add(1, Ordering::Relaxed);
                log_transition(
                    host,
                    "closed",
                    "open",
                    1,
                    Some(until.saturating_duration_since(now)),
                );
            }
            (State::HalfOpen { probe, .. }, Kind::Probe(p), None) if probe == p => {
                e.failures = 0;
                e.state = State::Closed;
                self.open_hosts.fetch_sub(1, Ordering::Relaxed);
                log_transition(host, "half-open", "closed", 0, None);
            }
            (State::HalfOpen { probe, .. }, Kind::Probe(p), Some(ra)) if probe == p => {
                e.failures = e.failures.saturating_add(1);
                let until = later(
                    now,
                    self.cfg
                        .penalty(e.api, e.failures)
                        .max(ra.unwrap_or_default()),
                );
                e.state = State::Open { until };
                self.trips.fetch_add(1, Ordering::Relaxed);
                log_transition(
                    host,
                    "half-open",
                    "open",
                    e.failures,
                    Some(until.saturating_duration_since(now)),
                );
            }
            (State::Open { until }, _, Some(Some(ra))) => {
                // A late failure while open: only a longer Retry-After matters.
                e.state = State::Open {
                    until: until.max(later(now, ra)),
                };
            }
            // Late verdicts (a probe past its deadline, a request that started before
            // the host opened) change nothing else.
            _ => {}
        }
    }
}

/// The authority of a URL as the breaker's key: the lower-cased host, with `:port` when
/// the URL names a port other than its scheme's default.
pub fn authority(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Parses a `Retry-After` header value: delay-seconds (`120`) or an HTTP-date
/// (`Fri, 31 Dec 1999 23:59:59 GMT`), measured from `now`. A date in the past gives zero;
/// anything malformed gives `None` (never a panic).
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit: the longest delay there is (capped at max later).
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// [`parse_retry_after_at`] from the current wall-clock time.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// The `Retry-After` of a response's headers, if present and well-formed.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}
