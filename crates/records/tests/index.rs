//! The index against a real Postgres: initial list, feed-driven updates from
//! another store instance, deletions, read-through.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "integration test: a failure fails the test; tokens and records are made at the wall-clock time real clients check"
)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use badge_core::Kind;
use badge_records::Index;
use badge_store::testing::fresh_database;
use badge_store::{Op, Precondition, Store, StoreOptions};

fn create(kind: Kind, ns: &str, name: &str) -> Op {
    Op::Create {
        kind,
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        data: vec![1, 2, 3],
    }
}

async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within 2 s");
}

#[tokio::test]
async fn follows_the_feed_of_another_writer() {
    let db = fresh_database().await;
    let writer = db.store().await;
    let now = SystemTime::now();
    writer
        .apply(
            vec![
                create(Kind::Namespace, "", "a"),
                create(Kind::Pod, "a", "p1"),
            ],
            now,
        )
        .await
        .unwrap();

    // The index reads through its own store, as another process would.
    let reader = Store::connect(&db.url, StoreOptions::default())
        .await
        .unwrap();
    let index = Index::start(reader, &[Kind::Pod, Kind::Node]);
    tokio::time::timeout(Duration::from_secs(5), index.ready())
        .await
        .expect("ready");
    assert!(index.get(Kind::Pod, "a", "p1").is_some(), "listed");
    assert!(
        index.get(Kind::Namespace, "", "a").is_none(),
        "kind not indexed"
    );

    writer
        .apply(vec![create(Kind::Node, "", "n1")], now)
        .await
        .unwrap();
    eventually(|| index.get(Kind::Node, "", "n1").is_some()).await;

    writer
        .apply(
            vec![Op::Delete {
                kind: Kind::Pod,
                namespace: "a".into(),
                name: "p1".into(),
                precondition: Precondition::default(),
            }],
            now,
        )
        .await
        .unwrap();
    eventually(|| index.get(Kind::Pod, "a", "p1").is_none()).await;
    assert_eq!(index.len(), 1);
}

#[tokio::test]
async fn lookup_reads_through_on_a_miss() {
    let db = fresh_database().await;
    let store = db.store().await;
    let index = Index::start(store.clone(), &[Kind::Node]);
    index.ready().await;
    assert!(index.lookup(Kind::Node, "", "n").await.unwrap().is_none());
    store
        .apply(vec![create(Kind::Node, "", "n")], SystemTime::now())
        .await
        .unwrap();
    // Whether or not the feed entry has been applied yet, lookup finds it.
    assert!(index.lookup(Kind::Node, "", "n").await.unwrap().is_some());
}

/// A stand-in sealer (the real one is the KEK in badge-keys): reversible, and
/// authenticated by a checksum, so another key fails to open.
struct XorSealer(u8);

impl badge_core::seal::DataSealer for XorSealer {
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let mut out: Vec<u8> = plaintext.iter().map(|b| b ^ self.0).collect();
        out.push(
            plaintext
                .iter()
                .chain(aad)
                .fold(self.0, |a, b| a.wrapping_add(*b)),
        );
        Ok(out)
    }
    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let (body, sum) = sealed.split_at(sealed.len().saturating_sub(1));
        let plain: Vec<u8> = body.iter().map(|b| b ^ self.0).collect();
        let want = plain
            .iter()
            .chain(aad)
            .fold(self.0, |a, b| a.wrapping_add(*b));
        if sum != [want] {
            return Err("authentication failed".into());
        }
        Ok(plain)
    }
}

async fn sealed_store(url: &str, key: u8) -> Store {
    Store::connect(
        url,
        StoreOptions {
            sealer: Some(std::sync::Arc::new(XorSealer(key))),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap()
}

fn secret(name: &str, data: &[u8]) -> Op {
    Op::Create {
        kind: Kind::Secret,
        namespace: "a".into(),
        name: name.into(),
        labels: BTreeMap::new(),
        data: data.to_vec(),
    }
}

fn delete(kind: Kind, ns: &str, name: &str) -> Op {
    Op::Delete {
        kind,
        namespace: ns.into(),
        name: name.into(),
        precondition: Precondition::default(),
    }
}

/// #13 finding 3: a feed entry the index cannot open (sealed under another
/// key-encryption key) must not freeze the index. Every later change still
/// applies (a deletion most of all), the unreadable object is not in the index,
/// and an older, readable version of it is removed rather than kept.
#[tokio::test]
async fn an_unreadable_entry_neither_stops_the_index_nor_stays_in_it() {
    let db = fresh_database().await;
    let _migrated = db.store().await;
    let ours = sealed_store(&db.url, 0x5a).await;
    let foreign = sealed_store(&db.url, 0x11).await;
    let now = SystemTime::now();
    ours.apply(
        vec![
            create(Kind::Namespace, "", "a"),
            create(Kind::Pod, "a", "p1"),
            secret("replaced", b"old-token"),
        ],
        now,
    )
    .await
    .unwrap();
    // Unreadable at load time: left out of the list, the rest loads.
    foreign
        .apply(vec![secret("loaded-bad", b"x")], now)
        .await
        .unwrap();

    let index = Index::start(ours.clone(), &[Kind::Pod, Kind::Secret]);
    tokio::time::timeout(Duration::from_secs(5), index.ready())
        .await
        .expect("ready");
    assert!(index.get(Kind::Pod, "a", "p1").is_some());
    assert!(index.get(Kind::Secret, "a", "replaced").is_some());
    assert!(index.get(Kind::Secret, "a", "loaded-bad").is_none());
    assert_eq!(index.unreadable(), 1, "counted once at load");

    // On the feed: a new version of a known Secret that cannot be read, a new
    // unreadable Secret, then a deletion.
    foreign
        .apply(
            vec![
                Op::Update {
                    kind: Kind::Secret,
                    namespace: "a".into(),
                    name: "replaced".into(),
                    precondition: Precondition::default(),
                    labels: BTreeMap::new(),
                    data: b"new-token".to_vec(),
                    deletion_timestamp: None,
                },
                secret("fresh-bad", b"y"),
            ],
            now,
        )
        .await
        .unwrap();
    ours.apply(vec![delete(Kind::Pod, "a", "p1")], now)
        .await
        .unwrap();
    let last = ours.current_revision().await.unwrap();
    let mut rx = index.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= last))
        .await
        .expect("the index went past the unreadable entries")
        .unwrap();
    assert!(
        index.get(Kind::Pod, "a", "p1").is_none(),
        "the delete applied"
    );
    assert!(
        index.get(Kind::Secret, "a", "replaced").is_none(),
        "the old version is not kept in place of one that cannot be read"
    );
    assert!(index.get(Kind::Secret, "a", "fresh-bad").is_none());
    assert_eq!(index.unreadable(), 3);
}

/// The health decision of finding 3: behind for longer than the bound → not
/// current; caught up → current again. A fixed clock.
#[test]
fn lag_watch_reports_an_index_stuck_behind_the_store() {
    use badge_records::index::LagWatch;
    let t0 = std::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut w = LagWatch::new(Duration::from_secs(5));
    assert!(w.observe(10, 10, at(0)), "current");
    assert!(w.observe(12, 10, at(0)), "behind, but only just");
    assert!(w.observe(12, 10, at(5_000)), "at the bound");
    assert!(
        !w.observe(13, 11, at(5_001)),
        "revision 12 still missing after 5 s"
    );
    assert!(w.observe(13, 13, at(6_000)), "caught up");
    // Steady progress, always a little behind: never reported.
    for i in 0..20 {
        assert!(w.observe(20 + i + 1, 20 + i, at(7_000 + i as u64 * 2_000)));
    }
    // Stuck again: the clock starts at the first revision missed.
    assert!(w.observe(100, 50, at(60_000)));
    assert!(w.observe(120, 50, at(64_000)));
    assert!(
        !w.observe(120, 99, at(65_001)),
        "100 not applied 5 s after it was seen"
    );
}
