//! The claims of a verified token, decoded as go-jose does but refusing claims of
//! the wrong JSON type ("malformed token").

use serde_json::{Map, Value};

pub(super) struct WrongType;

pub(super) type ClaimResult<T> = Result<T, WrongType>;

/// A string claim: absent or null → "" (Go's zero value).
pub(super) fn string_claim(v: Option<&Value>) -> ClaimResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(WrongType),
    }
}

/// A NumericDate: an integer or float, truncated to whole seconds; absent or null →
/// `None`. Values outside int64 are refused.
pub(super) fn date_claim(v: Option<&Value>) -> ClaimResult<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            if n.is_u64() {
                return Err(WrongType);
            }
            let f = n.as_f64().ok_or(WrongType)?.trunc();
            // -2^63 ≤ f < 2^63 fits; both bounds are exact in f64.
            if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
                Ok(Some(f as i64))
            } else {
                Err(WrongType)
            }
        }
        Some(_) => Err(WrongType),
    }
}

/// `aud`: a string or an array of strings (go-jose `Audience`).
pub(super) fn audience_claim(v: Option<&Value>) -> ClaimResult<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(WrongType),
            })
            .collect(),
        Some(_) => Err(WrongType),
    }
}

#[derive(Debug, Default, Clone)]
pub(super) struct Ref {
    pub(super) name: String,
    pub(super) uid: String,
}

pub(super) fn ref_claim(v: Option<&Value>) -> ClaimResult<Option<Ref>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(Ref {
            name: string_claim(m.get("name"))?,
            uid: string_claim(m.get("uid"))?,
        })),
        Some(_) => Err(WrongType),
    }
}

/// go-jose's `jwt.Claims`.
pub(super) struct PublicClaims {
    pub(super) iss: String,
    pub(super) sub: String,
    pub(super) aud: Vec<String>,
    pub(super) exp: Option<i64>,
    pub(super) nbf: Option<i64>,
    pub(super) iat: Option<i64>,
    pub(super) jti: String,
}

impl PublicClaims {
    pub(super) fn parse(m: &Map<String, Value>) -> ClaimResult<Self> {
        Ok(PublicClaims {
            iss: string_claim(m.get("iss"))?,
            sub: string_claim(m.get("sub"))?,
            aud: audience_claim(m.get("aud"))?,
            exp: date_claim(m.get("exp"))?,
            nbf: date_claim(m.get("nbf"))?,
            iat: date_claim(m.get("iat"))?,
            jti: string_claim(m.get("jti"))?,
        })
    }
}

/// `privateClaims` of bound tokens (`kubernetes.io`).
#[derive(Default)]
pub(super) struct BoundClaims {
    pub(super) namespace: String,
    pub(super) service_account: Ref,
    pub(super) pod: Option<Ref>,
    pub(super) secret: Option<Ref>,
    pub(super) node: Option<Ref>,
    pub(super) warn_after: Option<i64>,
}

impl BoundClaims {
    pub(super) fn parse(m: &Map<String, Value>) -> ClaimResult<Self> {
        let k = match m.get("kubernetes.io") {
            None | Some(Value::Null) => return Ok(BoundClaims::default()),
            Some(Value::Object(k)) => k,
            Some(_) => return Err(WrongType),
        };
        Ok(BoundClaims {
            namespace: string_claim(k.get("namespace"))?,
            service_account: ref_claim(k.get("serviceaccount"))?.unwrap_or_default(),
            pod: ref_claim(k.get("pod"))?,
            secret: ref_claim(k.get("secret"))?,
            node: ref_claim(k.get("node"))?,
            warn_after: date_claim(k.get("warnafter"))?,
        })
    }
}

/// `legacyPrivateClaims`.
pub(super) struct LegacyClaims {
    pub(super) namespace: String,
    pub(super) secret_name: String,
    pub(super) sa_name: String,
    pub(super) sa_uid: String,
}

impl LegacyClaims {
    pub(super) fn parse(m: &Map<String, Value>) -> ClaimResult<Self> {
        Ok(LegacyClaims {
            namespace: string_claim(m.get("kubernetes.io/serviceaccount/namespace"))?,
            secret_name: string_claim(m.get("kubernetes.io/serviceaccount/secret.name"))?,
            sa_name: string_claim(m.get("kubernetes.io/serviceaccount/service-account.name"))?,
            sa_uid: string_claim(m.get("kubernetes.io/serviceaccount/service-account.uid"))?,
        })
    }
}

pub(super) enum Private {
    Legacy(LegacyClaims),
    Bound(BoundClaims),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::review::testing::*;

    #[test]
    fn claim_shapes_go_jose_accepts() {
        let env = Env::new();
        let sa =
            r#""kubernetes.io":{"namespace":"ns","serviceaccount":{"name":"sa","uid":"sa-uid"}}"#;
        let cases = [
            (
                "aud string",
                format!(r#"{{"iss":"{ISSUER}","aud":"{ISSUER}",{sa}}}"#),
            ),
            (
                "float dates",
                format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":1700003600.9,"iat":1.7e9,"nbf":1699999999.5,{sa}}}"#
                ),
            ),
            (
                "no dates",
                format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],{sa}}}"#),
            ),
            (
                "nulls",
                format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":null,"jti":null,"sub":null,"kubernetes.io":{{"namespace":"ns","pod":null,"serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#
                ),
            ),
            (
                "unknown claims",
                format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"x":[[[[{{"y":1}}]]]],"ISS":7,{sa}}}"#
                ),
            ),
        ];
        for (name, json) in cases {
            let a = env.review(&payload_token(&json));
            assert!(a.is_ok(), "{name}: {a:?}");
        }
        let a = env.review(&payload_token(&cases_exp_float())).unwrap();
        assert_eq!(a.expires_at, Some(NOW + 3600));
    }

    fn cases_exp_float() -> String {
        format!(
            r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":1700003600.9,"kubernetes.io":{{"namespace":"ns","serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#
        )
    }

    #[test]
    fn claims_of_the_wrong_type_are_malformed() {
        let sa =
            r#""kubernetes.io":{"namespace":"ns","serviceaccount":{"name":"sa","uid":"sa-uid"}}"#;
        let cases = [
            format!(r#"{{"iss":"{ISSUER}","aud":1,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}",1],{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}",null],{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","aud":{{"a":1}},{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":"1700003600",{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":true,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":1e300,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":-1e19,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":18446744073709551615,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","nbf":[1],{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","sub":1,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","jti":{{}},{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":[]}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"namespace":1}}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"serviceaccount":"sa"}}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"pod":{{"name":1}}}}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"warnafter":"soon"}}}}"#),
        ];
        let env = Env::new();
        for json in cases {
            assert_eq!(
                env.review(&payload_token(&json)),
                Err(MALFORMED_TOKEN.into()),
                "{json}"
            );
        }
        // Before the signature is checked, types are not looked at.
        let json = format!(r#"{{"iss":"{ISSUER}","aud":1}}"#);
        let t = sign_with(HEADER, json.as_bytes(), b"attacker");
        assert_eq!(env.review(&t), Err(INVALID_SIGNATURE.into()));
    }
}
