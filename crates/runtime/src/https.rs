//! Plain HTTPS listeners next to the gRPC ones (OIDC discovery, Kubernetes webhook
//! JSON): rustls (aws-lc) with an optional client-certificate requirement, hyper's
//! HTTP/1.1 + HTTP/2 server, a bounded handshake, graceful stop, and a body reader
//! with a size cap.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body as _, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// TLS for an HTTPS listener: `cert` and `key` (PEM) are the server's identity.
/// With `client_ca`, every client must present a certificate chaining to it (as
/// kube-apiserver does towards a webhook with `client-certificate` in its
/// kubeconfig); without, clients are anonymous. ALPN offers h2 and http/1.1.
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
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
    let builder = match client_ca {
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
            )
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

/// Serves HTTPS on `listener` until `shutdown`: each connection gets a TLS
/// handshake (bounded by a timeout), then HTTP/1.1 or HTTP/2, and every request is
/// answered by `handler`. Connections in progress are not waited for.
pub async fn serve<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full>> + Send + 'static,
{
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "https tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "https tls handshake timed out");
                    return;
                }
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "https connection");
            }
        });
    }
}
