//! One review: the core algorithm over the index and the current key snapshot,
//! plus the two slow paths that keep it correct without a database round trip on
//! the hot path:
//!
//! - **unknown kid**: the key set is refreshed from the store once (single-flight:
//!   concurrent reviews share one refresh), then the review runs again;
//! - **a liveness check failed** (an object missing, recreated or deleted): the
//!   index may simply not have applied a change yet (a pod created a millisecond
//!   ago in another process). The reviewer waits until the index has applied
//!   everything the store had committed (one `current_revision` query, shared by
//!   concurrent reviews, bounded by a timeout) and runs the review again if the
//!   index moved. Kubernetes does the same with a live GET when its informer cache
//!   misses. Successful reviews never wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use badge_core::review::{ReviewReport, ReviewSettings, review_with_report};
use badge_core::{Clock, Error, Kind, Result};
use badge_records::Index;
use badge_records::index::LagWatch;
use badge_store::{ListQuery, Record, Store};
use tokio::sync::{Mutex, mpsc};

use crate::keys::{CachingVerifier, KeyStore};
use crate::lookup::IndexLookup;

/// How long a failed review waits for the index to catch up with the store.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an unknown-kid refresh may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one re-read of the signing keys per interval. Security: a token with
/// the real `iss` and a random `kid` can be sent by anyone (bearer tokens need no
/// client certificate), so without this bound each one would cost a SELECT of
/// every key. New keys reach the index through the change feed, and a key is
/// published for the propagation delay before it signs, so the re-read is only a
/// fallback for a feed that lags; once a second is plenty. No per-kid memory is
/// needed (an attacker's random kids would only fill it).
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Catch-ups (one `current_revision` query for every review that failed on the
/// index) start at most this often; reviews in between wait for the next one and
/// share it. Failing reviews are the only ones that pay the wait.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_millis(100);

/// Default of how long the index may stay behind the store's latest revision
/// before health turns NOT_SERVING (`database.max_index_lag_seconds`).
pub const DEFAULT_MAX_INDEX_LAG: Duration = Duration::from_secs(5);

/// What one health probe found (see [`Reviewer::probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The store answered.
    pub store_reachable: bool,
    /// The index has not been behind the store for longer than the bound.
    pub index_current: bool,
}

impl Probe {
    /// Both: the service may report SERVING (given its own readiness).
    pub fn ok(self) -> bool {
        self.store_reachable && self.index_current
    }
}

/// A legacy Secret (namespace, name) whose use to record, with the trace context
/// of the review that used it.
pub type LastUse = (String, String, badge_runtime::telemetry::TraceContext);

/// Where a review came from (for the audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Grpc,
    Webhook,
    /// An `authorization: Bearer` caller of any Badge RPC.
    Bearer,
    /// A request a gateway asks about through Envoy's ext_authz Check
    /// (token-review), which audits its own decisions.
    ExtAuthz,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Grpc => "grpc",
            Via::Webhook => "webhook",
            Via::Bearer => "bearer",
            Via::ExtAuthz => "ext_authz",
        }
    }
}

/// What one pass of the core algorithm learned besides its report.
struct Pass {
    report: ReviewReport,
    unknown_kid: bool,
    consulted: bool,
    /// A Revocation record in the index revoked the token.
    revoked: bool,
}

/// Shared by the gRPC service and the webhook.
pub struct Reviewer {
    pub settings: ReviewSettings,
    pub index: Index,
    pub store: Store,
    pub keys: KeyStore,
    pub clock: Arc<dyn Clock>,
    /// Set once the index is loaded and the keys are built.
    pub ready: AtomicBool,
    /// Whether the store answered the last health probe. While it does not,
    /// reviews are answered from the index alone (no catch-up or refresh).
    pub store_ok: AtomicBool,
    /// Legacy Secrets whose last-used label needs today's date (see `last_used`).
    pub last_used: Option<mpsc::Sender<LastUse>>,
    /// When the last unknown-kid refresh started.
    key_refresh: Mutex<Option<Instant>>,
    /// Unknown-kid re-reads of the signing keys so far (each one a store query).
    key_refreshes: std::sync::atomic::AtomicU64,
    /// When the last index catch-up started.
    catch_up: Mutex<Option<Instant>>,
    /// Whether the index keeps up with the store (fed by [`Reviewer::probe`]).
    lag: std::sync::Mutex<LagWatch>,
    /// The last probe's verdict (to log changes only).
    index_current: AtomicBool,
}

impl Reviewer {
    pub fn new(
        settings: ReviewSettings,
        index: Index,
        store: Store,
        clock: Arc<dyn Clock>,
        cache_entries: usize,
        last_used: Option<mpsc::Sender<LastUse>>,
    ) -> Self {
        Reviewer {
            settings,
            index,
            store,
            keys: KeyStore::new(cache_entries),
            clock,
            ready: AtomicBool::new(false),
            store_ok: AtomicBool::new(true),
            last_used,
            key_refresh: Mutex::new(None),
            key_refreshes: std::sync::atomic::AtomicU64::new(0),
            catch_up: Mutex::new(None),
            lag: std::sync::Mutex::new(LagWatch::new(DEFAULT_MAX_INDEX_LAG)),
            index_current: AtomicBool::new(true),
        }
    }

    /// How long the index may stay behind the store before [`Reviewer::probe`]
    /// reports it (default [`DEFAULT_MAX_INDEX_LAG`]).
    pub fn set_max_index_lag(&self, bound: Duration) {
        if let Ok(mut w) = self.lag.lock() {
            *w = LagWatch::new(bound);
        }
    }

    /// One health probe: reads the store's revision counter (one round trip; it
    /// doubles as the reachability ping and, unlike the LISTEN-fed revision, also
    /// sees commits a dead LISTEN connection missed) and checks that the index has
    /// not been behind it for longer than the bound. Security: an index that
    /// stopped following the feed keeps answering from old state — deletions and
    /// revocations would silently stop taking effect — so it must not look
    /// healthy. Also records reachability for the slow paths (`store_ok`).
    pub async fn probe(&self) -> Probe {
        let polled = self.store.current_revision().await;
        let store_reachable = polled.is_ok();
        self.store_ok.store(store_reachable, Ordering::Relaxed);
        let (latest, applied) = self.index.progress(polled.unwrap_or(0));
        let (index_current, bound) = match self.lag.lock() {
            Ok(mut w) => (w.observe(latest, applied, Instant::now()), w.bound()),
            Err(_) => (false, DEFAULT_MAX_INDEX_LAG),
        };
        // Logged when it changes, not on every probe.
        if self.index_current.swap(index_current, Ordering::Relaxed) != index_current {
            if index_current {
                tracing::info!(
                    store_revision = latest,
                    index_revision = applied,
                    "the index caught up with the store"
                );
            } else {
                tracing::warn!(
                    store_revision = latest,
                    index_revision = applied,
                    bound = ?bound,
                    "the index is behind the store's change feed for longer than the bound"
                );
            }
        }
        Probe {
            store_reachable,
            index_current,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How many times an unknown `kid` made the reviewer re-read the signing keys
    /// from the store (bounded by [`KEY_REFRESH_INTERVAL`]).
    pub fn key_refreshes(&self) -> u64 {
        self.key_refreshes.load(Ordering::Relaxed)
    }

    fn pass(&self, token: &str, audiences: &[String]) -> Pass {
        let keys = self.keys.snapshot();
        let verifier = CachingVerifier::new(&keys);
        let now = self.clock.now();
        let lookup = IndexLookup::new(&self.index, now);
        let report = review_with_report(token, audiences, &self.settings, &verifier, &lookup, now);
        Pass {
            report,
            unknown_kid: verifier.saw_unknown_kid(),
            consulted: lookup.consulted(),
            revoked: lookup.revoked_seen(),
        }
    }

    /// Reviews `token` for `audiences` (empty: the API audiences). `Err` only while
    /// the index is still loading (UNAVAILABLE); a token that fails is `Ok` with
    /// the error in the report. `requester` is the caller, for the audit event.
    pub async fn review(
        &self,
        token: &str,
        audiences: &[String],
        via: Via,
        requester: &str,
    ) -> Result<ReviewReport> {
        if !self.is_ready() {
            return Err(Error::Unavailable(
                "token review is starting: the index is still loading from the store".into(),
            ));
        }
        let began = Instant::now();
        let revision = self.index.revision();
        let mut pass = self.pass(token, audiences);
        // The two slow paths are boxed: their store queries are large futures, and
        // unboxed they would make every review's future that large (copied into its
        // box on every call).
        if pass.report.outcome.is_err() && pass.unknown_kid {
            Box::pin(self.refresh_keys(began)).await;
            pass = self.pass(token, audiences);
        }
        // A failure the index may simply not have caught up with is checked again
        // after a catch-up; a revocation is not (it is never undone before the
        // token expires, so waiting cannot change the answer).
        let retry = pass.report.outcome.is_err() && pass.consulted && !pass.revoked;
        if retry && Box::pin(self.catch_up(began, revision)).await {
            pass = self.pass(token, audiences);
        }
        let report = pass.report;
        badge_runtime::telemetry::metrics::token_reviews().add(
            1,
            &[
                opentelemetry::KeyValue::new("via", via.as_str()),
                opentelemetry::KeyValue::new(
                    "result",
                    if report.outcome.is_ok() {
                        "authenticated"
                    } else {
                        "rejected"
                    },
                ),
            ],
        );
        self.record_use(&report);
        // ext_authz audits its decisions itself (each denial, allowed checks
        // sampled): an audit line per review there would be one per request through
        // the mesh.
        if via != Via::ExtAuthz {
            audit(&report, via, requester);
        }
        Ok(report)
    }

    /// Queues the legacy Secret for its last-used label; never blocks or fails.
    fn record_use(&self, report: &ReviewReport) {
        let (Some(tx), Some(secret)) = (&self.last_used, &report.legacy_secret) else {
            return;
        };
        // The review's trace context goes along, so the write joins its trace.
        let item = (
            secret.0.clone(),
            secret.1.clone(),
            badge_runtime::telemetry::current_context(),
        );
        if let Err(e) = tx.try_send(item) {
            tracing::debug!(namespace = %secret.0, secret = %secret.1, error = %e, "last-used queue full: dropped");
        }
    }

    /// Re-reads the signing keys from the store, unless a refresh that started
    /// after `began` already did. Concurrent callers wait for one refresh.
    async fn refresh_keys(&self, began: Instant) {
        if !self.store_ok.load(Ordering::Relaxed) {
            return;
        }
        let mut last = self.key_refresh.lock().await;
        if last.is_some_and(|t| t >= began || t.elapsed() < KEY_REFRESH_INTERVAL) {
            return;
        }
        let started = Instant::now();
        self.key_refreshes.fetch_add(1, Ordering::Relaxed);
        let all = |_: &Record| true;
        let listed = tokio::time::timeout(
            REFRESH_TIMEOUT,
            self.store.list(ListQuery {
                kind: Kind::SigningKey,
                namespace: None,
                after: None,
                limit: 0,
                filter: &all,
            }),
        )
        .await;
        match listed {
            Ok(Ok(page)) => {
                self.keys.install(&page.items, page.revision);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "refreshing verification keys"),
            Err(_) => tracing::warn!("refreshing verification keys: timed out"),
        }
        *last = Some(started);
    }

    /// Waits until the index has applied every change the store had committed when
    /// the catch-up started (unless one that started after `began` already ran).
    /// Returns whether the index moved past `revision`.
    async fn catch_up(&self, began: Instant, revision: i64) -> bool {
        if !self.store_ok.load(Ordering::Relaxed) {
            return false;
        }
        {
            let mut last = self.catch_up.lock().await;
            if !last.is_some_and(|t| t >= began) {
                // Rate limit (see CATCH_UP_INTERVAL): wait out the interval while
                // holding the lock, so the waiters behind us share our query.
                if let Some(t) = *last {
                    tokio::time::sleep_until((t + CATCH_UP_INTERVAL).into()).await;
                }
                let started = Instant::now();
                let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
                if let Ok(Ok(target)) =
                    tokio::time::timeout_at(deadline, self.store.current_revision()).await
                {
                    let mut rx = self.index.subscribe();
                    let _ = tokio::time::timeout_at(deadline, rx.wait_for(|r| *r >= target)).await;
                }
                *last = Some(started);
            }
        }
        self.index.revision() > revision
    }
}

/// One audit event per review: who asked, through which door, the result, the
/// user and credential id, and Kubernetes' error text — never the token.
fn audit(report: &ReviewReport, via: Via, requester: &str) {
    match &report.outcome {
        Ok(a) => tracing::info!(
            target: "audit",
            event = "token.reviewed",
            via = via.as_str(),
            requester,
            authenticated = true,
            username = %a.user.username,
            credential_id = %a.credential_id,
            audiences = ?a.audiences,
            stale = a.stale,
            legacy = a.legacy,
            annotations = ?report.audit_annotations,
            "token review"
        ),
        Err(e) => tracing::info!(
            target: "audit",
            event = "token.reviewed",
            via = via.as_str(),
            requester,
            authenticated = false,
            error = %e,
            annotations = ?report.audit_annotations,
            "token review"
        ),
    }
}
