//! Kubernetes' ExternalJWTSigner (KEP-740, reference §9), packages `v1` and
//! `v1alpha1`: a kube-apiserver started with `--service-account-signing-endpoint`
//! hands Badge its claims and gets back `{alg, kid, typ: "JWT"}` and a signature
//! made with Badge's active key.

use std::sync::Arc;

use badge_core::token::MAX_EXPIRATION_SECONDS;
use badge_core::{Clock, Error, Result};
use badge_proto::externaljwt::{v1, v1alpha1};
use badge_runtime::{MethodRule, MethodTable, status};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};

use crate::keyring::KeyRing;

/// The apiserver sends a JWT payload; anything much larger than a real one is
/// refused before decoding.
const MAX_CLAIMS_LEN: usize = 64 * 1024;

/// The same service on the mTLS gRPC listener (the Unix socket has no auth layer:
/// its file permissions are the guard, as in Kubernetes).
pub const METHODS: MethodTable = &[
    (
        "/v1.ExternalJWTSigner/Sign",
        MethodRule::new("sign", "badge.dev", "signingkeys"),
    ),
    (
        "/v1.ExternalJWTSigner/FetchKeys",
        MethodRule::new("list", "badge.dev", "signingkeys"),
    ),
    (
        "/v1.ExternalJWTSigner/Metadata",
        MethodRule::new("get", "badge.dev", "signingkeys"),
    ),
    (
        "/v1alpha1.ExternalJWTSigner/Sign",
        MethodRule::new("sign", "badge.dev", "signingkeys"),
    ),
    (
        "/v1alpha1.ExternalJWTSigner/FetchKeys",
        MethodRule::new("list", "badge.dev", "signingkeys"),
    ),
    (
        "/v1alpha1.ExternalJWTSigner/Metadata",
        MethodRule::new("get", "badge.dev", "signingkeys"),
    ),
];

#[derive(Clone)]
pub struct ExternalSigner {
    pub ring: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub refresh_hint_seconds: i64,
    /// `--service-account-max-token-expiration` to report (0: 2^32 s).
    pub max_expiration_seconds: i64,
}

/// (header, signature), both base64url.
fn sign(s: &ExternalSigner, claims: &str) -> Result<(String, String)> {
    if claims.is_empty() {
        return Err(Error::invalid("claims", "claims are required"));
    }
    if claims.len() > MAX_CLAIMS_LEN {
        return Err(Error::invalid(
            "claims",
            format!("too long: {} bytes, at most {MAX_CLAIMS_LEN}", claims.len()),
        ));
    }
    // Sign only what is a JWT payload: base64url (no padding) of a JSON object.
    let raw = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| Error::invalid("claims", "must be unpadded base64url"))?;
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(Error::invalid("claims", "must encode a JSON object")),
    }
    let key = s
        .ring
        .active(s.clock.now())
        .ok_or_else(|| Error::Unavailable("no signing key is active yet".into()))?;
    let header = URL_SAFE_NO_PAD.encode(key.jwt_header(true));
    let input = format!("{header}.{claims}");
    let sig = key
        .sign(input.as_bytes())
        .map_err(|e| Error::Internal(format!("signing: {e}")))?;
    tracing::info!(target: "audit", event = "external.signed", kid = %key.kid(), "signed claims for the apiserver");
    Ok((header, URL_SAFE_NO_PAD.encode(sig)))
}

struct Keys {
    keys: Vec<(String, Vec<u8>)>,
    timestamp: prost_types::Timestamp,
}

fn keys(s: &ExternalSigner) -> Result<Keys> {
    let snap = s.ring.snapshot();
    if snap.keys.is_empty() {
        return Err(Error::Unavailable("no keys published yet".into()));
    }
    Ok(Keys {
        keys: snap
            .keys
            .iter()
            .map(|k| (k.stored.kid.clone(), k.public.spki_der().to_vec()))
            .collect(),
        timestamp: badge_core::clock::timestamp(snap.built_at),
    })
}

fn max_expiration(s: &ExternalSigner) -> i64 {
    if s.max_expiration_seconds > 0 {
        s.max_expiration_seconds
    } else {
        MAX_EXPIRATION_SECONDS
    }
}

macro_rules! signer_impl {
    ($pkg:ident) => {
        #[tonic::async_trait]
        impl $pkg::external_jwt_signer_server::ExternalJwtSigner for ExternalSigner {
            async fn sign(
                &self,
                req: Request<$pkg::SignJwtRequest>,
            ) -> std::result::Result<Response<$pkg::SignJwtResponse>, Status> {
                let (header, signature) = sign(self, &req.into_inner().claims).map_err(status)?;
                Ok(Response::new($pkg::SignJwtResponse { header, signature }))
            }

            async fn fetch_keys(
                &self,
                _req: Request<$pkg::FetchKeysRequest>,
            ) -> std::result::Result<Response<$pkg::FetchKeysResponse>, Status> {
                let k = keys(self).map_err(status)?;
                Ok(Response::new($pkg::FetchKeysResponse {
                    keys: k
                        .keys
                        .into_iter()
                        .map(|(key_id, key)| $pkg::Key {
                            key_id,
                            key,
                            exclude_from_oidc_discovery: false,
                        })
                        .collect(),
                    data_timestamp: Some(k.timestamp),
                    refresh_hint_seconds: self.refresh_hint_seconds,
                }))
            }

            async fn metadata(
                &self,
                _req: Request<$pkg::MetadataRequest>,
            ) -> std::result::Result<Response<$pkg::MetadataResponse>, Status> {
                Ok(Response::new($pkg::MetadataResponse {
                    max_token_expiration_seconds: max_expiration(self),
                }))
            }
        }
    };
}

signer_impl!(v1);
signer_impl!(v1alpha1);
