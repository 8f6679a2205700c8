//! The shared clients are built exactly once however many tasks ask at the same moment.

use std::sync::Arc;

use luca_http::InsecureTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_first_calls_build_each_client_once() {
    assert_eq!(luca_http::client::__build_attempts(), (0, 0));
    let gate = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            if i % 2 == 0 {
                luca_http::client().await.map(drop)
            } else {
                luca_http::insecure_client(InsecureTls::i_accept_the_risk())
                    .await
                    .map(drop)
            }
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("client builds");
    }
    assert_eq!(luca_http::client::__build_attempts(), (1, 1));
    // Later calls reuse them.
    luca_http::client().await.expect("client");
    assert_eq!(luca_http::client::__build_attempts(), (1, 1));
    // Too late to configure the shared clients now.
    let err = luca_http::configure(luca_http::ClientConfig::default()).unwrap_err();
    assert!(matches!(err, luca_http::ClientError::AlreadyBuilt), "{err}");
}

#[test]
fn owned_clients_build_with_the_config() {
    let cfg = luca_http::ClientConfig::default()
        .user_agent("test-agent/1")
        .connect_timeout(std::time::Duration::from_secs(2));
    cfg.build().expect("verified");
    cfg.build_insecure(InsecureTls::i_accept_the_risk())
        .expect("insecure");
    let bad = cfg.proxy("::not a url::");
    assert!(matches!(bad.build(), Err(luca_http::ClientError::Build(_))));
}
