//! `HttpStub`: a loopback HTTP/1.1 and HTTPS server with scripted replies.
//!
//! Built on hyper's HTTP/1 server connection, tokio-rustls (ring provider) and an rcgen
//! self-signed certificate. Every task it starts ends when the stub is dropped: the accept
//! loop owns the connection tasks in a `JoinSet`, and dropping the stub aborts it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::http::uri::Authority;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may sit without sending a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(5);

/// A loopback HTTP/1.1 (or HTTPS) server that answers scripted replies per path.
///
/// Start it inside a tokio runtime (with IO and time enabled) with [`HttpStub::start`],
/// [`HttpStub::start_https`] or [`HttpStub::builder`]; its accept loop runs on that
/// runtime. Script replies with [`HttpStub::on`]. It listens on `127.0.0.1` on a port the
/// system picks, and stops on drop: the listening port is closed before `drop` returns
/// (on Linux; elsewhere when the runtime next polls the aborted accept task) and every
/// connection task is aborted. [`HttpStub::shutdown`] does the same and waits until
/// every task has ended.
///
/// A path with no script gets `404` with a body naming the path. Hits are counted per
/// path (query string excluded), and the most requests in flight at once per host (the
/// `Host` header's host name, lowercase, port removed), so one stub can stand in for
/// many hosts.
pub struct HttpStub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cert: Option<StubCert>,
    /// Dropping it tells every task to stop.
    stop: Option<watch::Sender<()>>,
    accept: Option<JoinHandle<()>>,
    /// A second handle on the listening socket, shut down on drop so the port closes at once.
    closer: Option<socket2::Socket>,
}

struct StubCert {
    der: CertificateDer<'static>,
    pem: String,
}

/// Options for [`HttpStub`]; made by [`HttpStub::builder`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct HttpStubBuilder {
    https: bool,
    names: Vec<String>,
}

impl HttpStubBuilder {
    /// Serve HTTPS with a self-signed certificate made at start-up (valid for `localhost`,
    /// `127.0.0.1` and every name given to [`HttpStubBuilder::cert_name`]).
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Add a DNS name or IP address to the certificate, for a client that connects as
    /// `https://a.test:PORT` (with its resolver pointed at [`HttpStub::addr`]).
    pub fn cert_name(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    /// Bind `127.0.0.1:0` and spawn the accept loop on the current tokio runtime.
    ///
    /// # Errors
    /// No tokio runtime is running, the socket cannot be bound, or the certificate cannot
    /// be made (a name that is neither a DNS name nor an IP address).
    pub async fn start(self) -> io::Result<HttpStub> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            io::Error::other(format!(
                "HttpStub must be started inside a tokio runtime: {e}"
            ))
        })?;
        let (acceptor, cert) = if self.https {
            let (acceptor, cert) = tls_setup(self.names)?;
            (Some(acceptor), Some(cert))
        } else {
            (None, None)
        };
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let closer = socket2::Socket::from(std_listener.try_clone()?);
        let listener = TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(());
        let accept = runtime.spawn(accept_loop(
            listener,
            acceptor,
            Arc::clone(&shared),
            stop_rx,
        ));
        Ok(HttpStub {
            shared,
            addr,
            cert,
            stop: Some(stop),
            accept: Some(accept),
            closer: Some(closer),
        })
    }
}

impl HttpStub {
    /// Options: HTTPS, extra certificate names.
    pub fn builder() -> HttpStubBuilder {
        HttpStubBuilder::default()
    }

    /// Start a plain HTTP/1.1 stub on `127.0.0.1:0`.
    ///
    /// # Errors
    /// As [`HttpStubBuilder::start`].
    pub async fn start() -> io::Result<HttpStub> {
        Self::builder().start().await
    }

    /// Start an HTTPS stub with a fresh self-signed certificate for `localhost` and
    /// `127.0.0.1`; trust it in a client with [`HttpStub::cert_der`] or
    /// [`HttpStub::cert_pem`].
    ///
    /// # Errors
    /// As [`HttpStubBuilder::start`].
    pub async fn start_https() -> io::Result<HttpStub> {
        Self::builder().https().start().await
    }

    /// The address the stub listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// The stub's URL under another host name, `SCHEME://HOST:PORT`: for a client whose
    /// resolver maps `host` to [`HttpStub::addr`] (reqwest's `resolve`).
    pub fn url_for_host(&self, host: &str) -> String {
        format!("{}://{host}:{}", self.scheme(), self.addr.port())
    }

    /// Whether the stub serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.cert.is_some()
    }

    /// The HTTPS stub's self-signed certificate, DER-encoded (`None` for plain HTTP).
    /// Add it as the only root to a client to make it trust the stub.
    pub fn cert_der(&self) -> Option<&[u8]> {
        self.cert.as_ref().map(|c| c.der.as_ref())
    }

    /// The HTTPS stub's self-signed certificate as PEM (`None` for plain HTTP), e.g. for
    /// `reqwest::Certificate::from_pem`.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.pem.as_str())
    }

    /// Script the replies for `path` (the path only: a request's query string is ignored).
    pub fn on(&self, path: impl Into<String>) -> Route<'_> {
        Route {
            stub: self,
            path: path.into(),
        }
    }

    /// How many requests reached `path` (query string excluded), scripted or not.
    pub fn hits(&self, path: &str) -> u64 {
        lock(&self.shared.hits).get(path).copied().unwrap_or(0)
    }

    /// How many requests reached the stub in all.
    pub fn total_hits(&self) -> u64 {
        *self.shared.total.borrow()
    }

    /// The most requests for `host` that were in flight at the same moment: from the
    /// request's arrival until its response body was sent (or the connection ended).
    /// `host` may carry a port (`a.test:8080`); it is compared without it, ignoring case.
    pub fn max_concurrent(&self, host: &str) -> usize {
        let host = normalize_host(host);
        lock(&self.shared.hosts)
            .get(&host)
            .map_or(0, |count| count.max)
    }

    /// How many requests for `host` are in flight now.
    pub fn in_flight(&self, host: &str) -> usize {
        let host = normalize_host(host);
        lock(&self.shared.hosts)
            .get(&host)
            .map_or(0, |count| count.current)
    }

    /// Wait until `path` has at least `n` hits, at most `within`; returns whether it did.
    pub async fn wait_for_hits(&self, path: &str, n: u64, within: Duration) -> bool {
        let mut total = self.shared.total.subscribe();
        let reached = total.wait_for(|_| self.hits(path) >= n);
        matches!(tokio::time::timeout(within, reached).await, Ok(Ok(_)))
    }

    /// Stop the stub and wait until its accept loop and every connection task have ended.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(accept) = self.accept.take() {
            // A panic inside the accept loop is the only error; the stub is stopped anyway.
            let _ = accept.await;
        }
    }

    fn scheme(&self) -> &'static str {
        if self.is_https() { "https" } else { "http" }
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(closer) = self.closer.take() {
            // Linux stops a listening socket on `shutdown`: connects are refused from now
            // on. Elsewhere this may fail; the aborted task then closes the socket.
            let _ = closer.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

impl fmt::Debug for HttpStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStub")
            .field("url", &self.url())
            .field("total_hits", &self.total_hits())
            .finish_non_exhaustive()
    }
}

/// The script of one path; made by [`HttpStub::on`].
#[must_use = "a route does nothing until `respond` or `respond_seq` is called"]
pub struct Route<'a> {
    stub: &'a HttpStub,
    path: String,
}

impl Route<'_> {
    /// Answer every request for this path with `reply`. Replaces an earlier script.
    pub fn respond(self, reply: Reply) {
        self.respond_seq([reply]);
    }

    /// Answer successive requests with successive replies; once the list is used up the
    /// last one repeats. An empty list removes the script (requests get `404`).
    pub fn respond_seq(self, replies: impl IntoIterator<Item = Reply>) {
        let replies: Vec<Reply> = replies.into_iter().collect();
        let mut scripts = lock(&self.stub.shared.scripts);
        if replies.is_empty() {
            scripts.remove(&self.path);
        } else {
            scripts.insert(self.path, Script { replies, next: 0 });
        }
    }
}

impl fmt::Debug for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route").field("path", &self.path).finish()
    }
}

/// One scripted reply: a status with headers and a body, a connection reset, or a stall.
///
/// Built like wiremock's `ResponseTemplate`: `Reply::ok("hi")`,
/// `Reply::status(503).retry_after_secs(30)`, `Reply::reset()`,
/// `Reply::stall(Duration::from_secs(5))`. A status or header the HTTP types reject is
/// not a panic: the stub answers `500` with an `x-stub-error` header saying what was wrong.
#[derive(Debug, Clone)]
#[must_use = "a reply does nothing until passed to `respond`"]
pub struct Reply {
    kind: Kind,
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Bytes>,
    every: Duration,
    chunked: bool,
    delay: Option<Duration>,
    gate: Option<Gate>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Respond,
    Reset,
    Stall(Duration),
}

impl Reply {
    /// `200 OK` with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::status(200).body(body)
    }

    /// Any status with an empty body.
    pub fn status(code: u16) -> Reply {
        Reply {
            kind: Kind::Respond,
            status: code,
            headers: Vec::new(),
            chunks: Vec::new(),
            every: Duration::ZERO,
            chunked: false,
            delay: None,
            gate: None,
        }
    }

    /// `429 Too Many Requests`; add [`Reply::retry_after_secs`] or
    /// [`Reply::retry_after_date`] as needed.
    pub fn too_many_requests() -> Reply {
        Reply::status(429)
    }

    /// `503 Service Unavailable`.
    pub fn service_unavailable() -> Reply {
        Reply::status(503)
    }

    /// Close the TCP connection without a response, with a reset (`SO_LINGER` 0), so the
    /// client sees a connection error.
    pub fn reset() -> Reply {
        Reply {
            kind: Kind::Reset,
            ..Reply::status(200)
        }
    }

    /// Send nothing for `duration` (a hung server), then close the connection without a
    /// response. The stall also ends when the stub stops. Make it longer than the client's
    /// timeout to test the timeout.
    pub fn stall(duration: Duration) -> Reply {
        Reply {
            kind: Kind::Stall(duration),
            ..Reply::status(200)
        }
    }

    /// Add a header (repeat the call for more, or for a repeated header).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body, sent at once with a `Content-Length`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        let body = body.into();
        self.chunks = if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        };
        self.every = Duration::ZERO;
        self.chunked = false;
        self
    }

    /// A slow body: sent chunked, the first chunk at once with the head and each later
    /// one `every` after the previous.
    pub fn slow_body<I>(mut self, chunks: I, every: Duration) -> Reply
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.chunks = chunks
            .into_iter()
            .map(Into::into)
            .filter(|c: &Bytes| !c.is_empty())
            .collect();
        self.every = every;
        self.chunked = true;
        self
    }

    /// `Retry-After: SECS` (the delay-seconds form).
    pub fn retry_after_secs(self, secs: u64) -> Reply {
        self.header(RETRY_AFTER.as_str(), secs.to_string())
    }

    /// `Retry-After: <HTTP-date>` (the IMF-fixdate form, e.g.
    /// `Sun, 06 Nov 1994 08:49:37 GMT`), second precision.
    pub fn retry_after_date(self, at: SystemTime) -> Reply {
        self.header(RETRY_AFTER.as_str(), httpdate::fmt_http_date(at))
    }

    /// `Retry-After` with any value, e.g. a malformed one.
    pub fn retry_after_raw(self, value: impl Into<String>) -> Reply {
        self.header(RETRY_AFTER.as_str(), value)
    }

    /// Wait `delay` before answering (after the gate, if any).
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// Hold the request until `gate` opens, then answer. The wait ends when the stub stops.
    pub fn after(mut self, gate: Gate) -> Reply {
        self.gate = Some(gate);
        self
    }
}

/// A gate that holds requests (see [`Reply::after`]) until it opens: when the test calls
/// [`Gate::open`], or by itself once a set number of requests wait at it
/// ([`Gate::after_arrivals`]). Cloning gives another handle on the same gate; once open
/// it stays open.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    open: watch::Sender<bool>,
    arrived: AtomicUsize,
    opens_at: Option<usize>,
}

impl Gate {
    /// A closed gate that opens on [`Gate::open`].
    pub fn new() -> Gate {
        Gate::with_threshold(None)
    }

    /// A gate that opens by itself when the `n`-th request arrives at it (or on
    /// [`Gate::open`]): `n` requests are then in flight together.
    pub fn after_arrivals(n: usize) -> Gate {
        Gate::with_threshold(Some(n))
    }

    fn with_threshold(opens_at: Option<usize>) -> Gate {
        let gate = Gate {
            inner: Arc::new(GateInner {
                open: watch::Sender::new(false),
                arrived: AtomicUsize::new(0),
                opens_at,
            }),
        };
        if opens_at == Some(0) {
            gate.open();
        }
        gate
    }

    /// Open the gate: every held request goes on, and later ones pass at once.
    pub fn open(&self) {
        self.inner.open.send_replace(true);
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        *self.inner.open.borrow()
    }

    /// How many requests have arrived at the gate so far.
    pub fn arrived(&self) -> usize {
        self.inner.arrived.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        let mut open = self.inner.open.subscribe();
        let n = self.inner.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        if self.inner.opens_at.is_some_and(|at| n >= at) {
            self.open();
        }
        // The sender lives in `self`, so this ends only when the gate opens.
        let _ = open.wait_for(|is_open| *is_open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<HashMap<String, Script>>,
    hits: Mutex<HashMap<String, u64>>,
    hosts: Mutex<HashMap<String, HostCount>>,
    /// Total hits; a watch so that `wait_for_hits` waits on an event.
    total: watch::Sender<u64>,
}

struct Script {
    replies: Vec<Reply>,
    next: usize,
}

#[derive(Default)]
struct HostCount {
    current: usize,
    max: usize,
}

impl Shared {
    fn arrive(self: &Arc<Self>, path: &str, host: String) -> InFlight {
        *lock(&self.hits).entry(path.to_owned()).or_insert(0) += 1;
        {
            let mut hosts = lock(&self.hosts);
            let count = hosts.entry(host.clone()).or_default();
            count.current += 1;
            count.max = count.max.max(count.current);
        }
        self.total.send_modify(|n| *n += 1);
        InFlight {
            shared: Arc::clone(self),
            host,
        }
    }

    fn next_reply(&self, path: &str) -> Option<Reply> {
        let mut scripts = lock(&self.scripts);
        let script = scripts.get_mut(path)?;
        let index = script.next.min(script.replies.len().saturating_sub(1));
        script.next = script.next.saturating_add(1);
        script.replies.get(index).cloned()
    }
}

/// One request in flight for a host; dropped with the response body (or the request).
struct InFlight {
    shared: Arc<Shared>,
    host: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = lock(&self.shared.hosts).get_mut(&self.host) {
            count.current = count.current.saturating_sub(1);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    match raw.parse::<Authority>() {
        Ok(authority) => authority.host().to_ascii_lowercase(),
        Err(_) => raw.to_ascii_lowercase(),
    }
}

fn host_of(req: &Request<Incoming>) -> String {
    if let Some(host) = req.headers().get(HOST).and_then(|v| v.to_str().ok()) {
        return normalize_host(host);
    }
    req.uri()
        .authority()
        .map_or_else(String::new, |a| a.host().to_ascii_lowercase())
}

fn tls_setup(extra_names: Vec<String>) -> io::Result<(TlsAcceptor, StubCert)> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(extra_names);
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    let der = cert.der().clone();
    let pem = cert.pem();
    let key = PrivatePkcs8KeyDer::from(signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key.into())
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), StubCert { der, pem }))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    // Ends when the stub stops (its sender is dropped) or the listener is shut down.
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(
                        stream,
                        tls.clone(),
                        Arc::clone(&shared),
                        stop.clone(),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => break,
                Err(e) if is_per_connection(&e) => {}
                Err(_) => {
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    match tls {
        None => {
            let mut stream = stream;
            serve_http(&mut stream, &shared, &reset, stop).await;
            if reset.load(Ordering::SeqCst) {
                let _ = stream.set_zero_linger();
            }
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let mut stream = tokio::select! {
                _ = stop.changed() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                },
            };
            serve_http(&mut stream, &shared, &reset, stop).await;
            if reset.load(Ordering::SeqCst) {
                let _ = stream.get_ref().0.set_zero_linger();
            }
        }
    }
    // Dropping the stream closes the connection (with a reset if `SO_LINGER` is 0).
}

async fn serve_http<IO>(
    io: &mut IO,
    shared: &Arc<Shared>,
    reset: &Arc<AtomicBool>,
    mut stop: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Arc::clone(shared);
    let reset = Arc::clone(reset);
    let service = service_fn(move |req| answer(Arc::clone(&shared), Arc::clone(&reset), req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = connection => {}
        _ = stop.changed() => {}
    }
}

/// Why the stub ended a connection without a response.
#[derive(Debug)]
enum NoResponse {
    Reset,
    StallOver,
}

impl fmt::Display for NoResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoResponse::Reset => f.write_str("scripted connection reset"),
            NoResponse::StallOver => f.write_str("scripted stall ended"),
        }
    }
}

impl std::error::Error for NoResponse {}

async fn answer(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<StubBody>, NoResponse> {
    let path = req.uri().path().to_owned();
    let in_flight = shared.arrive(&path, host_of(&req));
    let reply = shared.next_reply(&path).unwrap_or_else(|| {
        Reply::status(404)
            .header("content-type", "text/plain")
            .body(format!("no reply scripted for {path}"))
    });
    if let Some(gate) = &reply.gate {
        gate.pass().await;
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    match reply.kind {
        Kind::Reset => {
            reset.store(true, Ordering::SeqCst);
            Err(NoResponse::Reset)
        }
        Kind::Stall(duration) => {
            tokio::time::sleep(duration).await;
            Err(NoResponse::StallOver)
        }
        Kind::Respond => Ok(build_response(reply, in_flight)),
    }
}

fn build_response(reply: Reply, in_flight: InFlight) -> Response<StubBody> {
    let mut response = Response::new(StubBody::empty(None));
    match apply_head(&reply, &mut response) {
        Ok(()) => {
            *response.body_mut() =
                StubBody::new(reply.chunks, reply.every, reply.chunked, Some(in_flight));
        }
        Err(problem) => {
            let mut bad = Response::new(StubBody::new(
                vec![Bytes::from(problem.clone())],
                Duration::ZERO,
                false,
                Some(in_flight),
            ));
            *bad.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            if let Ok(value) = HeaderValue::from_str(&problem) {
                bad.headers_mut().insert("x-stub-error", value);
            }
            return bad;
        }
    }
    response
}

fn apply_head(reply: &Reply, response: &mut Response<StubBody>) -> Result<(), String> {
    *response.status_mut() = StatusCode::from_u16(reply.status)
        .map_err(|_| format!("invalid scripted status {}", reply.status))?;
    for (name, value) in &reply.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid scripted header name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid scripted value for header {name}: {value:?}"))?;
        response.headers_mut().append(name, value);
    }
    Ok(())
}

/// A response body: either whole (with a `Content-Length`) or chunks spaced in time.
struct StubBody {
    chunks: VecDeque<Bytes>,
    every: Duration,
    exact: Option<u64>,
    sent_first: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    _in_flight: Option<InFlight>,
}

impl StubBody {
    fn empty(in_flight: Option<InFlight>) -> StubBody {
        StubBody::new(Vec::new(), Duration::ZERO, false, in_flight)
    }

    fn new(
        chunks: Vec<Bytes>,
        every: Duration,
        chunked: bool,
        in_flight: Option<InFlight>,
    ) -> StubBody {
        let exact = (!chunked).then(|| chunks.iter().map(|c| c.len() as u64).sum());
        StubBody {
            chunks: chunks.into(),
            every,
            exact,
            sent_first: false,
            sleep: None,
            _in_flight: in_flight,
        }
    }
}

impl Body for StubBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.chunks.is_empty() {
            return Poll::Ready(None);
        }
        if this.sent_first && !this.every.is_zero() {
            let every = this.every;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        this.sent_first = true;
        Poll::Ready(this.chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
