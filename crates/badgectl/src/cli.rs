//! The `badgectl` command line and what each command does.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use badge_core::Clock as _;
use badge_core::spiffe::{SpiffeId, TrustDomain};
use badge_proto::certificates as ca;
use badge_proto::istio::v1::auth as istio;
use badge_proto::{review as rv, token as tk};
use clap::{CommandFactory, Parser, Subcommand};
use tonic::Code;

use crate::api::{Api, is_subset, merge_for_update};
use crate::cert::{self, KeyType};
use crate::conn::{Connection, ConnectionArgs, status_error};
use crate::k8s::{self, Kind, KindExt as _, Object, Proto};
use crate::manifest;

#[derive(Parser)]
#[command(
    name = "badgectl",
    version,
    about = "kubectl-like command line for Badge (identity, token-issuer, token-review)"
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create or update objects from Kubernetes YAML (v1 Namespace, ServiceAccount,
    /// Secret, Pod, Node; rbac.authorization.k8s.io/v1 Role, ClusterRole,
    /// RoleBinding, ClusterRoleBinding). Every document is validated first; nothing
    /// is applied if one fails.
    Apply {
        /// A file, a directory of .yaml/.yml/.json files, or `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        filename: Vec<PathBuf>,
    },
    /// List objects, or show one; `get trust-bundle` prints the workload CA's roots.
    Get(GetArgs),
    /// Delete one object.
    Delete {
        /// Kind: ns, sa, secret, po, no, role, clusterrole, rolebinding, clusterrolebinding.
        kind: String,
        name: String,
    },
    #[command(subcommand)]
    Create(CreateCommand),
    #[command(subcommand)]
    Auth(AuthCommand),
    /// TokenReview: who is this token, is it still valid. Exits 1 unless authenticated.
    Review {
        /// The token, or `-` to read it from stdin.
        token: String,
        /// Audiences the token must carry (default: the API audiences).
        #[arg(long = "audience")]
        audiences: Vec<String>,
    },
    /// The token-issuer's signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// Kind: ns, sa, secret(s), po, no, role(s), clusterrole(s), rolebinding(s), clusterrolebinding(s);
    /// or trust-bundle.
    pub kind: String,
    pub name: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// wide, yaml or json (default: a table); trust-bundle: pem (default) or json.
    #[arg(short = 'o', long)]
    pub output: Option<Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
    /// trust-bundle only: the X.509 roots as PEM.
    Pem,
}

#[derive(Subcommand)]
pub enum CreateCommand {
    /// Request a service-account token (TokenRequest) and print it.
    Token(TokenArgs),
    /// Get a workload certificate (X.509-SVID) for a service account and write it
    /// with its new private key to a file (-o): key PEM first, then the chain, leaf
    /// first. With --token/--token-file that token is presented as is; otherwise a
    /// 10-minute token for the account is requested first (TokenRequest).
    Certificate(CertificateArgs),
}

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The service account.
    pub service_account: String,
    /// Audience of the token (repeatable; default: the API audiences).
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Lifetime, e.g. `10m`, `1h`, `3600s` (default: the server's, 1h).
    #[arg(long)]
    pub duration: Option<String>,
    /// Bind the token to this object: Pod, Secret or Node.
    #[arg(long, requires = "bound_object_name")]
    pub bound_object_kind: Option<String>,
    #[arg(long, requires = "bound_object_kind")]
    pub bound_object_name: Option<String>,
    /// The bound object's uid (default: looked up).
    #[arg(long, requires = "bound_object_kind")]
    pub bound_object_uid: Option<String>,
}

#[derive(clap::Args)]
pub struct CertificateArgs {
    /// The service account: the certificate is for spiffe://<trust domain>/ns/<namespace>/sa/<name>.
    pub service_account: String,
    /// The file to write the private key and the certificate chain to (mode 0600,
    /// replaced atomically). Required: the private key is only ever written to a file.
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// Type of the new private key.
    #[arg(long, value_enum, ignore_case = true, default_value = "ECDSAP256")]
    pub key_type: KeyType,
    /// Lifetime, e.g. `1h`, `12h`, `86400s` (default: the server's, 24h; Badge issues
    /// 1h to 24h).
    #[arg(long)]
    pub duration: Option<String>,
    /// Audience of the token requested for the account (the CA's: `ca.istio_audiences`).
    #[arg(long, default_value = "istio-ca")]
    pub audience: String,
    /// Present the service-account token in this file (audience istio-ca) instead of
    /// requesting one; like --token.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The trust domain of the SPIFFE ID (default: the server's, from GetTrustBundle).
    #[arg(long)]
    pub trust_domain: Option<String>,
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// May I (or --as USER) do VERB on RESOURCE? Prints yes or no; exits 0 or 1.
    CanI(CanIArgs),
}

#[derive(clap::Args)]
pub struct CanIArgs {
    /// get, list, watch, create, update, delete, ... or `*`.
    pub verb: String,
    /// `pods`, `pods/log`, `jobs.batch`, `deployments.apps/scale`, or a URL path `/healthz`.
    pub resource: String,
    pub name: Option<String>,
    /// In every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Ask for this user (SubjectAccessReview) instead of yourself.
    #[arg(long = "as")]
    pub as_user: Option<String>,
    /// Groups of --as (repeatable).
    #[arg(long = "as-group", requires = "as_user")]
    pub as_groups: Vec<String>,
    /// Print the reason too.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Signing keys and their state.
    List,
    /// Generate a new key now (published at once, signing after the propagation delay).
    Rotate {
        /// RS256 or ES256 (default: the configured algorithm).
        #[arg(long)]
        algorithm: Option<String>,
    },
}

/// Runs one command, printing to stdout; the exit code.
pub async fn run(cli: Cli) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    match execute(cli, &mut out).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one command, writing its output to `out`; 0 or 1 (e.g. `auth can-i` no).
pub async fn execute(mut cli: Cli, out: &mut dyn Write) -> anyhow::Result<u8> {
    let explicit_ns = cli.namespace.clone();
    if let Command::Completion { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "badgectl", out);
        return Ok(0);
    }
    if let Command::Create(CreateCommand::Certificate(a)) = &cli.command {
        // Refuse before anything is requested.
        let Some(path) = &a.output_file else {
            bail!(
                "pass -o FILE (--output-file): the private key is only written to a file, never printed"
            );
        };
        cert::check_output_path(path)?;
        if let Some(file) = &a.token_file {
            if cli.conn.token.is_some() {
                bail!("pass either --token (BADGE_TOKEN) or --token-file, not both");
            }
            // The same as `--token "$(cat FILE)"`.
            cli.conn.token = Some(cert::read_token_file(file)?.to_string());
        }
    }
    let conn = cli.conn.connect()?;
    let namespace = explicit_ns
        .clone()
        .or_else(|| conn.settings().namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    match cli.command {
        Command::Apply { filename } => {
            apply(&conn, &filename, &namespace, explicit_ns.as_deref(), out).await
        }
        Command::Get(a) => get(&conn, a, &namespace, out).await,
        Command::Delete { kind, name } => {
            let kind = parse_kind(&kind)?;
            let ns = if kind.namespaced() {
                namespace
            } else {
                String::new()
            };
            Api::new(conn.identity()?)
                .delete(kind, &ns, &name)
                .await
                .map_err(|s| status_error(&s))?;
            writeln!(out, "{} {name:?} deleted", kind.display())?;
            Ok(0)
        }
        Command::Create(CreateCommand::Token(a)) => create_token(&conn, a, &namespace, out).await,
        Command::Create(CreateCommand::Certificate(a)) => {
            create_certificate(&conn, a, &namespace).await
        }
        Command::Auth(AuthCommand::CanI(a)) => can_i(&conn, a, &namespace, out).await,
        Command::Review { token, audiences } => review(&conn, token, audiences, out).await,
        Command::Keys(k) => keys(&conn, k, out).await,
        Command::Completion { .. } => Ok(0),
    }
}

fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).with_context(|| {
        format!(
            "the server doesn't have a resource type {s:?} (badgectl knows namespaces, serviceaccounts, secrets, pods, nodes, roles, clusterroles, rolebindings, clusterrolebindings, and get trust-bundle)"
        )
    })
}

// ---- apply ----

async fn apply(
    conn: &Connection,
    files: &[PathBuf],
    namespace: &str,
    explicit_ns: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    // Validate every document of every file before sending anything.
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match manifest::read_sources(f, namespace, explicit_ns) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    if docs.is_empty() {
        bail!("no objects passed to apply");
    }
    let api = Api::new(conn.identity()?);
    let mut failed = Vec::new();
    for d in &docs {
        match apply_one(&api, d).await {
            Ok(verb) => {
                writeln!(
                    out,
                    "{}/{} {verb}",
                    d.object.kind().display(),
                    d.object.metadata().name
                )?;
            }
            Err(e) => failed.push(format!("{}: {e:#}", d.describe())),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(0)
}

async fn apply_one(api: &Api, d: &manifest::Document) -> anyhow::Result<&'static str> {
    let kind = d.object.kind();
    let meta = d.object.metadata();
    match api.create(&d.proto).await {
        Ok(_) => return Ok("created"),
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) if s.code() == Code::NotFound && kind.namespaced() => {
            if let Err(ns) = api.get(Kind::Namespace, "", &meta.namespace).await
                && ns.code() == Code::NotFound
            {
                bail!(
                    "namespace {:?} not found: create it first (apply a v1 Namespace named {:?})",
                    meta.namespace,
                    meta.namespace
                );
            }
            return Err(status_error(&s));
        }
        Err(s) => return Err(status_error(&s)),
    }
    // Exists: update unless it already matches.
    let live = api
        .get(kind, &meta.namespace, &meta.name)
        .await
        .map_err(|s| status_error(&s))?;
    let live_obj = live.to_object();
    if matches_live(&d.object, &live_obj) {
        return Ok("unchanged");
    }
    if let (Object::Pod(want), Object::Pod(have)) = (&d.object, &live_obj)
        && !is_subset(
            &serde_json::to_value(&want.spec).unwrap_or_default(),
            &serde_json::to_value(&have.spec).unwrap_or_default(),
            true,
        )
    {
        bail!(
            "a pod's spec is immutable (only labels and annotations may change): delete the pod and apply again"
        );
    }
    let update = merge_for_update(&d.proto, &live);
    api.update(&update).await.map_err(|s| status_error(&s))?;
    Ok("configured")
}

/// Whether applying `desired` would change nothing.
fn matches_live(desired: &Object, live: &Object) -> bool {
    let mut want = desired.to_json();
    let have = live.to_json();
    if let Object::Secret(s) = desired {
        // stringData is write-only: compare it as the data it becomes.
        use base64::Engine as _;
        let mut data = s.data.clone();
        for (k, v) in &s.string_data {
            data.insert(
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(v),
            );
        }
        want["data"] = serde_json::to_value(data).unwrap_or_default();
        if let Some(o) = want.as_object_mut() {
            o.remove("stringData");
        }
    }
    // resourceVersion in a manifest is a precondition, not content.
    if let Some(m) = want.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
        // Labels and annotations are replaced, so they must match exactly.
        for key in ["labels", "annotations"] {
            let w = m.get(key).cloned().unwrap_or_default();
            let h = have["metadata"].get(key).cloned().unwrap_or_default();
            let empty = |v: &serde_json::Value| v.as_object().is_none_or(|o| o.is_empty());
            if !(w == h || (empty(&w) && empty(&h))) {
                return false;
            }
        }
    }
    is_subset(&want, &have, matches!(desired, Object::Pod(_)))
}

// ---- get ----

async fn get(
    conn: &Connection,
    a: GetArgs,
    namespace: &str,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    if is_trust_bundle(&a.kind) {
        return trust_bundle(conn, &a, out).await;
    }
    if a.output == Some(Output::Pem) {
        bail!("-o pem is for trust-bundle only (objects: -o wide, yaml or json)");
    }
    let kind = parse_kind(&a.kind)?;
    let api = Api::new(conn.identity()?);
    let ns = if !kind.namespaced() || a.all_namespaces {
        ""
    } else {
        namespace
    };
    let objects: Vec<Object> = match &a.name {
        Some(name) => vec![
            api.get(kind, ns, name)
                .await
                .map_err(|s| status_error(&s))?
                .to_object(),
        ],
        None => api
            .list(kind, ns)
            .await
            .map_err(|s| status_error(&s))?
            .iter()
            .map(Proto::to_object)
            .collect(),
    };
    match a.output {
        Some(Output::Yaml) | Some(Output::Json) => {
            let value = if a.name.is_some() {
                objects[0].to_json()
            } else {
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": objects.iter().map(Object::to_json).collect::<Vec<_>>(),
                })
            };
            if a.output == Some(Output::Json) {
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write!(out, "{}", serde_yaml::to_string(&value)?)?;
            }
        }
        _ => {
            if objects.is_empty() {
                if kind.namespaced() && !a.all_namespaces {
                    eprintln!("No resources found in {namespace} namespace.");
                } else {
                    eprintln!("No resources found");
                }
                return Ok(0);
            }
            let wide = a.output == Some(Output::Wide);
            let show_ns = kind.namespaced() && a.all_namespaces;
            write!(
                out,
                "{}",
                table(kind, &objects, show_ns, wide, badge_core::SystemClock.now())
            )?;
        }
    }
    Ok(0)
}

/// A kubectl-style table.
pub fn table(kind: Kind, objects: &[Object], show_ns: bool, wide: bool, now: SystemTime) -> String {
    let mut header: Vec<&str> = Vec::new();
    if show_ns {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    let extra: &[&str] = match kind {
        Kind::Namespace => &["STATUS", "AGE"],
        Kind::ServiceAccount => &["SECRETS", "AGE"],
        Kind::Secret => &["TYPE", "DATA", "AGE"],
        Kind::Pod => &["SERVICEACCOUNT", "NODE", "AGE"],
        Kind::Node => &["AGE"],
        Kind::Role | Kind::ClusterRole => &["CREATED AT"],
        Kind::RoleBinding | Kind::ClusterRoleBinding => &["ROLE", "AGE"],
        // The token-issuer's own kinds: `get` never parses them.
        Kind::SigningKey | Kind::Revocation | Kind::CertificateAuthority => &["AGE"],
    };
    header.extend_from_slice(extra);
    if wide {
        match kind {
            Kind::Pod => header.extend_from_slice(&["CONTAINERS", "IMAGES", "UID"]),
            Kind::RoleBinding | Kind::ClusterRoleBinding => {
                header.extend_from_slice(&["USERS", "GROUPS", "SERVICEACCOUNTS"])
            }
            _ => header.push("UID"),
        }
    }
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for o in objects {
        let m = o.metadata();
        let age = age(m.creation_timestamp.as_deref(), now);
        let mut row = Vec::new();
        if show_ns {
            row.push(m.namespace.clone());
        }
        row.push(m.name.clone());
        match o {
            Object::Namespace(n) => {
                row.push(
                    n.status
                        .as_ref()
                        .map(|s| s.phase.clone())
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "Active".into()),
                );
                row.push(age);
            }
            Object::ServiceAccount(s) => {
                row.push(s.secrets.len().to_string());
                row.push(age);
            }
            Object::Secret(s) => {
                row.push(if s.type_.is_empty() {
                    "Opaque".into()
                } else {
                    s.type_.clone()
                });
                row.push(s.data.len().to_string());
                row.push(age);
            }
            Object::Pod(p) => {
                row.push(p.spec.service_account_name.clone());
                row.push(none_if_empty(&p.spec.node_name));
                row.push(age);
            }
            Object::Node(_) => row.push(age),
            Object::Role(_) | Object::ClusterRole(_) => {
                row.push(m.creation_timestamp.clone().unwrap_or_default());
            }
            Object::RoleBinding(b) | Object::ClusterRoleBinding(b) => {
                row.push(format!("{}/{}", b.role_ref.kind, b.role_ref.name));
                row.push(age);
            }
        }
        if wide {
            match o {
                Object::Pod(p) => {
                    let names: Vec<_> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
                    let images: Vec<_> =
                        p.spec.containers.iter().map(|c| c.image.as_str()).collect();
                    row.push(none_if_empty(&names.join(",")));
                    row.push(none_if_empty(&images.join(",")));
                    row.push(m.uid.clone());
                }
                Object::RoleBinding(b) | Object::ClusterRoleBinding(b) => {
                    let of = |k: &str| {
                        let v: Vec<String> = b
                            .subjects
                            .iter()
                            .filter(|s| s.kind == k)
                            .map(|s| {
                                if k == "ServiceAccount" {
                                    let ns = if s.namespace.is_empty() {
                                        m.namespace.as_str()
                                    } else {
                                        s.namespace.as_str()
                                    };
                                    format!("{ns}/{}", s.name)
                                } else {
                                    s.name.clone()
                                }
                            })
                            .collect();
                        v.join(", ")
                    };
                    row.push(of("User"));
                    row.push(of("Group"));
                    row.push(of("ServiceAccount"));
                }
                _ => row.push(m.uid.clone()),
            }
        }
        rows.push(row);
    }
    render_rows(&rows)
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

fn render_rows(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// Parses what [`k8s::rfc3339`] prints.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

fn age(created: Option<&str>, now: SystemTime) -> String {
    match created.and_then(parse_rfc3339) {
        Some(t) => human_duration(now.duration_since(t).unwrap_or_default()),
        None => "<unknown>".into(),
    }
}

/// kubectl's HumanDuration: `45s`, `5m3s`, `17m`, `5h3m`, `20h`, `3d4h`, `90d`, `3y`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, days) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s.is_multiple_of(60) {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m.is_multiple_of(60) {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h.is_multiple_of(24) {
            format!("{days}d")
        } else {
            format!("{days}d{}h", h % 24)
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        if days.is_multiple_of(365) {
            format!("{}y", days / 365)
        } else {
            format!("{}y{}d", days / 365, days % 365)
        }
    } else {
        format!("{}y", days / 365)
    }
}

// ---- create token ----

/// Parses `10m`, `1h30m`, `3600s`, `3600` (seconds).
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .with_context(|| format!("invalid duration {s:?}"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => bail!("invalid duration {s:?}: unit {c:?} (use s, m, h or d)"),
        };
    }
    if !num.is_empty() {
        bail!("invalid duration {s:?}: missing unit after {num}");
    }
    Ok(Duration::from_secs(total))
}

async fn create_token(
    conn: &Connection,
    a: TokenArgs,
    namespace: &str,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let expiration_seconds = match &a.duration {
        Some(d) => Some(i64::try_from(parse_duration(d)?.as_secs()).context("duration too long")?),
        None => None,
    };
    let bound_object_ref = match (&a.bound_object_kind, &a.bound_object_name) {
        (Some(kind), Some(name)) => {
            let (k, ns) = match kind.as_str() {
                "Pod" => (Kind::Pod, namespace),
                "Secret" => (Kind::Secret, namespace),
                "Node" => (Kind::Node, ""),
                other => bail!("--bound-object-kind must be Pod, Secret or Node, not {other:?}"),
            };
            let uid = match &a.bound_object_uid {
                Some(u) => u.clone(),
                None => Api::new(conn.identity()?)
                    .get(k, ns, name)
                    .await
                    .map_err(|s| status_error(&s))?
                    .to_object()
                    .metadata()
                    .uid
                    .clone(),
            };
            Some(tk::BoundObjectReference {
                kind: kind.clone(),
                api_version: "v1".into(),
                name: name.clone(),
                uid,
            })
        }
        _ => None,
    };
    let r = tk::token_service_client::TokenServiceClient::new(conn.issuer()?)
        .create_token(tk::CreateTokenRequest {
            namespace: namespace.to_string(),
            name: a.service_account.clone(),
            audiences: a.audiences.clone(),
            expiration_seconds,
            bound_object_ref,
            service_account_uid: String::new(),
        })
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    for w in &r.warnings {
        eprintln!("Warning: {w}");
    }
    writeln!(out, "{}", r.token)?;
    Ok(0)
}

// ---- create certificate, get trust-bundle ----

/// Lifetime of the token `create certificate` requests for the account: the shortest
/// TokenRequest allows; it is only presented once, a moment later.
pub const CERTIFICATE_TOKEN_SECONDS: i64 = 600;

async fn create_certificate(
    conn: &Connection,
    a: CertificateArgs,
    namespace: &str,
) -> anyhow::Result<u8> {
    let Some(path) = a.output_file.clone() else {
        bail!("pass -o FILE (--output-file): the private key is only written to a file");
    };
    let validity_duration = match &a.duration {
        Some(d) => {
            let secs = parse_duration(d)?.as_secs();
            if secs == 0 {
                bail!("--duration must be positive");
            }
            i64::try_from(secs).context("duration too long")?
        }
        // The server's default (Istio's rule for 0).
        None => 0,
    };
    let sa = a.service_account.as_str();
    // (a) The account's token: the one given, else a short-lived one requested for it.
    let token = if conn.settings().token.is_some() {
        None // the connection presents it (--token, BADGE_TOKEN, --token-file, context)
    } else {
        let r = tk::token_service_client::TokenServiceClient::new(conn.issuer()?)
            .create_token(tk::CreateTokenRequest {
                namespace: namespace.to_string(),
                name: sa.to_string(),
                audiences: vec![a.audience.clone()],
                expiration_seconds: Some(CERTIFICATE_TOKEN_SECONDS),
                bound_object_ref: None,
                service_account_uid: String::new(),
            })
            .await
            .map_err(|s| status_error(&s))
            .with_context(|| format!("requesting a token for service account {namespace}/{sa}"))?
            .into_inner();
        for w in &r.warnings {
            eprintln!("Warning: {w}");
        }
        Some(zeroize::Zeroizing::new(r.token))
    };
    // (b) The SPIFFE ID: in the server's trust domain (GetTrustBundle says which);
    // when the credential may not read it, the CSR names no identity and the CA
    // issues for the token's (its rule), which is checked on the leaf below.
    let trust_domain = match &a.trust_domain {
        Some(td) => Some(
            TrustDomain::parse_field("--trust-domain", td).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => server_trust_domain(conn).await?,
    };
    let expected = match &trust_domain {
        Some(td) => Some(
            SpiffeId::for_service_account(td, namespace, sa).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let key_type = a.key_type;
    let for_csr = expected.clone();
    let generated =
        tokio::task::spawn_blocking(move || cert::key_and_csr(key_type, for_csr.as_ref()))
            .await
            .context("generating the key")??;
    // (c) Istio's CreateCertificate with the token as bearer credential.
    let mut req = tonic::Request::new(istio::IstioCertificateRequest {
        csr: generated.csr_pem.clone(),
        validity_duration,
        metadata: None,
    });
    if let Some(t) = &token {
        let value = format!("Bearer {}", t.as_str())
            .parse()
            .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?;
        req.metadata_mut().insert("authorization", value);
    }
    let chain =
        istio::istio_certificate_service_client::IstioCertificateServiceClient::new(conn.issuer()?)
            .create_certificate(req)
            .await
            .map_err(|s| {
                let e = status_error(&s);
                if s.code() == Code::Unauthenticated && token.is_none() {
                    e.context(format!(
                "CreateCertificate takes the service account's own token with audience {:?}",
                a.audience
            ))
                } else {
                    e
                }
            })?
            .into_inner()
            .cert_chain;
    // (d) The leaf is for our key and the expected identity; key + chain to the file.
    let (chain, leaf) =
        cert::check_chain(&chain, &generated.spki, expected.as_ref(), namespace, sa)?;
    let bundle = cert::bundle(&generated.key_pem, &chain);
    cert::write_private_file(&path, bundle.as_bytes())?;
    eprintln!("{}: {}", path.display(), leaf.summary());
    Ok(0)
}

/// The trust domain the server issues in; `None` when this credential may not ask
/// (an `istio-ca`-only token is not accepted for GetTrustBundle) or the server has no
/// such method.
async fn server_trust_domain(conn: &Connection) -> anyhow::Result<Option<TrustDomain>> {
    let r = ca::certificate_authority_service_client::CertificateAuthorityServiceClient::new(
        conn.issuer()?,
    )
    .get_trust_bundle(ca::GetTrustBundleRequest {})
    .await;
    match r {
        Ok(r) => {
            let td = r.into_inner().trust_domain;
            TrustDomain::parse(&td)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("the server's trust domain {td:?}: {e}"))
        }
        Err(s)
            if matches!(
                s.code(),
                Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented
            ) =>
        {
            Ok(None)
        }
        Err(s) => Err(status_error(&s)).context("reading the trust domain (GetTrustBundle)"),
    }
}

fn is_trust_bundle(kind: &str) -> bool {
    matches!(
        kind,
        "trust-bundle" | "trust-bundles" | "trustbundle" | "trustbundles"
    )
}

async fn trust_bundle(conn: &Connection, a: &GetArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    if let Some(name) = &a.name {
        bail!("trust-bundle takes no name (got {name:?}): there is one, the trust domain's");
    }
    let format = match a.output {
        None | Some(Output::Pem) => Output::Pem,
        Some(Output::Json) => Output::Json,
        Some(Output::Wide) => bail!("trust-bundle prints -o pem (default) or json, not wide"),
        Some(Output::Yaml) => bail!("trust-bundle prints -o pem (default) or json, not yaml"),
    };
    let b = ca::certificate_authority_service_client::CertificateAuthorityServiceClient::new(
        conn.issuer()?,
    )
    .get_trust_bundle(ca::GetTrustBundleRequest {})
    .await
    .map_err(|s| status_error(&s))?
    .into_inner();
    let text = if format == Output::Json {
        b.spiffe_bundle_json
    } else {
        if b.roots_pem.trim().is_empty() {
            bail!(
                "the trust bundle of {:?} has no X.509 roots: the workload CA is disabled or has no CA yet",
                b.trust_domain
            );
        }
        b.roots_pem
    };
    write!(out, "{text}")?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(0)
}

// ---- auth can-i ----

/// `pods/log` → (pods, "", log); `jobs.batch` → (jobs, batch, ""); short names expand.
pub fn parse_resource(s: &str) -> (String, String, String) {
    let (res_group, sub) = s.split_once('/').unwrap_or((s, ""));
    let (res, group) = res_group.split_once('.').unwrap_or((res_group, ""));
    let (res, group) = match Kind::parse(res) {
        Some(k) if group.is_empty() => {
            let g = if k.api_version() == k8s::RBAC {
                "rbac.authorization.k8s.io"
            } else {
                ""
            };
            (k.resource().to_string(), g.to_string())
        }
        _ => (res.to_string(), group.to_string()),
    };
    (res, group, sub.to_string())
}

async fn can_i(
    conn: &Connection,
    a: CanIArgs,
    namespace: &str,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let ns = if a.all_namespaces { "" } else { namespace };
    let (resource_attributes, non_resource_attributes) = if a.resource.starts_with('/') {
        (
            None,
            Some(rv::NonResourceAttributes {
                path: a.resource.clone(),
                verb: a.verb.clone(),
            }),
        )
    } else {
        let (resource, group, subresource) = parse_resource(&a.resource);
        (
            Some(rv::ResourceAttributes {
                namespace: ns.to_string(),
                verb: a.verb.clone(),
                group,
                version: String::new(),
                resource,
                subresource,
                name: a.name.clone().unwrap_or_default(),
            }),
            None,
        )
    };
    let mut client =
        rv::access_review_service_client::AccessReviewServiceClient::new(conn.review()?);
    let r = match &a.as_user {
        Some(user) => {
            client
                .create_subject_access_review(rv::CreateSubjectAccessReviewRequest {
                    spec: Some(rv::SubjectAccessReviewSpec {
                        resource_attributes,
                        non_resource_attributes,
                        user: user.clone(),
                        groups: a.as_groups.clone(),
                        extra: Default::default(),
                        uid: String::new(),
                    }),
                })
                .await
        }
        None => {
            client
                .create_self_subject_access_review(rv::CreateSelfSubjectAccessReviewRequest {
                    spec: Some(rv::SelfSubjectAccessReviewSpec {
                        resource_attributes,
                        non_resource_attributes,
                    }),
                })
                .await
        }
    }
    .map_err(|s| status_error(&s))?
    .into_inner();
    let status = r.status.unwrap_or_default();
    if status.allowed {
        writeln!(out, "yes")?;
    } else {
        writeln!(out, "no")?;
    }
    if a.verbose && !status.reason.is_empty() {
        writeln!(out, "reason: {}", status.reason)?;
    }
    if !status.evaluation_error.is_empty() {
        eprintln!("Warning: {}", status.evaluation_error);
    }
    Ok(if status.allowed { 0 } else { 1 })
}

// ---- review ----

async fn review(
    conn: &Connection,
    token: String,
    audiences: Vec<String>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s.trim().to_string()
    } else {
        token.trim().to_string()
    };
    if token.is_empty() {
        bail!("no token given");
    }
    let r = rv::token_review_service_client::TokenReviewServiceClient::new(conn.review()?)
        .create_token_review(rv::CreateTokenReviewRequest {
            spec: Some(rv::TokenReviewSpec { token, audiences }),
        })
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let st = r.status.unwrap_or_default();
    writeln!(out, "authenticated: {}", st.authenticated)?;
    if let Some(u) = &st.user
        && !u.username.is_empty()
    {
        writeln!(out, "user: {}", u.username)?;
        writeln!(out, "uid: {}", u.uid)?;
        writeln!(out, "groups: {}", u.groups.join(", "))?;
        if !u.extra.is_empty() {
            writeln!(out, "extra:")?;
            let mut extra: Vec<_> = u.extra.iter().collect();
            extra.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in extra {
                writeln!(out, "  {k}: {}", v.items.join(", "))?;
            }
        }
    }
    if !st.audiences.is_empty() {
        writeln!(out, "audiences: {}", st.audiences.join(", "))?;
    }
    if st.stale {
        writeln!(out, "stale: true")?;
    }
    if !st.error.is_empty() {
        writeln!(out, "error: {}", st.error)?;
    }
    Ok(if st.authenticated { 0 } else { 1 })
}

// ---- keys ----

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(k8s::rfc3339).unwrap_or_else(|| "-".into())
}

fn key_state(s: i32) -> &'static str {
    match tk::KeyState::try_from(s) {
        Ok(tk::KeyState::Published) => "published",
        Ok(tk::KeyState::Active) => "active",
        Ok(tk::KeyState::Retired) => "retired",
        Ok(tk::KeyState::VerifyOnly) => "verify-only",
        _ => "unknown",
    }
}

async fn keys(conn: &Connection, k: KeysCommand, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut client = tk::key_service_client::KeyServiceClient::new(conn.issuer()?);
    match k {
        KeysCommand::List => {
            let r = client
                .list_keys(tk::ListKeysRequest {})
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            let mut rows = vec![
                [
                    "KID",
                    "ALGORITHM",
                    "STATE",
                    "CREATED",
                    "ACTIVATES",
                    "RETIRED",
                    "REMOVE AFTER",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            ];
            for key in &r.keys {
                rows.push(vec![
                    key.kid.clone(),
                    key.algorithm.clone(),
                    key_state(key.state).into(),
                    ts(&key.created_at),
                    ts(&key.activates_at),
                    ts(&key.retired_at),
                    ts(&key.remove_after),
                ]);
            }
            write!(out, "{}", render_rows(&rows))?;
        }
        KeysCommand::Rotate { algorithm } => {
            let r = client
                .rotate_keys(tk::RotateKeysRequest {
                    algorithm: algorithm.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            let key = r.key.unwrap_or_default();
            writeln!(
                out,
                "key/{} created ({}, {}; signs from {})",
                key.kid,
                key.algorithm,
                key_state(key.state),
                ts(&key.activates_at)
            )?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").expect("ok"), Duration::from_secs(600));
        assert_eq!(
            parse_duration("1h30m").expect("ok"),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("3600").expect("ok"),
            Duration::from_secs(3600)
        );
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("10m5").is_err());
    }

    #[test]
    fn human_durations() {
        let h = |s| human_duration(Duration::from_secs(s));
        assert_eq!(h(45), "45s");
        assert_eq!(h(303), "5m3s");
        assert_eq!(h(17 * 60), "17m");
        assert_eq!(h(5 * 3600 + 180), "5h3m");
        assert_eq!(h(20 * 3600), "20h");
        assert_eq!(h(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(h(90 * 86_400), "90d");
    }

    #[test]
    fn resources() {
        let r = |s| parse_resource(s);
        assert_eq!(r("pods"), ("pods".into(), "".into(), "".into()));
        assert_eq!(r("po"), ("pods".into(), "".into(), "".into()));
        assert_eq!(r("pods/log"), ("pods".into(), "".into(), "log".into()));
        assert_eq!(r("jobs.batch"), ("jobs".into(), "batch".into(), "".into()));
        assert_eq!(
            r("deployments.apps/scale"),
            ("deployments".into(), "apps".into(), "scale".into())
        );
        assert_eq!(
            r("roles"),
            (
                "roles".into(),
                "rbac.authorization.k8s.io".into(),
                "".into()
            )
        );
        assert_eq!(
            r("serviceaccounts/token"),
            ("serviceaccounts".into(), "".into(), "token".into())
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(
            parse_rfc3339(&k8s::rfc3339(&t)),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn certificate_arguments() {
        let c = Cli::try_parse_from([
            "badgectl",
            "create",
            "certificate",
            "web",
            "-n",
            "shop",
            "-o",
            "web.pem",
        ])
        .expect("parses");
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        let Command::Create(CreateCommand::Certificate(a)) = c.command else {
            panic!("create certificate");
        };
        assert_eq!(a.service_account, "web");
        assert_eq!(a.output_file, Some(PathBuf::from("web.pem")));
        assert_eq!(a.key_type, KeyType::EcdsaP256, "the default");
        assert_eq!(a.audience, "istio-ca", "the CA's default audience");
        assert!(a.duration.is_none() && a.token_file.is_none() && a.trust_domain.is_none());

        let c = Cli::try_parse_from([
            "badgectl",
            "create",
            "certificate",
            "web",
            "--key-type",
            "ed25519",
            "--duration",
            "12h",
            "--output-file",
            "/run/web.pem",
            "--token-file",
            "/run/token",
            "--audience",
            "mesh",
            "--trust-domain",
            "example.org",
        ])
        .expect("parses");
        let Command::Create(CreateCommand::Certificate(a)) = c.command else {
            panic!("create certificate");
        };
        assert_eq!(a.key_type, KeyType::Ed25519, "case-insensitive");
        assert_eq!(
            parse_duration(a.duration.as_deref().expect("set"))
                .expect("ok")
                .as_secs(),
            43_200
        );
        assert_eq!(a.token_file, Some(PathBuf::from("/run/token")));
        assert_eq!(a.audience, "mesh");
        assert_eq!(a.trust_domain.as_deref(), Some("example.org"));

        let e = Cli::try_parse_from([
            "badgectl",
            "create",
            "certificate",
            "web",
            "--key-type",
            "RSA2048",
        ])
        .err()
        .expect("refused")
        .to_string();
        assert!(
            e.contains("'RSA2048'") && e.contains("RSA3072, RSA4096"),
            "{e}"
        );

        for (args, want) in [
            (vec!["get", "trust-bundle"], None),
            (vec!["get", "trust-bundle", "-o", "pem"], Some(Output::Pem)),
            (
                vec!["get", "trust-bundle", "-o", "json"],
                Some(Output::Json),
            ),
        ] {
            let c = Cli::try_parse_from(std::iter::once("badgectl").chain(args)).expect("parses");
            let Command::Get(g) = c.command else {
                panic!("get");
            };
            assert!(is_trust_bundle(&g.kind));
            assert_eq!(g.output, want);
        }
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "badgectl", "get", "sa", "-n", "dev", "-o", "yaml", "--ca", "/ca.pem",
        ])
        .expect("parses");
        assert_eq!(c.namespace.as_deref(), Some("dev"));
        Cli::command().debug_assert();
        // `review TOKEN` is not the global `--token` credential.
        let c = Cli::try_parse_from(["badgectl", "review", "abc"]).expect("parses");
        assert!(c.conn.token.is_none());
        let c = Cli::try_parse_from(["badgectl", "review", "abc", "--token", "t"]).expect("parses");
        assert_eq!(c.conn.token.as_deref(), Some("t"));
    }
}
