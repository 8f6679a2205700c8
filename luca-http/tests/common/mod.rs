//! What the fetcher tests share: a plain-HTTP client for `HttpStub` on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;

/// A client whose resolver sends `hosts` to `addr` (rustls with `ring` and no roots: the
/// stub is plain HTTP), with the test's own settings applied by `configure`.
pub(crate) fn loopback_client(
    addr: SocketAddr,
    hosts: &[&str],
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut b = configure(reqwest::Client::builder().tls_backend_preconfigured(tls));
    for h in hosts {
        b = b.resolve(h, addr);
    }
    b.build().expect("client builds")
}
