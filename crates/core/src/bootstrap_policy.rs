//! The roles and bindings every Badge installation starts with, as Kubernetes'
//! bootstrap policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`),
//! trimmed to the resources Badge serves, plus the roles Badge's own services need
//! to call each other. Identity creates them at first start, labelled
//! `kubernetes.io/bootstrapping: rbac-defaults`, and keeps them current on later
//! starts while their `rbac.authorization.kubernetes.io/autoupdate` annotation is
//! `"true"` (set it to `"false"` to keep local edits).
//!
//! Service accounts get nothing beyond discovery by default: access is granted by
//! binding `view`, `edit`, `admin` or a role of your own.

use crate::rbac::{
    Binding, KIND_CLUSTER_ROLE, KIND_GROUP, KIND_USER, PolicyRule, RBAC_GROUP, Role, RoleRef,
    Subject,
};

/// Label on every bootstrap object.
pub const BOOTSTRAP_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// While `"true"`, a start reconciles the object back to the defaults.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";

pub use crate::review::{
    ALL_SERVICE_ACCOUNTS_GROUP as SERVICE_ACCOUNTS, AUTHENTICATED_GROUP as AUTHENTICATED,
};
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Kubernetes' superuser group: bypasses RBAC.
pub const MASTERS: &str = "system:masters";

/// The client-certificate user of the token-issuer service (`CN`).
pub const TOKEN_ISSUER_USER: &str = "system:badge:token-issuer";
/// The client-certificate user of the token-review service.
pub const TOKEN_REVIEW_USER: &str = "system:badge:token-review";
/// The user kube-apiserver authenticates as towards token-review's webhook (the
/// dev PKI's `kube-apiserver` client certificate).
pub const KUBE_APISERVER_USER: &str = "kube-apiserver";
/// The ClusterRoleBinding that lets it ask the webhook.
pub const KUBE_APISERVER_WEBHOOK_BINDING: &str = "badge:kube-apiserver-webhook";
/// The ClusterRole a gateway (Envoy's ext_authz filter) needs to ask token-review
/// for decisions: `create` on `checks` in Badge's API group `badge.dev`. Bound to
/// nobody by default: bind it to your gateways' users.
pub const EXT_AUTHZ_ROLE: &str = "system:badge:ext-authz";
/// Badge's API group (its own resources: signingkeys, trustbundles, checks, …).
pub const BADGE_GROUP: &str = "badge.dev";

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| (*s).to_owned()).collect()
}

fn resources(verbs: &[&str], group: &str, res: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: strings(&[group]),
        resources: strings(res),
        ..PolicyRule::default()
    }
}

fn urls(verbs: &[&str], paths: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: strings(paths),
        ..PolicyRule::default()
    }
}

fn cluster_role(name: &str, rules: Vec<PolicyRule>) -> Role {
    Role {
        namespace: String::new(),
        name: name.to_owned(),
        rules,
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];
const ALL_RBAC: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<Role> {
    // Kubernetes' `view`: namespaced reads. Read access to `namespaces` granted by a
    // RoleBinding in N lets the holder read Namespace N itself (requests for
    // `namespaces/<name>` are in namespace <name>). Nodes are cluster-scoped
    // infrastructure: Kubernetes keeps them out of view/edit/admin, and so does
    // Badge — `system:node-reader` below grants them on purpose.
    let view = vec![resources(
        &READ,
        "",
        &["pods", "serviceaccounts", "namespaces"],
    )];
    let mut edit = view.clone();
    edit.extend([
        resources(&WRITE, "", &["pods", "serviceaccounts", "secrets"]),
        resources(&READ, "", &["secrets"]),
        resources(&["create"], "", &["serviceaccounts/token"]),
        resources(&["impersonate"], "", &["serviceaccounts"]),
    ]);
    let mut admin = edit.clone();
    admin.push(resources(&ALL_RBAC, RBAC_GROUP, &["roles", "rolebindings"]));
    vec![
        cluster_role(
            "cluster-admin",
            vec![resources(&["*"], "*", &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                resources(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                resources(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            vec![
                resources(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                resources(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role("view", view),
        // Badge's own addition (not bound by default): read Nodes, for agents and
        // dashboards that need the node list without any namespaced rights.
        cluster_role("system:node-reader", vec![resources(&READ, "", &["nodes"])]),
        cluster_role("edit", edit),
        cluster_role("admin", admin),
        // Badge's services, least privilege: only what their calls to identity need.
        // The issuer's legacy-token controller fills and deletes token Secrets.
        cluster_role(
            TOKEN_ISSUER_USER,
            vec![resources(&["get", "update", "delete"], "", &["secrets"])],
        ),
        // token-review records legacy-token use (the last-used label) on Secrets.
        cluster_role(
            TOKEN_REVIEW_USER,
            vec![resources(&["get", "update"], "", &["secrets"])],
        ),
        // Gateways asking for ext_authz decisions. Security: holding it means being
        // trusted to report the mesh peer's identity (`source.principal`), so it is
        // a role to bind to gateways only, never to workloads.
        cluster_role(
            EXT_AUTHZ_ROLE,
            vec![resources(&["create"], BADGE_GROUP, &["checks"])],
        ),
    ]
}

fn subject(kind: &str, name: &str) -> Subject {
    Subject {
        kind: kind.to_owned(),
        api_group: RBAC_GROUP.to_owned(),
        name: name.to_owned(),
        namespace: String::new(),
    }
}

fn cluster_binding(role: &str, subjects: Vec<Subject>) -> Binding {
    Binding {
        namespace: String::new(),
        name: role.to_owned(),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.to_owned(),
            kind: KIND_CLUSTER_ROLE.to_owned(),
            name: role.to_owned(),
        },
        subjects,
    }
}

/// The bootstrap ClusterRoleBindings (each named after its role).
pub fn cluster_role_bindings() -> Vec<Binding> {
    vec![
        cluster_binding("cluster-admin", vec![subject(KIND_GROUP, MASTERS)]),
        cluster_binding("system:discovery", vec![subject(KIND_GROUP, AUTHENTICATED)]),
        cluster_binding(
            "system:basic-user",
            vec![subject(KIND_GROUP, AUTHENTICATED)],
        ),
        cluster_binding(
            "system:public-info-viewer",
            vec![
                subject(KIND_GROUP, AUTHENTICATED),
                subject(KIND_GROUP, UNAUTHENTICATED),
            ],
        ),
        cluster_binding(
            "system:service-account-issuer-discovery",
            vec![subject(KIND_GROUP, SERVICE_ACCOUNTS)],
        ),
        cluster_binding(
            TOKEN_ISSUER_USER,
            vec![subject(KIND_USER, TOKEN_ISSUER_USER)],
        ),
        cluster_binding(
            TOKEN_REVIEW_USER,
            vec![subject(KIND_USER, TOKEN_REVIEW_USER)],
        ),
        // kube-apiserver's webhook credential: least privilege, exactly what the
        // token and authorization webhooks require (create tokenreviews and
        // subjectaccessreviews), not system:masters.
        Binding {
            name: KUBE_APISERVER_WEBHOOK_BINDING.to_owned(),
            ..cluster_binding(
                "system:auth-delegator",
                vec![subject(KIND_USER, KUBE_APISERVER_USER)],
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::rbac::{Attributes, Policy, UserInfo, authorize, validate_binding, validate_role};

    struct Defaults;
    impl Policy for Defaults {
        fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
            cluster_roles()
                .into_iter()
                .find(|r| r.name == name)
                .map(Cow::Owned)
        }
        fn role(&self, _: &str, _: &str) -> Option<Cow<'_, Role>> {
            None
        }
        fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
            cluster_role_bindings().into()
        }
        fn role_bindings(&self, _: &str) -> Cow<'_, [Binding]> {
            Cow::Borrowed(&[])
        }
    }

    fn res(verb: &str, ns: &str, group: &str, resource: &str, sub: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            namespace: ns.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: String::new(),
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: strings(groups),
        }
    }

    #[test]
    fn defaults_are_valid() {
        for r in cluster_roles() {
            assert!(validate_role(&r, "role").is_empty(), "{}", r.name);
        }
        for b in cluster_role_bindings() {
            assert!(validate_binding(&b, "binding").is_empty(), "{}", b.name);
            assert!(
                cluster_roles().iter().any(|r| r.name == b.role_ref.name),
                "{} binds an absent role",
                b.name
            );
        }
    }

    #[test]
    fn what_the_defaults_grant() {
        let sa = user(
            "system:serviceaccount:dev:app",
            &[
                SERVICE_ACCOUNTS,
                "system:serviceaccounts:dev",
                AUTHENTICATED,
            ],
        );
        let anon = user("system:anonymous", &[UNAUTHENTICATED]);
        let issuer = user(TOKEN_ISSUER_USER, &["system:badge-services", AUTHENTICATED]);
        let review = user(TOKEN_REVIEW_USER, &["system:badge-services", AUTHENTICATED]);
        let apiserver = user(KUBE_APISERVER_USER, &[AUTHENTICATED]);
        let jwks = Attributes::NonResource {
            verb: "get".into(),
            path: "/openid/v1/jwks".into(),
        };
        let healthz = Attributes::NonResource {
            verb: "get".into(),
            path: "/healthz".into(),
        };
        let self_sar = res(
            "create",
            "",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
        );
        let cases: Vec<(&UserInfo, Attributes, bool)> = vec![
            (&sa, self_sar.clone(), true),
            (&sa, jwks.clone(), true),
            (&anon, jwks, false),
            (&anon, healthz, true),
            (&anon, self_sar, false),
            // Service accounts get nothing else by default.
            (&sa, res("get", "dev", "", "pods", ""), false),
            (
                &sa,
                res("create", "dev", "", "serviceaccounts", "token"),
                false,
            ),
            (
                &sa,
                res("create", "", "authentication.k8s.io", "tokenreviews", ""),
                false,
            ),
            (&issuer, res("update", "dev", "", "secrets", ""), true),
            (&issuer, res("delete", "dev", "", "secrets", ""), true),
            (&issuer, res("create", "dev", "", "secrets", ""), false),
            (&review, res("update", "dev", "", "secrets", ""), true),
            (&review, res("delete", "dev", "", "secrets", ""), false),
            // kube-apiserver asks the webhooks, and may do nothing else.
            (
                &apiserver,
                res("create", "", "authentication.k8s.io", "tokenreviews", ""),
                true,
            ),
            (
                &apiserver,
                res(
                    "create",
                    "",
                    "authorization.k8s.io",
                    "subjectaccessreviews",
                    "",
                ),
                true,
            ),
            (&apiserver, res("get", "dev", "", "secrets", ""), false),
            (
                &apiserver,
                res("create", "dev", "", "serviceaccounts", "token"),
                false,
            ),
        ];
        for (u, a, want) in cases {
            let d = authorize(&Defaults, u, &a);
            assert_eq!(d.allowed, want, "{} {a:?}: {}", u.name, d.reason);
        }
    }

    #[test]
    fn aggregated_roles_nest() {
        let roles = cluster_roles();
        let get = |n: &str| {
            roles
                .iter()
                .find(|r| r.name == n)
                .expect("role")
                .rules
                .clone()
        };
        let uncovered = crate::rbac::uncovered;
        assert!(uncovered(&get("edit"), &get("view")).is_empty());
        assert!(uncovered(&get("admin"), &get("edit")).is_empty());
        assert!(!uncovered(&get("view"), &get("edit")).is_empty());
        // edit and admin may request tokens; view may not read secrets.
        let token = [resources(&["create"], "", &["serviceaccounts/token"])];
        assert!(uncovered(&get("edit"), &token).is_empty());
        assert!(!uncovered(&get("view"), &token).is_empty());
        let secrets = [resources(&["get"], "", &["secrets"])];
        assert!(!uncovered(&get("view"), &secrets).is_empty());
    }

    /// Kubernetes' bootstrap roles (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/
    /// policy.go`, with the `system:aggregate-to-*` roles folded into view, edit
    /// and admin as aggregation does), transcribed for the resources and URLs
    /// Badge serves: every rule of Kubernetes' that touches one of them, nothing
    /// else. Rules on resources Badge has not (configmaps, pods/log, ...) are left
    /// out; they cannot matter here.
    fn kubernetes_roles() -> Vec<(&'static str, Vec<PolicyRule>)> {
        let read = ["get", "list", "watch"];
        let write = ["create", "update", "patch", "delete", "deletecollection"];
        let read_write = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        let view = vec![
            // aggregate-to-view
            resources(&read, "", &["pods", "serviceaccounts"]),
            resources(&read, "", &["namespaces"]),
        ];
        let mut edit = view.clone();
        edit.extend([
            // aggregate-to-edit
            resources(&read, "", &["secrets"]),
            resources(&["impersonate"], "", &["serviceaccounts"]),
            resources(&write, "", &["pods"]),
            resources(&write, "", &["serviceaccounts", "secrets"]),
            resources(&["create"], "", &["serviceaccounts/token"]),
        ]);
        let mut admin = edit.clone();
        // aggregate-to-admin (also `create localsubjectaccessreviews`: no such
        // API in Badge).
        admin.push(resources(
            &read_write,
            RBAC_GROUP,
            &["roles", "rolebindings"],
        ));
        vec![
            (
                "cluster-admin",
                vec![resources(&["*"], "*", &["*"]), urls(&["*"], &["*"])],
            ),
            (
                "system:discovery",
                vec![urls(
                    &["get"],
                    &[
                        "/livez",
                        "/readyz",
                        "/healthz",
                        "/version",
                        "/version/",
                        "/openapi",
                        "/openapi/*",
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                    ],
                )],
            ),
            (
                "system:basic-user",
                vec![
                    resources(
                        &["create"],
                        "authorization.k8s.io",
                        &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    ),
                    resources(
                        &["create"],
                        "authentication.k8s.io",
                        &["selfsubjectreviews"],
                    ),
                ],
            ),
            (
                "system:public-info-viewer",
                vec![urls(
                    &["get"],
                    &["/livez", "/readyz", "/healthz", "/version", "/version/"],
                )],
            ),
            (
                "system:service-account-issuer-discovery",
                vec![urls(
                    &["get"],
                    &[
                        "/.well-known/openid-configuration",
                        "/.well-known/openid-configuration/",
                        "/openid/v1/jwks",
                        "/openid/v1/jwks/",
                    ],
                )],
            ),
            (
                "system:auth-delegator",
                vec![
                    resources(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                    resources(
                        &["create"],
                        "authorization.k8s.io",
                        &["subjectaccessreviews"],
                    ),
                ],
            ),
            ("view", view),
            ("edit", edit),
            ("admin", admin),
        ]
    }

    /// Every bootstrap role Kubernetes also has grants exactly what Kubernetes'
    /// grants, request by request, over every verb, resource and URL Badge serves
    /// (the review found `view` reading nodes; this catches any such drift).
    #[test]
    fn bootstrap_roles_grant_what_kubernetes_grants() {
        let verbs = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
            "impersonate",
            "bind",
            "escalate",
        ];
        let badge_resources: [(&str, &str, &str); 15] = [
            ("", "pods", ""),
            ("", "serviceaccounts", ""),
            ("", "serviceaccounts", "token"),
            ("", "secrets", ""),
            ("", "namespaces", ""),
            ("", "nodes", ""),
            (RBAC_GROUP, "roles", ""),
            (RBAC_GROUP, "rolebindings", ""),
            (RBAC_GROUP, "clusterroles", ""),
            (RBAC_GROUP, "clusterrolebindings", ""),
            ("authentication.k8s.io", "tokenreviews", ""),
            ("authentication.k8s.io", "selfsubjectreviews", ""),
            ("authorization.k8s.io", "subjectaccessreviews", ""),
            ("authorization.k8s.io", "selfsubjectaccessreviews", ""),
            ("authorization.k8s.io", "selfsubjectrulesreviews", ""),
        ];
        let paths = [
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
            "/version/",
            "/openapi/v2",
            "/api",
            "/api/v1",
            "/apis",
            "/.well-known/openid-configuration",
            "/openid/v1/jwks",
            "/metrics",
        ];
        let ours = cluster_roles();
        let mut requests = Vec::new();
        for verb in verbs {
            for ns in ["", "dev"] {
                for (group, resource, sub) in badge_resources {
                    requests.push(Attributes::Resource {
                        verb: verb.into(),
                        namespace: ns.into(),
                        api_group: group.into(),
                        resource: resource.into(),
                        subresource: sub.into(),
                        name: "n".into(),
                    });
                }
            }
            for path in paths {
                requests.push(Attributes::NonResource {
                    verb: verb.into(),
                    path: path.into(),
                });
            }
        }
        for (name, theirs) in kubernetes_roles() {
            let role = ours
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("Badge has no bootstrap role {name}"));
            for a in &requests {
                let k8s = theirs.iter().any(|r| crate::rbac::rule_allows(r, a));
                let badge = role.rules.iter().any(|r| crate::rbac::rule_allows(r, a));
                assert_eq!(badge, k8s, "{name} on {a:?}: Kubernetes allows: {k8s}");
            }
        }
    }

    /// `view` bound by a RoleBinding in `ns-a` reads Namespace `ns-a` — a request
    /// for `namespaces/ns-a` is in namespace `ns-a` (see badge_proto's scope) —
    /// and no other namespace, nothing cluster-wide, no node.
    #[test]
    fn view_in_a_namespace_reads_that_namespace_only() {
        struct Bound;
        // The defaults plus one RoleBinding.
        impl Policy for Bound {
            fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
                Defaults.cluster_role(name)
            }
            fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>> {
                Defaults.role(ns, name)
            }
            fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
                Defaults.cluster_role_bindings()
            }
            fn role_bindings(&self, ns: &str) -> Cow<'_, [Binding]> {
                if ns != "ns-a" {
                    return Cow::Borrowed(&[]);
                }
                Cow::Owned(vec![Binding {
                    namespace: "ns-a".into(),
                    name: "vera-view".into(),
                    role_ref: RoleRef {
                        api_group: RBAC_GROUP.into(),
                        kind: KIND_CLUSTER_ROLE.into(),
                        name: "view".into(),
                    },
                    subjects: vec![subject(KIND_USER, "vera")],
                }])
            }
        }
        let vera = user("vera", &[AUTHENTICATED]);
        let named = |verb: &str, ns: &str, resource: &str, name: &str| Attributes::Resource {
            verb: verb.into(),
            namespace: ns.into(),
            api_group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            name: name.into(),
        };
        let cases = [
            (named("get", "ns-a", "namespaces", "ns-a"), true),
            (named("watch", "ns-a", "namespaces", "ns-a"), true),
            (named("get", "ns-b", "namespaces", "ns-b"), false),
            (named("update", "ns-a", "namespaces", "ns-a"), false),
            (named("delete", "ns-a", "namespaces", "ns-a"), false),
            (named("get", "", "namespaces", "ns-a"), false),
            (named("list", "", "namespaces", ""), false),
            (named("get", "", "nodes", "node-1"), false),
            (named("get", "ns-a", "nodes", "node-1"), false),
        ];
        for (a, want) in cases {
            let d = authorize(&Bound, &vera, &a);
            assert_eq!(d.allowed, want, "{a:?}: {}", d.reason);
        }
    }

    /// Kubernetes' view/edit/admin hold no rule on nodes (cluster infrastructure);
    /// only `system:node-reader` (and cluster-admin) reads them.
    #[test]
    fn nodes_are_outside_view_edit_and_admin() {
        let roles = cluster_roles();
        let get = |n: &str| {
            roles
                .iter()
                .find(|r| r.name == n)
                .expect("role")
                .rules
                .clone()
        };
        for verb in READ {
            let nodes = [resources(&[verb], "", &["nodes"])];
            for role in ["view", "edit", "admin"] {
                assert!(
                    !crate::rbac::uncovered(&get(role), &nodes).is_empty(),
                    "{role} must not {verb} nodes"
                );
            }
            assert!(crate::rbac::uncovered(&get("system:node-reader"), &nodes).is_empty());
        }
    }

    /// The gateway role grants exactly `create checks` in badge.dev, and nobody
    /// holds it by default.
    #[test]
    fn ext_authz_role_is_only_create_checks_and_unbound() {
        let role = cluster_roles()
            .into_iter()
            .find(|r| r.name == EXT_AUTHZ_ROLE)
            .expect("role");
        assert_eq!(
            role.rules,
            vec![resources(&["create"], "badge.dev", &["checks"])]
        );
        assert!(
            cluster_role_bindings()
                .iter()
                .all(|b| b.role_ref.name != EXT_AUTHZ_ROLE)
        );
    }
}
