//! Property tests of the webhook's TokenReview body reader
//! (`badge_token_review::webhook::parse_request`), issue 13: no panic and bounded
//! time for any body; a body is accepted exactly when Kubernetes' reading of it is a
//! TokenReview of a supported version with a non-empty token, and then yields
//! exactly its token and audiences; a refusal never quotes the token.

#![allow(clippy::unwrap_used)]

#[path = "../../core/tests/prop_support/mod.rs"]
mod prop_support;

use std::time::Duration;

use badge_token_review::webhook::{API_VERSIONS, parse_request};
use prop_support::{Stats, apply, edits, worst_case};
use proptest::prelude::*;
use serde_json::Value;

/// What Kubernetes (Go's encoding/json: the last duplicate key wins) reads, written
/// independently of the parser: `Some((api_version, token, audiences))` when the
/// body must be accepted.
fn model(body: &[u8]) -> Option<(String, String, Vec<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let api = obj.get("apiVersion")?.as_str()?;
    if !API_VERSIONS.contains(&api) || obj.get("kind")?.as_str()? != "TokenReview" {
        return None;
    }
    let spec = obj.get("spec")?.as_object()?;
    let token = spec.get("token")?.as_str()?;
    if token.is_empty() {
        return None;
    }
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<_>>()?,
        Some(_) => return None,
    };
    Some((api.to_owned(), token.to_owned(), audiences))
}

fn check(body: &[u8], token: Option<&str>) -> Result<(), TestCaseError> {
    let got = parse_request(body);
    match (&got, model(body)) {
        (Ok(r), Some((api, tok, auds))) => {
            prop_assert_eq!(&r.api_version, &api);
            prop_assert_eq!(&r.token, &tok);
            prop_assert_eq!(&r.audiences, &auds);
        }
        (Err(refusal), None) => {
            prop_assert_eq!(refusal.code.as_u16(), 400);
            if let Some(t) = token.filter(|t| t.len() >= 6) {
                prop_assert!(
                    !refusal.message.contains(t),
                    "the refusal quotes the token: {}",
                    refusal.message
                );
            }
        }
        (got, want) => prop_assert!(false, "parse_request: {:?}, Kubernetes: {:?}", got, want),
    }
    Ok(())
}

#[test]
fn arbitrary_bodies() {
    let stats = Stats::new("webhook/arbitrary");
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[{}\\[\\]\":,a-z0-9 .-]{0,120}".prop_map(String::into_bytes),
    ];
    stats.run(4000, &strategy, |body| {
        stats.case(body.len(), || check(&body, None))
    });
}

/// A JSON value as text (so duplicate keys and odd numbers can be written).
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[\"a\",1]".to_owned()),
        "\"[a-z0-9.\\\\/-]{0,12}\"",
        (1usize..200).prop_map(|d| format!("{}0{}", "[".repeat(d), "]".repeat(d))),
    ]
}

fn api_version() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"authentication.k8s.io/v1\"".to_owned()),
        Just("\"authentication.k8s.io/v1beta1\"".to_owned()),
        Just("\"authentication.k8s.io/v2\"".to_owned()),
        scalar(),
    ]
}

fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("\"TokenReview\"".to_owned()),
        1 => Just("\"SubjectAccessReview\"".to_owned()),
        1 => scalar(),
    ]
}

/// (body, token text when the token field is a string).
fn body() -> impl Strategy<Value = (String, Option<String>)> {
    let token = prop_oneof![
        3 => "[A-Za-z0-9._-]{1,40}".prop_map(Some),
        1 => Just(Some(String::new())),
        1 => Just(None),
    ];
    let audiences = prop_oneof![
        Just(None),
        proptest::collection::vec("\"[a-z:/.]{0,12}\"", 0..3)
            .prop_map(|a| Some(format!("[{}]", a.join(",")))),
        scalar().prop_map(Some),
    ];
    let field = |k: &'static str| proptest::option::of((Just(k), any::<bool>()));
    (
        api_version(),
        kind(),
        token,
        scalar(),
        audiences,
        proptest::collection::vec(("[a-z]{1,6}|token|spec|kind", scalar()), 0..3),
        field("apiVersion"),
        field("token"),
        any::<bool>(),
    )
        .prop_map(
            |(api, kind, token, other_token, audiences, extra, dup_top, dup_token, spec_null)| {
                let token_json = match &token {
                    Some(t) => serde_json::to_string(t).unwrap(),
                    None => other_token,
                };
                let mut spec = vec![format!("\"token\":{token_json}")];
                if let Some(a) = audiences {
                    spec.push(format!("\"audiences\":{a}"));
                }
                if let Some((_, first)) = dup_token {
                    // A duplicate token: the last one counts (as in Go).
                    let dup = "\"token\":\"dup-token-value\"".to_owned();
                    if first {
                        spec.insert(0, dup)
                    } else {
                        spec.push(dup)
                    }
                }
                let mut top = vec![format!("\"apiVersion\":{api}"), format!("\"kind\":{kind}")];
                if let Some((_, first)) = dup_top {
                    let dup = "\"apiVersion\":\"authentication.k8s.io/v1\"".to_owned();
                    if first {
                        top.insert(0, dup)
                    } else {
                        top.push(dup)
                    }
                }
                for (k, v) in extra {
                    top.push(format!("{}:{v}", serde_json::to_string(&k).unwrap()));
                }
                if spec_null {
                    top.push("\"spec\":null".to_owned());
                } else {
                    top.push(format!("\"spec\":{{{}}}", spec.join(",")));
                }
                (
                    format!("{{{}}}", top.join(",")),
                    token.filter(|t| !t.is_empty()),
                )
            },
        )
}

#[test]
fn structured_bodies_are_read_as_kubernetes_reads_them() {
    let stats = Stats::new("webhook/structured");
    stats.run(4000, &body(), |(body, token)| {
        stats.case(body.len(), || check(body.as_bytes(), token.as_deref()))
    });
}

#[test]
fn mutated_bodies() {
    let stats = Stats::new("webhook/mutated");
    stats.run(4000, &(body(), edits(4)), |((body, token), edits)| {
        let b = apply(body.as_bytes(), &edits);
        stats.case(b.len(), || check(&b, token.as_deref()))
    });
}

#[test]
fn one_mebibyte_bodies_finish_quickly() {
    const MIB: usize = 1 << 20;
    let deep = "[".repeat(MIB);
    let wide = format!("[{}0]", "0,".repeat(MIB / 2 - 2));
    let long_token = format!(
        "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{}\"}}}}",
        "a".repeat(MIB - 100)
    );
    let many_keys = format!(
        "{{{}\"kind\":\"TokenReview\"}}",
        (0..MIB / 16)
            .map(|i| format!("\"k{i:08}\":0,"))
            .collect::<String>()
    );
    let cases: [(&'static str, &str); 4] = [
        ("webhook/worst/1MiB-nesting", &deep),
        ("webhook/worst/1MiB-array", &wide),
        ("webhook/worst/1MiB-token", &long_token),
        ("webhook/worst/1MiB-keys", &many_keys),
    ];
    for (name, body) in cases {
        worst_case(name, body.len(), Duration::from_secs(2), || {
            parse_request(body.as_bytes()).map(|r| r.token.len())
        });
    }
}
