//! `Fetcher` with a `HostGate` (breaker and politeness in one table) against `HttpStub`
//! (127.0.0.1 only): the breaker opens and probes, the per-host limit holds, a fetch
//! dropped while waiting for a slot takes nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use luca_http::{
    BreakerConfig, FetchOutcome, Fetcher, HostGate, PoliteConfig, RetryQueue, RunMetrics,
};
use luca_testkit::{Gate, HttpStub, Reply};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_millis(300);

/// A plain-HTTP client with short timeouts whose resolver sends `hosts` to `addr`.
fn client(addr: SocketAddr, hosts: &[&str]) -> reqwest::Client {
    common::loopback_client(addr, hosts, |b| b.timeout(TIMEOUT).connect_timeout(TIMEOUT))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_opens_the_host_then_lets_one_probe_through() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/fail").respond(Reply::service_unavailable());
    stub.on("/other").respond(Reply::ok("other"));
    let base = Duration::from_millis(300);
    let gate = HostGate::new(
        BreakerConfig::default()
            .base(base)
            .max(Duration::from_secs(5)),
        PoliteConfig::default(),
    );
    let queue = RetryQueue::new(100);
    let metrics = Arc::new(RunMetrics::new());
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["flaky.test"]))
        .gate(gate.clone())
        .metrics(metrics.clone())
        .retry_queue(queue.clone())
        .build()
        .await
        .unwrap();
    assert!(fetcher.gate().is_some());
    let fail = format!("http://flaky.test:{port}/fail");
    let other = format!("http://flaky.test:{port}/other");

    let before = Instant::now();
    assert!(matches!(
        fetcher.fetch(&fail).await,
        FetchOutcome::ServerError { .. }
    ));
    let until = match fetcher.fetch(&other).await {
        FetchOutcome::HostOpen { until, retry_at } => {
            assert_eq!(retry_at, Some(until), "queued for the end of the open time");
            until
        }
        other => panic!("expected HostOpen, got {other:?}"),
    };
    assert!(until >= before + base && until <= Instant::now() + base);
    assert_eq!(stub.hits("/other"), 0, "an open host gets no request");
    let snap = metrics.snapshot();
    assert_eq!((snap.breaker_trips, snap.open_hosts), (1, 1), "{snap}");
    // The idle breaker of the builder saw nothing: the gate did the work.
    assert_eq!(fetcher.breaker().trips(), 0);

    // Half-open: the probe succeeds, the host closes, the gauge follows.
    tokio::time::sleep_until(until).await;
    assert!(matches!(fetcher.fetch(&other).await, FetchOutcome::Ok(_)));
    assert_eq!(stub.hits("/other"), 1);
    assert_eq!(gate.open_hosts(), 0);
    let snap = metrics.snapshot();
    assert_eq!((snap.breaker_trips, snap.open_hosts), (1, 0), "{snap}");
    assert_eq!(snap.requests, 2, "HostOpen sends nothing: {snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_keeps_the_per_host_limit() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    stub.on("/slow").respond(
        Reply::ok("done")
            .after(Gate::after_arrivals(2))
            .delay(Duration::from_millis(30)),
    );
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["limit.test"]))
        .gate(HostGate::new(
            BreakerConfig::default(),
            PoliteConfig::default().per_host(2),
        ))
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_dropped_while_waiting_at_the_gate_takes_nothing() {
    let stub = HttpStub::start().await.unwrap();
    let port = stub.addr().port();
    let gate = Gate::new();
    stub.on("/held")
        .respond(Reply::ok("held").after(gate.clone()));
    stub.on("/free").respond(Reply::ok("free"));
    let fetcher = Fetcher::builder()
        .client(client(stub.addr(), &["one.test"]))
        .gate(HostGate::new(
            BreakerConfig::default(),
            PoliteConfig::default().per_host(1),
        ))
        .build()
        .await
        .unwrap();
    let held = format!("http://one.test:{port}/held");
    let free = format!("http://one.test:{port}/free");
    let first = tokio::spawn({
        let f = fetcher.clone();
        async move { f.fetch(held).await }
    });
    assert!(stub.wait_for_hits("/held", 1, Duration::from_secs(5)).await);
    let waited =
        tokio::time::timeout(Duration::from_millis(50), fetcher.fetch(free.as_str())).await;
    assert!(waited.is_err(), "the slot was taken: {waited:?}");
    gate.open();
    assert!(matches!(first.await.unwrap(), FetchOutcome::Ok(_)));
    assert_eq!(stub.hits("/free"), 0);
    assert!(matches!(
        fetcher.fetch(free.as_str()).await,
        FetchOutcome::Ok(_)
    ));
    assert_eq!(stub.hits("/free"), 1);
    assert_eq!(fetcher.metrics().snapshot().requests, 2);
    assert_eq!(fetcher.gate().map(HostGate::tracked_hosts), Some(1));
}
