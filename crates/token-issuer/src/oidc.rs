//! OIDC discovery over HTTPS with no client certificate:
//! `/.well-known/openid-configuration` and `/openid/v1/jwks`, served from the key
//! ring's pre-rendered bytes.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use badge_core::oidc;
use badge_runtime::https::{self, Full as Body};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::keyring::KeyRing;

/// TLS for the discovery listener: server certificate only (verifiers are
/// anonymous, as Kubernetes' public discovery endpoint).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    https::tls_acceptor(cert, key, None).map_err(|e| anyhow::anyhow!("oidc.{e}"))
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
    let handler = move |req: Request<Incoming>| {
        let resp = respond(&ring, &req, max_age);
        async move { resp }
    };
    https::serve(listener, acceptor, handler, shutdown).await;
}
