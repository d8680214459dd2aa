//! Getting and keeping each workload's X.509-SVID: the key is generated here (ECDSA
//! P-256, in memory only), the certificate comes from token-issuer's
//! `CreatePodCertificate` asked as the pod's node, renewed at the certificate's
//! `beginRefreshAt` plus jitter, with backoff while the old one is still valid;
//! the pod is followed (identity's Watch, and GetPod every `pod_poll_ms`) so that
//! its identity is removed the moment it is deleted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use badge_core::Clock;
use badge_proto::certificates as cpb;
use badge_proto::identity as id;
use badgectl::conn::Ch;
use rand::Rng as _;
use tokio::sync::{Notify, watch};
use tonic::Code;
use zeroize::Zeroizing;

use super::config::{Settings, Workload};
use super::metrics;
use super::state::{Bundle, Shared, Slot, Svid};
use crate::{BACKOFF_START, next_backoff};

/// What the running tasks share.
pub struct Ctx {
    pub settings: Settings,
    pub shared: Arc<Shared>,
    pub identity: Ch,
    pub issuer: Ch,
    /// Bumped to renew every SVID and refetch the bundle now (SIGHUP).
    pub refresh: watch::Receiver<u64>,
    /// One per workload: a Watch event named its pod.
    pub pod_events: Vec<Arc<Notify>>,
    /// Issuances in flight at once (`max_concurrent_issues`): at start every pod
    /// needs a certificate at the same moment, and a node's thousand requests at
    /// once would only queue in token-issuer past its store's acquire bound (and
    /// fail); the agent queues them itself instead.
    pub issue_slots: Arc<tokio::sync::Semaphore>,
    /// The only source of wall-clock time.
    pub clock: Arc<dyn Clock>,
}

/// When to renew: the server's `beginRefreshAt` plus up to `jitter`, but never past
/// the midpoint between it and `not_after` (time left to retry).
pub fn refresh_due(
    begin_refresh_at: SystemTime,
    not_after: SystemTime,
    jitter: Duration,
) -> SystemTime {
    let room = not_after
        .duration_since(begin_refresh_at)
        .unwrap_or_default()
        / 2;
    begin_refresh_at + jitter.min(room)
}

/// Uniform in [0, max].
pub fn draw_jitter(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// The pod as the agent needs it.
struct PodInfo {
    uid: String,
    service_account: String,
    node: String,
}

enum Lookup {
    Alive(PodInfo),
    Gone(String),
    Error(tonic::Status),
}

async fn lookup(ctx: &Ctx, w: &Workload) -> Lookup {
    let r = id::pod_service_client::PodServiceClient::new(ctx.identity.clone())
        .get_pod(id::GetPodRequest {
            namespace: w.namespace.clone(),
            name: w.pod.clone(),
        })
        .await;
    match r {
        Ok(p) => {
            let p = p.into_inner();
            let m = p.metadata.unwrap_or_default();
            let spec = p.spec.unwrap_or_default();
            if m.deletion_timestamp.is_some() {
                return Lookup::Gone("being deleted".into());
            }
            let sa = if spec.service_account_name.is_empty() {
                "default".to_string()
            } else {
                spec.service_account_name
            };
            Lookup::Alive(PodInfo {
                uid: m.uid,
                service_account: sa,
                node: spec.node_name,
            })
        }
        Err(s) if s.code() == Code::NotFound => Lookup::Gone("not found".into()),
        Err(s) => Lookup::Error(s),
    }
}

/// Why a live pod must not get the configured identity (checked before asking).
fn mismatch(ctx: &Ctx, w: &Workload, pod: &PodInfo) -> Option<String> {
    if pod.service_account != w.service_account {
        return Some(format!(
            "runs as service account {:?}, the configuration says {:?}",
            pod.service_account, w.service_account
        ));
    }
    if pod.node != ctx.settings.node {
        return Some(format!(
            "is bound to node {:?}, not to this agent's node {:?}",
            pod.node, ctx.settings.node
        ));
    }
    None
}

async fn uid_of_service_account(ctx: &Ctx, w: &Workload) -> Result<String, tonic::Status> {
    let sa =
        id::service_account_service_client::ServiceAccountServiceClient::new(ctx.identity.clone())
            .get_service_account(id::GetServiceAccountRequest {
                namespace: w.namespace.clone(),
                name: w.service_account.clone(),
            })
            .await?
            .into_inner();
    Ok(sa.metadata.map(|m| m.uid).unwrap_or_default())
}

async fn uid_of_node(ctx: &Ctx) -> Result<String, tonic::Status> {
    let n = id::node_service_client::NodeServiceClient::new(ctx.identity.clone())
        .get_node(id::GetNodeRequest {
            name: ctx.settings.node.clone(),
        })
        .await?
        .into_inner();
    Ok(n.metadata.map(|m| m.uid).unwrap_or_default())
}

/// A new key and a certificate for it (key generation and the request are shared
/// with the per-pod agent: [`crate::pod_certificates`]).
async fn issue(
    ctx: &Ctx,
    w: &Workload,
    pod: &PodInfo,
) -> Result<(Svid, SystemTime), tonic::Status> {
    let _slot = ctx
        .issue_slots
        .acquire()
        .await
        .map_err(|_| tonic::Status::unavailable("the agent is stopping"))?;
    let key =
        crate::pod_certificates::generate_key("ECDSAP256").map_err(tonic::Status::internal)?;
    let sa_uid = uid_of_service_account(ctx, w).await?;
    let node_uid = uid_of_node(ctx).await?;
    let issued = crate::pod_certificates::request(
        ctx.issuer.clone(),
        &w.namespace,
        cpb::PodCertificateRequestSpec {
            signer_name: "badge.dev/spiffe".into(),
            pod_name: w.pod.clone(),
            pod_uid: pod.uid.clone(),
            service_account_name: w.service_account.clone(),
            service_account_uid: sa_uid,
            node_name: ctx.settings.node.clone(),
            node_uid,
            ..Default::default()
        },
        &key,
        None,
        ctx.clock.as_ref(),
    )
    .await?;
    let svid = Svid {
        spiffe_id: issued.spiffe_id,
        hint: w.key(),
        pod_uid: pod.uid.clone(),
        chain_der: issued.chain_der,
        chain_pem: issued.chain_pem,
        key_pkcs8_der: Zeroizing::new(key.serialize_der()),
        key_pem: Zeroizing::new(key.serialize_pem()),
        not_after: issued.not_after,
        serial: issued.serial,
    };
    Ok((svid, issued.begin_refresh_at))
}

/// The DER of every CERTIFICATE block of `pem`.
pub fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// Keeps workload `i`'s SVID until `stop`.
pub async fn run_workload(ctx: Arc<Ctx>, i: usize, mut stop: watch::Receiver<bool>) {
    let Some(w) = ctx.settings.workloads.get(i).cloned() else {
        return;
    };
    let who = w.key();
    let mut refresh = ctx.refresh.clone();
    let events = ctx.pod_events.get(i).cloned().unwrap_or_default();
    let mut current: Option<Arc<Svid>> = None;
    let mut due = ctx.clock.now();
    let mut backoff = BACKOFF_START;
    let mut gone_logged = false;
    // Set by a SIGHUP: the renewal waits for its drawn time before anything is asked.
    let mut deferred = false;
    loop {
        let mut wait = ctx.settings.pod_poll;
        if std::mem::take(&mut deferred) {
            wait = wait.min(due.duration_since(ctx.clock.now()).unwrap_or_default());
        } else {
            match lookup(&ctx, &w).await {
                Lookup::Gone(why) => {
                    if current.take().is_some() || !gone_logged {
                        tracing::info!(pod = %who, "pod {why}: no identity is served for it (streams of its callers end)");
                        metrics::get().removed.add(1, &[]);
                    }
                    gone_logged = true;
                    ctx.shared.set_slot(i, Slot::Gone);
                }
                Lookup::Error(s) => {
                    tracing::warn!(pod = %who, "reading the pod failed, retrying in {backoff:?}: {}: {}", s.code(), s.message());
                    metrics::failure("pod_lookup");
                    wait = backoff;
                    backoff = next_backoff(backoff);
                }
                Lookup::Alive(pod) => {
                    if let Some(why) = mismatch(&ctx, &w, &pod) {
                        if current.take().is_some() || !gone_logged {
                            tracing::error!(pod = %who, "pod {why}: no identity is served for it");
                        }
                        gone_logged = true;
                        ctx.shared.set_slot(i, Slot::Gone);
                    } else {
                        gone_logged = false;
                        if current.as_ref().is_some_and(|c| c.pod_uid != pod.uid) {
                            tracing::info!(pod = %who, uid = %pod.uid, "pod re-created: the old identity is removed");
                            current = None;
                            metrics::get().removed.add(1, &[]);
                            ctx.shared.set_slot(i, Slot::Gone);
                        }
                        let now = ctx.clock.now();
                        if current.is_none() || now >= due {
                            match issue(&ctx, &w, &pod).await {
                                Ok((svid, begin)) => {
                                    let rotated = current.is_some();
                                    due = refresh_due(
                                        begin,
                                        svid.not_after,
                                        draw_jitter(ctx.settings.refresh_jitter),
                                    );
                                    let refresh_at_unix_ms = due
                                        .duration_since(SystemTime::UNIX_EPOCH)
                                        .map(|d| d.as_millis())
                                        .unwrap_or_default();
                                    tracing::info!(pod = %who, spiffe_id = %svid.spiffe_id, serial = %svid.serial, refresh_in = ?due.duration_since(ctx.clock.now()).unwrap_or_default(), refresh_at_unix_ms, "{}", if rotated { "X.509-SVID rotated" } else { "X.509-SVID issued" });
                                    let svid = Arc::new(svid);
                                    current = Some(svid.clone());
                                    ctx.shared.set_slot(i, Slot::Ready(svid));
                                    if rotated {
                                        metrics::get().rotations.add(1, &[]);
                                    }
                                    backoff = BACKOFF_START;
                                }
                                Err(s) => {
                                    metrics::failure("issue");
                                    let valid = current
                                        .as_ref()
                                        .is_some_and(|c| c.not_after > ctx.clock.now());
                                    if valid {
                                        tracing::warn!(pod = %who, "renewing the X.509-SVID failed, keeping the current one, retrying in {backoff:?}: {}: {}", s.code(), s.message());
                                    } else {
                                        tracing::error!(pod = %who, "requesting the X.509-SVID failed, retrying in {backoff:?}: {}: {}", s.code(), s.message());
                                        if current.take().is_some() {
                                            ctx.shared.set_slot(i, Slot::Pending);
                                        }
                                    }
                                    due = ctx.clock.now() + backoff;
                                    backoff = next_backoff(backoff);
                                }
                            }
                        }
                        wait = wait.min(due.duration_since(ctx.clock.now()).unwrap_or_default());
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = events.notified() => {}
            r = refresh.changed() => {
                if r.is_err() { return; }
                // SIGHUP renews every SVID, each at a time drawn uniformly in
                // [now, now + refresh_jitter]: renewing a thousand pods at the same
                // instant is the thundering herd the jitter exists to prevent (the
                // pod is read then too, not now). With no jitter: now.
                due = ctx.clock.now() + draw_jitter(ctx.settings.refresh_jitter);
                deferred = current.is_some();
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Parses `GetTrustBundle`'s answer.
pub fn bundle_of(r: &cpb::GetTrustBundleResponse) -> Result<Bundle, String> {
    let roots_der = pem_certificates(&r.roots_pem);
    let doc: serde_json::Value = serde_json::from_str(&r.spiffe_bundle_json)
        .map_err(|e| format!("spiffe_bundle_json: {e}"))?;
    let keys: Vec<serde_json::Value> = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .map(|a| {
            a.iter()
                .filter(|k| k.get("use").and_then(|u| u.as_str()) == Some("jwt-svid"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let jwks = serde_json::to_vec(&serde_json::json!({ "keys": keys }))
        .map_err(|e| format!("jwks: {e}"))?;
    if r.trust_domain.is_empty() {
        return Err("trust_domain: empty".into());
    }
    Ok(Bundle {
        trust_domain: r.trust_domain.clone(),
        roots_der,
        roots_pem: r.roots_pem.clone(),
        jwks,
        sequence: r.sequence,
    })
}

/// Keeps the trust bundle current until `stop`. `ready` is told after the first.
pub async fn run_bundle(
    ctx: Arc<Ctx>,
    ready: tokio::sync::oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ready = Some(ready);
    let mut refresh = ctx.refresh.clone();
    let mut backoff = BACKOFF_START;
    loop {
        let mut wait = ctx.settings.bundle_poll;
        let r = cpb::certificate_authority_service_client::CertificateAuthorityServiceClient::new(
            ctx.issuer.clone(),
        )
        .get_trust_bundle(cpb::GetTrustBundleRequest {})
        .await;
        match r
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
            .and_then(|r| bundle_of(r.get_ref()))
        {
            Ok(b) => {
                let (td, seq, roots) = (b.trust_domain.clone(), b.sequence, b.roots_der.len());
                if ctx.shared.set_bundle(b) {
                    tracing::info!(trust_domain = %td, sequence = seq, roots, "trust bundle updated");
                    metrics::get().bundle_updates.add(1, &[]);
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                backoff = BACKOFF_START;
            }
            Err(e) => {
                metrics::failure("bundle");
                tracing::warn!("fetching the trust bundle failed, retrying in {backoff:?}: {e}");
                wait = backoff;
                backoff = next_backoff(backoff);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = refresh.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Follows identity's Watch of pods in `namespace`, waking the workload task whose
/// pod an event names (re-opened with backoff; the periodic GetPod covers gaps).
pub async fn run_pod_watch(ctx: Arc<Ctx>, namespace: String, mut stop: watch::Receiver<bool>) {
    let mine: Vec<(String, Arc<Notify>)> = ctx
        .settings
        .workloads
        .iter()
        .zip(&ctx.pod_events)
        .filter(|(w, _)| w.namespace == namespace)
        .map(|(w, n)| (w.pod.clone(), n.clone()))
        .collect();
    let mut backoff = BACKOFF_START;
    loop {
        let opened = id::watch_service_client::WatchServiceClient::new(ctx.identity.clone())
            .watch(id::WatchRequest {
                kinds: vec![id::Kind::Pod as i32],
                namespace: namespace.clone(),
                label_selector: String::new(),
                resource_version: String::new(),
            })
            .await;
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                backoff = BACKOFF_START;
                loop {
                    tokio::select! {
                        m = stream.message() => match m {
                            Ok(Some(ev)) => {
                                if let Some(id::watch_event::Object::Pod(p)) = &ev.object {
                                    let name = p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
                                    for (pod, n) in &mine {
                                        if pod == name {
                                            n.notify_one();
                                        }
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(s) => {
                                tracing::debug!(namespace = %namespace, "pod watch ended: {}: {}", s.code(), s.message());
                                break;
                            }
                        },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
            Err(s) => {
                tracing::warn!(namespace = %namespace, "pod watch unavailable (polling every pod_poll_ms), retrying in {backoff:?}: {}: {}", s.code(), s.message());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = next_backoff(backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `beginRefreshAt` plus the jitter, capped at half the time left to `notAfter`.
    #[test]
    fn refresh_due_table() {
        let t0 = badge_core::FixedClock::at_unix(1_700_000_000).now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (notAfter after beginRefreshAt, jitter, expected due after beginRefreshAt)
        let cases: &[(Duration, Duration, Duration)] = &[
            (s(43_200), s(0), s(0)),     // no jitter: beginRefreshAt
            (s(43_200), s(30), s(30)),   // jitter fits
            (s(43_200), s(300), s(300)), // the pod-certificate 5 min fits
            (s(60), s(30), s(30)),       // exactly half the room: all of it
            (s(61), s(30), s(30)),       // just over: all of it
            (s(59), s(30), ms(29_500)),  // just under: capped at half
            (s(40), s(30), s(20)),       // little room: half of it
            (s(1), s(30), ms(500)),
            (s(0), s(30), s(0)), // notAfter = beginRefreshAt: no jitter
        ];
        for (room, jitter, want) in cases {
            assert_eq!(
                refresh_due(t0, t0 + *room, *jitter),
                t0 + *want,
                "room {room:?} jitter {jitter:?}"
            );
        }
        // notAfter before beginRefreshAt: at beginRefreshAt.
        assert_eq!(refresh_due(t0, t0 - s(5), s(30)), t0);
    }

    #[test]
    fn draw_jitter_bounds() {
        assert_eq!(draw_jitter(Duration::ZERO), Duration::ZERO);
        for max in [Duration::from_millis(1), Duration::from_secs(30)] {
            for _ in 0..1000 {
                assert!(draw_jitter(max) <= max);
            }
        }
        // Whole milliseconds: a sub-millisecond bound draws zero.
        assert_eq!(draw_jitter(Duration::from_micros(999)), Duration::ZERO);
    }

    #[test]
    fn refresh_is_jittered_but_leaves_time_to_retry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = Duration::from_secs;
        // 12 h until notAfter from beginRefreshAt: 30 s of jitter fits.
        assert_eq!(refresh_due(t0, t0 + s(43_200), s(30)), t0 + s(30));
        // Little room left: at most half of it.
        assert_eq!(refresh_due(t0, t0 + s(40), s(30)), t0 + s(20));
        // Already past: now.
        assert_eq!(refresh_due(t0, t0 - s(5), s(30)), t0);
        for _ in 0..1000 {
            assert!(draw_jitter(s(30)) <= s(30));
        }
    }

    /// 1,000 pods issued in the same second spread their renewals: the server's
    /// ±10 % plus the agent's jitter leaves no second with more than a few.
    #[test]
    fn a_thousand_renewals_do_not_share_a_second() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut per_second = std::collections::HashMap::<u64, u32>::new();
        for _ in 0..1000 {
            let due = refresh_due(
                t0 + Duration::from_secs(43_200),
                t0 + Duration::from_secs(86_400),
                draw_jitter(Duration::from_secs(30)),
            );
            let sec = due.duration_since(t0).expect("after").as_secs();
            *per_second.entry(sec).or_default() += 1;
        }
        let busiest = per_second.values().max().copied().unwrap_or(0);
        assert!(busiest < 200, "{busiest} renewals in one second");
    }

    /// A SIGHUP's renewals of 1,000 pods, drawn over a 20 s jitter: spread over the
    /// window, no second with more than a small multiple of the mean (50/s).
    #[test]
    fn a_forced_renewal_is_spread_over_the_jitter() {
        let jitter = Duration::from_secs(20);
        let mut per_second = [0u32; 21];
        for _ in 0..1000 {
            let d = draw_jitter(jitter);
            per_second[usize::try_from(d.as_secs()).expect("small")] += 1;
        }
        let busiest = per_second.iter().max().copied().unwrap_or(0);
        assert!(busiest <= 100, "{busiest} in one second: {per_second:?}");
        assert!(
            per_second[..20].iter().all(|n| *n > 0),
            "every second of the window is used: {per_second:?}"
        );
    }
}
