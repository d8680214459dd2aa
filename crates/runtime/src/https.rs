//! Plain HTTPS listeners next to the gRPC ones (OIDC discovery, Kubernetes webhook
//! JSON): rustls (aws-lc) with an optional client-certificate requirement, hyper's
//! HTTP/1.1 + HTTP/2 server, and every resource a client can hold bounded.
//!
//! Security: these listeners are reachable before any authentication (discovery
//! is public; the webhook authenticates inside the request), so what a client
//! that never completes a request can hold must be small and short-lived — a
//! slow-loris client on one HTTPS port must not starve the gRPC listeners of the
//! same process of file descriptors, memory or tasks:
//!
//! | resource | bound (default) | setting |
//! |---|---|---|
//! | open connections | [`HttpsLimits::max_connections`] (1024); at the cap the connection idle the longest is closed to make room, and only if every one has a request in flight is the newcomer refused | `max_connections` |
//! | TLS handshake | 5 s | `handshake_timeout_seconds` |
//! | first request's headers after the handshake (and HTTP/1 headers of every request) | 10 s | `header_read_timeout_seconds` |
//! | keep-alive: no request in flight | 60 s | `idle_timeout_seconds` |
//! | one request, body included | 30 s → 408 | `request_timeout_seconds` |
//! | request headers | 16 KiB (HTTP/1: 431; HTTP/2: header list) | `max_header_bytes` |
//! | HTTP/2 streams per connection | 32 | `max_concurrent_streams` |
//! | HTTP/2 unread request data | 64 KiB per stream, 256 KiB per connection (flow-control windows) | — |
//! | request methods and body | per endpoint ([`Endpoint`]): discovery GET/HEAD without a body, the webhook POST up to 1 MiB; others → 405, larger → 413 | — |
//! | dead HTTP/2 peers | PING every 30 s, closed after 20 s without an answer | — |

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::{Body as _, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::auth::Caller;

/// The largest request body of the Kubernetes webhooks: a TokenReview carries one
/// token (at most `review.max_token_bytes`, itself capped at 512 KiB) and its
/// audiences; a SubjectAccessReview a user, groups, extra and attributes. kube-
/// apiserver sends a few KiB; 1 MiB leaves room for any legitimate one.
pub const WEBHOOK_MAX_BODY_BYTES: usize = 1 << 20;

/// HTTP/2 flow-control windows: how much request data a client can make the
/// server buffer before the handler reads it (per stream, per connection).
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// HTTP/2 keep-alive: a peer that stops answering PINGs is dropped.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/1 headers per request.
const H1_MAX_HEADERS: usize = 100;
/// hyper's smallest allowed HTTP/1 read buffer.
const H1_MIN_BUF: usize = 8192;

/// Connection limits of one HTTPS listener (`[webhook.limits]`; the discovery
/// listener uses the defaults). Every value must be at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsLimits {
    /// Open connections. At the cap the connection idle the longest (no request
    /// in flight: still handshaking, not yet sending, or kept alive) is closed to
    /// make room for the new one; only when every connection has a request in
    /// flight is the new one refused.
    pub max_connections: usize,
    /// The TLS handshake must finish within this.
    pub handshake_timeout_seconds: u64,
    /// After the handshake, the first request's headers must arrive within this;
    /// HTTP/1 headers of every request too.
    pub header_read_timeout_seconds: u64,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout_seconds: u64,
    /// A request (reading its body included) must be answered within this, else
    /// 408.
    pub request_timeout_seconds: u64,
    /// Bytes of request headers (HTTP/1 request line and headers; HTTP/2 header
    /// list).
    pub max_header_bytes: usize,
    /// HTTP/2 streams a connection may have open at once.
    pub max_concurrent_streams: u32,
}

impl Default for HttpsLimits {
    fn default() -> Self {
        HttpsLimits {
            max_connections: 1024,
            handshake_timeout_seconds: 5,
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            request_timeout_seconds: 30,
            max_header_bytes: 16 * 1024,
            max_concurrent_streams: 32,
        }
    }
}

impl HttpsLimits {
    /// Reports every value out of range as `<section>.limits.<key>`.
    pub fn validate(&self, section: &str, errors: &mut Vec<String>) {
        let checks: [(&str, u64, u64, u64); 7] = [
            ("max_connections", self.max_connections as u64, 1, 1_000_000),
            (
                "handshake_timeout_seconds",
                self.handshake_timeout_seconds,
                1,
                300,
            ),
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
                1,
                300,
            ),
            ("idle_timeout_seconds", self.idle_timeout_seconds, 1, 3600),
            (
                "request_timeout_seconds",
                self.request_timeout_seconds,
                1,
                3600,
            ),
            (
                "max_header_bytes",
                self.max_header_bytes as u64,
                1024,
                1 << 20,
            ),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
                1,
                10_000,
            ),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                errors.push(format!(
                    "{section}.limits.{key}: must be between {min} and {max}, got {value}"
                ));
            }
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
}

/// What one endpoint accepts, checked before its handler runs (so a refused
/// request costs nothing: its body is never read).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// Anything else → 405 with `Allow`.
    pub methods: &'static [Method],
    /// A declared body (`Content-Length`) over this → 413; with 0, any body
    /// (declared or streamed) → 413. Handlers that read a streamed body enforce
    /// the same limit while reading ([`read_body`]).
    pub max_body_bytes: usize,
    pub limits: HttpsLimits,
}

impl Endpoint {
    /// OIDC discovery: GET and HEAD, no request body.
    pub fn discovery(limits: HttpsLimits) -> Self {
        Endpoint {
            methods: &[Method::GET, Method::HEAD],
            max_body_bytes: 0,
            limits,
        }
    }

    /// Kubernetes webhooks: POST of a JSON review up to [`WEBHOOK_MAX_BODY_BYTES`].
    pub fn webhook(limits: HttpsLimits) -> Self {
        Endpoint {
            methods: &[Method::POST],
            max_body_bytes: WEBHOOK_MAX_BODY_BYTES,
            limits,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls: {0}")]
    Tls(String),
}

fn file_error<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> HttpsError + 'a {
    move |reason| HttpsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, HttpsError> {
    let err = file_error(what, path);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Who may complete the TLS handshake.
#[derive(Debug, Clone, Copy)]
pub enum ClientCerts<'a> {
    /// Anyone (public endpoints such as OIDC discovery).
    None,
    /// A certificate chaining to this CA is verified when presented; a client
    /// without one still connects and must authenticate inside the request (a
    /// bearer token) — the handler refuses it otherwise.
    Optional(&'a Path),
    /// Every client must present a certificate chaining to this CA.
    Required(&'a Path),
}

/// TLS for an HTTPS listener: `cert` and `key` (PEM) are the server's identity.
/// With `client_ca`, every client must present a certificate chaining to it;
/// without, clients are anonymous. ALPN offers h2 and http/1.1.
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, HttpsError> {
    tls_acceptor_with(
        cert,
        key,
        client_ca.map_or(ClientCerts::None, ClientCerts::Required),
    )
}

/// As [`tls_acceptor`], with the client-certificate policy spelled out.
pub fn tls_acceptor_with(
    cert: &Path,
    key: &Path,
    clients: ClientCerts<'_>,
) -> Result<TlsAcceptor, HttpsError> {
    let certs = certificates("cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| HttpsError::File {
        what: "key",
        path: key.to_path_buf(),
        // The error names the PEM problem, never key bytes.
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Tls(e.to_string()))?;
    let (ca, optional) = match clients {
        ClientCerts::None => (None, false),
        ClientCerts::Optional(ca) => (Some(ca), true),
        ClientCerts::Required(ca) => (Some(ca), false),
    };
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates("client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_error("client_ca", ca)(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            // A certificate that is presented is always verified against the CA;
            // "optional" only lets a client without one reach the handler, which
            // then requires a bearer token.
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| HttpsError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| HttpsError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A response body that is sent in one piece.
pub struct Full(Option<Bytes>);

impl Full {
    pub fn new(b: impl Into<Bytes>) -> Self {
        Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        Full(None)
    }
}

impl hyper::body::Body for Full {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the request body: {0}")]
    Read(String),
}

/// Reads a whole request body, refusing more than `limit` bytes (checked against
/// `Content-Length` first, then while reading, so a lying client cannot make it
/// allocate more).
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    if let Some(declared) = body.size_hint().exact()
        && declared > limit as u64
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out: Vec<u8> = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => return Err(BodyError::Read(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if out.len().saturating_add(data.len()) > limit {
                        return Err(BodyError::TooLarge { limit });
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Bytes::from(out))
}

/// Who is on the other end of an HTTPS connection; added to every request's
/// extensions by [`serve`].
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The identity of the verified client certificate (CN = user, each O = a
    /// group: [`crate::auth::caller_from_cert`], as the gRPC auth layer reads
    /// it), read once per connection; `None` without a certificate, `Err` when
    /// it names no user.
    pub certificate: Option<Result<Caller, String>>,
}

/// A JSON string literal (the Status bodies below carry only our own texts, but
/// they are escaped all the same).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Kubernetes `Status` response (`{"kind":"Status","apiVersion":"v1",...}`), as
/// kube-apiserver answers refused requests.
pub fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Full> {
    let body = format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{},"reason":{},"code":{}}}"#,
        json_string(message),
        json_string(reason),
        code.as_u16()
    );
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::empty()))
}

/// The endpoint's method and body rules (see [`Endpoint`]).
fn precheck(endpoint: &Endpoint, req: &Request<Incoming>) -> Option<Response<Full>> {
    if !endpoint.methods.contains(req.method()) {
        let allow: Vec<&str> = endpoint.methods.iter().map(Method::as_str).collect();
        let mut resp = status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "method {} is not allowed here: use {}",
                req.method(),
                allow.join(" or ")
            ),
        );
        if let Ok(v) = http::HeaderValue::from_str(&allow.join(", ")) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return Some(resp);
    }
    let hint = req.body().size_hint();
    let too_large = match hint.exact() {
        Some(declared) => declared > endpoint.max_body_bytes as u64,
        // A streamed body (chunked, or HTTP/2 without content-length): the handler
        // enforces the limit while reading, unless no body is allowed at all.
        None => endpoint.max_body_bytes == 0 && !req.body().is_end_stream(),
    };
    if too_large {
        let message = if endpoint.max_body_bytes == 0 {
            "this endpoint takes no request body".to_owned()
        } else {
            BodyError::TooLarge {
                limit: endpoint.max_body_bytes,
            }
            .to_string()
        };
        return Some(status_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &message,
        ));
    }
    None
}

/// One open connection, as the connection table sees it.
struct Conn {
    /// Requests of this connection in flight.
    in_flight: AtomicUsize,
    /// Whether a request has arrived yet (until then the header-read timeout is
    /// the idle limit).
    served: AtomicBool,
    /// When `in_flight` last dropped to 0 (or the connection was accepted).
    idle_since: Mutex<Instant>,
    /// Closes the connection (eviction at the cap).
    close: Notify,
}

impl Conn {
    fn new(now: Instant) -> Self {
        Conn {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: Mutex::new(now),
            close: Notify::new(),
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// A request in flight; its drop (the response body sent or abandoned) makes the
/// connection idle again when it was the last.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut since = self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// The listener's open connections, for the cap and its eviction.
#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Arc<Conn>>,
}

struct Conns {
    max: usize,
    table: Mutex<Table>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, closing the one idle the longest when the cap
    /// is reached. `None`: every connection is busy — refuse the new one.
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let mut t = self.lock();
        if t.open.len() >= self.max {
            // Security: a slow-loris client holds connections without ever
            // finishing a request. Closing the longest-idle one lets a legitimate
            // client in at once, so filling the cap does not lock it out; only
            // connections with a request in flight (bounded by the request
            // timeout) are never evicted.
            let victim = t
                .open
                .iter()
                .filter_map(|(id, c)| c.idle_since().map(|s| (s, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(c) = t.open.remove(&victim) {
                c.close.notify_one();
            }
        }
        let id = t.next;
        t.next += 1;
        let conn = Arc::new(Conn::new(Instant::now()));
        t.open.insert(id, conn.clone());
        Some((id, conn))
    }
}

/// Removes a connection from the table when its task ends.
struct Slot {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.lock().open.remove(&self.id);
    }
}

/// A response body that keeps its request counted as in flight until it is sent.
struct Tracked {
    inner: Full,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn builder(limits: &HttpsLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HttpsLimits::secs(limits.header_read_timeout_seconds))
        .max_headers(H1_MAX_HEADERS)
        // The read buffer bounds the request line and headers (431 past it).
        .max_buf_size(limits.max_header_bytes.max(H1_MIN_BUF));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    b
}

/// Serves HTTPS on `listener` until `shutdown`: each connection gets a TLS
/// handshake, then HTTP/1.1 or HTTP/2, and every request that passes the
/// endpoint's method and body rules is answered by `handler` (with a [`Peer`] in
/// its extensions), all within the endpoint's [`HttpsLimits`]. Connections in
/// progress are not waited for (their own timeouts end them).
pub async fn serve<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    endpoint: Endpoint,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full>> + Send + 'static,
{
    let limits = endpoint.limits;
    let conns = Arc::new(Conns {
        max: limits.max_connections.max(1),
        table: Mutex::new(Table::default()),
    });
    let builder = Arc::new(builder(&limits));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "https accept");
                    // e.g. EMFILE: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some((id, conn)) = conns.admit() else {
            tracing::debug!(%peer, max = conns.max, "https connection refused: every connection is busy");
            drop(tcp);
            continue;
        };
        let slot = Slot {
            conns: conns.clone(),
            id,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handler, builder) = (acceptor.clone(), handler.clone(), builder.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = tokio::time::timeout(
                HttpsLimits::secs(limits.handshake_timeout_seconds),
                acceptor.accept(tcp),
            );
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "https tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "https tls handshake timed out");
                        return;
                    }
                },
                () = conn.close.notified() => return,
            };
            // rustls has verified the chain; the identity is read once per
            // connection, with the gRPC auth layer's reader.
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| crate::auth::caller_from_cert(leaf.as_ref()));
            let info = Peer {
                addr: peer,
                certificate,
            };
            let request_timeout = HttpsLimits::secs(limits.request_timeout_seconds);
            let svc = {
                let conn = conn.clone();
                service_fn(move |mut req: Request<Incoming>| {
                    let in_flight = conn.begin();
                    let early = precheck(&endpoint, &req);
                    let fut = if early.is_none() {
                        req.extensions_mut().insert(info.clone());
                        Some(handler(req))
                    } else {
                        None
                    };
                    async move {
                        let resp = match (early, fut) {
                            (Some(resp), _) => resp,
                            (None, Some(fut)) => {
                                // A client trickling its body (or anything else
                                // that stalls) holds the request at most this long.
                                match tokio::time::timeout(request_timeout, fut).await {
                                    Ok(resp) => resp,
                                    Err(_) => status_response(
                                        StatusCode::REQUEST_TIMEOUT,
                                        "Timeout",
                                        &format!(
                                            "the request was not completed within {} s",
                                            request_timeout.as_secs()
                                        ),
                                    ),
                                }
                            }
                            (None, None) => Response::new(Full::empty()),
                        };
                        Ok::<_, Infallible>(resp.map(|inner| Tracked {
                            inner,
                            _in_flight: in_flight,
                        }))
                    }
                })
            };
            let connection = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(connection);
            let header_read = HttpsLimits::secs(limits.header_read_timeout_seconds);
            let idle = HttpsLimits::secs(limits.idle_timeout_seconds);
            // Until its first request a connection may idle only as long as headers
            // may take; afterwards, the keep-alive idle timeout. A request in
            // flight is bounded by the request timeout instead.
            let limit = |conn: &Conn| {
                if conn.served.load(Ordering::Acquire) {
                    idle
                } else {
                    header_read
                }
            };
            loop {
                let deadline = match conn.idle_since() {
                    Some(since) => since + limit(&conn),
                    None => Instant::now() + limit(&conn),
                };
                tokio::select! {
                    r = connection.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "https connection");
                        }
                        return;
                    }
                    () = conn.close.notified() => {
                        tracing::debug!(%peer, "https connection closed to make room (connection cap)");
                        return;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if conn.idle_since().is_some_and(|s| s + limit(&conn) <= Instant::now()) {
                            tracing::debug!(%peer, "https connection closed: idle");
                            return;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Server {
        addr: SocketAddr,
        ca: PathBuf,
        _dir: tempfile::TempDir,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    fn short() -> HttpsLimits {
        HttpsLimits {
            max_connections: 20,
            handshake_timeout_seconds: 1,
            header_read_timeout_seconds: 1,
            idle_timeout_seconds: 2,
            request_timeout_seconds: 1,
            ..HttpsLimits::default()
        }
    }

    async fn start(endpoint: Endpoint) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate(dir.path(), &[]).unwrap();
        let server = pki.server("token-review");
        let acceptor = tls_acceptor(&server.cert, &server.key, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = |req: Request<Incoming>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Response::new(Full::new("ok"))
        };
        tokio::spawn(serve(listener, acceptor, endpoint, handler, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            ca: pki.ca,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn tls(s: &Server) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&s.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    }

    /// Sends `head` (and nothing else) and returns the status code and body.
    async fn request(s: &Server, head: &str) -> (u16, String) {
        let mut c = tls(s).await;
        c.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = c.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (status, body.unwrap_or_default())
    }

    /// True when the server closed the connection (EOF or reset) within `within`.
    async fn closed_within(c: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, c.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn methods_and_bodies_are_checked_before_the_handler() {
        let s = start(Endpoint::discovery(short())).await;
        let (code, body) =
            request(&s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!((code, body.as_str()), (200, "ok"));
        let (code, body) = request(
            &s,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await;
        assert_eq!(code, 405);
        assert!(
            body.contains(r#""reason":"MethodNotAllowed","code":405"#),
            "{body}"
        );
        let (code, body) = request(
            &s,
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await;
        assert_eq!(code, 413);
        assert!(body.contains("takes no request body"), "{body}");
        let (code, _) = request(
            &s,
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(code, 413);

        let w = start(Endpoint::webhook(short())).await;
        // Declared too large: refused before a byte of it is read.
        let (code, body) = request(
            &w,
            &format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                WEBHOOK_MAX_BODY_BYTES + 1
            ),
        )
        .await;
        assert_eq!(code, 413);
        assert!(body.contains("exceeds 1048576 bytes"), "{body}");
        // Headers past the limit: 431.
        let (code, _) = request(
            &w,
            &format!(
                "POST / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(20 * 1024)
            ),
        )
        .await;
        assert_eq!(code, 431);
        // A handler that does not finish within the request timeout: 408.
        let (code, body) = request(
            &w,
            "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(code, 408, "{body}");
    }

    /// Finding 6: slow and idle clients are closed after their timeouts, and a
    /// full listener still lets a legitimate client in at once.
    #[tokio::test]
    async fn slow_clients_are_closed_and_cannot_lock_the_listener() {
        let s = start(Endpoint::discovery(short())).await;
        // 60 connections that never start TLS: 3× the cap.
        let mut raw = Vec::new();
        for _ in 0..60 {
            raw.push(TcpStream::connect(s.addr).await.unwrap());
        }
        // One that finished TLS but sends half a request line.
        let mut half = tls(&s).await;
        half.write_all(b"GET / HT").await.unwrap();
        half.flush().await.unwrap();
        // One kept alive after a request.
        let mut kept = tls(&s).await;
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

        // The listener is full of idle connections; a legitimate request is
        // answered at once (the longest-idle one makes room).
        let began = std::time::Instant::now();
        let (code, _) = request(&s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(code, 200);
        assert!(
            began.elapsed() < Duration::from_millis(900),
            "{:?}",
            began.elapsed()
        );

        // Handshake timeout (1 s) for the raw ones, header-read timeout (1 s) for
        // the half request, idle timeout (2 s) for the kept-alive one.
        for c in &mut raw {
            assert!(closed_within(c, Duration::from_millis(1500)).await);
        }
        assert!(closed_within(&mut half, Duration::from_millis(1500)).await);
        assert!(closed_within(&mut kept, Duration::from_millis(2500)).await);
    }

    #[test]
    fn limits_validate() {
        let mut errors = Vec::new();
        HttpsLimits::default().validate("webhook", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        HttpsLimits {
            max_connections: 0,
            max_header_bytes: 10,
            ..HttpsLimits::default()
        }
        .validate("webhook", &mut errors);
        assert_eq!(
            errors,
            [
                "webhook.limits.max_connections: must be between 1 and 1000000, got 0",
                "webhook.limits.max_header_bytes: must be between 1024 and 1048576, got 10",
            ]
        );
    }

    #[test]
    fn status_bodies_escape() {
        let r = status_response(StatusCode::FORBIDDEN, "Forbidden", "User \"a\\b\"\n");
        assert_eq!(r.status(), 403);
        assert_eq!(json_string("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
    }
}
