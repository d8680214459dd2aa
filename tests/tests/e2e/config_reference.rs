//! README's "## Configuration" table stays in step with the config types: every
//! key a binary accepts is in the table, and every key in the table is accepted.
//!
//! The keys are enumerated from the real loader (`badge_runtime::config::load`):
//! every config struct denies unknown fields, so setting `<table>.__probe` answers
//! "unknown field `__probe`, expected one of ..." with that table's fields, and a
//! key that is no table answers something else (a type error).
//!
//! Table rows: an optional scope (`identity`, `issuer`, `review`; none: every
//! binary), then keys separated by ` / `. The first key is a full path; each later
//! one replaces the first key's last segment (`server.tls.ca` / `cert` →
//! `server.tls.cert`). A key ending in `.*` stands for every key under it.

use std::collections::{BTreeMap, BTreeSet};

use badge_runtime::config::{ConfigError, Validate, load};
use serde::de::DeserializeOwned;

const PROBE: &str = "__probe";

/// The fields of the table at `path`, or None when `path` is not a table.
fn fields<T: DeserializeOwned + Validate>(path: &[String]) -> Option<Vec<String>> {
    let key: Vec<&str> = path.iter().map(String::as_str).chain([PROBE]).collect();
    let message = match load::<T>(None, vec![], &[format!("{}=1", key.join("."))]) {
        Err(ConfigError::Deserialize { message }) => message,
        Err(e) => panic!("probing {}: unexpected {e}", key.join(".")),
        Ok(_) => panic!("probing {}: accepted", key.join(".")),
    };
    let rest = message.strip_prefix(&format!("unknown field `{PROBE}`, "))?;
    let expected = rest
        .strip_prefix("expected ")
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    if expected.starts_with("there are no fields") {
        return Some(vec![]);
    }
    // "`a`", "`a` or `b`", "one of `a`, `b`, `c`"
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every leaf key `T` accepts, as `section.key` paths.
fn keys<T: DeserializeOwned + Validate>() -> BTreeSet<String> {
    fn walk<T: DeserializeOwned + Validate>(path: Vec<String>, out: &mut BTreeSet<String>) {
        match fields::<T>(&path) {
            Some(fs) => {
                assert!(!fs.is_empty(), "{} has no fields", path.join("."));
                for f in fs {
                    let mut p = path.clone();
                    p.push(f);
                    walk::<T>(p, out);
                }
            }
            None => {
                out.insert(path.join("."));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk::<T>(vec![], &mut out);
    out
}

/// README's table: key pattern → the binaries it is documented for.
fn readme_table() -> Vec<(String, Vec<&'static str>)> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a \"## Configuration\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = Vec::new();
    let mut in_table = false;
    for line in section.lines() {
        if line.starts_with("| key |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cell = line.split('|').nth(1).expect("a cell").trim();
        let (scope, keys) = match cell.split_once(' ') {
            Some((s, rest)) if !s.starts_with('`') => (s, rest),
            _ => ("", cell),
        };
        let binaries = match scope {
            "" => vec!["identity", "issuer", "review"],
            "identity" => vec!["identity"],
            "issuer" => vec!["issuer"],
            "review" => vec!["review"],
            other => panic!("README row {line:?}: unknown scope {other:?}"),
        };
        let mut parts = keys.split(" / ").map(|k| {
            k.trim()
                .strip_prefix('`')
                .and_then(|k| k.strip_suffix('`'))
                .unwrap_or_else(|| panic!("README row {line:?}: {k:?} is not `key`"))
                .to_string()
        });
        let first = parts.next().expect("a key");
        let parent = first
            .rsplit_once('.')
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| panic!("README row {line:?}: {first:?} has no section"));
        out.push((first, binaries.clone()));
        for k in parts {
            out.push((format!("{parent}.{k}"), binaries.clone()));
        }
    }
    assert!(out.len() > 20, "README table not found: {out:?}");
    out
}

fn check(binary: &str, accepted: &BTreeSet<String>) {
    let documented: Vec<String> = readme_table()
        .into_iter()
        .filter(|(_, b)| b.contains(&binary))
        .map(|(k, _)| k)
        .collect();
    let covers = |pattern: &str, key: &str| match pattern.strip_suffix(".*") {
        Some(prefix) => key.starts_with(&format!("{prefix}.")),
        None => pattern == key,
    };
    let mut problems = Vec::new();
    for pattern in &documented {
        if !accepted.iter().any(|k| covers(pattern, k)) {
            problems.push(format!(
                "README documents {binary} `{pattern}`, which the config types do not accept"
            ));
        }
    }
    for key in accepted {
        if !documented.iter().any(|p| covers(p, key)) {
            problems.push(format!(
                "{binary} accepts `{key}`, missing from README's Configuration table"
            ));
        }
    }
    let mut seen = BTreeMap::new();
    for pattern in &documented {
        *seen.entry(pattern).or_insert(0) += 1;
    }
    for (p, n) in seen {
        if n > 1 {
            problems.push(format!("README lists {binary} `{p}` {n} times"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_probe_sees_known_keys() {
    // Guards the enumeration itself: it must find nested tables, optional
    // sections and leaves, or the checks below would pass vacuously.
    let identity = keys::<badge_identity::IdentityConfig>();
    for k in [
        "server.listen",
        "server.tls.ca",
        "database.url",
        "log.format",
        "feed.retention_seconds",
    ] {
        assert!(identity.contains(k), "{k} missing from {identity:?}");
    }
    let review = keys::<badge_token_review::ReviewConfig>();
    for k in ["webhook.client_ca", "identity.tls.key", "review.issuers"] {
        assert!(review.contains(k), "{k} missing from {review:?}");
    }
}

#[test]
fn readme_documents_every_identity_key() {
    check("identity", &keys::<badge_identity::IdentityConfig>());
}

#[test]
fn readme_documents_every_token_issuer_key() {
    check("issuer", &keys::<badge_token_issuer::IssuerConfig>());
}

#[test]
fn readme_documents_every_token_review_key() {
    check("review", &keys::<badge_token_review::ReviewConfig>());
}
