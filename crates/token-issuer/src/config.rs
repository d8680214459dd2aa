//! `badge-token-issuer` configuration (README "Configuration").

use std::net::SocketAddr;
use std::path::PathBuf;

use badge_core::token::{EXTENDED_EXPIRATION_SECONDS, IssuerSettings};
pub use badge_runtime::config::PeerConfig;
use badge_runtime::config::{DatabaseConfig, ListenConfig, LogConfig, Validate};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// gRPC over mTLS: TokenService, KeyService (and ExternalJWTSigner).
    pub server: ListenConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub token: TokenConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    pub oidc: OidcConfig,
    #[serde(default)]
    pub external_signer: ExternalSignerConfig,
    /// The identity service, for the legacy-token controller (which writes Secrets
    /// through identity's API). Absent: no legacy tokens are minted.
    #[serde(default)]
    pub identity: Option<PeerConfig>,
    #[serde(default)]
    pub telemetry: badge_runtime::config::TelemetryConfig,
    /// The workload CA (docs/certificates.md).
    #[serde(default)]
    pub ca: crate::ca_config::CaConfig,
}

impl badge_runtime::service::ServiceConfig for IssuerConfig {
    const NAME: &'static str = "badge-token-issuer";
    fn log(&self) -> &badge_runtime::config::LogConfig {
        &self.log
    }
    fn telemetry(&self) -> &badge_runtime::config::TelemetryConfig {
        &self.telemetry
    }
}

/// Kubernetes' `--service-account-*` token flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `--service-account-issuer`: the first signs, all are accepted. The first must
    /// be an https URL without query or fragment (OIDC discovery serves it).
    pub issuers: Vec<String>,
    /// `--api-audiences`; empty: every issuer.
    #[serde(default)]
    pub api_audiences: Vec<String>,
    /// `--service-account-max-token-expiration` in seconds; 0: no cap.
    #[serde(default)]
    pub max_expiration_seconds: i64,
    /// `--service-account-extend-token-expiration`.
    #[serde(default = "yes")]
    pub extend_expiration: bool,
    #[serde(default = "default_extended")]
    pub max_extended_expiration_seconds: i64,
}

fn yes() -> bool {
    true
}
fn default_extended() -> i64 {
    EXTENDED_EXPIRATION_SECONDS
}

impl TokenConfig {
    pub fn settings(&self) -> IssuerSettings {
        IssuerSettings {
            issuers: self.issuers.clone(),
            api_audiences: badge_core::token::api_audiences(&self.issuers, &self.api_audiences),
            max_expiration_seconds: (self.max_expiration_seconds != 0)
                .then_some(self.max_expiration_seconds),
            extend_expiration: self.extend_expiration,
            max_extended_expiration_seconds: self.max_extended_expiration_seconds,
        }
    }
}

/// Signing keys: generated and rotated in the store (private parts sealed with the
/// key-encryption key), or loaded from PEM files as Kubernetes does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Algorithm of generated keys: "ES256" or "RS256".
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// File holding the base64 key-encryption key (32 bytes). Never keep it in the
    /// database it protects.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// The key-encryption key itself, base64 (prefer `kek_file`; useful as
    /// BADGE_KEYS__KEK from a secret store).
    #[serde(default)]
    pub kek: Option<String>,
    #[serde(default = "default_rotation")]
    pub rotation_period_seconds: u64,
    #[serde(default = "default_propagation")]
    pub propagation_delay_seconds: u64,
    /// How often the rotating replica re-checks the lifecycle.
    #[serde(default = "default_check")]
    pub check_interval_seconds: u64,
    /// Kubernetes mode (`--service-account-signing-key-file`): sign with this PEM
    /// key; no generation or rotation.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// `--service-account-key-file`: extra PEM files of verification keys.
    #[serde(default)]
    pub verification_key_files: Vec<PathBuf>,
}

fn default_alg() -> String {
    "ES256".into()
}
fn default_rotation() -> u64 {
    7 * 24 * 3600
}
fn default_propagation() -> u64 {
    60
}
fn default_check() -> u64 {
    10
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            algorithm: default_alg(),
            kek_file: None,
            kek: None,
            rotation_period_seconds: default_rotation(),
            propagation_delay_seconds: default_propagation(),
            check_interval_seconds: default_check(),
            signing_key_file: None,
            verification_key_files: Vec::new(),
        }
    }
}

/// OIDC discovery over HTTPS, with no client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `--service-account-jwks-uri`; default `https://<external_address>/openid/v1/jwks`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// host[:port] clients reach this listener at; default the listen address.
    #[serde(default)]
    pub external_address: Option<String>,
}

/// Kubernetes' ExternalJWTSigner on a Unix socket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSignerConfig {
    /// Socket path for `--service-account-signing-endpoint`; unset: not served.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// FetchKeys' refresh hint.
    #[serde(default)]
    pub refresh_hint_seconds: Option<i64>,
}

impl IssuerConfig {
    /// `https://<external address>/openid/v1/jwks` unless configured.
    pub fn jwks_uri(&self, bound: SocketAddr) -> String {
        match &self.oidc.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let addr = self
                    .oidc
                    .external_address
                    .clone()
                    .unwrap_or_else(|| bound.to_string());
                badge_core::oidc::default_jwks_uri(&addr)
            }
        }
    }

    /// Whether keys live in the store (rotation) rather than in PEM files.
    pub fn stored_keys(&self) -> bool {
        self.keys.signing_key_file.is_none()
    }
}

impl Validate for IssuerConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.telemetry.validate(errors);
        self.server.validate("server", errors);
        self.database.validate(errors);
        for e in badge_core::token::validate_settings(&self.token.settings()) {
            errors.push(e);
        }
        if let Some(first) = self.token.issuers.first()
            && let Err(e) = badge_core::oidc::validate_issuer_url(first)
        {
            errors.push(format!(
                "token.issuers[0]: {first:?} cannot be served by OIDC discovery: {e}"
            ));
        }
        if let Some(u) = &self.oidc.jwks_uri
            && !u.starts_with("https://")
        {
            errors.push(format!("oidc.jwks_uri: must be an https URL, got {u:?}"));
        }
        for (k, p) in [("oidc.cert", &self.oidc.cert), ("oidc.key", &self.oidc.key)] {
            if !p.is_file() {
                errors.push(format!("{k}: file {} does not exist", p.display()));
            }
        }
        if !matches!(self.keys.algorithm.as_str(), "ES256" | "RS256") {
            errors.push(format!(
                "keys.algorithm: must be \"ES256\" or \"RS256\", got {:?}",
                self.keys.algorithm
            ));
        }
        if self.stored_keys() {
            match (&self.keys.kek_file, &self.keys.kek) {
                (None, None) => errors.push(
                    "keys.kek_file: a key-encryption key is required to keep signing keys in the store (or set keys.signing_key_file)".into(),
                ),
                (Some(p), _) if !p.is_file() => {
                    errors.push(format!("keys.kek_file: file {} does not exist", p.display()));
                }
                _ => {}
            }
            if self.keys.rotation_period_seconds < 60 {
                errors.push("keys.rotation_period_seconds: must be at least 60".into());
            }
            if self.keys.check_interval_seconds == 0 {
                errors.push("keys.check_interval_seconds: must be at least 1".into());
            }
        } else if let Some(p) = &self.keys.signing_key_file
            && !p.is_file()
        {
            errors.push(format!(
                "keys.signing_key_file: file {} does not exist",
                p.display()
            ));
        }
        for (i, p) in self.keys.verification_key_files.iter().enumerate() {
            if !p.is_file() {
                errors.push(format!(
                    "keys.verification_key_files[{i}]: file {} does not exist",
                    p.display()
                ));
            }
        }
        self.ca
            .validate(self.token.issuers.first().map(String::as_str), errors);
        if let Some(h) = self.external_signer.refresh_hint_seconds
            && h <= 0
        {
            errors.push("external_signer.refresh_hint_seconds: must be positive".into());
        }
    }
}
