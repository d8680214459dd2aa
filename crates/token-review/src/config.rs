//! `badge-token-review` configuration: a TOML file, `BADGE_<SECTION>__<KEY>`
//! environment variables, then `--set section.key=value` (see
//! `badge_runtime::config`). Unknown keys are errors; every invalid setting is
//! reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use badge_core::review::{DEFAULT_MAX_TOKEN_LEN, ReviewSettings};
use badge_runtime::config::{DatabaseConfig, ListenConfig, LogConfig, Validate};
pub use badge_runtime::config::{EncryptionConfig, PeerConfig};
use serde::Deserialize;

/// Largest accepted `review.max_token_bytes` (the webhook body cap is 1 MiB).
pub const MAX_TOKEN_BYTES_LIMIT: usize = 512 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    /// gRPC over mTLS: TokenReviewService, health, reflection.
    pub server: ListenConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub review: ReviewSection,
    /// The key-encryption key identity seals Secret data with: the index holds
    /// Secrets, and legacy tokens are compared with the Secret's `token`.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// Kubernetes' webhook token (and authorization) authentication (JSON over
    /// HTTPS). Absent: not served. When served, every caller needs a credential
    /// (see [`WebhookConfig::client_ca`]).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The identity service, for the legacy-token last-used label (written through
    /// identity's SecretService with this service's client certificate). Absent:
    /// last use is not recorded.
    #[serde(default)]
    pub identity: Option<PeerConfig>,
    #[serde(default)]
    pub telemetry: badge_runtime::config::TelemetryConfig,
    /// Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`,
    /// see [`crate::ext_authz`]): the trust domain of peer certificates and audit
    /// sampling.
    #[serde(default)]
    pub mesh: MeshConfig,
}

/// `[mesh]`: Envoy ext_authz on the gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// The SPIFFE trust domain whose `spiffe://<td>/ns/<ns>/sa/<sa>` peer principals
    /// are Badge's service accounts. Unset: `default_trust_domain(review.issuers[0])`
    /// (the issuer's host, as Badge's CA uses). Principals of any other trust
    /// domain are not Badge's to vouch for: such a request is anonymous.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Every n-th allowed check is an audit event carrying the count since the
    /// previous one (denied checks are always audited, one event each); 0: allowed
    /// checks are not audited.
    #[serde(default = "default_audit_allowed_every")]
    pub audit_allowed_every: u64,
}

fn default_audit_allowed_every() -> u64 {
    1000
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: None,
            audit_allowed_every: default_audit_allowed_every(),
        }
    }
}

impl ReviewConfig {
    /// `mesh.trust_domain`, else the default derived from the first issuer.
    pub fn mesh_trust_domain(&self) -> badge_core::Result<badge_core::spiffe::TrustDomain> {
        match &self.mesh.trust_domain {
            Some(td) => badge_core::spiffe::TrustDomain::parse_field("mesh.trust_domain", td),
            None => Ok(badge_core::spiffe::default_trust_domain(
                self.review.issuers.first().map_or("", String::as_str),
            )),
        }
    }
}

impl badge_runtime::service::ServiceConfig for ReviewConfig {
    const NAME: &'static str = "badge-token-review";
    fn log(&self) -> &badge_runtime::config::LogConfig {
        &self.log
    }
    fn telemetry(&self) -> &badge_runtime::config::TelemetryConfig {
        &self.telemetry
    }
}

/// Kubernetes' authenticator flags (`--service-account-issuer`,
/// `--api-audiences`) and Badge's review knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSection {
    /// Issuers of bound tokens this service accepts (every issuer the token-issuer
    /// is configured with). Legacy tokens (`kubernetes/serviceaccount`) are always
    /// accepted.
    pub issuers: Vec<String>,
    /// `--api-audiences`: used when a review names no audiences, and as the
    /// audience of legacy tokens. Empty: the issuers.
    #[serde(default)]
    pub api_audiences: Vec<String>,
    /// Clock skew allowed on nbf/exp/iat (go-jose's 60 s).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// How long a deleted service account, pod, secret or node keeps its bound
    /// tokens valid after its deletion timestamp. Kubernetes: 60; Badge: 0.
    #[serde(default)]
    pub deletion_leeway_seconds: u64,
    /// Longer tokens are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Bound of the verified-token cache (decoded claims of tokens whose signature
    /// verified, by the token's SHA-256; about 0.5 KiB each); 0 disables it.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_leeway() -> u64 {
    60
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_LEN
}
fn default_cache_entries() -> usize {
    100_000
}

impl ReviewSection {
    /// The core's settings.
    pub fn settings(&self) -> ReviewSettings {
        ReviewSettings {
            issuers: self.issuers.clone(),
            api_audiences: badge_core::token::api_audiences(&self.issuers, &self.api_audiences),
            leeway: Duration::from_secs(self.leeway_seconds),
            deletion_leeway: Duration::from_secs(self.deletion_leeway_seconds),
            max_token_len: self.max_token_bytes,
        }
    }
}

/// The webhook listener (HTTPS, JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// Server certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of the client certificates callers (kube-apiserver: `client-certificate`
    /// in its webhook kubeconfig) present. Unset: the gRPC listener's
    /// `server.tls.ca`. There is no anonymous mode: a caller without a
    /// certificate from this CA must send a service-account bearer token, and
    /// either way needs RBAC `create` on `tokenreviews` / `subjectaccessreviews`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Connection limits (`[webhook.limits]`, see `badge_runtime::https`).
    #[serde(default)]
    pub limits: badge_runtime::https::HttpsLimits,
}

impl ReviewConfig {
    /// The CA webhook client certificates are verified against: `webhook.client_ca`,
    /// else `server.tls.ca`. Security: defaulted rather than optional, so leaving
    /// it out can never open the webhook to anonymous callers.
    pub fn webhook_client_ca(&self) -> Option<&std::path::Path> {
        let w = self.webhook.as_ref()?;
        Some(w.client_ca.as_deref().unwrap_or(&self.server.tls.ca))
    }
}

fn check_file(errors: &mut Vec<String>, key: &str, path: &std::path::Path) {
    if !path.is_file() {
        errors.push(format!("{key}: file {} does not exist", path.display()));
    }
}

impl Validate for ReviewConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.telemetry.validate(errors);
        self.server.validate("server", errors);
        self.database.validate(errors);
        let r = &self.review;
        if r.issuers.is_empty() {
            errors.push(
                "review.issuers: at least one issuer is required (the token-issuer's token.issuers)"
                    .into(),
            );
        }
        for (i, s) in r.issuers.iter().enumerate() {
            if s.is_empty() {
                errors.push(format!("review.issuers[{i}]: must not be empty"));
            } else if r.issuers[..i].contains(s) {
                errors.push(format!("review.issuers[{i}]: {s:?} is listed twice"));
            }
        }
        for (i, s) in r.api_audiences.iter().enumerate() {
            if s.is_empty() {
                errors.push(format!("review.api_audiences[{i}]: must not be empty"));
            }
        }
        if r.leeway_seconds > 3600 {
            errors.push("review.leeway_seconds: at most 3600".into());
        }
        if r.deletion_leeway_seconds > 3600 {
            errors.push("review.deletion_leeway_seconds: at most 3600".into());
        }
        if !(1024..=MAX_TOKEN_BYTES_LIMIT).contains(&r.max_token_bytes) {
            errors.push(format!(
                "review.max_token_bytes: must be between 1024 and {MAX_TOKEN_BYTES_LIMIT}, got {}",
                r.max_token_bytes
            ));
        }
        if r.cache_entries > 10_000_000 {
            errors.push("review.cache_entries: at most 10000000".into());
        }
        if let Some(p) = &self.encryption.kek_file {
            check_file(errors, "encryption.kek_file", p);
        }
        if self.mesh.trust_domain.is_some()
            && let Err(e) = self.mesh_trust_domain()
        {
            errors.push(e.to_string());
        }
        if let Some(w) = &self.webhook {
            check_file(errors, "webhook.cert", &w.cert);
            check_file(errors, "webhook.key", &w.key);
            if let Some(ca) = &w.client_ca {
                check_file(errors, "webhook.client_ca", ca);
            }
            w.limits.validate("webhook", errors);
        }
        if let Some(p) = &self.identity {
            if !p.endpoint.starts_with("https://") {
                errors.push(format!(
                    "identity.endpoint: must be an https:// URL, got {:?}",
                    p.endpoint
                ));
            }
            check_file(errors, "identity.tls.ca", &p.tls.ca);
            check_file(errors, "identity.tls.cert", &p.tls.cert);
            check_file(errors, "identity.tls.key", &p.tls.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use badge_runtime::config::load;

    fn files(dir: &std::path::Path) -> String {
        for f in ["ca.pem", "cert.pem", "key.pem", "kek"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let d = dir.display();
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
tls = {{ ca = "{d}/ca.pem", cert = "{d}/cert.pem", key = "{d}/key.pem" }}
[database]
url = "postgres://u@h/db"
[encryption]
kek_file = "{d}/kek"
"#
        )
    }

    #[test]
    fn defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!(
                "{}\n[review]\nissuers = [\"https://a\", \"https://b\"]\n",
                files(dir.path())
            ),
        )
        .unwrap();
        let c: ReviewConfig = load(Some(&f), vec![], &[]).unwrap();
        let s = c.review.settings();
        assert_eq!(s.api_audiences, vec!["https://a", "https://b"]);
        assert_eq!(s.leeway, Duration::from_secs(60));
        assert_eq!(s.deletion_leeway, Duration::ZERO);
        assert_eq!(s.max_token_len, 65536);
        assert_eq!(c.review.cache_entries, 100_000);
        assert!(c.webhook.is_none() && c.identity.is_none());
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!(
                "{}\n[review]\nissuers = [\"a\", \"a\", \"\"]\napi_audiences = [\"\"]\nmax_token_bytes = 10\nleeway_seconds = 99999\n[webhook]\nlisten = \"127.0.0.1:0\"\ncert = \"/nope/c\"\nkey = \"/nope/k\"\n[webhook.limits]\nmax_connections = 0\nrequest_timeout_seconds = 0\n[identity]\nendpoint = \"http://x\"\ntls = {{ ca = \"/nope\", cert = \"/nope\", key = \"/nope\" }}\n",
                files(dir.path())
            ),
        )
        .unwrap();
        let err = load::<ReviewConfig>(Some(&f), vec![], &[])
            .unwrap_err()
            .to_string();
        for want in [
            "review.issuers[1]",
            "review.issuers[2]",
            "review.api_audiences[0]",
            "review.max_token_bytes",
            "review.leeway_seconds",
            "webhook.cert",
            "webhook.key",
            "webhook.limits.max_connections: must be between 1 and 1000000, got 0",
            "webhook.limits.request_timeout_seconds",
            "identity.endpoint",
            "identity.tls.ca",
        ] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
        let err = load::<ReviewConfig>(Some(&f), vec![], &["review.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    /// Leaving `webhook.client_ca` out must not open the webhook: it defaults to
    /// the server's CA.
    #[test]
    fn webhook_client_ca_defaults_to_the_server_ca() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let d = dir.path().display();
        std::fs::write(
            &f,
            format!(
                "{}\n[review]\nissuers = [\"https://a\"]\n[webhook]\nlisten = \"127.0.0.1:0\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n",
                files(dir.path())
            ),
        )
        .unwrap();
        let c: ReviewConfig = load(Some(&f), vec![], &[]).unwrap();
        assert_eq!(
            c.webhook_client_ca(),
            Some(dir.path().join("ca.pem").as_path())
        );
        assert_eq!(
            c.webhook.as_ref().unwrap().limits,
            badge_runtime::https::HttpsLimits::default()
        );
        let c: ReviewConfig = load(
            Some(&f),
            vec![],
            &[
                format!("webhook.client_ca={d}/kek"),
                "webhook.limits.max_connections=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            c.webhook_client_ca(),
            Some(dir.path().join("kek").as_path())
        );
        assert_eq!(c.webhook.as_ref().unwrap().limits.max_connections, 7);
    }

    #[test]
    fn issuers_are_required() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!("{}\n[review]\nissuers = []\n", files(dir.path())),
        )
        .unwrap();
        let err = load::<ReviewConfig>(Some(&f), vec![], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("review.issuers: at least one"), "{err}");
    }
}
