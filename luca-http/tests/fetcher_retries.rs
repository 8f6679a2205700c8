//! `Fetcher` retry scheduling against `HttpStub` (127.0.0.1 only): a retry is never due
//! while its host is still open (breaker and gate, on paused time); attempt numbers
//! survive a restart with a persistent queue; a URL without a host is refused before the
//! breaker, politeness and metrics see it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use luca_core::Db;
use luca_http::{
    Backoff, BreakerConfig, FetchOutcome, Fetcher, HostBreaker, HostGate, PoliteConfig, Politeness,
    Retry, RetryQueue, RunMetrics,
};
use luca_testkit::{HttpStub, Reply, TempDb};
use reqwest::{Method, Url};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
/// The suite's bound for any one test, in real time.
const TEST_BOUND: Duration = Duration::from_secs(25);

/// A plain-HTTP client whose resolver sends `hosts` to `addr`. `timeouts`: short request
/// and connect timeouts (real time); without, the client sets no timer at all (no
/// timeouts, no pooled connections), so a paused clock stays where it is while a request
/// is in flight.
fn client(addr: SocketAddr, hosts: &[&str], timeouts: bool) -> reqwest::Client {
    common::loopback_client(addr, hosts, |b| {
        if timeouts {
            b.timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(5))
        } else {
            b.pool_max_idle_per_host(0).pool_idle_timeout(None)
        }
    })
}

/// Runs `test` on a current-thread runtime with paused time, with an `HttpStub` that runs
/// on a runtime of its own (real time, so the paused clock never has to move for it).
fn on_paused_time<F, Fut>(test: F)
where
    F: FnOnce(Arc<HttpStub>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stub = Arc::new(stub_rt.block_on(HttpStub::start()).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // The bound is in real time, on a thread of its own: a timer on the paused runtime
    // would make its clock jump ahead whenever it waits for the stub's answers.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let fut = test(Arc::clone(&stub));
    std::thread::scope(|scope| {
        let runner = scope.spawn(move || {
            rt.block_on(fut);
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(TEST_BOUND) {
            Ok(()) => runner.join().expect("the test ran"),
            // The test panicked: show its panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(runner.join().expect_err("it panicked"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the test did not finish within {TEST_BOUND:?}")
            }
        }
    });
    drop(stub);
    drop(stub_rt);
}

#[test]
fn a_retry_is_not_due_before_the_breaker_lets_the_host_through() {
    on_paused_time(|stub| async move {
        let port = stub.addr().port();
        stub.on("/busy").respond(Reply::service_unavailable());
        let breaker =
            HostBreaker::new(BreakerConfig::default().base(60 * SECOND).max(900 * SECOND));
        let queue = RetryQueue::new(100);
        let hosts = ["open.test", "late.test"];
        // Backoff 1 s, 2 s, …: much shorter than the host's penalty (60 s, 120 s, …).
        let fetcher = Fetcher::builder()
            .client(client(stub.addr(), &hosts, false))
            .breaker(breaker.clone())
            .retry_queue(queue.clone())
            .backoff(Backoff::default().base(SECOND).jitter(0.0))
            .build()
            .await
            .unwrap();
        let busy = format!("http://open.test:{port}/busy");
        let host = format!("open.test:{port}");

        // The 503 opens the host for 60 s: the retry is due when it closes, not in 1 s.
        let t0 = Instant::now();
        let out = fetcher.fetch(&busy).await;
        assert!(matches!(out, FetchOutcome::ServerError { .. }), "{out:?}");
        let until = breaker.open_until(&host).expect("the 503 opened the host");
        assert!(until >= t0 + 60 * SECOND, "{:?}", until - t0);
        assert_eq!(
            out.retry_at(),
            Some(until),
            "due at the end of the open time"
        );
        assert_eq!(queue.due_time(&busy), Some(until));

        // When it comes due the breaker lets it through (as the probe): no wasted attempt.
        tokio::time::sleep_until(until).await;
        assert_eq!(queue.due(Instant::now()).await.unwrap(), [busy.as_str()]);
        let t1 = Instant::now();
        let out = fetcher.fetch(&busy).await;
        assert!(
            matches!(out, FetchOutcome::ServerError { .. }),
            "the retry reached the host: {out:?}"
        );
        assert_eq!(stub.hits("/busy"), 2);
        // The probe failed: open for 120 s now; attempt 2's backoff (2 s) is shorter.
        let until = breaker
            .open_until(&host)
            .expect("the probe's failure reopened it");
        assert!(until >= t1 + 120 * SECOND, "{:?}", until - t1);
        assert_eq!(out.retry_at(), Some(until));
        assert_eq!(fetcher.attempts(&busy), 2);

        // A backoff longer than the open time wins: 100 s against 60 s.
        let patient = Fetcher::builder()
            .client(client(stub.addr(), &hosts, false))
            .breaker(breaker.clone())
            .retry_queue(queue.clone())
            .backoff(Backoff::default().base(100 * SECOND).jitter(0.0))
            .build()
            .await
            .unwrap();
        let late = format!("http://late.test:{port}/busy");
        let before = Instant::now();
        let out = patient.fetch(&late).await;
        let after = Instant::now();
        let late_until = breaker
            .open_until(&format!("late.test:{port}"))
            .expect("open");
        let at = out.retry_at().expect("scheduled");
        assert!(at > late_until, "the backoff is the later one");
        assert!(
            at >= before + 100 * SECOND && at <= after + 100 * SECOND,
            "{:?}",
            at - before
        );
    });
}

#[test]
fn a_retry_is_not_due_before_the_gate_lets_the_host_through() {
    on_paused_time(|stub| async move {
        let port = stub.addr().port();
        // A Retry-After (300 s) longer than the backoff's max (30 s): the gate keeps the
        // host open for all of it (its max is 900 s), so must the retry.
        stub.on("/limited")
            .respond(Reply::too_many_requests().retry_after_secs(300));
        let gate = HostGate::new(
            BreakerConfig::default().base(10 * SECOND),
            PoliteConfig::default(),
        );
        let queue = RetryQueue::new(100);
        let fetcher = Fetcher::builder()
            .client(client(stub.addr(), &["gate.test"], false))
            .gate(gate.clone())
            .retry_queue(queue.clone())
            .backoff(Backoff::default().base(SECOND).max(30 * SECOND).jitter(0.0))
            .build()
            .await
            .unwrap();
        let url = format!("http://gate.test:{port}/limited");
        let host = format!("gate.test:{port}");

        let t0 = Instant::now();
        let out = fetcher.fetch(&url).await;
        match &out {
            FetchOutcome::TooManyRequests { retry_after, .. } => {
                assert_eq!(*retry_after, Some(300 * SECOND));
            }
            other => panic!("expected 429, got {other:?}"),
        }
        let until = gate.open_until(&host).expect("the 429 opened the host");
        assert!(until >= t0 + 300 * SECOND, "{:?}", until - t0);
        assert_eq!(
            out.retry_at(),
            Some(until),
            "due at the end of the open time"
        );
        assert_eq!(queue.due_time(&url), Some(until));
        // Not a second earlier is the host let through.
        tokio::time::sleep_until(until - SECOND).await;
        assert!(matches!(
            fetcher.fetch(&url).await,
            FetchOutcome::HostOpen { .. }
        ));
        tokio::time::sleep_until(until).await;
        assert_eq!(queue.due(Instant::now()).await.unwrap(), [url.as_str()]);
        assert!(matches!(
            fetcher.fetch(&url).await,
            FetchOutcome::TooManyRequests { .. }
        ));
        assert_eq!(stub.hits("/limited"), 2, "the retry reached the host");
    });
}

/// A breaker that never keeps a host open (penalty 0): every fetch reaches the stub.
fn lenient_breaker() -> HostBreaker {
    HostBreaker::new(
        BreakerConfig::default()
            .base(Duration::ZERO)
            .api_base(Duration::ZERO)
            .max(Duration::ZERO),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_continue_after_a_restart_with_a_persistent_queue() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/flaky").respond(Reply::service_unavailable());
    let tmp = TempDb::new();
    let backoff = Backoff::default().base(SECOND).jitter(0.0).max_attempts(3);
    let url = format!("http://restart.test:{port}/flaky");
    let far = || Instant::now() + Duration::from_secs(3600);

    // The first run: two failures, two retries scheduled (attempts 1 and 2), the second
    // still queued when the run ends.
    {
        let db = Db::open(tmp.path()).await.unwrap();
        let queue = RetryQueue::persistent(&db, 100).await.unwrap();
        let fetcher = Fetcher::builder()
            .client(client(stub.addr(), &["restart.test"], true))
            .breaker(lenient_breaker())
            .retry_queue(queue.clone())
            .backoff(backoff)
            .build()
            .await
            .unwrap();
        assert!(fetcher.fetch(&url).await.retry_at().is_some());
        assert_eq!(queue.attempt(&url), Some(1));
        assert_eq!(queue.due(far()).await.unwrap(), [url.as_str()]);
        assert!(fetcher.fetch(&url).await.retry_at().is_some());
        assert_eq!(queue.attempt(&url), Some(2));
        assert_eq!(fetcher.attempts(&url), 2);
        drop(fetcher);
        drop(queue);
        db.close().await.unwrap();
    }

    // The restart: everything new but the file.
    let db = Db::open(tmp.path()).await.unwrap();
    let queue = RetryQueue::persistent(&db, 100).await.unwrap();
    assert_eq!(
        queue.attempt(&url),
        Some(2),
        "the attempt was kept in the file"
    );
    let metrics = Arc::new(RunMetrics::new());
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["restart.test"], true))
        .breaker(lenient_breaker())
        .metrics(metrics.clone())
        .retry_queue(queue.clone())
        .backoff(backoff)
        .build()
        .await
        .unwrap();
    assert_eq!(
        fetcher.attempts(&url),
        2,
        "the fetcher starts from the queue"
    );

    // Attempt 3: the third retry, with attempt 3's backoff (4 s).
    assert_eq!(queue.due(far()).await.unwrap(), [url.as_str()]);
    let before = Instant::now();
    let out = fetcher.fetch(&url).await;
    let after = Instant::now();
    let at = out.retry_at().expect("the third retry is scheduled");
    let (lo, hi) = backoff.bounds(3, None);
    assert_eq!((lo, hi), (4 * SECOND, 4 * SECOND));
    assert!(at >= before + lo && at <= after + hi, "{:?}", at - before);
    assert_eq!(queue.attempt(&url), Some(3));

    // The next failure: max_attempts (3) used up in total over both runs.
    assert_eq!(queue.due(far()).await.unwrap(), [url.as_str()]);
    let out = fetcher.fetch(&url).await;
    assert!(
        matches!(out, FetchOutcome::ServerError { retry_at: None, .. }),
        "{out:?}"
    );
    assert!(queue.is_empty());
    assert_eq!(fetcher.attempts(&url), 0);
    assert_eq!(stub.hits("/flaky"), 4, "the first try and three retries");
    assert_eq!(metrics.snapshot().retries_scheduled, 1);
    drop(fetcher);
    drop(queue);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_a_host_is_refused_before_the_breaker() {
    let stub = HttpStub::start().await.unwrap();
    let breaker = HostBreaker::default();
    let polite = Politeness::new(PoliteConfig::default());
    let gate = HostGate::default();
    let queue = RetryQueue::new(100);
    let split = Fetcher::builder()
        .client(client(stub.addr(), &[], true))
        .breaker(breaker.clone())
        .politeness(polite.clone())
        .retry_queue(queue.clone())
        .build()
        .await
        .unwrap();
    let gated = Fetcher::builder()
        .client(client(stub.addr(), &[], true))
        .gate(gate.clone())
        .retry_queue(queue.clone())
        .build()
        .await
        .unwrap();

    for fetcher in [&split, &gated] {
        for raw in [
            "mailto:x",
            "file:///x",
            "data:text/plain,hi",
            "urn:isbn:0451450523",
        ] {
            let url = Url::parse(raw).unwrap();
            assert_eq!(url.host_str(), None, "{raw} has no host");
            for (method, retry) in [
                (Method::GET, Retry::IfIdempotent),
                (Method::POST, Retry::Always),
            ] {
                let req = reqwest::Request::new(method, url.clone());
                match fetcher.fetch_with(req, retry).await {
                    FetchOutcome::Failed { error } => {
                        assert!(error.is_builder(), "{raw}: {error:?}");
                        assert_eq!(error.url(), Some(&url), "{raw}: the error names the URL");
                    }
                    other => panic!("{raw}: expected Failed, got {other:?}"),
                }
            }
        }
        // Unparsable, or an empty host: refused when the request is built.
        for raw in ["http://", "http://:80/", "not a url"] {
            assert!(
                matches!(fetcher.fetch(raw).await, FetchOutcome::Failed { .. }),
                "{raw}"
            );
        }
    }

    // No entry anywhere, no failure, no request, nothing queued.
    assert_eq!(breaker.tracked_hosts(), 0);
    assert_eq!((breaker.trips(), breaker.open_hosts()), (0, 0));
    assert_eq!(polite.tracked_hosts(), 0);
    assert_eq!(gate.tracked_hosts(), 0);
    assert_eq!((gate.trips(), gate.open_hosts()), (0, 0));
    for fetcher in [&split, &gated] {
        let snap = fetcher.metrics().snapshot();
        assert_eq!(snap.requests, 0, "{snap}");
        assert_eq!(snap.retries_scheduled, 0, "{snap}");
    }
    assert!(queue.is_empty());
    assert_eq!(stub.total_hits(), 0);
}
