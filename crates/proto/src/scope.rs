//! What an authorization check needs from a request message: the namespace and
//! object name it acts on (Kubernetes' request attributes), read from the decoded
//! message by the auth layer. Kept next to the messages so a new request type
//! states its scope where it is defined.
//!
//! Conventions, as Kubernetes derives them from a URL: `create` and `list` act on a
//! collection (no name; `create` has the new object's namespace), `get`, `update`
//! and `delete` on one named object; cluster-scoped kinds have no namespace; an
//! empty namespace on a namespaced `list` means every namespace, which only a
//! cluster-wide grant allows.

use crate::badge::meta::v1::ObjectMeta;
use crate::{certificates, identity, rbac, token};

/// The namespace and name a request acts on; `resources` overrides the method's own
/// (API group, resource) when one request touches several kinds (Watch).
pub trait Scope {
    fn namespace(&self) -> &str {
        ""
    }
    fn name(&self) -> &str {
        ""
    }
    /// Empty: the method's own resource.
    fn resources(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
}

fn meta_namespace(meta: Option<&ObjectMeta>) -> &str {
    meta.map_or("", |m| m.namespace.as_str())
}

fn meta_name(meta: Option<&ObjectMeta>) -> &str {
    meta.map_or("", |m| m.name.as_str())
}

/// Namespaced kind: Create (namespace of the object), Get/Delete (namespace, name),
/// List (namespace), Update (namespace and name of the object).
macro_rules! namespaced {
    ($create:ty, $get:ty, $list:ty, $update:ty, $delete:ty, $field:ident) => {
        impl Scope for $create {
            fn namespace(&self) -> &str {
                meta_namespace(self.$field.as_ref().and_then(|o| o.metadata.as_ref()))
            }
        }
        impl Scope for $get {
            fn namespace(&self) -> &str {
                &self.namespace
            }
            fn name(&self) -> &str {
                &self.name
            }
        }
        impl Scope for $list {
            fn namespace(&self) -> &str {
                &self.namespace
            }
        }
        impl Scope for $update {
            fn namespace(&self) -> &str {
                meta_namespace(self.$field.as_ref().and_then(|o| o.metadata.as_ref()))
            }
            fn name(&self) -> &str {
                meta_name(self.$field.as_ref().and_then(|o| o.metadata.as_ref()))
            }
        }
        impl Scope for $delete {
            fn namespace(&self) -> &str {
                &self.namespace
            }
            fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

/// Cluster-scoped kind: only Get, Update and Delete name an object.
macro_rules! cluster {
    ($create:ty, $get:ty, $list:ty, $update:ty, $delete:ty, $field:ident) => {
        impl Scope for $create {}
        impl Scope for $get {
            fn name(&self) -> &str {
                &self.name
            }
        }
        impl Scope for $list {}
        impl Scope for $update {
            fn name(&self) -> &str {
                meta_name(self.$field.as_ref().and_then(|o| o.metadata.as_ref()))
            }
        }
        impl Scope for $delete {
            fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

// Namespaces are cluster-scoped objects, but Kubernetes' RequestInfo treats
// `namespaces/<name>` as a request *in* namespace `<name>`: that is what lets a
// RoleBinding of `view`/`edit`/`admin` in N read (or manage) Namespace N itself,
// and nothing else. Create and List name no namespace and stay cluster-wide.
impl Scope for identity::CreateNamespaceRequest {}
impl Scope for identity::ListNamespacesRequest {}
impl Scope for identity::GetNamespaceRequest {
    fn namespace(&self) -> &str {
        &self.name
    }
    fn name(&self) -> &str {
        &self.name
    }
}
impl Scope for identity::UpdateNamespaceRequest {
    fn namespace(&self) -> &str {
        self.name()
    }
    fn name(&self) -> &str {
        meta_name(self.namespace.as_ref().and_then(|o| o.metadata.as_ref()))
    }
}
impl Scope for identity::DeleteNamespaceRequest {
    fn namespace(&self) -> &str {
        &self.name
    }
    fn name(&self) -> &str {
        &self.name
    }
}
cluster!(
    identity::CreateNodeRequest,
    identity::GetNodeRequest,
    identity::ListNodesRequest,
    identity::UpdateNodeRequest,
    identity::DeleteNodeRequest,
    node
);
namespaced!(
    identity::CreateServiceAccountRequest,
    identity::GetServiceAccountRequest,
    identity::ListServiceAccountsRequest,
    identity::UpdateServiceAccountRequest,
    identity::DeleteServiceAccountRequest,
    service_account
);
namespaced!(
    identity::CreateSecretRequest,
    identity::GetSecretRequest,
    identity::ListSecretsRequest,
    identity::UpdateSecretRequest,
    identity::DeleteSecretRequest,
    secret
);
namespaced!(
    identity::CreatePodRequest,
    identity::GetPodRequest,
    identity::ListPodsRequest,
    identity::UpdatePodRequest,
    identity::DeletePodRequest,
    pod
);
namespaced!(
    rbac::CreateRoleRequest,
    rbac::GetRoleRequest,
    rbac::ListRolesRequest,
    rbac::UpdateRoleRequest,
    rbac::DeleteRoleRequest,
    role
);
namespaced!(
    rbac::CreateRoleBindingRequest,
    rbac::GetRoleBindingRequest,
    rbac::ListRoleBindingsRequest,
    rbac::UpdateRoleBindingRequest,
    rbac::DeleteRoleBindingRequest,
    role_binding
);
cluster!(
    rbac::CreateClusterRoleRequest,
    rbac::GetClusterRoleRequest,
    rbac::ListClusterRolesRequest,
    rbac::UpdateClusterRoleRequest,
    rbac::DeleteClusterRoleRequest,
    cluster_role
);
cluster!(
    rbac::CreateClusterRoleBindingRequest,
    rbac::GetClusterRoleBindingRequest,
    rbac::ListClusterRoleBindingsRequest,
    rbac::UpdateClusterRoleBindingRequest,
    rbac::DeleteClusterRoleBindingRequest,
    cluster_role_binding
);

/// (API group, resource) of a watchable kind.
pub fn kind_resource(kind: identity::Kind) -> Option<(&'static str, &'static str)> {
    use identity::Kind as K;
    const RBAC: &str = "rbac.authorization.k8s.io";
    Some(match kind {
        K::Unspecified => return None,
        K::Namespace => ("", "namespaces"),
        K::ServiceAccount => ("", "serviceaccounts"),
        K::Secret => ("", "secrets"),
        K::Pod => ("", "pods"),
        K::Node => ("", "nodes"),
        K::Role => (RBAC, "roles"),
        K::ClusterRole => (RBAC, "clusterroles"),
        K::RoleBinding => (RBAC, "rolebindings"),
        K::ClusterRoleBinding => (RBAC, "clusterrolebindings"),
    })
}

/// Every watchable kind.
pub const WATCHABLE: [identity::Kind; 9] = [
    identity::Kind::Namespace,
    identity::Kind::ServiceAccount,
    identity::Kind::Secret,
    identity::Kind::Pod,
    identity::Kind::Node,
    identity::Kind::Role,
    identity::Kind::ClusterRole,
    identity::Kind::RoleBinding,
    identity::Kind::ClusterRoleBinding,
];

/// A watch needs `watch` on every kind it asks for (every kind when it names none),
/// in its namespace (every namespace when empty). An unknown kind number maps to
/// nothing here; the service refuses it with INVALID_ARGUMENT.
impl Scope for identity::WatchRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn resources(&self) -> Vec<(&'static str, &'static str)> {
        let kinds: Vec<identity::Kind> = if self.kinds.is_empty() {
            WATCHABLE.to_vec()
        } else {
            self.kinds
                .iter()
                .filter_map(|k| identity::Kind::try_from(*k).ok())
                .collect()
        };
        let mut out: Vec<(&'static str, &'static str)> =
            kinds.into_iter().filter_map(kind_resource).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// `create serviceaccounts/token` on the named service account.
impl Scope for token::CreateTokenRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// `create podcertificaterequests` in the request's namespace (no name: a create).
impl Scope for certificates::CreatePodCertificateRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// `create jwtsvids` (badge.dev) in the request's namespace (no name: a create).
impl Scope for certificates::MintJwtSvidRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Namespace;

    fn ns_object(name: &str) -> Option<Namespace> {
        Some(Namespace {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Kubernetes' RequestInfo: `namespaces/<name>` is a request in namespace
    /// `<name>` (so a RoleBinding there decides it); the collection (create, list)
    /// names no namespace and needs a cluster-wide grant.
    #[test]
    fn a_named_namespace_request_is_in_that_namespace() {
        let get = identity::GetNamespaceRequest { name: "dev".into() };
        assert_eq!((get.namespace(), get.name()), ("dev", "dev"));
        let update = identity::UpdateNamespaceRequest {
            namespace: ns_object("dev"),
        };
        assert_eq!((update.namespace(), update.name()), ("dev", "dev"));
        let delete = identity::DeleteNamespaceRequest {
            name: "dev".into(),
            ..Default::default()
        };
        assert_eq!((delete.namespace(), delete.name()), ("dev", "dev"));
        let create = identity::CreateNamespaceRequest {
            namespace: ns_object("dev"),
        };
        assert_eq!((create.namespace(), create.name()), ("", ""));
        let list = identity::ListNamespacesRequest::default();
        assert_eq!((list.namespace(), list.name()), ("", ""));
        // Nodes stay cluster-scoped.
        let node = identity::GetNodeRequest { name: "n1".into() };
        assert_eq!((node.namespace(), node.name()), ("", "n1"));
    }
}
