//! Property tests of page tokens (`badge_core::page_token`), issue 13: no panic on
//! any input, and a token that was altered in any way is refused or decodes to
//! exactly what was encoded; a token is only accepted for the list it was issued
//! for.

#![allow(clippy::unwrap_used)]

mod prop_support;

use badge_core::{Kind, LabelSelector, PageToken};
use prop_support::{Stats, apply, edits};
use proptest::prelude::*;

const KINDS: [Kind; 3] = [Kind::Secret, Kind::Pod, Kind::ServiceAccount];

fn selector() -> impl Strategy<Value = LabelSelector> {
    proptest::sample::select(vec!["", "app=web", "a in (x,y),!b", "tier!=db,z"])
        .prop_map(|s| LabelSelector::parse(s).unwrap())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,20}",
        any::<String>(),
        // JSON-significant characters in the strings the token carries.
        "[\"\\\\{}:,\\u{0}-\\u{1f}é\u{1F600}]{0,8}",
    ]
}

/// (kind index, scope, selector, after namespace, after name).
fn token() -> impl Strategy<Value = (usize, String, LabelSelector, String, String)> {
    (0..KINDS.len(), text(), selector(), text(), text())
}

#[test]
fn tokens_round_trip_and_only_for_their_list() {
    let stats = Stats::new("page_token/round-trip");
    let strategy = (token(), 0..KINDS.len(), text(), selector());
    stats.run(
        2000,
        &strategy,
        |((k, scope, sel, ns, name), k2, scope2, sel2)| {
            let t = PageToken::new(KINDS[k], &scope, &sel, &ns, &name);
            let encoded = t.encode();
            stats.case(encoded.len(), || {
                let back = PageToken::decode(&encoded, KINDS[k], &scope, &sel);
                prop_assert_eq!(back.as_ref().ok(), Some(&t));
                // Another list: refused, unless it is the same list.
                let same = k2 == k && scope2 == scope && sel2 == sel;
                let other = PageToken::decode(&encoded, KINDS[k2], &scope2, &sel2);
                prop_assert_eq!(other.is_ok(), same);
                Ok(())
            })
        },
    );
}

#[test]
fn altered_tokens_are_refused_or_decode_to_what_was_encoded() {
    let stats = Stats::new("page_token/mutated");
    let strategy = (token(), edits(4));
    stats.run(4000, &strategy, |((k, scope, sel, ns, name), edits)| {
        let t = PageToken::new(KINDS[k], &scope, &sel, &ns, &name);
        let encoded = t.encode();
        let altered = String::from_utf8_lossy(&apply(encoded.as_bytes(), &edits)).into_owned();
        stats.case(altered.len(), || {
            if let Ok(decoded) = PageToken::decode(&altered, KINDS[k], &scope, &sel) {
                // Base64url without padding is canonical here, so only the token
                // itself decodes.
                prop_assert_eq!(&decoded, &t);
                prop_assert_eq!(&altered, &encoded, "a different string was accepted");
            }
            Ok(())
        })
    });
}

#[test]
fn arbitrary_strings_are_refused_without_panic() {
    let stats = Stats::new("page_token/arbitrary");
    let strategy = prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,200}"];
    stats.run(4000, &strategy, |s| {
        stats.case(s.len(), || {
            let r = PageToken::decode_optional(&s, Kind::Secret, "", &LabelSelector::everything());
            if s.is_empty() {
                prop_assert!(matches!(r, Ok(None)));
            } else {
                // A random string passing a 64-bit check is not expected in any run.
                prop_assert!(r.is_err(), "{:?} was accepted", s);
            }
            Ok(())
        })
    });
}

#[test]
fn valid_check_with_a_crafted_payload_is_refused_or_exact() {
    // The check is public (see the module's docs), so a client can mint a token over
    // any payload: the JSON must still be exactly a page token (no unknown or
    // duplicate fields accepted silently, no wrong types).
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};
    let stats = Stats::new("page_token/crafted-payload");
    let field = prop_oneof![
        Just("\"k\":\"Secret\"".to_owned()),
        Just("\"s\":\"\"".to_owned()),
        Just("\"l\":\"\"".to_owned()),
        Just("\"n\":\"ns\"".to_owned()),
        Just("\"m\":\"name\"".to_owned()),
        Just("\"x\":1".to_owned()),
        Just("\"m\":7".to_owned()),
        Just("\"n\":null".to_owned()),
        Just("\"m\":\"other\"".to_owned()),
        Just("\"k\":[\"Secret\"]".to_owned()),
    ];
    let strategy = proptest::collection::vec(field, 0..8);
    stats.run(2000, &strategy, |fields| {
        let payload = format!("{{{}}}", fields.join(","));
        let sum = Sha256::new()
            .chain_update(badge_core::page_token::DOMAIN)
            .chain_update(payload.as_bytes())
            .finalize();
        let mut raw = sum[..8].to_vec();
        raw.extend_from_slice(payload.as_bytes());
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        stats.case(token.len(), || {
            let r = PageToken::decode(&token, Kind::Secret, "", &LabelSelector::everything());
            if let Ok(t) = r {
                // Exactly the five fields, once each, with string values.
                let mut names: Vec<&str> = fields.iter().map(|f| &f[1..2]).collect();
                names.sort_unstable();
                prop_assert_eq!(names, vec!["k", "l", "m", "n", "s"], "{}", payload);
                prop_assert_eq!(t.kind.as_str(), "Secret");
            }
            Ok(())
        })
    });
}
