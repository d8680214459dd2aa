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
    let mut wake = store.subscribe();
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
    let mut cursor = page.revision;
    loop {
        let batch = store.changes_since(cursor, 500).await?;
        if batch.is_empty() {
            if wake.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        for ch in batch {
            cursor = ch.revision;
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
/// deadline, waking early on any write (a new deletion may be sooner).
pub async fn pod_reaper(objects: Objects) {
    let mut wake = objects.store.subscribe();
    loop {
        if let Err(e) = reap_once(&objects).await {
            tracing::warn!(error = %e, "pod reaper");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let sleep = match objects.store.next_deletion(Kind::Pod).await {
            Ok(Some(at)) => at
                .duration_since(objects.clock.now())
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(60)),
            Ok(None) => Duration::from_secs(60),
            Err(_) => RETRY,
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {},
            changed = wake.changed() => if changed.is_err() { return },
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
