//! `[ca]`: the workload CA (docs/certificates.md, README "Certificates for service
//! meshes").

use std::path::PathBuf;
use std::time::Duration;

use badge_ca::CaAlgorithm;
use badge_ca::authority::defaults;
use badge_core::spiffe::{self, TrustDomain};
use serde::Deserialize;

/// Settings of the workload CA. Every default is explained in docs/certificates.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Serve the CA at all (it needs the key-encryption key, or `plugin_dir`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// SPIFFE trust domain; default: the host of `token.issuers[0]`.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Key algorithm of generated CAs: "ECDSAP256" (default) or "RSA3072".
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Root and intermediate validity of generated CAs.
    #[serde(default = "default_validity")]
    pub validity_seconds: u64,
    /// A new CA is generated this long after the current one started signing.
    #[serde(default = "default_rotation")]
    pub rotation_period_seconds: u64,
    /// A new CA is in the trust bundle this long before it signs.
    #[serde(default = "default_propagation")]
    pub propagation_delay_seconds: u64,
    /// The cap on any issued certificate's lifetime (and Istio's default).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_seconds: u64,
    /// How often the rotating replica re-checks the CA lifecycle.
    #[serde(default = "default_check")]
    pub check_interval_seconds: u64,
    /// Istio's plug-in CA directory (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// optional `cert-chain.pem`): sign with that CA, no generation or rotation.
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
    /// Audiences a bearer token must carry for Istio's `CreateCertificate`.
    #[serde(default = "default_istio_audiences")]
    pub istio_audiences: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_algorithm() -> String {
    "ECDSAP256".into()
}
fn default_validity() -> u64 {
    defaults::CA_VALIDITY.as_secs()
}
fn default_rotation() -> u64 {
    defaults::ROTATION_PERIOD.as_secs()
}
fn default_propagation() -> u64 {
    defaults::PROPAGATION_DELAY.as_secs()
}
fn default_max_lifetime() -> u64 {
    86_400
}
fn default_check() -> u64 {
    10
}
fn default_istio_audiences() -> Vec<String> {
    vec!["istio-ca".into()]
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            enabled: true,
            trust_domain: None,
            algorithm: default_algorithm(),
            validity_seconds: default_validity(),
            rotation_period_seconds: default_rotation(),
            propagation_delay_seconds: default_propagation(),
            max_lifetime_seconds: default_max_lifetime(),
            check_interval_seconds: default_check(),
            plugin_dir: None,
            istio_audiences: default_istio_audiences(),
        }
    }
}

impl CaConfig {
    pub fn algorithm(&self) -> Result<CaAlgorithm, String> {
        match self.algorithm.as_str() {
            "ECDSAP256" => Ok(CaAlgorithm::EcdsaP256),
            "RSA3072" => Ok(CaAlgorithm::Rsa3072),
            other => Err(format!(
                "ca.algorithm: must be \"ECDSAP256\" or \"RSA3072\", got {other:?}"
            )),
        }
    }

    /// The configured trust domain, or the default derived from the first issuer.
    pub fn trust_domain(&self, first_issuer: &str) -> Result<TrustDomain, String> {
        match &self.trust_domain {
            Some(td) => TrustDomain::parse(td)
                .map_err(|e| format!("ca.trust_domain: invalid value {td:?}: {e}")),
            None => Ok(spiffe::default_trust_domain(first_issuer)),
        }
    }

    /// The issuance policy (`badge_core::spiffe::plan`).
    pub fn issuance_policy(&self, trust_domain: TrustDomain) -> badge_core::spiffe::plan::Policy {
        let mut p = badge_core::spiffe::plan::Policy::new(trust_domain);
        p.max_lifetime = Duration::from_secs(self.max_lifetime_seconds);
        p.default_lifetime = p.default_lifetime.min(p.max_lifetime);
        p
    }

    /// How long a signing CA must stay valid: it is published for the propagation
    /// delay, signs for the rotation period until its successor is generated, keeps
    /// signing while the successor is published (another propagation delay), and its
    /// last leaf lives `max_lifetime` — plus the backdates and a check interval.
    pub fn minimum_validity(&self) -> Duration {
        Duration::from_secs(
            self.propagation_delay_seconds
                .saturating_mul(2)
                .saturating_add(self.rotation_period_seconds)
                .saturating_add(self.max_lifetime_seconds)
                .saturating_add(self.check_interval_seconds),
        )
    }

    pub fn validate(&self, first_issuer: Option<&str>, errors: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if let Err(e) = self.algorithm() {
            errors.push(e);
        }
        if let Some(first) = first_issuer
            && let Err(e) = self.trust_domain(first)
        {
            errors.push(e);
        }
        if let Some(td) = first_issuer.and_then(|f| self.trust_domain(f).ok())
            && let Err(e) = self.issuance_policy(td).validate("ca")
        {
            // Names ca.max_lifetime; the setting is max_lifetime_seconds.
            errors.push(
                e.to_string()
                    .replace("ca.max_lifetime", "ca.max_lifetime_seconds"),
            );
        }
        if self.rotation_period_seconds < 60 {
            errors.push("ca.rotation_period_seconds: must be at least 60".into());
        }
        if self.check_interval_seconds == 0 {
            errors.push("ca.check_interval_seconds: must be at least 1".into());
        }
        if self.plugin_dir.is_none()
            && Duration::from_secs(self.validity_seconds) < self.minimum_validity()
        {
            errors.push(format!(
                "ca.validity_seconds: {} is too short: a CA must stay valid for 2 × propagation_delay_seconds + rotation_period_seconds + max_lifetime_seconds + check_interval_seconds = {} seconds",
                self.validity_seconds,
                self.minimum_validity().as_secs()
            ));
        }
        if let Some(dir) = &self.plugin_dir
            && !dir.is_dir()
        {
            errors.push(format!(
                "ca.plugin_dir: directory {} does not exist",
                dir.display()
            ));
        }
        if self.istio_audiences.is_empty() || self.istio_audiences.iter().any(String::is_empty) {
            errors.push("ca.istio_audiences: must name at least one non-empty audience".into());
        }
    }
}
