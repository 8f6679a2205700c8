//! [`Politeness`]: per host, at most `per_host` requests at once (8 by default, like
//! Scrapy's per-domain default) and optionally a minimum delay between the starts of two
//! requests, plus a random jitter.
//!
//! [`Politeness::acquire`] waits asynchronously for a slot and then for the host's next start
//! time; it returns a [`Slot`] guard that frees the slot when dropped. Waiting is
//! cancellation-safe: a waiter dropped while queued takes nothing (a wake-up it had been
//! given passes to the next waiter), one dropped while sleeping for its start time gives its
//! slot back (the start time it had reserved stays used, so the host is never sent requests
//! closer than the delay).
//!
//! Politeness keeps its own table, apart from [`HostBreaker`](crate::breaker::HostBreaker)'s:
//! the breaker's state is a few words changed under a short lock, politeness holds a
//! slot count that tasks wait on for a long time; keeping them apart lets each evict on its
//! own rule and costs one more sharded lookup per request. [`HostGate`](crate::HostGate)
//! keeps both in one table (one lookup, one cache line per host) for callers that always
//! use the two together.
//!
//! # Cost
//!
//! Per host, the slots in use are an atomic counter: taking a free slot is one
//! compare-and-swap under the shard's lock, and dropping a [`Slot`] is one atomic decrement
//! that takes no lock and wakes a waiter only when someone waits. The host is hashed once
//! per lookup with a randomly seeded hasher; a known host costs no allocation.
//!
//! # Memory
//!
//! As for the breaker: sharded maps, and a sweep of a shard on access when its last sweep is
//! older than `idle_ttl / 4` (or [`Politeness::sweep`]) drops hosts that nobody holds or
//! waits for, whose last request started more than `idle_ttl` ago and whose next start time
//! has passed. Tracked hosts: at most those used in the last `idle_ttl · 5/4` plus those
//! with requests in flight.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::breaker::HostKey;
use crate::shard::{Padded, host_hash, later, lock, shard_index};

/// Settings of [`Politeness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoliteConfig {
    pub(crate) per_host: usize,
    pub(crate) min_delay: Duration,
    pub(crate) jitter: Duration,
    pub(crate) idle_ttl: Duration,
    pub(crate) shards: usize,
}

impl Default for PoliteConfig {
    /// 8 requests at once per host, no delay, no jitter, idle TTL 10 min, 64 shards.
    fn default() -> Self {
        PoliteConfig {
            per_host: 8,
            min_delay: Duration::ZERO,
            jitter: Duration::ZERO,
            idle_ttl: Duration::from_secs(600),
            shards: 64,
        }
    }
}

impl PoliteConfig {
    /// Requests in flight at once per host (at least 1).
    pub fn per_host(mut self, n: usize) -> Self {
        self.per_host = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }
    /// The least time between the starts of two requests to one host.
    pub fn min_delay(mut self, d: Duration) -> Self {
        self.min_delay = d;
        self
    }
    /// A random extra delay, uniform in `[0, jitter]`, added to each gap.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    /// How long an unused host stays tracked.
    pub fn idle_ttl(mut self, d: Duration) -> Self {
        self.idle_ttl = d;
        self
    }
    /// The number of independently locked maps (at least 1).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.max(1);
        self
    }
}

/// A host's slots: shared by the table, every [`Slot`] and every waiter.
#[derive(Debug)]
struct Slots {
    in_use: AtomicUsize,
    /// Waiters registered with `notify` (a release wakes one only when this is not 0).
    waiters: AtomicUsize,
    notify: Notify,
}

impl Slots {
    /// Takes a slot if fewer than `max` are in use.
    ///
    /// `SeqCst` here, in [`Slot`]'s drop and on `waiters` make the two sides see each
    /// other: a waiter counts itself and then tries; a release frees and then looks for
    /// waiters; at least one of the two sees the other's write.
    fn try_take(&self, max: usize) -> bool {
        let mut n = self.in_use.load(Ordering::SeqCst);
        while n < max {
            match self
                .in_use
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }
}

/// Counts a waiter in `waiters` while alive (also when its future is dropped).
struct Waiting<'a>(&'a Slots);

impl<'a> Waiting<'a> {
    fn new(slots: &'a Slots) -> Self {
        slots.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(slots)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

struct HostSlots {
    /// The keyed hash of `key`.
    hash: u64,
    key: HostKey,
    slots: Arc<Slots>,
    /// The earliest start of the next request (used only with a delay).
    next_start: Instant,
    last_used: Instant,
}

struct Shard {
    map: HashTable<HostSlots>,
    last_sweep: Instant,
}

struct Inner {
    cfg: PoliteConfig,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
}

/// Per-host concurrency limit and delay; a cheap handle (clones share the state).
#[derive(Clone)]
pub struct Politeness {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Politeness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Politeness")
            .field("config", &self.inner.cfg)
            .field("tracked_hosts", &self.tracked_hosts())
            .finish()
    }
}

impl Default for Politeness {
    fn default() -> Self {
        Politeness::new(PoliteConfig::default())
    }
}

/// A request slot for one host; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let s = &self.slots;
        s.in_use.fetch_sub(1, Ordering::SeqCst);
        if s.waiters.load(Ordering::SeqCst) > 0 {
            s.notify.notify_one();
        }
    }
}

impl Politeness {
    /// Politeness with these settings.
    pub fn new(cfg: PoliteConfig) -> Self {
        let now = Instant::now();
        let shards = (0..cfg.shards.max(1))
            .map(|_| {
                Padded(Mutex::new(Shard {
                    map: HashTable::new(),
                    last_sweep: now,
                }))
            })
            .collect();
        Politeness {
            inner: Arc::new(Inner {
                cfg,
                hasher: foldhash::fast::RandomState::default(),
                shards,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PoliteConfig {
        &self.inner.cfg
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.inner.shards[shard_index(hash, self.inner.shards.len())].0
    }

    fn has_delay(&self) -> bool {
        !self.inner.cfg.min_delay.is_zero() || !self.inner.cfg.jitter.is_zero()
    }

    /// Runs `f` on `host`'s entry (created if missing, its `last_used` set to `now`) under
    /// its shard's lock, sweeping the shard first when due.
    fn with_host<R>(
        &self,
        hash: u64,
        host: &str,
        now: Instant,
        f: impl FnOnce(&mut HostSlots) -> R,
    ) -> R {
        let mut shard = lock(self.shard(hash));
        if now.saturating_duration_since(shard.last_sweep) >= self.inner.cfg.idle_ttl / 4 {
            self.sweep_shard(&mut shard, now);
        }
        let h = match shard
            .map
            .find_mut(hash, |h| h.hash == hash && h.key.is(host))
        {
            Some(h) => h,
            None => shard
                .map
                .insert_unique(
                    hash,
                    HostSlots {
                        hash,
                        key: HostKey::new(host),
                        slots: Arc::new(Slots {
                            in_use: AtomicUsize::new(0),
                            waiters: AtomicUsize::new(0),
                            notify: Notify::new(),
                        }),
                        next_start: now,
                        last_used: now,
                    },
                    |h| h.hash,
                )
                .into_mut(),
        };
        h.last_used = now;
        f(h)
    }

    /// The next start after `start` (the delay plus a jitter).
    fn next_after(&self, start: Instant) -> Instant {
        let cfg = &self.inner.cfg;
        let jitter = if cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            cfg.jitter.mul_f64(fastrand::f64())
        };
        later(later(start, cfg.min_delay), jitter)
    }

    /// Reserves the next start time of `host` (after the previous one plus delay and jitter).
    fn reserve_start(&self, hash: u64, host: &str) -> Instant {
        let now = Instant::now();
        let mut shard = lock(self.shard(hash));
        let Some(h) = shard
            .map
            .find_mut(hash, |h| h.hash == hash && h.key.is(host))
        else {
            // Not evictable while we hold one of its slots: cannot happen; start now.
            return now;
        };
        let start = h.next_start.max(now);
        h.next_start = self.next_after(start);
        h.last_used = start;
        start
    }

    /// Waits for a slot of `host` (the authority, see
    /// [`authority`](crate::breaker::authority)) and for its next start time.
    /// Cancellation-safe.
    pub async fn acquire(&self, host: &str) -> Slot {
        let max = self.inner.cfg.per_host;
        let hash = host_hash(&self.inner.hasher, host);
        let (slots, got) = self.with_host(hash, host, Instant::now(), |h| {
            (h.slots.clone(), h.slots.try_take(max))
        });
        if !got {
            loop {
                let mut notified = pin!(slots.notify.notified());
                // Registered before counted: a release that sees the count wakes us.
                notified.as_mut().enable();
                let waiting = Waiting::new(&slots);
                if slots.try_take(max) {
                    break;
                }
                notified.await;
                drop(waiting);
                if slots.try_take(max) {
                    break;
                }
            }
        }
        // From here the slot is ours; the guard gives it back if this future is dropped.
        let slot = Slot { slots };
        if self.has_delay() {
            let start = self.reserve_start(hash, host);
            tokio::time::sleep_until(start).await;
        }
        slot
    }

    /// A slot of `host` if one is free and no delay is pending, without waiting.
    pub fn try_acquire(&self, host: &str) -> Option<Slot> {
        let max = self.inner.cfg.per_host;
        let delay = self.has_delay();
        let hash = host_hash(&self.inner.hasher, host);
        let now = Instant::now();
        self.with_host(hash, host, now, |h| {
            if delay && h.next_start > now {
                return None;
            }
            if !h.slots.try_take(max) {
                return None;
            }
            if delay {
                h.next_start = self.next_after(now);
            }
            Some(Slot {
                slots: h.slots.clone(),
            })
        })
    }

    /// Hosts currently tracked.
    pub fn tracked_hosts(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(&s.0).map.len()).sum()
    }

    /// Sweeps every shard now: drops idle hosts (see the module docs).
    pub fn sweep(&self) {
        let now = Instant::now();
        for s in self.inner.shards.iter() {
            self.sweep_shard(&mut lock(&s.0), now);
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, now: Instant) {
        shard.last_sweep = now;
        let ttl = self.inner.cfg.idle_ttl;
        // Strong count 1: only the map holds the slots, so no slot is held and nobody
        // waits; a new holder needs this shard's lock, which we hold.
        shard.map.retain(|h| {
            Arc::strong_count(&h.slots) > 1
                || now < h.next_start
                || now.saturating_duration_since(h.last_used) < ttl
        });
        if shard.map.capacity() > 64 && shard.map.capacity() > 4 * shard.map.len() {
            let n = shard.map.len() * 2;
            shard.map.shrink_to(n, |h| h.hash);
        }
    }
}
