//! RBAC on every RPC, end to end over real mTLS: the method matrix (denied without a
//! rule, allowed with exactly the rule the table names), namespace and name read
//! from the request, bearer service-account callers, the cross-namespace example,
//! escalation prevention and the bootstrap policy.

use std::time::Duration;

use badge_proto::rbac as rb;
use badge_proto::review as rv;
use badge_proto::token as tk;
use badge_runtime::{MethodRule, MethodTable};
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, ReviewServer, meta, pb};
use prost::bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};

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
    rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone())
        .create_cluster_role(rb::CreateClusterRoleRequest {
            cluster_role: Some(rb::ClusterRole {
                metadata: meta("", name),
                rules,
            }),
        })
        .await
        .expect("cluster role");
    rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(admin.clone())
        .create_cluster_role_binding(rb::CreateClusterRoleBindingRequest {
            cluster_role_binding: Some(rb::ClusterRoleBinding {
                metadata: meta("", name),
                subjects: vec![rb::Subject {
                    kind: "User".into(),
                    name: user.into(),
                    ..Default::default()
                }],
                role_ref: Some(rb::RoleRef {
                    kind: "ClusterRole".into(),
                    name: name.into(),
                    ..Default::default()
                }),
            }),
        })
        .await
        .expect("cluster role binding");
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

/// A TLS channel with no client certificate.
fn anonymous(identity: &IdentityServer, addr: std::net::SocketAddr) -> Channel {
    let ca = std::fs::read(&identity.pki.ca).expect("ca");
    Channel::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect_lazy()
}

struct Stack {
    identity: IdentityServer,
    issuer: IssuerServer,
    review: ReviewServer,
}

/// identity (accepting the issuer's tokens), token-issuer and token-review.
async fn stack() -> Stack {
    let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://127.0.0.1:{}",
        oidc.local_addr().expect("addr").port()
    );
    let identity = IdentityServer::start_accepting(&[url]).await;
    let issuer = IssuerServer::start_on(&identity, IssuerOptions::default(), oidc).await;
    let review = ReviewServer::start(&identity, &issuer).await;
    Stack {
        identity,
        issuer,
        review,
    }
}

/// Methods `system:basic-user` grants to `system:authenticated`.
const OPEN_TO_AUTHENTICATED: [&str; 1] =
    ["/badge.review.v1.AccessReviewService/CreateSelfSubjectAccessReview"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_denied_without_its_rule_and_allowed_with_exactly_it() {
    let s = stack().await;
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
    pb::service_account_service_client::ServiceAccountServiceClient::new(admin.clone())
        .create_service_account(pb::CreateServiceAccountRequest {
            service_account: Some(pb::ServiceAccount {
                metadata: meta(ns, name),
                ..Default::default()
            }),
        })
        .await
        .expect("service account");
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
    let s = stack().await;
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
    let s = stack().await;
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
    // ... but a role she holds entirely may be bound, and a binding to an absent
    // role is allowed (it grants nothing).
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
    bindings
        .create_role_binding(absent)
        .await
        .expect("absent role");
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
    view.rules.truncate(1);
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
