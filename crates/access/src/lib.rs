//! Access decisions every Badge service makes the same way, from one in-memory
//! index that follows the change feed (no database round trip per decision):
//!
//! - [`reviewer`]: Kubernetes' TokenReview over the index ([`keys`] holds the
//!   verification keys, [`lookup`] the liveness checks). token-review serves it;
//!   every service uses it to authenticate `authorization: Bearer` callers.
//! - [`policy`]: the RBAC roles and bindings, decoded once per change.
//! - [`guard`]: the runtime auth layer's [`badge_runtime::Authorizer`] built from
//!   the two.
//!
//! [`start`] spawns the index (and the key follower) a service needs.

pub mod guard;
pub mod keys;
pub mod last_used;
pub mod lookup;
pub mod policy;
pub mod reviewer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use badge_core::review::ReviewSettings;
use badge_core::{Clock, Kind};
use badge_records::Index;
use badge_store::Store;
use tokio::sync::mpsc;

pub use guard::{Guard, user_info};
pub use policy::{RBAC_KINDS, RbacPolicy};
pub use reviewer::{Probe, Reviewer, Via};

/// The kinds a review (and an RBAC decision) reads, and Namespace: identity
/// answers Get and List of every kind it serves from this index. Namespaces are
/// few, so the other services pay next to nothing for holding them.
pub const INDEXED_KINDS: [Kind; 12] = [
    Kind::Namespace,
    Kind::ServiceAccount,
    Kind::Pod,
    Kind::Secret,
    Kind::Node,
    Kind::SigningKey,
    Kind::Revocation,
    // The token-issuer's CA records: its replicas follow rotations (trust bundle).
    Kind::CertificateAuthority,
    Kind::Role,
    Kind::ClusterRole,
    Kind::RoleBinding,
    Kind::ClusterRoleBinding,
];

/// How often the key follower re-reads every SigningKey record of the index (it
/// checks the keys it knows on every feed batch; new keys are also found by the
/// unknown-kid refresh).
const KEY_SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Size of the verified-token cache of a service that reviews only its callers'
/// bearer tokens (identity, the token-issuer); token-review sizes its own from
/// `review.cache_entries`.
pub const BEARER_CACHE_ENTRIES: usize = 10_000;

/// What a service needs to review tokens and authorize calls.
pub struct Access {
    pub reviewer: Arc<Reviewer>,
    pub guard: Arc<Guard>,
    /// The key follower; dropped (aborted) with the service.
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Access {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the index over [`INDEXED_KINDS`] and the key follower. `bearer`: whether
/// the guard accepts bearer tokens (a service without configured issuers cannot
/// review them).
pub fn start(
    store: Store,
    settings: ReviewSettings,
    clock: Arc<dyn Clock>,
    cache_entries: usize,
    last_used: Option<mpsc::Sender<reviewer::LastUse>>,
    bearer: bool,
    service: &'static str,
) -> Access {
    let index = Index::start(store.clone(), &INDEXED_KINDS);
    observe(service, &index);
    let reviewer = Arc::new(Reviewer::new(
        settings,
        index.clone(),
        store,
        clock,
        cache_entries,
        last_used,
    ));
    let task = tokio::spawn(follow_keys(reviewer.clone()));
    let guard = Arc::new(Guard::new(
        RbacPolicy::new(index),
        bearer.then(|| reviewer.clone()),
    ));
    Access {
        reviewer,
        guard,
        task,
    }
}

/// The indexes the `badge.index.*` gauges report, by service.
static OBSERVED: std::sync::Mutex<Vec<(&'static str, badge_records::index::WeakIndex)>> =
    std::sync::Mutex::new(Vec::new());

/// Registers `index` with the gauges `badge.index.objects` (objects held) and
/// `badge.index.feed_lag` (feed revisions announced but not applied yet) and the
/// counter `badge.index.unreadable` (objects and feed entries left out because
/// their data could not be opened — another key-encryption key, tampering), all
/// by `badge.service`. The instruments are created once per process; dropped
/// indexes fall out of them.
fn observe(service: &'static str, index: &Index) {
    static GAUGES: std::sync::OnceLock<(
        opentelemetry::metrics::ObservableGauge<u64>,
        opentelemetry::metrics::ObservableGauge<u64>,
        opentelemetry::metrics::ObservableCounter<u64>,
    )> = std::sync::OnceLock::new();
    if let Ok(mut o) = OBSERVED.lock() {
        o.retain(|(_, w)| w.upgrade().is_some());
        o.push((service, index.downgrade()));
    }
    fn each(f: impl Fn(&'static str, &Index)) {
        if let Ok(o) = OBSERVED.lock() {
            for (service, weak) in o.iter() {
                if let Some(index) = weak.upgrade() {
                    f(service, &index);
                }
            }
        }
    }
    GAUGES.get_or_init(|| {
        let meter = badge_runtime::telemetry::metrics::meter();
        let objects = meter
            .u64_observable_gauge("badge.index.objects")
            .with_description("objects held by the in-memory index")
            .with_callback(|o| {
                each(|service, index| {
                    o.observe(
                        index.len() as u64,
                        &[opentelemetry::KeyValue::new("badge.service", service)],
                    );
                });
            })
            .build();
        let lag = meter
            .u64_observable_gauge("badge.index.feed_lag")
            .with_description("change-feed revisions announced but not yet applied by the index")
            .with_callback(|o| {
                each(|service, index| {
                    o.observe(
                        u64::try_from(index.feed_lag()).unwrap_or(0),
                        &[opentelemetry::KeyValue::new("badge.service", service)],
                    );
                });
            })
            .build();
        let unreadable = meter
            .u64_observable_counter("badge.index.unreadable")
            .with_description(
                "objects and change-feed entries left out of the index because their data could not be opened",
            )
            .with_callback(|o| {
                each(|service, index| {
                    o.observe(
                        index.unreadable(),
                        &[opentelemetry::KeyValue::new("badge.service", service)],
                    );
                });
            })
            .build();
        (objects, lag, unreadable)
    });
}

/// Waits for the index, installs the keys, marks the reviewer ready, then keeps
/// the keys in step with the SigningKey records.
async fn follow_keys(reviewer: Arc<Reviewer>) {
    let index = reviewer.index.clone();
    index.ready().await;
    reviewer
        .keys
        .install(&index.list(Kind::SigningKey), index.revision());
    reviewer.ready.store(true, Ordering::Release);
    tracing::info!(
        objects = index.len(),
        keys = reviewer.keys.snapshot().set.len(),
        revision = index.revision(),
        "access index loaded"
    );
    let mut rx = index.subscribe();
    let mut last_scan = tokio::time::Instant::now();
    // Bumped by every SigningKey change the index applies, additions included:
    // a key rotated in is installed from the feed at once, not left to the
    // unknown-kid re-read (rate-limited, see KEY_REFRESH_INTERVAL) or the scan.
    let mut key_generation = index.generation(&[Kind::SigningKey]);
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(last_scan + KEY_SCAN_INTERVAL) => {}
        }
        let current = reviewer.keys.snapshot();
        let revision = index.revision();
        if revision < current.revision {
            // Keys were just read from the store, ahead of the index.
            continue;
        }
        let scan = last_scan.elapsed() >= KEY_SCAN_INTERVAL;
        let generation = index.generation(&[Kind::SigningKey]);
        let changed = generation != key_generation
            || current.versions.iter().any(|(kid, rv)| {
                index
                    .get(Kind::SigningKey, "", kid)
                    .map(|r| r.resource_version)
                    != Some(*rv)
            });
        if scan || changed {
            key_generation = generation;
            reviewer
                .keys
                .install(&index.list(Kind::SigningKey), revision);
            last_scan = tokio::time::Instant::now();
        }
    }
}
