//! Configuration: a TOML file, then `BADGE_<SECTION>__<KEY>` environment variables,
//! then `--set section.key=value` flags (later wins). Values are parsed as TOML
//! literals when they are one (`true`, `30`, `["a","b"]`), otherwise taken as
//! strings. After deserializing, [`Validate`] collects every problem at once so an
//! operator fixes the file in one go.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use badge_core::seal::DataSealer;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{source_name}: {message}")]
    Override {
        source_name: String,
        message: String,
    },
    #[error("invalid configuration: {message}")]
    Deserialize { message: String },
    /// A setting that parsed but cannot be used (a key file that does not load, an
    /// endpoint that is not a URL); `key` is its dotted path.
    #[error("{key}: {message}")]
    Setting { key: String, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The flags every Badge binary takes for its configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "BADGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Override a setting, e.g. `--set server.listen=127.0.0.1:9000` (repeatable).
    #[arg(long = "set", global = true)]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// File, then `BADGE_<SECTION>__<KEY>` environment, then `--set` flags.
    pub fn load<T: DeserializeOwned + Validate>(&self) -> Result<T, ConfigError> {
        load(self.config.as_deref(), std::env::vars(), &self.set)
    }
}

/// Semantic checks after parsing; push one message per problem, naming the setting.
pub trait Validate {
    fn validate(&self, errors: &mut Vec<String>);
}

fn literal(raw: &str) -> toml::Value {
    // `v = <raw>` parses only when raw is a TOML literal; otherwise it is a string.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Loads `T` from the three sources and validates it.
pub fn load<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut root = toml::Table::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        root = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    }
    let mut env: Vec<_> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("BADGE_")?;
            // Only `SECTION__KEY` names are settings; other BADGE_ variables (for
            // tests, scripts) are left alone.
            rest.contains("__").then(|| {
                let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
                (k.clone(), path, v)
            })
        })
        .collect();
    env.sort();
    for (name, path, value) in env {
        set_path(&mut root, &path, literal(&value)).map_err(|message| ConfigError::Override {
            source_name: name,
            message,
        })?;
    }
    for o in overrides {
        let Some((key, value)) = o.split_once('=') else {
            return Err(ConfigError::Override {
                source_name: format!("--set {o}"),
                message: "expected section.key=value".into(),
            });
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        set_path(&mut root, &path, literal(value.trim())).map_err(|message| {
            ConfigError::Override {
                source_name: format!("--set {o}"),
                message,
            }
        })?;
    }
    let config: T = toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Deserialize {
            message: e.message().to_string(),
        })?;
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// A gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to bind, e.g. `127.0.0.1:8443` (port 0 picks a free one).
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// Connection, stream and request-size limits (see `badge_runtime::limits`).
    #[serde(default)]
    pub limits: crate::limits::Limits,
}

impl ListenConfig {
    pub fn validate(&self, section: &str, errors: &mut Vec<String>) {
        self.limits.validate(section, errors);
        for (key, path) in [
            ("ca", &self.tls.ca),
            ("cert", &self.tls.cert),
            ("key", &self.tls.key),
        ] {
            if !path.is_file() {
                errors.push(format!(
                    "{section}.tls.{key}: file {} does not exist (run `badge dev-pki` or point it at your PEM file)",
                    path.display()
                ));
            }
        }
    }
}

/// Another Badge service reached over mTLS (e.g. the `identity` section of the
/// token-issuer and token-review).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// `https://host:port`.
    pub endpoint: String,
    /// Name to verify in the server certificate.
    #[serde(default = "localhost")]
    pub server_name: String,
    /// CA of the peer, and this service's client certificate and key.
    pub tls: TlsFiles,
}

fn localhost() -> String {
    "localhost".into()
}

impl PeerConfig {
    /// A lazy mTLS channel to the peer: nothing is dialled until the first call, so
    /// a service starts (and reports its own health) while the peer is down.
    /// `section` names the config section in errors.
    pub fn channel(&self, section: &str) -> Result<tonic::transport::Channel, ConfigError> {
        let invalid = |key: &str, e: &dyn std::fmt::Display| ConfigError::Setting {
            key: format!("{section}.{key}"),
            message: e.to_string(),
        };
        let material = crate::tls::TlsMaterial::load(&self.tls).map_err(|e| invalid("tls", &e))?;
        Ok(
            tonic::transport::Endpoint::from_shared(self.endpoint.clone())
                .map_err(|e| invalid("endpoint", &e))?
                .tls_config(material.client_config(&self.server_name))
                .map_err(|e| invalid("tls", &e))?
                .connect_lazy(),
        )
    }
}

/// Encryption of Secret data at rest with the key-encryption key identity seals
/// it with (the `encryption` section of identity and token-review; the
/// token-issuer reads the same key from `keys`). Unset: stored as given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// File holding the base64 key-encryption key (32 bytes). Never keep it in the
    /// database it protects.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// The key itself, base64 (e.g. `BADGE_ENCRYPTION__KEK` from a secret store).
    #[serde(default)]
    pub kek: Option<String>,
}

impl EncryptionConfig {
    /// The sealer for the store, if configured (the error never contains key
    /// material).
    pub fn sealer(&self) -> Result<Option<Arc<dyn DataSealer>>, ConfigError> {
        sealer(self.kek_file.as_deref(), self.kek.as_deref(), "encryption")
    }
}

/// The store's sealer from a key-encryption key given as a file or inline
/// (identity's and token-review's `encryption`, the token-issuer's `keys`):
/// `section` names the setting in the error, which never contains key material.
pub fn sealer(
    kek_file: Option<&Path>,
    kek: Option<&str>,
    section: &str,
) -> Result<Option<Arc<dyn DataSealer>>, ConfigError> {
    let kek = badge_keys::Kek::load(kek_file, kek).map_err(|e| ConfigError::Setting {
        key: format!("{section}.kek_file"),
        message: e.to_string(),
    })?;
    Ok(kek.map(|k| Arc::new(k) as Arc<dyn DataSealer>))
}

/// The Postgres store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:port/db` (production: any number of processes), or
    /// `sqlite://PATH` (an embedded file that one process uses alone, e.g. `badge up`).
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Health turns NOT_SERVING when the in-memory index has been behind the
    /// store's latest revision for longer than this (a stuck feed would otherwise
    /// answer from old state while looking healthy).
    #[serde(default = "default_max_index_lag")]
    pub max_index_lag_seconds: u64,
}

fn default_max_connections() -> u32 {
    16
}

fn default_max_index_lag() -> u64 {
    5
}

impl DatabaseConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        let postgres = self.url.starts_with("postgres://") || self.url.starts_with("postgresql://");
        let sqlite = self.url.starts_with("sqlite:");
        if !(postgres || sqlite) {
            errors.push(format!(
                "database.url: must start with postgres:// or sqlite:// (got {:?})",
                redact_url(&self.url)
            ));
        }
        if sqlite && (self.url.contains(":memory:") || self.url.contains("mode=memory")) {
            errors.push(
                "database.url: an in-memory sqlite database would lose everything on exit: \
                 name a file (sqlite://PATH)"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            errors.push("database.max_connections: must be at least 1".into());
        }
        if self.max_index_lag_seconds == 0 {
            errors.push("database.max_index_lag_seconds: must be at least 1".into());
        }
    }

    /// [`Self::max_index_lag_seconds`] as a duration.
    pub fn max_index_lag(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.max_index_lag_seconds)
    }
}

/// Drops a password from a URL before it is shown anywhere. An `sqlite:` URL is a
/// file path with no credentials: shown as it is.
pub fn redact_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `badge_identity=debug,info`.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// OpenTelemetry export (traces and metrics over OTLP/gRPC).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Unset:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, otherwise nothing is exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource (default: the binary, e.g. `badge-identity`;
    /// `OTEL_SERVICE_NAME` wins).
    #[serde(default)]
    pub service_name: Option<String>,
    /// How often metrics are exported.
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval_seconds: u64,
}

fn default_metrics_interval() -> u64 {
    60
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: None,
            metrics_interval_seconds: default_metrics_interval(),
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if let Some(e) = &self.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            errors.push(format!(
                "telemetry.otlp_endpoint: must be an http:// or https:// URL, got {e:?}"
            ));
        }
        if self.metrics_interval_seconds == 0 {
            errors.push("telemetry.metrics_interval_seconds: must be at least 1".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        database: DatabaseConfig,
        #[serde(default)]
        log: LogConfig,
        #[serde(default)]
        n: u32,
    }
    impl Validate for T {
        fn validate(&self, errors: &mut Vec<String>) {
            self.database.validate(errors);
            if self.n > 10 {
                errors.push("n: at most 10".into());
            }
        }
    }

    #[test]
    fn env_and_flags_override_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "n = 1\n[database]\nurl = \"postgres://a@h/db\"\n").expect("write");
        let env = vec![
            (
                "BADGE_DATABASE__MAX_CONNECTIONS".to_string(),
                "3".to_string(),
            ),
            ("BADGE_TEST_DATABASE_URL".to_string(), "ignored".to_string()),
            ("BADGE_LOG__FORMAT".to_string(), "json".to_string()),
        ];
        let t: T = load(Some(&f), env, &["n=7".to_string()]).expect("load");
        assert_eq!(t.database.max_connections, 3);
        assert_eq!(t.log.format, LogFormat::Json);
        assert_eq!(t.n, 7);
    }

    #[test]
    fn every_problem_is_listed() {
        let err = load::<T>(
            None,
            vec![],
            &[
                "database.url=mysql://x".into(),
                "database.max_connections=0".into(),
                "n=11".into(),
            ],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("database.url"), "{text}");
        assert!(text.contains("database.max_connections"), "{text}");
        assert!(text.contains("n: at most 10"), "{text}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = load::<T>(
            None,
            vec![],
            &["database.url=postgres://x".into(), "databse.url=1".into()],
        )
        .expect_err("unknown");
        assert!(err.to_string().contains("databse"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact_url("sqlite://data/a:b@c.db"),
            "sqlite://data/a:b@c.db"
        );
    }

    #[test]
    fn sqlite_urls_are_accepted_but_not_in_memory() {
        let t = |url: &str| {
            let mut errors = Vec::new();
            DatabaseConfig {
                url: url.into(),
                max_connections: 4,
                max_index_lag_seconds: 5,
            }
            .validate(&mut errors);
            errors
        };
        assert!(t("sqlite://badge-data/badge.db").is_empty());
        assert!(t("sqlite:///var/lib/badge/badge.db").is_empty());
        assert!(t("postgresql://u@h/d").is_empty());
        assert!(t("sqlite::memory:")[0].contains("in-memory"));
        assert!(t("mysql://x")[0].contains("postgres:// or sqlite://"));
    }
}
