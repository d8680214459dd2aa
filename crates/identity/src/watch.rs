//! `WatchService.Watch`: list-then-watch over the change feed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use badge_access::{Guard, RBAC_KINDS};
use badge_core::rbac::Attributes;
use badge_core::review::{EXTRA_NODE_NAME, EXTRA_POD_NAME, INVALID_BEARER_TOKEN, TOKEN_EXPIRED};
use badge_core::selector::LabelSelector;
use badge_core::{Error, Kind, Result, names};
use badge_proto::Scope as _;
use badge_proto::identity::{
    self as pb, EventType, Namespace, Node, Pod, Secret, ServiceAccount, WatchEvent, watch_event,
    watch_service_server::WatchService,
};
use badge_runtime::{Authorizer as _, Caller, Target, status};
use badge_store::{Change, ListQuery, Record};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::objects::{Object, Objects, decode, parse_resource_version};

/// How many feed entries one store read returns.
const BATCH: i64 = 500;
/// How many feed entries one step of a follower hands over.
const FOLLOW_BATCH: usize = 500;
/// A list for list-then-watch is one snapshot; this bounds it.
const LIST_LIMIT: usize = 1_000_000;

fn kind_of(k: pb::Kind) -> Option<Kind> {
    match k {
        pb::Kind::Unspecified => None,
        pb::Kind::Namespace => Some(Kind::Namespace),
        pb::Kind::ServiceAccount => Some(Kind::ServiceAccount),
        pb::Kind::Secret => Some(Kind::Secret),
        pb::Kind::Pod => Some(Kind::Pod),
        pb::Kind::Node => Some(Kind::Node),
        pb::Kind::Role => Some(Kind::Role),
        pb::Kind::ClusterRole => Some(Kind::ClusterRole),
        pb::Kind::RoleBinding => Some(Kind::RoleBinding),
        pb::Kind::ClusterRoleBinding => Some(Kind::ClusterRoleBinding),
    }
}

/// Decodes a record of any kind into the event's object.
pub fn event_object(record: &Record) -> Result<watch_event::Object> {
    fn one<T: Object>(r: &Record) -> Result<watch_event::Object> {
        Ok(decode::<T>(r)?.into_event_object())
    }
    match record.kind {
        Kind::Namespace => one::<Namespace>(record),
        Kind::ServiceAccount => one::<ServiceAccount>(record),
        Kind::Secret => one::<Secret>(record),
        Kind::Pod => one::<Pod>(record),
        Kind::Node => one::<Node>(record),
        Kind::Role => one::<badge_proto::rbac::Role>(record),
        Kind::ClusterRole => one::<badge_proto::rbac::ClusterRole>(record),
        Kind::RoleBinding => one::<badge_proto::rbac::RoleBinding>(record),
        Kind::ClusterRoleBinding => one::<badge_proto::rbac::ClusterRoleBinding>(record),
        Kind::SigningKey | Kind::Revocation | Kind::CertificateAuthority => Err(Error::Internal(
            "signing keys are not served by the identity service".into(),
        )),
    }
}

/// What a watcher asked to see.
struct Filter {
    kinds: Vec<Kind>,
    namespace: String,
    selector: LabelSelector,
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        self.kinds.contains(&r.kind)
            && (self.namespace.is_empty() || r.namespace == self.namespace)
            && self
                .selector
                .matches_with(|k| r.labels.get(k).map(String::as_str))
    }
}

fn parse(r: &pb::WatchRequest) -> Result<(Filter, Option<i64>)> {
    let mut kinds = Vec::new();
    for (i, k) in r.kinds.iter().enumerate() {
        let kind = pb::Kind::try_from(*k)
            .ok()
            .and_then(kind_of)
            .ok_or_else(|| Error::invalid(format!("kinds[{i}]"), format!("unknown kind {k}")))?;
        kinds.push(kind);
    }
    if kinds.is_empty() {
        kinds = Kind::IDENTITY.to_vec();
    }
    if !r.namespace.is_empty() {
        if let Some(e) = names::validate_dns_label(&r.namespace).into_iter().next() {
            return Err(Error::invalid(
                "namespace",
                names::invalid_value(&r.namespace, &e),
            ));
        }
        // Cluster-scoped kinds have no namespace: watching them in one shows nothing.
        kinds.retain(|k| k.namespaced());
    }
    let selector = LabelSelector::parse_field("label_selector", &r.label_selector)?;
    let rv = parse_resource_version("resource_version", &r.resource_version)?;
    Ok((
        Filter {
            kinds,
            namespace: r.namespace.clone(),
            selector,
        },
        rv,
    ))
}

fn event(kind: EventType, revision: i64, record: &Record) -> Result<WatchEvent> {
    let mut object = event_object(record)?;
    // The object in an event carries the revision of that event.
    let rv = revision.to_string();
    match &mut object {
        watch_event::Object::Namespace(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::ServiceAccount(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::Secret(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::Pod(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::Node(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::Role(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::ClusterRole(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::RoleBinding(o) => o.meta_mut().resource_version = rv.clone(),
        watch_event::Object::ClusterRoleBinding(o) => o.meta_mut().resource_version = rv.clone(),
    }
    Ok(WatchEvent {
        r#type: kind as i32,
        resource_version: rv,
        object: Some(object),
    })
}

fn change_event(c: &Change) -> Result<WatchEvent> {
    let t = match c.event {
        badge_store::EventType::Added => EventType::Added,
        badge_store::EventType::Modified => EventType::Modified,
        badge_store::EventType::Deleted => EventType::Deleted,
    };
    event(t, c.revision, &c.record)
}

type Tx = mpsc::Sender<std::result::Result<WatchEvent, Status>>;

/// Sends; `false` when the client has gone.
async fn send(tx: &Tx, ev: Result<WatchEvent>) -> bool {
    tx.send(ev.map_err(status)).await.is_ok()
}

/// How long a change may wait for the access index (which holds the RBAC policy
/// and the objects behind the caller's token) to apply its revision before the
/// watch gives up with UNAVAILABLE.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who opened a watch, with which credential, and what the auth layer checked:
/// kept with the stream so that the same decision can be made again as the world
/// changes (no `Debug`: it holds the caller's token).
pub(crate) struct Viewer {
    caller: Caller,
    /// The bearer token the caller presented, re-reviewed as the objects it is
    /// bound to change. `None`: a client certificate.
    token: Option<String>,
    /// A client certificate's notAfter: the verified chain ends the stream when
    /// it expires, as a new connection would be refused then.
    cert_expires: Option<SystemTime>,
    /// The attributes the auth layer authorized (`watch` on each kind asked for).
    attrs: Vec<Attributes>,
}

impl Viewer {
    fn from_request(req: &Request<pb::WatchRequest>) -> std::result::Result<Self, Status> {
        let caller = badge_runtime::auth::caller(req)?.clone();
        // The auth layer has already validated this header's form; a bearer token,
        // when present, is what the caller was authenticated by.
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let cert_expires = if token.is_some() {
            None
        } else {
            req.extensions()
                .get::<badge_runtime::transport::PeerInfo>()
                .and_then(|p| p.certs.as_ref()?.first().cloned())
                .and_then(|leaf| certificate_not_after(leaf.as_ref()))
        };
        let m = req.get_ref();
        let target = Target {
            namespace: m.namespace().to_owned(),
            name: m.name().to_owned(),
            resources: m.resources(),
        };
        Ok(Viewer {
            caller,
            token,
            cert_expires,
            attrs: crate::WATCH_RULE.attributes(&target),
        })
    }
}

/// A DER certificate's notAfter.
fn certificate_not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What the last check saw, to re-run it only when something it depends on moved.
#[derive(Default)]
struct Seen {
    /// The RBAC kinds' generation in the access index.
    rbac: Option<u64>,
    /// The objects a bearer token depends on (see [`Sentinel::fingerprint`]).
    liveness: Option<Vec<i64>>,
    /// The caller as last reviewed (a token's review may change its groups).
    caller: Option<Caller>,
    /// A bearer token's `exp`.
    token_expires: Option<SystemTime>,
}

/// Re-makes the auth layer's decision for an open watch: the credential (a bearer
/// token re-reviewed exactly as the auth layer reviews it; a certificate's expiry)
/// and RBAC `watch` on every kind asked for.
pub(crate) struct Sentinel {
    guard: std::sync::Arc<Guard>,
    viewer: Viewer,
    seen: tokio::sync::Mutex<Seen>,
}

impl Sentinel {
    fn index(&self) -> &badge_records::Index {
        self.guard.policy().index()
    }

    /// Resource versions (or generations) of everything a review of the bearer
    /// token reads from the index besides the token itself: its service account,
    /// its pod or node, and every revocation and signing key. A token bound to
    /// neither a pod nor a node may be bound to a Secret or be a legacy Secret
    /// token, so for those any Secret change counts.
    fn fingerprint(&self, caller: &Caller) -> Vec<i64> {
        let index = self.index();
        let rv = |kind: Kind, ns: &str, name: &str| {
            index
                .map(kind, ns, name, badge_records::Entry::resource_version)
                .unwrap_or(-1)
        };
        let generation = |kinds: &[Kind]| i64::try_from(index.generation(kinds)).unwrap_or(-1);
        let (ns, sa) = caller
            .user
            .strip_prefix(badge_core::user::SERVICE_ACCOUNT_USERNAME_PREFIX)
            .and_then(|r| r.split_once(':'))
            .unwrap_or(("", ""));
        let first = |key: &str| {
            caller
                .extra
                .get(key)
                .and_then(|v| v.first())
                .map(String::as_str)
        };
        let mut out = vec![
            rv(Kind::ServiceAccount, ns, sa),
            generation(&[Kind::Revocation, Kind::SigningKey]),
        ];
        let pod = first(EXTRA_POD_NAME);
        let node = first(EXTRA_NODE_NAME);
        if let Some(pod) = pod {
            out.push(rv(Kind::Pod, ns, pod));
        }
        if let Some(node) = node {
            out.push(rv(Kind::Node, "", node));
        }
        if pod.is_none() && node.is_none() {
            out.push(generation(&[Kind::Secret]));
        }
        out
    }

    /// Re-checks when the policy or an object behind the credential changed since
    /// the last check (`force`: always). `Err` ends the watch with that status.
    async fn check(&self, force: bool) -> std::result::Result<(), Status> {
        let mut seen = self.seen.lock().await;
        let rbac = self.guard.policy().index().generation(&RBAC_KINDS);
        let mut reviewed = false;
        if let Some(token) = &self.viewer.token {
            let known = seen
                .caller
                .clone()
                .unwrap_or_else(|| self.viewer.caller.clone());
            // Read before the review: a change during it triggers another check.
            let liveness = self.fingerprint(&known);
            if force || seen.liveness.as_ref() != Some(&liveness) {
                let (caller, auth) = self.guard.authenticate_bearer(token).await?;
                // If the review changed who the caller is, the next check computes
                // a different fingerprint and reviews once more: harmless.
                seen.liveness = Some(liveness);
                seen.token_expires = auth
                    .expires_at
                    .and_then(|exp| u64::try_from(exp).ok())
                    .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp));
                seen.caller = Some(caller);
                reviewed = true;
            }
        }
        if force || reviewed || seen.rbac != Some(rbac) {
            let caller = seen.caller.as_ref().unwrap_or(&self.viewer.caller);
            for attrs in &self.viewer.attrs {
                self.guard.authorize(caller, attrs)?;
            }
            seen.rbac = Some(rbac);
        }
        Ok(())
    }

    /// When the credential stops being valid, and the status that says so.
    async fn expiry(&self) -> Option<(SystemTime, Status)> {
        if let Some(at) = self.viewer.cert_expires {
            return Some((
                at,
                Status::unauthenticated(
                    "the client certificate has expired: connect again with a current certificate and watch from the last resource_version",
                ),
            ));
        }
        let at = self.seen.lock().await.token_expires?;
        Some((
            at,
            Status::unauthenticated(format!(
                "{INVALID_BEARER_TOKEN}: {TOKEN_EXPIRED}: watch again with a fresh token from the last resource_version"
            )),
        ))
    }

    /// Waits until the access index has applied `revision`, then checks: a change
    /// is only delivered while the caller may still see it as of that change.
    async fn gate(&self, revision: i64) -> std::result::Result<(), Status> {
        let mut rx = self.index().subscribe();
        if tokio::time::timeout(GATE_TIMEOUT, rx.wait_for(|r| *r >= revision))
            .await
            .is_err()
        {
            return Err(Status::unavailable(
                "the authorization state is behind the change feed: watch again from the last resource_version",
            ));
        }
        self.check(false).await
    }
}

/// Why a watch ended on the server's side.
enum End {
    /// The server-chosen lifetime is over: a BOOKMARK, then OK.
    Timeout,
    /// The credential or the authorization is gone.
    Refused(Status),
}

/// Ends the watch when its lifetime is over, its credential expires, or a change
/// to RBAC or to the objects behind the credential takes its access away.
async fn sentinel(
    sentinel: Option<&Sentinel>,
    clock: &dyn badge_core::Clock,
    lifetime: Duration,
) -> End {
    let deadline = tokio::time::Instant::now() + lifetime;
    let Some(s) = sentinel else {
        tokio::time::sleep_until(deadline).await;
        return End::Timeout;
    };
    let mut changes = s.index().subscribe();
    loop {
        let expiry = s.expiry().await;
        let until_expiry = expiry
            .as_ref()
            .map(|(at, _)| at.duration_since(clock.now()).unwrap_or_default());
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return End::Timeout,
            () = async {
                match until_expiry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((_, status)) = expiry {
                    return End::Refused(status);
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    // The index is gone (the server is stopping).
                    std::future::pending::<()>().await;
                }
                if let Err(status) = s.check(false).await {
                    return End::Refused(status);
                }
            }
        }
    }
}

/// A random lifetime in [½, 1½] × `timeout` (kube-apiserver's jitter), so that
/// watches opened together do not all end together.
fn lifetime(timeout: Duration) -> Duration {
    use rand::Rng as _;
    timeout.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Runs one watch until the client goes, the feed fails, the server stops, or
/// the sentinel ends it.
async fn run(objects: Objects, filter: Filter, from: Option<i64>, guard: Option<Sentinel>, tx: Tx) {
    let mut stopping = objects.stopping.subscribe();
    // Everything up to this revision has been sent (-1: the initial list is still
    // being sent, so there is nothing to resume from yet).
    let through = AtomicI64::new(from.unwrap_or(-1));
    let life = lifetime(objects.watch_timeout);
    let end = tokio::select! {
        () = follow(&objects, filter, from, guard.as_ref(), &through, &tx) => return,
        () = async { let _ = stopping.wait_for(|s| *s).await; } => {
            let _ = tx
                .send(Err(Status::unavailable(
                    "identity is shutting down: watch again with the last resource_version",
                )))
                .await;
            return;
        }
        end = sentinel(guard.as_ref(), objects.clock.as_ref(), life) => end,
    };
    match end {
        End::Timeout => {
            // As kube-apiserver's watch timeout: the stream ends cleanly and the
            // client resumes from the last revision it saw; the bookmark carries
            // the latest one even when nothing matched for a while.
            let rv = through.load(Ordering::Acquire);
            if rv >= 0 {
                let _ = tx
                    .send(Ok(WatchEvent {
                        r#type: EventType::Bookmark as i32,
                        resource_version: rv.to_string(),
                        object: None,
                    }))
                    .await;
            }
        }
        End::Refused(status) => {
            tracing::info!(
                user = %guard.as_ref().map(|g| g.viewer.caller.user.as_str()).unwrap_or_default(),
                code = ?status.code(),
                reason = %status.message(),
                "watch ended: access withdrawn"
            );
            let _ = tx.send(Err(status)).await;
        }
    }
}

async fn follow(
    objects: &Objects,
    filter: Filter,
    from: Option<i64>,
    sentinel: Option<&Sentinel>,
    through: &AtomicI64,
    tx: &Tx,
) {
    // Security: a change is delivered only once the access index has applied it
    // and the caller's access has been re-checked against that state, so nothing
    // committed after a binding, service account or token was removed reaches a
    // caller who lost access.
    let gate = |revision: i64| async move {
        match sentinel {
            Some(s) => s.gate(revision).await,
            None => Ok(()),
        }
    };
    let user = sentinel.map_or("", |s| s.viewer.caller.user.as_str());
    // Secret data leaves the server here: each Secret event is audited as a read.
    let audit = |r: &Record, revision: i64| {
        if r.kind == Kind::Secret {
            crate::audit::secret_watched(user, r, revision);
        }
    };
    let store = &objects.store;
    let cursor = match from {
        Some(rv) => rv,
        None => {
            // List each kind as one snapshot, then replay the feed between the
            // oldest and newest snapshot, skipping what a kind's snapshot already held.
            let mut seen: HashMap<Kind, i64> = HashMap::new();
            for kind in &filter.kinds {
                let f = |r: &Record| filter.matches(r);
                let page = store
                    .list(ListQuery {
                        kind: *kind,
                        namespace: (!filter.namespace.is_empty())
                            .then_some(filter.namespace.as_str()),
                        after: None,
                        limit: LIST_LIMIT,
                        filter: &f,
                    })
                    .await;
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = send(tx, Err(e)).await;
                        return;
                    }
                };
                for r in &page.items {
                    if !send(tx, event(EventType::Added, r.resource_version, r)).await {
                        return;
                    }
                    audit(r, r.resource_version);
                }
                seen.insert(*kind, page.revision);
            }
            let low = seen.values().copied().min().unwrap_or(0);
            let high = seen.values().copied().max().unwrap_or(0);
            let mut c = low;
            while c < high {
                let batch = match store.changes_since(c, BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = send(tx, Err(e)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for ch in batch.iter().take_while(|ch| ch.revision <= high) {
                    c = ch.revision;
                    let listed_at = seen.get(&ch.record.kind).copied().unwrap_or(i64::MAX);
                    if ch.revision > listed_at && filter.matches(&ch.record) {
                        if let Err(status) = gate(ch.revision).await {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        if !send(tx, change_event(ch)).await {
                            return;
                        }
                        audit(&ch.record, ch.revision);
                    }
                }
                if batch.last().is_some_and(|ch| ch.revision >= high) {
                    break;
                }
            }
            let bookmark = WatchEvent {
                r#type: EventType::Bookmark as i32,
                resource_version: high.to_string(),
                object: None,
            };
            if tx.send(Ok(bookmark)).await.is_err() {
                return;
            }
            through.store(high, Ordering::Release);
            high
        }
    };
    // From here on the stream is served by the store's feed relay: each change is
    // read from the database once per process, not once per watch stream.
    let mut follower = store.follow(cursor);
    loop {
        let batch = match follower.next(FOLLOW_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                // OUT_OF_RANGE tells the client to relist; UNAVAILABLE to resume later.
                let _ = send(tx, Err(e)).await;
                return;
            }
        };
        if batch.entries.is_empty() {
            through.store(batch.through, Ordering::Release);
            tokio::select! {
                changed = follower.changed() => if !changed { return },
                () = tx.closed() => return,
            }
            continue;
        }
        for entry in &batch.entries {
            // An entry that cannot be opened ends the stream, as before: a watch
            // must not skip an event silently.
            let ch = match entry.change() {
                Ok(ch) => ch,
                Err(e) => {
                    let _ = send(tx, Err(e)).await;
                    return;
                }
            };
            if filter.matches(&ch.record) {
                if let Err(status) = gate(ch.revision).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if !send(tx, change_event(ch)).await {
                    return;
                }
                audit(&ch.record, ch.revision);
            }
            through.store(ch.revision, Ordering::Release);
        }
        through.store(batch.through, Ordering::Release);
    }
}

#[tonic::async_trait]
impl WatchService for Objects {
    type WatchStream = ReceiverStream<std::result::Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        // Security: the auth layer decided once, at the start; the stream keeps the
        // caller's credential so the decision is made again as RBAC, the token's
        // objects and time move on (see `Sentinel`).
        let sentinel = match &self.guard {
            Some(guard) => {
                let s = Sentinel {
                    guard: guard.clone(),
                    viewer: Viewer::from_request(&req)?,
                    seen: tokio::sync::Mutex::default(),
                };
                // Also learns the token's expiry.
                s.check(true).await?;
                Some(s)
            }
            None => None,
        };
        let (filter, from) = parse(&req.into_inner()).map_err(status)?;
        if let Some(rv) = from {
            // Answer a compacted revision up front, before the stream opens.
            self.store.changes_since(rv, 1).await.map_err(status)?;
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(self.clone(), filter, from, sentinel, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
