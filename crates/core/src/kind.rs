//! The kinds of object the identity service stores.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    ServiceAccount,
    Secret,
    Pod,
    Node,
    /// A token-issuer signing key (public part, encrypted private part). Owned by
    /// the token-issuer; travels through the change feed so every verifier learns
    /// new keys, but is never served by the identity service.
    SigningKey,
    /// A revoked token (by jti), kept until the token's expiry. Owned by the
    /// token-issuer (`RevokeToken`); every token-review replica follows the feed.
    Revocation,
    /// A workload CA of the token-issuer (certificate chain, private key sealed
    /// under the KEK). Like signing keys: travels through the change feed so every
    /// replica and verifier learns new trust-bundle roots, never served by identity.
    CertificateAuthority,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::Pod,
        Kind::Node,
        Kind::SigningKey,
        Kind::Revocation,
        Kind::CertificateAuthority,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
    ];

    /// The kinds the identity service serves (and its Watch streams).
    pub const IDENTITY: [Kind; 9] = [
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::Pod,
        Kind::Node,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
    ];

    /// RBAC kinds: their names follow Kubernetes' path-segment rule (bootstrap
    /// names such as `system:auth-delegator` contain ':').
    pub fn is_rbac(self) -> bool {
        matches!(
            self,
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding
        )
    }

    /// The Kubernetes kind name, also the store's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::SigningKey => "SigningKey",
            Kind::Revocation => "Revocation",
            Kind::CertificateAuthority => "CertificateAuthority",
            Kind::Role => "Role",
            Kind::ClusterRole => "ClusterRole",
            Kind::RoleBinding => "RoleBinding",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    /// The Kubernetes resource (plural, lowercase) used in error texts and RBAC.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Secret => "secrets",
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::SigningKey => "signingkeys",
            Kind::Revocation => "revocations",
            Kind::CertificateAuthority => "certificateauthorities",
            Kind::Role => "roles",
            Kind::ClusterRole => "clusterroles",
            Kind::RoleBinding => "rolebindings",
            Kind::ClusterRoleBinding => "clusterrolebindings",
        }
    }

    /// Namespaced kinds live in a namespace that must exist; cluster-scoped kinds
    /// have an empty namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::SigningKey
                | Kind::Revocation
                | Kind::CertificateAuthority
                | Kind::ClusterRole
                | Kind::ClusterRoleBinding
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown kind {s:?}"))
    }
}
