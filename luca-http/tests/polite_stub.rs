//! Politeness against the loopback stub: the stub's own count of concurrent requests per
//! host never exceeds the limit.

use std::time::Duration;

use luca_http::{PoliteConfig, Politeness};
use luca_testkit::{Gate, HttpStub, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stub_never_sees_more_than_the_limit_per_host() {
    let stub = HttpStub::start().await.expect("stub");
    // Held until three requests are in: the limit must be reached, and not passed.
    stub.on("/a")
        .respond(Reply::ok("a").after(Gate::after_arrivals(3)));
    stub.on("/b")
        .respond(Reply::ok("b").delay(Duration::from_millis(5)));
    let client = luca_http::ClientConfig::default().build().expect("client");
    let polite = Politeness::new(PoliteConfig::default().per_host(3));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, polite) = (client.clone(), polite.clone());
        let (host, path) = if i % 2 == 0 {
            ("a.test", "/a")
        } else {
            ("b.test", "/b")
        };
        let url = format!("{}{path}", stub.url());
        tasks.push(tokio::spawn(async move {
            let _slot = polite.acquire(host).await;
            let resp = client
                .get(url)
                .header(reqwest::header::HOST, host)
                .send()
                .await
                .expect("response");
            assert_eq!(resp.status(), 200);
            resp.bytes().await.expect("body");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(stub.hits("/a") + stub.hits("/b"), 40);
    assert_eq!(stub.max_concurrent("a.test"), 3);
    let b = stub.max_concurrent("b.test");
    assert!((1..=3).contains(&b), "b.test saw {b} at once");
}
