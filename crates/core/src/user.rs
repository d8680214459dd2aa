//! Usernames for service accounts
//! (`k8s.io/apiserver/pkg/authentication/serviceaccount/util.go`).

/// The prefix of every service-account username.
pub const SERVICE_ACCOUNT_USERNAME_PREFIX: &str = "system:serviceaccount:";

/// `system:serviceaccount:<namespace>:<name>`, the username a service account's
/// tokens authenticate as and RBAC subjects of kind ServiceAccount match.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_USERNAME_PREFIX}{namespace}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        let cases = [
            (
                "default",
                "default",
                "system:serviceaccount:default:default",
            ),
            (
                "kube-system",
                "build-bot",
                "system:serviceaccount:kube-system:build-bot",
            ),
            ("ns", "a.b", "system:serviceaccount:ns:a.b"),
        ];
        for (ns, name, want) in cases {
            assert_eq!(service_account_username(ns, name), want);
        }
    }
}
