//! The gRPC listeners' transport: TLS is accepted here rather than by tonic, so the
//! stream handed to HTTP/2 can decline vectored writes.
//!
//! Why: h2 sends a DATA frame whose payload is 256 bytes or more as a write of its
//! own when the stream takes vectored writes (it chains the payload rather than
//! copying it, and holds one chained frame at a time), so each such response costs
//! a TLS record and a syscall. Without vectored writes its threshold is 1 KiB and
//! smaller frames are copied into its write buffer, many responses to one record.
//! Badge's answers (tokens, reviews, objects) are mostly 300 B – 1 KiB. Measured on
//! the 2-core dev VM with `badge-bench`: an echo of 593 B went from ~40k to ~60k
//! req/s, the same as an echo of 64 B (see README, Performance).
//!
//! Everything else is as tonic's own TLS: rustls with aws-lc, ALPN `h2`, client
//! certificates verified against the CA (optional at the TLS level when the auth
//! layer accepts bearer tokens instead), `TCP_NODELAY`, a bounded handshake.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 128;
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Requests in flight on one connection and when the last one ended; the auth
/// layer keeps it, the connection reads it to close itself when idle.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since [`epoch`] at the last request's start or end.
    last_ms: AtomicU64,
}

/// A fixed point for [`Activity::last_ms`] (an `Instant` is not atomic).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl Activity {
    /// A request started; the connection is busy until the guard (kept with the
    /// response body) is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.last_ms.store(now_ms(), Ordering::Release);
        InFlight(self.clone())
    }

    /// When the connection may be closed as idle, or `None` while a request is in
    /// flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(epoch() + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + timeout)
    }
}

/// One request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Who is on the other end of a connection; every request carries it (an `Arc`
/// clone) in its extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate chain, leaf first; `None` without one.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The identity read from `certs`, filled by the auth layer on the
    /// connection's first request and shared by the rest. It belongs to this
    /// connection's verified chain and to nothing else.
    pub(crate) caller: Arc<OnceLock<Result<crate::auth::Caller, String>>>,
    /// This connection's requests in flight (for its idle timeout).
    pub activity: Arc<Activity>,
}

/// A stream that declines vectored writes (see the module docs).
pub struct NoVectored<S>(S);

/// One accepted TLS connection: its stream, its slot under the listener's
/// connection cap, and its idle timer.
pub struct TlsConn {
    io: NoVectored<TlsStream<TcpStream>>,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl TlsConn {
    /// `Err` when the connection has had no request in flight for the idle
    /// timeout. Polled with every read, so the timer's wake-up reaches the
    /// connection task while HTTP/2 waits for frames (keep-alive PINGs do not count
    /// as activity: a client holding a connection open without using it is what
    /// the timeout is for).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.idle.as_mut().poll(cx).is_ready() {
            let deadline = match self.activity.idle_deadline(self.idle_timeout) {
                Some(d) if d <= Instant::now() => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle: closed by the server",
                    ));
                }
                Some(d) => d,
                // Busy: look again a timeout from now.
                None => Instant::now() + self.idle_timeout,
            };
            self.idle.as_mut().reset(deadline.into());
        }
        Ok(())
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.poll_idle(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoVectored<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoVectored<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    // The point of this type: h2 then copies frames under 1 KiB into one buffer.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.io.0.get_ref();
        PeerInfo {
            remote_addr: tcp.peer_addr().ok(),
            certs: session
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())),
            caller: Arc::default(),
            activity: self.activity.clone(),
        }
    }
}

/// Accepts on `listener` and hands over connections whose TLS handshake finished.
/// Handshakes run concurrently (a slow client holds up no one) and are bounded in
/// time; failed ones are logged at debug level and dropped. At most
/// `limits.max_connections` are open (handshaking or handshaken): a connection
/// beyond that is closed as soon as it is accepted, so a flood of idle sockets
/// cannot exhaust the process's file descriptors or memory; each connection
/// closes itself after `limits.idle_timeout` without a request. The accept loop
/// stops when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: &crate::limits::Limits,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<TlsConn>(BACKLOG);
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let idle_timeout = limits.idle_timeout();
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Over the cap: close at once (dropping the socket). Logged once
                // per 1,000 so a flood does not flood the log too.
                if refused.is_multiple_of(1000) {
                    tracing::warn!(%peer, refused = refused + 1, "connection limit reached: closing new connections");
                }
                refused += 1;
                continue;
            };
            // Without it Nagle's algorithm adds tens of milliseconds to p99.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let conn = TlsConn {
                            io: NoVectored(stream),
                            activity: Arc::default(),
                            idle_timeout,
                            idle: Box::pin(tokio::time::sleep(idle_timeout)),
                            _slot: slot,
                        };
                        let _ = tx.send(conn).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), rx))
    })
}

/// A channel to `target` (`https://host:port`) over the same transport from the
/// client side: mTLS with `tls` (the server's certificate must name
/// `server_name`), ALPN `h2`, `TCP_NODELAY`, no vectored writes, connected within
/// `connect_timeout`.
pub async fn channel(
    target: &str,
    tls: &crate::tls::TlsMaterial,
    server_name: &str,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, ChannelError> {
    let uri: http::Uri = target
        .parse()
        .map_err(|e| ChannelError::Target(format!("{target}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(ChannelError::Target(format!(
            "{target}: must be https://host:port"
        )));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ChannelError::Target(format!("{target}: no host")))?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| ChannelError::Target(format!("server name {server_name:?}: {e}")))?;
    let connector = tls
        .client_connector()
        .map_err(|e| ChannelError::Tls(e.to_string()))?;
    // tonic only does TLS itself for https URIs; this connector already has, and
    // gets the endpoint's URI (host and port) from tonic.
    let connect = tower::service_fn(move |uri: http::Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            // `[::1]` in a URI, `::1` to connect.
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(NoVectored(stream)))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| ChannelError::Target(format!("{target}: {e}")))?
        .connect_timeout(connect_timeout)
        .connect_with_connector(connect)
        .await
        .map_err(ChannelError::Connect)
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("target {0}")]
    Target(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("connecting: {0}")]
    Connect(#[source] tonic::transport::Error),
}
