//! Create / get / list / update / delete of every kind on identity, as one enum.

use badge_proto::{identity as id, rbac};
use tonic::Status;

use crate::conn::Ch;
use crate::k8s::{Kind, Proto};

/// identity's object services over one channel.
#[derive(Clone)]
pub struct Api {
    ch: Ch,
}

impl Api {
    pub fn new(ch: Ch) -> Self {
        Api { ch }
    }
}

/// A kind badgectl never parses (the token-issuer's own kinds): no identity RPC.
fn not_served(kind: Kind) -> Status {
    Status::unimplemented(format!("identity does not serve {}", kind.resource()))
}

/// A request naming an object: with its namespace for a namespaced kind, without
/// for a cluster-scoped one (`$ns` is the caller's variable).
macro_rules! scoped {
    (namespaced, $m:ident::$req:ident, $ns:ident { $($f:tt)* }) => {
        $m::$req { $ns, $($f)* }
    };
    (cluster, $m:ident::$req:ident, $ns:ident { $($f:tt)* }) => {
        $m::$req { $($f)* }
    };
}

/// [`Api`]'s verbs, from one row per kind: its [`Proto`] (and [`Kind`]) variant,
/// scope, gRPC client, the request field carrying the object, the list response's
/// field, and the five RPCs with their request types. Every kind's RPCs have the
/// same shape; only these names differ, so each verb is written once below.
macro_rules! api {
    ($(
        $variant:ident: $scope:ident, $m:ident::$cmod:ident::$client:ident, $field:ident, $items:ident {
            $create:ident($create_req:ident),
            $update:ident($update_req:ident),
            $get:ident($get_req:ident),
            $list:ident($list_req:ident),
            $delete:ident($delete_req:ident) $(,)?
        }
    )*) => {
        impl Api {
            pub async fn create(&self, p: &Proto) -> Result<Proto, Status> {
                let ch = self.ch.clone();
                Ok(match p.clone() {
                    $(Proto::$variant(o) => Proto::$variant(
                        $m::$cmod::$client::new(ch)
                            .$create($m::$create_req { $field: Some(o) })
                            .await?
                            .into_inner(),
                    ),)*
                })
            }

            pub async fn update(&self, p: &Proto) -> Result<Proto, Status> {
                let ch = self.ch.clone();
                Ok(match p.clone() {
                    $(Proto::$variant(o) => Proto::$variant(
                        $m::$cmod::$client::new(ch)
                            .$update($m::$update_req { $field: Some(o) })
                            .await?
                            .into_inner(),
                    ),)*
                })
            }

            pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Proto, Status> {
                let ch = self.ch.clone();
                let (namespace, name) = (namespace.to_string(), name.to_string());
                Ok(match kind {
                    $(Kind::$variant => Proto::$variant(
                        $m::$cmod::$client::new(ch)
                            .$get(scoped!($scope, $m::$get_req, namespace { name }))
                            .await?
                            .into_inner(),
                    ),)*
                    Kind::SigningKey | Kind::Revocation | Kind::CertificateAuthority => {
                        return Err(not_served(kind));
                    }
                })
            }

            /// Every object of `kind` in `namespace` (empty: all namespaces), following pages.
            pub async fn list(&self, kind: Kind, namespace: &str) -> Result<Vec<Proto>, Status> {
                let mut out = Vec::new();
                let mut page_token = String::new();
                loop {
                    let ch = self.ch.clone();
                    let namespace = namespace.to_string();
                    let (page_size, pt) = (1000, page_token.clone());
                    let next = match kind {
                        $(Kind::$variant => {
                            let r = $m::$cmod::$client::new(ch)
                                .$list(scoped!($scope, $m::$list_req, namespace {
                                    page_size,
                                    page_token: pt,
                                    label_selector: String::new(),
                                }))
                                .await?
                                .into_inner();
                            out.extend(r.$items.into_iter().map(Proto::$variant));
                            r.next_page_token
                        })*
                        Kind::SigningKey | Kind::Revocation | Kind::CertificateAuthority => {
                        return Err(not_served(kind));
                    }
                    };
                    if next.is_empty() {
                        return Ok(out);
                    }
                    page_token = next;
                }
            }

            pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), Status> {
                let ch = self.ch.clone();
                let (namespace, name) = (namespace.to_string(), name.to_string());
                match kind {
                    $(Kind::$variant => {
                        $m::$cmod::$client::new(ch)
                            .$delete(scoped!($scope, $m::$delete_req, namespace {
                                name,
                                ..Default::default()
                            }))
                            .await?;
                    })*
                    Kind::SigningKey | Kind::Revocation | Kind::CertificateAuthority => {
                        return Err(not_served(kind));
                    }
                }
                Ok(())
            }
        }
    };
}

api! {
    Namespace: cluster, id::namespace_service_client::NamespaceServiceClient, namespace, namespaces {
        create_namespace(CreateNamespaceRequest),
        update_namespace(UpdateNamespaceRequest),
        get_namespace(GetNamespaceRequest),
        list_namespaces(ListNamespacesRequest),
        delete_namespace(DeleteNamespaceRequest),
    }
    ServiceAccount: namespaced, id::service_account_service_client::ServiceAccountServiceClient, service_account, service_accounts {
        create_service_account(CreateServiceAccountRequest),
        update_service_account(UpdateServiceAccountRequest),
        get_service_account(GetServiceAccountRequest),
        list_service_accounts(ListServiceAccountsRequest),
        delete_service_account(DeleteServiceAccountRequest),
    }
    Secret: namespaced, id::secret_service_client::SecretServiceClient, secret, secrets {
        create_secret(CreateSecretRequest),
        update_secret(UpdateSecretRequest),
        get_secret(GetSecretRequest),
        list_secrets(ListSecretsRequest),
        delete_secret(DeleteSecretRequest),
    }
    Pod: namespaced, id::pod_service_client::PodServiceClient, pod, pods {
        create_pod(CreatePodRequest),
        update_pod(UpdatePodRequest),
        get_pod(GetPodRequest),
        list_pods(ListPodsRequest),
        delete_pod(DeletePodRequest),
    }
    Node: cluster, id::node_service_client::NodeServiceClient, node, nodes {
        create_node(CreateNodeRequest),
        update_node(UpdateNodeRequest),
        get_node(GetNodeRequest),
        list_nodes(ListNodesRequest),
        delete_node(DeleteNodeRequest),
    }
    Role: namespaced, rbac::role_service_client::RoleServiceClient, role, roles {
        create_role(CreateRoleRequest),
        update_role(UpdateRoleRequest),
        get_role(GetRoleRequest),
        list_roles(ListRolesRequest),
        delete_role(DeleteRoleRequest),
    }
    ClusterRole: cluster, rbac::cluster_role_service_client::ClusterRoleServiceClient, cluster_role, cluster_roles {
        create_cluster_role(CreateClusterRoleRequest),
        update_cluster_role(UpdateClusterRoleRequest),
        get_cluster_role(GetClusterRoleRequest),
        list_cluster_roles(ListClusterRolesRequest),
        delete_cluster_role(DeleteClusterRoleRequest),
    }
    RoleBinding: namespaced, rbac::role_binding_service_client::RoleBindingServiceClient, role_binding, role_bindings {
        create_role_binding(CreateRoleBindingRequest),
        update_role_binding(UpdateRoleBindingRequest),
        get_role_binding(GetRoleBindingRequest),
        list_role_bindings(ListRoleBindingsRequest),
        delete_role_binding(DeleteRoleBindingRequest),
    }
    ClusterRoleBinding: cluster, rbac::cluster_role_binding_service_client::ClusterRoleBindingServiceClient, cluster_role_binding, cluster_role_bindings {
        create_cluster_role_binding(CreateClusterRoleBindingRequest),
        update_cluster_role_binding(UpdateClusterRoleBindingRequest),
        get_cluster_role_binding(GetClusterRoleBindingRequest),
        list_cluster_role_bindings(ListClusterRoleBindingsRequest),
        delete_cluster_role_binding(DeleteClusterRoleBindingRequest),
    }
}

/// The server's copy with `desired`'s content, for an update carrying the live
/// resource_version. Pods change only labels and annotations (the spec is
/// immutable); a Secret keeps its type when the manifest names none.
pub fn merge_for_update(desired: &Proto, live: &Proto) -> Proto {
    use badge_proto::meta::ObjectMeta;
    fn meta(d: &Option<ObjectMeta>, l: &Option<ObjectMeta>) -> Option<ObjectMeta> {
        let mut m = l.clone().unwrap_or_default();
        let d = d.clone().unwrap_or_default();
        m.labels = d.labels;
        m.annotations = d.annotations;
        Some(m)
    }
    match (desired, live) {
        (Proto::Pod(d), Proto::Pod(l)) => Proto::Pod(id::Pod {
            metadata: meta(&d.metadata, &l.metadata),
            spec: l.spec.clone(),
        }),
        (Proto::Namespace(d), Proto::Namespace(l)) => Proto::Namespace(id::Namespace {
            metadata: meta(&d.metadata, &l.metadata),
            status: None,
        }),
        (Proto::Node(d), Proto::Node(l)) => Proto::Node(id::Node {
            metadata: meta(&d.metadata, &l.metadata),
        }),
        (Proto::ServiceAccount(d), Proto::ServiceAccount(l)) => {
            Proto::ServiceAccount(id::ServiceAccount {
                metadata: meta(&d.metadata, &l.metadata),
                ..d.clone()
            })
        }
        (Proto::Secret(d), Proto::Secret(l)) => Proto::Secret(id::Secret {
            metadata: meta(&d.metadata, &l.metadata),
            r#type: if d.r#type.is_empty() {
                l.r#type.clone()
            } else {
                d.r#type.clone()
            },
            ..d.clone()
        }),
        (Proto::Role(d), Proto::Role(l)) => Proto::Role(rbac::Role {
            metadata: meta(&d.metadata, &l.metadata),
            ..d.clone()
        }),
        (Proto::ClusterRole(d), Proto::ClusterRole(l)) => Proto::ClusterRole(rbac::ClusterRole {
            metadata: meta(&d.metadata, &l.metadata),
            ..d.clone()
        }),
        (Proto::RoleBinding(d), Proto::RoleBinding(l)) => Proto::RoleBinding(rbac::RoleBinding {
            metadata: meta(&d.metadata, &l.metadata),
            ..d.clone()
        }),
        (Proto::ClusterRoleBinding(d), Proto::ClusterRoleBinding(l)) => {
            Proto::ClusterRoleBinding(rbac::ClusterRoleBinding {
                metadata: meta(&d.metadata, &l.metadata),
                ..d.clone()
            })
        }
        (d, _) => d.clone(),
    }
}

/// Whether every field `desired` sets already has that value in `live` (JSON
/// shapes). Arrays must match element by element; with `prefix_arrays` the live
/// array may be longer (admission appends to pods).
pub fn is_subset(
    desired: &serde_json::Value,
    live: &serde_json::Value,
    prefix_arrays: bool,
) -> bool {
    use serde_json::Value;
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv, prefix_arrays),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            (d.len() == l.len() || (prefix_arrays && d.len() <= l.len()))
                && d.iter().zip(l).all(|(a, b)| is_subset(a, b, prefix_arrays))
        }
        (d, l) => d == l,
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset() {
        let live = json!({"metadata":{"name":"a","uid":"u","labels":{"x":"1"}},"spec":{"volumes":[{"name":"t"},{"name":"kube-api-access-x"}]}});
        assert!(is_subset(&json!({"metadata":{"name":"a"}}), &live, false));
        assert!(!is_subset(&json!({"metadata":{"name":"b"}}), &live, false));
        assert!(!is_subset(
            &json!({"spec":{"volumes":[{"name":"t"}]}}),
            &live,
            false
        ));
        assert!(is_subset(
            &json!({"spec":{"volumes":[{"name":"t"}]}}),
            &live,
            true
        ));
        assert!(!is_subset(
            &json!({"metadata":{"labels":{"y":"1"}}}),
            &live,
            false
        ));
        assert!(is_subset(
            &json!({"metadata":{"annotations":{}}}),
            &live,
            false
        ));
    }
}
