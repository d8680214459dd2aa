//! Property tests of the label-selector parser (`badge_core::selector`), issue 13:
//! no panic on any input, bounded time, and no selector that means something else
//! than what was written: every selector that parses prints a canonical form that
//! parses back to an equal selector, and a selector built from known requirements
//! matches exactly the label sets those requirements describe.

#![allow(clippy::unwrap_used)]

mod prop_support;

use std::collections::BTreeMap;
use std::time::Duration;

use badge_core::LabelSelector;
use prop_support::{Stats, apply, edits, worst_case};
use proptest::prelude::*;

/// A selector that parses must print a canonical form that parses to an equal
/// selector and prints the same again (page tokens carry this form, and a page
/// token is only accepted for an equal selector).
fn check_round_trip(input: &str) -> Result<(), TestCaseError> {
    if let Ok(sel) = LabelSelector::parse(input) {
        let canonical = sel.to_string();
        let again = LabelSelector::parse(&canonical).map_err(|e| {
            TestCaseError::fail(format!(
                "{input:?} parsed, but its canonical form {canonical:?} does not: {e}"
            ))
        })?;
        prop_assert_eq!(
            &again,
            &sel,
            "canonical form {:?} of {:?}",
            canonical,
            input
        );
        prop_assert_eq!(again.to_string(), canonical);
    }
    Ok(())
}

#[test]
fn arbitrary_strings_never_panic_and_round_trip() {
    let stats = Stats::new("selector/arbitrary-unicode");
    stats.run(3000, &any::<String>(), |s| {
        stats.case(s.len(), || check_round_trip(&s))
    });
}

#[test]
fn selector_alphabet_strings_never_panic_and_round_trip() {
    // Mostly the characters the grammar gives meaning to, so far more inputs get
    // past the lexer than with arbitrary Unicode.
    let stats = Stats::new("selector/alphabet");
    let s = "[a-c!=,()<> \t./_-]{0,80}|(in|notin|[a-c]|[!=,()] ){0,30}";
    stats.run(5000, &s, |s| stats.case(s.len(), || check_round_trip(&s)));
}

// ---- structure-aware: selectors built from requirements with a known meaning

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    DoubleEq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone)]
struct Req {
    key: String,
    op: Op,
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec!["app", "tier", "a", "x.y/z", "example.com/app-1"])
            .prop_map(str::to_owned),
        "[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?",
        "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}/[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?",
    ]
    // `in` and `notin` are keywords where a key is expected (as in Kubernetes).
    .prop_filter("keyword key", |k| k != "in" && k != "notin")
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        proptest::sample::select(vec!["v1", "prod", "in", "notin", "a-b.c_d"])
            .prop_map(str::to_owned),
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?",
    ]
}

fn values() -> impl Strategy<Value = Vec<String>> {
    // At least one non-empty value: `k in ()` is an error by design.
    (value(), proptest::collection::vec(value(), 0..4)).prop_map(|(first, rest)| {
        let mut v = vec![if first.is_empty() {
            "v".to_owned()
        } else {
            first
        }];
        v.extend(rest);
        v
    })
}

fn req() -> impl Strategy<Value = Req> {
    let op = prop_oneof![
        value().prop_map(Op::Eq),
        value().prop_map(Op::DoubleEq),
        value().prop_map(Op::NotEq),
        values().prop_map(Op::In),
        values().prop_map(Op::NotIn),
        Just(Op::Exists),
        Just(Op::NotExists),
    ];
    (key(), op).prop_map(|(key, op)| Req { key, op })
}

/// Optional whitespace, as users type it.
fn ws() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(String::new()), 1 => " {1,2}|\t"]
}

/// The requirements rendered with the given spacing (cycled).
fn render(reqs: &[Req], spaces: &[String]) -> String {
    let mut i = 0;
    let mut sp = || {
        i += 1;
        spaces
            .get(i % spaces.len().max(1))
            .cloned()
            .unwrap_or_default()
    };
    let mut out = String::new();
    for (n, r) in reqs.iter().enumerate() {
        if n > 0 {
            out += &format!("{},{}", sp(), sp());
        }
        out += &sp();
        let k = &r.key;
        match &r.op {
            Op::Eq(v) => out += &format!("{k}{}={}{v}", sp(), sp()),
            Op::DoubleEq(v) => out += &format!("{k}{}=={}{v}", sp(), sp()),
            Op::NotEq(v) => out += &format!("{k}{}!={}{v}", sp(), sp()),
            // `k in(…)` without a space is fine for the lexer; `kin (…)` is not.
            Op::In(vs) => out += &format!("{k} in{}({}){}", sp(), vs.join(","), sp()),
            Op::NotIn(vs) => out += &format!("{k} notin{}({}){}", sp(), vs.join(","), sp()),
            Op::Exists => out += k,
            Op::NotExists => out += &format!("!{}{k}", sp()),
        }
    }
    out
}

/// What the requirements mean, written independently of the parser.
fn model_matches(reqs: &[Req], labels: &BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| {
        let v = labels.get(&r.key).map(String::as_str);
        match &r.op {
            Op::Eq(want) | Op::DoubleEq(want) => v == Some(want.as_str()),
            Op::NotEq(want) => v != Some(want.as_str()),
            Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
            Op::NotIn(set) => v.is_none_or(|v| set.iter().all(|s| s != v)),
            Op::Exists => v.is_some(),
            Op::NotExists => v.is_none(),
        }
    })
}

/// Label sets drawn from the selector's own keys and values (plus others), so that
/// both outcomes of every requirement are exercised.
fn labels_for(reqs: &[Req], picks: &[(usize, usize, bool)]) -> BTreeMap<String, String> {
    let mut vals: Vec<String> = vec![String::new(), "other".to_owned()];
    for r in reqs {
        match &r.op {
            Op::Eq(v) | Op::DoubleEq(v) | Op::NotEq(v) => vals.push(v.clone()),
            Op::In(vs) | Op::NotIn(vs) => vals.extend(vs.iter().cloned()),
            Op::Exists | Op::NotExists => {}
        }
    }
    let mut labels = BTreeMap::new();
    if reqs.is_empty() {
        return labels;
    }
    for &(k, v, present) in picks {
        if present {
            labels.insert(
                reqs[k % reqs.len()].key.clone(),
                vals[v % vals.len()].clone(),
            );
        }
    }
    labels
}

#[test]
fn built_selectors_parse_and_match_what_they_say() {
    let stats = Stats::new("selector/structured");
    let strategy = (
        proptest::collection::vec(req(), 0..6),
        proptest::collection::vec(ws(), 1..8),
        proptest::collection::vec(
            proptest::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 0..6),
            1..6,
        ),
    );
    stats.run(2000, &strategy, |(reqs, spaces, label_sets)| {
        let text = render(&reqs, &spaces);
        stats.case(text.len(), || {
            let sel = LabelSelector::parse(&text)
                .map_err(|e| TestCaseError::fail(format!("{text:?} was refused: {e}")))?;
            check_round_trip(&text)?;
            let canonical = LabelSelector::parse(&sel.to_string()).unwrap();
            for picks in &label_sets {
                let labels = labels_for(&reqs, picks);
                let want = model_matches(&reqs, &labels);
                prop_assert_eq!(sel.matches(&labels), want, "{:?} on {:?}", text, labels);
                prop_assert_eq!(canonical.matches(&labels), want);
            }
            Ok(())
        })
    });
}

#[test]
fn mutated_selectors_never_panic_and_round_trip() {
    let stats = Stats::new("selector/mutated");
    let strategy = (
        proptest::collection::vec(req(), 1..5),
        proptest::collection::vec(ws(), 1..4),
        edits(4),
    );
    stats.run(3000, &strategy, |(reqs, spaces, edits)| {
        let bytes = apply(render(&reqs, &spaces).as_bytes(), &edits);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        stats.case(text.len(), || check_round_trip(&text))
    });
}

// ---- bounded time on large inputs

const MIB: usize = 1 << 20;
/// 1 MiB in a debug build on a shared 2-core machine. Linear parsing takes tens of
/// milliseconds for most shapes; 262,144 requirements (`a=b,` × 256 Ki) allocate
/// one object each and took 2.04 s once with other builds saturating both cores.
/// Quadratic behaviour on these inputs would take minutes, so 5 s still catches it.
const MIB_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn one_mebibyte_selectors_finish_quickly() {
    let many_values = format!("a in ({})", "v,".repeat(MIB / 2 - 4)) + "v)";
    let many_reqs = "a=b,".repeat(MIB / 4 - 1) + "a=b";
    let cases: Vec<(&'static str, String)> = vec![
        ("selector/worst/1MiB-set", many_values),
        ("selector/worst/1MiB-requirements", many_reqs),
        ("selector/worst/1MiB-bangs", "!".repeat(MIB)),
        ("selector/worst/1MiB-parens", "(".repeat(MIB)),
        ("selector/worst/1MiB-key", "a".repeat(MIB)),
        ("selector/worst/1MiB-spaces", " ".repeat(MIB)),
        ("selector/worst/1MiB-commas", ",".repeat(MIB)),
        ("selector/worst/1MiB-multibyte", "é".repeat(MIB / 2)),
    ];
    for (name, input) in cases {
        worst_case(name, input.len(), MIB_LIMIT, || {
            LabelSelector::parse(&input).map(|s| s.to_string())
        });
    }
}

/// Found by `mutated_selectors_never_panic_and_round_trip`: `a in (,)` is the set
/// {""} (as in Kubernetes), but its canonical form was `a in ()`, which is refused.
#[test]
fn a_set_of_only_the_empty_value_round_trips() {
    for input in ["a in (,)", "a notin (,)", "a in (,,)", "b=c, a in ( , )"] {
        let sel = LabelSelector::parse(input).unwrap();
        let canonical = sel.to_string();
        assert_eq!(
            LabelSelector::parse(&canonical),
            Ok(sel),
            "{input:?} → {canonical:?}"
        );
    }
    assert_eq!(
        LabelSelector::parse("a in (,)").unwrap().to_string(),
        "a in (,)"
    );
}
