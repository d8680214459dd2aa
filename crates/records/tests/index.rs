//! The index against a real Postgres: initial list, feed-driven updates from
//! another store instance, deletions, read-through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
