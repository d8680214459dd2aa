//! OIDC discovery over HTTPS with no client certificate:
//! `/.well-known/openid-configuration` and `/openid/v1/jwks`, served from the key
//! ring's pre-rendered bytes; and, beside them, the workload CA's trust bundle
//! (`/.well-known/spiffe-bundle` as a SPIFFE bundle, `/.well-known/spiffe-bundle.pem`
//! as PEM roots) — public data, like the JWKS.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use badge_core::oidc;
use badge_runtime::https::{self, Full as Body};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::ca_keyring::CaRing;
use crate::keyring::KeyRing;

/// The SPIFFE bundle (JWKS with x509-svid roots and jwt-svid keys).
pub const SPIFFE_BUNDLE_PATH: &str = "/.well-known/spiffe-bundle";
/// The X.509 roots as concatenated PEM.
pub const SPIFFE_BUNDLE_PEM_PATH: &str = "/.well-known/spiffe-bundle.pem";

/// TLS for the discovery listener: server certificate only (verifiers are
/// anonymous, as Kubernetes' public discovery endpoint).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    https::tls_acceptor(cert, key, None).map_err(|e| anyhow::anyhow!("oidc.{e}"))
}

fn respond(
    ring: &KeyRing,
    ca: Option<&CaRing>,
    req: &Request<Incoming>,
    max_age: u64,
) -> Response<Body> {
    let snap = ring.snapshot();
    // Both paths are served with and without a trailing slash, as Kubernetes does.
    let path = req.uri().path().trim_end_matches('/');
    let (body, content_type) = match (path, ca) {
        (p, _) if p == oidc::DISCOVERY_PATH => {
            (snap.discovery.clone(), oidc::DISCOVERY_CONTENT_TYPE)
        }
        (p, _) if p == oidc::JWKS_PATH => (snap.jwks.clone(), oidc::JWKS_CONTENT_TYPE),
        (SPIFFE_BUNDLE_PATH, Some(ca)) => match crate::certificates::bundle_json(ca, ring) {
            Ok(json) => (
                std::sync::Arc::new(json.into_bytes()),
                badge_ca::bundle::JWKS_CONTENT_TYPE,
            ),
            Err(e) => {
                tracing::error!(error = %e, "rendering the SPIFFE bundle");
                return Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::new(""))
                    .unwrap_or_else(|_| Response::new(Body::new("")));
            }
        },
        (SPIFFE_BUNDLE_PEM_PATH, Some(ca)) => (
            std::sync::Arc::new(crate::certificates::bundle_pem(ca).into_bytes()),
            badge_ca::bundle::PEM_CONTENT_TYPE,
        ),
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
    ca: Option<Arc<CaRing>>,
    max_age: u64,
    shutdown: impl Future<Output = ()> + Send,
) {
    let handler = move |req: Request<Incoming>| {
        let resp = respond(&ring, ca.as_deref(), &req, max_age);
        async move { resp }
    };
    // GET/HEAD only, no request body, and the HTTPS connection limits (slow
    // clients cannot hold the listener: badge_runtime::https).
    let endpoint = https::Endpoint::discovery(https::HttpsLimits::default());
    https::serve(listener, acceptor, endpoint, handler, shutdown).await;
}
