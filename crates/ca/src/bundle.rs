//! Trust bundles: the SPIFFE bundle (a JWK Set, SPIFFE_Trust_Domain_and_Bundle.md §4)
//! and plain PEM.
//!
//! X.509 authorities are the roots (self-signed, as the standard recommends for `x5c`),
//! one JWK each with `use: x509-svid`, the key parameters and exactly one standard-base64
//! DER certificate in `x5c`, and no `kid` (the standard forbids it for x509-svid). JWT
//! authorities are given as JWKs by the caller (the issuer's signing keys) and published
//! with `use: jwt-svid` and their `kid`.

use badge_core::{Error, Result};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value, json};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

/// Media type of the JWKS bundle.
pub const JWKS_CONTENT_TYPE: &str = "application/json";
/// Media type of the PEM bundle.
pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[start..]
}

/// The `x509-svid` JWK of one CA certificate.
pub fn x509_svid_jwk(cert: &CertificateDer<'_>) -> Result<Value> {
    let bad = |what: &str| Error::Internal(format!("trust bundle certificate: {what}"));
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| bad("not a certificate"))?;
    let spki = parsed.public_key();
    let mut jwk = Map::new();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(bad("malformed RSA key"));
        };
        jwk.insert("kty".into(), "RSA".into());
        jwk.insert(
            "n".into(),
            URL_SAFE_NO_PAD.encode(strip_zeros(rsa.modulus)).into(),
        );
        jwk.insert(
            "e".into(),
            URL_SAFE_NO_PAD.encode(strip_zeros(rsa.exponent)).into(),
        );
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let (crv, len) = match curve {
            Some(c) if c == OID_EC_P256 => ("P-256", 32),
            Some(c) if c == OID_NIST_EC_P384 => ("P-384", 48),
            Some(c) if c == OID_NIST_EC_P521 => ("P-521", 66),
            _ => return Err(bad("unsupported EC curve")),
        };
        let point = &spki.subject_public_key.data;
        if point.len() != 1 + 2 * len || point.first() != Some(&4) {
            return Err(bad("EC key is not an uncompressed point"));
        }
        jwk.insert("kty".into(), "EC".into());
        jwk.insert("crv".into(), crv.into());
        jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(&point[1..=len]).into());
        jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(&point[1 + len..]).into());
    } else {
        return Err(bad("unsupported key algorithm"));
    }
    jwk.insert("use".into(), "x509-svid".into());
    jwk.insert("x5c".into(), json!([STANDARD.encode(cert.as_ref())]));
    Ok(Value::Object(jwk))
}

/// The SPIFFE bundle document.
///
/// `jwt_keys` are JWK objects carrying a `kid`; their `use` is set to `jwt-svid` (other
/// members are kept). `sequence` must increase with every content change;
/// `refresh_hint_seconds` tells consumers how often to poll.
pub fn spiffe_bundle_json(
    x509_authorities: &[CertificateDer<'_>],
    jwt_keys: &[Value],
    sequence: u64,
    refresh_hint_seconds: u64,
) -> Result<String> {
    let mut keys = Vec::with_capacity(x509_authorities.len() + jwt_keys.len());
    for cert in x509_authorities {
        keys.push(x509_svid_jwk(cert)?);
    }
    for k in jwt_keys {
        let Some(obj) = k.as_object() else {
            return Err(Error::Internal(
                "JWT bundle key is not a JSON object".into(),
            ));
        };
        let kid = obj.get("kid").and_then(Value::as_str).unwrap_or_default();
        if kid.is_empty() {
            // The standard requires kid on jwt-svid keys.
            return Err(Error::Internal("JWT bundle key has no kid".into()));
        }
        let mut obj = obj.clone();
        obj.insert("use".into(), "jwt-svid".into());
        keys.push(Value::Object(obj));
    }
    let doc = json!({
        "keys": keys,
        "spiffe_refresh_hint": refresh_hint_seconds,
        "spiffe_sequence": sequence,
    });
    serde_json::to_string(&doc).map_err(|_| Error::Internal("cannot render the bundle".into()))
}

/// The X.509 authorities as concatenated PEM.
pub fn pem_bundle(x509_authorities: &[CertificateDer<'_>]) -> String {
    crate::pem::certificates(x509_authorities)
}
