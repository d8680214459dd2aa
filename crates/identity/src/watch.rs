//! `WatchService.Watch`: list-then-watch over the change feed.

use std::collections::HashMap;

use badge_core::selector::LabelSelector;
use badge_core::{Error, Kind, Result, names};
use badge_proto::identity::{
    self as pb, EventType, Namespace, Node, Pod, Secret, ServiceAccount, WatchEvent, watch_event,
    watch_service_server::WatchService,
};
use badge_runtime::status;
use badge_store::{Change, ListQuery, Record};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::objects::{Object, Objects, decode, parse_resource_version};

/// How many feed entries one store read returns.
const BATCH: i64 = 500;
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
        Kind::SigningKey | Kind::Revocation => Err(Error::Internal(
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

/// Runs one watch until the client goes, the feed fails, or the server stops.
async fn run(objects: Objects, filter: Filter, from: Option<i64>, tx: Tx) {
    let mut stopping = objects.stopping.subscribe();
    tokio::select! {
        () = follow(&objects, filter, from, &tx) => {}
        () = async { let _ = stopping.wait_for(|s| *s).await; } => {
            let _ = tx
                .send(Err(Status::unavailable(
                    "identity is shutting down: watch again with the last resource_version",
                )))
                .await;
        }
    }
}

async fn follow(objects: &Objects, filter: Filter, from: Option<i64>, tx: &Tx) {
    let store = &objects.store;
    let mut wake = store.subscribe();
    let mut cursor = match from {
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
                    if ch.revision > listed_at
                        && filter.matches(&ch.record)
                        && !send(tx, change_event(ch)).await
                    {
                        return;
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
            high
        }
    };
    loop {
        let batch = match store.changes_since(cursor, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                // OUT_OF_RANGE tells the client to relist; UNAVAILABLE to resume later.
                let _ = send(tx, Err(e)).await;
                return;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            continue;
        }
        for ch in &batch {
            cursor = ch.revision;
            if filter.matches(&ch.record) && !send(tx, change_event(ch)).await {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl WatchService for Objects {
    type WatchStream = ReceiverStream<std::result::Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        let (filter, from) = parse(&req.into_inner()).map_err(status)?;
        if let Some(rv) = from {
            // Answer a compacted revision up front, before the stream opens.
            self.store.changes_since(rv, 1).await.map_err(status)?;
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(self.clone(), filter, from, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
