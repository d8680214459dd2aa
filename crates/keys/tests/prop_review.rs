//! Property tests of the JWS/claims parser and the legacy-token path of TokenReview
//! (`badge_core::review`), verified with real keys (`badge_keys::KeySet`), issue 13:
//!
//! - no panic and bounded time for any bearer string;
//! - a signed token altered in any byte never authenticates (only the exact token
//!   does; base64url is canonical, so no other spelling of the same bytes exists);
//! - a payload that is signed correctly but is not what Kubernetes would accept
//!   (duplicate keys at any depth, claims of the wrong type, numbers that do not fit,
//!   nesting past the JSON depth limit) is refused, and one that is accepted
//!   authenticates exactly the identity its claims name.

#![allow(clippy::unwrap_used)]

#[path = "../../core/tests/prop_support/mod.rs"]
mod prop_support;

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use badge_core::review::{
    MALFORMED_TOKEN, ObjectLookup, ObjectState, ReviewSettings, SecretState, review, token_sha256,
};
use badge_core::token::{
    Binding, ClaimsInput, ObjectRef, TokenPlan, bound_claims_json, legacy_claims,
};
use badge_keys::{Algorithm, KeySet, SigningKey};
use prop_support::{Stats, apply, edits};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000;
const ISSUER: &str = "https://issuer.example";
const LEGACY_SECRET: &str = "legacy-secret";

struct Keys {
    es256: SigningKey,
    rs256: SigningKey,
    set: KeySet,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let es256 = SigningKey::generate(Algorithm::ES256).unwrap();
        let rs256 = SigningKey::generate(Algorithm::RS256).unwrap();
        let set = KeySet::new(vec![es256.public_key().clone(), rs256.public_key().clone()]);
        Keys { es256, rs256, set }
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW as u64)
}

fn settings() -> ReviewSettings {
    ReviewSettings::new(vec![ISSUER.to_owned()], vec![ISSUER.to_owned()])
}

/// Every object a generated token may name is live; the legacy Secret holds
/// `legacy_token`.
struct Live {
    legacy_token: Option<[u8; 32]>,
}

impl ObjectLookup for Live {
    fn service_account(&self, _ns: &str, name: &str) -> Option<ObjectState> {
        Some(ObjectState {
            uid: format!("{name}-uid"),
            deletion_timestamp: None,
        })
    }
    fn service_account_secrets(&self, _ns: &str, _name: &str) -> Vec<String> {
        Vec::new()
    }
    fn pod(&self, _ns: &str, name: &str) -> Option<ObjectState> {
        Some(ObjectState {
            uid: format!("{name}-uid"),
            deletion_timestamp: None,
        })
    }
    fn secret(&self, _ns: &str, name: &str) -> Option<SecretState> {
        Some(SecretState {
            uid: format!("{name}-uid"),
            token_sha256: self.legacy_token.filter(|_| name == LEGACY_SECRET),
            ..SecretState::default()
        })
    }
    fn node(&self, name: &str) -> Option<ObjectState> {
        Some(ObjectState {
            uid: format!("{name}-uid"),
            deletion_timestamp: None,
        })
    }
    fn revoked(&self, _jti: &str) -> bool {
        false
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

/// A bound token exactly as the issuer writes it, signed by one of the keys.
fn bound_token() -> impl Strategy<Value = String> {
    (
        name(),
        name(),
        prop::option::of(name()),
        any::<bool>(),
        "[a-f0-9-]{0,36}",
    )
        .prop_map(|(ns, sa, pod, rsa, jti)| {
            let binding = match pod {
                Some(p) => Binding::Pod {
                    pod: ObjectRef::new(p.clone(), format!("{p}-uid")),
                    node: None,
                },
                None => Binding::None,
            };
            let plan = TokenPlan {
                audiences: vec![ISSUER.to_owned()],
                issued_at: NOW - 10,
                expires_at: NOW + 3600,
                status_expiration: NOW + 3600,
                warn_after: None,
                warnings: Vec::new(),
            };
            let payload = bound_claims_json(&ClaimsInput {
                issuer: ISSUER,
                namespace: &ns,
                service_account: ObjectRef::new(sa.clone(), format!("{sa}-uid")),
                binding,
                plan: &plan,
                jti: &jti,
            });
            let key = if rsa { &keys().rs256 } else { &keys().es256 };
            key.sign_jwt(&key.jwt_header(false), &payload).unwrap()
        })
}

fn legacy_token() -> impl Strategy<Value = String> {
    (name(), name()).prop_map(|(ns, sa)| {
        let payload = legacy_claims(&ns, &sa, &format!("{sa}-uid"), LEGACY_SECRET).to_string();
        let key = &keys().es256;
        key.sign_jwt(&key.jwt_header(false), payload.as_bytes())
            .unwrap()
    })
}

fn check_mutations(
    stats: &Stats,
    token: &str,
    edits: &[prop_support::Edit],
    legacy: bool,
) -> Result<(), TestCaseError> {
    let lookup = Live {
        legacy_token: legacy.then(|| token_sha256(token.as_bytes())),
    };
    let s = settings();
    let original = review(token, &[], &s, &keys().set, &lookup, now()).map_err(|e| e.to_string());
    prop_assert!(
        original.is_ok(),
        "the unaltered token fails: {:?}",
        original
    );
    let altered = String::from_utf8_lossy(&apply(token.as_bytes(), edits)).into_owned();
    stats.case(altered.len(), || {
        let r = review(&altered, &[], &s, &keys().set, &lookup, now()).map_err(|e| e.to_string());
        if r.is_ok() {
            prop_assert_eq!(&altered, token, "an altered token authenticated");
        }
        Ok(())
    })
}

#[test]
fn altered_bound_tokens_never_authenticate() {
    let stats = Stats::new("review/bound-mutated");
    stats.run(1500, &(bound_token(), edits(3)), |(token, edits)| {
        check_mutations(&stats, &token, &edits, false)
    });
}

#[test]
fn altered_legacy_tokens_never_authenticate() {
    let stats = Stats::new("review/legacy-mutated");
    stats.run(1500, &(legacy_token(), edits(3)), |(token, edits)| {
        check_mutations(&stats, &token, &edits, true)
    });
}

#[test]
fn arbitrary_bearer_strings_are_refused_without_panic() {
    let stats = Stats::new("review/arbitrary");
    // Random text, and three random base64url segments (past the split).
    let strategy = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,90}",
        "eyJ[A-Za-z0-9_-]{0,60}\\.eyJ[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,90}",
    ];
    let lookup = Live { legacy_token: None };
    let s = settings();
    stats.run(4000, &strategy, |token| {
        stats.case(token.len(), || {
            let r = review(&token, &[], &s, &keys().set, &lookup, now()).map_err(|e| e.to_string());
            prop_assert!(r.is_err(), "{:?} authenticated", token);
            Ok(())
        })
    });
}

// ---- correctly signed payloads that are not valid claims

/// JSON written as text, so duplicate keys and odd numbers can be expressed.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    /// A number exactly as written (`1e400`, `-0`, `18446744073709551616`).
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    /// `depth` nested arrays around `0`.
    Deep(usize),
}

impl Json {
    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}").unwrap(),
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
            Json::Deep(d) => {
                out.push_str(&"[".repeat(*d));
                out.push('0');
                out.push_str(&"]".repeat(*d));
            }
        }
    }

    /// Duplicate keys anywhere.
    fn has_duplicates(&self) -> bool {
        match self {
            Json::Arr(items) => items.iter().any(Json::has_duplicates),
            Json::Obj(fields) => {
                let mut keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                keys.sort_unstable();
                keys.windows(2).any(|w| w[0] == w[1])
                    || fields.iter().any(|(_, v)| v.has_duplicates())
            }
            _ => false,
        }
    }

    /// Deeper than serde_json's 128 levels (counting from the payload object).
    fn too_deep(&self, depth: usize) -> bool {
        match self {
            Json::Arr(items) => items.iter().any(|v| v.too_deep(depth + 1)),
            Json::Obj(fields) => fields.iter().any(|(_, v)| v.too_deep(depth + 1)),
            Json::Deep(d) => depth + d > 127,
            _ => false,
        }
    }
}

fn s(v: &str) -> Json {
    Json::Str(v.to_owned())
}

/// Any JSON value, a few levels deep; object keys from a small set, so duplicates
/// happen.
fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|n| Json::Num(n.to_string())),
        proptest::sample::select(vec![
            "1e400",
            "-1e400",
            "1e300",
            "-0",
            "0.5",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "1700003600.9",
        ])
        .prop_map(|n| Json::Num(n.to_owned())),
        "[a-z\"\\\\\u{0}-\u{1f}é]{0,6}".prop_map(Json::Str),
        (100usize..140).prop_map(Json::Deep),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Arr),
            proptest::collection::vec(("[abc]", inner), 0..4).prop_map(Json::Obj),
        ]
    })
}

/// What to do to a valid payload.
#[derive(Debug, Clone)]
enum Change {
    /// Add an unknown claim (top level, or inside `kubernetes.io`).
    Unknown {
        inner: bool,
        key: String,
        value: Json,
    },
    /// Repeat a claim (index into the claims), with the same or another value.
    Duplicate {
        inner: bool,
        index: usize,
        value: Option<Json>,
    },
    /// Give a known claim a value of another JSON type or a number out of range.
    WrongType {
        inner: bool,
        index: usize,
        value: Json,
    },
}

fn change() -> impl Strategy<Value = Change> {
    let wrong = prop_oneof![
        any::<bool>().prop_map(Json::Bool),
        Just(Json::Num("1e400".into())),
        Just(Json::Num("1e300".into())),
        Just(Json::Num("18446744073709551615".into())),
        Just(Json::Arr(vec![Json::Num("1".into())])),
        Just(Json::Obj(vec![("a".into(), Json::Null)])),
        Just(s("1700003600")),
    ];
    prop_oneof![
        (any::<bool>(), "[a-z/.]{1,12}", any_json())
            .prop_map(|(inner, key, value)| Change::Unknown { inner, key, value }),
        (any::<bool>(), any::<usize>(), prop::option::of(any_json())).prop_map(
            |(inner, index, value)| Change::Duplicate {
                inner,
                index,
                value
            }
        ),
        (any::<bool>(), any::<usize>(), wrong).prop_map(|(inner, index, value)| {
            Change::WrongType {
                inner,
                index,
                value,
            }
        }),
    ]
}

#[derive(Debug)]
struct Payload {
    top: Vec<(String, Json)>,
    inner: Vec<(String, Json)>,
}

impl Payload {
    fn valid(ns: &str, sa: &str, pod: &str) -> Self {
        let r = |n: &str| {
            Json::Obj(vec![
                ("name".into(), s(n)),
                ("uid".into(), s(&format!("{n}-uid"))),
            ])
        };
        Payload {
            top: vec![
                ("aud".into(), Json::Arr(vec![s(ISSUER)])),
                ("exp".into(), Json::Num((NOW + 3600).to_string())),
                ("iat".into(), Json::Num((NOW - 10).to_string())),
                ("iss".into(), s(ISSUER)),
                ("jti".into(), s("0f8e6a2c")),
                ("nbf".into(), Json::Num((NOW - 10).to_string())),
                ("sub".into(), s(&format!("system:serviceaccount:{ns}:{sa}"))),
            ],
            inner: vec![
                ("namespace".into(), s(ns)),
                ("pod".into(), r(pod)),
                ("serviceaccount".into(), r(sa)),
            ],
        }
    }

    fn to_json(&self) -> String {
        let mut top = self.top.clone();
        top.push(("kubernetes.io".into(), Json::Obj(self.inner.clone())));
        let mut out = String::new();
        Json::Obj(top).write(&mut out);
        out
    }
}

/// What the review must answer for a changed payload.
#[derive(Debug, PartialEq)]
enum Expect {
    Authenticated,
    /// Exactly this error text.
    Error(&'static str),
    /// Some error.
    AnyError,
    /// Not predicted (a claim got another value of its own type).
    Either,
}

/// Numbers serde_json cannot read at all (out of f64's range).
fn unreadable(v: &Json) -> bool {
    match v {
        Json::Num(n) => n.ends_with("e400"),
        Json::Arr(items) => items.iter().any(unreadable),
        Json::Obj(fields) => fields.iter().any(|(_, v)| unreadable(v)),
        _ => false,
    }
}

/// A known claim replaced by `new`: `Some(true)` when the claim can no longer be
/// read (wrong JSON type, a date that does not fit an int64), `None` when it is only
/// another value of the right type.
fn wrong_type(original: &Json, new: &Json) -> Option<bool> {
    match (original, new) {
        (Json::Num(_), Json::Num(n)) => n.parse::<i64>().is_err().then_some(true),
        (Json::Str(_), Json::Str(_)) | (Json::Obj(_), Json::Obj(_)) => None,
        (Json::Arr(_), Json::Arr(items)) => items
            .iter()
            .any(|i| !matches!(i, Json::Str(_)))
            .then_some(true),
        _ => Some(true),
    }
}

fn expect(p: &Payload, must_fail: bool, uncertain: bool) -> Expect {
    let mut top = p.top.clone();
    top.push(("kubernetes.io".into(), Json::Obj(p.inner.clone())));
    let all = Json::Obj(top);
    let (deep, dup, bad_number) = (all.too_deep(0), all.has_duplicates(), unreadable(&all));
    match (deep, dup, bad_number) {
        // Not JSON serde_json will read (depth limit): no authenticator claims it.
        (true, false, false) => Expect::Error(badge_core::review::INVALID_BEARER_TOKEN),
        // Duplicate keys, before any claim is looked at.
        (false, true, false) => Expect::Error(MALFORMED_TOKEN),
        // Several problems: which one the reader meets first depends on the order.
        (false, false, false) if must_fail => Expect::AnyError,
        (false, false, false) if uncertain => Expect::Either,
        (false, false, false) => Expect::Authenticated,
        _ => Expect::AnyError,
    }
}

/// Applies a change.
fn apply_change(p: &mut Payload, c: &Change) {
    match c {
        Change::Unknown { inner, key, value } => {
            let fields = if *inner { &mut p.inner } else { &mut p.top };
            let known = [
                "aud",
                "exp",
                "iat",
                "iss",
                "jti",
                "nbf",
                "sub",
                "kubernetes.io",
            ];
            let inner_known = [
                "namespace",
                "pod",
                "serviceaccount",
                "node",
                "secret",
                "warnafter",
            ];
            let is_known = if *inner {
                inner_known.contains(&key.as_str())
            } else {
                known.contains(&key.as_str())
            };
            // Claims Badge reads (e.g. legacy ones) are not "unknown": keep them out.
            if !is_known && !key.starts_with("kubernetes.io") {
                fields.push((key.clone(), value.clone()));
            }
        }
        Change::Duplicate {
            inner,
            index,
            value,
        } => {
            let fields = if *inner { &mut p.inner } else { &mut p.top };
            let (k, v) = fields[index % fields.len()].clone();
            fields.push((k, value.clone().unwrap_or(v)));
        }
        Change::WrongType {
            inner,
            index,
            value,
        } => {
            // Only the known claims (the first ones: changes append).
            let (fields, known) = if *inner {
                (&mut p.inner, 3)
            } else {
                (&mut p.top, 7)
            };
            let i = index % known;
            fields[i].1 = value.clone();
        }
    }
}

#[test]
fn signed_payloads_are_judged_as_kubernetes_reads_them() {
    let stats = Stats::new("review/signed-structured");
    let strategy = (
        name(),
        name(),
        name(),
        proptest::collection::vec(change(), 0..4),
    );
    let lookup = Live { legacy_token: None };
    let s = settings();
    stats.run(1500, &strategy, |(ns, sa, pod, changes)| {
        let mut p = Payload::valid(&ns, &sa, &pod);
        for c in &changes {
            apply_change(&mut p, c);
        }
        // Judge each known claim by its final value (a later change may undo one).
        let valid = Payload::valid(&ns, &sa, &pod);
        let (mut must_fail, mut uncertain) = (false, false);
        let pairs = valid
            .top
            .iter()
            .zip(&p.top)
            .chain(valid.inner.iter().zip(&p.inner));
        for ((_, was), (_, now)) in pairs {
            if format!("{was:?}") != format!("{now:?}") {
                match wrong_type(was, now) {
                    Some(true) => must_fail = true,
                    _ => uncertain = true,
                }
            }
        }
        let payload = p.to_json();
        let key = &keys().es256;
        let token = key
            .sign_jwt(&key.jwt_header(false), payload.as_bytes())
            .unwrap();
        let want = expect(&p, must_fail, uncertain);
        stats.case(token.len(), || {
            let r = review(&token, &[], &s, &keys().set, &lookup, now()).map_err(|e| e.to_string());
            match (&want, &r) {
                (Expect::Authenticated, Ok(a)) => {
                    prop_assert_eq!(
                        &a.user.username,
                        &format!("system:serviceaccount:{ns}:{sa}")
                    );
                    prop_assert_eq!(&a.user.uid, &format!("{sa}-uid"));
                    prop_assert_eq!(
                        a.user.extra.get("authentication.kubernetes.io/pod-name"),
                        Some(&vec![pod.clone()])
                    );
                }
                (Expect::Error(text), Err(e)) => prop_assert_eq!(e.as_str(), *text, "{}", payload),
                (Expect::AnyError, Err(_)) | (Expect::Either, _) => {}
                _ => prop_assert!(false, "expected {:?}, got {:?} for {}", want, r, payload),
            }
            Ok(())
        })
    });
}

#[test]
fn a_deeply_nested_payload_is_refused_quickly() {
    // 1 MiB of nesting in the payload (under the 64 KiB token cap it is refused by
    // length; with the cap raised, serde_json's depth limit stops it).
    let depth = 1 << 19;
    let payload = format!(
        "{{\"iss\":\"{ISSUER}\",\"x\":{}0{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let key = &keys().es256;
    let token = key
        .sign_jwt(&key.jwt_header(false), payload.as_bytes())
        .unwrap();
    let mut s = settings();
    s.max_token_len = 4 << 20;
    let lookup = Live { legacy_token: None };
    prop_support::worst_case(
        "review/worst/1MiB-nesting",
        token.len(),
        Duration::from_secs(2),
        || {
            let r = review(&token, &[], &s, &keys().set, &lookup, now()).map_err(|e| e.to_string());
            assert_eq!(r.unwrap_err(), badge_core::review::INVALID_BEARER_TOKEN);
        },
    );
    let default_cap = settings();
    prop_support::worst_case(
        "review/worst/over-length",
        token.len(),
        Duration::from_millis(50),
        || {
            let r = review(&token, &[], &default_cap, &keys().set, &lookup, now())
                .map_err(|e| e.to_string());
            assert!(r.unwrap_err().starts_with("token is too long"));
        },
    );
}
