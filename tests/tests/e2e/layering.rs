//! The layering the README's "Layout" describes, checked from every crate's
//! Cargo.toml: a crate gaining a dependency edge the design forbids fails here,
//! not in review. Only `[dependencies]` count (tests and tools may reach further).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which workspace crates each crate may depend on. Lower layers first; a crate
/// missing from this table fails the test, so a new crate gets a row on purpose.
const ALLOWED: &[(&str, &[&str])] = &[
    // The wire contracts: prost messages (tonic services behind `grpc`).
    ("badge-proto", &[]),
    // The rules: no IO, no transport, no database.
    ("badge-core", &["badge-proto"]),
    ("badge-keys", &["badge-core"]),
    ("badge-ca", &["badge-core", "badge-keys"]),
    ("badge-store", &["badge-core"]),
    (
        "badge-records",
        &["badge-core", "badge-proto", "badge-store"],
    ),
    (
        "badge-runtime",
        &["badge-core", "badge-keys", "badge-proto", "badge-store"],
    ),
    (
        "badge-access",
        &[
            "badge-core",
            "badge-keys",
            "badge-proto",
            "badge-records",
            "badge-runtime",
            "badge-store",
        ],
    ),
    // The services: everything below, never each other.
    (
        "badge-identity",
        &[
            "badge-access",
            "badge-core",
            "badge-keys",
            "badge-proto",
            "badge-records",
            "badge-runtime",
            "badge-store",
        ],
    ),
    (
        "badge-token-issuer",
        &[
            "badge-access",
            "badge-ca",
            "badge-core",
            "badge-keys",
            "badge-proto",
            "badge-records",
            "badge-runtime",
            "badge-store",
        ],
    ),
    (
        "badge-token-review",
        &[
            "badge-access",
            "badge-ca",
            "badge-core",
            "badge-keys",
            "badge-proto",
            "badge-records",
            "badge-runtime",
            "badge-store",
        ],
    ),
    // Clients and tools: over the wire only (no store, no service internals).
    ("badgectl", &["badge-core", "badge-proto", "badge-runtime"]),
    (
        "badge-agent",
        &["badge-core", "badge-proto", "badge-runtime", "badgectl"],
    ),
    (
        "badge-bench",
        &["badge-ca", "badge-core", "badge-proto", "badge-runtime"],
    ),
    // `badge up` runs everything in one process.
    (
        "badge-cli",
        &[
            "badge-agent",
            "badge-core",
            "badge-identity",
            "badge-keys",
            "badge-runtime",
            "badge-store",
            "badge-token-issuer",
            "badge-token-review",
        ],
    ),
];

/// External crates only some layers may use directly.
const RESTRICTED: &[(&str, &[&str])] = &[
    // The database driver belongs to the store alone.
    ("sqlx", &["badge-store"]),
    // No transport below the runtime (proto's is behind its `grpc` feature).
    (
        "tonic",
        &[
            "badge-proto",
            "badge-runtime",
            "badge-access",
            "badge-identity",
            "badge-token-issuer",
            "badge-token-review",
            "badgectl",
            "badge-agent",
            "badge-bench",
            "badge-cli",
        ],
    ),
    (
        "hyper",
        &["badge-runtime", "badge-token-issuer", "badge-token-review"],
    ),
    // The rules and the key/CA code are synchronous: no runtime.
    (
        "tokio",
        &[
            "badge-store",
            "badge-records",
            "badge-runtime",
            "badge-access",
            "badge-identity",
            "badge-token-issuer",
            "badge-token-review",
            "badgectl",
            "badge-agent",
            "badge-bench",
            "badge-cli",
        ],
    ),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// name → (its `[dependencies]` names, whether it enables badge-proto's `grpc`).
fn manifests() -> BTreeMap<String, (BTreeSet<String>, bool)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(workspace_root().join("crates")).expect("crates/") {
        let path = entry.expect("entry").path().join("Cargo.toml");
        let text = std::fs::read_to_string(&path).expect("Cargo.toml");
        let doc: toml::Table = text.parse().expect("valid Cargo.toml");
        let name = doc["package"]["name"]
            .as_str()
            .expect("package.name")
            .to_owned();
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default();
        let grpc = deps
            .get("badge-proto")
            .and_then(|d| d.get("features"))
            .and_then(|f| f.as_array())
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("grpc")));
        out.insert(name, (deps.keys().cloned().collect(), grpc));
    }
    out
}

#[test]
fn dependencies_point_down_the_layers() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut violations = Vec::new();
    for (name, (deps, _)) in manifests() {
        let Some(ok) = allowed.get(name.as_str()) else {
            violations.push(format!(
                "{name}: not in the layering table (tests/tests/e2e/layering.rs)"
            ));
            continue;
        };
        for d in deps.iter().filter(|d| d.starts_with("badge")) {
            if !ok.contains(&d.as_str()) {
                violations.push(format!("{name} → {d}: not allowed by the layering"));
            }
        }
        for (external, users) in RESTRICTED {
            if deps.contains(*external) && !users.contains(&name.as_str()) {
                violations.push(format!(
                    "{name} → {external}: only {users:?} may use it directly"
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n  {}",
        violations.join("\n  ")
    );
}

/// core and the crates below the runtime see proto's messages, never its tonic
/// services (the `grpc` feature would pull the transport into the rules).
#[test]
fn the_rules_see_messages_not_services() {
    let m = manifests();
    let (deps, grpc) = &m["badge-core"];
    assert!(deps.contains("badge-proto"), "badge-core uses badge-proto");
    assert!(!grpc, "badge-core enables badge-proto's grpc feature");
}

/// The table itself is layered: nothing depends on a crate listed after it, so
/// the rows read bottom-up and there can be no cycle.
#[test]
fn the_layering_table_has_no_upward_edge() {
    let position: BTreeMap<&str, usize> = ALLOWED
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    for (i, (name, deps)) in ALLOWED.iter().enumerate() {
        for d in *deps {
            assert!(
                position[d] < i,
                "{name} may depend on {d}, which is listed after it"
            );
        }
    }
}
