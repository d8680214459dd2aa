//! Get and List answered from the process's index (the change-feed-fed copy the
//! guard already keeps for RBAC and bearer tokens) instead of the database, with
//! the guarantee Kubernetes gives since its consistent-reads-from-cache work: a
//! read returns data at least as new as the store's revision at the moment the
//! read arrived. A client that wrote and then reads sees its write, on any
//! replica, although the replica's index hears of the write only through the feed.
//!
//! How: on arrival a read asks for the store's current revision, then waits until
//! the index has applied it, then reads memory. Asking costs one tiny query, and
//! it is shared: at most one is in flight, and every read that arrived before it
//! was sent is answered by it ([`RevisionFetch`]), so under load one query serves
//! many reads. A read falls back to the store (today's path, same answers) when
//! the kind is not indexed, the index stays behind for [`CACHE_WAIT`], the index
//! has left out an object it could not open (the store reports that object as an
//! error; memory would silently not have it), or a Get misses (an absent object
//! is rare on the hot path, and the store's NotFound is the authority).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use badge_core::selector::LabelSelector;
use badge_core::{Error, Kind, Result};
use badge_records::codec::{Object, decode, decode_entry};
use badge_records::{Entry, Index};
use badge_store::Store;
use opentelemetry::KeyValue;
use tokio::sync::watch;

/// How long a read waits for the index to apply the store's current revision
/// before it reads the store instead. The index normally applies a change within
/// milliseconds of its commit; a second means it is stuck (a lost LISTEN
/// connection, a relist), and the read must not stall behind it.
pub const CACHE_WAIT: Duration = Duration::from_secs(1);

/// Reads served from the index, or from the store and why.
#[derive(Clone)]
pub struct Cache {
    index: Index,
    kinds: Arc<[Kind]>,
    fetch: Arc<RevisionFetch>,
    wait: Duration,
}

impl Cache {
    /// Reads of `kinds` (those `index` holds) are served from `index`.
    pub fn new(index: Index, kinds: &[Kind]) -> Cache {
        Cache {
            fetch: Arc::new(RevisionFetch::new(index.store().clone())),
            index,
            kinds: kinds.into(),
            wait: CACHE_WAIT,
        }
    }

    fn store(&self) -> &Store {
        self.index.store()
    }

    pub async fn get<T: Object>(&self, namespace: &str, name: &str) -> Result<T> {
        match self.fresh(T::KIND).await {
            Ok(()) => {
                let hit = self.index.map(T::KIND, namespace, name, |e| {
                    decode_entry::<T>(e, namespace)
                });
                if let Some(obj) = hit {
                    count("cache", "hit");
                    return obj;
                }
                count("store", "miss");
            }
            Err(reason) => count("store", reason),
        }
        decode(&self.store().get(T::KIND, namespace, name).await?)
    }

    /// A page as [`Store::list`] would answer it, decoded; `None` when the store
    /// must answer (the reason is counted).
    pub async fn list<T: Object>(
        &self,
        namespace: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
        selector: &LabelSelector,
    ) -> Option<Result<Page<T>>> {
        if let Err(reason) = self.fresh(T::KIND).await {
            count("store", reason);
            return None;
        }
        let read = |revision, objects: &mut dyn Iterator<Item = (&str, &Entry)>| {
            page(revision, objects, after, limit, selector)
        };
        let page = self.index.read_kind(T::KIND, namespace, read);
        match page {
            Some(_) => count("cache", "list"),
            None => count("store", "poisoned"),
        }
        page
    }

    /// Ok when the index holds `kind` and has applied at least the store's
    /// revision as of now; else why the store must answer.
    async fn fresh(&self, kind: Kind) -> std::result::Result<(), &'static str> {
        if !self.kinds.contains(&kind) {
            return Err("not_indexed");
        }
        // Security/correctness: an object the index could not open is absent from
        // memory; the store names it as an error instead of leaving it out.
        if self.index.unreadable() > 0 {
            return Err("unreadable");
        }
        let Ok(revision) = self.fetch.current().await else {
            return Err("revision_unavailable");
        };
        let mut applied = self.index.subscribe();
        match tokio::time::timeout(self.wait, applied.wait_for(|r| *r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err("behind"),
        }
    }
}

/// `badge.identity.reads` {served = cache | store, reason}.
fn count(served: &'static str, reason: &'static str) {
    static C: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    C.get_or_init(|| {
        badge_runtime::telemetry::metrics::meter()
            .u64_counter("badge.identity.reads")
            .with_description(
                "Get and List answers, by where they were served from (cache | store) and why",
            )
            .build()
    })
    .add(
        1,
        &[
            KeyValue::new("served", served),
            KeyValue::new("reason", reason),
        ],
    );
}

/// A decoded page.
pub struct Page<T> {
    /// Ordered by (namespace, name), bytewise.
    pub items: Vec<T>,
    /// True when a further matching item exists after the last one.
    pub more: bool,
    /// The revision of exactly the state listed.
    pub revision: i64,
}

/// One page as [`Store::list`] would answer it at `revision`: ordered by
/// (namespace, name) bytewise (the store's `COLLATE "C"` order), after the cursor,
/// matching `selector`, at most `limit` (0: all). Only the page's own objects are
/// decoded; ordering and the cursor compare the packed names in place.
/// The sort key of an object: (namespace, name) as bytes.
fn key<'a>(namespace: &'a str, entry: &'a Entry) -> (&'a [u8], &'a [u8]) {
    (namespace.as_bytes(), entry.name_bytes())
}

fn page<T: Object>(
    revision: i64,
    objects: &mut dyn Iterator<Item = (&str, &Entry)>,
    after: Option<&(String, String)>,
    limit: usize,
    selector: &LabelSelector,
) -> Result<Page<T>> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut keyed: Vec<(&str, &Entry)> = objects
        .filter(|(ns, e)| {
            after.is_none_or(|(ans, aname)| key(ns, e) > (ans.as_bytes(), aname.as_bytes()))
        })
        .collect();
    keyed.sort_unstable_by(|a, b| key(a.0, a.1).cmp(&key(b.0, b.1)));
    let mut items = Vec::new();
    let mut more = false;
    for (ns, e) in keyed {
        if !selector.matches_with(|k| e.label(k)) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(decode_entry::<T>(e, ns)?);
    }
    Ok(Page {
        items,
        more,
        revision,
    })
}

/// The store's current revision, fetched at most once at a time for every waiting
/// read. A read needs a fetch that *started after it arrived* (an earlier one may
/// predate a write the reader already saw acknowledged); reads that arrive while
/// a fetch is in flight share the next one, which starts as soon as the current
/// one returns. Under load one round trip answers every read that arrived during
/// the previous one, so the queries stay about one per round-trip time however
/// many reads there are.
struct RevisionFetch {
    store: Store,
    state: Mutex<FetchState>,
    /// (number of the last finished fetch, its answer).
    done: watch::Sender<(u64, Option<Result<i64>>)>,
}

#[derive(Default)]
struct FetchState {
    /// Number of the last fetch started.
    started: u64,
    /// Highest fetch number a waiting read needs.
    wanted: u64,
    running: bool,
}

impl RevisionFetch {
    fn new(store: Store) -> RevisionFetch {
        RevisionFetch {
            store,
            state: Mutex::new(FetchState::default()),
            done: watch::channel((0, None)).0,
        }
    }

    async fn current(self: &Arc<Self>) -> Result<i64> {
        let mut done = self.done.subscribe();
        let (need, lead) = {
            let mut s = self
                .state
                .lock()
                .map_err(|_| Error::Internal("revision fetch state poisoned".into()))?;
            let need = s.started + 1;
            s.wanted = s.wanted.max(need);
            let lead = !s.running;
            if lead {
                s.running = true;
                s.started = need;
            }
            (need, lead)
        };
        if lead {
            // A task of its own: a read that is cancelled (its client went away)
            // must not strand the others waiting on this fetch.
            tokio::spawn(self.clone().drive(need));
        }
        let answer = done
            .wait_for(|(n, _)| *n >= need)
            .await
            .map_err(|_| Error::Unavailable("revision fetch ended".into()))?;
        match &answer.1 {
            Some(r) => r.clone(),
            None => Err(Error::Internal("revision fetch without an answer".into())),
        }
    }

    /// Runs fetch `n`, then the next ones as long as reads are waiting for them.
    async fn drive(self: Arc<Self>, mut n: u64) {
        loop {
            // Bounded: a query stuck on a frozen primary must not hold every read
            // of the process (they fall back to the store, which fails over).
            let answer = tokio::time::timeout(CACHE_WAIT, self.store.current_revision())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable(
                        "store unavailable: reading its revision timed out".into(),
                    ))
                });
            self.done.send_replace((n, Some(answer)));
            let Ok(mut s) = self.state.lock() else { return };
            if s.wanted > s.started {
                s.started += 1;
                n = s.started;
            } else {
                s.running = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use badge_core::clock::from_unix_micros;
    use badge_proto::identity as pb;
    use badge_store::Record;
    use prost::Message as _;

    fn entry(name: &str, labels: &[(&str, &str)]) -> Entry {
        Entry::new(Record {
            kind: Kind::ServiceAccount,
            namespace: String::new(),
            name: name.into(),
            uid: "7c4b1f3e-2f6a-4d5b-9a0e-1c2d3e4f5a6b".into(),
            resource_version: 7,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            data: pb::ServiceAccount::default().encode_to_vec(),
            creation_timestamp: from_unix_micros(1_790_000_000_000_000),
            deletion_timestamp: None,
        })
    }

    fn names(p: &Page<pb::ServiceAccount>) -> Vec<String> {
        p.items
            .iter()
            .map(|sa| {
                let m = sa.metadata.as_ref().expect("metadata");
                format!("{}/{}", m.namespace, m.name)
            })
            .collect()
    }

    /// A page from memory orders, resumes, filters and reports `more` as the
    /// store's page does (bytewise (namespace, name); `more` only when a further
    /// match exists), with the server-managed metadata filled in.
    #[test]
    fn pages_match_the_stores_order_and_cursor() {
        let objects = [
            ("b", entry("x", &[])),
            ("a", entry("z", &[("app", "web")])),
            ("a", entry("a-1", &[("app", "web")])),
            ("a", entry("a.1", &[])),
            ("a", entry("B", &[("app", "web")])),
            ("", entry("root", &[("app", "web")])),
        ];
        let all = LabelSelector::parse_field("label_selector", "").expect("selector");
        let web = LabelSelector::parse_field("label_selector", "app=web").expect("selector");
        type Case<'a> = (
            Option<(&'a str, &'a str)>,
            usize,
            &'a LabelSelector,
            &'a [&'a str],
            bool,
        );
        let cases: &[Case] = &[
            // Bytewise: "" < "a" < "b"; "B" < "a-1" < "a.1" < "z".
            (
                None,
                0,
                &all,
                &["/root", "a/B", "a/a-1", "a/a.1", "a/z", "b/x"],
                false,
            ),
            (None, 2, &all, &["/root", "a/B"], true),
            (Some(("a", "B")), 2, &all, &["a/a-1", "a/a.1"], true),
            (Some(("a", "a.1")), 2, &all, &["a/z", "b/x"], false),
            (Some(("b", "x")), 2, &all, &[], false),
            (Some(("a", "b")), 1, &all, &["a/z"], true),
            (None, 4, &web, &["/root", "a/B", "a/a-1", "a/z"], false),
            (None, 3, &web, &["/root", "a/B", "a/a-1"], true),
            (Some(("a", "a-1")), 1, &web, &["a/z"], false),
        ];
        for (after, limit, selector, want, more) in cases {
            let after = after.map(|(a, b)| (a.to_string(), b.to_string()));
            let mut it = objects.iter().map(|(ns, e)| (*ns, e));
            let p: Page<pb::ServiceAccount> =
                page(42, &mut it, after.as_ref(), *limit, selector).expect("page");
            assert_eq!(names(&p), *want, "after {after:?} limit {limit}");
            assert_eq!(p.more, *more, "after {after:?} limit {limit}");
            assert_eq!(p.revision, 42);
        }
        let mut it = objects.iter().map(|(ns, e)| (*ns, e));
        let p: Page<pb::ServiceAccount> = page(42, &mut it, None, 1, &all).expect("page");
        let m = p.items[0].metadata.clone().expect("metadata");
        assert_eq!(
            (m.uid.as_str(), m.resource_version.as_str()),
            ("7c4b1f3e-2f6a-4d5b-9a0e-1c2d3e4f5a6b", "7")
        );
        assert!(m.creation_timestamp.is_some() && m.deletion_timestamp.is_none());
    }
}
