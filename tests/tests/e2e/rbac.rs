//! RBAC on every RPC, end to end over real mTLS: the method matrix (denied without a
//! rule, allowed with exactly the rule the table names), namespace and name read
//! from the request, bearer service-account callers, the cross-namespace example,
//! escalation prevention and the bootstrap policy.

use std::time::Duration;

use badge_proto::rbac as rb;
use badge_proto::review as rv;
use badge_proto::token as tk;
use badge_runtime::{MethodRule, MethodTable};
use badge_tests::{IdentityServer, meta, pb};
use prost::bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::{Objects, Stack, anonymous, bind, cluster_role, subject};

/// Sends and receives raw message bytes, so one loop can call every method.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Calls `path` with `body`; `Ok` once the call got past the auth layer.
async fn call(
    ch: &Channel,
    path: &'static str,
    body: Vec<u8>,
    bearer: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    if let Some(t) = bearer {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let path = http::uri::PathAndQuery::from_static(path);
    if path.path().ends_with("/Watch") {
        grpc.server_streaming(req, path, Raw).await.map(|_| ())
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    }
}

/// Denied by RBAC (not by validation or a missing object).
fn is_denied(r: &Result<(), Status>) -> bool {
    matches!(r, Err(s) if s.code() == Code::PermissionDenied && s.message().contains("is forbidden"))
}

/// The RBAC rule granting exactly what `rule` needs for an empty request.
fn exact_rules(rule: &MethodRule) -> Vec<rb::PolicyRule> {
    let target = rule
        .scope
        .map(|s| s(&[]).expect("empty message decodes"))
        .unwrap_or_default();
    rule.attributes(&target)
        .into_iter()
        .map(|a| match a {
            badge_core::rbac::Attributes::Resource {
                verb,
                api_group,
                resource,
                subresource,
                ..
            } => rb::PolicyRule {
                verbs: vec![verb],
                api_groups: vec![api_group],
                resources: vec![if subresource.is_empty() {
                    resource
                } else {
                    format!("{resource}/{subresource}")
                }],
                ..Default::default()
            },
            badge_core::rbac::Attributes::NonResource { .. } => unreachable!("no URL methods"),
        })
        .collect()
}

async fn grant_cluster(admin: &Channel, name: &str, user: &str, rules: Vec<rb::PolicyRule>) {
    cluster_role(admin, name, rules).await;
    bind(admin, name, name, vec![subject("User", user, "")]).await;
}

/// Retries `f` until it is no longer denied (a binding reaches every service
/// through the change feed within milliseconds), for up to 5 s.
async fn until_allowed<F, Fut>(mut f: F) -> Result<(), Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let mut last = f().await;
    for _ in 0..100 {
        if !is_denied(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = f().await;
    }
    last
}

/// Methods `system:basic-user` grants to `system:authenticated`.
const OPEN_TO_AUTHENTICATED: [&str; 1] =
    ["/badge.review.v1.AccessReviewService/CreateSelfSubjectAccessReview"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_denied_without_its_rule_and_allowed_with_exactly_it() {
    let s = Stack::start().await;
    let admin = s.identity.admin().await;
    let services: [(&str, Vec<MethodTable>); 3] = [
        ("identity", badge_identity::METHOD_TABLES.to_vec()),
        (
            "token-issuer",
            vec![
                badge_token_issuer::tokens::METHODS,
                badge_token_issuer::external::METHODS,
            ],
        ),
        (
            "token-review",
            vec![
                badge_token_review::METHODS,
                badge_token_review::access::METHODS,
            ],
        ),
    ];
    let mut checked = 0;
    for (service, tables) in services {
        for (i, (path, rule)) in tables.iter().flat_map(|t| t.iter()).enumerate() {
            let user = format!("matrix-{service}-{i}");
            let cert = s.identity.issue(&user, &user, &["team"]);
            let ch = match service {
                "identity" => s.identity.channel_as(&cert).await,
                "token-issuer" => s.issuer.channel(&s.identity, &cert),
                _ => s.review.channel(&s.identity, &cert),
            };
            let anon = anonymous(
                &s.identity,
                match service {
                    "identity" => s.identity.addr,
                    "token-issuer" => s.issuer.grpc,
                    _ => s.review.grpc,
                },
            );
            // No credentials at all.
            let r = call(&anon, path, vec![], None).await;
            assert_eq!(
                r.as_ref().map_err(Status::code),
                Err(Code::Unauthenticated),
                "{path} without credentials: {r:?}"
            );
            // A certificate but no rule: denied, naming the user; except what the
            // bootstrap policy gives every authenticated caller.
            let r = call(&ch, path, vec![], None).await;
            if OPEN_TO_AUTHENTICATED.contains(path) {
                assert!(!is_denied(&r), "{path} is system:basic-user's: {r:?}");
                checked += 1;
                continue;
            }
            assert!(is_denied(&r), "{path} without a rule: {r:?}");
            let msg = r.expect_err("denied").message().to_string();
            assert!(msg.contains(&format!("User {user:?}")), "{path}: {msg}");
            assert!(msg.contains(rule.verb), "{path}: {msg}");
            // Exactly the rule the method table names: past the auth layer.
            grant_cluster(&admin, &user, &user, exact_rules(rule)).await;
            let r = until_allowed(|| call(&ch, path, vec![], None)).await;
            assert!(!is_denied(&r), "{path} with its rule: {r:?}");
            assert!(
                !matches!(&r, Err(s) if s.code() == Code::Unauthenticated),
                "{path}: {r:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} methods checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_name_come_from_the_request() {
    let identity = IdentityServer::start().await;
    let admin = identity.admin().await;
    let mut ns = pb::namespace_service_client::NamespaceServiceClient::new(admin.clone());
    for n in ["team", "other"] {
        ns.create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                metadata: meta("", n),
                ..Default::default()
            }),
        })
        .await
        .expect("namespace");
    }
    // A Role in `team` allowing get on pod `web` only, and list on pods.
    rb::role_service_client::RoleServiceClient::new(admin.clone())
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("team", "web-reader"),
                rules: vec![
                    rb::PolicyRule {
                        verbs: vec!["get".into()],
                        api_groups: vec!["".into()],
                        resources: vec!["pods".into()],
                        resource_names: vec!["web".into()],
                        ..Default::default()
                    },
                    rb::PolicyRule {
                        verbs: vec!["list".into()],
                        api_groups: vec!["".into()],
                        resources: vec!["pods".into()],
                        ..Default::default()
                    },
                ],
            }),
        })
        .await
        .expect("role");
    rb::role_binding_service_client::RoleBindingServiceClient::new(admin.clone())
        .create_role_binding(rb::CreateRoleBindingRequest {
            role_binding: Some(rb::RoleBinding {
                metadata: meta("team", "web-reader"),
                subjects: vec![rb::Subject {
                    kind: "User".into(),
                    name: "carol".into(),
                    ..Default::default()
                }],
                role_ref: Some(rb::RoleRef {
                    kind: "Role".into(),
                    name: "web-reader".into(),
                    ..Default::default()
                }),
            }),
        })
        .await
        .expect("binding");
    let carol = identity.issue("carol", "carol", &[]);
    let mut pods = pb::pod_service_client::PodServiceClient::new(identity.channel_as(&carol).await);
    let get = |ns: &str, name: &str| pb::GetPodRequest {
        namespace: ns.into(),
        name: name.into(),
    };
    // Allowed past RBAC: the pod does not exist.
    let r = until_allowed(|| {
        let mut p = pods.clone();
        async move { p.get_pod(get("team", "web")).await.map(|_| ()) }
    })
    .await;
    assert_eq!(r.expect_err("should fail").code(), Code::NotFound);
    let denied = pods
        .get_pod(get("team", "db"))
        .await
        .expect_err("should fail");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "pods \"db\" is forbidden: User \"carol\" cannot get resource \"pods\" in API group \"\" in the namespace \"team\": no RBAC policy matched"
    );
    let denied = pods
        .get_pod(get("other", "web"))
        .await
        .expect_err("should fail");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let list = |ns: &str| pb::ListPodsRequest {
        namespace: ns.into(),
        ..Default::default()
    };
    pods.list_pods(list("team")).await.expect("list in team");
    // Every namespace needs a cluster-wide grant.
    let denied = pods.list_pods(list("")).await.expect_err("should fail");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("at the cluster scope"),
        "{denied:?}"
    );
    // Watch is authorized per kind asked for.
    let mut watch =
        pb::watch_service_client::WatchServiceClient::new(identity.channel_as(&carol).await);
    let denied = watch
        .watch(pb::WatchRequest {
            kinds: vec![pb::Kind::Pod as i32],
            namespace: "team".into(),
            ..Default::default()
        })
        .await
        .expect_err("should fail");
    assert!(
        denied.message().contains("cannot watch resource \"pods\""),
        "{denied:?}"
    );
}

async fn create_sa(admin: &Channel, ns: &str, name: &str) {
    let mut n = pb::namespace_service_client::NamespaceServiceClient::new(admin.clone());
    let _ = n
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                metadata: meta("", ns),
                ..Default::default()
            }),
        })
        .await;
    admin.sa(ns, name).await;
}

async fn token(issuer: &Channel, ns: &str, name: &str, audiences: &[&str]) -> String {
    tk::token_service_client::TokenServiceClient::new(issuer.clone())
        .create_token(tk::CreateTokenRequest {
            namespace: ns.into(),
            name: name.into(),
            audiences: audiences.iter().map(|a| (*a).to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .token
}

async fn bind_in(
    admin: &Channel,
    ns: &str,
    name: &str,
    kind: &str,
    role: &str,
    subject: rb::Subject,
) {
    rb::role_binding_service_client::RoleBindingServiceClient::new(admin.clone())
        .create_role_binding(rb::CreateRoleBindingRequest {
            role_binding: Some(rb::RoleBinding {
                metadata: meta(ns, name),
                subjects: vec![subject],
                role_ref: Some(rb::RoleRef {
                    kind: kind.into(),
                    name: role.into(),
                    ..Default::default()
                }),
            }),
        })
        .await
        .expect("role binding");
}

fn sa_subject(ns: &str, name: &str) -> rb::Subject {
    rb::Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_callers_are_their_service_account_on_every_service() {
    let s = Stack::start().await;
    let admin = s.identity.admin().await;
    let issuer_admin = s.issuer.channel(&s.identity, &s.identity.pki.admin);
    create_sa(&admin, "dev", "app").await;
    let jwt = token(&issuer_admin, "dev", "app", &[]).await;

    // identity, with no client certificate: the token is the caller.
    let anon = anonymous(&s.identity, s.identity.addr);
    let list_pods = |ch: Channel, t: Option<String>, ns: &'static str| async move {
        let mut req = tonic::Request::new(pb::ListPodsRequest {
            namespace: ns.into(),
            ..Default::default()
        });
        if let Some(t) = t {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().expect("h"));
        }
        pb::pod_service_client::PodServiceClient::new(ch)
            .list_pods(req)
            .await
            .map(|_| ())
    };
    let denied = list_pods(anon.clone(), Some(jwt.clone()), "dev")
        .await
        .expect_err("should fail");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("User \"system:serviceaccount:dev:app\""),
        "{denied:?}"
    );
    let none = list_pods(anon.clone(), None, "dev")
        .await
        .expect_err("should fail");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");

    // token-review: SelfSubjectAccessReview answers for the token's user.
    let mut req = tonic::Request::new(rv::CreateSelfSubjectAccessReviewRequest {
        spec: Some(rv::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(rv::ResourceAttributes {
                namespace: "dev".into(),
                verb: "list".into(),
                resource: "pods".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().expect("h"));
    let ssar = rv::access_review_service_client::AccessReviewServiceClient::new(anonymous(
        &s.identity,
        s.review.grpc,
    ))
    .create_self_subject_access_review(req)
    .await
    .expect("self subject access review")
    .into_inner();
    let spec = ssar.spec.expect("spec");
    assert_eq!(spec.user, "system:serviceaccount:dev:app");
    assert!(
        spec.groups
            .contains(&"system:serviceaccounts:dev".to_string()),
        "{spec:?}"
    );
    assert!(!ssar.status.expect("status").allowed);

    // Granting `view` in dev: allowed there, still not in another namespace.
    bind_in(
        &admin,
        "dev",
        "app-view",
        "ClusterRole",
        "view",
        sa_subject("dev", "app"),
    )
    .await;
    until_allowed(|| list_pods(anon.clone(), Some(jwt.clone()), "dev"))
        .await
        .expect("view allows list pods in dev");
    let denied = list_pods(anon.clone(), Some(jwt.clone()), "default")
        .await
        .expect_err("should fail");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // token-issuer: `view` does not include tokens; `edit` does.
    let create_own = |t: String| {
        let ch = anonymous(&s.identity, s.issuer.grpc);
        async move {
            let mut req = tonic::Request::new(tk::CreateTokenRequest {
                namespace: "dev".into(),
                name: "app".into(),
                ..Default::default()
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().expect("h"));
            tk::token_service_client::TokenServiceClient::new(ch)
                .create_token(req)
                .await
                .map(|_| ())
        }
    };
    let denied = create_own(jwt.clone()).await.expect_err("should fail");
    assert!(
        denied
            .message()
            .contains("cannot create resource \"serviceaccounts/token\""),
        "{denied:?}"
    );
    bind_in(
        &admin,
        "dev",
        "app-edit",
        "ClusterRole",
        "edit",
        sa_subject("dev", "app"),
    )
    .await;
    until_allowed(|| create_own(jwt.clone()))
        .await
        .expect("edit allows create serviceaccounts/token");

    // Forged and wrong-audience tokens are UNAUTHENTICATED with the review's text.
    let mut forged = jwt.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("utf8");
    let e = list_pods(anon.clone(), Some(forged), "dev")
        .await
        .expect_err("should fail");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().starts_with("invalid bearer token"), "{e:?}");
    assert!(!e.message().contains(&jwt[..20]), "no token in errors");
    let vault = token(&issuer_admin, "dev", "app", &["vault"]).await;
    let e = list_pods(anon.clone(), Some(vault), "dev")
        .await
        .expect_err("should fail");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("audience"), "{e:?}");
    let e = list_pods(anon, Some("not-a-jwt".into()), "dev")
        .await
        .expect_err("should fail");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Deleting the service account revokes its access at once.
    pb::service_account_service_client::ServiceAccountServiceClient::new(admin.clone())
        .delete_service_account(pb::DeleteServiceAccountRequest {
            namespace: "dev".into(),
            name: "app".into(),
            ..Default::default()
        })
        .await
        .expect("delete sa");
    let anon = anonymous(&s.identity, s.identity.addr);
    let mut gone = Ok(());
    for _ in 0..100 {
        gone = list_pods(anon.clone(), Some(jwt.clone()), "dev").await;
        if matches!(&gone, Err(e) if e.code() == Code::Unauthenticated) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gone.expect_err("should fail").code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_binding_end_to_end() {
    let s = Stack::start().await;
    let admin = s.identity.admin().await;
    create_sa(&admin, "dev", "builder").await;
    create_sa(&admin, "maintenance", "default-sa").await;
    rb::role_service_client::RoleServiceClient::new(admin.clone())
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("maintenance", "job-reader"),
                rules: vec![rb::PolicyRule {
                    verbs: vec!["list".into(), "watch".into(), "get".into()],
                    api_groups: vec!["batch".into()],
                    resources: vec!["jobs".into()],
                    ..Default::default()
                }],
            }),
        })
        .await
        .expect("role");
    bind_in(
        &admin,
        "maintenance",
        "read-jobs",
        "Role",
        "job-reader",
        sa_subject("dev", "builder"),
    )
    .await;
    let jwt = token(
        &s.issuer.channel(&s.identity, &s.identity.pki.admin),
        "dev",
        "builder",
        &[],
    )
    .await;
    let ssar =
        |ns: &'static str, group: &'static str, resource: &'static str, verb: &'static str| {
            let ch = anonymous(&s.identity, s.review.grpc);
            let jwt = jwt.clone();
            async move {
                let mut req = tonic::Request::new(rv::CreateSelfSubjectAccessReviewRequest {
                    spec: Some(rv::SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(rv::ResourceAttributes {
                            namespace: ns.into(),
                            verb: verb.into(),
                            group: group.into(),
                            resource: resource.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {jwt}").parse().expect("h"));
                rv::access_review_service_client::AccessReviewServiceClient::new(ch)
                    .create_self_subject_access_review(req)
                    .await
                    .expect("ssar")
                    .into_inner()
                    .status
                    .expect("status")
            }
        };
    let mut allowed = ssar("maintenance", "batch", "jobs", "list").await;
    for _ in 0..100 {
        if allowed.allowed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        allowed = ssar("maintenance", "batch", "jobs", "list").await;
    }
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!(
        allowed.reason,
        "RBAC: allowed by RoleBinding \"read-jobs/maintenance\" of Role \"job-reader\" to ServiceAccount \"builder/dev\""
    );
    assert!(!ssar("dev", "batch", "jobs", "list").await.allowed);
    assert!(!ssar("maintenance", "", "secrets", "get").await.allowed);
    assert!(!ssar("dev", "", "secrets", "get").await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_refused_without_escalate_or_bind() {
    let identity = IdentityServer::start().await;
    let admin = identity.admin().await;
    create_sa(&admin, "team", "x").await;
    // alice administers RBAC in `team` and may read pods there, nothing else.
    rb::role_service_client::RoleServiceClient::new(admin.clone())
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("team", "rbac-admin"),
                rules: vec![
                    // Not `*`: that would include `escalate` and `bind`.
                    rb::PolicyRule {
                        verbs: ["create", "get", "list", "update", "delete"]
                            .map(String::from)
                            .to_vec(),
                        api_groups: vec!["rbac.authorization.k8s.io".into()],
                        resources: vec!["roles".into(), "rolebindings".into()],
                        ..Default::default()
                    },
                    rb::PolicyRule {
                        verbs: vec!["get".into(), "list".into()],
                        api_groups: vec!["".into()],
                        resources: vec!["pods".into()],
                        ..Default::default()
                    },
                ],
            }),
        })
        .await
        .expect("role");
    let alice_subject = rb::Subject {
        kind: "User".into(),
        name: "alice".into(),
        ..Default::default()
    };
    bind_in(
        &admin,
        "team",
        "alice-rbac",
        "Role",
        "rbac-admin",
        alice_subject.clone(),
    )
    .await;
    let alice = identity.issue("alice", "alice", &[]);
    let ch = identity.channel_as(&alice).await;
    let mut roles = rb::role_service_client::RoleServiceClient::new(ch.clone());
    let role = |name: &str, resource: &str| rb::CreateRoleRequest {
        role: Some(rb::Role {
            metadata: meta("team", name),
            rules: vec![rb::PolicyRule {
                verbs: vec!["get".into()],
                api_groups: vec!["".into()],
                resources: vec![resource.into()],
                ..Default::default()
            }],
        }),
    };
    // Within what alice holds: fine (once her binding reached identity's index).
    let mut ok = roles.create_role(role("pod-reader", "pods")).await;
    for _ in 0..100 {
        if ok.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ok = roles.create_role(role("pod-reader", "pods")).await;
    }
    ok.expect("a role within alice's permissions");
    // Beyond it: refused, listing what is missing.
    let e = roles
        .create_role(role("secret-reader", "secrets"))
        .await
        .expect_err("should fail");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{e:?}"
    );
    assert!(
        e.message()
            .contains("{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"),
        "{e:?}"
    );
    // Binding a role with more than alice holds (edit) is refused too ...
    let mut bindings = rb::role_binding_service_client::RoleBindingServiceClient::new(ch.clone());
    let bind_edit = rb::CreateRoleBindingRequest {
        role_binding: Some(rb::RoleBinding {
            metadata: meta("team", "x-edit"),
            subjects: vec![sa_subject("team", "x")],
            role_ref: Some(rb::RoleRef {
                kind: "ClusterRole".into(),
                name: "edit".into(),
                ..Default::default()
            }),
        }),
    };
    let e = bindings
        .create_role_binding(bind_edit.clone())
        .await
        .expect_err("should fail");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // ... but a role she holds entirely may be bound; a binding to an absent role
    // is refused (she may not `bind` it), naming the role as Kubernetes does.
    let mut bind = bind_edit.clone();
    if let Some(b) = bind.role_binding.as_mut() {
        b.metadata = meta("team", "x-pods");
        b.role_ref = Some(rb::RoleRef {
            kind: "Role".into(),
            name: "pod-reader".into(),
            ..Default::default()
        });
    }
    bindings
        .create_role_binding(bind)
        .await
        .expect("bind a held role");
    let mut absent = bind_edit.clone();
    if let Some(b) = absent.role_binding.as_mut() {
        b.metadata = meta("team", "x-absent");
        b.role_ref = Some(rb::RoleRef {
            kind: "Role".into(),
            name: "does-not-exist".into(),
            ..Default::default()
        });
    }
    let e = bindings
        .create_role_binding(absent)
        .await
        .expect_err("a binding to an absent role without `bind`");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        "roles.rbac.authorization.k8s.io \"does-not-exist\" not found"
    );
    // `bind` on clusterrole `edit` and `escalate` on roles lift the checks.
    rb::role_service_client::RoleServiceClient::new(admin.clone())
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("team", "delegate"),
                rules: vec![
                    rb::PolicyRule {
                        verbs: vec!["bind".into()],
                        api_groups: vec!["rbac.authorization.k8s.io".into()],
                        resources: vec!["clusterroles".into()],
                        resource_names: vec!["edit".into()],
                        ..Default::default()
                    },
                    rb::PolicyRule {
                        verbs: vec!["escalate".into()],
                        api_groups: vec!["rbac.authorization.k8s.io".into()],
                        resources: vec!["roles".into()],
                        ..Default::default()
                    },
                ],
            }),
        })
        .await
        .expect("delegate role");
    bind_in(
        &admin,
        "team",
        "alice-delegate",
        "Role",
        "delegate",
        alice_subject,
    )
    .await;
    let mut r = bindings.create_role_binding(bind_edit.clone()).await;
    for _ in 0..100 {
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = bindings.create_role_binding(bind_edit.clone()).await;
    }
    r.expect("bind permission allows binding edit");
    roles
        .create_role(role("secret-reader", "secrets"))
        .await
        .expect("escalate permission allows the role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_policy_is_created_labelled_and_reconciled() {
    let identity = IdentityServer::start().await;
    let admin = identity.admin().await;
    let mut crs = rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone());
    let listed = crs
        .list_cluster_roles(rb::ListClusterRolesRequest {
            label_selector: "kubernetes.io/bootstrapping=rbac-defaults".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let names: Vec<String> = listed
        .cluster_roles
        .iter()
        .filter_map(|r| r.metadata.as_ref().map(|m| m.name.clone()))
        .collect();
    for want in [
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:service-account-issuer-discovery",
        "system:auth-delegator",
        "admin",
        "edit",
        "view",
        "system:badge:token-issuer",
        "system:badge:token-review",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let bindings = rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(
        admin.clone(),
    )
    .get_cluster_role_binding(rb::GetClusterRoleBindingRequest {
        name: "system:service-account-issuer-discovery".into(),
    })
    .await
    .expect("binding")
    .into_inner();
    assert_eq!(bindings.subjects[0].name, "system:serviceaccounts");

    // An edited default is restored on the next start while autoupdate is "true",
    // kept when it is "false"; starting again creates nothing twice.
    let mut view = crs
        .get_cluster_role(rb::GetClusterRoleRequest {
            name: "view".into(),
        })
        .await
        .expect("view")
        .into_inner();
    view.rules.clear();
    let view = crs
        .update_cluster_role(rb::UpdateClusterRoleRequest {
            cluster_role: Some(view),
        })
        .await
        .expect("edit view")
        .into_inner();
    let mut edit = crs
        .get_cluster_role(rb::GetClusterRoleRequest {
            name: "edit".into(),
        })
        .await
        .expect("edit")
        .into_inner();
    edit.rules.truncate(1);
    if let Some(m) = edit.metadata.as_mut() {
        m.annotations.insert(
            "rbac.authorization.kubernetes.io/autoupdate".into(),
            "false".into(),
        );
    }
    crs.update_cluster_role(rb::UpdateClusterRoleRequest {
        cluster_role: Some(edit),
    })
    .await
    .expect("edit edit");
    let objects = badge_identity::Objects::new(
        identity.db.store().await,
        std::sync::Arc::new(badge_core::SystemClock),
    );
    badge_identity::controllers::bootstrap_policy(&objects)
        .await
        .expect("reconcile");
    badge_identity::controllers::bootstrap_policy(&objects)
        .await
        .expect("again");
    let restored = crs
        .get_cluster_role(rb::GetClusterRoleRequest {
            name: "view".into(),
        })
        .await
        .expect("view")
        .into_inner();
    assert!(restored.rules.len() > view.rules.len(), "view restored");
    let kept = crs
        .get_cluster_role(rb::GetClusterRoleRequest {
            name: "edit".into(),
        })
        .await
        .expect("edit")
        .into_inner();
    assert_eq!(kept.rules.len(), 1, "autoupdate=false keeps the edit");
}

/// SelfSubjectAccessReview of `verb` on `resource` (RBAC group unless `group`
/// says otherwise) in `ns`, as the holder of `ch`'s certificate.
async fn ssar_on(
    ch: &Channel,
    ns: &str,
    verb: &str,
    group: &str,
    resource: &str,
    name: &str,
) -> rv::SubjectAccessReviewStatus {
    rv::access_review_service_client::AccessReviewServiceClient::new(ch.clone())
        .create_self_subject_access_review(rv::CreateSelfSubjectAccessReviewRequest {
            spec: Some(rv::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(rv::ResourceAttributes {
                    namespace: ns.into(),
                    verb: verb.into(),
                    group: group.into(),
                    resource: resource.into(),
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("self subject access review")
        .into_inner()
        .status
        .expect("status")
}

/// Retries `f` while the auth layer still denies it (a new binding reaches the
/// policy through the change feed), for up to 5 s, and returns the first answer
/// that is not a denial by the auth layer.
async fn past_auth<T, F, Fut>(mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut last = f().await;
    for _ in 0..250 {
        match &last {
            Err(s) if s.code() == Code::PermissionDenied && s.message().contains("cannot ") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                last = f().await;
            }
            _ => break,
        }
    }
    last
}

/// The escalation an independent review reproduced (issue 13, finding 1): an
/// `admin` of namespace `dev` binds herself to the ClusterRole `future`, which does
/// not exist yet; an operator later creates `future` with every permission; her
/// SelfSubjectAccessReview for `escalate roles` in `dev` then said allowed.
/// Kubernetes (and Badge) refuse the binding with the role lookup's NOT_FOUND
/// unless she may `bind` that name; with `bind` it is accepted and grants nothing
/// until the role exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_a_missing_role_needs_bind_on_its_name() {
    let s = Stack::start().await;
    let identity = &s.identity;
    let admin = identity.admin().await;
    create_sa(&admin, "dev", "x").await;
    let eve_subject = rb::Subject {
        kind: "User".into(),
        name: "eve".into(),
        ..Default::default()
    };
    bind_in(
        &admin,
        "dev",
        "eve-admin",
        "ClusterRole",
        "admin",
        eve_subject.clone(),
    )
    .await;
    let eve = identity.issue("eve", "eve", &[]);
    let ch = identity.channel_as(&eve).await;
    let eve_review = s.review.channel(identity, &eve);
    let mut bindings = rb::role_binding_service_client::RoleBindingServiceClient::new(ch.clone());
    let future = |name: &str| rb::CreateRoleBindingRequest {
        role_binding: Some(rb::RoleBinding {
            metadata: meta("dev", name),
            subjects: vec![eve_subject.clone()],
            role_ref: Some(rb::RoleRef {
                kind: "ClusterRole".into(),
                name: "future".into(),
                ..Default::default()
            }),
        }),
    };
    // (Once eve's `admin` binding is in identity's policy: create rolebindings.)
    let e = past_auth(|| {
        let mut b = bindings.clone();
        let req = future("eve-future");
        async move { b.create_role_binding(req).await }
    })
    .await
    .expect_err("binding to a missing ClusterRole without bind");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        "clusterroles.rbac.authorization.k8s.io \"future\" not found"
    );
    // The operator creates `future` with everything: eve gained nothing.
    rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone())
        .create_cluster_role(rb::CreateClusterRoleRequest {
            cluster_role: Some(rb::ClusterRole {
                metadata: meta("", "future"),
                rules: vec![rb::PolicyRule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Default::default()
                }],
            }),
        })
        .await
        .expect("future");
    let mut rbs = rb::role_binding_service_client::RoleBindingServiceClient::new(admin.clone());
    let listed = rbs
        .list_role_bindings(rb::ListRoleBindingsRequest {
            namespace: "dev".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed
            .role_bindings
            .iter()
            .all(|b| b.role_ref.as_ref().is_none_or(|r| r.name != "future")),
        "no binding to `future` was stored"
    );
    drop(rbs);
    // What the review reproduced: her access review for `escalate roles` in dev.
    // Give the feed time to deliver `future` (it would grant at once if bound).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let escalate = ssar_on(
        &eve_review,
        "dev",
        "escalate",
        "rbac.authorization.k8s.io",
        "roles",
        "",
    )
    .await;
    assert!(!escalate.allowed, "{escalate:?}");
    // And now that it exists, binding it is the ordinary escalation refusal.
    let e = bindings
        .create_role_binding(future("eve-future"))
        .await
        .expect_err("binding `future` once it exists");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{e:?}"
    );

    // With `bind` on the name, a binding ahead of the role is accepted.
    rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone())
        .create_cluster_role(rb::CreateClusterRoleRequest {
            cluster_role: Some(rb::ClusterRole {
                metadata: meta("", "bind-later"),
                rules: vec![rb::PolicyRule {
                    verbs: vec!["bind".into()],
                    api_groups: vec!["rbac.authorization.k8s.io".into()],
                    resources: vec!["clusterroles".into()],
                    resource_names: vec!["later".into()],
                    ..Default::default()
                }],
            }),
        })
        .await
        .expect("bind-later");
    bind_in(
        &admin,
        "dev",
        "eve-bind-later",
        "ClusterRole",
        "bind-later",
        eve_subject.clone(),
    )
    .await;
    let later = rb::CreateRoleBindingRequest {
        role_binding: Some(rb::RoleBinding {
            metadata: meta("dev", "eve-later"),
            subjects: vec![eve_subject.clone()],
            role_ref: Some(rb::RoleRef {
                kind: "ClusterRole".into(),
                name: "later".into(),
                ..Default::default()
            }),
        }),
    };
    let mut r = bindings.create_role_binding(later.clone()).await;
    for _ in 0..250 {
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = bindings.create_role_binding(later.clone()).await;
    }
    r.expect("bind on the name allows a binding to a role not yet created");
    // It grants nothing until `later` exists; the review says why.
    let mut review = ssar_on(
        &eve_review,
        "dev",
        "escalate",
        "rbac.authorization.k8s.io",
        "roles",
        "",
    )
    .await;
    for _ in 0..100 {
        if review.reason.contains("later") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        review = ssar_on(
            &eve_review,
            "dev",
            "escalate",
            "rbac.authorization.k8s.io",
            "roles",
            "",
        )
        .await;
    }
    assert!(!review.allowed, "{review:?}");
    assert!(
        review
            .reason
            .contains("RoleBinding \"eve-later/dev\" refers to absent ClusterRole \"later\""),
        "{review:?}"
    );
}

/// `r` failed with NOT_FOUND and exactly the message `want`.
fn assert_not_found<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>, want: &str) {
    let e = r.expect_err(want);
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(e.message(), want);
}

/// A ClusterRole reference of a ClusterRoleBinding and a Role reference of a
/// RoleBinding, on create and on update: a missing role is NOT_FOUND with
/// Kubernetes' text unless the caller may `bind` it. (An update that adds a
/// subject to a binding whose role was deleted would otherwise bind the new
/// subject to whatever is created under that name later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_roles_are_refused_for_every_binding_kind_create_and_update() {
    let identity = IdentityServer::start().await;
    let admin = identity.admin().await;
    create_sa(&admin, "dev", "x").await;
    // carl may write bindings everywhere, and holds nothing else.
    grant_cluster(
        &admin,
        "binding-writer",
        "carl",
        vec![rb::PolicyRule {
            verbs: vec!["create".into(), "update".into(), "get".into()],
            api_groups: vec!["rbac.authorization.k8s.io".into()],
            resources: vec!["rolebindings".into(), "clusterrolebindings".into()],
            ..Default::default()
        }],
    )
    .await;
    let user = |name: &str| rb::Subject {
        kind: "User".into(),
        name: name.into(),
        ..Default::default()
    };
    let role_ref = |kind: &str, name: &str| {
        Some(rb::RoleRef {
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        })
    };
    let crb = |name: &str, role: &str, subjects: Vec<rb::Subject>| rb::ClusterRoleBinding {
        metadata: meta("", name),
        subjects,
        role_ref: role_ref("ClusterRole", role),
    };
    let rbind = |name: &str, role: &str, subjects: Vec<rb::Subject>| rb::RoleBinding {
        metadata: meta("dev", name),
        subjects,
        role_ref: role_ref("Role", role),
    };
    // Bindings whose roles the operator deletes afterwards.
    let get_pods = vec![rb::PolicyRule {
        verbs: vec!["get".into()],
        api_groups: vec!["".into()],
        resources: vec!["pods".into()],
        ..Default::default()
    }];
    let mut crs = rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone());
    crs.create_cluster_role(rb::CreateClusterRoleRequest {
        cluster_role: Some(rb::ClusterRole {
            metadata: meta("", "temp"),
            rules: get_pods.clone(),
        }),
    })
    .await
    .expect("cluster role");
    let mut roles = rb::role_service_client::RoleServiceClient::new(admin.clone());
    roles
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("dev", "temp"),
                rules: get_pods,
            }),
        })
        .await
        .expect("role");
    rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(admin.clone())
        .create_cluster_role_binding(rb::CreateClusterRoleBindingRequest {
            cluster_role_binding: Some(crb("crb-temp", "temp", vec![user("someone")])),
        })
        .await
        .expect("crb");
    rb::role_binding_service_client::RoleBindingServiceClient::new(admin.clone())
        .create_role_binding(rb::CreateRoleBindingRequest {
            role_binding: Some(rbind("rb-temp", "temp", vec![user("someone")])),
        })
        .await
        .expect("rb");
    crs.delete_cluster_role(rb::DeleteClusterRoleRequest {
        name: "temp".into(),
        ..Default::default()
    })
    .await
    .expect("delete cluster role");
    roles
        .delete_role(rb::DeleteRoleRequest {
            namespace: "dev".into(),
            name: "temp".into(),
            ..Default::default()
        })
        .await
        .expect("delete role");

    let carl = identity.issue("carl", "carl", &[]);
    let ch = identity.channel_as(&carl).await;
    let mut crbs =
        rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(ch.clone());
    let mut rbs = rb::role_binding_service_client::RoleBindingServiceClient::new(ch.clone());

    // Create.
    let r = past_auth(|| {
        let mut c = crbs.clone();
        let b = crb("carl-ghost", "ghost", vec![user("carl")]);
        async move {
            c.create_cluster_role_binding(rb::CreateClusterRoleBindingRequest {
                cluster_role_binding: Some(b),
            })
            .await
        }
    })
    .await;
    assert_not_found(
        r,
        "clusterroles.rbac.authorization.k8s.io \"ghost\" not found",
    );
    let r = rbs
        .create_role_binding(rb::CreateRoleBindingRequest {
            role_binding: Some(rbind("carl-ghost", "ghost", vec![user("carl")])),
        })
        .await;
    assert_not_found(r, "roles.rbac.authorization.k8s.io \"ghost\" not found");

    // Update: carl adds himself to the bindings of the deleted roles.
    let r = crbs
        .update_cluster_role_binding(rb::UpdateClusterRoleBindingRequest {
            cluster_role_binding: Some(crb("crb-temp", "temp", vec![user("carl")])),
        })
        .await;
    assert_not_found(
        r,
        "clusterroles.rbac.authorization.k8s.io \"temp\" not found",
    );
    let r = rbs
        .update_role_binding(rb::UpdateRoleBindingRequest {
            role_binding: Some(rbind("rb-temp", "temp", vec![user("carl")])),
        })
        .await;
    assert_not_found(r, "roles.rbac.authorization.k8s.io \"temp\" not found");
    // An update of a binding that does not exist names the binding first.
    let r = crbs
        .update_cluster_role_binding(rb::UpdateClusterRoleBindingRequest {
            cluster_role_binding: Some(crb("nope", "ghost", vec![user("carl")])),
        })
        .await;
    assert_not_found(r, "clusterrolebindings \"nope\" not found");
    // Nothing changed.
    let kept = rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(
        admin.clone(),
    )
    .get_cluster_role_binding(rb::GetClusterRoleBindingRequest {
        name: "crb-temp".into(),
    })
    .await
    .expect("crb-temp")
    .into_inner();
    assert_eq!(kept.subjects[0].name, "someone");

    // `bind` on the names lifts the check: accepted, granting nothing yet.
    grant_cluster(
        &admin,
        "binder",
        "carl",
        vec![rb::PolicyRule {
            verbs: vec!["bind".into()],
            api_groups: vec!["rbac.authorization.k8s.io".into()],
            resources: vec!["clusterroles".into(), "roles".into()],
            resource_names: vec!["ghost".into(), "temp".into()],
            ..Default::default()
        }],
    )
    .await;
    let mut r = Err(Status::unknown("not tried"));
    for _ in 0..250 {
        r = crbs
            .update_cluster_role_binding(rb::UpdateClusterRoleBindingRequest {
                cluster_role_binding: Some(crb("crb-temp", "temp", vec![user("carl")])),
            })
            .await;
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.expect("update with bind on `temp`");
    crbs.create_cluster_role_binding(rb::CreateClusterRoleBindingRequest {
        cluster_role_binding: Some(crb("carl-ghost", "ghost", vec![user("carl")])),
    })
    .await
    .expect("create with bind on `ghost`");
    rbs.create_role_binding(rb::CreateRoleBindingRequest {
        role_binding: Some(rbind("carl-ghost", "ghost", vec![user("carl")])),
    })
    .await
    .expect("role binding with bind on `ghost`");
    rbs.update_role_binding(rb::UpdateRoleBindingRequest {
        role_binding: Some(rbind("rb-temp", "temp", vec![user("carl")])),
    })
    .await
    .expect("role binding update with bind on `temp`");
}

/// Kubernetes asks `escalate` with the request's attributes; a create names no
/// object, so `escalate` limited to a role name lifts the check only on update of
/// that role, never on create (else it could mint the role with any rules once it
/// is deleted or before it exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalate_limited_to_a_name_does_not_lift_the_check_on_create() {
    let identity = IdentityServer::start().await;
    let admin = identity.admin().await;
    create_sa(&admin, "dev", "x").await;
    let rbac_group = || vec!["rbac.authorization.k8s.io".to_string()];
    let mut admin_roles = rb::role_service_client::RoleServiceClient::new(admin.clone());
    admin_roles
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("dev", "role-writer"),
                rules: vec![
                    rb::PolicyRule {
                        verbs: vec!["create".into(), "update".into(), "get".into()],
                        api_groups: rbac_group(),
                        resources: vec!["roles".into()],
                        ..Default::default()
                    },
                    rb::PolicyRule {
                        verbs: vec!["escalate".into()],
                        api_groups: rbac_group(),
                        resources: vec!["roles".into()],
                        resource_names: vec!["special".into()],
                        ..Default::default()
                    },
                ],
            }),
        })
        .await
        .expect("role-writer");
    bind_in(
        &admin,
        "dev",
        "dana-role-writer",
        "Role",
        "role-writer",
        rb::Subject {
            kind: "User".into(),
            name: "dana".into(),
            ..Default::default()
        },
    )
    .await;
    let dana = identity.issue("dana", "dana", &[]);
    let mut roles =
        rb::role_service_client::RoleServiceClient::new(identity.channel_as(&dana).await);
    let special = rb::Role {
        metadata: meta("dev", "special"),
        rules: vec![rb::PolicyRule {
            verbs: vec!["get".into()],
            api_groups: vec!["".into()],
            resources: vec!["secrets".into()],
            ..Default::default()
        }],
    };
    let e = past_auth(|| {
        let mut r = roles.clone();
        let role = special.clone();
        async move {
            r.create_role(rb::CreateRoleRequest { role: Some(role) })
                .await
        }
    })
    .await
    .expect_err("create with escalate limited to the name");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .starts_with("roles.rbac.authorization.k8s.io \"special\" is forbidden: user \"dana\""),
        "{e:?}"
    );
    assert!(
        e.message()
            .contains("{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"),
        "{e:?}"
    );
    // Once the role exists, `escalate` on its name allows the update.
    admin_roles
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("dev", "special"),
                rules: vec![],
            }),
        })
        .await
        .expect("special");
    roles
        .update_role(rb::UpdateRoleRequest {
            role: Some(special),
        })
        .await
        .expect("update with escalate on the name");
    // Another role name gets no such favour on update either.
    admin_roles
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("dev", "plain"),
                rules: vec![],
            }),
        })
        .await
        .expect("plain");
    let e = roles
        .update_role(rb::UpdateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("dev", "plain"),
                rules: vec![rb::PolicyRule {
                    verbs: vec!["get".into()],
                    api_groups: vec!["".into()],
                    resources: vec!["secrets".into()],
                    ..Default::default()
                }],
            }),
        })
        .await
        .expect_err("update of another role");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

/// Kubernetes treats `namespaces/<name>` as a request in namespace `<name>`: a
/// `view` RoleBinding in `ns-a` lets its subject read Namespace `ns-a` (and
/// nothing cluster-wide, no other namespace), and `view` has no rule on nodes.
/// SelfSubjectAccessReview gives the same answers for the same attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_in_a_namespace_reads_that_namespace_but_not_nodes() {
    let s = Stack::start().await;
    let identity = &s.identity;
    let admin = identity.admin().await;
    create_sa(&admin, "ns-a", "x").await;
    create_sa(&admin, "ns-b", "x").await;
    admin.node("node-1").await;
    let vera_subject = rb::Subject {
        kind: "User".into(),
        name: "vera".into(),
        ..Default::default()
    };
    bind_in(
        &admin,
        "ns-a",
        "vera-view",
        "ClusterRole",
        "view",
        vera_subject,
    )
    .await;
    let vera = identity.issue("vera", "vera", &[]);
    let ch = identity.channel_as(&vera).await;
    let mut namespaces = pb::namespace_service_client::NamespaceServiceClient::new(ch.clone());
    let get = |name: &str| pb::GetNamespaceRequest { name: name.into() };
    let own = past_auth(|| {
        let mut n = namespaces.clone();
        let req = get("ns-a");
        async move { n.get_namespace(req).await }
    })
    .await
    .expect("view in ns-a reads Namespace ns-a")
    .into_inner();
    assert_eq!(own.metadata.expect("meta").name, "ns-a");
    let other = namespaces
        .get_namespace(get("ns-b"))
        .await
        .expect_err("another namespace");
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    assert_eq!(
        other.message(),
        "namespaces \"ns-b\" is forbidden: User \"vera\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"ns-b\": no RBAC policy matched"
    );
    // view reads; it does not update or delete its namespace.
    let e = namespaces
        .update_namespace(pb::UpdateNamespaceRequest {
            namespace: Some(pb::Namespace {
                metadata: meta("", "ns-a"),
                ..Default::default()
            }),
        })
        .await
        .expect_err("view does not update namespaces");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().starts_with(
            "namespaces \"ns-a\" is forbidden: User \"vera\" cannot update resource \"namespaces\" in API group \"\" in the namespace \"ns-a\""
        ),
        "{e:?}"
    );
    let e = namespaces
        .delete_namespace(pb::DeleteNamespaceRequest {
            name: "ns-a".into(),
            ..Default::default()
        })
        .await
        .expect_err("view does not delete namespaces");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("in the namespace \"ns-a\""), "{e:?}");
    // Listing (and creating) namespaces names no namespace: cluster-wide only.
    let all = namespaces
        .list_namespaces(pb::ListNamespacesRequest::default())
        .await
        .expect_err("listing namespaces is cluster-wide");
    assert_eq!(all.code(), Code::PermissionDenied, "{all:?}");
    assert!(all.message().contains("at the cluster scope"), "{all:?}");
    // A watch of namespaces across the cluster likewise; one in ns-a shows
    // namespaced kinds only (cluster-scoped ones have no namespace), never ns-b.
    let mut watch = pb::watch_service_client::WatchServiceClient::new(ch.clone());
    let e = watch
        .watch(pb::WatchRequest {
            kinds: vec![pb::Kind::Namespace as i32],
            ..Default::default()
        })
        .await
        .expect_err("a cluster-wide watch of namespaces");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(
            "cannot watch resource \"namespaces\" in API group \"\" at the cluster scope"
        ),
        "{e:?}"
    );
    let mut events = watch
        .watch(pb::WatchRequest {
            kinds: vec![pb::Kind::Namespace as i32, pb::Kind::ServiceAccount as i32],
            namespace: "ns-a".into(),
            ..Default::default()
        })
        .await
        .expect("a watch in ns-a")
        .into_inner();
    create_sa(&admin, "ns-c", "y").await;
    create_sa(&admin, "ns-a", "y").await;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("open");
        // Bookmarks carry no object.
        let Some(object) = ev.object else { continue };
        match object {
            pb::watch_event::Object::ServiceAccount(sa) => {
                let m = sa.metadata.expect("meta");
                assert_eq!(m.namespace, "ns-a", "{m:?}");
                if m.name == "y" {
                    break;
                }
            }
            other => panic!("only ns-a's service accounts, got {other:?}"),
        }
    }
    drop(events);
    let node = pb::node_service_client::NodeServiceClient::new(ch)
        .get_node(pb::GetNodeRequest {
            name: "node-1".into(),
        })
        .await
        .expect_err("view has no rule on nodes");
    assert_eq!(node.code(), Code::PermissionDenied, "{node:?}");
    assert_eq!(
        node.message(),
        "nodes \"node-1\" is forbidden: User \"vera\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: no RBAC policy matched"
    );

    // SelfSubjectAccessReview agrees, for the attributes the methods use.
    let review = s.review.channel(identity, &vera);
    let cases = [
        ("ns-a", "get", "namespaces", "ns-a", true),
        ("ns-a", "list", "namespaces", "", true),
        ("ns-b", "get", "namespaces", "ns-b", false),
        ("", "list", "namespaces", "", false),
        ("", "watch", "namespaces", "", false),
        ("ns-a", "update", "namespaces", "ns-a", false),
        ("ns-a", "delete", "namespaces", "ns-a", false),
        ("", "get", "nodes", "node-1", false),
        ("", "list", "nodes", "", false),
        ("ns-a", "get", "nodes", "node-1", false),
    ];
    for (ns, verb, resource, name, want) in cases {
        let status = ssar_on(&review, ns, verb, "", resource, name).await;
        assert_eq!(
            status.allowed, want,
            "{verb} {resource} {name:?} in {ns:?}: {status:?}"
        );
    }
}

/// Binds the existing ClusterRole `role` to user `user` cluster-wide.
async fn bind_cluster(admin: &Channel, name: &str, role: &str, user: &str) {
    bind(admin, name, role, vec![subject("User", user, "")]).await;
}

/// Where the old `view` mattered (issue 13, finding 12b): bound cluster-wide it read
/// every Node. Kubernetes' `view` has no node rule, so a cluster-wide viewer reads
/// namespaces but not Nodes; `system:node-reader` is the role that does. An
/// installation upgraded with the old `view` (autoupdate "true") loses the node
/// rule when identity reconciles the bootstrap policy at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_view_reads_no_nodes_and_an_upgrade_drops_the_old_rule() {
    let identity = IdentityServer::start().await;
    let admin = identity.admin().await;
    admin.node("node-1").await;
    bind_cluster(&admin, "val-view", "view", "val").await;
    let val = identity.issue("val", "val", &[]);
    let ch = identity.channel_as(&val).await;
    let namespaces = pb::namespace_service_client::NamespaceServiceClient::new(ch.clone());
    let nodes = pb::node_service_client::NodeServiceClient::new(ch.clone());
    let get_node = || {
        let mut n = nodes.clone();
        async move {
            n.get_node(pb::GetNodeRequest {
                name: "node-1".into(),
            })
            .await
            .map(|_| ())
        }
    };
    // Cluster-wide `view` reads every namespace (once the binding is in the policy)...
    until_allowed(|| {
        let mut n = namespaces.clone();
        async move {
            n.list_namespaces(pb::ListNamespacesRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await
    .expect("cluster-wide view lists namespaces");
    // ... and no Node: get, list and watch are refused with Kubernetes' text.
    let e = get_node().await.expect_err("view does not read nodes");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "nodes \"node-1\" is forbidden: User \"val\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: no RBAC policy matched"
    );
    let e = nodes
        .clone()
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .expect_err("view does not list nodes");
    assert_eq!(
        e.message(),
        "nodes is forbidden: User \"val\" cannot list resource \"nodes\" in API group \"\" at the cluster scope: no RBAC policy matched"
    );
    let e = pb::watch_service_client::WatchServiceClient::new(ch.clone())
        .watch(pb::WatchRequest {
            kinds: vec![pb::Kind::Node as i32],
            ..Default::default()
        })
        .await
        .expect_err("view does not watch nodes");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("cannot watch resource \"nodes\" in API group \"\" at the cluster scope"),
        "{e:?}"
    );

    // An installation that still has the old `view` (its node rule) ...
    let mut crs = rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone());
    let mut old = crs
        .get_cluster_role(rb::GetClusterRoleRequest {
            name: "view".into(),
        })
        .await
        .expect("view")
        .into_inner();
    old.rules.push(rb::PolicyRule {
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        api_groups: vec!["".into()],
        resources: vec!["nodes".into()],
        ..Default::default()
    });
    crs.update_cluster_role(rb::UpdateClusterRoleRequest {
        cluster_role: Some(old),
    })
    .await
    .expect("old view");
    until_allowed(get_node)
        .await
        .expect("the old view read nodes");
    // ... loses it when identity reconciles the defaults (autoupdate is "true").
    let objects = badge_identity::Objects::new(
        identity.db.store().await,
        std::sync::Arc::new(badge_core::SystemClock),
    );
    badge_identity::controllers::bootstrap_policy(&objects)
        .await
        .expect("reconcile");
    let mut r = get_node().await;
    for _ in 0..250 {
        if r.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = get_node().await;
    }
    let e = r.expect_err("the reconciled view reads no nodes");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Reading Nodes is what `system:node-reader` is for.
    bind_cluster(&admin, "val-nodes", "system:node-reader", "val").await;
    until_allowed(get_node)
        .await
        .expect("system:node-reader reads nodes");
}
