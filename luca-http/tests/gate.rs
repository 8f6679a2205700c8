//! HostGate: the breaker's guarantees (penalties, exactly one probe, dropped and hung
//! probes) and politeness's (limit, delay, cancellation) through one table, on paused time
//! and across threads; idle eviction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use luca_http::{BreakerConfig, HostGate, Open, PoliteConfig, Refused};
use tokio::time::{Instant, advance};

const S: fn(u64) -> Duration = Duration::from_secs;

fn gate(breaker: BreakerConfig, polite: PoliteConfig) -> HostGate {
    HostGate::new(breaker, polite)
}

/// The remaining open time of `host`, or `None` when a permit is given (and then dropped:
/// only for closed hosts).
fn open_for(g: &HostGate, host: &str) -> Option<Duration> {
    match g.try_acquire(host) {
        Ok(p) => {
            assert!(!p.is_probe(), "open_for would consume a probe");
            None
        }
        Err(Refused::Open(Open { until })) => Some(until - Instant::now()),
        Err(Refused::Busy) => panic!("{host} is busy"),
    }
}

fn fail(g: &HostGate, host: &str, retry_after: Option<Duration>) {
    g.try_acquire(host).expect("a permit").failure(retry_after);
}

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
async fn penalties_api_hosts_and_retry_after_follow_the_breaker() {
    let g = gate(
        BreakerConfig::default().api_host("api.example.org"),
        PoliteConfig::default(),
    );
    let mut seen = Vec::new();
    for _ in 0..8 {
        fail(&g, "example.org", None);
        let d = open_for(&g, "example.org").expect("open");
        seen.push(d.as_secs());
        advance(d).await;
    }
    assert_eq!(seen, [30, 60, 120, 240, 480, 900, 900, 900]);
    let probe = g.try_acquire("example.org").expect("probe");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(open_for(&g, "example.org"), None);
    assert_eq!(g.open_hosts(), 0);
    assert_eq!(g.trips(), 8);

    fail(&g, "API.example.org", None);
    assert_eq!(open_for(&g, "api.example.org"), Some(S(15)));
    fail(&g, "longer", Some(S(100)));
    assert_eq!(open_for(&g, "longer"), Some(S(100)));
    fail(&g, "shorter", Some(S(5)));
    assert_eq!(open_for(&g, "shorter"), Some(S(30)));
    fail(&g, "huge", Some(S(100_000)));
    assert_eq!(open_for(&g, "huge"), Some(S(900)));
    assert_eq!(g.open_hosts(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_probe_passes_in_half_open_under_100_tasks() {
    // Base 0: a failure opens the host until "now", so the next check is half-open. A
    // per-host limit above the task count: only the breaker limits.
    let g = gate(
        BreakerConfig::default().base(Duration::ZERO),
        PoliteConfig::default().per_host(1000),
    );
    for round in 0..20 {
        g.try_acquire("example.org")
            .expect("closed or probe")
            .failure(None);
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let passed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (g, barrier, passed) = (g.clone(), barrier.clone(), passed.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let permit = g.try_acquire("example.org");
                match &permit {
                    Ok(p) => {
                        assert!(p.is_probe());
                        passed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => assert!(matches!(e, Refused::Open(_)), "{e}"),
                }
                // Every task has checked before the probe reports.
                barrier.wait().await;
                if let Ok(p) = permit {
                    p.success();
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(passed.load(Ordering::SeqCst), 1, "round {round}");
        assert!(!g.try_acquire("example.org").expect("closed").is_probe());
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_freed_slot_and_the_probe_is_not_started_at_the_limit() {
    let g = gate(
        BreakerConfig::default().probe_deadline(S(10)),
        PoliteConfig::default().per_host(1),
    );
    let held = g.try_acquire("example.org").expect("closed");
    let waiter = tokio::spawn({
        let g = g.clone();
        async move { g.acquire("example.org").await.map(|p| p.is_probe()) }
    });
    tokio::task::yield_now().await;
    assert!(matches!(g.try_acquire("example.org"), Err(Refused::Busy)));
    held.success();
    let waiter = tokio::time::timeout(S(60), waiter)
        .await
        .expect("the release woke the waiter");
    assert_eq!(waiter.expect("task"), Ok(false), "the freed slot, closed");
    // A probe hangs past its deadline and keeps its slot (the only one).
    fail(&g, "example.org", None);
    advance(S(30)).await;
    let hung = g.try_acquire("example.org").expect("probe");
    assert!(hung.is_probe());
    advance(S(10 + 60)).await;
    // The open time after the hung probe has passed, but the host is at its limit: no
    // probe starts (one that could not be sent would be wasted).
    assert!(matches!(g.try_acquire("example.org"), Err(Refused::Busy)));
    drop(hung);
    let probe = g
        .try_acquire("example.org")
        .expect("the probe, not taken before");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(open_for(&g, "example.org"), None);
    assert_eq!(g.trips(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_counts_as_failure_and_frees_its_slot() {
    let g = gate(
        BreakerConfig::default().probe_deadline(S(300)),
        PoliteConfig::default().per_host(1),
    );
    fail(&g, "example.org", None);
    advance(S(30)).await;
    let (got, took) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let g = g.clone();
        async move {
            let p = g.acquire("example.org").await.expect("probe");
            assert!(p.is_probe());
            let _ = got.send(());
            std::future::pending::<()>().await;
            p.success();
        }
    });
    took.await.expect("probe taken");
    assert_eq!(open_for(&g, "example.org"), Some(S(300)), "probe in flight");
    task.abort();
    let _ = task.await;
    // Dropped without a verdict: a failure (second consecutive: 60 s), not a pinned host.
    assert_eq!(open_for(&g, "example.org"), Some(S(60)));
    advance(S(60)).await;
    // And its slot is free (limit 1): the next probe gets it.
    let p = g.try_acquire("example.org").expect("a new probe");
    assert!(p.is_probe());
    p.success();
    assert_eq!(g.open_hosts(), 0);
    // A dropped permit of a closed host frees its slot and records nothing.
    drop(g.try_acquire("example.org").expect("closed"));
    assert_eq!(open_for(&g, "example.org"), None);
    assert_eq!(g.trips(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_fails_at_its_deadline() {
    let g = gate(
        BreakerConfig::default().probe_deadline(S(10)),
        PoliteConfig::default(),
    );
    fail(&g, "example.org", None);
    advance(S(30)).await;
    let hung = g.try_acquire("example.org").expect("probe");
    assert_eq!(hung.deadline(), Some(Instant::now() + S(10)));
    advance(S(9)).await;
    assert_eq!(open_for(&g, "example.org"), Some(S(1)));
    advance(S(1)).await;
    assert_eq!(open_for(&g, "example.org"), Some(S(60)));
    advance(S(60)).await;
    let fresh = g.try_acquire("example.org").expect("a new probe");
    assert!(fresh.is_probe());
    // The hung probe's late verdict changes nothing.
    hung.success();
    assert!(open_for(&g, "example.org").is_some(), "still half-open");
    fresh.success();
    assert_eq!(open_for(&g, "example.org"), None);
}

#[tokio::test(start_paused = true)]
async fn the_per_host_limit_is_never_exceeded() {
    let g = gate(
        BreakerConfig::default(),
        PoliteConfig::default().per_host(3),
    );
    let a = Arc::new(Gauge::default());
    let b = Arc::new(Gauge::default());
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (g, gauge, host) = if i % 2 == 0 {
            (g.clone(), a.clone(), "a.example")
        } else {
            (g.clone(), b.clone(), "B.example")
        };
        tasks.push(tokio::spawn(async move {
            let p = g.acquire(host).await.expect("closed");
            gauge.enter();
            tokio::time::sleep(Duration::from_millis(10)).await;
            gauge.leave();
            p.success();
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(a.max.load(Ordering::SeqCst), 3);
    assert_eq!(b.max.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_limit_holds_across_threads() {
    let g = HostGate::default();
    let gauge = Arc::new(Gauge::default());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (g, gauge) = (g.clone(), gauge.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                let p = g.acquire("example.org").await.expect("closed");
                gauge.enter();
                tokio::task::yield_now().await;
                gauge.leave();
                // Both ways a permit of a closed host ends free its slot.
                if (i + j) % 2 == 0 {
                    p.success();
                } else {
                    drop(p);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let max = gauge.max.load(Ordering::SeqCst);
    assert!((1..=8).contains(&max), "max in flight {max}");
    assert!(
        g.try_acquire("example.org").is_ok(),
        "every slot given back"
    );
}

#[tokio::test(start_paused = true)]
async fn the_minimum_delay_between_starts_is_kept() {
    let g = gate(
        BreakerConfig::default(),
        PoliteConfig::default().min_delay(S(2)),
    );
    let t0 = Instant::now();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let p = g.acquire("example.org").await.expect("closed");
        starts.push(Instant::now() - t0);
        p.success();
    }
    assert_eq!(starts, [S(0), S(2), S(4), S(6)]);
    // Without waiting: refused until the next start is due.
    assert!(matches!(g.try_acquire("example.org"), Err(Refused::Busy)));
    advance(S(2)).await;
    g.try_acquire("example.org").expect("due").success();
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_keep_no_slot_and_pass_wake_ups_on() {
    let g = gate(
        BreakerConfig::default(),
        PoliteConfig::default().per_host(1),
    );
    let held = g.try_acquire("example.org").expect("closed");
    let spawn_waiter = || {
        let g = g.clone();
        tokio::spawn(async move { g.acquire("example.org").await.map(|p| p.success()) })
    };
    let first = spawn_waiter();
    tokio::task::yield_now().await;
    let second = spawn_waiter();
    tokio::task::yield_now().await;
    assert!(matches!(g.try_acquire("example.org"), Err(Refused::Busy)));
    // The release wakes the first waiter; it is cancelled before it runs.
    held.success();
    first.abort();
    assert!(first.await.is_err());
    tokio::time::timeout(S(60), second)
        .await
        .expect("the wake-up passed to the second waiter")
        .expect("task")
        .expect("closed");
    g.try_acquire("example.org").expect("free again").success();
}

#[tokio::test(start_paused = true)]
async fn waiters_see_the_host_open_and_leave_one_after_another() {
    let g = gate(
        BreakerConfig::default(),
        PoliteConfig::default().per_host(1),
    );
    let held = g.try_acquire("example.org").expect("closed");
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let g = g.clone();
            tokio::spawn(async move { g.acquire("example.org").await.map(|p| p.success()) })
        })
        .collect();
    tokio::task::yield_now().await;
    // The request fails: one release, but every waiter must learn that the host is open.
    held.failure(None);
    for w in waiters {
        let got = tokio::time::timeout(S(1), w)
            .await
            .expect("woken")
            .expect("task");
        assert!(got.is_err(), "open: {got:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_hosts_are_evicted_but_not_busy_or_awaited_ones() {
    let g = gate(
        BreakerConfig::default().idle_ttl(S(60)),
        PoliteConfig::default().idle_ttl(S(60)).per_host(1),
    );
    for i in 0..10_000 {
        g.try_acquire(&format!("host-{i}.example"))
            .expect("closed")
            .success();
    }
    fail(&g, "open.example", None);
    let busy = g.try_acquire("busy.example").expect("closed");
    let waited = g.try_acquire("waited.example").expect("closed");
    let waiter = tokio::spawn({
        let g = g.clone();
        async move { g.acquire("waited.example").await.map(|p| p.success()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(g.tracked_hosts(), 10_003);
    advance(S(61)).await;
    g.sweep();
    // The open host is kept until idle_ttl after its open time ends (30 s + 60 s); the
    // host with a permit out and the one with a waiter stay.
    assert_eq!(g.tracked_hosts(), 3);
    advance(S(30)).await;
    g.sweep();
    assert_eq!(g.tracked_hosts(), 2);
    assert_eq!(g.open_hosts(), 0);
    drop(busy);
    waited.success();
    waiter.await.expect("task").expect("closed");
    advance(S(61)).await;
    g.sweep();
    assert_eq!(g.tracked_hosts(), 0);
    // Sweeping also happens on access, shard by shard.
    let one = gate(
        BreakerConfig::default().idle_ttl(S(60)).shards(1),
        PoliteConfig::default().idle_ttl(S(60)),
    );
    for i in 0..1000 {
        one.try_acquire(&format!("h{i}")).expect("closed").success();
    }
    advance(S(61)).await;
    one.try_acquire("fresh").expect("closed").success();
    assert_eq!(one.tracked_hosts(), 1);
}

#[tokio::test(start_paused = true)]
async fn long_and_short_hosts_are_kept_apart_whole() {
    let g = gate(
        BreakerConfig::default(),
        PoliteConfig::default().per_host(1),
    );
    let long = format!("{}.a.example", "x".repeat(40));
    let p = g.try_acquire(&long).expect("closed");
    assert_eq!(p.host(), long);
    assert!(
        matches!(g.try_acquire(&long), Err(Refused::Busy)),
        "at its limit"
    );
    let short = g.try_acquire("x.a.example").expect("another host");
    assert_eq!(short.host(), "x.a.example");
    p.failure(None);
    assert!(open_for(&g, &long).is_some());
    short.success();
    assert_eq!(open_for(&g, "X.A.example"), None);
}

#[tokio::test(start_paused = true)]
async fn duration_max_settings_do_not_panic() {
    let g = gate(
        BreakerConfig::default()
            .base(Duration::MAX)
            .max(Duration::MAX)
            .probe_deadline(Duration::MAX),
        PoliteConfig::default()
            .min_delay(Duration::MAX)
            .jitter(Duration::MAX),
    );
    g.try_acquire("example.org")
        .expect("first")
        .failure(Some(Duration::MAX));
    let open = open_for(&g, "example.org").expect("open");
    assert!(open > S(86_400 * 365), "{open:?}");
    g.sweep();
    assert_eq!(g.tracked_hosts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_on_other_threads_all_learn_that_the_host_opened() {
    let g = gate(
        BreakerConfig::default(),
        PoliteConfig::default().per_host(2),
    );
    let held = g.try_acquire("example.org").expect("closed");
    let other = g.try_acquire("example.org").expect("closed");
    let waiting = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (g, waiting) = (g.clone(), waiting.clone());
            tokio::spawn(async move {
                waiting.fetch_add(1, Ordering::SeqCst);
                g.acquire("example.org").await.map(|p| p.success())
            })
        })
        .collect();
    // Every task has started (and is waiting, or about to ask); then one request fails:
    // the host opens, and the one slot it frees wakes one waiter, which must pass the
    // news on to the next, and so on (the other slot stays held throughout).
    tokio::time::timeout(S(10), async {
        while waiting.load(Ordering::SeqCst) < 100 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("tasks started");
    held.failure(None);
    for t in tasks {
        let got = tokio::time::timeout(S(10), t)
            .await
            .expect("no waiter is left asleep")
            .expect("task");
        assert!(got.is_err(), "the host is open: {got:?}");
    }
    other.success();
    assert!(matches!(
        g.try_acquire("example.org"),
        Err(Refused::Open(_))
    ));
}
