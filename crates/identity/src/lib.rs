//! The identity service: namespaces, service accounts, secrets, pods and nodes with
//! Kubernetes semantics (names, admission, the `default` ServiceAccount), and the
//! change feed as `WatchService.Watch`.

pub mod audit;
pub mod cache;
pub mod cli;
pub mod controllers;
pub mod objects;
pub mod rbac;
pub mod services;
pub mod watch;

pub use badge_runtime::config::EncryptionConfig;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use badge_core::Clock;
use badge_proto::identity as pb;
use badge_proto::identity::{
    namespace_service_server::NamespaceServiceServer, node_service_server::NodeServiceServer,
    pod_service_server::PodServiceServer, secret_service_server::SecretServiceServer,
    service_account_service_server::ServiceAccountServiceServer,
    watch_service_server::WatchServiceServer,
};
use badge_runtime::config::{DatabaseConfig, ListenConfig, LogConfig, Validate};
use badge_runtime::tls::TlsMaterial;
use badge_runtime::{GrpcServer, MethodRule, MethodTable};
use badge_store::Store;
use serde::Deserialize;
use tokio::net::TcpListener;

use audit::Audited;
pub use objects::Objects;

/// `badge-identity` configuration (see README "Configuration").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub server: ListenConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub feed: FeedConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub legacy_tokens: LegacyTokensConfig,
    #[serde(default)]
    pub authentication: AuthenticationConfig,
    #[serde(default)]
    pub telemetry: badge_runtime::config::TelemetryConfig,
}

impl badge_runtime::service::ServiceConfig for IdentityConfig {
    const NAME: &'static str = "badge-identity";
    fn log(&self) -> &badge_runtime::config::LogConfig {
        &self.log
    }
    fn telemetry(&self) -> &badge_runtime::config::TelemetryConfig {
        &self.telemetry
    }
}

/// Which bearer tokens identity accepts from callers (`authorization: Bearer`):
/// service-account tokens of these issuers, reviewed exactly as TokenReview does.
/// Empty: client certificates only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationConfig {
    /// The token-issuer's `token.issuers`.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Audiences a bearer token must carry one of (default: the issuers, as the
    /// issuer's API audiences default).
    #[serde(default)]
    pub api_audiences: Vec<String>,
}

impl AuthenticationConfig {
    pub fn settings(&self) -> badge_core::review::ReviewSettings {
        badge_core::review::ReviewSettings::new(
            self.issuers.clone(),
            badge_core::token::api_audiences(&self.issuers, &self.api_audiences),
        )
    }
}

/// Kubernetes' legacy-serviceaccount-token-cleaner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyTokensConfig {
    /// `--legacy-service-account-token-clean-up-period`: unused this long →
    /// invalid; invalid this long → deleted. Default 365 days.
    #[serde(default = "default_cleanup_period")]
    pub clean_up_period_seconds: u64,
    /// How often the cleaner runs (Kubernetes: 24 h).
    #[serde(default = "default_cleanup_interval")]
    pub sync_interval_seconds: u64,
}

fn default_cleanup_period() -> u64 {
    365 * 24 * 3600
}
fn default_cleanup_interval() -> u64 {
    24 * 3600
}

impl Default for LegacyTokensConfig {
    fn default() -> Self {
        LegacyTokensConfig {
            clean_up_period_seconds: default_cleanup_period(),
            sync_interval_seconds: default_cleanup_interval(),
        }
    }
}

/// Change-feed retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Keep feed entries this long; watchers further behind must relist.
    #[serde(default = "default_retention")]
    pub retention_seconds: u64,
    /// How often compaction runs.
    #[serde(default = "default_compaction_interval")]
    pub compaction_interval_seconds: u64,
    /// Every Watch ends (OK, after a BOOKMARK) once it has run a random time
    /// between half of this and one and a half times this, as kube-apiserver's
    /// `--min-request-timeout` does: a long-lived stream is re-authorized and
    /// re-balanced at least that often; clients resume from their last
    /// resource_version.
    #[serde(default = "default_watch_timeout")]
    pub watch_timeout_seconds: u64,
    /// Answer Get and List from the in-memory index, each read first waiting until
    /// the index has applied the store's revision as of the read's arrival (see
    /// [`cache`]); false: every read goes to the database.
    #[serde(default = "default_reads_from_index")]
    pub reads_from_index: bool,
}

fn default_retention() -> u64 {
    3600
}
fn default_compaction_interval() -> u64 {
    60
}
fn default_watch_timeout() -> u64 {
    1800
}
fn default_reads_from_index() -> bool {
    true
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            retention_seconds: default_retention(),
            compaction_interval_seconds: default_compaction_interval(),
            watch_timeout_seconds: default_watch_timeout(),
            reads_from_index: default_reads_from_index(),
        }
    }
}

impl Validate for IdentityConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.telemetry.validate(errors);
        self.server.validate("server", errors);
        self.database.validate(errors);
        for (i, issuer) in self.authentication.issuers.iter().enumerate() {
            if issuer.trim().is_empty() {
                errors.push(format!("authentication.issuers[{i}]: must not be empty"));
            }
        }
        if self.feed.retention_seconds < 60 {
            errors.push(format!(
                "feed.retention_seconds: must be at least 60, got {}",
                self.feed.retention_seconds
            ));
        }
        if let Some(p) = &self.encryption.kek_file
            && !p.is_file()
        {
            errors.push(format!(
                "encryption.kek_file: file {} does not exist",
                p.display()
            ));
        }
        if self.legacy_tokens.sync_interval_seconds == 0 {
            errors.push("legacy_tokens.sync_interval_seconds: must be at least 1".into());
        }
        if self.feed.compaction_interval_seconds == 0 {
            errors.push("feed.compaction_interval_seconds: must be at least 1".into());
        }
        if self.feed.watch_timeout_seconds == 0 {
            errors.push("feed.watch_timeout_seconds: must be at least 1".into());
        }
    }
}

const G: &str = "";

/// The five standard methods of a kind; each request type says which namespace
/// and name it acts on (`badge_proto::Scope`).
macro_rules! crud5 {
    ($svc:literal, $res:literal, $singular:literal, $plural:literal, $create:ty, $get:ty, $list:ty, $update:ty, $delete:ty) => {
        [
            (
                concat!("/badge.identity.v1.", $svc, "/Create", $singular),
                MethodRule::new("create", G, $res).scoped::<$create>(),
            ),
            (
                concat!("/badge.identity.v1.", $svc, "/Get", $singular),
                MethodRule::new("get", G, $res).scoped::<$get>(),
            ),
            (
                concat!("/badge.identity.v1.", $svc, "/List", $plural),
                MethodRule::new("list", G, $res).scoped::<$list>(),
            ),
            (
                concat!("/badge.identity.v1.", $svc, "/Update", $singular),
                MethodRule::new("update", G, $res).scoped::<$update>(),
            ),
            (
                concat!("/badge.identity.v1.", $svc, "/Delete", $singular),
                MethodRule::new("delete", G, $res).scoped::<$delete>(),
            ),
        ]
    };
}

const NAMESPACES: [(&str, MethodRule); 5] = crud5!(
    "NamespaceService",
    "namespaces",
    "Namespace",
    "Namespaces",
    pb::CreateNamespaceRequest,
    pb::GetNamespaceRequest,
    pb::ListNamespacesRequest,
    pb::UpdateNamespaceRequest,
    pb::DeleteNamespaceRequest
);
const SERVICE_ACCOUNTS: [(&str, MethodRule); 5] = crud5!(
    "ServiceAccountService",
    "serviceaccounts",
    "ServiceAccount",
    "ServiceAccounts",
    pb::CreateServiceAccountRequest,
    pb::GetServiceAccountRequest,
    pb::ListServiceAccountsRequest,
    pb::UpdateServiceAccountRequest,
    pb::DeleteServiceAccountRequest
);
/// Secret writes carry up to 1 MiB of data (Kubernetes' limit); every other
/// request keeps the small default (`badge_runtime::limits`).
const fn secret_writes(
    mut methods: [(&'static str, MethodRule); 5],
) -> [(&'static str, MethodRule); 5] {
    // Create and Update (crud5's order: create, get, list, update, delete).
    methods[0].1 = methods[0]
        .1
        .max_request(badge_runtime::limits::SECRET_MAX_REQUEST);
    methods[3].1 = methods[3]
        .1
        .max_request(badge_runtime::limits::SECRET_MAX_REQUEST);
    methods
}
const SECRETS: [(&str, MethodRule); 5] = secret_writes(crud5!(
    "SecretService",
    "secrets",
    "Secret",
    "Secrets",
    pb::CreateSecretRequest,
    pb::GetSecretRequest,
    pb::ListSecretsRequest,
    pb::UpdateSecretRequest,
    pb::DeleteSecretRequest
));
const PODS: [(&str, MethodRule); 5] = crud5!(
    "PodService",
    "pods",
    "Pod",
    "Pods",
    pb::CreatePodRequest,
    pb::GetPodRequest,
    pb::ListPodsRequest,
    pb::UpdatePodRequest,
    pb::DeletePodRequest
);
const NODES: [(&str, MethodRule); 5] = crud5!(
    "NodeService",
    "nodes",
    "Node",
    "Nodes",
    pb::CreateNodeRequest,
    pb::GetNodeRequest,
    pb::ListNodesRequest,
    pb::UpdateNodeRequest,
    pb::DeleteNodeRequest
);
/// A watch needs `watch` on each kind it asks for (the request's `Scope`), in its
/// namespace; the rule's own resource is not used.
const WATCH: [(&str, MethodRule); 1] = [("/badge.identity.v1.WatchService/Watch", WATCH_RULE)];
/// The Watch rule; an open watch re-runs its decision as RBAC changes.
pub(crate) const WATCH_RULE: MethodRule =
    MethodRule::new("watch", G, "*").scoped::<pb::WatchRequest>();

/// Every identity method → what it does in RBAC terms.
pub const METHOD_TABLES: [MethodTable; 7] = [
    &NAMESPACES,
    &SERVICE_ACCOUNTS,
    &SECRETS,
    &PODS,
    &NODES,
    &WATCH,
    &rbac::METHODS,
];

/// The gRPC server with every identity service on it.
pub fn grpc_server(objects: &Objects) -> GrpcServer {
    GrpcServer::new()
        .named("identity")
        .add_service(
            Audited::all(NamespaceServiceServer::new(objects.clone())),
            METHOD_TABLES[0],
        )
        .add_service(
            Audited::all(ServiceAccountServiceServer::new(objects.clone())),
            METHOD_TABLES[1],
        )
        .add_service(Audited::all(SecretServiceServer::new(objects.clone())), METHOD_TABLES[2])
        .add_service(Audited::all(PodServiceServer::new(objects.clone())), METHOD_TABLES[3])
        .add_service(Audited::all(NodeServiceServer::new(objects.clone())), METHOD_TABLES[4])
        .add_service(Audited::all(WatchServiceServer::new(objects.clone())), METHOD_TABLES[5])
        .add_service(
            Audited::all(badge_proto::rbac::role_service_server::RoleServiceServer::new(objects.clone())),
            METHOD_TABLES[6],
        )
        .add_service(
            Audited::all(badge_proto::rbac::cluster_role_service_server::ClusterRoleServiceServer::new(objects.clone())),
            &[],
        )
        .add_service(
            Audited::all(badge_proto::rbac::role_binding_service_server::RoleBindingServiceServer::new(objects.clone())),
            &[],
        )
        .add_service(
            Audited::all(badge_proto::rbac::cluster_role_binding_service_server::ClusterRoleBindingServiceServer::new(objects.clone())),
            &[],
        )
}

/// Runs the identity service on `listener` until `shutdown`. Refuses to start on a
/// schema this binary does not know.
pub async fn serve(
    config: &IdentityConfig,
    store: Store,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tls = TlsMaterial::load(&config.server.tls)?;
    store.check_schema().await?;
    // Security: Secret data (tokens, keys) is sealed at rest with the
    // key-encryption key; identity writes it, so it never runs without one (there
    // is no "store Secrets in the clear" option).
    if !store.seals_data() {
        anyhow::bail!(
            "encryption.kek_file: a key-encryption key is required to seal Secret data at rest (or encryption.kek / BADGE_ENCRYPTION__KEK; `badge kek --out FILE` makes one)"
        );
    }
    // Legacy Secret tokens presented as bearer credentials are recorded as used,
    // as reviews are (else the cleaner invalidates tokens in daily use); identity
    // owns Secrets, so it writes the label through its own store.
    let (last_used_tx, last_used_writer) = badge_access::last_used::LastUsed {
        secrets: badge_access::last_used::Secrets::Store(store.clone()),
        clock: clock.clone(),
    }
    .queue();
    // One index for bearer-token reviews and RBAC decisions (no database round
    // trip per call).
    let access = badge_access::start(
        store.clone(),
        config.authentication.settings(),
        clock.clone(),
        badge_access::BEARER_CACHE_ENTRIES,
        Some(last_used_tx),
        !config.authentication.issuers.is_empty(),
        "identity",
    );
    let mut objects = Objects::new(store.clone(), clock).with_guard(access.guard.clone());
    if config.feed.reads_from_index {
        objects = objects.with_cache(cache::Cache::new(
            access.reviewer.index.clone(),
            &badge_access::INDEXED_KINDS,
        ));
    }
    objects.watch_timeout = Duration::from_secs(config.feed.watch_timeout_seconds);
    controllers::bootstrap(&objects).await?;
    controllers::bootstrap_policy(&objects).await?;
    let server = grpc_server(&objects).with_limits(config.server.limits);
    let names = server.service_names().to_vec();
    server.register_not_serving().await;
    let probe_reviewer = access.reviewer.clone();
    probe_reviewer.set_max_index_lag(config.database.max_index_lag());
    let _tasks = badge_runtime::server::Tasks::from_iter([
        tokio::spawn(last_used_writer),
        tokio::spawn(controllers::default_service_accounts(objects.clone())),
        tokio::spawn(controllers::pod_reaper(objects.clone())),
        tokio::spawn(controllers::legacy_token_cleaner(
            objects.clone(),
            Duration::from_secs(config.legacy_tokens.clean_up_period_seconds),
            Duration::from_secs(config.legacy_tokens.sync_interval_seconds),
        )),
        tokio::spawn(controllers::compactor(
            objects.clone(),
            Duration::from_secs(config.feed.retention_seconds),
            Duration::from_secs(config.feed.compaction_interval_seconds),
        )),
        badge_runtime::server::spawn_readiness(
            server.health(),
            names,
            Duration::from_secs(2),
            // The store answers, and the index (bearer tokens, RBAC) keeps up.
            move || {
                let r = probe_reviewer.clone();
                async move { r.probe().await.ok() }
            },
        ),
    ]);
    tracing::info!(addr = %listener.local_addr()?, "identity serving (mTLS gRPC)");
    let guard = access.guard.clone();
    let _access = access;
    // Ends open Watch streams when the shutdown begins (they would otherwise keep
    // the graceful drain waiting forever).
    let stopping = objects.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    server.serve(listener, &tls, guard, shutdown).await?;
    tracing::info!("identity stopped");
    Ok(())
}
