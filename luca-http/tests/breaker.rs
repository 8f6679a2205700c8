//! HostBreaker: transitions and penalties on paused time, Retry-After, the single probe,
//! dropped and hung probes, idle eviction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use luca_http::breaker::{parse_retry_after_at, retry_after};
use luca_http::{BreakerConfig, HostBreaker, Open};
use tokio::time::{Instant, advance};

const S: fn(u64) -> Duration = Duration::from_secs;

/// The remaining open time of `host`, or `None` when `check` passes.
fn open_for(b: &HostBreaker, host: &str) -> Option<Duration> {
    match b.check(host) {
        Ok(p) => {
            assert!(!p.is_probe(), "open_for would consume a probe");
            None
        }
        Err(Open { until }) => Some(until - Instant::now()),
    }
}

/// Fails the current permit of `host` (closed-state or probe).
fn fail(b: &HostBreaker, host: &str, retry_after: Option<Duration>) {
    b.check(host).expect("a permit").failure(retry_after);
}

#[tokio::test(start_paused = true)]
async fn penalties_double_from_base_and_cap_at_max() {
    let b = HostBreaker::default();
    let mut seen = Vec::new();
    for _ in 0..8 {
        fail(&b, "example.org", None);
        let d = open_for(&b, "example.org").expect("open");
        seen.push(d.as_secs());
        advance(d).await;
    }
    assert_eq!(seen, [30, 60, 120, 240, 480, 900, 900, 900]);
    // Half-open now: the probe succeeds and the host closes, failures reset.
    let probe = b.check("example.org").expect("probe");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(open_for(&b, "example.org"), None);
    assert_eq!(b.open_hosts(), 0);
    fail(&b, "example.org", None);
    assert_eq!(open_for(&b, "example.org"), Some(S(30)));
    assert_eq!(b.trips(), 9);
}

#[tokio::test(start_paused = true)]
async fn api_hosts_use_the_api_base() {
    let b = HostBreaker::new(
        BreakerConfig::default()
            .api_host("API.example.org")
            .api_predicate(|h| h.ends_with(".api.test")),
    );
    for host in ["api.example.org", "v2.api.test"] {
        let mut seen = Vec::new();
        for _ in 0..3 {
            fail(&b, host, None);
            let d = open_for(&b, host).expect("open");
            seen.push(d.as_secs());
            advance(d).await;
        }
        assert_eq!(seen, [15, 30, 60], "{host}");
    }
    fail(&b, "www.example.org", None);
    assert_eq!(open_for(&b, "www.example.org"), Some(S(30)));
}

#[tokio::test(start_paused = true)]
async fn retry_after_extends_never_shortens_and_is_capped() {
    let b = HostBreaker::default();
    fail(&b, "longer", Some(S(100)));
    assert_eq!(open_for(&b, "longer"), Some(S(100)));
    fail(&b, "shorter", Some(S(5)));
    assert_eq!(open_for(&b, "shorter"), Some(S(30)));
    fail(&b, "huge", Some(S(100_000)));
    assert_eq!(open_for(&b, "huge"), Some(S(900)));
    // On a later failure (the probe), Retry-After longer than the 60 s penalty.
    advance(S(100)).await;
    b.check("longer").expect("probe").failure(Some(S(200)));
    assert_eq!(open_for(&b, "longer"), Some(S(200)));
    // A late failure of a request that was in flight when the host opened: its longer
    // Retry-After extends, but it is not another consecutive failure.
    let inflight = b.check("late").expect("closed");
    let other = b.check("late").expect("closed");
    other.failure(None);
    inflight.failure(Some(S(45)));
    assert_eq!(open_for(&b, "late"), Some(S(45)));
    advance(S(45)).await;
    b.check("late").expect("probe").failure(None);
    assert_eq!(
        open_for(&b, "late"),
        Some(S(60)),
        "second consecutive failure, not third"
    );
}

#[test]
fn retry_after_parsing_both_forms_and_malformed() {
    let now = UNIX_EPOCH + S(1_700_000_000);
    assert_eq!(parse_retry_after_at("120", now), Some(S(120)));
    assert_eq!(parse_retry_after_at(" 7 ", now), Some(S(7)));
    let date = httpdate::fmt_http_date(now + S(200));
    assert_eq!(parse_retry_after_at(&date, now), Some(S(200)));
    let past = httpdate::fmt_http_date(now - S(50));
    assert_eq!(parse_retry_after_at(&past, now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after_at("99999999999999999999999999", now),
        Some(Duration::from_secs(u64::MAX))
    );
    for bad in [
        "",
        "soon",
        "-5",
        "1.5",
        "12s",
        "Fri, 32 Foo 2023 99:99:99 GMT",
        "\u{0}",
    ] {
        assert_eq!(parse_retry_after_at(bad, now), None, "{bad:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_retry_after_header_is_ignored() {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::RETRY_AFTER,
        reqwest::header::HeaderValue::from_static("in a while"),
    );
    let ra = retry_after(&headers);
    assert_eq!(ra, None);
    let b = HostBreaker::default();
    fail(&b, "example.org", ra);
    assert_eq!(open_for(&b, "example.org"), Some(S(30)));
    headers.insert(
        reqwest::header::RETRY_AFTER,
        reqwest::header::HeaderValue::from_static("300"),
    );
    assert_eq!(retry_after(&headers), Some(S(300)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_probe_passes_in_half_open_under_100_tasks() {
    // Base 0: a failure opens the host until "now", so the next check is half-open.
    let b = HostBreaker::new(BreakerConfig::default().base(Duration::ZERO));
    for round in 0..20 {
        b.check("example.org")
            .expect("closed or probe")
            .failure(None);
        let gate = Arc::new(tokio::sync::Barrier::new(100));
        let passed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (b, gate, passed) = (b.clone(), gate.clone(), passed.clone());
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                let permit = b.check("example.org");
                if let Ok(p) = &permit {
                    assert!(p.is_probe());
                    passed.fetch_add(1, Ordering::SeqCst);
                }
                // Every task has checked before the probe reports.
                gate.wait().await;
                if let Ok(p) = permit {
                    p.success();
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(passed.load(Ordering::SeqCst), 1, "round {round}");
        assert!(!b.check("example.org").expect("closed").is_probe());
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_future_counts_as_failure_and_frees_half_open() {
    let b = HostBreaker::new(BreakerConfig::default().probe_deadline(S(300)));
    fail(&b, "example.org", None);
    advance(S(30)).await;
    let (got, took) = tokio::sync::oneshot::channel();
    let b2 = b.clone();
    let task = tokio::spawn(async move {
        let p = b2.check("example.org").expect("probe");
        assert!(p.is_probe());
        let _ = got.send(());
        std::future::pending::<()>().await;
        p.success();
    });
    took.await.expect("probe taken");
    assert_eq!(open_for(&b, "example.org"), Some(S(300)), "probe in flight");
    task.abort();
    let _ = task.await;
    // Dropped without a verdict: a failure (second consecutive: 60 s), not a pinned host.
    assert_eq!(open_for(&b, "example.org"), Some(S(60)));
    advance(S(60)).await;
    let p = b.check("example.org").expect("a new probe");
    assert!(p.is_probe());
    p.success();
    assert_eq!(b.open_hosts(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_fails_at_its_deadline() {
    let b = HostBreaker::new(BreakerConfig::default().probe_deadline(S(10)));
    fail(&b, "example.org", None);
    advance(S(30)).await;
    let hung = b.check("example.org").expect("probe");
    assert_eq!(hung.deadline(), Some(Instant::now() + S(10)));
    advance(S(9)).await;
    assert_eq!(open_for(&b, "example.org"), Some(S(1)));
    advance(S(1)).await;
    // Failed at the deadline: open for the second penalty from then.
    assert_eq!(open_for(&b, "example.org"), Some(S(60)));
    advance(S(60)).await;
    let fresh = b.check("example.org").expect("a new probe");
    // The hung probe's late verdict changes nothing.
    hung.success();
    assert!(open_for(&b, "example.org").is_some(), "still half-open");
    fresh.success();
    assert_eq!(open_for(&b, "example.org"), None);
}

#[tokio::test(start_paused = true)]
async fn idle_hosts_are_evicted() {
    let b = HostBreaker::new(BreakerConfig::default().idle_ttl(S(60)));
    for i in 0..10_000 {
        b.check(&format!("host-{i}.example"))
            .expect("closed")
            .success();
    }
    fail(&b, "open.example", None);
    assert_eq!(b.tracked_hosts(), 10_001);
    assert_eq!(b.open_hosts(), 1);
    advance(S(61)).await;
    b.sweep();
    // The open host is kept until idle_ttl after its open time ends (30 s + 60 s).
    assert_eq!(b.tracked_hosts(), 1);
    advance(S(30)).await;
    b.sweep();
    assert_eq!(b.tracked_hosts(), 0);
    assert_eq!(b.open_hosts(), 0);
    // Sweeping also happens on access, shard by shard.
    let one = HostBreaker::new(BreakerConfig::default().idle_ttl(S(60)).shards(1));
    for i in 0..1000 {
        one.check(&format!("h{i}")).expect("closed").success();
    }
    advance(S(61)).await;
    one.check("fresh").expect("closed").success();
    assert_eq!(one.tracked_hosts(), 1);
}

#[tokio::test(start_paused = true)]
async fn hosts_are_case_insensitive_and_by_authority() {
    let b = HostBreaker::default();
    fail(&b, "Example.ORG", None);
    assert!(open_for(&b, "example.org").is_some());
    assert_eq!(open_for(&b, "example.org:8443"), None);
    let url = reqwest::Url::parse("https://EXAMPLE.org:8443/x").expect("url");
    assert_eq!(luca_http::breaker::authority(&url), "example.org:8443");
    let url = reqwest::Url::parse("https://example.org:443/x").expect("url");
    assert_eq!(luca_http::breaker::authority(&url), "example.org");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_closed_permit_records_nothing_and_gauges_follow() {
    let b = HostBreaker::default();
    // A request cancelled by its caller is not a failure of the host.
    drop(b.check("example.org").expect("closed"));
    assert_eq!(open_for(&b, "example.org"), None);
    assert_eq!((b.open_hosts(), b.trips()), (0, 0));
    fail(&b, "example.org", None);
    fail(&b, "other.example", None);
    assert_eq!((b.open_hosts(), b.trips()), (2, 2));
    advance(S(30)).await;
    b.check("example.org").expect("probe").success();
    assert_eq!((b.open_hosts(), b.trips()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn long_hosts_keep_their_whole_key() {
    let b = HostBreaker::default();
    let long_a = format!("{}.a.example", "x".repeat(200));
    let long_b = format!("{}.b.example", "x".repeat(200));
    for h in [
        "a.example",
        "exactly-thirty-bytes-a.example",
        &long_a,
        &long_b,
    ] {
        let p = b.check(h).expect("closed");
        assert_eq!(p.host(), h);
        p.success();
    }
    fail(&b, &long_a, None);
    assert!(open_for(&b, &long_a).is_some());
    assert_eq!(open_for(&b, &long_b), None);
    advance(S(30)).await;
    let probe = b.check(&long_a).expect("probe");
    assert!(probe.is_probe());
    assert_eq!(probe.host(), long_a);
    probe.success();
    assert_eq!(open_for(&b, &long_a), None);
    assert_eq!((b.open_hosts(), b.tracked_hosts()), (0, 4));
}

#[tokio::test(start_paused = true)]
async fn duration_max_settings_open_hosts_far_ahead_without_panicking() {
    let b = HostBreaker::new(
        BreakerConfig::default()
            .base(Duration::MAX)
            .api_base(Duration::MAX)
            .max(Duration::MAX)
            .probe_deadline(Duration::MAX)
            .idle_ttl(Duration::MAX),
    );
    fail(&b, "example.org", Some(Duration::MAX));
    let open = open_for(&b, "example.org").expect("open");
    assert!(open > S(10 * 365 * 24 * 3600), "open for years: {open:?}");
    // A late failure with Retry-After while open, and a probe with an endless deadline.
    b.check("other.org")
        .expect("closed")
        .failure(Some(Duration::MAX));
    let b = HostBreaker::new(BreakerConfig::default().probe_deadline(Duration::MAX));
    fail(&b, "probe.org", None);
    advance(S(30)).await;
    let probe = b.check("probe.org").expect("the probe");
    assert!(probe.is_probe());
    probe.failure(Some(Duration::MAX));
    assert!(open_for(&b, "probe.org").is_some());
}
