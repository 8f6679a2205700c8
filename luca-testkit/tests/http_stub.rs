//! `HttpStub` over real loopback sockets, with a minimal client built on hyper's client
//! connection API (and tokio-rustls for HTTPS).

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONTENT_LENGTH, HOST, HeaderMap, RETRY_AFTER, TRANSFER_ENCODING};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use luca_testkit::{Gate, HttpStub, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

type BoxError = Box<dyn Error + Send + Sync>;

/// Bound for every exchange in these tests; none comes near it unless something hangs.
const BOUND: Duration = Duration::from_secs(10);

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// One GET for `path` with `Host: host` over `io`; the whole body is read.
async fn get_over<IO>(io: IO, host: &str, path: &str) -> Result<Got, BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, host)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await;
    let result = async {
        let (parts, body) = response?.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Got {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

/// One GET on a fresh plain connection.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Got, BoxError> {
    get_over(TcpStream::connect(addr).await?, host, path).await
}

/// One GET on a fresh TLS connection to `localhost` that trusts only `root`.
async fn get_tls(addr: SocketAddr, root: &[u8], path: &str) -> Result<Got, BoxError> {
    get_tls_as(addr, "localhost", root, path).await
}

/// One GET on a fresh TLS connection that expects a certificate for `name` and trusts
/// only `root`.
async fn get_tls_as(
    addr: SocketAddr,
    name: &str,
    root: &[u8],
    path: &str,
) -> Result<Got, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from(name.to_owned())?, tcp)
        .await?;
    get_over(tls, name, path).await
}

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

#[tokio::test]
async fn each_scripted_reply_arrives_as_scripted() {
    let stub = HttpStub::start().await.unwrap();
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    stub.on("/ok").respond(Reply::ok("hello"));
    stub.on("/429")
        .respond(Reply::too_many_requests().retry_after_secs(120));
    stub.on("/503")
        .respond(Reply::service_unavailable().retry_after_date(date));
    stub.on("/raw")
        .respond(Reply::status(503).retry_after_raw("soon, maybe"));
    stub.on("/teapot").respond(
        Reply::status(418)
            .header("x-one", "1")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body("short and stout"),
    );
    let addr = stub.addr();

    let ok = bounded("GET /ok", get(addr, "127.0.0.1", "/ok"))
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "hello");
    assert_eq!(ok.headers[CONTENT_LENGTH], "5");

    let busy = bounded("GET /429", get(addr, "127.0.0.1", "/429"))
        .await
        .unwrap();
    assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.headers[RETRY_AFTER], "120");
    assert!(busy.body.is_empty());

    let down = bounded("GET /503", get(addr, "127.0.0.1", "/503"))
        .await
        .unwrap();
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers[RETRY_AFTER], "Fri, 15 Jan 2027 08:00:00 GMT");

    let raw = bounded("GET /raw", get(addr, "127.0.0.1", "/raw"))
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(raw.headers[RETRY_AFTER], "soon, maybe");

    let teapot = bounded("GET /teapot", get(addr, "127.0.0.1", "/teapot"))
        .await
        .unwrap();
    assert_eq!(teapot.status.as_u16(), 418);
    assert_eq!(teapot.headers["x-one"], "1");
    let cookies: Vec<_> = teapot.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(teapot.body, "short and stout");

    let unscripted = bounded("GET /nothing", get(addr, "127.0.0.1", "/nothing"))
        .await
        .unwrap();
    assert_eq!(unscripted.status, StatusCode::NOT_FOUND);
    assert_eq!(unscripted.body, "no reply scripted for /nothing");
}

#[tokio::test]
async fn a_bad_script_is_a_500_naming_the_problem_not_a_panic() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/status").respond(Reply::status(42));
    stub.on("/header")
        .respond(Reply::ok("x").header("bad header", "v"));
    let addr = stub.addr();

    let status = bounded("GET /status", get(addr, "h", "/status"))
        .await
        .unwrap();
    assert_eq!(status.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(status.headers["x-stub-error"], "invalid scripted status 42");

    let header = bounded("GET /header", get(addr, "h", "/header"))
        .await
        .unwrap();
    assert_eq!(header.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        String::from_utf8_lossy(&header.body).contains("\"bad header\""),
        "{:?}",
        header.body
    );
}

#[tokio::test]
async fn a_sequence_gives_successive_replies_then_repeats_the_last() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/flaky").respond_seq([
        Reply::service_unavailable().retry_after_secs(1),
        Reply::too_many_requests(),
        Reply::ok("finally"),
    ]);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let got = bounded("GET /flaky", get(stub.addr(), "h", "/flaky"))
            .await
            .unwrap();
        statuses.push(got.status.as_u16());
    }
    assert_eq!(statuses, [503, 429, 200, 200, 200]);

    // Scripting the path again starts the new sequence from its beginning.
    stub.on("/flaky")
        .respond_seq([Reply::status(500), Reply::ok("")]);
    let again = bounded("GET /flaky", get(stub.addr(), "h", "/flaky"))
        .await
        .unwrap();
    assert_eq!(again.status.as_u16(), 500);
}

#[tokio::test]
async fn hits_are_counted_per_path_without_the_query() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/a").respond(Reply::ok("a"));
    for path in ["/a", "/a?page=2", "/a", "/b", "/b?x"] {
        bounded("GET", get(stub.addr(), "h", path)).await.unwrap();
    }
    assert_eq!(stub.hits("/a"), 3);
    assert_eq!(stub.hits("/b"), 2, "unscripted paths count too");
    assert_eq!(stub.hits("/c"), 0);
    assert_eq!(stub.total_hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_counts_requests_held_together_per_host() {
    const N: usize = 6;
    let stub = HttpStub::start().await.unwrap();
    let gate = Gate::after_arrivals(N);
    stub.on("/held")
        .respond(Reply::ok("released").after(gate.clone()));
    stub.on("/free").respond(Reply::ok("free"));
    let addr = stub.addr();

    // N requests for a.test on N connections: the gate holds each until all N are in.
    let mut tasks = Vec::new();
    for i in 0..N {
        // Half of them name the port in the Host header, as clients do.
        let host = if i % 2 == 0 {
            "a.test".to_owned()
        } else {
            format!("A.test:{}", addr.port())
        };
        tasks.push(tokio::spawn(async move { get(addr, &host, "/held").await }));
    }
    for task in tasks {
        let got = bounded("held GET", task).await.unwrap().unwrap();
        assert_eq!(got.body, "released");
    }
    assert_eq!(gate.arrived(), N);
    assert_eq!(stub.max_concurrent("a.test"), N);
    assert_eq!(stub.max_concurrent(&format!("a.test:{}", addr.port())), N);
    assert_eq!(stub.in_flight("a.test"), 0, "every request has finished");

    // Requests for b.test one after another never overlap.
    for _ in 0..3 {
        bounded("GET b.test", get(addr, "b.test", "/free"))
            .await
            .unwrap();
    }
    assert_eq!(stub.max_concurrent("b.test"), 1);
    assert_eq!(stub.max_concurrent("c.test"), 0);
}

#[tokio::test]
async fn a_gate_holds_replies_until_the_test_opens_it() {
    let stub = HttpStub::start().await.unwrap();
    let gate = Gate::new();
    stub.on("/wait")
        .respond(Reply::ok("go").after(gate.clone()));
    let addr = stub.addr();
    let waiting = tokio::spawn(async move { get(addr, "h", "/wait").await });
    assert!(stub.wait_for_hits("/wait", 1, BOUND).await);
    assert_eq!(stub.in_flight("h"), 1);
    assert!(!waiting.is_finished());
    gate.open();
    let got = bounded("gated GET", waiting).await.unwrap().unwrap();
    assert_eq!(got.body, "go");
    assert!(gate.is_open());
}

#[tokio::test]
async fn a_reset_is_a_connection_error_and_the_stub_keeps_serving() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/reset")
        .respond_seq([Reply::reset(), Reply::ok("back")]);
    let err = bounded("GET /reset", get(stub.addr(), "h", "/reset"))
        .await
        .err()
        .expect("a reset must fail the request");
    let hyper_err = err
        .downcast_ref::<hyper::Error>()
        .unwrap_or_else(|| panic!("not a hyper error: {err}"));
    // A reset, not an orderly close: the read fails with ECONNRESET.
    let io_kind = hyper_err
        .source()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(
        io_kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "{hyper_err:?}"
    );
    let next = bounded("GET /reset", get(stub.addr(), "h", "/reset"))
        .await
        .unwrap();
    assert_eq!(next.body, "back");
    assert_eq!(stub.hits("/reset"), 2);
}

#[tokio::test]
async fn a_stall_outlasts_the_client_timeout() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/stall")
        .respond(Reply::stall(Duration::from_secs(60)));
    let client_timeout = Duration::from_millis(300);
    let outcome = tokio::time::timeout(client_timeout, get(stub.addr(), "h", "/stall")).await;
    assert!(outcome.is_err(), "the client's timeout must fire first");
    assert_eq!(stub.hits("/stall"), 1);
}

#[tokio::test]
async fn a_stall_ends_by_itself_without_a_response() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/stall")
        .respond(Reply::stall(Duration::from_millis(100)));
    let outcome = bounded("GET /stall", get(stub.addr(), "h", "/stall")).await;
    let err = outcome.err().expect("a stall ends without a response");
    let hyper_err = err.downcast_ref::<hyper::Error>().unwrap();
    assert!(hyper_err.is_incomplete_message(), "{hyper_err:?}");
}

#[tokio::test]
async fn a_stall_ends_when_the_stub_drops() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/stall")
        .respond(Reply::stall(Duration::from_secs(600)));
    let addr = stub.addr();
    let client = tokio::spawn(async move { get(addr, "h", "/stall").await });
    assert!(stub.wait_for_hits("/stall", 1, BOUND).await);
    drop(stub);
    let outcome = bounded("stalled GET after drop", client).await.unwrap();
    assert!(outcome.is_err(), "the connection must close with the stub");
}

#[tokio::test]
async fn a_slow_body_arrives_chunked() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/slow")
        .respond(Reply::ok("").slow_body(["one ", "two ", "three"], Duration::from_millis(20)));
    let got = bounded("GET /slow", get(stub.addr(), "h", "/slow"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "one two three");
    assert_eq!(got.headers[TRANSFER_ENCODING], "chunked");
    assert!(got.headers.get(CONTENT_LENGTH).is_none());
}

#[tokio::test]
async fn a_slow_body_outlasts_a_body_timeout() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/slow")
        .respond(Reply::ok("").slow_body(["a", "b", "c"], Duration::from_secs(30)));
    let stream = TcpStream::connect(stub.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let request = Request::get("/slow")
        .header(HOST, "h")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = bounded("head of /slow", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the head comes at once");
    let mut body = response.into_body();
    let first = bounded("first chunk", body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "a");
    let rest = tokio::time::timeout(Duration::from_millis(300), body.collect()).await;
    assert!(
        rest.is_err(),
        "the body timeout must fire before the next chunk"
    );
    driver.abort();
}

#[tokio::test]
async fn https_serves_with_its_self_signed_certificate() {
    let stub = HttpStub::start_https().await.unwrap();
    stub.on("/tls").respond(Reply::ok("secret"));
    assert!(stub.is_https());
    assert!(stub.url().starts_with("https://127.0.0.1:"));
    let pem = stub.cert_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let der = stub.cert_der().unwrap();

    let got = bounded("GET /tls", get_tls(stub.addr(), der, "/tls"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "secret");
    assert_eq!(stub.hits("/tls"), 1);
    assert_eq!(stub.max_concurrent("localhost"), 1);

    // A client that trusts another stub's certificate refuses this one.
    let other = HttpStub::start_https().await.unwrap();
    let refused = bounded(
        "GET /tls, wrong root",
        get_tls(stub.addr(), other.cert_der().unwrap(), "/tls"),
    )
    .await;
    let err = refused.err().expect("an untrusted certificate must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(stub.hits("/tls"), 1);
}

#[tokio::test]
async fn https_scripted_failures_work_as_over_http() {
    let stub = HttpStub::builder()
        .https()
        .cert_name("a.test")
        .start()
        .await
        .unwrap();
    stub.on("/busy").respond_seq([
        Reply::too_many_requests().retry_after_secs(3),
        Reply::reset(),
    ]);
    let der = stub.cert_der().unwrap().to_vec();
    let busy = bounded("GET /busy", get_tls(stub.addr(), &der, "/busy"))
        .await
        .unwrap();
    assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.headers[RETRY_AFTER], "3");
    let as_a = bounded(
        "GET /busy as a.test",
        get_tls_as(stub.addr(), "a.test", &der, "/busy"),
    )
    .await;
    assert!(as_a.is_err(), "the second reply (a reset) repeats");
    let not_in_cert = bounded(
        "GET /busy as b.test",
        get_tls_as(stub.addr(), "b.test", &der, "/busy"),
    )
    .await;
    let err = not_in_cert.err().expect("b.test is not in the certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(
        stub.hits("/busy"),
        2,
        "a refused handshake sends no request"
    );
    let reset = bounded("GET /busy", get_tls(stub.addr(), &der, "/busy")).await;
    assert!(reset.is_err(), "a reset over TLS is a connection error");
    assert_eq!(
        stub.url_for_host("a.test"),
        format!("https://a.test:{}", stub.addr().port())
    );
}

#[tokio::test]
async fn plain_stub_has_no_certificate() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<HttpStub>();
    shareable::<Reply>();
    shareable::<Gate>();
    let stub = HttpStub::start().await.unwrap();
    assert!(!stub.is_https());
    assert!(stub.cert_der().is_none() && stub.cert_pem().is_none());
    assert_eq!(stub.url(), format!("http://{}", stub.addr()));
}

#[tokio::test]
async fn drop_closes_the_port_and_open_connections() {
    let stub = HttpStub::start().await.unwrap();
    stub.on("/").respond(Reply::ok("up"));
    let addr = stub.addr();
    bounded("GET /", get(addr, "h", "/")).await.unwrap();
    // An idle connection, open before the drop.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(stub.wait_for_hits("/", 1, BOUND).await);

    drop(stub);
    // A blocking connect, so the runtime gets no chance to run the aborted accept task
    // first: the port must already be closed when `drop` returns.
    let refused = std::net::TcpStream::connect(addr);
    assert!(
        refused.is_err(),
        "the port must be closed once drop returns: {refused:?}"
    );
    let mut buf = [0u8; 16];
    let read = bounded("read on the idle connection", idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the idle connection must be closed: {read:?}"
    );
}

#[tokio::test]
async fn shutdown_waits_for_every_task() {
    let stub = HttpStub::start().await.unwrap();
    let never = Gate::new();
    // The script's body is owned by `owner`: it is freed only when the stub's state is,
    // i.e. when the stub and every one of its tasks are gone.
    let owner = Arc::new(b"never".to_vec());
    let state_alive = Arc::downgrade(&owner);
    stub.on("/held")
        .respond(Reply::ok(Bytes::from_owner(Owned(owner))).after(never.clone()));
    let addr = stub.addr();
    let held = tokio::spawn(async move { get(addr, "h", "/held").await });
    assert!(stub.wait_for_hits("/held", 1, BOUND).await);
    bounded("shutdown", stub.shutdown()).await;
    assert!(
        state_alive.upgrade().is_none(),
        "a task still holds the stub's state after shutdown returned"
    );
    assert!(TcpStream::connect(addr).await.is_err());
    let outcome = bounded("held GET after shutdown", held).await.unwrap();
    assert!(outcome.is_err(), "the held request ends with the stub");
    assert!(!never.is_open());
}

struct Owned(Arc<Vec<u8>>);

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    let err = futures_executor::block_on(HttpStub::start()).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[test]
fn the_stub_runs_on_a_current_thread_runtime_it_did_not_create() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stub = HttpStub::start().await.unwrap();
        stub.on("/").respond(Reply::ok("ct"));
        let got = bounded("GET /", get(stub.addr(), "h", "/")).await.unwrap();
        assert_eq!(got.body, "ct");
    });
}
