//! [`Politeness`]: per host, at most `per_host` requests at once (8 by default, like
//! Scrapy's per-domain default) and optionally a minimum delay between the starts of two
//! requests, plus a random jitter.
//!
//! [`Politeness::acquire`] waits asynchronously for a slot and then for the host's next start
//! time; it returns a [`Slot`] guard that frees the slot when dropped. Waiting is
//! cancellation-safe: a waiter dropped while queued takes nothing (tokio's semaphore
//! queue), one dropped while sleeping for its start time gives its slot back (the start time
//! it had reserved stays used, so the host is never sent requests closer than the delay).
//!
//! Politeness keeps its own table, apart from [`HostBreaker`](crate::breaker::HostBreaker)'s:
//! the breaker's state is a few words changed under a short lock, politeness holds a
//! semaphore that tasks wait on for a long time; keeping them apart lets each evict on its
//! own rule and costs one more sharded lookup per request.
//!
//! # Memory
//!
//! As for the breaker: sharded maps, and a sweep of a shard on access when its last sweep is
//! older than `idle_ttl / 4` (or [`Politeness::sweep`]) drops hosts that nobody holds or
//! waits for, whose last request started more than `idle_ttl` ago and whose next start time
//! has passed. Tracked hosts: at most those used in the last `idle_ttl · 5/4` plus those
//! with requests in flight.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Settings of [`Politeness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoliteConfig {
    per_host: usize,
    min_delay: Duration,
    jitter: Duration,
    idle_ttl: Duration,
    shards: usize,
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

struct HostSlots {
    sem: Arc<Semaphore>,
    /// The earliest start of the next request (used only with a delay).
    next_start: Instant,
    last_used: Instant,
}

struct Shard {
    map: HashMap<Arc<str>, HostSlots>,
    last_sweep: Instant,
}

struct Inner {
    cfg: PoliteConfig,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
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
    _permit: OwnedSemaphorePermit,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Politeness {
    /// Politeness with these settings.
    pub fn new(cfg: PoliteConfig) -> Self {
        let now = Instant::now();
        let shards = (0..cfg.shards.max(1))
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    last_sweep: now,
                })
            })
            .collect();
        Politeness {
            inner: Arc::new(Inner {
                cfg,
                hasher: RandomState::new(),
                shards,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PoliteConfig {
        &self.inner.cfg
    }

    fn shard(&self, host: &str) -> &Mutex<Shard> {
        let h = self.inner.hasher.hash_one(host);
        &self.inner.shards[((h >> 32) as usize) % self.inner.shards.len()]
    }

    fn semaphore(&self, host: &str) -> Arc<Semaphore> {
        let now = Instant::now();
        let mut shard = lock(self.shard(host));
        if now.saturating_duration_since(shard.last_sweep) >= self.inner.cfg.idle_ttl / 4 {
            self.sweep_shard(&mut shard, now);
        }
        if let Some(h) = shard.map.get_mut(host) {
            h.last_used = now;
            return h.sem.clone();
        }
        let sem = Arc::new(Semaphore::new(self.inner.cfg.per_host));
        shard.map.insert(
            Arc::from(host),
            HostSlots {
                sem: sem.clone(),
                next_start: now,
                last_used: now,
            },
        );
        sem
    }

    /// Reserves the next start time of `host` (after the previous one plus delay and jitter).
    /// With `only_now`, reserves nothing and returns `None` unless the start can be now.
    fn reserve_start(&self, host: &str, only_now: bool) -> Option<Instant> {
        let cfg = &self.inner.cfg;
        let now = Instant::now();
        let mut shard = lock(self.shard(host));
        let Some(h) = shard.map.get_mut(host) else {
            // Not evictable while we hold its semaphore: cannot happen; start now.
            return Some(now);
        };
        if only_now && h.next_start > now {
            return None;
        }
        let start = h.next_start.max(now);
        let jitter = if cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            cfg.jitter.mul_f64(fastrand::f64())
        };
        h.next_start = start + cfg.min_delay + jitter;
        h.last_used = start;
        Some(start)
    }

    /// Waits for a slot of `host` (the authority, see
    /// [`authority`](crate::breaker::authority)) and for its next start time.
    /// Cancellation-safe.
    pub async fn acquire(&self, host: &str) -> Slot {
        let sem = self.semaphore(host);
        // The semaphore is never closed.
        let permit = match sem.acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable_closed(),
        };
        if (!self.inner.cfg.min_delay.is_zero() || !self.inner.cfg.jitter.is_zero())
            && let Some(start) = self.reserve_start(host, false)
        {
            tokio::time::sleep_until(start).await;
        }
        Slot { _permit: permit }
    }

    /// A slot of `host` if one is free and no delay is pending, without waiting.
    pub fn try_acquire(&self, host: &str) -> Option<Slot> {
        let sem = self.semaphore(host);
        let permit = sem.try_acquire_owned().ok()?;
        if !self.inner.cfg.min_delay.is_zero() || !self.inner.cfg.jitter.is_zero() {
            self.reserve_start(host, true)?;
        }
        Some(Slot { _permit: permit })
    }

    /// Hosts currently tracked.
    pub fn tracked_hosts(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Sweeps every shard now: drops idle hosts (see the module docs).
    pub fn sweep(&self) {
        let now = Instant::now();
        for s in self.inner.shards.iter() {
            self.sweep_shard(&mut lock(s), now);
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, now: Instant) {
        shard.last_sweep = now;
        let ttl = self.inner.cfg.idle_ttl;
        // Strong count 1: only the map holds the semaphore, so no slot is held and nobody
        // waits; a new holder needs this shard's lock, which we hold.
        shard.map.retain(|_, h| {
            Arc::strong_count(&h.sem) > 1
                || now < h.next_start
                || now.saturating_duration_since(h.last_used) < ttl
        });
        if shard.map.capacity() > 64 && shard.map.capacity() > 4 * shard.map.len() {
            shard.map.shrink_to(shard.map.len() * 2);
        }
    }
}

#[cold]
fn unreachable_closed() -> ! {
    unreachable!("the per-host semaphore is never closed")
}
