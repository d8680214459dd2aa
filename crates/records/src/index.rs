//! An in-memory copy of the objects of some kinds, kept current by following the
//! change feed (list, then watch from the listed revision). The token services look
//! objects up here instead of in the database; a miss reads through to the store,
//! so an object created a moment ago is never reported missing.

use std::collections::{HashMap, HashSet};

pub use crate::entry::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use badge_core::{Error, Kind, Result};
use badge_store::{EventType, FeedEntry, Record, Store, Unreadable};
use tokio::sync::watch;

/// Objects by kind, namespace and name, packed ([`Entry`]): looked up with
/// `&str`s, so a hot-path lookup allocates nothing.
#[derive(Default)]
struct Objects {
    by_kind: HashMap<Kind, HashMap<Box<str>, HashSet<Entry>>>,
    len: usize,
    /// Bumped on every change of a kind, so derived views (the RBAC policy) know
    /// when to rebuild without watching every unrelated change.
    generations: HashMap<Kind, u64>,
}

impl Objects {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Entry> {
        self.by_kind
            .get(&kind)?
            .get(namespace)?
            .get(name.as_bytes())
    }

    fn insert(&mut self, r: Record) {
        *self.generations.entry(r.kind).or_default() += 1;
        let namespaces = self.by_kind.entry(r.kind).or_default();
        let names = match namespaces.get_mut(r.namespace.as_str()) {
            Some(names) => names,
            None => namespaces.entry(r.namespace.as_str().into()).or_default(),
        };
        if names.replace(Entry::new(r)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, kind: Kind, namespace: &str, name: &str) {
        *self.generations.entry(kind).or_default() += 1;
        let Some(namespaces) = self.by_kind.get_mut(&kind) else {
            return;
        };
        let Some(names) = namespaces.get_mut(namespace) else {
            return;
        };
        if names.remove(name.as_bytes()) {
            self.len -= 1;
            if names.is_empty() {
                namespaces.remove(namespace);
            }
        }
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&str, &Entry)> {
        self.by_kind.get(&kind).into_iter().flat_map(|namespaces| {
            namespaces
                .iter()
                .flat_map(|(ns, names)| names.iter().map(move |e| (&**ns, e)))
        })
    }
}

struct Inner {
    store: Store,
    objects: RwLock<Objects>,
    /// The feed revision applied so far; 0 until the first list completes.
    revision: watch::Sender<i64>,
    /// Objects and feed entries left out because their data could not be opened.
    unreadable: AtomicU64,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

/// An [`Index`] that may have been dropped (metrics callbacks hold these).
#[derive(Clone)]
pub struct WeakIndex(std::sync::Weak<Inner>);

impl WeakIndex {
    pub fn upgrade(&self) -> Option<Index> {
        self.0.upgrade().map(|inner| Index { inner })
    }
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

impl Index {
    /// Starts following the feed for `kinds`. Call [`Index::ready`] before relying
    /// on [`Index::get`] alone.
    pub fn start(store: Store, kinds: &[Kind]) -> Index {
        let (revision, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            store,
            objects: RwLock::new(Objects::default()),
            revision,
            unreadable: AtomicU64::new(0),
            task: std::sync::Mutex::new(None),
        });
        let kinds: Vec<Kind> = kinds.to_vec();
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                match follow(&inner, &kinds).await {
                    Ok(()) => return,
                    Err(Error::OutOfRange(m)) => {
                        tracing::info!(reason = %m, "index fell behind the feed: relisting");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "index: retrying");
                        drop(inner);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        if let Ok(mut t) = inner.task.lock() {
            *t = Some(task);
        }
        Index { inner }
    }

    /// Resolves once the initial list has been loaded.
    pub async fn ready(&self) {
        let mut rx = self.inner.revision.subscribe();
        let _ = rx.wait_for(|r| *r > 0).await;
    }

    /// The feed revision applied so far.
    pub fn revision(&self) -> i64 {
        *self.inner.revision.borrow()
    }

    /// Changes whenever a batch of feed entries has been applied.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.revision.subscribe()
    }

    /// From memory only.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Record> {
        let map = self.inner.objects.read().ok()?;
        map.get(kind, namespace, name)
            .map(|e| e.record(kind, namespace))
    }

    /// Applies `f` to the object in memory without copying it (the hot review path
    /// needs only a uid and a deletion timestamp, not the whole pod spec).
    pub fn map<T>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&Entry) -> T,
    ) -> Option<T> {
        let map = self.inner.objects.read().ok()?;
        map.get(kind, namespace, name).map(f)
    }

    /// From memory; on a miss, from the store (an object may be newer than the
    /// feed entries applied so far). `None` when it does not exist.
    pub async fn lookup(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Record>> {
        if let Some(r) = self.get(kind, namespace, name) {
            return Ok(Some(r));
        }
        match self.inner.store.get(kind, namespace, name).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the object from the store, bypassing memory (to confirm a surprising
    /// answer, e.g. a uid mismatch, before refusing a request).
    pub async fn fresh(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Record>> {
        match self.inner.store.get(kind, namespace, name).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object of `kind` in memory.
    pub fn list(&self, kind: Kind) -> Vec<Record> {
        self.inner
            .objects
            .read()
            .map(|m| m.of_kind(kind).map(|(ns, e)| e.record(kind, ns)).collect())
            .unwrap_or_default()
    }

    /// Calls `f` with the applied revision and the objects of `kind` (only those of
    /// `namespace` when given; in no particular order), all read under one lock, so
    /// the objects are exactly the state at that revision (see `follow`: the
    /// revision is published before the lock is released). `None` if the lock is
    /// poisoned.
    pub fn read_kind<T>(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        f: impl FnOnce(i64, &mut dyn Iterator<Item = (&str, &Entry)>) -> T,
    ) -> Option<T> {
        let map = self.inner.objects.read().ok()?;
        let revision = *self.inner.revision.borrow();
        Some(match namespace {
            Some(ns) => {
                let names = map.by_kind.get(&kind).and_then(|n| n.get(ns));
                f(revision, &mut names.into_iter().flatten().map(|e| (ns, e)))
            }
            None => f(revision, &mut map.of_kind(kind)),
        })
    }

    /// The store this index follows.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A number that changes whenever an object of one of `kinds` changes.
    pub fn generation(&self, kinds: &[Kind]) -> u64 {
        self.inner
            .objects
            .read()
            .map(|m| {
                kinds
                    .iter()
                    .map(|k| m.generations.get(k).copied().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// How many feed revisions the store has announced that this index has not
    /// applied yet (0 when current).
    pub fn feed_lag(&self) -> i64 {
        let announced = *self.inner.store.subscribe().borrow();
        (announced - self.revision()).max(0)
    }

    /// How many objects (at load) and feed entries were left out of the index
    /// because their data could not be opened (see [`Unreadable`]).
    pub fn unreadable(&self) -> u64 {
        self.inner.unreadable.load(Ordering::Relaxed)
    }

    /// The latest revision this process knows the store has (announced by the
    /// change feed, or `polled` by a health probe straight from the database —
    /// which also catches a dead LISTEN connection) against what the index has
    /// applied, for [`LagWatch::observe`].
    pub fn progress(&self, polled: i64) -> (i64, i64) {
        let announced = *self.inner.store.subscribe().borrow();
        (announced.max(polled), self.revision())
    }

    /// A handle that does not keep the index (and its feed follower) alive.
    pub fn downgrade(&self) -> WeakIndex {
        WeakIndex(Arc::downgrade(&self.inner))
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.inner.objects.read().map(|m| m.len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// List every kind, then apply the feed from the oldest listed revision, skipping
/// entries a kind's own snapshot already contained. Returns only on error (or when
/// the store is gone).
async fn follow(inner: &Inner, kinds: &[Kind]) -> Result<()> {
    let store = &inner.store;
    let mut fresh = Objects::default();
    let mut listed_at = HashMap::new();
    // Each kind is streamed into its own packed map (the full list is never held as
    // records), all kinds at once: decoding rows is most of the cost of a large
    // load and spreads over the runtime's threads.
    let scans: Vec<_> = kinds
        .iter()
        .map(|kind| {
            let (store, kind) = (store.clone(), *kind);
            tokio::spawn(async move {
                let mut part = Objects::default();
                let mut bad = Vec::new();
                let revision = store
                    .scan(kind, |r| part.insert(r), |u| bad.push(u))
                    .await?;
                Ok::<_, Error>((kind, part, bad, revision))
            })
        })
        .collect();
    for scan in scans {
        let (kind, part, bad, revision) = scan
            .await
            .map_err(|e| Error::Internal(format!("index load task: {e}")))??;
        // Never inserted: an object that cannot be read is not in the index.
        for u in &bad {
            left_out(inner, u);
        }
        fresh.len += part.len;
        if let Some(map) = part.by_kind.into_values().next() {
            fresh.by_kind.insert(kind, map);
        }
        listed_at.insert(kind, revision);
    }
    let wanted: HashSet<Kind> = kinds.iter().copied().collect();
    let cursor = listed_at.values().copied().min().unwrap_or(0);
    let high_listed = listed_at.values().copied().max().unwrap_or(0);
    if let Ok(mut map) = inner.objects.write() {
        // Generations only grow, even across a relist.
        for (kind, g) in &map.generations {
            *fresh.generations.entry(*kind).or_default() += g + 1;
        }
        *map = fresh;
    }
    // Served by the store's feed relay: every index (and watch stream) of this
    // process shares one database read per change.
    let mut follower = store.follow(cursor);
    loop {
        let step = follower.next(1000).await?;
        let batch = step.entries;
        if batch.is_empty() {
            // Publish progress (at least 1 so `ready` resolves on an empty store).
            // An empty step through `step.through` means everything up to that
            // revision is applied.
            let high = high_listed.max(step.through).max(1);
            inner.revision.send_if_modified(|r| {
                let changed = *r < high;
                if changed {
                    *r = high;
                }
                changed
            });
            if !follower.changed().await {
                return Ok(());
            }
            continue;
        }
        let mut guard = inner.objects.write().ok();
        if let Some(map) = guard.as_mut() {
            for entry in &batch {
                let (kind, revision) = match &**entry {
                    FeedEntry::Change(ch) => (ch.record.kind, ch.revision),
                    FeedEntry::Unreadable(u) => (u.kind, u.revision),
                };
                if !wanted.contains(&kind) || revision <= listed_at.get(&kind).copied().unwrap_or(0)
                {
                    continue;
                }
                match &**entry {
                    FeedEntry::Change(ch) => match ch.event {
                        EventType::Added | EventType::Modified => {
                            map.insert(ch.record.clone());
                        }
                        EventType::Deleted => {
                            map.remove(kind, &ch.record.namespace, &ch.record.name);
                        }
                    },
                    // Security: fail closed. The entry cannot stop the feed (every
                    // later change, deletions and revocations included, must still
                    // apply), and the object must not stay in the index as it was
                    // before this version: a Secret whose token was just changed,
                    // or an object just deleted, would keep authenticating. So it
                    // is removed, whatever the event; a read-through of it fails.
                    FeedEntry::Unreadable(u) => {
                        map.remove(kind, &u.namespace, &u.name);
                        left_out(inner, u);
                    }
                }
            }
        }
        let cursor = step.through;
        // Subscribers hear of every applied batch, even one that does not move
        // the published revision (on an empty store `ready` publishes 1 before
        // revision 1 exists; the key follower must still see that write).
        // Published while the map is still locked: a reader holding the read lock
        // then sees exactly the state of the revision it reads
        // ([`Index::read_kind`]: a List's resource_version must be exact, or a
        // watch started from it would skip or repeat events).
        inner.revision.send_modify(|r| *r = (*r).max(cursor));
        drop(guard);
    }
}

/// Counts an object the index leaves out and logs it, once per feed entry (or
/// per load): its key, never its data.
fn left_out(inner: &Inner, u: &Unreadable) {
    inner.unreadable.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        kind = u.kind.as_str(),
        namespace = %u.namespace,
        name = %u.name,
        revision = u.revision,
        resource_version = u.resource_version,
        event = ?u.event,
        reason = %u.reason,
        "index: object cannot be read (is every service on the same key-encryption key?): left out of the index"
    );
}

/// Decides whether an index has fallen too far behind the store: "behind" is a
/// revision the store had (announced by the feed or polled from the database)
/// that the index has not applied within `bound` of first seeing it. Pure: the
/// caller passes the time.
///
/// One revision is tracked at a time: once the index reaches it, the clock starts
/// again at the latest revision then seen. A stuck index (a catch-up that never
/// returns, a dead feed) is reported `bound` after the first revision it missed;
/// an index that keeps up only slowly is reported within `2 × bound`.
#[derive(Debug, Clone)]
pub struct LagWatch {
    bound: Duration,
    /// The revision the index has yet to reach, and when it was first seen.
    behind: Option<(i64, Instant)>,
}

impl LagWatch {
    pub fn new(bound: Duration) -> Self {
        LagWatch {
            bound,
            behind: None,
        }
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// At `now` the store was at `latest` and the index had applied `applied`:
    /// whether the index is within the bound (current enough to serve).
    pub fn observe(&mut self, latest: i64, applied: i64, now: Instant) -> bool {
        if self.behind.is_some_and(|(target, _)| applied >= target) {
            self.behind = None;
        }
        if applied >= latest {
            self.behind = None;
            return true;
        }
        let (_, since) = *self.behind.get_or_insert((latest, now));
        now.saturating_duration_since(since) <= self.bound
    }
}
