//! A downstream crate's view of luca-http: both shared clients build, and fetch from a
//! loopback server (luca-testkit's stub on 127.0.0.1, plain and with a self-signed
//! certificate).

use luca_http::InsecureTls;
use luca_testkit::{HttpStub, Reply};

/// `GET {base}/page` with `client`; the body of a 2xx answer.
async fn get_text(client: &luca_http::reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/page"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/page: {e}"))
        .error_for_status()
        .expect("200")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_clients_build_and_fetch_from_a_loopback_server() {
    let plain = HttpStub::start().await.expect("HTTP stub");
    plain.on("/page").respond(Reply::ok("over http"));
    let tls = HttpStub::start_https().await.expect("HTTPS stub");
    tls.on("/page").respond(Reply::ok("over https"));

    let verified = luca_http::client()
        .await
        .expect("the verifying client builds");
    let insecure = luca_http::insecure_client(InsecureTls::i_accept_the_risk())
        .await
        .expect("the insecure client builds");

    assert_eq!(get_text(&verified, &plain.url()).await, "over http");

    // The stub's certificate is self-signed: the verifying client refuses it before any
    // request reaches the stub, the insecure one accepts it.
    let refused = verified.get(format!("{}/page", tls.url())).send().await;
    assert!(
        refused.is_err(),
        "the verifying client accepted a self-signed certificate"
    );
    assert_eq!(tls.hits("/page"), 0);
    assert_eq!(get_text(&insecure, &tls.url()).await, "over https");
    assert_eq!((plain.hits("/page"), tls.hits("/page")), (1, 1));
}
