//! The feed relay and its followers (issue 17 goal 3): `Store::follow` serves
//! every follower from one read of the feed per wake, so the database's work per
//! change does not grow with the followers, while each follower still sees every
//! change exactly once, in revision order, from any revision (the ones older than
//! the relay's ring read from the database, and get OutOfRange after compaction).
//! Each test runs on both backends (`postgres::NAME`, `sqlite::NAME`).
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "integration test: a failure fails the test"
)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use badge_core::{Error, Kind};
use badge_store::testing::{Backend, TestDatabase, fresh_database_on};
use badge_store::{Change, FeedEntry, Follower, Op, Store, StoreOptions};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn create(kind: Kind, ns: &str, name: &str) -> Op {
    Op::Create {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        labels: BTreeMap::new(),
        data: format!("{}:{ns}/{name}", kind.as_str()).into_bytes(),
    }
}

fn create_ns(name: &str) -> Op {
    create(Kind::Namespace, "", name)
}

/// A migrated database and a store on it whose relay keeps `ring` entries.
async fn setup(b: Backend, ring: usize) -> (TestDatabase, Store) {
    let db = fresh_database_on(b).await;
    drop(db.store().await);
    let store = Store::connect(
        &db.url,
        StoreOptions {
            feed_ring: ring,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    (db, store)
}

/// Follows until the cursor reaches `until`; `pause` between steps makes a slow
/// follower. Returns the revisions seen, with their changes.
async fn follow_until(
    mut f: Follower,
    until: i64,
    limit: usize,
    pause: Duration,
) -> Vec<(i64, Change)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while f.cursor() < until {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower stuck at {} (< {until})",
            f.cursor()
        );
        let batch = f.next(limit).await.unwrap();
        assert!(batch.entries.len() <= limit);
        if batch.entries.is_empty() {
            tokio::time::timeout(Duration::from_secs(10), f.changed())
                .await
                .expect("no wake within 10 s");
            continue;
        }
        for e in &batch.entries {
            match &**e {
                FeedEntry::Change(c) => seen.push((c.revision, c.clone())),
                FeedEntry::Unreadable(u) => panic!("unreadable entry {u:?}"),
            }
        }
        assert!(batch.through >= seen.last().unwrap().0);
        assert_eq!(f.cursor(), batch.through);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    seen
}

/// `seen` is exactly the feed after `after` up to `until`: every revision once,
/// ascending, no gaps, each as the database has it.
async fn assert_exact(store: &Store, seen: &[(i64, Change)], after: i64, until: i64, who: &str) {
    let revisions: Vec<i64> = seen.iter().map(|(r, _)| *r).collect();
    let want: Vec<i64> = (after + 1..=until).collect();
    assert_eq!(revisions, want, "{who}: revisions");
    let feed = store.changes_since(after, 0).await.unwrap();
    let feed: Vec<&Change> = feed.iter().filter(|c| c.revision <= until).collect();
    assert_eq!(feed.len(), seen.len(), "{who}");
    for (db, (_, mine)) in feed.iter().zip(seen) {
        assert_eq!(*db, mine, "{who}: change {}", db.revision);
    }
}

async fn writer(store: Store, i: usize, rounds: usize) -> Vec<Change> {
    let mut acked = Vec::new();
    for r in 0..rounds {
        // Some requests of two ops: one transaction, two revisions.
        let mut ops = vec![create(Kind::ServiceAccount, "ns", &format!("sa-{i}-{r}"))];
        if r % 3 == 0 {
            ops.push(create(Kind::Secret, "ns", &format!("s-{i}-{r}")));
        }
        acked.extend(store.apply(ops, t(1)).await.unwrap());
    }
    acked
}

/// Many writers on two stores (two processes' writer tasks) while followers of
/// one store follow: one from before the first write, one started mid-way from a
/// revision, one slow with a small limit (falls off the 64-entry ring and reads
/// the database), one started from 0 after the writes (older than the ring: the
/// database, then the ring). Each sees every acknowledged change exactly once, in
/// revision order, with no gaps.
async fn followers_see_every_acknowledged_change_once_in_order(b: Backend) {
    let (db, store) = setup(b, 64).await;
    let other = db.store().await;
    store.apply(vec![create_ns("ns")], t(0)).await.unwrap();
    let start = store.current_revision().await.unwrap();

    // 6 writers x 40 rounds, every third with two ops: 324 revisions.
    let until = start + 6 * 40 + 6 * 14;
    let early = tokio::spawn(follow_until(
        store.follow(start),
        until,
        500,
        Duration::ZERO,
    ));
    let writers: Vec<_> = (0..6)
        .map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(writer(s, i, 40))
        })
        .collect();
    // Mid-way: once some writes are in, from a revision the writers passed.
    let mid = loop {
        let now = store.current_revision().await.unwrap();
        if now >= start + 60 {
            break now - 20;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let last = store.current_revision().await.unwrap();
    assert_eq!(last, until);
    assert_eq!(acked.len(), usize::try_from(last - start).unwrap());
    let early = early.await.unwrap();
    assert_exact(&store, &early, start, last, "early").await;

    let late_mid = follow_until(store.follow(mid), last, 7, Duration::ZERO).await;
    assert_exact(&store, &late_mid, mid, last, "mid-way").await;
    let slow = follow_until(store.follow(start), last, 5, Duration::from_millis(1)).await;
    assert_exact(&store, &slow, start, last, "slow").await;
    let reads = store.feed_reads();
    let from_zero = follow_until(store.follow(0), last, 100, Duration::ZERO).await;
    assert!(
        store.feed_reads() > reads,
        "a cursor older than the ring reads the database"
    );
    assert_exact(&store, &from_zero, 0, last, "from 0").await;
    for c in &acked {
        let (_, seen) = &from_zero[usize::try_from(c.revision - 1).unwrap()];
        assert_eq!(seen.record.name, c.record.name);
        assert_eq!(seen.record.uid, c.record.uid);
    }
}

/// Concurrent followers running while the writes happen (not after): each
/// finishes with exactly the feed.
async fn concurrent_followers_keep_up_with_concurrent_writers(b: Backend) {
    let (db, store) = setup(b, 64).await;
    let other = db.store().await;
    store.apply(vec![create_ns("ns")], t(0)).await.unwrap();
    let start = store.current_revision().await.unwrap();
    // 6 writers x 40 rounds, every third with two ops: 320 revisions.
    let until = start + 6 * 40 + 6 * 14;
    let followers: Vec<_> = [(500, 0), (3, 0), (50, 2)]
        .into_iter()
        .map(|(limit, pause_ms)| {
            tokio::spawn(follow_until(
                store.follow(start),
                until,
                limit,
                Duration::from_millis(pause_ms),
            ))
        })
        .collect();
    let writers: Vec<_> = (0..6)
        .map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(writer(s, i, 40))
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(store.current_revision().await.unwrap(), until);
    for (i, f) in followers.into_iter().enumerate() {
        let seen = f.await.unwrap();
        assert_exact(&store, &seen, start, until, &format!("follower {i}")).await;
    }
}

/// After compaction a follower whose cursor is behind the cut gets OutOfRange
/// (even though the relay still had the entries in memory); one at the current
/// revision goes on.
async fn compaction_puts_followers_behind_it_out_of_range(b: Backend) {
    let (db, store) = setup(b, 1000).await;
    store.apply(vec![create_ns("a")], t(0)).await.unwrap(); // 1
    let mut behind = store.follow(0);
    let first = behind.next(1).await.unwrap();
    assert_eq!(first.through, 1);
    for (i, at) in [10, 20, 30].into_iter().enumerate() {
        store
            .apply(vec![create(Kind::Secret, "a", &format!("s{i}"))], t(at))
            .await
            .unwrap(); // 2, 3, 4
    }
    // Everything is in the ring now.
    let mut current = store.follow(4);
    let got = follow_until(store.follow(1), 4, 10, Duration::ZERO).await;
    assert_eq!(got.len(), 3);

    // Revisions 1 and 2 (before t(15)) are compacted: cursor 1 is out of range.
    assert_eq!(store.compact(t(15)).await.unwrap(), 2);
    let err = behind.next(10).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err:?}");
    // Cursor 2 is exactly at the cut: fine.
    let from_cut = follow_until(store.follow(2), 4, 10, Duration::ZERO).await;
    assert_eq!(from_cut.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [3, 4]);
    // Another process's compaction is learnt on the relay's next read.
    let other = Store::connect(&db.url, StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(other.compact(t(25)).await.unwrap(), 1); // 3
    store.apply(vec![create_ns("b")], t(40)).await.unwrap(); // 5
    let tail = follow_until(store.follow(4), 5, 10, Duration::ZERO).await;
    assert_eq!(tail.len(), 1);
    assert!(matches!(
        store.follow(2).next(10).await,
        Err(Error::OutOfRange(_))
    ));
    let mut moved = Vec::new();
    while current.cursor() < 5 {
        let b = current.next(10).await.unwrap();
        moved.extend(b.entries.iter().map(|e| e.revision()));
        if b.entries.is_empty() {
            current.changed().await;
        }
    }
    assert_eq!(moved, [5]);
}

/// Reads of the feed from the database per change stay flat from 1 to 20
/// followers: the relay reads each wake once, and every follower is served from
/// memory.
async fn database_reads_per_change_stay_flat_as_followers_grow(b: Backend) {
    let db = fresh_database_on(b).await;
    let admin = db.store().await;
    admin.apply(vec![create_ns("ns")], t(0)).await.unwrap();
    const WRITES: i64 = 30;
    let mut reads = Vec::new();
    for n in [1_usize, 20] {
        // A store of its own (its own relay), as a process would have.
        let store = db.store().await;
        let start = store.current_revision().await.unwrap();
        let until = start + WRITES;
        let mut followers: Vec<_> = (0..n).map(|_| store.follow(start)).collect();
        // The relay's first read happens before the counting starts.
        let first = followers[0].next(10).await.unwrap();
        assert!(first.entries.is_empty());
        let before = store.feed_reads();
        let tasks: Vec<_> = followers
            .into_iter()
            .map(|f| tokio::spawn(follow_until(f, until, 500, Duration::ZERO)))
            .collect();
        for i in 0..WRITES {
            store
                .apply(
                    vec![create(Kind::ServiceAccount, "ns", &format!("sa-{n}-{i}"))],
                    t(1),
                )
                .await
                .unwrap();
        }
        for task in tasks {
            let seen = task.await.unwrap();
            assert_exact(&store, &seen, start, until, &format!("{n} followers")).await;
        }
        // The asserts above read the feed too: counted before them would be
        // racy, so the count is taken from the relay's reads alone by subtracting
        // the asserts' reads (one per follower).
        let during = store.feed_reads() - before - u64::try_from(n).unwrap();
        reads.push((n, during));
    }
    eprintln!("database reads of the feed for {WRITES} changes, by followers: {reads:?}");
    let (_, one) = reads[0];
    let (_, twenty) = reads[1];
    let bound = u64::try_from(WRITES).unwrap() + 2;
    assert!(
        one <= bound && twenty <= bound,
        "database reads of the feed for {WRITES} changes: {reads:?} (want ≤ {bound} each: one per wake, not per follower)"
    );
}

macro_rules! on_both_backends {
    ([$($test:ident),* $(,)?]) => {
        on_both_backends!(@backend postgres, Postgres, [$($test),*]);
        on_both_backends!(@backend sqlite, Sqlite, [$($test),*]);
    };
    (@backend $module:ident, $backend:ident, [$($test:ident),*]) => {
        mod $module {
            use badge_store::testing::Backend;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(Backend::$backend).await;
                }
            )*
        }
    };
}

on_both_backends!([
    followers_see_every_acknowledged_change_once_in_order,
    concurrent_followers_keep_up_with_concurrent_writers,
    compaction_puts_followers_behind_it_out_of_range,
    database_reads_per_change_stay_flat_as_followers_grow,
]);
