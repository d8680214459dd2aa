//! Pod churn (issue #17's fleet scenario): pods are created and deleted as fast
//! as `--workers` loops can, each pod's bound token is issued and reviewed while
//! it lives, and `--reviewers` more requests in flight review the live pods'
//! tokens at the same time — a fleet rolling while its workloads keep
//! authenticating.
//!
//! One worker loop, per pod:
//! 1. identity `CreatePod` (admission fills in the service account);
//! 2. token-issuer `CreateToken` bound to that pod (name and uid);
//! 3. token-review `CreateTokenReview` of the new token: it must authenticate;
//! 4. the token joins the pool the reviewers draw from, for `--pod-lifetime`;
//! 5. identity `DeletePod` with the uid precondition;
//! 6. token-review again until the token is refused. The revocation lag is the
//!    time from the delete's answer to the sending of the first review that was
//!    refused: every review sent before it still authenticated, so it is how long
//!    the token kept working. (The refusal's own answer can take longer: a review
//!    that fails on token-review's index first catches up with the store, at most
//!    once per 100 ms, so a just-created pod is never refused by mistake; those
//!    latencies are reported as "review gone".) Still accepted after
//!    `--revocation-deadline` is an error.
//!
//! A reviewer's refusal counts as an error only when the pod's delete had not
//! been sent by the time the answer arrived (the flag is set before the delete
//! goes out), so a review racing a delete is not blamed on the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use badge_proto::identity::pod_service_client::PodServiceClient;
use badge_proto::identity::{CreatePodRequest, DeletePodRequest, Pod, PodSpec};
use badge_proto::meta::ObjectMeta;
use badge_proto::review::token_review_service_client::TokenReviewServiceClient;
use badge_proto::review::{CreateTokenReviewRequest, TokenReviewSpec};
use badge_proto::token::token_service_client::TokenServiceClient;
use badge_proto::token::{BoundObjectReference, CreateTokenRequest};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::report::new_histogram;
use crate::target;

/// The most loops of either kind one run may start.
pub const MAX_LOOPS: usize = 4096;
/// The longest measured window.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Every request's own deadline: a hung server ends the run, not the machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a deleted pod's token is reviewed until it is refused.
const REVOCATION_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct PodChurnConfig {
    /// `https://host:port` of identity, token-issuer and token-review (loopback).
    pub identity: String,
    pub issuer: String,
    pub review: String,
    pub server_name: String,
    pub tls: TlsFiles,
    /// An existing namespace.
    pub namespace: String,
    /// The pods' service account (it must exist).
    pub service_account: String,
    /// Pod loops running at once.
    pub workers: usize,
    /// Reviews of live pods' tokens in flight besides the loops.
    pub reviewers: usize,
    pub duration: Duration,
    /// How long a pod lives once its token is reviewed.
    pub pod_lifetime: Duration,
    /// A deleted pod's token still accepted after this is an error.
    pub revocation_deadline: Duration,
    pub name_prefix: String,
}

impl PodChurnConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.workers == 0 || self.workers > MAX_LOOPS {
            bail!("--workers must be 1..={MAX_LOOPS}");
        }
        if self.reviewers > MAX_LOOPS {
            bail!("--reviewers must be 0..={MAX_LOOPS}");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!(
                "--duration must be more than 0 and at most {}s",
                MAX_DURATION.as_secs()
            );
        }
        if self.pod_lifetime > Duration::from_secs(60) {
            bail!("--pod-lifetime must be at most 60s");
        }
        if self.revocation_deadline.is_zero() || self.revocation_deadline > Duration::from_secs(60)
        {
            bail!("--revocation-deadline must be more than 0 and at most 60s");
        }
        Ok(())
    }
}

/// One operation's count, latency and errors.
#[derive(Debug)]
pub struct OpStats {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Histogram<u64>,
}

impl OpStats {
    fn new() -> anyhow::Result<OpStats> {
        Ok(OpStats {
            ok: 0,
            errors: 0,
            first_error: None,
            latency_us: new_histogram()?,
        })
    }

    fn ok(&mut self, took: Duration) {
        self.ok += 1;
        // A value past the histogram's bound is dropped, not fatal.
        let _ = self.latency_us.record(micros(took));
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: &OpStats) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.latency_us.add(&other.latency_us)?;
        Ok(())
    }

    fn json(&self, window: Duration) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok,
            "rate": rate(self.ok, window),
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_us": self.latency_us.value_at_quantile(0.5),
            "p99_us": self.latency_us.value_at_quantile(0.99),
        })
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

fn rate(n: u64, window: Duration) -> f64 {
    n as f64 / window.as_secs_f64().max(1e-9)
}

/// What one loop (or, merged, the run) measured.
#[derive(Debug)]
pub struct PodChurnReport {
    pub create_pod: OpStats,
    pub create_token: OpStats,
    /// The loops' first review of each new token (must authenticate).
    pub review_new: OpStats,
    pub delete_pod: OpStats,
    /// The loops' reviews of a deleted pod's token, until refused.
    pub review_gone: OpStats,
    /// The reviewers' reviews of live pods' tokens.
    pub review_live: OpStats,
    /// Reviewer refusals that raced their pod's delete (not errors).
    pub raced_deletes: u64,
    /// Delete answered → the first review that was refused was sent.
    pub revocation_us: Histogram<u64>,
    /// Tokens still accepted `revocation_deadline` after their pod's delete.
    pub revocations_late: u64,
    /// Pods that went through every step.
    pub pods_completed: u64,
    pub window: Duration,
}

impl PodChurnReport {
    fn new() -> anyhow::Result<PodChurnReport> {
        Ok(PodChurnReport {
            create_pod: OpStats::new()?,
            create_token: OpStats::new()?,
            review_new: OpStats::new()?,
            delete_pod: OpStats::new()?,
            review_gone: OpStats::new()?,
            review_live: OpStats::new()?,
            raced_deletes: 0,
            revocation_us: new_histogram()?,
            revocations_late: 0,
            pods_completed: 0,
            window: Duration::ZERO,
        })
    }

    fn merge(&mut self, other: &PodChurnReport) -> anyhow::Result<()> {
        self.create_pod.merge(&other.create_pod)?;
        self.create_token.merge(&other.create_token)?;
        self.review_new.merge(&other.review_new)?;
        self.delete_pod.merge(&other.delete_pod)?;
        self.review_gone.merge(&other.review_gone)?;
        self.review_live.merge(&other.review_live)?;
        self.raced_deletes += other.raced_deletes;
        self.revocation_us.add(&other.revocation_us)?;
        self.revocations_late += other.revocations_late;
        self.pods_completed += other.pods_completed;
        Ok(())
    }

    /// Every error of the run: failed requests, refused live tokens, late revocations.
    pub fn errors(&self) -> u64 {
        self.create_pod.errors
            + self.create_token.errors
            + self.review_new.errors
            + self.delete_pod.errors
            + self.review_gone.errors
            + self.review_live.errors
            + self.revocations_late
    }

    /// Identity writes per second (creates and deletes of pods).
    pub fn writes_per_second(&self) -> f64 {
        rate(self.create_pod.ok + self.delete_pod.ok, self.window)
    }

    pub fn to_json(&self) -> String {
        let w = self.window;
        serde_json::json!({
            "window_s": w.as_secs_f64(),
            "pods_completed": self.pods_completed,
            "pods_per_s": rate(self.pods_completed, w),
            "writes_per_s": self.writes_per_second(),
            "create_pod": self.create_pod.json(w),
            "create_token": self.create_token.json(w),
            "review_new": self.review_new.json(w),
            "delete_pod": self.delete_pod.json(w),
            "review_gone": self.review_gone.json(w),
            "review_live": self.review_live.json(w),
            "raced_deletes": self.raced_deletes,
            "revocation_p50_us": self.revocation_us.value_at_quantile(0.5),
            "revocation_p99_us": self.revocation_us.value_at_quantile(0.99),
            "revocation_max_us": self.revocation_us.max(),
            "revocations_late": self.revocations_late,
            "errors": self.errors(),
        })
        .to_string()
    }
}

impl std::fmt::Display for PodChurnReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.window;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "pods         {} created and deleted in {:.2}s ({:.0} pods/s, {:.0} identity writes/s)",
            self.pods_completed,
            w.as_secs_f64(),
            rate(self.pods_completed, w),
            self.writes_per_second()
        )?;
        for (name, s) in [
            ("create pod  ", &self.create_pod),
            ("create token", &self.create_token),
            ("review new  ", &self.review_new),
            ("delete pod  ", &self.delete_pod),
            ("review gone ", &self.review_gone),
            ("review live ", &self.review_live),
        ] {
            writeln!(
                f,
                "{name} {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  errors {}{}",
                rate(s.ok, w),
                ms(s.latency_us.value_at_quantile(0.5)),
                ms(s.latency_us.value_at_quantile(0.99)),
                s.errors,
                s.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            )?;
        }
        writeln!(
            f,
            "raced        {} reviews answered after their pod's delete was sent (not errors)",
            self.raced_deletes
        )?;
        write!(
            f,
            "revocation   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  late {} (delete answered → first refused review sent)",
            ms(self.revocation_us.value_at_quantile(0.5)),
            ms(self.revocation_us.value_at_quantile(0.99)),
            ms(self.revocation_us.max()),
            self.revocations_late
        )
    }
}

/// A live pod's token in the reviewers' pool.
struct Live {
    token: String,
    /// Set before the pod's delete is sent.
    deleting: Arc<AtomicBool>,
}

/// The tokens of live pods, one slot per worker (a worker owns its slot, the
/// reviewers walk the slots round robin).
struct Pool {
    slots: Vec<std::sync::Mutex<Option<Arc<Live>>>>,
    next: AtomicU64,
}

impl Pool {
    fn set(&self, slot: usize, live: Option<Arc<Live>>) {
        // A poisoned slot only means another task panicked mid-store.
        *self.slots[slot]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
    }

    /// The next live token, if any worker has one.
    fn pick(&self) -> Option<Arc<Live>> {
        let n = self.slots.len() as u64;
        for _ in 0..n {
            // Relaxed: any spread over the slots will do.
            let i = (self.next.fetch_add(1, Ordering::Relaxed) % n) as usize;
            let slot = self.slots[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(live) = slot.as_ref() {
                return Some(live.clone());
            }
        }
        None
    }
}

struct Clients {
    pods: PodServiceClient<Channel>,
    tokens: TokenServiceClient<Channel>,
    reviews: TokenReviewServiceClient<Channel>,
}

/// Reviews `token`; `Ok(true)` when it authenticated. The answer's reason, never
/// the token, goes into errors.
async fn review(
    reviews: &mut TokenReviewServiceClient<Channel>,
    token: &str,
) -> Result<(bool, String), String> {
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        reviews.create_token_review(CreateTokenReviewRequest {
            spec: Some(TokenReviewSpec {
                token: token.to_string(),
                audiences: vec![],
            }),
        }),
    )
    .await
    .map_err(|_| "TokenReview: no answer within 10s".to_string())?
    .map_err(|s| format!("TokenReview: {:?}: {}", s.code(), s.message()))?;
    let status = answer.into_inner().status.unwrap_or_default();
    Ok((status.authenticated, status.error))
}

async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{what}: {:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("{what}: no answer within 10s")),
    }
}

/// One worker: pods one after another until `end`.
async fn worker(
    config: Arc<PodChurnConfig>,
    mut c: Clients,
    pool: Arc<Pool>,
    slot: usize,
    next_name: Arc<AtomicU64>,
    end: Instant,
) -> anyhow::Result<PodChurnReport> {
    let mut r = PodChurnReport::new()?;
    while Instant::now() < end {
        let name = format!(
            "{}{}",
            config.name_prefix,
            next_name.fetch_add(1, Ordering::Relaxed)
        );
        let t = Instant::now();
        let pod = match timed(
            "CreatePod",
            c.pods.create_pod(CreatePodRequest {
                pod: Some(Pod {
                    metadata: Some(ObjectMeta {
                        name: name.clone(),
                        namespace: config.namespace.clone(),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: config.service_account.clone(),
                        ..Default::default()
                    }),
                }),
            }),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                r.create_pod.error(e);
                continue;
            }
        };
        r.create_pod.ok(t.elapsed());
        let uid = pod.metadata.unwrap_or_default().uid;

        let t = Instant::now();
        let token = timed(
            "CreateToken",
            c.tokens.create_token(CreateTokenRequest {
                namespace: config.namespace.clone(),
                name: config.service_account.clone(),
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: Some(BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: name.clone(),
                    uid: uid.clone(),
                }),
                service_account_uid: String::new(),
            }),
        )
        .await;
        let token = match token {
            Ok(t) => Some(t.token),
            Err(e) => {
                r.create_token.error(e);
                None
            }
        };
        if token.is_some() {
            r.create_token.ok(t.elapsed());
        }

        let deleting = Arc::new(AtomicBool::new(false));
        if let Some(token) = &token {
            let t = Instant::now();
            match review(&mut c.reviews, token).await {
                Ok((true, _)) => {
                    r.review_new.ok(t.elapsed());
                    pool.set(
                        slot,
                        Some(Arc::new(Live {
                            token: token.clone(),
                            deleting: deleting.clone(),
                        })),
                    );
                    tokio::time::sleep(config.pod_lifetime).await;
                }
                Ok((false, why)) => r
                    .review_new
                    .error(format!("a new pod's token was refused: {why}")),
                Err(e) => r.review_new.error(e),
            }
        }

        // Out of the pool and flagged before the delete goes out: a reviewer's
        // refusal after this is a race, not a server error.
        pool.set(slot, None);
        deleting.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let deleted = timed(
            "DeletePod",
            c.pods.delete_pod(DeletePodRequest {
                namespace: config.namespace.clone(),
                name,
                resource_version: String::new(),
                uid,
                grace_period_seconds: None,
            }),
        )
        .await;
        if let Err(e) = deleted {
            r.delete_pod.error(e);
            continue;
        }
        r.delete_pod.ok(t.elapsed());
        let acked = Instant::now();
        let Some(token) = token else { continue };
        loop {
            let sent = Instant::now();
            let answer = review(&mut c.reviews, &token).await;
            if answer.is_ok() {
                r.review_gone.ok(sent.elapsed());
            }
            match answer {
                Ok((false, _)) => {
                    let _ = r.revocation_us.record(micros(sent - acked));
                    r.pods_completed += 1;
                    break;
                }
                Ok((true, _)) if acked.elapsed() > config.revocation_deadline => {
                    r.revocations_late += 1;
                    break;
                }
                Ok((true, _)) => tokio::time::sleep(REVOCATION_POLL).await,
                Err(e) => {
                    r.review_gone.error(e);
                    break;
                }
            }
        }
    }
    Ok(r)
}

/// One reviewer: live pods' tokens until `end`.
async fn reviewer(
    mut reviews: TokenReviewServiceClient<Channel>,
    pool: Arc<Pool>,
    end: Instant,
) -> anyhow::Result<PodChurnReport> {
    let mut r = PodChurnReport::new()?;
    while Instant::now() < end {
        let Some(live) = pool.pick() else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let t = Instant::now();
        match review(&mut reviews, &live.token).await {
            Ok((true, _)) => r.review_live.ok(t.elapsed()),
            // The delete was sent before the answer came: a race, not an error.
            Ok((false, _)) if live.deleting.load(Ordering::SeqCst) => r.raced_deletes += 1,
            Ok((false, why)) => r
                .review_live
                .error(format!("a live pod's token was refused: {why}")),
            Err(e) => r.review_live.error(e),
        }
    }
    Ok(r)
}

/// Runs one measurement (see the module docs).
pub async fn run(config: PodChurnConfig) -> anyhow::Result<PodChurnReport> {
    config.validate()?;
    for t in [&config.identity, &config.issuer, &config.review] {
        target::check_loopback(t).await?;
    }
    let tls = TlsMaterial::load(&config.tls)?;
    let connect = |target: String| {
        let (tls, name) = (tls.clone(), config.server_name.clone());
        async move {
            badge_runtime::transport::channel(&target, &tls, &name, CONNECT_TIMEOUT)
                .await
                .with_context(|| format!("connecting to {target}"))
        }
    };
    // One connection per service, shared by every loop (HTTP/2 multiplexes them),
    // as a fleet's node agents share a few connections each.
    let identity = connect(config.identity.clone()).await?;
    let issuer = connect(config.issuer.clone()).await?;
    let reviews = connect(config.review.clone()).await?;
    let config = Arc::new(config);
    let pool = Arc::new(Pool {
        slots: (0..config.workers)
            .map(|_| std::sync::Mutex::new(None))
            .collect(),
        next: AtomicU64::new(0),
    });
    let next_name = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + config.duration;
    let mut tasks = JoinSet::new();
    for slot in 0..config.workers {
        let clients = Clients {
            pods: PodServiceClient::new(identity.clone()),
            tokens: TokenServiceClient::new(issuer.clone()),
            reviews: TokenReviewServiceClient::new(reviews.clone()),
        };
        tasks.spawn(worker(
            config.clone(),
            clients,
            pool.clone(),
            slot,
            next_name.clone(),
            end,
        ));
    }
    for _ in 0..config.reviewers {
        tasks.spawn(reviewer(
            TokenReviewServiceClient::new(reviews.clone()),
            pool.clone(),
            end,
        ));
    }
    let mut report = PodChurnReport::new()?;
    while let Some(done) = tasks.join_next().await {
        report.merge(&done.context("a load task panicked")??)?;
    }
    // The loops finish the pod they are on after `end`: the window is the time
    // until the last one did.
    report.window = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_counts_once_and_keeps_the_first_reason() {
        let mut s = OpStats::new().unwrap();
        s.ok(Duration::from_millis(2));
        s.error("first".into());
        s.error("second".into());
        let mut total = OpStats::new().unwrap();
        total.merge(&s).unwrap();
        total.merge(&s).unwrap();
        assert_eq!((total.ok, total.errors), (2, 4));
        assert_eq!(total.first_error.as_deref(), Some("first"));
    }

    #[test]
    fn the_pool_hands_out_only_live_tokens() {
        let pool = Pool {
            slots: (0..3).map(|_| std::sync::Mutex::new(None)).collect(),
            next: AtomicU64::new(0),
        };
        assert!(pool.pick().is_none());
        pool.set(
            1,
            Some(Arc::new(Live {
                token: "t1".into(),
                deleting: Arc::new(AtomicBool::new(false)),
            })),
        );
        for _ in 0..5 {
            assert_eq!(pool.pick().unwrap().token, "t1");
        }
        pool.set(1, None);
        assert!(pool.pick().is_none());
    }

    #[test]
    fn bounds_are_checked() {
        let base = PodChurnConfig {
            identity: "https://127.0.0.1:1".into(),
            issuer: "https://127.0.0.1:2".into(),
            review: "https://127.0.0.1:3".into(),
            server_name: "localhost".into(),
            tls: TlsFiles {
                ca: "ca".into(),
                cert: "c".into(),
                key: "k".into(),
            },
            namespace: "default".into(),
            service_account: "default".into(),
            workers: 4,
            reviewers: 4,
            duration: Duration::from_secs(1),
            pod_lifetime: Duration::ZERO,
            revocation_deadline: Duration::from_secs(1),
            name_prefix: "p-".into(),
        };
        assert!(base.validate().is_ok());
        for bad in [
            PodChurnConfig {
                workers: 0,
                ..base.clone()
            },
            PodChurnConfig {
                duration: Duration::ZERO,
                ..base.clone()
            },
            PodChurnConfig {
                revocation_deadline: Duration::ZERO,
                ..base.clone()
            },
            PodChurnConfig {
                reviewers: MAX_LOOPS + 1,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
