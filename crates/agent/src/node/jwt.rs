//! JWT-SVID validation against the trust bundle's `use: jwt-svid` keys (SPIFFE
//! JWT-SVID §3–4): compact JWS only; header members only `alg`, `kid`, `typ`;
//! `alg` one of RS/ES/PS 256/384/512 (checked first); `typ` if present `JWT` or
//! `JOSE`; key chosen by `kid`; `sub` a SPIFFE ID (with a path) of the bundle's
//! trust domain; `aud` contains the audience; `exp` present and not past (30 s
//! leeway). The liveness of the service account and pod is checked by the caller
//! (it needs identity).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::state::Bundle;

/// Leeway for `exp` (seconds).
pub const LEEWAY_SECONDS: u64 = 30;

/// A valid JWT-SVID.
#[derive(Debug)]
pub struct Validated {
    pub spiffe_id: String,
    pub claims: Map<String, Value>,
}

fn algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    })
}

fn key_of(jwk: &Value) -> Option<DecodingKey> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    match s("kty")? {
        "EC" => DecodingKey::from_ec_components(s("x")?, s("y")?).ok(),
        "RSA" => DecodingKey::from_rsa_components(s("n")?, s("e")?).ok(),
        _ => None,
    }
}

/// Checks `token` for `audience` against `bundle`. The error says why (never the
/// token).
pub fn validate(token: &str, audience: &str, bundle: &Bundle) -> Result<Validated, String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err("not a compact JWS (three dot-separated parts)".into());
    }
    let header_raw = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| "header is not base64url".to_string())?;
    let header: Map<String, Value> = serde_json::from_slice(&header_raw)
        .map_err(|_| "header is not a JSON object".to_string())?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("header has no alg")?;
    let alg = algorithm(alg_name)
        .ok_or_else(|| format!("unsupported token signature algorithm {alg_name:?}"))?;
    if let Some(extra) = header
        .keys()
        .find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(format!(
            "header member {extra:?} is not allowed (only alg, kid, typ)"
        ));
    }
    if let Some(typ) = header.get("typ")
        && !matches!(typ.as_str(), Some("JWT" | "JOSE"))
    {
        return Err(format!("header typ {typ} is not JWT or JOSE"));
    }
    // The subject first (unverified) to pick the trust domain's bundle.
    let payload_raw = URL_SAFE_NO_PAD
        .decode(parts[1])
        .map_err(|_| "payload is not base64url".to_string())?;
    let unverified: Map<String, Value> = serde_json::from_slice(&payload_raw)
        .map_err(|_| "payload is not a JSON object".to_string())?;
    let sub = unverified
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("token has no sub")?;
    let id = badge_core::spiffe::SpiffeId::parse(sub)
        .map_err(|e| format!("sub {sub:?} is not a SPIFFE ID: {e}"))?;
    if id.is_root() {
        return Err(format!(
            "sub {sub:?} has no path: not a workload's SPIFFE ID"
        ));
    }
    if id.trust_domain().as_str() != bundle.trust_domain {
        return Err(format!(
            "no bundle for trust domain {:?}",
            id.trust_domain().as_str()
        ));
    }
    let jwks: Value =
        serde_json::from_slice(&bundle.jwks).map_err(|_| "the JWT bundle is unreadable")?;
    let keys: Vec<&Value> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Value> = keys
        .into_iter()
        .filter(|k| match kid {
            Some(kid) => k.get("kid").and_then(Value::as_str) == Some(kid),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(match kid {
            Some(kid) => format!("key {kid:?} is not in the trust domain's JWT bundle"),
            None => "the trust domain's JWT bundle has no keys".into(),
        });
    }
    let mut v = Validation::new(alg);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    v.leeway = LEEWAY_SECONDS;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut last = String::from("signature does not verify with the trust domain's keys");
    for jwk in candidates {
        let Some(key) = key_of(jwk) else { continue };
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v) {
            Ok(data) => {
                return Ok(Validated {
                    spiffe_id: sub.to_string(),
                    claims: data.claims,
                });
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = match e.kind() {
                    K::ExpiredSignature => "token has expired".into(),
                    K::InvalidAudience => format!("audience {audience:?} is not in aud"),
                    K::ImmatureSignature => "token is not valid yet (nbf)".into(),
                    K::MissingRequiredClaim(c) => format!("token has no {c}"),
                    K::InvalidSignature => last,
                    other => format!("invalid token: {other:?}"),
                };
                if !matches!(e.kind(), K::InvalidSignature | K::InvalidAlgorithm) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// serde_json → protobuf Struct (for ValidateJWTSVIDResponse.claims).
pub fn to_struct(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use badge_keys::{Algorithm as KeyAlg, SigningKey};

    fn bundle(key: &SigningKey) -> Bundle {
        let mut jwk = serde_json::to_value(key.public_key().jwk()).expect("jwk");
        jwk["use"] = "jwt-svid".into();
        Bundle {
            trust_domain: "example.org".into(),
            roots_der: vec![],
            roots_pem: String::new(),
            jwks: serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).expect("json"),
            sequence: 1,
        }
    }

    fn token(key: &SigningKey, header: &str, claims: Value) -> String {
        key.sign_jwt(
            header.as_bytes(),
            &serde_json::to_vec(&claims).expect("json"),
        )
        .expect("sign")
    }

    /// The wall clock: jsonwebtoken checks `exp` against it.
    fn now() -> i64 {
        use badge_core::Clock as _;
        badge_core::token::unix_seconds(badge_core::SystemClock.now())
    }

    #[test]
    fn valid_and_invalid_tokens() {
        let key = SigningKey::generate(KeyAlg::ES256).expect("key");
        let b = bundle(&key);
        let header = String::from_utf8(key.jwt_header(true)).expect("utf8");
        let good = serde_json::json!({"sub": "spiffe://example.org/ns/shop/sa/web", "aud": ["orders"], "exp": now() + 300});
        let v = validate(&token(&key, &header, good.clone()), "orders", &b).expect("valid");
        assert_eq!(v.spiffe_id, "spiffe://example.org/ns/shop/sa/web");
        assert_eq!(to_struct(&v.claims).fields.len(), 3);

        let err = |t: &str, aud: &str| validate(t, aud, &b).expect_err("invalid");
        assert!(err(&token(&key, &header, good.clone()), "other").contains("audience"));
        let expired = serde_json::json!({"sub": "spiffe://example.org/ns/shop/sa/web", "aud": "orders", "exp": now() - 600});
        assert!(err(&token(&key, &header, expired), "orders").contains("expired"));
        let foreign = serde_json::json!({"sub": "spiffe://other.org/ns/shop/sa/web", "aud": "orders", "exp": now() + 60});
        assert!(err(&token(&key, &header, foreign), "orders").contains("no bundle"));
        let sa_token = serde_json::json!({"sub": "system:serviceaccount:shop:web", "aud": "orders", "exp": now() + 60});
        assert!(err(&token(&key, &header, sa_token), "orders").contains("not a SPIFFE ID"));
        let no_exp =
            serde_json::json!({"sub": "spiffe://example.org/ns/shop/sa/web", "aud": "orders"});
        assert!(err(&token(&key, &header, no_exp), "orders").contains("exp"));
        let extra_header = header.replace('}', r#","jku":"https://x"}"#);
        assert!(err(&token(&key, &extra_header, good.clone()), "orders").contains("jku"));
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        assert!(err(&token(&key, hs, good.clone()), "orders").contains("HS256"));
        // Signed by a key outside the bundle (same kid forged).
        let other = SigningKey::generate(KeyAlg::ES256).expect("key");
        let forged = token(&other, &header, good);
        assert!(err(&forged, "orders").contains("signature"));
        assert!(err("a.b", "orders").contains("compact"));
    }
}
