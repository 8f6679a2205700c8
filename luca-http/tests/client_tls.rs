//! Against the loopback HTTPS stub (self-signed certificate): the verified client refuses
//! it, the insecure client accepts it; both fetch plain HTTP from the loopback stub.

use std::error::Error as _;

use luca_http::InsecureTls;
use luca_testkit::{HttpStub, Reply};

fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(" / ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_refuses_self_signed_insecure_accepts() {
    let stub = HttpStub::start_https().await.expect("https stub");
    stub.on("/page").respond(Reply::ok("secret page"));
    let url = format!("{}/page", stub.url());

    let verified = luca_http::client().await.expect("verified client");
    let err = verified
        .get(&url)
        .send()
        .await
        .expect_err("self-signed must be refused");
    let text = chain(&err);
    assert!(err.is_connect(), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_eq!(
        stub.hits("/page"),
        0,
        "no request got through the handshake"
    );

    let insecure = luca_http::insecure_client(InsecureTls::i_accept_the_risk())
        .await
        .expect("insecure client");
    let resp = insecure.get(&url).send().await.expect("accepted");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "secret page");
    assert_eq!(stub.hits("/page"), 1);

    // The verified client does fetch plain HTTP from the loopback stub.
    let plain = HttpStub::start().await.expect("http stub");
    plain.on("/p").respond(Reply::ok("plain"));
    let body = verified
        .get(format!("{}/p", plain.url()))
        .send()
        .await
        .expect("plain http")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "plain");
}
