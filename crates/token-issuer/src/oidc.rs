//! OIDC discovery over HTTPS with no client certificate:
//! `/.well-known/openid-configuration` and `/openid/v1/jwks`, served from the key
//! ring's pre-rendered bytes.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use badge_core::oidc;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::keyring::KeyRing;

type Body = http_body_util_full::Full;

/// A tiny full-body type (hyper needs a `Body`; this avoids another dependency).
mod http_body_util_full {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::{Bytes, Frame};

    pub struct Full(Option<Bytes>);

    impl Full {
        pub fn new(b: impl Into<Bytes>) -> Self {
            Full(Some(b.into()))
        }
    }

    impl hyper::body::Body for Full {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }
}

/// TLS for the discovery listener: server certificate only (verifiers are
/// anonymous, as Kubernetes' public discovery endpoint).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("oidc.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("oidc.cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("oidc.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn respond(ring: &KeyRing, req: &Request<Incoming>, max_age: u64) -> Response<Body> {
    let snap = ring.snapshot();
    // Both paths are served with and without a trailing slash, as Kubernetes does.
    let path = req.uri().path().trim_end_matches('/');
    let (body, content_type) = match path {
        p if p == oidc::DISCOVERY_PATH => (snap.discovery.clone(), oidc::DISCOVERY_CONTENT_TYPE),
        p if p == oidc::JWKS_PATH => (snap.jwks.clone(), oidc::JWKS_CONTENT_TYPE),
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::new("404 page not found\n"))
                .unwrap_or_else(|_| Response::new(Body::new("")));
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::new(""))
            .unwrap_or_else(|_| Response::new(Body::new("")));
    }
    let bytes = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body.as_ref().clone())
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, oidc::cache_control(max_age))
        .body(Body::new(bytes))
        .unwrap_or_else(|_| Response::new(Body::new("")))
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ring: Arc<KeyRing>,
    max_age: u64,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "oidc accept");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let ring = ring.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "oidc tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = respond(&ring, &req, max_age);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}
