//! Authorization is a table no method can skip: every gRPC method each server
//! serves behind its mTLS auth layer has exactly one rule in that server's method
//! tables, and every rule names a method that exists. One check for all services,
//! against the descriptor sets the servers publish by reflection.

use std::collections::{BTreeMap, BTreeSet};

use badge_runtime::MethodTable;
use prost::Message as _;

/// A server: the proto packages whose services it serves, and its method tables.
struct Server {
    name: &'static str,
    packages: &'static [&'static str],
    tables: Vec<MethodTable>,
}

fn servers() -> [Server; 3] {
    [
        Server {
            name: "identity",
            packages: &["badge.identity.v1", "badge.rbac.v1"],
            tables: badge_identity::METHOD_TABLES.to_vec(),
        },
        Server {
            name: "token-issuer",
            // externaljwt's v1 and v1alpha1; Istio's CA.
            packages: &[
                "badge.token.v1",
                "v1",
                "v1alpha1",
                "badge.certificates.v1",
                "istio.v1.auth",
            ],
            tables: vec![
                badge_token_issuer::tokens::METHODS,
                badge_token_issuer::external::METHODS,
                badge_token_issuer::certificates::METHODS,
                badge_token_issuer::istio::METHODS,
                badge_token_issuer::pod_certificates::METHODS,
                badge_token_issuer::jwt_svids::METHODS,
            ],
        },
        Server {
            name: "token-review",
            packages: &["badge.review.v1", "envoy.service.auth.v3"],
            tables: vec![
                badge_token_review::METHODS,
                badge_token_review::access::METHODS,
                badge_token_review::ext_authz::METHODS,
            ],
        },
    ]
}

/// Services with no method table, and why: the node agent serves the SPIFFE
/// Workload API on a Unix socket whose file permissions are the guard.
const NOT_BEHIND_THE_AUTH_LAYER: [&str; 1] = ["SpiffeWorkloadAPI"];

/// package → method paths (`/<package>.<Service>/<Method>`) of every service in
/// Badge's descriptor set and Envoy's ext_authz set.
fn methods_by_package() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for set in [
        badge_proto::FILE_DESCRIPTOR_SET,
        badge_token_review::ext_authz::FILE_DESCRIPTOR_SET,
    ] {
        let fds = prost_types::FileDescriptorSet::decode(set).expect("descriptor set");
        for file in &fds.file {
            for svc in &file.service {
                if NOT_BEHIND_THE_AUTH_LAYER.contains(&svc.name()) {
                    continue;
                }
                for m in &svc.method {
                    let path = format!("/{}.{}/{}", file.package(), svc.name(), m.name());
                    out.entry(file.package().to_string())
                        .or_default()
                        .insert(path);
                }
            }
        }
    }
    out
}

#[test]
fn every_method_of_every_service_has_exactly_one_authorization_rule() {
    let by_package = methods_by_package();
    let servers = servers();
    // Every package with services is some server's.
    for package in by_package.keys() {
        assert!(
            servers
                .iter()
                .any(|s| s.packages.contains(&package.as_str())),
            "package {package} is served by no server with a method table"
        );
    }
    let mut checked = 0;
    for server in &servers {
        let name = server.name;
        let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
        for (path, _) in server.tables.iter().flat_map(|t| t.iter()) {
            *rules.entry(path).or_default() += 1;
        }
        let methods: BTreeSet<&str> = server
            .packages
            .iter()
            .flat_map(|p| by_package.get(*p).into_iter().flatten())
            .map(String::as_str)
            .collect();
        assert!(!methods.is_empty(), "{name}: no methods found");
        for path in &methods {
            assert_eq!(
                rules.get(path),
                Some(&1),
                "{name}: {path} needs exactly one rule"
            );
        }
        for path in rules.keys() {
            assert!(
                methods.contains(path),
                "{name}: the rule for {path} names a method that does not exist"
            );
        }
        assert_eq!(methods.len(), rules.len(), "{name}");
        checked += methods.len();
    }
    assert!(checked >= 40, "only {checked} methods checked");
}
