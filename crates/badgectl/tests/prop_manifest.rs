//! Property tests of badgectl's Kubernetes YAML reader (`badgectl::manifest`),
//! issue 13: no panic and bounded time for any text (including YAML alias bombs and
//! deep nesting); a manifest that is read back from its own JSON form gives the same
//! objects (nothing is added, dropped or reinterpreted on the way to Badge's
//! messages).

#![allow(clippy::unwrap_used)]

#[path = "../../core/tests/prop_support/mod.rs"]
mod prop_support;

use std::time::Duration;

use badgectl::manifest::parse_text;
use prop_support::{Stats, apply, edits, worst_case};
use proptest::prelude::*;

const SAMPLES: [&str; 6] = [
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: dev\n  labels:\n    team: a\n",
    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: dev\nsecrets:\n- name: web-token\n",
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ntype: Opaque\nstringData:\n  password: hunter2\ndata:\n  key: dmFsdWU=\n",
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  serviceAccountName: web\n  containers:\n  - name: c\n    image: nginx\n    env:\n    - name: A\n      valueFrom:\n        secretKeyRef: {name: s, key: password}\n  volumes:\n  - name: v\n    secret: {secretName: s}\n",
    "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\nrules:\n- apiGroups: [\"\"]\n  resources: [secrets]\n  verbs: [get, list]\n",
    "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: b}\nsubjects:\n- kind: ServiceAccount\n  name: web\n  namespace: dev\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\n",
];

/// Parses, and when that succeeds checks that each object's JSON form reads back
/// as the same object and message.
fn check(text: &str) -> Result<(), TestCaseError> {
    let Ok(docs) = parse_text(text, "", "default", None) else {
        return Ok(());
    };
    for d in docs {
        let json = d.object.to_json().to_string();
        let again = parse_text(&json, "", "default", None)
            .map_err(|e| TestCaseError::fail(format!("{json} does not read back: {e:?}")))?;
        prop_assert_eq!(again.len(), 1);
        prop_assert_eq!(&again[0].object, &d.object, "{}", json);
        prop_assert_eq!(&again[0].proto, &d.proto);
    }
    Ok(())
}

#[test]
fn arbitrary_texts() {
    let stats = Stats::new("manifest/arbitrary");
    let strategy = prop_oneof![any::<String>(), "[a-z:{}\\[\\],&*!|>#'\" \n-]{0,120}",];
    stats.run(3000, &strategy, |text| {
        stats.case(text.len(), || check(&text))
    });
}

#[test]
fn mutated_manifests() {
    let stats = Stats::new("manifest/mutated");
    let docs = proptest::collection::vec(proptest::sample::select(SAMPLES.to_vec()), 1..4);
    stats.run(1500, &(docs, edits(4)), |(docs, edits)| {
        let text = docs.join("---\n");
        let bytes = apply(text.as_bytes(), &edits);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        stats.case(text.len(), || check(&text))
    });
}

/// Found by `alias_bombs_and_deep_nesting_finish_quickly`: serde_yaml's scanner is
/// quadratic in flow nesting (64 KiB of `[` took 13 s) before its depth limit
/// applies; such text is now refused up front, naming the line.
#[test]
fn deep_flow_nesting_is_refused_up_front() {
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {}",
        "[".repeat(1 << 16)
    );
    let start = std::time::Instant::now();
    let err = parse_text(&text, "", "default", None).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        err,
        vec!["invalid YAML: nesting deeper than 128 levels at line 3".to_owned()]
    );
    // 100 levels are still read by serde_yaml (and refused by its own limit of 128
    // only past that).
    let ok = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{a: \"{}\"}}}}",
        "[".repeat(200)
    );
    assert!(
        parse_text(&ok, "", "default", None).is_ok(),
        "brackets in a quoted value count"
    );
}

#[test]
fn samples_read_and_round_trip() {
    for s in SAMPLES {
        assert!(parse_text(s, "", "default", None).is_ok(), "{s}");
        check(s).unwrap();
    }
}

#[test]
fn alias_bombs_and_deep_nesting_finish_quickly() {
    // "Billion laughs": each level doubles the expansion.
    let mut bomb =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  annotations:\n");
    bomb.push_str("    a0: &a0 [\"lol\",\"lol\"]\n");
    for i in 1..40 {
        bomb.push_str(&format!("    a{i}: &a{i} [*a{p},*a{p}]\n", p = i - 1));
    }
    const MIB: usize = 1 << 20;
    let deep_flow = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {}",
        "[".repeat(MIB)
    );
    let deep_block: String = (0..4000)
        .map(|i| format!("{}- \n", " ".repeat(i % 64)))
        .collect();
    let many_docs = "---\n".repeat(MIB / 4);
    let long_value = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
        "a".repeat(MIB)
    );
    let cases: [(&'static str, &str); 5] = [
        ("manifest/worst/alias-bomb", &bomb),
        ("manifest/worst/1MiB-flow-nesting", &deep_flow),
        ("manifest/worst/block-nesting", &deep_block),
        ("manifest/worst/1MiB-empty-documents", &many_docs),
        ("manifest/worst/1MiB-name", &long_value),
    ];
    for (name, text) in cases {
        worst_case(name, text.len(), Duration::from_secs(3), || {
            parse_text(text, "", "default", None).map(|d| d.len())
        });
    }
}
