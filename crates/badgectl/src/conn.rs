//! Where the services are and how to authenticate: flags and environment variables,
//! a kubeconfig-like file (`--config`, `BADGECTL_CONFIG`, `~/.badge/config`), or the
//! `badge-data/badge.env` that `badge up` writes. Shared with `badge-agent`.
//!
//! Precedence, highest first: flags, their environment variables
//! (`BADGE_IDENTITY_ENDPOINT`, ...), the config file's current context, the env file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Connection flags, global on every subcommand.
#[derive(Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// kubeconfig-like YAML file (default ~/.badge/config, then ./badge-data/badge.env).
    #[arg(long, env = "BADGECTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Context of the config file to use (default: its current-context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// identity's gRPC endpoint, `https://host:port`.
    #[arg(long, env = "BADGE_IDENTITY_ENDPOINT", global = true)]
    pub identity_endpoint: Option<String>,
    /// token-issuer's gRPC endpoint.
    #[arg(long, env = "BADGE_ISSUER_ENDPOINT", global = true)]
    pub issuer_endpoint: Option<String>,
    /// token-review's gRPC endpoint.
    #[arg(long, env = "BADGE_REVIEW_ENDPOINT", global = true)]
    pub review_endpoint: Option<String>,
    /// CA the servers' certificates chain to (PEM).
    #[arg(long, env = "BADGE_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "BADGE_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client certificate's key (PEM).
    #[arg(long, env = "BADGE_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
    /// Call with `authorization: Bearer <token>` instead of the client certificate.
    #[arg(
        id = "bearer_token",
        long = "token",
        env = "BADGE_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Name to verify in the server certificates (default: each endpoint's host).
    #[arg(long, global = true)]
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ConnectionArgs {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("config", &self.config)
            .field("context", &self.context)
            .field("identity_endpoint", &self.identity_endpoint)
            .field("issuer_endpoint", &self.issuer_endpoint)
            .field("review_endpoint", &self.review_endpoint)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The config file: `current-context` and named contexts.
///
/// ```yaml
/// current-context: local
/// contexts:
///   - name: local
///     identity: https://127.0.0.1:8443
///     issuer: https://127.0.0.1:8444
///     review: https://127.0.0.1:8446
///     certificate-authority: badge-data/pki/ca.pem   # relative to this file
///     client-certificate: badge-data/pki/admin.pem
///     client-key: badge-data/pki/admin-key.pem
///     namespace: default
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
}

/// One context of [`ConfigFile`].
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamedContext {
    pub name: String,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub review: Option<String>,
    #[serde(default)]
    pub certificate_authority: Option<PathBuf>,
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

impl std::fmt::Debug for NamedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("issuer", &self.issuer)
            .field("review", &self.review)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Resolved settings, before connecting.
#[derive(Clone, Default)]
pub struct Settings {
    pub identity: Option<String>,
    pub issuer: Option<String>,
    pub review: Option<String>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub token: Option<String>,
    pub server_name: Option<String>,
    /// The context's default namespace.
    pub namespace: Option<String>,
    /// Where the settings came from (for error messages).
    pub source: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("identity", &self.identity)
            .field("issuer", &self.issuer)
            .field("review", &self.review)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Parses `KEY=value` lines (blank lines, `#` comments and `export ` prefixes
/// allowed; values may be quoted).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

fn relative_to(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

/// Settings from a `badge up` env file. Relative paths are relative to the
/// directory `badge up` ran in: the env file's parent's parent.
pub fn from_env_file(path: &Path) -> anyhow::Result<Settings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let vars = parse_env_file(&text);
    let base = path
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let p = |k: &str| vars.get(k).map(|v| relative_to(&base, PathBuf::from(v)));
    Ok(Settings {
        identity: vars.get("BADGE_IDENTITY_ENDPOINT").cloned(),
        issuer: vars.get("BADGE_ISSUER_ENDPOINT").cloned(),
        review: vars.get("BADGE_REVIEW_ENDPOINT").cloned(),
        ca: p("BADGE_CA"),
        client_cert: p("BADGE_CLIENT_CERT"),
        client_key: p("BADGE_CLIENT_KEY"),
        token: None,
        server_name: None,
        namespace: None,
        source: path.display().to_string(),
    })
}

/// Settings from a config file's context (`context`, else `current-context`, else
/// the only one).
pub fn from_config_file(path: &Path, context: Option<&str>) -> anyhow::Result<Settings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ConfigFile =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let wanted = context.map(str::to_string).or(file.current_context.clone());
    let ctx = match &wanted {
        Some(name) => file
            .contexts
            .iter()
            .find(|c| &c.name == name)
            .with_context(|| format!("{}: no context named {name:?}", path.display()))?,
        None => match file.contexts.as_slice() {
            [one] => one,
            [] => bail!("{}: no contexts", path.display()),
            _ => bail!(
                "{}: several contexts and no current-context: pass --context",
                path.display()
            ),
        },
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let p = |x: &Option<PathBuf>| x.clone().map(|x| relative_to(&base, x));
    Ok(Settings {
        identity: ctx.identity.clone(),
        issuer: ctx.issuer.clone(),
        review: ctx.review.clone(),
        ca: p(&ctx.certificate_authority),
        client_cert: p(&ctx.client_certificate),
        client_key: p(&ctx.client_key),
        token: ctx.token.clone(),
        server_name: ctx.server_name.clone(),
        namespace: ctx.namespace.clone(),
        source: format!("{} (context {:?})", path.display(), ctx.name),
    })
}

fn home_config() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".badge").join("config"))
}

impl ConnectionArgs {
    /// The file settings (explicit config, `~/.badge/config`, `./badge-data/badge.env`)
    /// overlaid with flags and environment variables.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut s = if let Some(path) = &self.config {
            if path.extension().is_some_and(|e| e == "env") {
                from_env_file(path)?
            } else {
                from_config_file(path, self.context.as_deref())?
            }
        } else if let Some(home) = home_config().filter(|p| p.is_file()) {
            from_config_file(&home, self.context.as_deref())?
        } else {
            let env = PathBuf::from("badge-data").join("badge.env");
            if env.is_file() {
                from_env_file(&env)?
            } else {
                Settings {
                    source: "flags and environment".into(),
                    ..Settings::default()
                }
            }
        };
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set(&mut s.identity, &self.identity_endpoint);
        set(&mut s.issuer, &self.issuer_endpoint);
        set(&mut s.review, &self.review_endpoint);
        set(&mut s.ca, &self.ca);
        set(&mut s.client_cert, &self.client_cert);
        set(&mut s.client_key, &self.client_key);
        set(&mut s.token, &self.token);
        set(&mut s.server_name, &self.server_name);
        Ok(s)
    }

    /// Resolves the settings and prepares (lazy) channels.
    pub fn connect(&self) -> anyhow::Result<Connection> {
        Connection::new(self.settings()?)
    }
}

/// Adds `authorization: Bearer` when a token is configured.
#[derive(Clone)]
pub struct Auth {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A channel with the caller's credentials.
pub type Ch = InterceptedService<Channel, Auth>;

/// Lazy channels to the three services.
#[derive(Clone)]
pub struct Connection {
    settings: Settings,
    tls: ClientTls,
    auth: Auth,
}

#[derive(Clone)]
enum ClientTls {
    /// mTLS with the client certificate.
    Mutual(TlsMaterial),
    /// Server authentication only (a bearer token is the credential).
    CaOnly(Vec<u8>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let Some(ca) = settings.ca.clone() else {
            bail!(
                "no CA configured (from {}): pass --ca, set BADGE_CA, or write ~/.badge/config",
                settings.source
            );
        };
        let tls = if settings.token.is_some() {
            let pem = std::fs::read(&ca).with_context(|| format!("reading CA {}", ca.display()))?;
            ClientTls::CaOnly(pem)
        } else {
            let (Some(cert), Some(key)) =
                (settings.client_cert.clone(), settings.client_key.clone())
            else {
                bail!(
                    "no credentials (from {}): pass --client-cert and --client-key (BADGE_CLIENT_CERT, BADGE_CLIENT_KEY) or --token (BADGE_TOKEN)",
                    settings.source
                );
            };
            ClientTls::Mutual(TlsMaterial::load(&TlsFiles { ca, cert, key })?)
        };
        let header = match &settings.token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?,
            ),
            None => None,
        };
        Ok(Connection {
            settings,
            tls,
            auth: Auth { header },
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The CA PEM the connection trusts.
    pub fn ca_pem(&self) -> &[u8] {
        match &self.tls {
            ClientTls::Mutual(m) => m.ca_pem(),
            ClientTls::CaOnly(p) => p,
        }
    }

    fn channel(&self, endpoint: &Option<String>, what: &str, var: &str) -> anyhow::Result<Ch> {
        let Some(url) = endpoint else {
            bail!(
                "no {what} endpoint configured (from {}): pass --{what}-endpoint or set {var}",
                self.settings.source
            );
        };
        if !url.starts_with("https://") {
            bail!("{what} endpoint {url:?} must be an https:// URL (Badge serves mTLS only)");
        }
        let server_name = match &self.settings.server_name {
            Some(n) => n.clone(),
            None => {
                let uri: tonic::transport::Uri = url
                    .parse()
                    .with_context(|| format!("{what} endpoint {url:?} is not a URL"))?;
                uri.host()
                    .with_context(|| format!("{what} endpoint {url:?} names no host"))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        let tls = match &self.tls {
            ClientTls::Mutual(m) => m.client_config(&server_name),
            ClientTls::CaOnly(ca) => ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(server_name),
        };
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("{what} endpoint {url:?}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tls_config(tls)?
            .connect_lazy();
        Ok(InterceptedService::new(channel, self.auth.clone()))
    }

    pub fn identity(&self) -> anyhow::Result<Ch> {
        self.channel(
            &self.settings.identity,
            "identity",
            "BADGE_IDENTITY_ENDPOINT",
        )
    }

    pub fn issuer(&self) -> anyhow::Result<Ch> {
        self.channel(&self.settings.issuer, "issuer", "BADGE_ISSUER_ENDPOINT")
    }

    pub fn review(&self) -> anyhow::Result<Ch> {
        self.channel(&self.settings.review, "review", "BADGE_REVIEW_ENDPOINT")
    }
}

/// A gRPC error as the user sees it: the status message (never request data).
pub fn status_error(s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_name(s.code()), s.message())
}

/// Kubernetes-style reason for a gRPC code.
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "Forbidden",
        Unauthenticated => "Unauthorized",
        InvalidArgument => "Invalid",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Conflict",
        Unavailable => "Unavailable",
        DeadlineExceeded => "Timeout",
        OutOfRange => "Expired",
        Internal => "InternalError",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_paths_are_relative_to_the_up_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("badge-data");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(
            data.join("badge.env"),
            "BADGE_IDENTITY_ENDPOINT=https://127.0.0.1:8443\nBADGE_CA=badge-data/pki/ca.pem\nBADGE_CLIENT_CERT=/abs/admin.pem\n",
        )
        .expect("write");
        let s = from_env_file(&data.join("badge.env")).expect("parse");
        assert_eq!(s.identity.as_deref(), Some("https://127.0.0.1:8443"));
        assert_eq!(s.ca, Some(dir.path().join("badge-data/pki/ca.pem")));
        assert_eq!(s.client_cert, Some(PathBuf::from("/abs/admin.pem")));
    }

    #[test]
    fn config_file_contexts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "current-context: b\ncontexts:\n- name: a\n  identity: https://a:1\n- name: b\n  identity: https://b:1\n  certificate-authority: ca.pem\n  namespace: dev\n",
        )
        .expect("write");
        let s = from_config_file(&path, None).expect("parse");
        assert_eq!(s.identity.as_deref(), Some("https://b:1"));
        assert_eq!(s.ca, Some(dir.path().join("ca.pem")));
        assert_eq!(s.namespace.as_deref(), Some("dev"));
        let s = from_config_file(&path, Some("a")).expect("parse");
        assert_eq!(s.identity.as_deref(), Some("https://a:1"));
        assert!(from_config_file(&path, Some("c")).is_err());
        std::fs::write(&path, "contexts:\n- name: a\n  bogus: 1\n").expect("write");
        let e = from_config_file(&path, None).expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
