//! Postgres: the store keeps to its indexes while a fresh database fills up.
//!
//! Autovacuum's ANALYZE runs a minute apart at best, and a fleet rolling out
//! fills `objects` and `changes` by thousands of rows a second in between. With
//! statistics that still say "empty", Postgres planned a batch's check as a hash
//! join over a whole-table scan and the relay's feed read as a scan and sort, and
//! prepared statements kept those plans as the tables grew: every batch read
//! every row, and the write rate halved within seconds. This test fills a fresh
//! database the way a burst of creates, updates and deletes does, with a
//! follower reading the feed, then counts the whole-table scans Postgres
//! recorded: there must be none.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "integration test: a failure fails the test"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use badge_core::Kind;
use badge_store::testing::{Backend, TestDatabase, fresh_database_on};
use badge_store::{Op, Precondition, Store};
use sqlx::Connection;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn create(kind: Kind, namespace: &str, name: String) -> Op {
    Op::Create {
        kind,
        namespace: namespace.to_owned(),
        name,
        labels: BTreeMap::from([("app".to_owned(), "fill".to_owned())]),
        data: vec![0x5a; 200],
    }
}

/// `rounds` rounds of 64 concurrent single creates (runs, in batches), then an
/// update and a delete of a few of each round's objects.
async fn fill(store: &Store, rounds: usize) {
    for round in 0..rounds {
        let creates = (0..64).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .apply(
                        vec![create(
                            Kind::ServiceAccount,
                            "team",
                            format!("sa-{round}-{i}"),
                        )],
                        now(),
                    )
                    .await
            })
        });
        let mut made = Vec::new();
        for c in creates.collect::<Vec<_>>() {
            made.push(c.await.unwrap().unwrap().remove(0));
        }
        for change in made.iter().take(8) {
            let r = &change.record;
            let precondition = Precondition {
                resource_version: Some(r.resource_version),
                uid: None,
            };
            if r.name.ends_with('0') || r.name.ends_with('2') {
                store
                    .apply(
                        vec![Op::Delete {
                            kind: r.kind,
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            precondition,
                        }],
                        now(),
                    )
                    .await
                    .unwrap();
            } else {
                store
                    .apply(
                        vec![Op::Update {
                            kind: r.kind,
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            precondition,
                            labels: BTreeMap::new(),
                            data: vec![0x5b; 200],
                            deletion_timestamp: None,
                        }],
                        now(),
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

/// (table, whole-table scans, index scans) of `objects` and `changes`, once every
/// store connection to the database has ended: a backend flushes its
/// statistics as it exits, so they are ended here.
async fn scans(db: &TestDatabase) -> Vec<(String, i64, i64)> {
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name LIKE 'badge-store%'",
    )
    .bind(db.name())
    .execute(&mut admin)
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE 'badge-store%'",
        )
        .bind(db.name())
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{left} store connections still open 30 s after they were terminated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE relname IN ('objects', 'changes') ORDER BY relname",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(scans.len(), 2, "{scans:?}");
    scans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_database_is_read_through_its_indexes() {
    let db = fresh_database_on(Backend::Postgres).await;
    // Migrated by a store of its own: building the tables' indexes scans them,
    // which is not what is measured.
    drop(db.store().await);
    let before = scans(&db).await;

    let store = db.store().await;
    store
        .apply(
            vec![Op::Create {
                kind: Kind::Namespace,
                namespace: String::new(),
                name: "team".into(),
                labels: BTreeMap::new(),
                data: b"ns".to_vec(),
            }],
            now(),
        )
        .await
        .unwrap();
    // A follower reads the feed as it grows (the relay's read).
    let mut follower = store.follow(0);
    let following = tokio::spawn(async move {
        loop {
            let batch = follower.next(500).await.unwrap();
            if batch.entries.is_empty() && !follower.changed().await {
                return;
            }
        }
    });
    fill(&store, 60).await;
    store
        .get(Kind::ServiceAccount, "team", "sa-59-63")
        .await
        .unwrap();
    store.next_deletion(Kind::Pod).await.unwrap();
    let written = store.current_revision().await.unwrap();
    assert!(written > 60 * 64, "only {written} revisions written");
    following.abort();
    drop(store);

    let after = scans(&db).await;
    for ((table, seq_before, idx_before), (_, seq, idx)) in before.iter().zip(&after) {
        // The statistics did arrive (every write checks through an index).
        assert!(
            idx > idx_before,
            "no index scans recorded on {table}: {before:?} → {after:?}"
        );
        assert_eq!(
            seq - seq_before,
            0,
            "{table} was scanned whole while the database filled: {before:?} → {after:?}"
        );
    }
}
