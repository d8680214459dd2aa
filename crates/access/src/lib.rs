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
pub use reviewer::{Reviewer, Via};

/// The kinds a review (and an RBAC decision) reads.
pub const INDEXED_KINDS: [Kind; 10] = [
    Kind::ServiceAccount,
    Kind::Pod,
    Kind::Secret,
    Kind::Node,
    Kind::SigningKey,
    Kind::Revocation,
    Kind::Role,
    Kind::ClusterRole,
    Kind::RoleBinding,
    Kind::ClusterRoleBinding,
];

/// How often the key follower re-reads every SigningKey record of the index (it
/// checks the keys it knows on every feed batch; new keys are also found by the
/// unknown-kid refresh).
const KEY_SCAN_INTERVAL: Duration = Duration::from_secs(5);

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
    last_used: Option<mpsc::Sender<(String, String)>>,
    bearer: bool,
) -> Access {
    let index = Index::start(store.clone(), &INDEXED_KINDS);
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
        let changed = current.versions.iter().any(|(kid, rv)| {
            index
                .get(Kind::SigningKey, "", kid)
                .map(|r| r.resource_version)
                != Some(*rv)
        });
        if scan || changed {
            reviewer
                .keys
                .install(&index.list(Kind::SigningKey), revision);
            last_scan = tokio::time::Instant::now();
        }
    }
}
