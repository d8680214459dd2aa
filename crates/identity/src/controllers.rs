//! Background loops driven by the change feed: the default ServiceAccount
//! controller, the graceful-deletion reaper for pods, and feed compaction.

use std::time::Duration;

use badge_core::{Error, Kind};
use badge_proto::identity::ServiceAccount;
use badge_store::{EventType, ListQuery, Op, Precondition};

use crate::objects::Objects;
use crate::services::default_service_account;

const RETRY: Duration = Duration::from_secs(1);

/// Creates `default` in `namespace` unless it exists (or the namespace is gone).
async fn ensure_default(objects: &Objects, namespace: &str) -> badge_core::Result<()> {
    let op = Objects::create_op(&default_service_account(namespace));
    match objects.store.apply(vec![op], objects.clock.now()).await {
        Ok(_) => {
            tracing::info!(namespace, "created default service account");
            Ok(())
        }
        Err(Error::AlreadyExists(_) | Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every namespace has a `default` ServiceAccount; deleting it brings a new one
/// (new uid). Runs on every replica: creation is idempotent.
pub async fn default_service_accounts(objects: Objects) {
    loop {
        if let Err(e) = default_sa_pass(&objects).await {
            tracing::warn!(error = %e, "default service account controller: restarting");
            tokio::time::sleep(RETRY).await;
        }
    }
}

async fn default_sa_pass(objects: &Objects) -> badge_core::Result<()> {
    let store = &objects.store;
    // Reconcile everything once, then follow the feed from that snapshot.
    let all = |_: &badge_store::Record| true;
    let page = store
        .list(ListQuery {
            kind: Kind::Namespace,
            namespace: None,
            after: None,
            limit: 1_000_000,
            filter: &all,
        })
        .await?;
    for ns in &page.items {
        if store
            .get(Kind::ServiceAccount, &ns.name, "default")
            .await
            .is_err()
        {
            ensure_default(objects, &ns.name).await?;
        }
    }
    // Served by the store's feed relay (one database read per change per process).
    let mut follower = store.follow(page.revision);
    loop {
        let batch = follower.next(500).await?;
        if batch.entries.is_empty() {
            if !follower.changed().await {
                return Ok(());
            }
            continue;
        }
        for entry in &batch.entries {
            let ch = entry.change()?;
            let r = &ch.record;
            let trigger = match (r.kind, &ch.event) {
                (Kind::Namespace, EventType::Added | EventType::Modified) => Some(r.name.as_str()),
                (Kind::ServiceAccount, EventType::Deleted) if r.name == "default" => {
                    Some(r.namespace.as_str())
                }
                _ => None,
            };
            if let Some(ns) = trigger {
                ensure_default(objects, ns).await?;
            }
        }
    }
}

/// Removes pods whose graceful deletion has passed. Sleeps until the earliest
/// deadline, waking early when a pod gets a deletion timestamp (the only write
/// that can bring the next deadline forward).
pub async fn pod_reaper(objects: Objects) {
    while let Err(e) = reap_following(&objects).await {
        tracing::warn!(error = %e, "pod reaper");
        tokio::time::sleep(RETRY).await;
    }
}

/// The reaper's loop; `Ok` when the store is gone. It follows the change feed
/// (from the store's relay, in memory) rather than waking on every write: at
/// thousands of writes a second, two queries per commit were a measurable share
/// of the database's work for writes that almost never concern it.
async fn reap_following(objects: &Objects) -> badge_core::Result<()> {
    // Started before the first pass: a deletion committed after the pass's
    // queries is in the feed, one committed before is in their answer.
    let mut follower = objects
        .store
        .follow(objects.store.current_revision().await?);
    loop {
        reap_once(objects).await?;
        let sleep = match objects.store.next_deletion(Kind::Pod).await? {
            Some(at) => at
                .duration_since(objects.clock.now())
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(60)),
            None => Duration::from_secs(60),
        };
        let wake = tokio::time::Instant::now() + sleep;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake) => break,
                changed = follower.changed() => if !changed { return Ok(()) },
            }
            let batch = follower.next(500).await?;
            // An unreadable entry might be such a pod: look.
            let sooner = batch.entries.iter().any(|e| match e.change() {
                Ok(c) => c.record.kind == Kind::Pod && c.record.deletion_timestamp.is_some(),
                Err(_) => true,
            });
            if sooner {
                break;
            }
        }
    }
}

async fn reap_once(objects: &Objects) -> badge_core::Result<()> {
    let now = objects.clock.now();
    for pod in objects.store.expired_deletions(Kind::Pod, now).await? {
        let op = Op::Delete {
            kind: Kind::Pod,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            // The uid guards against removing a pod recreated under the same name.
            precondition: Precondition {
                resource_version: None,
                uid: Some(pod.uid.clone()),
            },
        };
        match objects.store.apply(vec![op], now).await {
            Ok(_) => {
                tracing::info!(namespace = %pod.namespace, name = %pod.name, "pod grace period over: removed")
            }
            Err(Error::NotFound(_) | Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Drops feed entries older than `retention` every `interval`. Watchers further
/// behind get OUT_OF_RANGE and relist.
pub async fn compactor(objects: Objects, retention: Duration, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let before = objects.clock.now().checked_sub(retention);
        if let Some(before) = before {
            match objects.store.compact(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "change feed compacted"),
                Err(e) => tracing::warn!(error = %e, "change feed compaction"),
            }
        }
    }
}

/// Makes sure the `default` namespace exists (as in Kubernetes).
pub async fn bootstrap(objects: &Objects) -> badge_core::Result<()> {
    let ns = badge_proto::identity::Namespace {
        metadata: Some(badge_proto::meta::ObjectMeta {
            name: "default".into(),
            ..Default::default()
        }),
        status: None,
    };
    let ops = vec![
        Objects::create_op(&ns),
        Objects::create_op::<ServiceAccount>(&default_service_account("default")),
    ];
    match objects.store.apply(ops, objects.clock.now()).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the bootstrap RBAC policy (`badge_core::bootstrap_policy`) where it is
/// missing, and brings objects back to the defaults while their autoupdate
/// annotation is `"true"` (so an upgrade that adds a permission applies it, and an
/// operator who sets `"false"` keeps their edit). Idempotent; replicas starting
/// together are safe (a lost create or update race is simply skipped).
pub async fn bootstrap_policy(objects: &Objects) -> badge_core::Result<()> {
    use badge_core::bootstrap_policy::{
        AUTOUPDATE_ANNOTATION, BOOTSTRAP_LABEL, cluster_role_bindings, cluster_roles,
    };
    use badge_proto::rbac::{ClusterRole, ClusterRoleBinding};
    use badge_records::rbac::{cluster_role_binding_to_pb, cluster_role_to_pb};

    fn meta(name: &str) -> badge_proto::meta::ObjectMeta {
        badge_proto::meta::ObjectMeta {
            name: name.to_owned(),
            labels: [(BOOTSTRAP_LABEL.0.to_owned(), BOOTSTRAP_LABEL.1.to_owned())].into(),
            annotations: [(AUTOUPDATE_ANNOTATION.to_owned(), "true".to_owned())].into(),
            ..Default::default()
        }
    }

    async fn reconcile<T: crate::objects::Object + PartialEq>(
        objects: &Objects,
        wanted: T,
        same: impl Fn(&T, &T) -> bool,
    ) -> badge_core::Result<()> {
        let name = wanted.meta().map(|m| m.name.clone()).unwrap_or_default();
        match objects.store.get(T::KIND, "", &name).await {
            Err(Error::NotFound(_)) => {
                match objects
                    .store
                    .apply(vec![Objects::create_op(&wanted)], objects.clock.now())
                    .await
                {
                    Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
            Ok(record) => {
                let current: T = crate::objects::decode(&record)?;
                let auto = current
                    .meta()
                    .and_then(|m| m.annotations.get(AUTOUPDATE_ANNOTATION))
                    .is_some_and(|v| v == "true");
                if !auto || same(&current, &wanted) {
                    return Ok(());
                }
                let mut update = wanted;
                let uid = current.meta().map(|c| c.uid.clone()).unwrap_or_default();
                let m = update.meta_mut();
                m.resource_version = record.resource_version.to_string();
                m.uid = uid;
                tracing::info!(kind = ?T::KIND, %name, "bootstrap policy: restoring defaults");
                match objects
                    .update(Some(update), "bootstrap", |_, _| Ok(()))
                    .await
                {
                    Ok(_) | Err(Error::Conflict(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    for role in cluster_roles() {
        let wanted = cluster_role_to_pb(&role, meta(&role.name));
        reconcile::<ClusterRole>(objects, wanted, |a, b| a.rules == b.rules).await?;
    }
    for binding in cluster_role_bindings() {
        let wanted = cluster_role_binding_to_pb(&binding, meta(&binding.name));
        reconcile::<ClusterRoleBinding>(objects, wanted, |a, b| {
            a.subjects == b.subjects && a.role_ref == b.role_ref
        })
        .await?;
    }
    Ok(())
}

/// Where identity records since when legacy-token use is tracked (Kubernetes keeps
/// it in a kube-system ConfigMap): an annotation on the `default` namespace.
pub const TRACKING_SINCE_ANNOTATION: &str = "badge.dev/legacy-token-tracking-since";

/// The date legacy-token tracking started, recording today when unset.
async fn tracking_since(objects: &Objects) -> badge_core::Result<std::time::SystemTime> {
    use badge_core::legacy_cleanup::parse_date;
    let record = objects.store.get(Kind::Namespace, "", "default").await?;
    let mut ns: badge_proto::identity::Namespace = crate::objects::decode(&record)?;
    let meta = ns.metadata.get_or_insert_with(Default::default);
    if let Some(t) = meta
        .annotations
        .get(TRACKING_SINCE_ANNOTATION)
        .and_then(|d| parse_date(d))
    {
        return Ok(t);
    }
    let now = objects.clock.now();
    meta.annotations.insert(
        TRACKING_SINCE_ANNOTATION.into(),
        badge_core::clock::utc_date(now),
    );
    let (labels, data) = crate::objects::encode(&ns);
    objects
        .store
        .apply(
            vec![Op::Update {
                kind: Kind::Namespace,
                namespace: String::new(),
                name: "default".into(),
                precondition: Precondition {
                    resource_version: Some(record.resource_version),
                    uid: None,
                },
                labels,
                data,
                deletion_timestamp: None,
            }],
            now,
        )
        .await?;
    Ok(now)
}

/// Kubernetes' legacy-serviceaccount-token-cleaner (reference §6.3): runs every
/// `interval`; an auto-generated token Secret unused for `period` is labelled
/// invalid, and deleted once it has been invalid for another `period`. Secrets a
/// pod references are never touched. Writes are guarded by resource_version.
pub async fn legacy_token_cleaner(objects: Objects, period: Duration, interval: Duration) {
    loop {
        if let Err(e) = clean_legacy_tokens(&objects, period).await {
            tracing::warn!(error = %e, "legacy token cleaner");
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn clean_legacy_tokens(objects: &Objects, period: Duration) -> badge_core::Result<usize> {
    use badge_core::legacy_cleanup::{
        self, Action, Candidate, INVALID_SINCE_LABEL, LAST_USED_LABEL,
    };
    use badge_proto::identity::{Pod, Secret};
    let since = tracking_since(objects).await?;
    let now = objects.clock.now();
    if !legacy_cleanup::active(since, period, now) {
        return Ok(0);
    }
    let all = |_: &badge_store::Record| true;
    let secrets = objects
        .store
        .list(ListQuery {
            kind: Kind::Secret,
            namespace: None,
            after: None,
            limit: 0,
            filter: &all,
        })
        .await?;
    let mut acted = 0;
    for rec in secrets.items {
        let secret: Secret = crate::objects::decode(&rec)?;
        if secret.r#type != "kubernetes.io/service-account-token" {
            continue;
        }
        let meta = secret.metadata.clone().unwrap_or_default();
        let Some(sa_name) = meta.annotations.get("kubernetes.io/service-account.name") else {
            continue;
        };
        // Only auto-generated tokens: the live service account lists the secret.
        let Ok(sa_rec) = objects
            .store
            .get(Kind::ServiceAccount, &rec.namespace, sa_name)
            .await
        else {
            continue;
        };
        if meta
            .annotations
            .get("kubernetes.io/service-account.uid")
            .is_some_and(|u| *u != sa_rec.uid)
        {
            continue;
        }
        let sa: ServiceAccount = crate::objects::decode(&sa_rec)?;
        if !sa.secrets.iter().any(|s| s.name == rec.name) {
            continue;
        }
        // Never a secret some pod in the namespace references.
        let pods = objects
            .store
            .list(ListQuery {
                kind: Kind::Pod,
                namespace: Some(&rec.namespace),
                after: None,
                limit: 0,
                filter: &all,
            })
            .await?;
        let mut referenced = false;
        for p in &pods.items {
            let pod: Pod = crate::objects::decode(p)?;
            if let Some(spec) = &pod.spec {
                badge_core::secret_refs::visit_pod_secret_refs(spec, |r| {
                    referenced |= r.name == rec.name;
                });
            }
        }
        if referenced {
            continue;
        }
        let action = legacy_cleanup::decide(
            &Candidate {
                created: rec.creation_timestamp,
                deleting: rec.deletion_timestamp.is_some(),
                last_used: meta.labels.get(LAST_USED_LABEL).map(String::as_str),
                invalid_since: meta.labels.get(INVALID_SINCE_LABEL).map(String::as_str),
            },
            period,
            now,
        );
        let precondition = Precondition {
            resource_version: Some(rec.resource_version),
            uid: None,
        };
        let op = match action {
            Action::Nothing => continue,
            Action::MarkInvalid(date) => {
                let mut s = secret.clone();
                s.metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .insert(INVALID_SINCE_LABEL.into(), date);
                let (labels, data) = crate::objects::encode(&s);
                tracing::info!(namespace = %rec.namespace, secret = %rec.name, "legacy token unused for the clean-up period: marked invalid");
                Op::Update {
                    kind: Kind::Secret,
                    namespace: rec.namespace.clone(),
                    name: rec.name.clone(),
                    precondition,
                    labels,
                    data,
                    deletion_timestamp: None,
                }
            }
            Action::Delete => {
                tracing::info!(namespace = %rec.namespace, secret = %rec.name, "legacy token invalid for the clean-up period: deleted");
                Op::Delete {
                    kind: Kind::Secret,
                    namespace: rec.namespace.clone(),
                    name: rec.name.clone(),
                    precondition,
                }
            }
        };
        match objects.store.apply(vec![op], now).await {
            Ok(_) => acted += 1,
            Err(Error::Conflict(_) | Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(acted)
}
