//! [`HostGate`]: a host's circuit breaker and its politeness in one table, checked and
//! recorded together.
//!
//! [`HostBreaker`](crate::HostBreaker) and [`Politeness`](crate::Politeness) each keep a
//! table of hosts; a caller that uses both (check the breaker, then take a slot) hashes the
//! host, locks a shard and reads an entry twice, in two tables. `HostGate` keeps both
//! states of a host in one entry of one cache line: one hash, one lookup, one shard lock to
//! get a [`GatePermit`], and one more lock when the permit reports (the same two critical
//! sections a single global map would take).
//!
//! # Semantics
//!
//! The breaker's rules are [`HostBreaker`](crate::HostBreaker)'s (closed → open →
//! half-open, penalties `min(max, base · 2^(n-1))`, API hosts, `Retry-After` extending the
//! open time, exactly one probe in half-open, a probe deadline, a dropped probe counts as a
//! failure), and the politeness rules are [`Politeness`](crate::Politeness)'s (at most
//! `per_host` permits of a host at once, an optional minimum delay plus jitter between
//! starts). Both are checked under one lock, so:
//!
//! - the half-open probe is given only together with a free slot: a host at its limit does
//!   not start (and so cannot waste) its probe;
//! - every [`GatePermit`] holds one of its host's slots until it reports
//!   ([`GatePermit::success`], [`GatePermit::failure`]) or is dropped. A dropped permit
//!   frees its slot; a dropped *probe* also counts as a failure (a dropped permit of a
//!   closed host records nothing: the caller cancelled, the host did not fail).
//!
//! [`HostGate::acquire`] waits asynchronously for a slot (cancellation-safe: a waiter
//! dropped while queued takes nothing, and a wake-up it had been given passes on) and then
//! for the host's next start time; it returns [`Open`] as soon as the breaker refuses,
//! also while waiting. [`HostGate::try_acquire`] never waits.
//!
//! # Memory
//!
//! Sharded tables as in the breaker. An entry is one 64-byte cache line: the host inline
//! when it has at most 30 bytes (else a shared string), times as nanosecond offsets from the
//! gate's creation, counters packed (at most 65 535 permits of one host at once). A sweep of
//! a shard on access when its last sweep is older than `idle_ttl / 4` (or
//! [`HostGate::sweep`]) drops a host when nobody holds a permit or waits for one, its next
//! start time has passed, and it is idle by the breaker's rule (closed and unused for
//! `idle_ttl`, or open/half-open with its open time or probe deadline more than `idle_ttl`
//! in the past and unused since). `idle_ttl` is the longer of the two configurations'.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::breaker::{BreakerConfig, HostKey, Open};
use crate::polite::PoliteConfig;
use crate::shard::{Padded, host_hash, later, lock, log_transition, shard_index};

/// Breaker states, in the low two bits of [`Entry::flags`].
const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const STATE: u8 = 0b11;
/// An API host (the API base penalty).
const API: u8 = 0b100;
/// Someone waits in [`HostGate::acquire`] for a slot of this host.
const WAITERS: u8 = 0b1000;

/// One host, one cache line. Times are nanoseconds since [`Inner::base`].
#[repr(align(64))]
struct Entry {
    key: HostKey,
    last_used: u64,
    /// Open: the end of the open time. Half-open: the probe's deadline.
    until: u64,
    /// The earliest start of the next request (used only with a delay).
    next_start: u64,
    /// Half-open: the probe's number (the low bits of a global counter).
    probe: u32,
    in_use: u16,
    /// Consecutive failures, saturating (the penalty stops growing long before 255).
    failures: u8,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    fn state(&self) -> u8 {
        self.flags & STATE
    }
    fn set_state(&mut self, s: u8) {
        self.flags = (self.flags & !STATE) | s;
    }
    fn api(&self) -> bool {
        self.flags & API != 0
    }
}

/// The waiters of one host (only hosts someone waits for have one).
struct Wait {
    hash: u64,
    key: HostKey,
    count: usize,
    notify: Arc<Notify>,
}

/// In declaration order, so what every access reads (the lock, the table, the last sweep)
/// shares the lock's cache line; the waiters' table comes after.
#[repr(C)]
struct Shard {
    map: HashTable<Entry>,
    last_sweep: u64,
    waits: HashTable<Wait>,
}

struct Inner {
    breaker: BreakerConfig,
    polite: PoliteConfig,
    per_host: u16,
    has_delay: bool,
    idle_ttl: Duration,
    /// Time zero of the entries' times.
    base: Instant,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
    next_probe: AtomicU64,
    trips: AtomicU64,
    open_hosts: AtomicUsize,
}

/// A host's circuit breaker and politeness in one table; a cheap handle (clones share the
/// state). See the module docs.
#[derive(Clone)]
pub struct HostGate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HostGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostGate")
            .field("tracked_hosts", &self.tracked_hosts())
            .field("open_hosts", &self.open_hosts())
            .field("trips", &self.trips())
            .finish()
    }
}

impl Default for HostGate {
    fn default() -> Self {
        HostGate::new(BreakerConfig::default(), PoliteConfig::default())
    }
}

/// [`HostGate::try_acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The breaker refused: the host is open, or its one probe is in flight.
    #[error(transparent)]
    Open(#[from] Open),
    /// The host has no free slot, or its next start time has not come yet.
    #[error("host is busy: all its politeness slots are taken or its next start is not due")]
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Closed,
    Probe(u32),
}

/// What a permit reports when it ends.
#[derive(Clone, Copy)]
enum Verdict {
    Success,
    Failure(Option<Duration>),
    /// Dropped without a verdict.
    None,
}

/// The right to send one request to a host: passed the breaker and holds one of the host's
/// politeness slots. Report the outcome with [`GatePermit::success`] or
/// [`GatePermit::failure`]; either frees the slot. Dropped without a verdict it frees the
/// slot too, and a probe then counts as failed.
#[must_use = "report the request's outcome with `success()` or `failure(..)`"]
pub struct GatePermit<'a> {
    inner: &'a Inner,
    key: HostKey,
    hash: u64,
    kind: Kind,
    deadline: Option<Instant>,
    done: bool,
}

impl std::fmt::Debug for GatePermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatePermit")
            .field("host", &self.host())
            .field("probe", &self.is_probe())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl GatePermit<'_> {
    /// True for the single half-open probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, Kind::Probe(_))
    }

    /// For a probe: the time by which it must report, after which it counts as failed.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The host this permit is for (lower-cased).
    pub fn host(&self) -> &str {
        self.key.as_str()
    }

    /// The request succeeded: a probe closes the host. Frees the slot.
    pub fn success(mut self) {
        self.done = true;
        self.inner
            .finish(self.hash, &self.key, self.kind, Verdict::Success);
    }

    /// The request failed (5xx, 429, timeout, connect error, …); `retry_after` is the
    /// server's `Retry-After` if any. Frees the slot.
    pub fn failure(mut self, retry_after: Option<Duration>) {
        self.done = true;
        self.inner.finish(
            self.hash,
            &self.key,
            self.kind,
            Verdict::Failure(retry_after),
        );
    }
}

impl Drop for GatePermit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner
                .finish(self.hash, &self.key, self.kind, Verdict::None);
        }
    }
}

/// What [`Inner::admit`] decided.
enum Admit {
    Permit {
        kind: Kind,
        deadline: Option<Instant>,
        /// With a delay in [`HostGate::acquire`]: when the request may start.
        start: Option<Instant>,
    },
    Open(Instant),
    Busy,
}

/// A waiter counted in its host's [`Wait`]; uncounted on drop (also when its future is
/// dropped).
struct Waiting<'a> {
    inner: &'a Inner,
    hash: u64,
    key: HostKey,
    notify: Arc<Notify>,
    counted: bool,
}

impl Waiting<'_> {
    fn leave(&mut self, shard: &mut Shard) {
        if std::mem::take(&mut self.counted) {
            self.inner.unwait(shard, self.hash, &self.key);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut shard = lock(self.inner.shard(self.hash));
            self.leave(&mut shard);
        }
    }
}

fn lowered(host: &str) -> std::borrow::Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl HostGate {
    /// A gate with these breaker and politeness settings. The shard count is the
    /// breaker's; the idle TTL the longer of the two; at most 65 535 permits per host.
    pub fn new(breaker: BreakerConfig, polite: PoliteConfig) -> Self {
        let shards = (0..breaker.shards.max(1))
            .map(|_| {
                Padded(Mutex::new(Shard {
                    map: HashTable::new(),
                    waits: HashTable::new(),
                    last_sweep: 0,
                }))
            })
            .collect();
        let idle_ttl = breaker.idle_ttl.max(polite.idle_ttl);
        HostGate {
            inner: Arc::new(Inner {
                per_host: u16::try_from(polite.per_host.max(1)).unwrap_or(u16::MAX),
                has_delay: !polite.min_delay.is_zero() || !polite.jitter.is_zero(),
                idle_ttl,
                breaker,
                polite,
                base: Instant::now(),
                hasher: foldhash::fast::RandomState::default(),
                shards,
                next_probe: AtomicU64::new(1),
                trips: AtomicU64::new(0),
                open_hosts: AtomicUsize::new(0),
            }),
        }
    }

    /// The breaker settings.
    pub fn breaker_config(&self) -> &BreakerConfig {
        &self.inner.breaker
    }

    /// The politeness settings.
    pub fn polite_config(&self) -> &PoliteConfig {
        &self.inner.polite
    }

    /// A permit for `host` now, without waiting: [`Refused::Open`] when the breaker refuses,
    /// [`Refused::Busy`] when the host has no free slot or its next start is not due.
    /// `host` is the authority (see [`authority`](crate::breaker::authority)), compared
    /// ASCII-case-insensitively.
    pub fn try_acquire(&self, host: &str) -> Result<GatePermit<'_>, Refused> {
        let host = lowered(host);
        let inner = &*self.inner;
        let hash = host_hash(&inner.hasher, &host);
        let now = Instant::now();
        let mut shard = lock(inner.shard(hash));
        match inner.admit(&mut shard, hash, &host, now, false) {
            Admit::Permit { kind, deadline, .. } => Ok(inner.permit(hash, &host, kind, deadline)),
            Admit::Open(until) => Err(Refused::Open(Open { until })),
            Admit::Busy => Err(Refused::Busy),
        }
    }

    /// Waits for a slot of `host` and for its next start time, then gives a permit; returns
    /// [`Open`] when the breaker refuses (at once, or when woken while waiting).
    /// Cancellation-safe (see the module docs).
    pub async fn acquire(&self, host: &str) -> Result<GatePermit<'_>, Open> {
        let host = lowered(host);
        let inner = &*self.inner;
        let hash = host_hash(&inner.hasher, &host);
        let mut waiting: Option<Waiting<'_>> = None;
        let (kind, deadline, start, now) = loop {
            let now = Instant::now();
            // The shard's lock is held only inside this block, never across an await.
            let step = {
                let mut shard = lock(inner.shard(hash));
                let admit = inner.admit(&mut shard, hash, &host, now, true);
                if !matches!(admit, Admit::Busy)
                    && let Some(w) = waiting.as_mut()
                {
                    w.leave(&mut shard);
                }
                match admit {
                    Admit::Busy => {
                        let w = match &mut waiting {
                            Some(w) if w.counted => w,
                            w => w.insert(Waiting {
                                inner,
                                hash,
                                notify: inner.wait(&mut shard, hash, &host),
                                key: HostKey::new(&host),
                                counted: true,
                            }),
                        };
                        // Registered under the lock: a release after it wakes this waiter
                        // (or one before it, which passes the wake-up on if cancelled).
                        let mut notified = Box::pin(Arc::clone(&w.notify).notified_owned());
                        notified.as_mut().enable();
                        Err(notified)
                    }
                    other => Ok(other),
                }
            };
            match step {
                Err(notified) => notified.await,
                Ok(Admit::Open(until)) => return Err(Open { until }),
                Ok(Admit::Permit {
                    kind,
                    deadline,
                    start,
                }) => break (kind, deadline, start, now),
                Ok(Admit::Busy) => {}
            }
        };
        let permit = inner.permit(hash, &host, kind, deadline);
        if let Some(start) = start
            && start > now
        {
            // A drop here frees the slot (the start time stays used).
            tokio::time::sleep_until(start).await;
        }
        Ok(permit)
    }

    /// Until when the gate refuses `host` with [`Open`] if it would refuse it now: the end
    /// of its open time, or for a host half-open the deadline of the probe in flight (as
    /// [`HostBreaker::open_until`](crate::HostBreaker::open_until)). `None` when the
    /// host's breaker is closed, the host is not tracked, or its open time is over (the
    /// next acquire starts the probe). A host that is only busy (no free slot) is not
    /// open.
    ///
    /// It does not count as a use of the host, but like any access it applies a probe
    /// past its deadline (the host opens again).
    pub fn open_until(&self, host: &str) -> Option<Instant> {
        let host = lowered(host);
        let inner = &*self.inner;
        let hash = host_hash(&inner.hasher, &host);
        let now = inner.ticks(Instant::now());
        let mut shard = lock(inner.shard(hash));
        let e = shard
            .map
            .find_mut(hash, |e| same(&e.key, host.as_bytes()))?;
        inner.expire_probe(e, now);
        match e.state() {
            HALF_OPEN => Some(inner.instant(e.until)),
            OPEN if now < e.until => Some(inner.instant(e.until)),
            _ => None,
        }
    }

    /// Hosts currently tracked.
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
        let now = self.inner.ticks(Instant::now());
        for s in self.inner.shards.iter() {
            self.inner.sweep_shard(&mut lock(&s.0), now);
        }
    }
}

impl Inner {
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[shard_index(hash, self.shards.len())].0
    }

    fn ticks(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, ticks: u64) -> Instant {
        later(self.base, Duration::from_nanos(ticks))
    }

    fn permit(
        &self,
        hash: u64,
        host: &str,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> GatePermit<'_> {
        GatePermit {
            inner: self,
            key: HostKey::new(host),
            hash,
            kind,
            deadline,
            done: false,
        }
    }

    fn next_after(&self, start: Instant) -> Instant {
        let cfg = &self.polite;
        let jitter = if cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            cfg.jitter.mul_f64(fastrand::f64())
        };
        later(later(start, cfg.min_delay), jitter)
    }

    /// The breaker and politeness check of `host` under its shard's lock, and on success
    /// the record: a slot taken, the probe started, the next start reserved. `reserve`:
    /// wait for the next start (`acquire`) rather than refuse (`try_acquire`).
    fn admit(
        &self,
        shard: &mut Shard,
        hash: u64,
        host: &str,
        now_i: Instant,
        reserve: bool,
    ) -> Admit {
        let now = self.ticks(now_i);
        if now.saturating_sub(shard.last_sweep) >= duration_ticks(self.idle_ttl / 4) {
            self.sweep_shard(shard, now);
        }
        let e = match shard.map.find_mut(hash, |e| same(&e.key, host.as_bytes())) {
            Some(e) => e,
            None => {
                let flags = CLOSED | if self.breaker.is_api(host) { API } else { 0 };
                let hasher = &self.hasher;
                shard
                    .map
                    .insert_unique(
                        hash,
                        Entry {
                            key: HostKey::new(host),
                            last_used: now,
                            until: 0,
                            next_start: 0,
                            probe: 0,
                            in_use: 0,
                            failures: 0,
                            flags,
                        },
                        |e| host_hash(hasher, e.key.as_str()),
                    )
                    .into_mut()
            }
        };
        e.last_used = now;
        self.expire_probe(e, now);
        let probe = match e.state() {
            HALF_OPEN => return Admit::Open(self.instant(e.until)),
            OPEN if now < e.until => return Admit::Open(self.instant(e.until)),
            OPEN => true,
            _ => false,
        };
        if e.in_use >= self.per_host || (!reserve && self.has_delay && e.next_start > now) {
            return Admit::Busy;
        }
        e.in_use += 1;
        let mut start = None;
        if self.has_delay {
            let s = if reserve {
                now_i.max(self.instant(e.next_start))
            } else {
                now_i
            };
            e.next_start = self.ticks(self.next_after(s));
            start = Some(s);
        }
        if probe {
            let id = self.next_probe.fetch_add(1, Ordering::Relaxed) as u32;
            let deadline = later(now_i, self.breaker.probe_deadline);
            e.set_state(HALF_OPEN);
            e.probe = id;
            e.until = self.ticks(deadline);
            Admit::Permit {
                kind: Kind::Probe(id),
                deadline: Some(deadline),
                start,
            }
        } else {
            Admit::Permit {
                kind: Kind::Closed,
                deadline: None,
                start,
            }
        }
    }

    /// Counts a waiter for `host` (whose entry exists: `admit` just saw it) and gives the
    /// `Notify` it waits on.
    fn wait(&self, shard: &mut Shard, hash: u64, host: &str) -> Arc<Notify> {
        if let Some(e) = shard.map.find_mut(hash, |e| same(&e.key, host.as_bytes())) {
            e.flags |= WAITERS;
        }
        if let Some(w) = shard
            .waits
            .find_mut(hash, |w| w.hash == hash && same(&w.key, host.as_bytes()))
        {
            w.count += 1;
            return w.notify.clone();
        }
        let notify = Arc::new(Notify::new());
        shard.waits.insert_unique(
            hash,
            Wait {
                hash,
                key: HostKey::new(host),
                count: 1,
                notify: notify.clone(),
            },
            |w| w.hash,
        );
        notify
    }

    /// Uncounts a waiter. If others still wait and a slot is free (this waiter may have
    /// been given the wake-up of that slot and is leaving without it), wakes one of them.
    fn unwait(&self, shard: &mut Shard, hash: u64, key: &HostKey) {
        let host = key.bytes();
        let (left, notify) = match shard
            .waits
            .find_entry(hash, |w| w.hash == hash && same(&w.key, host))
        {
            Ok(mut w) => {
                let wait = w.get_mut();
                wait.count -= 1;
                if wait.count == 0 {
                    w.remove();
                    (0, None)
                } else {
                    (wait.count, Some(wait.notify.clone()))
                }
            }
            Err(_) => (0, None),
        };
        if let Some(e) = shard.map.find_mut(hash, |e| same(&e.key, host)) {
            if left == 0 {
                e.flags &= !WAITERS;
            } else if e.in_use < self.per_host
                && let Some(n) = notify
            {
                n.notify_one();
            }
        }
    }

    /// A permit ends: frees its slot (waking a waiter if any) and applies the verdict.
    fn finish(&self, hash: u64, key: &HostKey, kind: Kind, verdict: Verdict) {
        let failure = match (verdict, kind) {
            (Verdict::Success, Kind::Probe(_)) => Some(None),
            (Verdict::Success | Verdict::None, Kind::Closed) => None,
            (Verdict::Failure(ra), _) => Some(Some(ra)),
            (Verdict::None, Kind::Probe(_)) => Some(Some(None)),
        };
        // Only a verdict needs the time: a success on a closed host reads no clock.
        let now = failure.map(|_| Instant::now());
        let host = key.bytes();
        let mut guard = lock(self.shard(hash));
        let shard = &mut *guard;
        let Some(e) = shard.map.find_mut(hash, |e| same(&e.key, host)) else {
            // Not evictable while a permit holds a slot: cannot happen.
            return;
        };
        e.in_use = e.in_use.saturating_sub(1);
        if e.flags & WAITERS != 0
            && let Some(w) = shard
                .waits
                .find(hash, |w| w.hash == hash && same(&w.key, host))
        {
            w.notify.notify_one();
        }
        if let (Some(failure), Some(now)) = (failure, now) {
            self.verdict(e, kind, failure, now);
        }
    }

    /// A probe still out at its deadline failed then: open again from the deadline with
    /// the next penalty; its verdict, when it comes, is ignored.
    fn expire_probe(&self, e: &mut Entry, now: u64) {
        if e.state() == HALF_OPEN && now >= e.until {
            e.failures = e.failures.saturating_add(1);
            let until = later(
                self.instant(e.until),
                self.breaker.penalty(e.api(), u32::from(e.failures)),
            );
            e.until = self.ticks(until);
            e.set_state(OPEN);
            self.trips.fetch_add(1, Ordering::Relaxed);
            log_transition(
                e.key.as_str(),
                "half-open (probe past its deadline)",
                "open",
                u32::from(e.failures),
                Some(until.saturating_duration_since(self.instant(now))),
            );
        }
    }

    /// `failure`: `None` for success, `Some(retry_after)` for a failure.
    fn verdict(
        &self,
        e: &mut Entry,
        kind: Kind,
        failure: Option<Option<Duration>>,
        now_i: Instant,
    ) {
        let now = self.ticks(now_i);
        e.last_used = now;
        self.expire_probe(e, now);
        let max = self.breaker.max;
        let retry_after = failure.map(|ra| ra.map(|d| d.min(max)));
        match (e.state(), kind, retry_after) {
            (CLOSED, _, None) => {}
            (CLOSED, Kind::Closed, Some(ra)) => {
                e.failures = 1;
                let until = later(
                    now_i,
                    self.breaker.penalty(e.api(), 1).max(ra.unwrap_or_default()),
                );
                e.until = self.ticks(until);
                e.set_state(OPEN);
                self.trips.fetch_add(1, Ordering::Relaxed);
                self.open_hosts.fetch_add(1, Ordering::Relaxed);
                log_transition(
                    e.key.as_str(),
                    "closed",
                    "open",
                    1,
                    Some(until.saturating_duration_since(now_i)),
                );
            }
            (HALF_OPEN, Kind::Probe(p), None) if e.probe == p => {
                e.failures = 0;
                e.set_state(CLOSED);
                self.open_hosts.fetch_sub(1, Ordering::Relaxed);
                log_transition(e.key.as_str(), "half-open", "closed", 0, None);
            }
            (HALF_OPEN, Kind::Probe(p), Some(ra)) if e.probe == p => {
                e.failures = e.failures.saturating_add(1);
                let until = later(
                    now_i,
                    self.breaker
                        .penalty(e.api(), u32::from(e.failures))
                        .max(ra.unwrap_or_default()),
                );
                e.until = self.ticks(until);
                e.set_state(OPEN);
                self.trips.fetch_add(1, Ordering::Relaxed);
                log_transition(
                    e.key.as_str(),
                    "half-open",
                    "open",
                    u32::from(e.failures),
                    Some(until.saturating_duration_since(now_i)),
                );
            }
            (OPEN, _, Some(Some(ra))) => {
                // A late failure while open: only a longer Retry-After matters.
                e.until = e.until.max(self.ticks(later(now_i, ra)));
            }
            // Late verdicts (a probe past its deadline, a request that started before
            // the host opened) change nothing else.
            _ => {}
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, now: u64) {
        shard.last_sweep = now;
        let ttl = duration_ticks(self.idle_ttl);
        let mut dropped_open = 0;
        shard.map.retain(|e| {
            if e.in_use > 0 || e.flags & WAITERS != 0 || now < e.next_start {
                return true;
            }
            let idle_since = match e.state() {
                CLOSED => e.last_used,
                _ => e.until.max(e.last_used),
            };
            let keep = now.saturating_sub(idle_since) < ttl;
            if !keep && e.state() != CLOSED {
                dropped_open += 1;
            }
            keep
        });
        if dropped_open > 0 {
            self.open_hosts.fetch_sub(dropped_open, Ordering::Relaxed);
        }
        let hasher = &self.hasher;
        if shard.map.capacity() > 64 && shard.map.capacity() > 4 * shard.map.len() {
            let n = shard.map.len() * 2;
            shard
                .map
                .shrink_to(n, |e| host_hash(hasher, e.key.as_str()));
        }
        if shard.waits.capacity() > 64 && shard.waits.capacity() > 4 * shard.waits.len() {
            let n = shard.waits.len() * 2;
            shard.waits.shrink_to(n, |w| w.hash);
        }
    }
}

/// Whether `key` is `host` (bytes compared: no UTF-8 check).
#[inline]
fn same(key: &HostKey, host: &[u8]) -> bool {
    key.bytes() == host
}

fn duration_ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
