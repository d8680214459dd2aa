//! `badge-agent`: the kubelet's projected service-account token volume for workloads
//! outside Kubernetes. It reads a Pod from identity, requests a pod-bound token for
//! every `serviceAccountToken` projection of its volumes, and keeps
//! `<dir>/<path>`, `<dir>/ca.crt` and `<dir>/namespace` current:
//!
//! - files are written atomically (a temporary file in the same directory, then
//!   rename) with mode 0600, the directory 0700; a directory that is a symlink or
//!   that another user owns is refused before anything is written;
//! - each token is refreshed once it is older than 80 % of its lifetime or 24 h,
//!   whichever comes first, plus up to 10 s of jitter ([`next_refresh`]);
//! - while Badge is unreachable it retries with exponential backoff (1 s to 30 s),
//!   keeping the old token in place;
//! - [`Control::Refresh`] (SIGHUP in the binary) refreshes every token now;
//! - when the pod is deleted (or recreated with another uid) — seen on identity's
//!   Watch, or by GetPod every 5 s (which also covers a watch that went quiet) — it
//!   removes the files it wrote and returns [`Exit::PodDeleted`]; [`Control::Stop`] (SIGTERM) returns
//!   [`Exit::Stopped`] and leaves the files.
//!
//! `podCertificate` projections (a key generated here and a certificate from
//! `CreatePodCertificate`, as the kubelet does) are handled the same way by
//! [`pod_certificates`]: same directory rules, refresh control and clean-up.

pub mod node;
pub mod pod_certificates;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use badge_core::{Clock, SystemClock};
use badge_proto::identity as id;
use badge_proto::token as tk;
use badgectl::ConnectionArgs;
use badgectl::conn::Ch;
use rand::Rng as _;
use tokio::sync::mpsc;
use tonic::Code;

/// How often the pod is checked with GetPod (besides the watch).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Backoff bounds while Badge is unreachable.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Most a token waits before refresh, whatever its lifetime.
pub const MAX_REFRESH_AGE: Duration = Duration::from_secs(24 * 3600);
/// Random delay added to each refresh.
pub const MAX_JITTER: Duration = Duration::from_secs(10);
/// Kubernetes' default for a projection without expirationSeconds.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

#[derive(Clone, clap::Parser)]
#[command(
    name = "badge-agent",
    version,
    about = "Keeps a pod's projected service-account tokens in a directory, like the kubelet; `node`: the node agent (SPIFFE Workload API and Envoy SDS)",
    subcommand_negates_reqs = true
)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// The pod's namespace.
    #[arg(long, required = true)]
    pub namespace: Option<String>,
    /// The pod's name.
    #[arg(long, required = true)]
    pub pod: Option<String>,
    /// Where the token files, ca.crt and namespace are written (created 0700).
    #[arg(long, required = true)]
    pub dir: Option<PathBuf>,
}

/// Other modes than the projected-token agent.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Mode {
    /// The node agent: the SPIFFE Workload API and Envoy SDS on a Unix socket for
    /// the pods of this node, callers attested by their Unix credentials.
    Node(node::NodeOptions),
}

impl std::fmt::Debug for AgentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentArgs")
            .field("mode", &self.mode)
            .field("conn", &self.conn)
            .field("namespace", &self.namespace)
            .field("pod", &self.pod)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The pod and directory of the projected-token agent.
#[derive(Debug, Clone)]
struct Target {
    namespace: String,
    pod: String,
    dir: PathBuf,
}

/// When a token issued at `issued_at` and expiring at `expires_at` should be
/// replaced: after 80 % of its lifetime or 24 h, whichever is first, plus `jitter`.
/// A token that expires before it was issued is due at once (plus jitter).
pub fn next_refresh(issued_at: SystemTime, expires_at: SystemTime, jitter: Duration) -> SystemTime {
    let lifetime = expires_at.duration_since(issued_at).unwrap_or_default();
    // 80 % in whole milliseconds: exact for every lifetime Badge issues.
    let millis = lifetime.as_millis().saturating_mul(4) / 5;
    let eighty = Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX));
    issued_at + eighty.min(MAX_REFRESH_AGE) + jitter
}

/// Up to [`MAX_JITTER`], uniformly.
pub fn random_jitter() -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=MAX_JITTER.as_millis() as u64))
}

/// The next backoff after `current` failed: doubled, at most [`BACKOFF_MAX`].
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(BACKOFF_START, BACKOFF_MAX)
}

/// What the running agent is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Refresh every token now (SIGHUP).
    Refresh,
    /// Stop, leaving the files (SIGTERM).
    Stop,
}

/// Sends [`Control`]s to a running agent.
#[derive(Debug, Clone)]
pub struct Handle(mpsc::UnboundedSender<Control>);

impl Handle {
    pub fn refresh(&self) {
        let _ = self.0.send(Control::Refresh);
    }
    pub fn stop(&self) {
        let _ = self.0.send(Control::Stop);
    }
}

/// A handle and the receiver to pass to [`run`].
pub fn control() -> (Handle, mpsc::UnboundedReceiver<Control>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Handle(tx), rx)
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The pod is gone; the files were removed.
    PodDeleted,
    /// Told to stop; the files were left.
    Stopped,
}

/// One `serviceAccountToken` projection of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    pub audience: String,
    pub expiration_seconds: i64,
    pub path: PathBuf,
}

/// A projection path must be relative, without `..`, and not clash with the
/// agent's own `ca.crt` and `namespace`.
fn safe_path(p: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    if p.is_empty() {
        return Err("empty path".into());
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "path {p:?} must be relative and must not contain '..'"
        ));
    }
    if path == Path::new("ca.crt") || path == Path::new("namespace") {
        return Err(format!("path {p:?} is reserved for the agent's own file"));
    }
    Ok(path)
}

/// Every `serviceAccountToken` projection of `pod`'s volumes, in order; a path that
/// is unsafe or already taken is skipped with a warning.
pub fn token_sources(pod: &id::Pod) -> Vec<TokenSource> {
    use id::volume::Source;
    use id::volume_projection::Projection;
    let mut out: Vec<TokenSource> = Vec::new();
    let Some(spec) = &pod.spec else {
        return out;
    };
    for v in &spec.volumes {
        let Some(Source::Projected(p)) = &v.source else {
            continue;
        };
        for s in &p.sources {
            let Some(Projection::ServiceAccountToken(t)) = &s.projection else {
                continue;
            };
            let path = match safe_path(&t.path) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(volume = %v.name, "skipping token projection: {e}");
                    continue;
                }
            };
            if out.iter().any(|o| o.path == path) {
                tracing::warn!(volume = %v.name, path = %t.path, "skipping token projection: another volume already writes this path");
                continue;
            }
            out.push(TokenSource {
                audience: t.audience.clone(),
                expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
                path,
            });
        }
    }
    out
}

/// Creates `dir` (0700) if missing, then refuses it unless it is a real directory
/// owned by the agent's own user, and only then narrows it to 0700.
///
/// Security: the agent writes bearer tokens into `dir`. If `dir` is a symlink, or
/// a directory another user owns, that user decides where the tokens land (swap
/// the link, or rename and replace entries in their own directory) or simply
/// reads them; and `chmod` follows a symlink, so narrowing first would change the
/// mode of whatever the link points at. So the checks run on the path itself
/// (`symlink_metadata`, never followed) before anything is changed or written.
/// Symlinks among the ancestors (e.g. `/var/run` → `/run`) are the system's and
/// are allowed.
#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if let Some(refusal) = dir_refusal(dir, &meta, own_uid()?) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            refusal,
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Why the agent must not write into `dir`, whose own (not followed) metadata is
/// `meta`, when it runs as `uid`; `None` when it may.
#[cfg(unix)]
fn dir_refusal(dir: &Path, meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let shown = dir.display();
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(dir)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        return Some(format!(
            "{shown} is a symlink{target}: refusing to write tokens through it; give the real directory"
        ));
    }
    if !meta.is_dir() {
        return Some(format!("{shown} is not a directory"));
    }
    if meta.uid() != uid {
        return Some(format!(
            "{shown} is owned by uid {}, not by the agent's uid {uid}: refusing to write tokens into another user's directory",
            meta.uid()
        ));
    }
    None
}

/// The agent's effective uid, without `unsafe`: the owner of `/proc/self` (Linux),
/// else of a file the agent creates (and removes) in the temporary directory.
#[cfg(unix)]
fn own_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(uid) = UID.get() {
        return Ok(*uid);
    }
    let uid = match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid(),
        Err(_) => {
            let probe = std::env::temp_dir().join(format!(
                ".badge-agent-uid-{:016x}",
                rand::rng().random::<u64>()
            ));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)?;
            let uid = file.metadata().map(|m| m.uid());
            let _ = std::fs::remove_file(&probe);
            uid?
        }
    };
    Ok(*UID.get_or_init(|| uid))
}

/// Writes `dir/rel` atomically: a temporary file (mode 0600) in the same directory,
/// synced, then renamed over the target.
pub fn write_atomic(dir: &Path, rel: &Path, data: &[u8]) -> std::io::Result<()> {
    let (tmp, target) = stage(dir, rel, data)?;
    rename_staged(&tmp, &target)
}

/// Renames a file [`stage`]d, removing it if that fails.
fn rename_staged(tmp: &Path, target: &Path) -> std::io::Result<()> {
    let r = std::fs::rename(tmp, target);
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r
}

/// The first half of [`write_atomic`]: `data` in a synced temporary file (0600)
/// beside `dir/rel`; returns (temporary, target).
fn stage(dir: &Path, rel: &Path, data: &[u8]) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::io::Write as _;
    let target = dir.join(rel);
    let parent = target.parent().unwrap_or(dir).to_path_buf();
    create_private_dir(&parent)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{:016x}", rand::rng().random::<u64>()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, target))
}

struct TokenState {
    source: TokenSource,
    /// When to (re)request it.
    due: SystemTime,
    backoff: Duration,
    /// Expiry of the token on disk, if one was written.
    expires_at: Option<SystemTime>,
}

struct Agent {
    args: Target,
    identity: Ch,
    issuer: Ch,
    uid: String,
    service_account: String,
    written: Vec<PathBuf>,
    /// The only source of wall-clock time.
    clock: Arc<dyn Clock>,
}

enum PodCheck {
    Alive,
    Gone(String),
    Unknown(tonic::Status),
}

fn to_system(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t.as_ref()?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

impl Agent {
    async fn get_pod(&self) -> Result<id::Pod, tonic::Status> {
        id::pod_service_client::PodServiceClient::new(self.identity.clone())
            .get_pod(id::GetPodRequest {
                namespace: self.args.namespace.clone(),
                name: self.args.pod.clone(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn check_pod(&self) -> PodCheck {
        match self.get_pod().await {
            Ok(p) => {
                let uid = p.metadata.map(|m| m.uid).unwrap_or_default();
                if uid == self.uid {
                    PodCheck::Alive
                } else {
                    PodCheck::Gone(format!("recreated with uid {uid}"))
                }
            }
            Err(s) if s.code() == Code::NotFound => PodCheck::Gone("not found".into()),
            Err(s) => PodCheck::Unknown(s),
        }
    }

    fn write(&mut self, rel: &Path, data: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.args.dir, rel, data)
            .with_context(|| format!("writing {}", self.args.dir.join(rel).display()))?;
        self.remember(rel);
        Ok(())
    }

    fn remember(&mut self, rel: &Path) {
        if !self.written.iter().any(|w| w == rel) {
            self.written.push(rel.to_path_buf());
        }
    }

    /// Two files staged first, then renamed in order (`first`, then `second`).
    fn write_pair(
        &mut self,
        first: &Path,
        first_data: &[u8],
        second: &Path,
        second_data: &[u8],
    ) -> anyhow::Result<()> {
        let dir = self.args.dir.clone();
        let shown = |rel: &Path| dir.join(rel).display().to_string();
        let (t1, p1) =
            stage(&dir, first, first_data).with_context(|| format!("writing {}", shown(first)))?;
        let (t2, p2) = match stage(&dir, second, second_data) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&t1);
                return Err(e).with_context(|| format!("writing {}", shown(second)));
            }
        };
        if let Err(e) = rename_staged(&t1, &p1) {
            let _ = std::fs::remove_file(&t2);
            return Err(e).with_context(|| format!("writing {}", shown(first)));
        }
        self.remember(first);
        rename_staged(&t2, &p2).with_context(|| format!("writing {}", shown(second)))?;
        self.remember(second);
        Ok(())
    }

    fn remove_files(&mut self) {
        for rel in self.written.drain(..) {
            let p = self.args.dir.join(&rel);
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::info!(file = %p.display(), "removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %p.display(), "could not remove: {e}"),
            }
        }
    }

    async fn request(&self, s: &TokenSource) -> Result<tk::CreateTokenResponse, tonic::Status> {
        tk::token_service_client::TokenServiceClient::new(self.issuer.clone())
            .create_token(tk::CreateTokenRequest {
                namespace: self.args.namespace.clone(),
                name: self.service_account.clone(),
                audiences: if s.audience.is_empty() {
                    vec![]
                } else {
                    vec![s.audience.clone()]
                },
                expiration_seconds: Some(s.expiration_seconds),
                bound_object_ref: Some(tk::BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: self.args.pod.clone(),
                    uid: self.uid.clone(),
                }),
                service_account_uid: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn open_watch(&self) -> Result<tonic::Streaming<id::WatchEvent>, tonic::Status> {
        id::watch_service_client::WatchServiceClient::new(self.identity.clone())
            .watch(id::WatchRequest {
                kinds: vec![id::Kind::Pod as i32],
                namespace: self.args.namespace.clone(),
                label_selector: String::new(),
                resource_version: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// What one watch event means for our pod.
fn watch_verdict(
    ev: &id::WatchEvent,
    name: &str,
    uid: &str,
    listing: &mut bool,
    seen: &mut bool,
) -> Option<String> {
    let ty = id::EventType::try_from(ev.r#type).unwrap_or(id::EventType::Unspecified);
    if ty == id::EventType::Bookmark {
        if *listing {
            *listing = false;
            if !*seen {
                return Some("not in the watch's list".into());
            }
        }
        return None;
    }
    let Some(id::watch_event::Object::Pod(p)) = &ev.object else {
        return None;
    };
    let m = p.metadata.clone().unwrap_or_default();
    if m.name != name {
        return None;
    }
    match ty {
        id::EventType::Deleted if m.uid == uid => Some("deleted".into()),
        id::EventType::Added | id::EventType::Modified if m.uid != uid => {
            Some(format!("recreated with uid {}", m.uid))
        }
        id::EventType::Added | id::EventType::Modified => {
            *seen = true;
            None
        }
        _ => None,
    }
}

/// The next event of the pod watch; never resolves while there is none.
async fn next_watch_event(
    watch: &mut Option<tonic::Streaming<id::WatchEvent>>,
) -> Result<Option<id::WatchEvent>, tonic::Status> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// Runs the agent until the pod is deleted or [`Control::Stop`], on the wall clock.
pub async fn run(
    args: AgentArgs,
    control: mpsc::UnboundedReceiver<Control>,
) -> anyhow::Result<Exit> {
    run_with_clock(args, control, Arc::new(SystemClock)).await
}

/// [`run`], reading the time from `clock`.
async fn run_with_clock(
    args: AgentArgs,
    mut control: mpsc::UnboundedReceiver<Control>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Exit> {
    let (Some(namespace), Some(pod), Some(dir)) = (args.namespace, args.pod, args.dir) else {
        bail!("--namespace, --pod and --dir are required");
    };
    let conn = args.conn.connect()?;
    let ca = conn.ca_pem().to_vec();
    let mut agent = Agent {
        identity: conn.identity()?,
        issuer: conn.issuer()?,
        args: Target {
            namespace,
            pod,
            dir,
        },
        uid: String::new(),
        service_account: String::new(),
        written: Vec::new(),
        clock,
    };
    let who = format!("{}/{}", agent.args.namespace, agent.args.pod);
    create_private_dir(&agent.args.dir)
        .with_context(|| format!("creating {}", agent.args.dir.display()))?;

    // The pod, retrying while Badge is unreachable.
    let mut backoff = BACKOFF_START;
    let pod = loop {
        match agent.get_pod().await {
            Ok(p) => break p,
            Err(s) if s.code() == Code::NotFound => bail!("pod {who} not found"),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                bail!("reading pod {who}: {}", s.message())
            }
            Err(s) => {
                tracing::warn!(pod = %who, "reading the pod failed, retrying in {backoff:?}: {}: {}", s.code(), s.message());
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    c = control.recv() => if matches!(c, Some(Control::Stop) | None) { return Ok(Exit::Stopped) },
                }
                backoff = next_backoff(backoff);
            }
        }
    };
    let meta = pod.metadata.clone().unwrap_or_default();
    agent.uid = meta.uid;
    agent.service_account = pod
        .spec
        .as_ref()
        .map(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let sources = token_sources(&pod);
    let token_paths: Vec<PathBuf> = sources.iter().map(|s| s.path.clone()).collect();
    let cert_sources = pod_certificates::certificate_sources(&pod, &token_paths);
    if sources.is_empty() && cert_sources.is_empty() {
        tracing::warn!(pod = %who, "the pod has no serviceAccountToken or podCertificate projection: writing ca.crt and namespace only");
    }
    agent.write(Path::new("ca.crt"), &ca)?;
    let ns = agent.args.namespace.clone();
    agent.write(Path::new("namespace"), ns.as_bytes())?;
    tracing::info!(pod = %who, uid = %agent.uid, service_account = %agent.service_account, tokens = sources.len(), certificates = cert_sources.len(), dir = %agent.args.dir.display(), "projecting");

    let now = agent.clock.now();
    let mut tokens: Vec<TokenState> = sources
        .into_iter()
        .map(|source| TokenState {
            source,
            due: now,
            backoff: BACKOFF_START,
            expires_at: None,
        })
        .collect();
    let mut certs: Vec<pod_certificates::CertificateState> = cert_sources
        .into_iter()
        .map(|s| pod_certificates::CertificateState::new(s, now))
        .collect();
    let mut call_as = pod_certificates::CallAs::Itself;

    let mut watch = match agent.open_watch().await {
        Ok(w) => Some(w),
        Err(s) => {
            tracing::warn!(
                "watch unavailable, polling the pod every {POLL_INTERVAL:?}: {}: {}",
                s.code(),
                s.message()
            );
            None
        }
    };
    let (mut listing, mut seen) = (true, false);
    let mut control_open = true;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // Refresh whatever is due.
        let now = agent.clock.now();
        for t in tokens.iter_mut().filter(|t| t.due <= now) {
            let issued_at = agent.clock.now();
            match agent.request(&t.source).await {
                Ok(r) => {
                    let expires_at = to_system(&r.expiration_timestamp).unwrap_or(
                        issued_at + Duration::from_secs(t.source.expiration_seconds.max(0) as u64),
                    );
                    agent.write(&t.source.path, r.token.as_bytes())?;
                    t.expires_at = Some(expires_at);
                    t.backoff = BACKOFF_START;
                    t.due = next_refresh(issued_at, expires_at, random_jitter());
                    for w in &r.warnings {
                        tracing::warn!(path = %t.source.path.display(), "token-issuer: {w}");
                    }
                    tracing::info!(path = %t.source.path.display(), audience = %t.source.audience, credential_id = %r.credential_id, refresh_in = ?t.due.duration_since(agent.clock.now()).unwrap_or_default(), "token written");
                }
                Err(s) => {
                    if matches!(
                        s.code(),
                        Code::NotFound | Code::Aborted | Code::InvalidArgument
                    ) && let PodCheck::Gone(why) = agent.check_pod().await
                    {
                        tracing::info!(pod = %who, "pod {why}: removing the files");
                        agent.remove_files();
                        return Ok(Exit::PodDeleted);
                    }
                    let still_valid = t.expires_at.is_some_and(|e| e > agent.clock.now());
                    if still_valid {
                        tracing::warn!(path = %t.source.path.display(), "token request failed, keeping the current token, retrying in {:?}: {}: {}", t.backoff, s.code(), s.message());
                    } else {
                        tracing::error!(path = %t.source.path.display(), "token request failed and no valid token is in place, retrying in {:?}: {}: {}", t.backoff, s.code(), s.message());
                    }
                    t.due = agent.clock.now() + t.backoff;
                    t.backoff = next_backoff(t.backoff);
                }
            }
        }
        if let Some(why) = agent.refresh_certificates(&mut certs, &mut call_as).await? {
            tracing::info!(pod = %who, "pod {why}: removing the files");
            agent.remove_files();
            return Ok(Exit::PodDeleted);
        }
        let next = tokens
            .iter()
            .map(|t| t.due)
            .chain(certs.iter().map(|c| c.due))
            .min()
            .unwrap_or_else(|| agent.clock.now() + MAX_REFRESH_AGE);
        let sleep = next.duration_since(agent.clock.now()).unwrap_or_default();

        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            c = control.recv(), if control_open => match c {
                Some(Control::Refresh) => {
                    tracing::info!("refreshing every token and certificate now");
                    let now = agent.clock.now();
                    for t in &mut tokens {
                        t.due = now;
                    }
                    for c in &mut certs {
                        c.due = now;
                    }
                }
                Some(Control::Stop) => {
                    tracing::info!("stopping; the files stay");
                    return Ok(Exit::Stopped);
                }
                None => control_open = false,
            },
            ev = next_watch_event(&mut watch), if watch.is_some() => match ev {
                Ok(Some(ev)) => {
                    if let Some(why) = watch_verdict(&ev, &agent.args.pod, &agent.uid, &mut listing, &mut seen) {
                        // Confirm before deleting anything.
                        if let PodCheck::Gone(w) = agent.check_pod().await {
                            tracing::info!(pod = %who, "pod {why} ({w}): removing the files");
                            agent.remove_files();
                            return Ok(Exit::PodDeleted);
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    let why = match ev { Err(s) => format!("{}: {}", s.code(), s.message()), _ => "stream ended".into() };
                    tracing::warn!("watch lost ({why}), polling the pod every {POLL_INTERVAL:?}");
                    watch = None;
                    poll.reset();
                }
            },
            // Polled even while the watch is up: a watch held open by a server that
            // is draining (or partitioned) can go quiet without failing.
            _ = poll.tick() => {
                match agent.check_pod().await {
                    PodCheck::Gone(why) => {
                        tracing::info!(pod = %who, "pod {why}: removing the files");
                        agent.remove_files();
                        return Ok(Exit::PodDeleted);
                    }
                    PodCheck::Unknown(s) => tracing::warn!(pod = %who, "checking the pod failed: {}: {}", s.code(), s.message()),
                    PodCheck::Alive if watch.is_none() => {
                        if let Ok(w) = agent.open_watch().await {
                            tracing::info!("watch re-established");
                            watch = Some(w);
                            (listing, seen) = (true, false);
                        }
                    }
                    PodCheck::Alive => {}
                }
            }
        }
    }
}

/// [`run`] as the command line runs it (`badge-agent`): SIGHUP
/// refreshes every token now; SIGTERM / Ctrl-C stop, leaving the files.
pub async fn run_with_signals(args: AgentArgs) -> anyhow::Result<()> {
    // The one wall clock of the process; every loop reads the time through it.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(Mode::Node(opts)) = &args.mode {
        return node::run_with_signals_and_clock(&args.conn, opts, clock).await;
    }
    let (handle, control) = control();
    forward_signals(handle)?;
    run_with_clock(args, control, clock).await.map(|_| ())
}

fn forward_signals(handle: Handle) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => handle.refresh(),
                    _ = term.recv() => { handle.stop(); return; }
                    _ = tokio::signal::ctrl_c() => { handle.stop(); return; }
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    #[test]
    fn next_refresh_table() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // (lifetime, jitter, expected delay after issue)
        let cases: &[(Duration, Duration, Duration)] = &[
            (s(3600), s(0), s(2880)),                  // 80 % of an hour
            (s(3600), s(10), s(2890)),                 // plus jitter
            (s(3607), s(0), ms(2_885_600)),            // the kubelet's 3607 s
            (s(600), s(0), s(480)),                    // the shortest Badge issues
            (s(30 * 3600), s(0), s(24 * 3600)),        // 80 % = exactly 24 h
            (s(30 * 3600 + 1), s(0), s(24 * 3600)),    // just past: capped
            (s(30 * 3600 - 1), s(0), ms(86_399_200)),  // just under: 80 %
            (s(365 * 86_400), s(3), s(24 * 3600 + 3)), // a year: 24 h + jitter
            (s(0), s(0), s(0)),                        // expires on issue: now
            (s(0), s(7), s(7)),
        ];
        for (lifetime, jitter, want) in cases {
            let got = next_refresh(at(0), at(0) + *lifetime, *jitter);
            assert_eq!(
                got.duration_since(at(0)).expect("after issue"),
                *want,
                "lifetime {lifetime:?} jitter {jitter:?}"
            );
        }
        // Expired before issue (clock skew): due at once plus jitter.
        assert_eq!(next_refresh(at(100), at(50), s(2)), at(102));
    }

    #[test]
    fn command_lines() {
        use clap::Parser as _;
        let a = AgentArgs::try_parse_from([
            "badge-agent",
            "--namespace",
            "apps",
            "--pod",
            "web",
            "--dir",
            "d",
        ])
        .expect("projected tokens");
        assert!(a.mode.is_none());
        assert!(AgentArgs::try_parse_from(["badge-agent", "--namespace", "apps"]).is_err());
        let n = AgentArgs::try_parse_from([
            "badge-agent",
            "node",
            "--agent-config",
            "agent.yaml",
            "--client-cert",
            "node.pem",
        ])
        .expect("node");
        match n.mode {
            Some(Mode::Node(o)) => assert_eq!(o.agent_config, PathBuf::from("agent.yaml")),
            None => panic!("node mode"),
        }
        assert_eq!(n.conn.client_cert, Some(PathBuf::from("node.pem")));
        assert!(AgentArgs::try_parse_from(["badge-agent", "node"]).is_err());
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = BACKOFF_START;
        let mut seen = vec![b];
        for _ in 0..7 {
            b = next_backoff(b);
            seen.push(b);
        }
        let secs: Vec<u64> = seen.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..1000 {
            assert!(random_jitter() <= MAX_JITTER);
        }
    }

    #[test]
    fn paths() {
        assert!(safe_path("token").is_ok());
        assert!(safe_path("a/b").is_ok());
        assert!(safe_path("../x").is_err());
        assert!(safe_path("/etc/x").is_err());
        assert!(safe_path("a/../../x").is_err());
        assert!(safe_path("ca.crt").is_err());
        assert!(safe_path("").is_err());
    }

    /// Security regression (#13 finding 10): a symlinked target directory was
    /// followed (tokens written wherever the link points, and the target chmod-ed).
    #[cfg(unix)]
    #[test]
    fn a_symlinked_target_directory_is_refused_and_its_target_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let link = tmp.path().join("tokens");
        std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");

        let err = write_atomic(&link, Path::new("token"), b"secret").expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a symlink (to {}): refusing to write tokens through it; give the real directory",
                link.display(),
                elsewhere.display()
            )
        );
        assert!(
            std::fs::read_dir(&elsewhere).expect("ls").next().is_none(),
            "nothing written through the link"
        );
        let mode = std::fs::metadata(&elsewhere)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(format!("{mode:o}"), "755", "the link's target was chmod-ed");

        // A symlink inside the directory, where a projection's subdirectory goes.
        let real = tmp.path().join("real");
        write_atomic(&real, Path::new("ok"), b"x").expect("a real directory works");
        std::os::unix::fs::symlink(&elsewhere, real.join("sub")).expect("symlink");
        let err = write_atomic(&real, Path::new("sub/token"), b"secret").expect_err("refused");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert!(std::fs::read_dir(&elsewhere).expect("ls").next().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_of_another_user_or_a_file_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tokens");
        std::fs::create_dir(&dir).expect("mkdir");
        let me = own_uid().expect("uid");
        let meta = std::fs::symlink_metadata(&dir).expect("stat");
        assert_eq!(dir_refusal(&dir, &meta, me), None, "our own directory");
        let other = me.wrapping_add(1);
        assert_eq!(
            dir_refusal(&dir, &meta, other),
            Some(format!(
                "{} is owned by uid {me}, not by the agent's uid {other}: refusing to write tokens into another user's directory",
                dir.display()
            ))
        );
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").expect("write");
        let meta = std::fs::symlink_metadata(&file).expect("stat");
        assert_eq!(
            dir_refusal(&file, &meta, me),
            Some(format!("{} is not a directory", file.display()))
        );
        // The uid the checks compare with is the agent's own: a directory it
        // creates passes.
        create_private_dir(&tmp.path().join("new")).expect("created and accepted");
    }

    #[test]
    fn atomic_private_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("tokens");
        write_atomic(&d, Path::new("sub/token"), b"one").expect("write");
        write_atomic(&d, Path::new("sub/token"), b"two").expect("rewrite");
        assert_eq!(std::fs::read(d.join("sub/token")).expect("read"), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(d.join("sub"))
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode(&d.join("sub/token")), 0o600);
            assert_eq!(mode(&d.join("sub")), 0o700);
        }
    }

    #[test]
    fn watch_verdicts() {
        let pod = |name: &str, uid: &str| {
            Some(id::watch_event::Object::Pod(id::Pod {
                metadata: Some(badge_proto::meta::ObjectMeta {
                    name: name.into(),
                    uid: uid.into(),
                    ..Default::default()
                }),
                spec: None,
            }))
        };
        let ev = |ty: id::EventType, object| id::WatchEvent {
            r#type: ty as i32,
            resource_version: "1".into(),
            object,
        };
        let (mut listing, mut seen) = (true, false);
        let mut v = |e: &id::WatchEvent| watch_verdict(e, "web", "u1", &mut listing, &mut seen);
        assert_eq!(v(&ev(id::EventType::Added, pod("other", "x"))), None);
        assert_eq!(v(&ev(id::EventType::Added, pod("web", "u1"))), None);
        assert_eq!(v(&ev(id::EventType::Bookmark, None)), None);
        assert_eq!(v(&ev(id::EventType::Modified, pod("web", "u1"))), None);
        assert_eq!(v(&ev(id::EventType::Deleted, pod("other", "u1"))), None);
        assert!(v(&ev(id::EventType::Deleted, pod("web", "u1"))).is_some());
        assert!(v(&ev(id::EventType::Added, pod("web", "u2"))).is_some());
        // A list without our pod: it was deleted in between.
        let (mut listing, mut seen) = (true, false);
        assert!(
            watch_verdict(
                &ev(id::EventType::Bookmark, None),
                "web",
                "u1",
                &mut listing,
                &mut seen
            )
            .is_some()
        );
    }
}
