//! The two process-wide `reqwest` clients (certificate-verifying and not), and
//! [`ClientConfig`] to configure them or to build an owned client.
//!
//! TLS goes through rustls with the `ring` crypto provider and the bundled Mozilla roots of
//! `webpki-roots`; see the crate docs for why.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::OnceCell;

/// The default user agent: the crate's name and version.
pub const DEFAULT_USER_AGENT: &str = concat!("luca-http/", env!("CARGO_PKG_VERSION"));

/// Why a client could not be built or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `reqwest` refused the configuration (an invalid user agent or proxy URL, …).
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// rustls refused the TLS configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// [`configure`] was called after a shared client was built: the new settings would
    /// not reach it.
    #[error(
        "the shared HTTP clients are already built; call `luca_http::configure` before the first `client()`, or build an owned client with `ClientConfig::build`"
    )]
    AlreadyBuilt,
}

/// Settings of a client: timeouts, user agent, proxy.
///
/// Used two ways: [`configure`] sets what the shared [`client()`] and [`insecure_client`]
/// are built with (call it before their first use), and [`ClientConfig::build`] /
/// [`ClientConfig::build_insecure`] return an owned client for code that wants its own.
///
/// ```
/// use std::time::Duration;
/// let cfg = luca_http::ClientConfig::default()
///     .user_agent("my-crawler/1.0 (+https://example.org/bot)")
///     .connect_timeout(Duration::from_secs(5))
///     .timeout(Duration::from_secs(20));
/// let owned: reqwest::Client = cfg.build()?;
/// # drop(owned);
/// # Ok::<(), luca_http::ClientError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    user_agent: String,
    connect_timeout: Duration,
    timeout: Duration,
    proxy: Option<String>,
}

impl Default for ClientConfig {
    /// User agent [`DEFAULT_USER_AGENT`], connect timeout 10 s, whole-request timeout 30 s,
    /// no proxy.
    fn default() -> Self {
        ClientConfig {
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            proxy: None,
        }
    }
}

impl ClientConfig {
    /// The `User-Agent` header sent with every request.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// The limit on establishing a connection (TCP and TLS handshake).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The limit on a whole request, from sending it to the end of the response body.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Send every request through this proxy URL (`http://`, `https://`).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// An owned client that verifies certificates against the bundled Mozilla roots.
    pub fn build(&self) -> Result<reqwest::Client, ClientError> {
        self.build_with(verified_tls()?)
    }

    /// An owned client that accepts **any** server certificate. Logged with
    /// `tracing::warn!`.
    pub fn build_insecure(&self, _: InsecureTls) -> Result<reqwest::Client, ClientError> {
        tracing::warn!(
            "building an HTTP client that does not verify server certificates (InsecureTls)"
        );
        self.build_with(insecure_tls()?)
    }

    fn build_with(&self, tls: rustls::ClientConfig) -> Result<reqwest::Client, ClientError> {
        let mut b = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(self.user_agent.as_str())
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout);
        if let Some(p) = &self.proxy {
            b = b.proxy(reqwest::Proxy::all(p.as_str()).map_err(ClientError::Build)?);
        }
        b.build().map_err(ClientError::Build)
    }
}

/// The explicit opt-in to a client that does not verify certificates.
///
/// Its field is private: the only way to get one is [`InsecureTls::i_accept_the_risk`],
/// so the insecure client cannot be reached by accident.
#[derive(Debug)]
pub struct InsecureTls(());

impl InsecureTls {
    /// Accept that the client will talk to anyone who claims to be the host
    /// (man-in-the-middle included).
    pub fn i_accept_the_risk() -> Self {
        InsecureTls(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn with_alpn(mut cfg: rustls::ClientConfig) -> rustls::ClientConfig {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

fn verified_tls() -> Result<rustls::ClientConfig, ClientError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(with_alpn(cfg))
}

fn insecure_tls() -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let verifier = AcceptAnyCert(provider.signature_verification_algorithms);
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(with_alpn(cfg))
}

/// Accepts any certificate; still checks the handshake signatures against the presented
/// certificate (so the peer must hold the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

static CONFIG: Mutex<Option<ClientConfig>> = Mutex::new(None);
static VERIFIED: OnceCell<reqwest::Client> = OnceCell::const_new();
static INSECURE: OnceCell<reqwest::Client> = OnceCell::const_new();
static VERIFIED_BUILDS: AtomicUsize = AtomicUsize::new(0);
static INSECURE_BUILDS: AtomicUsize = AtomicUsize::new(0);

fn current_config() -> ClientConfig {
    CONFIG
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

/// Sets the configuration the shared clients are built with.
///
/// Call it before the first [`client()`] / [`insecure_client`]; once either is built this
/// returns [`ClientError::AlreadyBuilt`] and changes nothing. Calling it again before
/// then replaces the earlier configuration (so a configuration whose build failed can be
/// fixed: failed builds are not cached).
pub fn configure(cfg: ClientConfig) -> Result<(), ClientError> {
    let mut slot = CONFIG.lock().unwrap_or_else(PoisonError::into_inner);
    if VERIFIED.initialized() || INSECURE.initialized() {
        return Err(ClientError::AlreadyBuilt);
    }
    *slot = Some(cfg);
    Ok(())
}

/// The shared certificate-verifying client (a cheap clone of one `reqwest::Client`).
///
/// Built on first use, exactly once however many tasks ask at the same moment (the others
/// wait for that build); a failed build is not kept, so the next call tries again.
pub async fn client() -> Result<reqwest::Client, ClientError> {
    VERIFIED
        .get_or_try_init(|| async {
            VERIFIED_BUILDS.fetch_add(1, Ordering::Relaxed);
            current_config().build()
        })
        .await
        .cloned()
}

/// The shared client that accepts any certificate; reachable only with an
/// [`InsecureTls`] value. Built (and logged) once, like [`client()`].
pub async fn insecure_client(opt_in: InsecureTls) -> Result<reqwest::Client, ClientError> {
    INSECURE
        .get_or_try_init(|| async {
            INSECURE_BUILDS.fetch_add(1, Ordering::Relaxed);
            current_config().build_insecure(opt_in)
        })
        .await
        .cloned()
}

/// How many times each shared client's build ran so far: `(verified, insecure)`,
/// failed attempts included. For tests.
#[doc(hidden)]
pub fn __build_attempts() -> (usize, usize) {
    (
        VERIFIED_BUILDS.load(Ordering::Relaxed),
        INSECURE_BUILDS.load(Ordering::Relaxed),
    )
}
