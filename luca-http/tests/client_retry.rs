//! A failed build of a shared client is not cached: the next call tries again.

use luca_http::{ClientConfig, ClientError, InsecureTls};

#[tokio::test]
async fn a_failed_build_is_not_cached() {
    // A newline cannot be in a header value: reqwest refuses the user agent at build time.
    luca_http::configure(ClientConfig::default().user_agent("bad\nagent")).expect("configure");
    let e = luca_http::client().await.unwrap_err();
    assert!(matches!(e, ClientError::Build(_)), "{e}");
    assert_eq!(luca_http::client::__build_attempts(), (1, 0));
    let e = luca_http::insecure_client(InsecureTls::i_accept_the_risk())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Build(_)), "{e}");
    // Asked again: built again (and failed again), not a cached error.
    assert!(luca_http::client().await.is_err());
    assert_eq!(luca_http::client::__build_attempts(), (2, 1));

    // Fix the configuration: the next call builds.
    luca_http::configure(ClientConfig::default().user_agent("good-agent/1")).expect("configure");
    luca_http::client().await.expect("built after the fix");
    luca_http::insecure_client(InsecureTls::i_accept_the_risk())
        .await
        .expect("built after the fix");
    assert_eq!(luca_http::client::__build_attempts(), (3, 2));
    luca_http::client().await.expect("cached");
    assert_eq!(luca_http::client::__build_attempts(), (3, 2));
}
