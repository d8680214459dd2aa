//! The token-review service: Kubernetes' TokenReview for service-account tokens,
//! answered from memory.
//!
//! # What it serves
//!
//! - `badge.review.v1.TokenReviewService/CreateTokenReview` over mTLS gRPC (RBAC
//!   terms: `create` on `tokenreviews` in `authentication.k8s.io`). A token that
//!   fails is an OK answer with `authenticated = false` and Kubernetes' error text;
//!   an empty `spec.token` is INVALID_ARGUMENT ("token is required for TokenReview
//!   in authentication"). Warnings (legacy auto-generated Secrets) are `warning`
//!   response metadata. The answer never contains the token.
//! - Kubernetes' webhook token authentication over HTTPS (optional, [`webhook`]),
//!   so a kube-apiserver can use Badge as its `--authentication-token-webhook`.
//!
//! The algorithm, its check order and texts are `badge_core::review` (reference
//! §3.1–§3.6): issuer pre-filter, kid → keys, signature (each key only with its own
//! algorithm; never `none` or HMAC), issuer, audiences, nbf/exp/iat with
//! `review.leeway_seconds`, then the service account, secret, pod and node, then
//! Badge's revocations, then `warnafter` (stale, still authenticated).
//!
//! # No database round trip per review
//!
//! An [`badge_records::Index`] follows the change feed (list, then watch) for
//! ServiceAccounts, Pods, Secrets, Nodes, SigningKeys and Revocations; the
//! liveness checks read only it ([`lookup`]). Verification keys are rebuilt from
//! the SigningKey records whenever they change and swapped atomically
//! ([`keys`]). Verified signatures are cached by digest (bounded,
//! `review.cache_entries`), successes only; the liveness checks still run on every
//! review, so deleting a bound object or revoking a token takes effect as soon as
//! the feed delivers it, cached or not.
//!
//! Two slow paths keep memory honest ([`reviewer`]): a token whose kid no key has
//! triggers one shared re-read of the keys from the store before it fails (a key
//! rotated in a moment ago), and a review that failed a liveness check waits for
//! the index to apply what the store had committed and runs again (an object
//! created a moment ago through another process) — Kubernetes' informer-then-live-
//! GET. Successful reviews never touch the database.
//!
//! # Deletion leeway: 0, where Kubernetes has 60 s
//!
//! Kubernetes keeps a bound token valid until 60 s after its service account, pod,
//! secret or node got a deletion timestamp (`invalidIfDeletedBefore = now - 60s`),
//! to cover informer lag. Badge's index learns of a deletion within milliseconds,
//! so `review.deletion_leeway_seconds` defaults to 0: a token bound to a deleted
//! pod fails as soon as the deletion reaches the index, and a pod deleted with a
//! grace period keeps its tokens exactly until its deletion timestamp. Set 60 for
//! Kubernetes' behaviour. Legacy tokens have no leeway in either (their Secret
//! being deleted is enough).
//!
//! # Revocation
//!
//! `badge.token.v1.TokenService/RevokeToken` (token-issuer) writes a Revocation
//! record named by the jti; it reaches every token-review replica through the feed
//! and the token fails with "service account token has been revoked" until the
//! revocation's `expires_at` (after which the token has expired anyway and the
//! issuer prunes the record).
//!
//! # When the store is unreachable: availability
//!
//! Health turns NOT_SERVING (so load balancers prefer replicas that can reach the
//! store), but reviews that still arrive are answered from the index as it was:
//! Badge prefers availability for review, because nothing is lost — deletions and
//! revocations committed meanwhile are delivered as soon as the feed reconnects
//! (the index resumes from its revision, or relists). During the outage the slow
//! paths (key refresh, catch-up) are skipped, so answers stay fast. Kubernetes
//! behaves the same way while etcd is down (its informer caches keep answering).
//! Before the index has loaded once, reviews are UNAVAILABLE (webhook: 503).
//!
//! # Legacy tokens
//!
//! Compared (constant time, by SHA-256) with their Secret's `token` — so this
//! service needs identity's key-encryption key (`encryption`), as Secret data is
//! sealed at rest. Use is recorded in the `kubernetes.io/legacy-token-last-used`
//! label at most once per Secret per day, off the review path ([`last_used`]).
//!
//! # Configuration
//!
//! `badge-token-review serve --config token-review.toml` (then
//! `BADGE_<SECTION>__<KEY>` variables, then `--set section.key=value`; unknown keys
//! are errors, every invalid setting is reported at once):
//!
//! ```toml
//! [server]                        # gRPC over mTLS
//! listen = "127.0.0.1:8446"
//! tls = { ca = "badge-data/pki/ca.pem", cert = "badge-data/pki/token-review.pem", key = "badge-data/pki/token-review-key.pem" }
//!
//! [database]
//! url = "postgres://postgres@127.0.0.1:5432/badge"
//! # max_connections = 16
//!
//! [review]
//! issuers = ["https://127.0.0.1:8445"]   # the token-issuer's token.issuers (required)
//! # api_audiences = []                  # default: the issuers
//! # leeway_seconds = 60                 # nbf/exp/iat clock skew
//! # deletion_leeway_seconds = 0         # Kubernetes: 60
//! # max_token_bytes = 65536
//! # cache_entries = 100000              # verified-token cache (~0.5 KiB each); 0 disables it
//!
//! [encryption]                    # identity's key-encryption key (sealed Secret data)
//! kek_file = "badge-data/kek"     # or kek = "<base64>" (BADGE_ENCRYPTION__KEK)
//!
//! [webhook]                       # optional: Kubernetes token (and authorization) webhooks
//! listen = "127.0.0.1:8447"
//! cert = "badge-data/pki/token-review.pem"
//! key = "badge-data/pki/token-review-key.pem"
//! # client_ca = "badge-data/pki/ca.pem" # client certificates' CA; default: server.tls.ca
//! # [webhook.limits]              # max_connections = 1024, handshake_timeout_seconds = 5, … (badge_runtime::https)
//!
//! [identity]                      # optional: record legacy-token use (last-used label)
//! endpoint = "https://127.0.0.1:8443"
//! server_name = "localhost"
//! tls = { ca = "badge-data/pki/ca.pem", cert = "badge-data/pki/token-review-client.pem", key = "badge-data/pki/token-review-client-key.pem" }
//! ```
//!
//! A kube-apiserver uses the webhook with `--authentication-token-webhook-config-file`
//! pointing at a kubeconfig whose cluster `server` is `https://<webhook.listen>/authenticate`
//! (with the Badge CA as `certificate-authority`) and whose user holds a client
//! certificate from `webhook.client_ca` (`badge up` writes one:
//! `badge-data/webhook-kubeconfig.yaml`); that user needs RBAC `create` on
//! `tokenreviews` and `subjectaccessreviews` (the bootstrap policy binds
//! `system:auth-delegator` to the user `kube-apiserver`).

pub mod access;
pub mod cli;
pub mod config;
pub mod ext_authz;
pub mod grpc;
pub mod last_used;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use badge_core::{Clock, Kind};
use badge_proto::identity::secret_service_client::SecretServiceClient;
use badge_proto::review::token_review_service_server::TokenReviewServiceServer;
use badge_runtime::GrpcServer;
use badge_runtime::server::Tasks;
use badge_runtime::tls::TlsMaterial;
use badge_store::{ListQuery, Record, Store};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use badge_access::{INDEXED_KINDS, Reviewer, Via, keys, lookup, reviewer};
pub use config::ReviewConfig;
pub use grpc::{METHODS, ReviewService};

/// The sockets the service serves on (injected so tests use ephemeral ports).
pub struct Listeners {
    /// gRPC over mTLS.
    pub grpc: TcpListener,
    /// The webhook (HTTPS); required when `webhook` is configured.
    pub webhook: Option<TcpListener>,
}

async fn set_health(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for n in names {
        health.set_service_status(*n, status).await;
    }
}

/// Keeps health in step with the store (a probe every 2 s: reachable, and the
/// index not behind it for longer than `database.max_index_lag_seconds`) and the
/// index (loaded once; polled every 20 ms until then, so readiness follows within
/// moments).
async fn readiness(health: HealthReporter, names: Vec<&'static str>, reviewer: Arc<Reviewer>) {
    let mut last: Option<bool> = None;
    loop {
        let probe = reviewer.probe().await;
        let reachable = probe.store_reachable;
        let ready = reviewer.is_ready();
        let ok = probe.ok() && ready;
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(ok) {
            tracing::info!(
                ?status,
                store_reachable = reachable,
                index_loaded = ready,
                index_current = probe.index_current,
                "health changed"
            );
            last = Some(ok);
        }
        // Re-asserted every round (cheap), as the shared probe does.
        set_health(&health, &names, status).await;
        let wait = if ready {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(20)
        };
        tokio::time::sleep(wait).await;
    }
}

/// Refuses to start when Secret data cannot be opened with the configured
/// key-encryption key (reads one Secret).
async fn check_kek(store: &Store) -> anyhow::Result<()> {
    let all = |_: &Record| true;
    store
        .list(ListQuery {
            kind: Kind::Secret,
            namespace: None,
            after: None,
            limit: 1,
            filter: &all,
        })
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("encryption: reading secrets: {e}"))
}

/// Runs the token-review service until `shutdown`. Refuses to start on an unknown
/// schema or a key-encryption key that cannot open Secret data.
pub async fn serve(
    config: &ReviewConfig,
    store: Store,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = TlsMaterial::load(&config.server.tls)?;
    store.check_schema().await?;
    // Security: this service authenticates legacy Secret tokens against Secret
    // data, which identity seals at rest. Without the key every such Secret is
    // unreadable, so refuse to start rather than run half-blind (there is no
    // "no key wanted" option: identity always seals).
    if !store.seals_data() {
        anyhow::bail!(
            "encryption.kek_file: a key-encryption key is required (identity's, which seals Secret data; or encryption.kek / BADGE_ENCRYPTION__KEK): legacy Secret tokens cannot be checked without it"
        );
    }
    check_kek(&store).await?;

    let mut tasks = Tasks::default();
    let last_used_tx = match &config.identity {
        Some(peer) => {
            let channel = peer.channel("identity")?;
            let (tx, rx) = mpsc::channel(last_used::QUEUE);
            let writer = last_used::LastUsed {
                secrets: last_used::Secrets::Grpc(SecretServiceClient::new(
                    badge_runtime::telemetry::traced(channel),
                )),
                clock: clock.clone(),
            };
            tasks.push(tokio::spawn(writer.run(rx)));
            Some(tx)
        }
        None => {
            tracing::warn!("identity is not configured: legacy token use is not recorded");
            None
        }
    };

    let access = badge_access::start(
        store.clone(),
        config.review.settings(),
        clock,
        config.review.cache_entries,
        last_used_tx,
        true,
        "token-review",
    );
    let reviewer = access.reviewer.clone();
    reviewer.set_max_index_lag(config.database.max_index_lag());
    let guard = access.guard.clone();
    // Envoy ext_authz: the trust domain is checked here too (validate reported a
    // bad one already; a config built in code reaches this line unvalidated).
    let trust_domain = config
        .mesh_trust_domain()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    match (&config.webhook, listeners.webhook) {
        (Some(w), Some(listener)) => {
            use badge_runtime::https::{self, ClientCerts, Endpoint};
            // Security: never anonymous. Certificates from the client CA (default:
            // the server's) are verified in the handshake; a client without one may
            // still connect, to present a bearer token, and is refused (401) by the
            // handler otherwise ([`webhook`]).
            let client_ca = config.webhook_client_ca().unwrap_or(&config.server.tls.ca);
            let acceptor =
                https::tls_acceptor_with(&w.cert, &w.key, ClientCerts::Optional(client_ca))
                    .map_err(|e| anyhow::anyhow!("webhook.{e}"))?;
            tracing::info!(
                addr = %listener.local_addr()?,
                client_ca = %client_ca.display(),
                max_connections = w.limits.max_connections,
                "token webhook serving (https; client certificate or bearer token required)"
            );
            let (r, g) = (reviewer.clone(), guard.clone());
            let handler = move |req| webhook::handle(r.clone(), g.clone(), req);
            tasks.push(tokio::spawn(https::serve(
                listener,
                acceptor,
                Endpoint::webhook(w.limits),
                handler,
                stopped(),
            )));
        }
        (Some(_), None) => anyhow::bail!("webhook is configured but no listener was given"),
        (None, _) => {}
    }

    let server = GrpcServer::new()
        .named("token-review")
        .with_limits(config.server.limits)
        .with_descriptors(ext_authz::FILE_DESCRIPTOR_SET)
        .add_service(
            TokenReviewServiceServer::new(ReviewService {
                reviewer: reviewer.clone(),
            }),
            METHODS,
        )
        .add_service(
            badge_proto::review::access_review_service_server::AccessReviewServiceServer::new(
                access::AccessService {
                    guard: guard.clone(),
                },
            ),
            access::METHODS,
        )
        .add_service(
            ext_authz::AuthorizationServer::new(ext_authz::ExtAuthz::new(
                reviewer.clone(),
                guard.clone(),
                trust_domain,
                config.mesh.audit_allowed_every,
            )),
            ext_authz::METHODS,
        );
    // NOT_SERVING until the index has loaded and the store answers (tonic's health
    // reporter starts out SERVING).
    server.register_not_serving().await;
    let health = server.health();
    let names = server.service_names().to_vec();
    tasks.push(tokio::spawn(readiness(health, names, reviewer.clone())));
    let _tasks = (tasks, access);
    tracing::info!(addr = %listeners.grpc.local_addr()?, "token-review serving (mTLS gRPC)");
    let stop = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    server.serve(listeners.grpc, &tls, guard, stop).await?;
    tracing::info!("token-review stopped");
    Ok(())
}
