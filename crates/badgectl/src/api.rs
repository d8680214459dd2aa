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

    pub async fn create(&self, p: &Proto) -> Result<Proto, Status> {
        let ch = self.ch.clone();
        Ok(match p.clone() {
            Proto::Namespace(o) => Proto::Namespace(
                id::namespace_service_client::NamespaceServiceClient::new(ch)
                    .create_namespace(id::CreateNamespaceRequest { namespace: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::ServiceAccount(o) => Proto::ServiceAccount(
                id::service_account_service_client::ServiceAccountServiceClient::new(ch)
                    .create_service_account(id::CreateServiceAccountRequest {
                        service_account: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
            Proto::Secret(o) => Proto::Secret(
                id::secret_service_client::SecretServiceClient::new(ch)
                    .create_secret(id::CreateSecretRequest { secret: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::Pod(o) => Proto::Pod(
                id::pod_service_client::PodServiceClient::new(ch)
                    .create_pod(id::CreatePodRequest { pod: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::Node(o) => Proto::Node(
                id::node_service_client::NodeServiceClient::new(ch)
                    .create_node(id::CreateNodeRequest { node: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::Role(o) => Proto::Role(
                rbac::role_service_client::RoleServiceClient::new(ch)
                    .create_role(rbac::CreateRoleRequest { role: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::ClusterRole(o) => Proto::ClusterRole(
                rbac::cluster_role_service_client::ClusterRoleServiceClient::new(ch)
                    .create_cluster_role(rbac::CreateClusterRoleRequest {
                        cluster_role: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
            Proto::RoleBinding(o) => Proto::RoleBinding(
                rbac::role_binding_service_client::RoleBindingServiceClient::new(ch)
                    .create_role_binding(rbac::CreateRoleBindingRequest {
                        role_binding: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
            Proto::ClusterRoleBinding(o) => Proto::ClusterRoleBinding(
                rbac::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(ch)
                    .create_cluster_role_binding(rbac::CreateClusterRoleBindingRequest {
                        cluster_role_binding: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
        })
    }

    pub async fn update(&self, p: &Proto) -> Result<Proto, Status> {
        let ch = self.ch.clone();
        Ok(match p.clone() {
            Proto::Namespace(o) => Proto::Namespace(
                id::namespace_service_client::NamespaceServiceClient::new(ch)
                    .update_namespace(id::UpdateNamespaceRequest { namespace: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::ServiceAccount(o) => Proto::ServiceAccount(
                id::service_account_service_client::ServiceAccountServiceClient::new(ch)
                    .update_service_account(id::UpdateServiceAccountRequest {
                        service_account: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
            Proto::Secret(o) => Proto::Secret(
                id::secret_service_client::SecretServiceClient::new(ch)
                    .update_secret(id::UpdateSecretRequest { secret: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::Pod(o) => Proto::Pod(
                id::pod_service_client::PodServiceClient::new(ch)
                    .update_pod(id::UpdatePodRequest { pod: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::Node(o) => Proto::Node(
                id::node_service_client::NodeServiceClient::new(ch)
                    .update_node(id::UpdateNodeRequest { node: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::Role(o) => Proto::Role(
                rbac::role_service_client::RoleServiceClient::new(ch)
                    .update_role(rbac::UpdateRoleRequest { role: Some(o) })
                    .await?
                    .into_inner(),
            ),
            Proto::ClusterRole(o) => Proto::ClusterRole(
                rbac::cluster_role_service_client::ClusterRoleServiceClient::new(ch)
                    .update_cluster_role(rbac::UpdateClusterRoleRequest {
                        cluster_role: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
            Proto::RoleBinding(o) => Proto::RoleBinding(
                rbac::role_binding_service_client::RoleBindingServiceClient::new(ch)
                    .update_role_binding(rbac::UpdateRoleBindingRequest {
                        role_binding: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
            Proto::ClusterRoleBinding(o) => Proto::ClusterRoleBinding(
                rbac::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(ch)
                    .update_cluster_role_binding(rbac::UpdateClusterRoleBindingRequest {
                        cluster_role_binding: Some(o),
                    })
                    .await?
                    .into_inner(),
            ),
        })
    }

    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Proto, Status> {
        let ch = self.ch.clone();
        let (namespace, name) = (namespace.to_string(), name.to_string());
        Ok(match kind {
            Kind::Namespace => Proto::Namespace(
                id::namespace_service_client::NamespaceServiceClient::new(ch)
                    .get_namespace(id::GetNamespaceRequest { name })
                    .await?
                    .into_inner(),
            ),
            Kind::ServiceAccount => Proto::ServiceAccount(
                id::service_account_service_client::ServiceAccountServiceClient::new(ch)
                    .get_service_account(id::GetServiceAccountRequest { namespace, name })
                    .await?
                    .into_inner(),
            ),
            Kind::Secret => Proto::Secret(
                id::secret_service_client::SecretServiceClient::new(ch)
                    .get_secret(id::GetSecretRequest { namespace, name })
                    .await?
                    .into_inner(),
            ),
            Kind::Pod => Proto::Pod(
                id::pod_service_client::PodServiceClient::new(ch)
                    .get_pod(id::GetPodRequest { namespace, name })
                    .await?
                    .into_inner(),
            ),
            Kind::Node => Proto::Node(
                id::node_service_client::NodeServiceClient::new(ch)
                    .get_node(id::GetNodeRequest { name })
                    .await?
                    .into_inner(),
            ),
            Kind::Role => Proto::Role(
                rbac::role_service_client::RoleServiceClient::new(ch)
                    .get_role(rbac::GetRoleRequest { namespace, name })
                    .await?
                    .into_inner(),
            ),
            Kind::ClusterRole => Proto::ClusterRole(
                rbac::cluster_role_service_client::ClusterRoleServiceClient::new(ch)
                    .get_cluster_role(rbac::GetClusterRoleRequest { name })
                    .await?
                    .into_inner(),
            ),
            Kind::RoleBinding => Proto::RoleBinding(
                rbac::role_binding_service_client::RoleBindingServiceClient::new(ch)
                    .get_role_binding(rbac::GetRoleBindingRequest { namespace, name })
                    .await?
                    .into_inner(),
            ),
            Kind::ClusterRoleBinding => Proto::ClusterRoleBinding(
                rbac::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(ch)
                    .get_cluster_role_binding(rbac::GetClusterRoleBindingRequest { name })
                    .await?
                    .into_inner(),
            ),
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
                Kind::Namespace => {
                    let r = id::namespace_service_client::NamespaceServiceClient::new(ch)
                        .list_namespaces(id::ListNamespacesRequest {
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.namespaces.into_iter().map(Proto::Namespace));
                    r.next_page_token
                }
                Kind::ServiceAccount => {
                    let r =
                        id::service_account_service_client::ServiceAccountServiceClient::new(ch)
                            .list_service_accounts(id::ListServiceAccountsRequest {
                                namespace,
                                page_size,
                                page_token: pt,
                                label_selector: String::new(),
                            })
                            .await?
                            .into_inner();
                    out.extend(r.service_accounts.into_iter().map(Proto::ServiceAccount));
                    r.next_page_token
                }
                Kind::Secret => {
                    let r = id::secret_service_client::SecretServiceClient::new(ch)
                        .list_secrets(id::ListSecretsRequest {
                            namespace,
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.secrets.into_iter().map(Proto::Secret));
                    r.next_page_token
                }
                Kind::Pod => {
                    let r = id::pod_service_client::PodServiceClient::new(ch)
                        .list_pods(id::ListPodsRequest {
                            namespace,
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.pods.into_iter().map(Proto::Pod));
                    r.next_page_token
                }
                Kind::Node => {
                    let r = id::node_service_client::NodeServiceClient::new(ch)
                        .list_nodes(id::ListNodesRequest {
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.nodes.into_iter().map(Proto::Node));
                    r.next_page_token
                }
                Kind::Role => {
                    let r = rbac::role_service_client::RoleServiceClient::new(ch)
                        .list_roles(rbac::ListRolesRequest {
                            namespace,
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.roles.into_iter().map(Proto::Role));
                    r.next_page_token
                }
                Kind::ClusterRole => {
                    let r = rbac::cluster_role_service_client::ClusterRoleServiceClient::new(ch)
                        .list_cluster_roles(rbac::ListClusterRolesRequest {
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.cluster_roles.into_iter().map(Proto::ClusterRole));
                    r.next_page_token
                }
                Kind::RoleBinding => {
                    let r = rbac::role_binding_service_client::RoleBindingServiceClient::new(ch)
                        .list_role_bindings(rbac::ListRoleBindingsRequest {
                            namespace,
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(r.role_bindings.into_iter().map(Proto::RoleBinding));
                    r.next_page_token
                }
                Kind::ClusterRoleBinding => {
                    let r = rbac::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(ch)
                        .list_cluster_role_bindings(rbac::ListClusterRoleBindingsRequest {
                            page_size,
                            page_token: pt,
                            label_selector: String::new(),
                        })
                        .await?
                        .into_inner();
                    out.extend(
                        r.cluster_role_bindings
                            .into_iter()
                            .map(Proto::ClusterRoleBinding),
                    );
                    r.next_page_token
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
            Kind::Namespace => {
                id::namespace_service_client::NamespaceServiceClient::new(ch)
                    .delete_namespace(id::DeleteNamespaceRequest {
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::ServiceAccount => {
                id::service_account_service_client::ServiceAccountServiceClient::new(ch)
                    .delete_service_account(id::DeleteServiceAccountRequest {
                        namespace,
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::Secret => {
                id::secret_service_client::SecretServiceClient::new(ch)
                    .delete_secret(id::DeleteSecretRequest {
                        namespace,
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::Pod => {
                id::pod_service_client::PodServiceClient::new(ch)
                    .delete_pod(id::DeletePodRequest {
                        namespace,
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::Node => {
                id::node_service_client::NodeServiceClient::new(ch)
                    .delete_node(id::DeleteNodeRequest {
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::Role => {
                rbac::role_service_client::RoleServiceClient::new(ch)
                    .delete_role(rbac::DeleteRoleRequest {
                        namespace,
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::ClusterRole => {
                rbac::cluster_role_service_client::ClusterRoleServiceClient::new(ch)
                    .delete_cluster_role(rbac::DeleteClusterRoleRequest {
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::RoleBinding => {
                rbac::role_binding_service_client::RoleBindingServiceClient::new(ch)
                    .delete_role_binding(rbac::DeleteRoleBindingRequest {
                        namespace,
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
            Kind::ClusterRoleBinding => {
                rbac::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(ch)
                    .delete_cluster_role_binding(rbac::DeleteClusterRoleBindingRequest {
                        name,
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
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
