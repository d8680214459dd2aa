//! badgectl's names for core's [`Kind`]: the apiVersion a manifest carries, how
//! kubectl prints a kind, and the names `get` and `delete` accept. The kinds
//! themselves (their names, resources and scope) are core's, so they cannot drift
//! from what the server stores.

use badge_core::Kind;

use super::{CORE, RBAC};

/// What badgectl adds to [`Kind`]. Only the kinds identity serves
/// ([`Kind::IDENTITY`]) are ever produced.
pub trait KindExt: Sized {
    fn api_version(self) -> &'static str;

    /// How kubectl names it in output: `serviceaccount`, `role.rbac.authorization.k8s.io`.
    fn display(self) -> String;

    /// Parses a kind as `get` and `delete` take it: singular, plural, short name,
    /// optionally with `.rbac.authorization.k8s.io`.
    fn parse(s: &str) -> Option<Self>;

    /// The kind a manifest's `kind` / `apiVersion` pair names.
    fn from_manifest(api_version: &str, kind: &str) -> Option<Self>;
}

impl KindExt for Kind {
    fn api_version(self) -> &'static str {
        if self.is_rbac() { RBAC } else { CORE }
    }

    fn display(self) -> String {
        let lower = self.as_str().to_ascii_lowercase();
        if self.api_version() == RBAC {
            format!("{lower}.rbac.authorization.k8s.io")
        } else {
            lower
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let s = lower
            .strip_suffix(".rbac.authorization.k8s.io")
            .unwrap_or(&lower);
        Some(match s {
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            "sa" | "serviceaccount" | "serviceaccounts" => Kind::ServiceAccount,
            "secret" | "secrets" => Kind::Secret,
            "po" | "pod" | "pods" => Kind::Pod,
            "no" | "node" | "nodes" => Kind::Node,
            "role" | "roles" => Kind::Role,
            "clusterrole" | "clusterroles" => Kind::ClusterRole,
            "rolebinding" | "rolebindings" => Kind::RoleBinding,
            "clusterrolebinding" | "clusterrolebindings" => Kind::ClusterRoleBinding,
            _ => return None,
        })
    }

    fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        let k = Kind::IDENTITY.into_iter().find(|k| k.as_str() == kind)?;
        (k.api_version() == api_version).then_some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(Kind::parse("sa"), Some(Kind::ServiceAccount));
        assert_eq!(Kind::parse("Pods"), Some(Kind::Pod));
        assert_eq!(
            Kind::parse("roles.rbac.authorization.k8s.io"),
            Some(Kind::Role)
        );
        assert_eq!(Kind::parse("deployments"), None);
        assert_eq!(Kind::from_manifest("v1", "Pod"), Some(Kind::Pod));
        assert_eq!(
            Kind::from_manifest("rbac.authorization.k8s.io/v1", "Pod"),
            None
        );
        assert_eq!(Kind::Role.display(), "role.rbac.authorization.k8s.io");
    }
}
