//! Politeness: the per-host limit is never exceeded, the minimum delay (with jitter) is
//! kept, cancelled waiters free their slot, idle hosts are evicted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use luca_http::{PoliteConfig, Politeness};
use tokio::time::{Instant, advance};

const S: fn(u64) -> Duration = Duration::from_secs;

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_per_host_limit_is_never_exceeded() {
    let p = Politeness::new(PoliteConfig::default().per_host(3));
    let a = Arc::new(Gauge::default());
    let b = Arc::new(Gauge::default());
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (p, g, host) = if i % 2 == 0 {
            (p.clone(), a.clone(), "a.example")
        } else {
            (p.clone(), b.clone(), "b.example")
        };
        tasks.push(tokio::spawn(async move {
            let _slot = p.acquire(host).await;
            g.enter();
            tokio::time::sleep(Duration::from_millis(10)).await;
            g.leave();
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Paused time: every task runs before the clock moves, so each host reaches its limit
    // and no more.
    assert_eq!(a.max.load(Ordering::SeqCst), 3);
    assert_eq!(b.max.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_limit_holds_across_threads() {
    let p = Politeness::default();
    let g = Arc::new(Gauge::default());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (p, g) = (p.clone(), g.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let _slot = p.acquire("example.org").await;
                g.enter();
                tokio::task::yield_now().await;
                g.leave();
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let max = g.max.load(Ordering::SeqCst);
    assert!((1..=8).contains(&max), "max in flight {max}");
}

#[tokio::test(start_paused = true)]
async fn the_minimum_delay_between_starts_is_kept() {
    let p = Politeness::new(PoliteConfig::default().min_delay(S(2)));
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (p, starts) = (p.clone(), starts.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = p.acquire("example.org").await;
            starts.lock().expect("lock").push(Instant::now());
        }));
    }
    // Another host is not delayed by this one.
    let t0 = Instant::now();
    let _other = p.acquire("other.example").await;
    assert_eq!(Instant::now(), t0);
    for t in tasks {
        t.await.expect("task");
    }
    let mut starts = starts.lock().expect("lock").clone();
    starts.sort();
    let gaps: Vec<_> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, vec![S(2); 5]);
}

#[tokio::test(start_paused = true)]
async fn jitter_adds_between_zero_and_jitter() {
    let p = Politeness::new(
        PoliteConfig::default()
            .min_delay(S(1))
            .jitter(Duration::from_millis(500)),
    );
    let mut last = None;
    let mut gaps = Vec::new();
    for _ in 0..20 {
        drop(p.acquire("example.org").await);
        let now = Instant::now();
        if let Some(l) = last {
            gaps.push(now - l);
        }
        last = Some(now);
    }
    for g in &gaps {
        assert!(*g >= S(1) && *g <= Duration::from_millis(1500), "gap {g:?}");
    }
    assert!(gaps.iter().any(|g| *g > S(1)), "some jitter: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_keep_a_slot() {
    let p = Politeness::new(PoliteConfig::default().per_host(1).min_delay(S(5)));
    let held = p.acquire("example.org").await;
    // Queued for the slot, then cancelled.
    let queued = tokio::spawn({
        let p = p.clone();
        async move { p.acquire("example.org").await }
    });
    tokio::task::yield_now().await;
    queued.abort();
    assert!(queued.await.is_err());
    drop(held);
    // Got the slot, then cancelled while sleeping for its start time.
    let sleeping = tokio::spawn({
        let p = p.clone();
        async move { p.acquire("example.org").await }
    });
    tokio::task::yield_now().await;
    sleeping.abort();
    assert!(sleeping.await.is_err());
    // The slot is free: the next waiter gets it at the next start time (5 s after the
    // first start, the cancelled sleeper's reservation at 10 s stays used).
    let t0 = Instant::now();
    let _slot = tokio::time::timeout(S(60), p.acquire("example.org"))
        .await
        .expect("slot freed");
    assert_eq!(Instant::now() - t0, S(10));
}

#[tokio::test(start_paused = true)]
async fn idle_hosts_are_evicted_but_not_busy_ones() {
    let p = Politeness::new(PoliteConfig::default().idle_ttl(S(60)));
    for i in 0..5_000 {
        drop(p.acquire(&format!("host-{i}.example")).await);
    }
    let busy = p.acquire("busy.example").await;
    assert_eq!(p.tracked_hosts(), 5_001);
    advance(S(61)).await;
    p.sweep();
    assert_eq!(p.tracked_hosts(), 1);
    drop(busy);
    p.sweep();
    assert_eq!(p.tracked_hosts(), 0);
    assert!(p.try_acquire("busy.example").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_cancelled_before_it_runs_passes_the_slot_on() {
    let p = Politeness::new(PoliteConfig::default().per_host(1));
    let held = p.acquire("example.org").await;
    let spawn_waiter = || {
        let p = p.clone();
        tokio::spawn(async move { p.acquire("example.org").await })
    };
    let first = spawn_waiter();
    tokio::task::yield_now().await;
    let second = spawn_waiter();
    tokio::task::yield_now().await;
    assert!(p.try_acquire("example.org").is_none(), "both wait");
    // The release wakes the first waiter; it is cancelled before it runs.
    drop(held);
    first.abort();
    assert!(first.await.is_err());
    let slot = tokio::time::timeout(S(60), second)
        .await
        .expect("the wake-up passed to the second waiter")
        .expect("task");
    assert!(p.try_acquire("example.org").is_none(), "the slot is held");
    drop(slot);
    assert!(p.try_acquire("example.org").is_some(), "and free again");
}

#[tokio::test(start_paused = true)]
async fn long_and_short_hosts_are_counted_apart() {
    let p = Politeness::new(PoliteConfig::default().per_host(1));
    let long_a = format!("{}.a.example", "x".repeat(200));
    let long_b = format!("{}.b.example", "x".repeat(200));
    let hosts = [
        "a.example",
        "exactly-thirty-bytes-a.example",
        &long_a,
        &long_b,
    ];
    let slots: Vec<_> = hosts
        .iter()
        .map(|h| p.try_acquire(h).expect("a free slot"))
        .collect();
    for h in hosts {
        assert!(p.try_acquire(h).is_none(), "{h} is at its limit");
    }
    assert_eq!(p.tracked_hosts(), 4);
    drop(slots);
    for h in hosts {
        assert!(p.try_acquire(h).is_some(), "{h} is free again");
    }
}

#[tokio::test(start_paused = true)]
async fn duration_max_delays_do_not_panic() {
    let p = Politeness::new(
        PoliteConfig::default()
            .min_delay(Duration::MAX)
            .jitter(Duration::MAX)
            .idle_ttl(Duration::MAX),
    );
    let first = p
        .try_acquire("example.org")
        .expect("the first start is now");
    drop(first);
    // The next start is as far ahead as the clock reaches: nothing is free now.
    assert!(p.try_acquire("example.org").is_none());
    let waiting = tokio::time::timeout(Duration::from_secs(3600), p.acquire("example.org")).await;
    assert!(waiting.is_err(), "the second start is not within the hour");
}
