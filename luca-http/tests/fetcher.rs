//! `Fetcher` end to end against `HttpStub` (127.0.0.1 only). Several host names resolve to
//! the one stub, so each outcome has its own breaker entry.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use luca_http::{
    Backoff, BreakerConfig, FetchOutcome, Fetcher, HostBreaker, PoliteConfig, Politeness, Retry,
    RetryQueue, RunMetrics,
};
use luca_testkit::{Gate, HttpStub, Reply};
use reqwest::redirect::Policy;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_millis(300);

/// A plain-HTTP client with short timeouts whose resolver sends `hosts` to `addr`.
fn client(addr: SocketAddr, hosts: &[&str], follow_redirects: bool) -> reqwest::Client {
    common::loopback_client(addr, hosts, |b| {
        b.timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(if follow_redirects {
                Policy::limited(5)
            } else {
                Policy::none()
            })
    })
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

fn backoff() -> Backoff {
    Backoff::default()
        .base(Duration::from_secs(10))
        .max(Duration::from_secs(900))
        .jitter(0.5)
}

/// Asserts that `retry_at` is `Some`, within `[before + lo, after + hi]` for the backoff
/// bounds of `attempt`, and is the URL's due time in the queue.
fn assert_due(
    queue: &RetryQueue,
    url: &str,
    retry_at: Option<Instant>,
    (before, after): (Instant, Instant),
    (lo, hi): (Duration, Duration),
) {
    let at = retry_at.unwrap_or_else(|| panic!("{url}: no retry scheduled"));
    assert!(
        at >= before + lo && at <= after + hi,
        "{url}: due {:?} after the fetch began, expected within [{lo:?}, {hi:?}] (+{:?})",
        at - before,
        after - before
    );
    assert_eq!(queue.due_time(url), Some(at), "{url}: the queue's due time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_end_to_end() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/page").respond(Reply::ok("hello"));
    stub.on("/old")
        .respond(Reply::status(301).header("location", "/page"));
    stub.on("/missing").respond(Reply::status(404));
    stub.on("/bad").respond(Reply::status(400));
    stub.on("/limited-secs")
        .respond(Reply::too_many_requests().retry_after_secs(120));
    stub.on("/limited-date").respond(
        Reply::too_many_requests().retry_after_date(SystemTime::now() + Duration::from_secs(300)),
    );
    stub.on("/busy").respond(Reply::service_unavailable());
    stub.on("/stall")
        .respond(Reply::stall(Duration::from_secs(10)));
    stub.on("/reset").respond(Reply::reset());
    stub.on("/slow-body")
        .respond(Reply::ok("").slow_body(["part one", "part two"], Duration::from_secs(5)));

    let hosts = [
        "ok.test",
        "redir.test",
        "follow.test",
        "nf.test",
        "bad.test",
        "secs.test",
        "date.test",
        "busy.test",
        "stall.test",
        "reset.test",
        "body.test",
    ];
    let closed = closed_port();
    let metrics = Arc::new(RunMetrics::new());
    let queue = RetryQueue::new(100);
    let breaker = HostBreaker::default();
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &hosts, false))
        .breaker(breaker.clone())
        .metrics(metrics.clone())
        .retry_queue(queue.clone())
        .backoff(backoff())
        .build()
        .await
        .unwrap();
    let following = Fetcher::builder()
        .client(client(stub.addr(), &hosts, true))
        .breaker(breaker.clone())
        .metrics(metrics.clone())
        .retry_queue(queue.clone())
        .backoff(backoff())
        .build()
        .await
        .unwrap();
    let url = |host: &str, path: &str| format!("http://{host}:{port}{path}");
    // The first backoff step (5–10 s) is shorter than the breaker's first penalty (30 s,
    // the default): a failure without a longer Retry-After is due when its host closes.
    let (_, longest) = backoff().bounds(1, None);
    let penalty = BreakerConfig::default().penalty(false, 1);
    assert!(longest < penalty);
    let first = (penalty, penalty);
    let at_open_end = |out: &FetchOutcome, host: &str| {
        let until = breaker.open_until(host);
        assert!(until.is_some(), "{host} is open");
        assert_eq!(out.retry_at(), until, "{host}: due when it closes");
    };

    // 200
    match fetcher.fetch(url("ok.test", "/page")).await {
        FetchOutcome::Ok(f) => {
            assert_eq!(f.status, 200);
            assert_eq!(&f.body[..], b"hello");
            assert_eq!(f.url.as_str(), url("ok.test", "/page"));
        }
        other => panic!("200: {other:?}"),
    }
    // 301, not followed: Redirect with the Location resolved.
    match fetcher.fetch(url("redir.test", "/old")).await {
        FetchOutcome::Redirect {
            status, location, ..
        } => {
            assert_eq!(status, 301);
            assert_eq!(location.unwrap().as_str(), url("redir.test", "/page"));
        }
        other => panic!("301: {other:?}"),
    }
    // 301, followed by the default-like client: Ok with the final URL.
    match following.fetch(url("follow.test", "/old")).await {
        FetchOutcome::Ok(f) => {
            assert_eq!(f.url.as_str(), url("follow.test", "/page"));
            assert_eq!(&f.body[..], b"hello");
        }
        other => panic!("301 followed: {other:?}"),
    }
    assert!(matches!(
        fetcher.fetch(url("nf.test", "/missing")).await,
        FetchOutcome::NotFound
    ));
    match fetcher.fetch(url("bad.test", "/bad")).await {
        FetchOutcome::ClientError { status } => assert_eq!(status, 400),
        other => panic!("400: {other:?}"),
    }

    // 429 with Retry-After in seconds, longer than the backoff: due after 120 s.
    let u = url("secs.test", "/limited-secs");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    match &out {
        FetchOutcome::TooManyRequests { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(120)));
        }
        other => panic!("429 secs: {other:?}"),
    }
    let secs = Duration::from_secs(120);
    assert_due(&queue, &u, out.retry_at(), (before, after), (secs, secs));

    // 429 with an HTTP-date 300 s ahead (whole seconds: 299–300 s from now).
    let u = url("date.test", "/limited-date");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    assert!(matches!(
        out,
        FetchOutcome::TooManyRequests {
            retry_after: Some(_),
            ..
        }
    ));
    assert_due(
        &queue,
        &u,
        out.retry_at(),
        (before, after),
        (Duration::from_secs(298), Duration::from_secs(301)),
    );

    // 503 without Retry-After: the first backoff step.
    let u = url("busy.test", "/busy");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    match &out {
        FetchOutcome::ServerError { status, .. } => assert_eq!(*status, 503),
        other => panic!("503: {other:?}"),
    }
    assert_due(&queue, &u, out.retry_at(), (before, after), first);
    at_open_end(&out, &format!("busy.test:{port}"));

    // A stall longer than the client timeout.
    let u = url("stall.test", "/stall");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    assert!(
        matches!(out, FetchOutcome::Timeout { .. }),
        "stall: {out:?}"
    );
    assert_due(&queue, &u, out.retry_at(), (before, after), first);
    at_open_end(&out, &format!("stall.test:{port}"));

    // A reset before any response: the connection broke.
    let u = url("reset.test", "/reset");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    assert!(
        matches!(out, FetchOutcome::Connect { .. }),
        "reset: {out:?}"
    );
    assert_due(&queue, &u, out.retry_at(), (before, after), first);
    at_open_end(&out, &format!("reset.test:{port}"));

    // A 200 whose body stalls past the timeout.
    let u = url("body.test", "/slow-body");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    match &out {
        FetchOutcome::Body { status, .. } => assert_eq!(*status, 200),
        other => panic!("slow body: {other:?}"),
    }
    assert_due(&queue, &u, out.retry_at(), (before, after), first);
    at_open_end(&out, &format!("body.test:{port}"));

    // A closed port.
    let u = format!("http://{closed}/page");
    let before = Instant::now();
    let out = fetcher.fetch(&u).await;
    let after = Instant::now();
    assert!(
        matches!(out, FetchOutcome::Connect { .. }),
        "closed: {out:?}"
    );
    assert_due(&queue, &u, out.retry_at(), (before, after), first);
    at_open_end(&out, &closed.to_string());

    let snap = metrics.snapshot();
    assert_eq!(snap.requests, 12, "{snap}");
    assert_eq!(snap.status_2xx, 3, "{snap}"); // ok, followed, slow body
    assert_eq!(snap.status_3xx, 1, "{snap}");
    assert_eq!(snap.status_4xx, 4, "{snap}"); // 404, 400, 429, 429
    assert_eq!(snap.too_many_requests, 2, "{snap}");
    assert_eq!(snap.status_5xx, 1, "{snap}");
    assert_eq!(snap.timeouts, 1, "{snap}");
    assert_eq!(snap.connect_errors, 2, "{snap}");
    assert_eq!(snap.body_errors, 1, "{snap}");
    assert_eq!(snap.retries_scheduled, 7, "{snap}");
    // One trip per failing host: 2 × 429, 503, stall, reset, body, closed port.
    assert_eq!(snap.breaker_trips, 7, "{snap}");
    assert_eq!(snap.open_hosts, 7, "{snap}");
    assert_eq!(queue.len(), 7);
    assert_eq!(breaker.open_hosts(), 7);
    // Final outcomes leave no attempt count behind; retried ones have one each.
    assert_eq!(fetcher.attempts(&url("ok.test", "/page")), 0);
    assert_eq!(fetcher.attempts(&url("busy.test", "/busy")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_then_host_open_sends_nothing_until_the_probe() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/fail").respond(Reply::service_unavailable());
    stub.on("/other").respond(Reply::ok("other"));
    let base = Duration::from_millis(300);
    let breaker = HostBreaker::new(
        BreakerConfig::default()
            .base(base)
            .max(Duration::from_secs(5)),
    );
    let queue = RetryQueue::new(100);
    let metrics = Arc::new(RunMetrics::new());
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["flaky.test"], false))
        .breaker(breaker.clone())
        .metrics(metrics.clone())
        .retry_queue(queue.clone())
        .backoff(backoff())
        .build()
        .await
        .unwrap();
    let fail = format!("http://flaky.test:{port}/fail");
    let other = format!("http://flaky.test:{port}/other");

    // First failure: open for `base`.
    let before = Instant::now();
    assert!(matches!(
        fetcher.fetch(&fail).await,
        FetchOutcome::ServerError { .. }
    ));
    let until = match fetcher.fetch(&other).await {
        FetchOutcome::HostOpen { until, retry_at } => {
            assert_eq!(retry_at, Some(until), "queued for the end of the open time");
            assert_eq!(queue.due_time(&other), Some(until));
            until
        }
        other => panic!("expected HostOpen, got {other:?}"),
    };
    assert!(until >= before + base && until <= Instant::now() + base);
    assert_eq!(stub.hits("/other"), 0, "an open host gets no request");
    assert_eq!(stub.total_hits(), 1);

    // Half-open: the probe fails again, the penalty doubles.
    tokio::time::sleep_until(until).await;
    let before = Instant::now();
    assert!(matches!(
        fetcher.fetch(&fail).await,
        FetchOutcome::ServerError { .. }
    ));
    let until = match fetcher.fetch(&other).await {
        FetchOutcome::HostOpen { until, .. } => until,
        other => panic!("expected HostOpen, got {other:?}"),
    };
    assert!(until >= before + 2 * base, "second penalty is 2 × base");
    assert_eq!(stub.hits("/other"), 0);
    assert_eq!(stub.hits("/fail"), 2);
    let snap = metrics.snapshot();
    assert_eq!((snap.breaker_trips, snap.open_hosts), (2, 1), "{snap}");
    assert_eq!(snap.requests, 2, "HostOpen sends nothing: {snap}");

    // The next probe succeeds: closed again, gauge back to 0.
    tokio::time::sleep_until(until).await;
    assert!(matches!(fetcher.fetch(&other).await, FetchOutcome::Ok(_)));
    assert_eq!(stub.hits("/other"), 1);
    assert_eq!(breaker.open_hosts(), 0);
    let snap = metrics.snapshot();
    assert_eq!((snap.breaker_trips, snap.open_hosts), (2, 0), "{snap}");
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
async fn post_is_retried_only_when_opted_in() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/submit").respond(Reply::service_unavailable());
    let queue = RetryQueue::new(100);
    let metrics = Arc::new(RunMetrics::new());
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["post.test"], false))
        .breaker(lenient_breaker())
        .metrics(metrics.clone())
        .retry_queue(queue.clone())
        .backoff(backoff())
        .build()
        .await
        .unwrap();
    let u = format!("http://post.test:{port}/submit");
    let post = || fetcher.client().post(&u).body("x=1").build().unwrap();

    let out = fetcher.fetch_request(post()).await;
    assert!(
        matches!(out, FetchOutcome::ServerError { retry_at: None, .. }),
        "{out:?}"
    );
    assert!(queue.is_empty(), "a POST is not retried by default");
    assert_eq!(fetcher.attempts(&u), 0);

    let out = fetcher.fetch_with(post(), Retry::Never).await;
    assert_eq!(out.retry_at(), None);
    assert!(queue.is_empty());

    let out = fetcher.fetch_with(post(), Retry::Always).await;
    assert!(out.retry_at().is_some(), "opted in: {out:?}");
    assert_eq!(queue.due_time(&u), out.retry_at());

    // PUT is idempotent: retried by default.
    queue.remove(&u).await.unwrap();
    let put = fetcher.client().put(&u).body("x=1").build().unwrap();
    assert!(fetcher.fetch_request(put).await.retry_at().is_some());
    assert_eq!(queue.len(), 1);
    assert_eq!(stub.hits("/submit"), 4);
    assert_eq!(metrics.snapshot().retries_scheduled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_grow_the_backoff_and_stop_at_the_limit() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/flaky").respond_seq([
        Reply::service_unavailable(),
        Reply::service_unavailable(),
        Reply::service_unavailable(),
        Reply::ok("finally"),
    ]);
    let queue = RetryQueue::new(100);
    let b = backoff().max_attempts(2);
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["retry.test"], false))
        .breaker(lenient_breaker())
        .retry_queue(queue.clone())
        .backoff(b)
        .build()
        .await
        .unwrap();
    let u = format!("http://retry.test:{port}/flaky");

    for attempt in 1..=2 {
        queue.remove(&u).await.unwrap();
        let before = Instant::now();
        let out = fetcher.fetch(&u).await;
        let after = Instant::now();
        assert_due(
            &queue,
            &u,
            out.retry_at(),
            (before, after),
            b.bounds(attempt, None),
        );
        assert_eq!(fetcher.attempts(&u), attempt);
    }
    // Third failure: the limit (2) is used up, nothing is scheduled, the count restarts.
    queue.remove(&u).await.unwrap();
    let out = fetcher.fetch(&u).await;
    assert!(
        matches!(out, FetchOutcome::ServerError { retry_at: None, .. }),
        "{out:?}"
    );
    assert!(queue.is_empty());
    assert_eq!(fetcher.attempts(&u), 0);
    assert!(matches!(fetcher.fetch(&u).await, FetchOutcome::Ok(_)));
    assert_eq!(fetcher.metrics().snapshot().retries_scheduled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_map_is_bounded() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["many.test"], false))
        .breaker(lenient_breaker())
        .retry_queue(RetryQueue::new(100))
        .max_tracked_urls(4)
        .build()
        .await
        .unwrap();
    let urls: Vec<String> = (0..6)
        .map(|i| {
            stub.on(format!("/u{i}"))
                .respond(Reply::service_unavailable());
            format!("http://many.test:{port}/u{i}")
        })
        .collect();
    for u in &urls {
        assert!(fetcher.fetch(u).await.retry_at().is_some());
    }
    let tracked = urls.iter().filter(|u| fetcher.attempts(u) > 0).count();
    assert!(tracked <= 4, "at most 4 URLs tracked, got {tracked}");
    assert_eq!(fetcher.attempts(&urls[0]), 0, "the oldest was forgotten");
    assert_eq!(fetcher.attempts(&urls[5]), 1, "the newest is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_gives_too_large_without_retry() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/big").respond(Reply::ok(vec![b'x'; 4096]));
    stub.on("/small").respond(Reply::ok("tiny"));
    // Chunked, no Content-Length: the limit is found while reading.
    stub.on("/big-chunked")
        .respond(Reply::ok("").slow_body([vec![b'y'; 800], vec![b'y'; 800]], Duration::ZERO));
    let queue = RetryQueue::new(100);
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["big.test"], false))
        .retry_queue(queue.clone())
        .max_body(1024)
        .build()
        .await
        .unwrap();
    let out = fetcher.fetch(format!("http://big.test:{port}/big")).await;
    assert!(
        matches!(out, FetchOutcome::TooLarge { limit: 1024, .. }),
        "{:?}",
        out.status()
    );
    let out = fetcher
        .fetch(format!("http://big.test:{port}/big-chunked"))
        .await;
    assert!(
        matches!(out, FetchOutcome::TooLarge { limit: 1024, .. }),
        "{:?}",
        out.status()
    );
    assert!(queue.is_empty());
    assert_eq!(fetcher.breaker().open_hosts(), 0);
    match fetcher.fetch(format!("http://big.test:{port}/small")).await {
        FetchOutcome::Ok(f) => assert_eq!(&f.body[..], b"tiny"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_concurrency_limit_is_respected() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    // The first two requests wait for each other, so two are surely in flight at once;
    // every reply then takes a little while, so an unlimited fetcher would overlap more.
    stub.on("/slow").respond(
        Reply::ok("done")
            .after(Gate::after_arrivals(2))
            .delay(Duration::from_millis(30)),
    );
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["limit.test"], false))
        .politeness(Politeness::new(PoliteConfig::default().per_host(2)))
        .build()
        .await
        .unwrap();
    let u = format!("http://limit.test:{port}/slow");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let f = fetcher.clone();
            let u = u.clone();
            tokio::spawn(async move { f.fetch(u).await })
        })
        .collect();
    for t in tasks {
        let out = t.await.unwrap();
        assert!(matches!(out, FetchOutcome::Ok(_)), "{out:?}");
    }
    assert_eq!(stub.hits("/slow"), 8);
    assert_eq!(stub.max_concurrent("limit.test"), 2);
    assert_eq!(fetcher.metrics().snapshot().requests, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_dropped_while_waiting_for_a_slot_takes_nothing() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    let gate = Gate::new();
    stub.on("/held")
        .respond(Reply::ok("held").after(gate.clone()));
    stub.on("/free").respond(Reply::ok("free"));
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["one.test"], false))
        .politeness(Politeness::new(PoliteConfig::default().per_host(1)))
        .build()
        .await
        .unwrap();
    let held = format!("http://one.test:{port}/held");
    let free = format!("http://one.test:{port}/free");

    let first = tokio::spawn({
        let f = fetcher.clone();
        async move { f.fetch(held).await }
    });
    // The first fetch holds the only slot until the gate opens.
    assert!(stub.wait_for_hits("/held", 1, Duration::from_secs(5)).await);
    // A second one cannot get the slot, however long it waits; drop it while it waits.
    let waited =
        tokio::time::timeout(Duration::from_millis(50), fetcher.fetch(free.as_str())).await;
    assert!(waited.is_err(), "the slot was taken: {waited:?}");
    gate.open();
    assert!(matches!(first.await.unwrap(), FetchOutcome::Ok(_)));
    // The dropped fetch sent nothing and left the slot free.
    assert_eq!(stub.hits("/free"), 0);
    assert!(matches!(
        fetcher.fetch(free.as_str()).await,
        FetchOutcome::Ok(_)
    ));
    assert_eq!(stub.hits("/free"), 1);
    assert_eq!(fetcher.metrics().snapshot().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exact_under_concurrency() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/busy")
        .respond(Reply::service_unavailable().retry_after_secs(30));
    stub.on("/page").respond(Reply::ok("page"));
    let hosts: Vec<String> = (0..16).map(|i| format!("h{i}.test")).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let queue = RetryQueue::new(1000);
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &names, false))
        .retry_queue(queue.clone())
        .build()
        .await
        .unwrap();
    // Per host: 3 pages, then one 503 that opens it; all hosts at once.
    let tasks: Vec<_> = hosts
        .iter()
        .map(|h| {
            let f = fetcher.clone();
            let base = format!("http://{h}:{port}");
            tokio::spawn(async move {
                for _ in 0..3 {
                    assert!(matches!(
                        f.fetch(format!("{base}/page")).await,
                        FetchOutcome::Ok(_)
                    ));
                }
                assert!(f.fetch(format!("{base}/busy")).await.retry_at().is_some());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let snap = fetcher.metrics().snapshot();
    assert_eq!(snap.requests, 64, "{snap}");
    assert_eq!((snap.status_2xx, snap.status_5xx), (48, 16), "{snap}");
    assert_eq!(snap.retries_scheduled, 16, "{snap}");
    assert_eq!(snap.breaker_trips, 16, "{snap}");
    assert_eq!(snap.open_hosts, 16, "{snap}");
    assert_eq!(fetcher.breaker().trips(), 16);
    assert_eq!(queue.len(), 16);
}
