//! The bearer token as a compact JWS: strict JSON (no duplicate keys), strict
//! base64url, §3.2 steps 1–2 (issuer pre-filter, `ParseSigned`) and the header
//! checks made before the verifier is called.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::ReviewSettings;
use crate::token::LEGACY_ISSUER;

/// JSON that failed for a reason other than duplicate keys, or duplicate keys.
enum JsonError {
    Invalid,
    Duplicate,
}

/// A `serde_json::Value` that refuses duplicate object keys at any depth. serde_json
/// limits nesting to 128 levels, so recursion is bounded.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

const DUPLICATE_KEY: &str = "duplicate key";

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, JsonError> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(v)) => Ok(v),
        // The visitor's only data error is a duplicate key (finite floats always
        // convert); syntax, EOF and recursion-limit errors are other categories.
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(JsonError::Duplicate),
        Err(_) => Err(JsonError::Invalid),
    }
}

/// A compact JWS that passed the pre-filter and parsed.
pub(super) struct Jws<'a> {
    /// `b64(header).b64(payload)`.
    pub(super) signing_input: &'a [u8],
    pub(super) alg: String,
    pub(super) kid: String,
    pub(super) crit: bool,
    pub(super) signature: Vec<u8>,
    pub(super) claims: Map<String, Value>,
    pub(super) iss: String,
}

pub(super) enum Parsed<'a> {
    /// No authenticator claims the token.
    NotMine,
    /// Duplicate JSON keys.
    Malformed,
    Jws(Jws<'a>),
}

fn b64(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// §3.2 steps 1–2: `hasCorrectIssuer`, then go-jose's `ParseSigned`.
pub(super) fn parse<'a>(token: &'a str, settings: &ReviewSettings) -> Parsed<'a> {
    if token.trim_start().starts_with('{') {
        return Parsed::NotMine;
    }
    let mut parts = token.split('.');
    let (header_b64, payload_b64, signature_b64) = match (parts.next(), parts.next(), parts.next())
    {
        (Some(h), Some(p), Some(s)) => (h, p, s),
        _ => return Parsed::NotMine,
    };
    if parts.next().is_some() {
        return Parsed::NotMine;
    }

    let Some(payload_bytes) = b64(payload_b64) else {
        return Parsed::NotMine;
    };
    let claims = match parse_json(&payload_bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(JsonError::Invalid) => return Parsed::NotMine,
        Err(JsonError::Duplicate) => return Parsed::Malformed,
    };
    let iss = match claims.get("iss") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Parsed::NotMine,
    };
    if iss != LEGACY_ISSUER && !settings.issuers.contains(&iss) {
        return Parsed::NotMine;
    }

    let Some(header_bytes) = b64(header_b64) else {
        return Parsed::NotMine;
    };
    let header = match parse_json(&header_bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(JsonError::Invalid) => return Parsed::NotMine,
        Err(JsonError::Duplicate) => return Parsed::Malformed,
    };
    let alg = match header.get("alg") {
        Some(Value::String(s)) => s.clone(),
        _ => return Parsed::NotMine,
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Parsed::NotMine,
    };
    let crit = match header.get("crit") {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => !a.is_empty(),
        Some(_) => return Parsed::NotMine,
    };
    let Some(signature) = b64(signature_b64) else {
        return Parsed::NotMine;
    };

    let signing_len = header_b64.len() + 1 + payload_b64.len();
    Parsed::Jws(Jws {
        signing_input: token.as_bytes().get(..signing_len).unwrap_or_default(),
        alg,
        kid,
        crit,
        signature,
        claims,
        iss,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::review::testing::*;

    // ---- signature and header attacks

    #[test]
    fn signature_attacks() {
        let token = pod_token();
        let (h, p, s) = segments(&token);
        let payload = URL_SAFE_NO_PAD.decode(&p).unwrap();
        let payload_str = String::from_utf8(payload.clone()).unwrap();
        let with_header = |header: &str| format!("{}.{p}.{s}", b64e(header.as_bytes()));
        let tampered = payload_str.replace(USERNAME, "system:serviceaccount:ns:admin");
        assert_ne!(tampered, payload_str);
        let tampered_sa = payload_str.replace(r#""name":"sa""#, r#""name":"admin""#);
        assert_ne!(tampered_sa, payload_str);

        let cases = vec![
            case(
                "alg none, empty signature",
                format!("{}.{p}.", b64e(br#"{"alg":"none","kid":"key-1"}"#)),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg none, no kid",
                format!("{}.{p}.", b64e(br#"{"alg":"none"}"#)),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg NoNe",
                format!("{}.{p}.{s}", b64e(br#"{"alg":"NoNe","kid":"key-1"}"#)),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg HS256 keyed with the key id",
                sign_with(r#"{"alg":"HS256","kid":"key-1"}"#, &payload, KID.as_bytes()),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg hs512",
                sign_with(r#"{"alg":"hs512","kid":"key-1"}"#, &payload, SECRET),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg empty",
                sign_with(r#"{"alg":"","kid":"key-1"}"#, &payload, SECRET),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "kid pointing nowhere",
                sign_with(r#"{"alg":"RS256","kid":"no-such-key"}"#, &payload, SECRET),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid path traversal",
                sign_with(
                    r#"{"alg":"RS256","kid":"../../etc/passwd"}"#,
                    &payload,
                    SECRET,
                ),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid SQL",
                sign_with(r#"{"alg":"RS256","kid":"' OR 1=1 --"}"#, &payload, SECRET),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid with escapes and NUL",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1\u0000\"\\"}"#,
                    &payload,
                    SECRET,
                ),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid a prefix of a real one",
                sign_with(r#"{"alg":"RS256","kid":"key-"}"#, &payload, SECRET),
                err(NO_KEYS_FOUND),
            ),
            case(
                "header alg swapped, signature kept",
                with_header(r#"{"alg":"ES256","kid":"key-1"}"#),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "header alg swapped to RS384",
                with_header(r#"{"alg":"RS384","kid":"key-1"}"#),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "header kid swapped to the other key",
                with_header(r#"{"alg":"ES256","kid":"key-2"}"#),
                err(INVALID_SIGNATURE),
            ),
            case(
                "header gains a typ, signature kept",
                with_header(r#"{"alg":"RS256","kid":"key-1","typ":"JWT"}"#),
                err(INVALID_SIGNATURE),
            ),
            case(
                "payload tampered: sub",
                format!("{h}.{}.{s}", b64e(tampered.as_bytes())),
                err(INVALID_SIGNATURE),
            ),
            case(
                "payload tampered: service account",
                format!("{h}.{}.{s}", b64e(tampered_sa.as_bytes())),
                err(INVALID_SIGNATURE),
            ),
            case(
                "signature from another key with the same kid",
                sign_with(HEADER, &payload, b"attacker-secret"),
                err(INVALID_SIGNATURE),
            ),
            case(
                "empty signature",
                format!("{h}.{p}."),
                err(INVALID_SIGNATURE),
            ),
            case(
                "signature of another token",
                format!("{h}.{p}.{}", segments(&legacy_token()).2),
                err(INVALID_SIGNATURE),
            ),
            case(
                "no kid, no key verifies: every key tried",
                sign_with(r#"{"alg":"RS256"}"#, &payload, b"attacker-secret"),
                err("[invalid signature, invalid signature, unsupported algorithm]"),
            ),
            case(
                "no kid, second key verifies",
                sign_with(r#"{"alg":"ES256"}"#, &payload, SECRET2),
                Ok(()),
            ),
            case(
                "embedded attacker jwk is ignored",
                sign_with(
                    r#"{"alg":"RS256","kid":"attacker","jwk":{"kty":"oct","k":"YXR0YWNrZXI"}}"#,
                    &payload,
                    b"attacker",
                ),
                err(NO_KEYS_FOUND),
            ),
            case(
                "jku header is ignored",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1","jku":"https://evil.example/jwks"}"#,
                    &payload,
                    b"attacker",
                ),
                err(INVALID_SIGNATURE),
            ),
            case(
                "crit header",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1","crit":["b64"],"b64":false}"#,
                    &payload,
                    SECRET,
                ),
                err(UNSUPPORTED_CRITICAL_HEADER),
            ),
            case(
                "empty crit is fine",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1","crit":[]}"#,
                    &payload,
                    SECRET,
                ),
                Ok(()),
            ),
            case(
                "duplicate alg in the header",
                sign_with(
                    r#"{"alg":"RS256","alg":"none","kid":"key-1"}"#,
                    &payload,
                    SECRET,
                ),
                err(MALFORMED_TOKEN),
            ),
            case(
                "header without alg",
                sign_with(r#"{"kid":"key-1"}"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header alg not a string",
                sign_with(r#"{"alg":["RS256"],"kid":"key-1"}"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header kid not a string",
                sign_with(r#"{"alg":"RS256","kid":1}"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header not an object",
                sign_with(r#"["RS256"]"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header not JSON",
                sign_with("alg=RS256", &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case("the real token", token.clone(), Ok(())),
        ];
        check(cases);
    }

    #[test]
    fn unsupported_algorithms_never_reach_the_verifier() {
        let payload = claims_with(pod_binding(), &plan(&[ISSUER], NOW, NOW + 3600, None), JTI);
        for alg in [
            "none", "None", "NONE", "HS256", "HS384", "HS512", "hs256", "",
        ] {
            let env = Env::new();
            let header = format!(r#"{{"alg":"{alg}","kid":"key-1"}}"#);
            for token in [
                sign_with(&header, &payload, SECRET),
                sign_with(&header, &payload, KID.as_bytes()),
                format!("{}.{}.", b64e(header.as_bytes()), b64e(&payload)),
            ] {
                assert_eq!(
                    env.review(&token),
                    Err(UNSUPPORTED_ALGORITHM.into()),
                    "{alg}"
                );
            }
            assert_eq!(env.verifier.calls.get(), 0, "{alg}");
        }
    }

    // ---- structure

    #[test]
    fn structural_garbage_is_not_mine() {
        let token = pod_token();
        let (h, p, s) = segments(&token);
        let payload = URL_SAFE_NO_PAD.decode(&p).unwrap();
        let iss_only = |json: &str| format!("{h}.{}.{s}", b64e(json.as_bytes()));
        let cases = vec![
            case("empty", String::new(), err(INVALID_BEARER_TOKEN)),
            case("one part", h.clone(), err(INVALID_BEARER_TOKEN)),
            case("two parts", format!("{h}.{p}"), err(INVALID_BEARER_TOKEN)),
            case(
                "four parts",
                format!("{token}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "trailing dot",
                format!("{token}."),
                err(INVALID_BEARER_TOKEN),
            ),
            case("dots only", "..".into(), err(INVALID_BEARER_TOKEN)),
            case(
                "JSON serialization",
                format!(r#"{{"payload":"{p}"}}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "leading brace after spaces",
                format!(" \t{{.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "padded header",
                format!("{h}=.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "padded payload",
                format!("{h}.{p}==.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "padded signature",
                format!("{h}.{p}.{s}="),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "standard alphabet in payload",
                format!("{h}.+{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "slash in header",
                format!("/{h}.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "star in signature",
                format!("{h}.{p}.{s}*"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "newline in signature",
                format!("{h}.{p}.{s}\n"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "space in payload",
                format!("{h}. {p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "non-ASCII",
                format!("{h}.{p}é.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload truncated by one char",
                format!("{h}.{}.{s}", &p[..p.len() - 1]),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload not JSON",
                iss_only("not json"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload array",
                iss_only(r#"[{"iss":"https://issuer.example"}]"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case("payload null", iss_only("null"), err(INVALID_BEARER_TOKEN)),
            case(
                "payload string",
                iss_only(r#""https://issuer.example""#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload with trailing garbage",
                iss_only(r#"{"iss":"https://issuer.example"} x"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload invalid UTF-8",
                format!(
                    "{h}.{}.{s}",
                    b64e(b"{\"iss\":\"https://issuer.example\xff\"}")
                ),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload lone surrogate",
                iss_only(r#"{"iss":"https://issuer.example","x":"\ud800"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "wrong issuer",
                payload_token(r#"{"iss":"https://evil.example"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "issuer case",
                payload_token(r#"{"iss":"HTTPS://ISSUER.EXAMPLE"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "issuer with trailing slash",
                payload_token(r#"{"iss":"https://issuer.example/"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "no issuer",
                payload_token(r#"{"sub":"system:serviceaccount:ns:sa"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "issuer not a string",
                payload_token(r#"{"iss":["https://issuer.example"]}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header bad base64",
                format!("{h}*.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case("control", sign(&payload), Ok(())),
        ];
        check(cases);
    }

    #[test]
    fn non_canonical_base64_is_refused() {
        // "{}" → "e30"; "e31" decodes to the same bytes with non-zero trailing bits.
        let env = Env::new();
        let payload = format!(r#"{{"iss":"{ISSUER}"}}"#);
        let good = sign(payload.as_bytes());
        let (h, p, s) = segments(&good);
        assert_eq!(URL_SAFE_NO_PAD.decode(&s).unwrap().len(), 32);
        // 32 bytes → 43 chars, 2 trailing bits; flip one of them.
        let last = s.chars().last().unwrap();
        let idx = base64_index(last);
        let bumped = base64_char(idx ^ 1);
        let odd = format!("{}{bumped}", &s[..s.len() - 1]);
        assert_eq!(
            env.review(&format!("{h}.{p}.{odd}")),
            Err(INVALID_BEARER_TOKEN.into())
        );
    }

    fn base64_index(c: char) -> u8 {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        u8::try_from(A.iter().position(|&x| x == c as u8).unwrap()).unwrap()
    }

    fn base64_char(i: u8) -> char {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        A[usize::from(i)] as char
    }

    #[test]
    fn duplicate_claims_are_malformed() {
        let cases = vec![
            case(
                "iss twice",
                payload_token(r#"{"iss":"a","iss":"b"}"#),
                err(MALFORMED_TOKEN),
            ),
            case(
                "iss twice, same value",
                payload_token(r#"{"iss":"https://issuer.example","iss":"https://issuer.example"}"#),
                err(MALFORMED_TOKEN),
            ),
            case(
                "sub twice",
                payload_token(&format!(r#"{{"iss":"{ISSUER}","sub":"a","sub":"b"}}"#)),
                err(MALFORMED_TOKEN),
            ),
            case(
                "nested duplicate",
                payload_token(&format!(
                    r#"{{"iss":"{ISSUER}","kubernetes.io":{{"namespace":"ns","namespace":"kube-system"}}}}"#
                )),
                err(MALFORMED_TOKEN),
            ),
            case(
                "escaped duplicate",
                payload_token(&format!(
                    r#"{{"iss":"{ISSUER}","aud":["a"],"\u0061ud":["b"]}}"#
                )),
                err(MALFORMED_TOKEN),
            ),
        ];
        check(cases);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut env = Env::new();
        for depth in [129usize, 200, 20_000] {
            let json = format!(
                r#"{{"iss":"{ISSUER}","x":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert_eq!(
                env.review(&payload_token(&json)),
                Err(INVALID_BEARER_TOKEN.into()),
                "{depth}"
            );
            let json = format!(
                r#"{{"iss":"{ISSUER}","x":{}1{}}}"#,
                r#"{"a":"#.repeat(depth),
                "}".repeat(depth)
            );
            assert!(env.review(&payload_token(&json)).is_err(), "{depth}");
        }
        // A million levels with the length cap lifted: still no stack overflow.
        env.settings.max_token_len = 16 << 20;
        let depth = 1_000_000;
        let json = format!(
            r#"{{"iss":"{ISSUER}","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(
            env.review(&payload_token(&json)),
            Err(INVALID_BEARER_TOKEN.into())
        );
        // Nesting within serde_json's limit is just an unknown claim.
        let json = format!(
            r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"x":{}{},"kubernetes.io":{{"namespace":"ns","serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(env.review(&payload_token(&json)).is_ok());
        assert_eq!(env.verifier.calls.get(), 1);
    }
}
