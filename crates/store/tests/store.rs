//! The store against both backends: every test body below takes the backend and
//! runs twice, as `postgres::NAME` (a real PostgreSQL) and `sqlite::NAME` (an
//! SQLite file), each on a fresh database (see `badge_store::testing`). A test
//! written here and not listed in `on_both_backends!` at the bottom is dead code,
//! which clippy refuses. These tests never skip: no Postgres server is a loud
//! failure.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "integration test: a failure fails the test; tokens and records are made at the wall-clock time real clients check"
)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use badge_core::{Error, Kind};
use badge_store::testing::{Backend, TestDatabase, fresh_database, fresh_database_on};
use badge_store::{
    Change, EventType, FeedEntry, ListPage, ListQuery, Op, Precondition, Record, Store,
    StoreOptions,
};
use sqlx::Connection;

// ---------------------------------------------------------------------------
// helpers

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn create_ns(name: &str) -> Op {
    Op::Create {
        kind: Kind::Namespace,
        namespace: String::new(),
        name: name.to_owned(),
        labels: BTreeMap::new(),
        data: format!("ns:{name}").into_bytes(),
    }
}

fn create(kind: Kind, ns: &str, name: &str) -> Op {
    create_labelled(kind, ns, name, &[])
}

fn create_labelled(kind: Kind, ns: &str, name: &str, l: &[(&str, &str)]) -> Op {
    Op::Create {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        labels: labels(l),
        data: format!("{}:{ns}/{name}", kind.as_str()).into_bytes(),
    }
}

fn update(kind: Kind, ns: &str, name: &str, precondition: Precondition, data: &[u8]) -> Op {
    Op::Update {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        precondition,
        labels: labels(&[("updated", "yes")]),
        data: data.to_vec(),
        deletion_timestamp: None,
    }
}

fn delete(kind: Kind, ns: &str, name: &str, precondition: Precondition) -> Op {
    Op::Delete {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        precondition,
    }
}

fn rv(v: i64) -> Precondition {
    Precondition {
        resource_version: Some(v),
        uid: None,
    }
}

fn uid(u: &str) -> Precondition {
    Precondition {
        resource_version: None,
        uid: Some(u.to_owned()),
    }
}

fn all(_: &Record) -> bool {
    true
}

async fn setup(b: Backend) -> (TestDatabase, Store) {
    let db = fresh_database_on(b).await;
    let store = db.store().await;
    (db, store)
}

async fn one(store: &Store, op: Op, now: SystemTime) -> Change {
    let mut changes = store.apply(vec![op], now).await.unwrap();
    assert_eq!(changes.len(), 1);
    changes.remove(0)
}

async fn list_all(store: &Store, kind: Kind, ns: Option<&str>) -> ListPage {
    store
        .list(ListQuery {
            kind,
            namespace: ns,
            after: None,
            limit: 0,
            filter: &all,
        })
        .await
        .unwrap()
}

fn names(items: &[Record]) -> Vec<String> {
    items
        .iter()
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect()
}

// ---------------------------------------------------------------------------
// objects

async fn create_then_get_returns_the_record_with_server_metadata(b: Backend) {
    let (_db, store) = setup(b).await;
    let ns = one(&store, create_ns("team-a"), t(0)).await;
    assert_eq!(ns.event, EventType::Added);
    assert_eq!(ns.revision, 1);
    assert_eq!(ns.record.namespace, "");

    let c = one(
        &store,
        Op::Create {
            kind: Kind::ServiceAccount,
            namespace: "team-a".into(),
            name: "builder".into(),
            labels: labels(&[("app", "ci"), ("tier", "build")]),
            data: vec![0, 159, 146, 150, 255],
        },
        t(5),
    )
    .await;
    assert_eq!(c.revision, 2);
    assert_eq!(c.event, EventType::Added);

    let got = store
        .get(Kind::ServiceAccount, "team-a", "builder")
        .await
        .unwrap();
    assert_eq!(got, c.record);
    assert_eq!(got.kind, Kind::ServiceAccount);
    assert_eq!(got.resource_version, 2);
    assert_eq!(got.labels, labels(&[("app", "ci"), ("tier", "build")]));
    assert_eq!(got.data, vec![0, 159, 146, 150, 255]);
    assert_eq!(got.creation_timestamp, t(5));
    assert_eq!(got.deletion_timestamp, None);
    let parsed = uuid::Uuid::parse_str(&got.uid).unwrap();
    assert_eq!(parsed.get_version_num(), 4);
    assert_ne!(got.uid, ns.record.uid);

    // Cluster-scoped kinds live under the empty namespace.
    let node = one(&store, create(Kind::Node, "", "node-1"), t(6)).await;
    assert_eq!(
        store.get(Kind::Node, "", "node-1").await.unwrap(),
        node.record
    );
    assert_eq!(store.current_revision().await.unwrap(), 3);
}

async fn timestamps_keep_microseconds(b: Backend) {
    let (_db, store) = setup(b).await;
    let now = t(0) + Duration::from_micros(123_456);
    one(&store, create_ns("a"), now).await;
    let got = store.get(Kind::Namespace, "", "a").await.unwrap();
    assert_eq!(got.creation_timestamp, now);
}

async fn get_of_a_missing_object_is_not_found(b: Backend) {
    let (_db, store) = setup(b).await;
    let err = store
        .get(Kind::ServiceAccount, "default", "x")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotFound(r#"serviceaccounts "x" not found"#.into())
    );
}

async fn names_are_unique_per_kind_and_namespace(b: Backend) {
    let (_db, store) = setup(b).await;
    store
        .apply(vec![create_ns("a"), create_ns("b")], t(0))
        .await
        .unwrap();
    one(&store, create(Kind::ServiceAccount, "a", "x"), t(1)).await;
    let err = store
        .apply(vec![create(Kind::ServiceAccount, "a", "x")], t(2))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::AlreadyExists(r#"serviceaccounts "x" already exists"#.into())
    );
    // Same name, other namespace or other kind: fine.
    one(&store, create(Kind::ServiceAccount, "b", "x"), t(3)).await;
    one(&store, create(Kind::Secret, "a", "x"), t(4)).await;
    let err = store.apply(vec![create_ns("a")], t(5)).await.unwrap_err();
    assert_eq!(
        err,
        Error::AlreadyExists(r#"namespaces "a" already exists"#.into())
    );
}

async fn concurrent_creates_of_one_name_leave_one_winner(b: Backend) {
    let (db, store) = setup(b).await;
    let other = db.store().await;
    one(&store, create_ns("a"), t(0)).await;
    for round in 0..5 {
        let name = format!("x{round}");
        let (r1, r2) = tokio::join!(
            store.apply(vec![create(Kind::Secret, "a", &name)], t(1)),
            other.apply(vec![create(Kind::Secret, "a", &name)], t(1)),
        );
        let oks = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "{r1:?} {r2:?}");
        let err = if r1.is_err() { r1 } else { r2 }.unwrap_err();
        assert_eq!(
            err,
            Error::AlreadyExists(format!(r#"secrets "{name}" already exists"#))
        );
    }
}

async fn namespaced_objects_need_their_namespace(b: Backend) {
    let (_db, store) = setup(b).await;
    let err = store
        .apply(vec![create(Kind::ServiceAccount, "nope", "x")], t(0))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotFound(r#"namespaces "nope" not found"#.into())
    );
    // In the same batch, after the namespace: fine.
    let changes = store
        .apply(
            vec![create_ns("nope"), create(Kind::ServiceAccount, "nope", "x")],
            t(1),
        )
        .await
        .unwrap();
    assert_eq!(changes.len(), 2);
}

async fn scope_mismatches_are_invalid(b: Backend) {
    let (_db, store) = setup(b).await;
    let err = store
        .apply(vec![create(Kind::Node, "a", "n")], t(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(v) if v[0].field == "metadata.namespace"),
        "{err:?}"
    );
    let err = store
        .apply(vec![create(Kind::Pod, "", "p")], t(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(v) if v[0].field == "metadata.namespace"),
        "{err:?}"
    );
    let err = store
        .apply(vec![create(Kind::Node, "", "")], t(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(v) if v[0].field == "metadata.name"),
        "{err:?}"
    );
}

async fn update_replaces_content_and_keeps_identity(b: Backend) {
    let (_db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await;
    let created = one(
        &store,
        create_labelled(Kind::Pod, "a", "p", &[("x", "1")]),
        t(1),
    )
    .await;
    let changed = one(
        &store,
        Op::Update {
            kind: Kind::Pod,
            namespace: "a".into(),
            name: "p".into(),
            precondition: Precondition {
                resource_version: Some(created.record.resource_version),
                uid: Some(created.record.uid.clone()),
            },
            labels: labels(&[("y", "2")]),
            data: b"v2".to_vec(),
            deletion_timestamp: Some(t(30)),
        },
        t(2),
    )
    .await;
    assert_eq!(changed.event, EventType::Modified);
    assert_eq!(changed.revision, 3);
    let got = store.get(Kind::Pod, "a", "p").await.unwrap();
    assert_eq!(got, changed.record);
    assert_eq!(got.uid, created.record.uid);
    assert_eq!(got.creation_timestamp, t(1));
    assert_eq!(got.resource_version, 3);
    assert_eq!(got.labels, labels(&[("y", "2")]));
    assert_eq!(got.data, b"v2");
    assert_eq!(got.deletion_timestamp, Some(t(30)));

    // No precondition: unconditional.
    let again = one(
        &store,
        update(Kind::Pod, "a", "p", Precondition::default(), b"v3"),
        t(3),
    )
    .await;
    assert_eq!(again.record.resource_version, 4);
    assert_eq!(again.record.deletion_timestamp, None);
}

async fn update_and_delete_of_missing_objects_are_not_found(b: Backend) {
    let (_db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await;
    let err = store
        .apply(
            vec![update(Kind::ServiceAccount, "a", "x", rv(1), b"")],
            t(1),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotFound(r#"serviceaccounts "x" not found"#.into())
    );
    let err = store
        .apply(
            vec![delete(
                Kind::ServiceAccount,
                "a",
                "x",
                Precondition::default(),
            )],
            t(1),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotFound(r#"serviceaccounts "x" not found"#.into())
    );
}

async fn stale_resource_version_and_wrong_uid_conflict(b: Backend) {
    let (_db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await;
    let c = one(&store, create(Kind::ServiceAccount, "a", "x"), t(1)).await; // rv 2
    one(
        &store,
        update(Kind::ServiceAccount, "a", "x", rv(2), b"v2"),
        t(2),
    )
    .await; // rv 3

    for op in [
        update(Kind::ServiceAccount, "a", "x", rv(2), b"v3"),
        delete(Kind::ServiceAccount, "a", "x", rv(2)),
    ] {
        let err = store.apply(vec![op], t(3)).await.unwrap_err();
        assert_eq!(
            err,
            Error::Conflict(
                "operation cannot be fulfilled on serviceaccounts \"x\": the object has been \
                 modified: resource_version 2 is stale, current is 3"
                    .into()
            )
        );
    }
    for op in [
        update(Kind::ServiceAccount, "a", "x", uid("other-uid"), b"v3"),
        delete(Kind::ServiceAccount, "a", "x", uid("other-uid")),
    ] {
        let err = store.apply(vec![op], t(3)).await.unwrap_err();
        assert_eq!(
            err,
            Error::Conflict(format!(
                "precondition failed: uid in precondition: other-uid, uid in object: {}",
                c.record.uid
            ))
        );
    }
    // Nothing of the refused writes happened.
    let got = store.get(Kind::ServiceAccount, "a", "x").await.unwrap();
    assert_eq!((got.resource_version, got.data.as_slice()), (3, &b"v2"[..]));
    assert_eq!(store.current_revision().await.unwrap(), 3);
}

async fn delete_removes_the_object_and_reports_its_last_state(b: Backend) {
    let (_db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await;
    let c = one(
        &store,
        create_labelled(Kind::Secret, "a", "s", &[("k", "v")]),
        t(1),
    )
    .await;
    let d = one(
        &store,
        delete(
            Kind::Secret,
            "a",
            "s",
            Precondition {
                resource_version: Some(2),
                uid: Some(c.record.uid.clone()),
            },
        ),
        t(2),
    )
    .await;
    assert_eq!(d.event, EventType::Deleted);
    assert_eq!(d.revision, 3);
    assert_eq!(
        d.record,
        Record {
            resource_version: 3,
            ..c.record.clone()
        }
    );
    assert!(matches!(
        store.get(Kind::Secret, "a", "s").await,
        Err(Error::NotFound(_))
    ));
    // The name is free again; a new object gets a new uid.
    let again = one(&store, create(Kind::Secret, "a", "s"), t(3)).await;
    assert_ne!(again.record.uid, c.record.uid);
}

async fn concurrent_updates_with_one_resource_version_have_exactly_one_winner(b: Backend) {
    let (db, store) = setup(b).await;
    // A second, separately connected store: the guarantee comes from the database.
    let other = db.store().await;
    one(&store, create_ns("a"), t(0)).await;
    let mut current = one(&store, create(Kind::ServiceAccount, "a", "x"), t(1))
        .await
        .record
        .resource_version;
    for round in 0..10 {
        let (r1, r2) = tokio::join!(
            store.apply(
                vec![update(
                    Kind::ServiceAccount,
                    "a",
                    "x",
                    rv(current),
                    b"first"
                )],
                t(2 + round),
            ),
            other.apply(
                vec![update(
                    Kind::ServiceAccount,
                    "a",
                    "x",
                    rv(current),
                    b"second"
                )],
                t(2 + round),
            ),
        );
        let (winner, loser) = match (r1, r2) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (r1, r2) => panic!("round {round}: expected exactly one winner: {r1:?} / {r2:?}"),
        };
        assert!(
            matches!(&loser, Error::Conflict(m) if m.contains(&format!("resource_version {current} is stale"))),
            "{loser:?}"
        );
        let got = store.get(Kind::ServiceAccount, "a", "x").await.unwrap();
        assert_eq!(got, winner[0].record);
        assert_eq!(got.resource_version, current + 1);
        current = got.resource_version;
    }
}

async fn a_failing_op_undoes_the_whole_batch(b: Backend) {
    let (_db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await;
    one(&store, create(Kind::ServiceAccount, "a", "taken"), t(1)).await;
    let before = store.current_revision().await.unwrap();
    let mut rx = store.subscribe();
    rx.borrow_and_update();

    let err = store
        .apply(
            vec![
                create_ns("b"),
                create(Kind::ServiceAccount, "b", "fresh"),
                update(
                    Kind::ServiceAccount,
                    "a",
                    "taken",
                    Precondition::default(),
                    b"changed",
                ),
                create(Kind::ServiceAccount, "a", "taken"),
            ],
            t(2),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");

    assert!(matches!(
        store.get(Kind::Namespace, "", "b").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.get(Kind::ServiceAccount, "b", "fresh").await,
        Err(Error::NotFound(_))
    ));
    let taken = store.get(Kind::ServiceAccount, "a", "taken").await.unwrap();
    assert_eq!(taken.resource_version, 2);
    assert_ne!(taken.data, b"changed");
    assert_eq!(store.current_revision().await.unwrap(), before);
    assert_eq!(store.changes_since(before, 0).await.unwrap(), vec![]);
    assert_eq!(store.changes_since(0, 0).await.unwrap().len(), 2);
    assert!(!rx.has_changed().unwrap());

    // The next successful write continues the revision sequence with no gap.
    let next = one(&store, create_ns("b"), t(3)).await;
    assert_eq!(next.revision, before + 1);
}

async fn empty_batches_and_empty_namespaces_change_nothing(b: Backend) {
    let (_db, store) = setup(b).await;
    assert_eq!(store.apply(vec![], t(0)).await.unwrap(), vec![]);
    one(&store, create_ns("a"), t(0)).await;
    let changes = store
        .apply(
            vec![Op::DeleteNamespaceContents {
                namespace: "a".into(),
            }],
            t(1),
        )
        .await
        .unwrap();
    assert_eq!(changes, vec![]);
    assert_eq!(store.current_revision().await.unwrap(), 1);
}

async fn deleting_a_namespace_with_its_contents(b: Backend) {
    let (_db, store) = setup(b).await;
    store
        .apply(
            vec![
                create_ns("a"),
                create_ns("b"),
                create(Kind::ServiceAccount, "a", "default"),
                create(Kind::Secret, "a", "tok"),
                create(Kind::Pod, "a", "web"),
                create(Kind::Pod, "a", "db"),
                create(Kind::ServiceAccount, "b", "default"),
                create(Kind::Node, "", "n1"),
            ],
            t(0),
        )
        .await
        .unwrap();

    // Deleting only the namespace does not cascade.
    let lone = store
        .apply(
            vec![delete(Kind::Namespace, "", "b", Precondition::default())],
            t(1),
        )
        .await
        .unwrap();
    assert_eq!(lone.len(), 1);
    assert!(
        store
            .get(Kind::ServiceAccount, "b", "default")
            .await
            .is_ok()
    );

    let changes = store
        .apply(
            vec![
                Op::DeleteNamespaceContents {
                    namespace: "a".into(),
                },
                delete(Kind::Namespace, "", "a", Precondition::default()),
            ],
            t(2),
        )
        .await
        .unwrap();
    let seen: Vec<(EventType, Kind, String, String)> = changes
        .iter()
        .map(|c| {
            (
                c.event,
                c.record.kind,
                c.record.namespace.clone(),
                c.record.name.clone(),
            )
        })
        .collect();
    let d = EventType::Deleted;
    assert_eq!(
        seen,
        vec![
            (d, Kind::Pod, "a".into(), "db".into()),
            (d, Kind::Pod, "a".into(), "web".into()),
            (d, Kind::Secret, "a".into(), "tok".into()),
            (d, Kind::ServiceAccount, "a".into(), "default".into()),
            (d, Kind::Namespace, String::new(), "a".into()),
        ]
    );
    let revisions: Vec<i64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, vec![10, 11, 12, 13, 14]);
    for c in &changes {
        assert_eq!(c.record.resource_version, c.revision);
        assert_eq!(
            c.record.data,
            if c.record.kind == Kind::Namespace {
                b"ns:a".to_vec()
            } else {
                format!("{}:a/{}", c.record.kind.as_str(), c.record.name).into_bytes()
            }
        );
    }
    for kind in [Kind::ServiceAccount, Kind::Secret, Kind::Pod] {
        assert!(list_all(&store, kind, Some("a")).await.items.is_empty());
    }
    // Other namespaces and cluster-scoped objects are untouched.
    assert!(
        store
            .get(Kind::ServiceAccount, "b", "default")
            .await
            .is_ok()
    );
    assert!(store.get(Kind::Node, "", "n1").await.is_ok());
    assert_eq!(store.changes_since(9, 0).await.unwrap(), changes);
}

// ---------------------------------------------------------------------------
// list

async fn list_orders_by_namespace_and_name_and_scopes_to_a_namespace(b: Backend) {
    let (_db, store) = setup(b).await;
    store
        .apply(
            vec![
                create_ns("b"),
                create_ns("a"),
                create(Kind::ServiceAccount, "b", "x"),
                create(Kind::ServiceAccount, "a", "y"),
                create(Kind::ServiceAccount, "a", "x-2"),
                create(Kind::ServiceAccount, "a", "x"),
                create(Kind::Secret, "a", "x"),
                create(Kind::Node, "", "n2"),
                create(Kind::Node, "", "n1"),
            ],
            t(0),
        )
        .await
        .unwrap();
    let page = list_all(&store, Kind::ServiceAccount, None).await;
    assert_eq!(names(&page.items), ["a/x", "a/x-2", "a/y", "b/x"]);
    assert!(!page.more);
    assert_eq!(page.revision, 9);
    let page = list_all(&store, Kind::ServiceAccount, Some("a")).await;
    assert_eq!(names(&page.items), ["a/x", "a/x-2", "a/y"]);
    let page = list_all(&store, Kind::Node, None).await;
    assert_eq!(names(&page.items), ["/n1", "/n2"]);
    let page = list_all(&store, Kind::Namespace, None).await;
    assert_eq!(names(&page.items), ["/a", "/b"]);
    let page = list_all(&store, Kind::Pod, Some("zzz")).await;
    assert!(page.items.is_empty() && !page.more);
}

/// Pages through everything matching `filter`, checking each page.
async fn page_through(
    store: &Store,
    ns: Option<&str>,
    limit: usize,
    filter: &(dyn Fn(&Record) -> bool + Send + Sync),
) -> (Vec<String>, usize) {
    let mut after = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store
            .list(ListQuery {
                kind: Kind::ServiceAccount,
                namespace: ns,
                after: after.clone(),
                limit,
                filter,
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= limit);
        assert!(page.items.iter().all(filter));
        seen.extend(names(&page.items));
        if !page.more {
            break;
        }
        assert_eq!(page.items.len(), limit, "a page with more is full");
        let last = page.items.last().unwrap();
        after = Some((last.namespace.clone(), last.name.clone()));
        assert!(pages < 1000);
    }
    (seen, pages)
}

async fn list_pages_with_a_filter_and_more(b: Backend) {
    let (_db, store) = setup(b).await;
    let mut ops = vec![create_ns("a"), create_ns("b")];
    for i in 0..10 {
        let colour = if i % 3 == 0 { "red" } else { "blue" };
        ops.push(create_labelled(
            Kind::ServiceAccount,
            if i < 5 { "a" } else { "b" },
            &format!("sa-{i:02}"),
            &[("colour", colour)],
        ));
    }
    store.apply(ops, t(0)).await.unwrap();
    let red = |r: &Record| r.labels.get("colour").map(String::as_str) == Some("red");

    // red: a/sa-00, a/sa-03, b/sa-06, b/sa-09
    let (seen, pages) = page_through(&store, None, 2, &red).await;
    assert_eq!(seen, ["a/sa-00", "a/sa-03", "b/sa-06", "b/sa-09"]);
    // Two full pages; the second knows nothing matches after it.
    assert_eq!(pages, 2);

    let (seen, pages) = page_through(&store, None, 3, &red).await;
    assert_eq!(seen, ["a/sa-00", "a/sa-03", "b/sa-06", "b/sa-09"]);
    assert_eq!(pages, 2);

    let (seen, _) = page_through(&store, Some("b"), 1, &red).await;
    assert_eq!(seen, ["b/sa-06", "b/sa-09"]);

    let (seen, _) = page_through(&store, None, 4, &all).await;
    assert_eq!(seen.len(), 10);

    // An exclusive cursor in the middle of a namespace.
    let page = store
        .list(ListQuery {
            kind: Kind::ServiceAccount,
            namespace: None,
            after: Some(("a".into(), "sa-03".into())),
            limit: 2,
            filter: &all,
        })
        .await
        .unwrap();
    assert_eq!(names(&page.items), ["a/sa-04", "b/sa-05"]);
    assert!(page.more);

    // A page that ends exactly at the last match does not claim more.
    let page = store
        .list(ListQuery {
            kind: Kind::ServiceAccount,
            namespace: None,
            after: None,
            limit: 4,
            filter: &red,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
    assert!(!page.more);
}

async fn list_pages_across_fetch_batches(b: Backend) {
    let (_db, store) = setup(b).await;
    let mut ops = vec![create_ns("a")];
    for i in 0..700 {
        ops.push(create_labelled(
            Kind::ServiceAccount,
            "a",
            &format!("sa-{i:04}"),
            &[("n", &i.to_string())],
        ));
    }
    store.apply(ops, t(0)).await.unwrap();
    // A selective filter: 1 in 97 rows matches, so pages span several batches.
    let rare = |r: &Record| r.labels["n"].parse::<u32>().unwrap() % 97 == 0;
    let (seen, _) = page_through(&store, None, 3, &rare).await;
    let expected: Vec<String> = (0..700)
        .filter(|i| i % 97 == 0)
        .map(|i| format!("a/sa-{i:04}"))
        .collect();
    assert_eq!(seen, expected);
    let (seen, pages) = page_through(&store, None, 250, &all).await;
    assert_eq!(seen.len(), 700);
    assert_eq!(pages, 3);
    let page = list_all(&store, Kind::ServiceAccount, Some("a")).await;
    assert_eq!(page.items.len(), 700);
    assert!(!page.more);
}

/// `scan` streams exactly what `list` returns (across several of its batches) and
/// the same revision.
async fn scan_streams_what_list_returns(b: Backend) {
    let (_db, store) = setup(b).await;
    let mut ops = vec![create_ns("a"), create_ns("b")];
    for i in 0..4500 {
        let ns = if i % 3 == 0 { "b" } else { "a" };
        ops.push(create_labelled(
            Kind::ServiceAccount,
            ns,
            &format!("sa-{i:05}"),
            &[("n", &i.to_string())],
        ));
    }
    store.apply(ops, t(0)).await.unwrap();
    let mut scanned = Vec::new();
    let revision = store
        .scan(
            Kind::ServiceAccount,
            |r| scanned.push(r),
            |u| panic!("unreadable {u:?}"),
        )
        .await
        .unwrap();
    let listed = list_all(&store, Kind::ServiceAccount, None).await;
    assert_eq!(scanned.len(), 4500);
    assert_eq!(scanned, listed.items);
    assert_eq!(revision, listed.revision);
}

async fn list_revision_is_exactly_the_state_listed(b: Backend) {
    let (db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await;
    // A second process writes continuously while we list.
    let writer = db.store().await;
    let writing = tokio::spawn(async move {
        for i in 0..120 {
            let mut ops = vec![create(Kind::Secret, "a", &format!("s-{i:03}"))];
            if i % 4 == 3 {
                ops.push(delete(
                    Kind::Secret,
                    "a",
                    &format!("s-{:03}", i - 2),
                    Precondition::default(),
                ));
            }
            writer.apply(ops, t(1)).await.unwrap();
        }
    });
    let mut listed = 0;
    while !writing.is_finished() || listed == 0 {
        let page = store
            .list(ListQuery {
                kind: Kind::Secret,
                namespace: Some("a"),
                after: None,
                limit: 0,
                filter: &all,
            })
            .await
            .unwrap();
        // Replay the feed up to the page's revision: it must give exactly the page.
        let mut state = BTreeMap::new();
        for c in store.changes_since(0, page.revision).await.unwrap() {
            assert!(c.revision <= page.revision);
            if c.record.kind != Kind::Secret {
                continue;
            }
            match c.event {
                EventType::Deleted => {
                    state.remove(&c.record.name);
                }
                _ => {
                    state.insert(c.record.name.clone(), c.record.resource_version);
                }
            }
        }
        let got: BTreeMap<String, i64> = page
            .items
            .iter()
            .map(|r| (r.name.clone(), r.resource_version))
            .collect();
        assert_eq!(got, state, "list at revision {}", page.revision);
        listed += 1;
    }
    writing.await.unwrap();
    assert!(listed > 1);
}

// ---------------------------------------------------------------------------
// the change feed

async fn the_feed_is_ordered_and_resumable(b: Backend) {
    let (_db, store) = setup(b).await;
    let mut expected = store
        .apply(
            vec![create_ns("a"), create(Kind::ServiceAccount, "a", "x")],
            t(0),
        )
        .await
        .unwrap();
    expected.push(
        one(
            &store,
            update(Kind::ServiceAccount, "a", "x", rv(2), b"v2"),
            t(1),
        )
        .await,
    );
    expected.push(one(&store, create(Kind::Node, "", "n"), t(2)).await);
    expected.push(
        one(
            &store,
            delete(Kind::ServiceAccount, "a", "x", Precondition::default()),
            t(3),
        )
        .await,
    );
    let feed = store.changes_since(0, 0).await.unwrap();
    assert_eq!(feed, expected);
    assert_eq!(
        feed.iter().map(|c| c.revision).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        feed.iter().map(|c| c.event).collect::<Vec<_>>(),
        vec![
            EventType::Added,
            EventType::Added,
            EventType::Modified,
            EventType::Added,
            EventType::Deleted
        ]
    );
    for c in &feed {
        assert_eq!(c.record.resource_version, c.revision);
    }
    // Resume from the middle, with and without a limit.
    assert_eq!(store.changes_since(2, 0).await.unwrap(), expected[2..]);
    assert_eq!(store.changes_since(2, 2).await.unwrap(), expected[2..4]);
    assert_eq!(store.changes_since(4, 100).await.unwrap(), expected[4..]);
    assert_eq!(store.changes_since(5, 0).await.unwrap(), vec![]);
    assert_eq!(store.changes_since(99, 0).await.unwrap(), vec![]);
    assert_eq!(store.current_revision().await.unwrap(), 5);
}

async fn compaction_makes_old_revisions_out_of_range_but_not_current_ones(b: Backend) {
    let (_db, store) = setup(b).await;
    one(&store, create_ns("a"), t(0)).await; // 1
    one(&store, create(Kind::Secret, "a", "s1"), t(10)).await; // 2
    one(&store, create(Kind::Secret, "a", "s2"), t(20)).await; // 3
    one(&store, create(Kind::Secret, "a", "s3"), t(30)).await; // 4

    assert_eq!(store.compact(t(0)).await.unwrap(), 0);
    assert_eq!(store.changes_since(0, 0).await.unwrap().len(), 4);

    // Entries committed before t(15): revisions 1 and 2.
    assert_eq!(store.compact(t(15)).await.unwrap(), 2);
    let err = store.changes_since(1, 0).await.unwrap_err();
    assert_eq!(
        err,
        Error::OutOfRange(
            "resource_version 1 is too old: history before 3 was compacted; relist".into()
        )
    );
    assert!(matches!(
        store.changes_since(0, 0).await,
        Err(Error::OutOfRange(_))
    ));
    let rest = store.changes_since(2, 0).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.revision).collect::<Vec<_>>(), [3, 4]);
    // Compacting again with the same cut removes nothing.
    assert_eq!(store.compact(t(15)).await.unwrap(), 0);

    // Compact the whole feed: a watcher at the current revision is still fine.
    assert_eq!(store.compact(t(1000)).await.unwrap(), 2);
    let current = store.current_revision().await.unwrap();
    assert_eq!(current, 4);
    assert_eq!(store.changes_since(current, 0).await.unwrap(), vec![]);
    assert!(matches!(
        store.changes_since(current - 1, 0).await,
        Err(Error::OutOfRange(_))
    ));
    // Objects are untouched by compaction and new writes continue the feed.
    assert_eq!(
        list_all(&store, Kind::Secret, Some("a")).await.items.len(),
        3
    );
    let next = one(&store, create(Kind::Secret, "a", "s4"), t(1001)).await;
    assert_eq!(store.changes_since(current, 0).await.unwrap(), vec![next]);
}

async fn subscribe_sees_own_commits_immediately(b: Backend) {
    let (_db, store) = setup(b).await;
    let rx = store.subscribe();
    let c = one(&store, create_ns("a"), t(0)).await;
    assert!(*rx.borrow() >= c.revision);
}

async fn subscribe_wakes_on_a_commit_from_another_store(b: Backend) {
    let db = fresh_database_on(b).await;
    let watcher = db.store().await;
    let writer = db.store().await;
    let mut rx = watcher.subscribe();
    for i in 0..5 {
        let c = one(&writer, create_ns(&format!("ns-{i}")), t(i)).await;
        // Nothing but NOTIFY (or the post-LISTEN catch-up read) can move this.
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|seen| *seen >= c.revision),
        )
        .await
        .expect("the other store's commit was not announced within 10s")
        .unwrap();
    }
}

// Postgres only: the LISTEN task (SQLite's wake-up is in-process, covered by the
// subscribe tests above).

async fn listeners(admin: &mut sqlx::PgConnection, database: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'badge-store-listener'",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_listener_stops_with_the_last_store_clone() {
    let db = fresh_database_on(Backend::Postgres).await;
    let store = db.store().await;
    let clone = store.clone();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(&mut admin, db.name()).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        listeners(&mut admin, db.name()).await,
        1,
        "a clone still lives"
    );
    drop(clone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(&mut admin, db.name()).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener outlived the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_listener_catches_up_on_missed_commits() {
    let db = fresh_database_on(Backend::Postgres).await;
    let watcher = db.store().await;
    let writer = db.store().await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(&mut admin, db.name()).await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rx = watcher.subscribe();
    // Cut the LISTEN connections (both stores'), and commit while they are down.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'badge-store-listener'",
    )
    .bind(db.name())
    .execute(&mut admin)
    .await
    .unwrap();
    let c = one(&writer, create_ns("while-down"), t(0)).await;
    tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|seen| *seen >= c.revision),
    )
    .await
    .expect("the commit made while the listener was down was never published")
    .unwrap();
    // And it listens again afterwards.
    let c = one(&writer, create_ns("after"), t(1)).await;
    tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|seen| *seen >= c.revision),
    )
    .await
    .expect("the listener did not resume")
    .unwrap();
}

// ---------------------------------------------------------------------------
// schema, health, errors

async fn check_schema_refuses_an_unmigrated_database_until_migrated(b: Backend) {
    let db = fresh_database_on(b).await;
    let store = db.unmigrated_store().await;
    assert_eq!(
        store.check_schema().await,
        Err(Error::precondition(
            "database schema is not migrated: run `badge migrate`"
        ))
    );
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
}

async fn check_schema_refuses_newer_and_dirty_databases(b: Backend) {
    let (db, store) = setup(b).await;
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         SELECT 9999, 'from the future', true, checksum, 0 FROM _sqlx_migrations WHERE version = 1",
    )
    .await;
    let known: i64 = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .unwrap();
    let newer = Error::precondition(format!(
        "database schema version 9999 is newer than this binary ({known}): upgrade badge"
    ));
    assert_eq!(store.check_schema().await, Err(newer.clone()));
    assert_eq!(store.migrate().await, Err(newer));

    db.execute("DELETE FROM _sqlx_migrations WHERE version = 9999")
        .await;
    store.check_schema().await.unwrap();
    db.execute("UPDATE _sqlx_migrations SET success = false WHERE version = 1")
        .await;
    let err = store.check_schema().await.unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition { message, .. } if message.contains("migration 1 is dirty")),
        "{err:?}"
    );
}

async fn ping_answers_and_an_unreachable_server_is_unavailable(b: Backend) {
    let (_db, store) = setup(b).await;
    store.ping().await.unwrap();

    let down = Store::connect(
        "postgres://postgres@127.0.0.1:1/nothing",
        StoreOptions {
            max_connections: 2,
            connect_timeout: Duration::from_millis(500),
            sealer: None,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    for err in [
        down.ping().await.unwrap_err(),
        down.get(Kind::Node, "", "n").await.unwrap_err(),
        down.apply(vec![create_ns("a")], t(0)).await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Unavailable(m) if m.starts_with("store unavailable: ")),
            "{err:?}"
        );
    }
    assert!(matches!(
        Store::connect("not a url", StoreOptions::default()).await,
        Err(Error::Invalid(_))
    ));
}

// ---------------------------------------------------------------------------
// graceful deletion

async fn next_deletion_and_expired_deletions(b: Backend) {
    let (_db, store) = setup(b).await;
    store
        .apply(
            vec![
                create_ns("a"),
                create_ns("b"),
                create(Kind::Pod, "a", "later"),
                create(Kind::Pod, "b", "sooner"),
                create(Kind::Pod, "a", "alive"),
                create(Kind::Secret, "a", "s"),
            ],
            t(0),
        )
        .await
        .unwrap();
    assert_eq!(store.next_deletion(Kind::Pod).await.unwrap(), None);
    assert_eq!(
        store.expired_deletions(Kind::Pod, t(1000)).await.unwrap(),
        vec![]
    );

    let mark = |ns: &str, name: &str, kind: Kind, at: SystemTime| Op::Update {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        precondition: Precondition::default(),
        labels: BTreeMap::new(),
        data: b"terminating".to_vec(),
        deletion_timestamp: Some(at),
    };
    store
        .apply(
            vec![
                mark("a", "later", Kind::Pod, t(100)),
                mark("b", "sooner", Kind::Pod, t(50)),
                mark("a", "s", Kind::Secret, t(10)),
            ],
            t(1),
        )
        .await
        .unwrap();
    assert_eq!(store.next_deletion(Kind::Pod).await.unwrap(), Some(t(50)));
    assert_eq!(
        store.next_deletion(Kind::Secret).await.unwrap(),
        Some(t(10))
    );
    assert_eq!(store.next_deletion(Kind::Node).await.unwrap(), None);

    let due = |v: Vec<Record>| names(&v);
    assert!(due(store.expired_deletions(Kind::Pod, t(49)).await.unwrap()).is_empty());
    assert_eq!(
        due(store.expired_deletions(Kind::Pod, t(50)).await.unwrap()),
        ["b/sooner"]
    );
    assert_eq!(
        due(store.expired_deletions(Kind::Pod, t(500)).await.unwrap()),
        ["b/sooner", "a/later"]
    );
    let expired = store.expired_deletions(Kind::Pod, t(500)).await.unwrap();
    assert_eq!(expired[0].deletion_timestamp, Some(t(50)));

    // The reaper deletes with the uid it saw.
    store
        .apply(
            vec![delete(Kind::Pod, "b", "sooner", uid(&expired[0].uid))],
            t(60),
        )
        .await
        .unwrap();
    assert_eq!(store.next_deletion(Kind::Pod).await.unwrap(), Some(t(100)));
}

/// Compile-time: every Store future can run on a multi-threaded runtime (tonic
/// handlers and spawned tasks need `Send`).
#[allow(dead_code)]
fn store_futures_are_send(store: &Store) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&store.migrate());
    is_send(&store.check_schema());
    is_send(&store.ping());
    is_send(&store.apply(vec![], t(0)));
    is_send(&store.get(Kind::Pod, "a", "b"));
    is_send(&store.list(ListQuery {
        kind: Kind::Pod,
        namespace: None,
        after: None,
        limit: 1,
        filter: &all,
    }));
    is_send(&store.current_revision());
    is_send(&store.changes_since(0, 0));
    is_send(&store.compact(t(0)));
    is_send(&store.next_deletion(Kind::Pod));
    is_send(&store.expired_deletions(Kind::Pod, t(0)));
    is_send(&Store::connect("", StoreOptions::default()));
    is_send(&fresh_database());
}

async fn advisory_lock_admits_one_holder_at_a_time(b: Backend) {
    let db = fresh_database_on(b).await;
    let a = db.store().await;
    let b = badge_store::Store::connect(&db.url, badge_store::StoreOptions::default())
        .await
        .expect("connect");
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        a.try_locked(42, || async move {
            let _ = entered_tx.send(());
            let _ = release_rx.await;
            "a"
        })
        .await
    });
    entered_rx.await.expect("a holds the lock");
    let blocked = b.try_locked(42, || async { "b" }).await.expect("try");
    assert_eq!(blocked, None, "a second holder must be refused");
    let _ = release_tx.send(());
    assert_eq!(holder.await.expect("join").expect("lock"), Some("a"));
    let after = b.try_locked(42, || async { "b" }).await.expect("try");
    assert_eq!(after, Some("b"), "free again once released");
}

/// A stand-in sealer for the store's own tests (the real one is the KEK in
/// badge-keys): reversible, authenticated by a checksum over data and aad.
struct TestSealer(u8);

impl badge_core::seal::DataSealer for TestSealer {
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let mut out: Vec<u8> = plaintext.iter().map(|b| b ^ self.0).collect();
        let sum = plaintext
            .iter()
            .chain(aad)
            .fold(self.0, |a, b| a.wrapping_add(*b));
        out.push(sum);
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

async fn secret_data_is_sealed_at_rest(b: Backend) {
    let db = fresh_database_on(b).await;
    let plain = db.store().await;
    let sealed = badge_store::Store::connect(
        &db.url,
        badge_store::StoreOptions {
            sealer: Some(std::sync::Arc::new(TestSealer(0x5a))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let now = SystemTime::now();
    sealed
        .apply(
            vec![
                Op::Create {
                    kind: Kind::Namespace,
                    namespace: String::new(),
                    name: "ns".into(),
                    labels: BTreeMap::new(),
                    data: b"namespace-data".to_vec(),
                },
                Op::Create {
                    kind: Kind::Secret,
                    namespace: "ns".into(),
                    name: "s".into(),
                    labels: BTreeMap::new(),
                    data: b"top-secret-bytes".to_vec(),
                },
            ],
            now,
        )
        .await
        .unwrap();
    // Read back through the sealing store: plaintext, in get, list and the feed.
    assert_eq!(
        sealed.get(Kind::Secret, "ns", "s").await.unwrap().data,
        b"top-secret-bytes"
    );
    let feed = sealed.changes_since(0, 0).await.unwrap();
    assert!(feed.iter().any(|c| c.record.data == b"top-secret-bytes"));
    // On disk (objects and feed rows), the bytes are not there.
    for table in ["objects", "changes"] {
        let rows = db
            .fetch_bytes(&format!("SELECT data FROM {table} WHERE kind = 'Secret'"))
            .await;
        assert!(!rows.is_empty());
        for d in rows {
            assert!(
                !d.windows(16).any(|w| w == b"top-secret-bytes"),
                "{table} holds plaintext"
            );
        }
    }
    // Other kinds are not sealed.
    assert_eq!(
        plain.get(Kind::Namespace, "", "ns").await.unwrap().data,
        b"namespace-data"
    );
    // Without the key, or with another, reading fails loudly instead of returning garbage.
    let err = plain.get(Kind::Secret, "ns", "s").await.unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
    let other = badge_store::Store::connect(
        &db.url,
        badge_store::StoreOptions {
            sealer: Some(std::sync::Arc::new(TestSealer(0x11))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(other.get(Kind::Secret, "ns", "s").await.is_err());
}

/// #13 finding 3: one row sealed under another key-encryption key must not stop
/// the feed. `read_feed` and `scan` hand back every other row and name the bad
/// one (key only, never its data); `changes_since` (watch) still refuses.
async fn an_unreadable_row_does_not_stop_the_feed(b: Backend) {
    let db = fresh_database_on(b).await;
    let _migrated = db.store().await;
    let connect = |key: u8| {
        let url = db.url.clone();
        async move {
            Store::connect(
                &url,
                StoreOptions {
                    sealer: Some(std::sync::Arc::new(TestSealer(key))),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let ours = connect(0x5a).await;
    let foreign = connect(0x11).await;
    let secret = |name: &str, data: &[u8]| Op::Create {
        kind: Kind::Secret,
        namespace: "ns".into(),
        name: name.into(),
        labels: BTreeMap::new(),
        data: data.to_vec(),
    };
    ours.apply(vec![create_ns("ns"), secret("a", b"a-data")], t(0))
        .await
        .unwrap();
    // Sealed under another key: this process cannot open it.
    foreign
        .apply(vec![secret("bad", b"foreign-plaintext")], t(1))
        .await
        .unwrap();
    ours.apply(
        vec![
            secret("c", b"c-data"),
            delete(Kind::Secret, "ns", "a", Precondition::default()),
        ],
        t(2),
    )
    .await
    .unwrap();

    let feed = ours.read_feed(0, 0).await.unwrap();
    assert_eq!(feed.revision, 5);
    assert_eq!(
        feed.entries
            .iter()
            .map(FeedEntry::revision)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "every row, in order"
    );
    let FeedEntry::Unreadable(bad) = &feed.entries[2] else {
        panic!("revision 3 is unreadable: {:?}", feed.entries[2]);
    };
    assert_eq!(
        (bad.kind, bad.namespace.as_str(), bad.name.as_str()),
        (Kind::Secret, "ns", "bad")
    );
    assert_eq!(
        (bad.event, bad.resource_version),
        (Some(EventType::Added), 3)
    );
    assert!(bad.reason.contains("ns/bad"), "{}", bad.reason);
    assert!(!format!("{bad:?}").contains("foreign-plaintext"));
    let FeedEntry::Change(c) = &feed.entries[3] else {
        panic!("revision 4 is readable");
    };
    assert_eq!(c.record.data, b"c-data");
    let FeedEntry::Change(d) = &feed.entries[4] else {
        panic!("revision 5 is readable");
    };
    assert_eq!((d.event, d.record.name.as_str()), (EventType::Deleted, "a"));
    // Past the bad row, nothing is in the way.
    assert_eq!(ours.read_feed(3, 0).await.unwrap().entries.len(), 2);
    assert_eq!(ours.changes_since(3, 0).await.unwrap().len(), 2);
    // A watch cannot skip an event silently: it still fails, naming the object.
    let err = ours.changes_since(0, 0).await.unwrap_err();
    assert!(
        matches!(&err, Error::Internal(m) if m.contains("ns/bad")),
        "{err:?}"
    );

    // The scan (index load) hands over every other object, and the bad one's key.
    let (mut scanned, mut bad) = (Vec::new(), Vec::new());
    let revision = ours
        .scan(Kind::Secret, |r| scanned.push(r.name), |u| bad.push(u))
        .await
        .unwrap();
    assert_eq!(revision, 5);
    assert_eq!(scanned, vec!["c".to_owned()]);
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0].name.as_str(), bad[0].event, bad[0].resource_version),
        ("bad", None, 3)
    );

    // Deleting the unreadable object (the remedy) succeeds and says so: the
    // change comes back with its metadata and no data, not as an error after
    // the commit.
    let deleted = ours
        .apply(
            vec![delete(Kind::Secret, "ns", "bad", Precondition::default())],
            t(3),
        )
        .await
        .unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (deleted[0].event, deleted[0].record.name.as_str()),
        (EventType::Deleted, "bad")
    );
    assert!(deleted[0].record.data.is_empty());
    assert!(matches!(
        ours.get(Kind::Secret, "ns", "bad").await,
        Err(Error::NotFound(_))
    ));
}

// ---------------------------------------------------------------------------
// SQLite only: the embedded file

#[tokio::test]
async fn sqlite_data_survives_reopening_the_file() {
    let db = fresh_database_on(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .apply(vec![create_ns("a"), create(Kind::Secret, "a", "s")], t(0))
        .await
        .unwrap();
    let before = store.get(Kind::Secret, "a", "s").await.unwrap();
    let revision = store.current_revision().await.unwrap();
    drop(store);

    let reopened = db.unmigrated_store().await;
    reopened.check_schema().await.unwrap();
    assert_eq!(reopened.get(Kind::Secret, "a", "s").await.unwrap(), before);
    assert_eq!(reopened.current_revision().await.unwrap(), revision);
    // Subscribers of a reopened store start at the stored revision.
    let mut rx = reopened.subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r >= revision))
        .await
        .expect("the reopened store never published the stored revision")
        .unwrap();
    // Revisions go on from where they were.
    let c = one(&reopened, create_ns("b"), t(1)).await;
    assert_eq!(c.revision, revision + 1);
}

#[tokio::test]
async fn sqlite_creates_the_file_and_its_directory_in_wal_mode() {
    let db = fresh_database_on(Backend::Sqlite).await;
    let dir = db
        .url
        .strip_prefix("sqlite://")
        .map(std::path::Path::new)
        .and_then(std::path::Path::parent)
        .unwrap()
        .to_path_buf();
    let file = dir.join("nested").join("deeper").join("badge.db");
    let url = format!("sqlite://{}", file.display());
    assert!(Store::create_database_if_missing(&url).await.unwrap());
    assert!(file.is_file());
    assert!(!Store::create_database_if_missing(&url).await.unwrap());

    // connect alone creates the directory too (the file on first use).
    let other = dir.join("elsewhere").join("badge.db");
    let store = Store::connect(
        &format!("sqlite://{}", other.display()),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store.apply(vec![create_ns("a")], t(0)).await.unwrap();
    assert!(other.is_file());
    assert!(
        dir.join("elsewhere").join("badge.db-wal").is_file(),
        "the database is not in WAL mode"
    );
}

#[tokio::test]
async fn sqlite_refuses_in_memory_and_reports_an_unopenable_file_as_unavailable() {
    for url in ["sqlite::memory:", "sqlite://"] {
        assert!(
            matches!(
                Store::connect(url, StoreOptions::default()).await,
                Err(Error::Invalid(_))
            ),
            "{url}"
        );
    }
    // A directory where the file should be: SQLite cannot open it.
    let db = fresh_database_on(Backend::Sqlite).await;
    let dir = db.url.rsplit_once('/').unwrap().0.to_owned();
    let store = Store::connect(&dir, StoreOptions::default()).await.unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.starts_with("store unavailable: ")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------
// every test above that takes a backend, on both

macro_rules! on_both_backends {
    (current_thread: [$($ct:ident),* $(,)?], multi_thread: [$($mt:ident),* $(,)?] $(,)?) => {
        on_both_backends!(@backend postgres, Postgres, [$($ct),*], [$($mt),*]);
        on_both_backends!(@backend sqlite, Sqlite, [$($ct),*], [$($mt),*]);
    };
    (@backend $module:ident, $backend:ident, [$($ct:ident),*], [$($mt:ident),*]) => {
        mod $module {
            use badge_store::testing::Backend;
            $(
                #[tokio::test]
                async fn $ct() {
                    super::$ct(Backend::$backend).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $mt() {
                    super::$mt(Backend::$backend).await;
                }
            )*
        }
    };
}

on_both_backends! {
    current_thread: [
        scan_streams_what_list_returns,
        create_then_get_returns_the_record_with_server_metadata,
        timestamps_keep_microseconds,
        get_of_a_missing_object_is_not_found,
        names_are_unique_per_kind_and_namespace,
        namespaced_objects_need_their_namespace,
        scope_mismatches_are_invalid,
        update_replaces_content_and_keeps_identity,
        update_and_delete_of_missing_objects_are_not_found,
        stale_resource_version_and_wrong_uid_conflict,
        delete_removes_the_object_and_reports_its_last_state,
        a_failing_op_undoes_the_whole_batch,
        empty_batches_and_empty_namespaces_change_nothing,
        deleting_a_namespace_with_its_contents,
        list_orders_by_namespace_and_name_and_scopes_to_a_namespace,
        list_pages_with_a_filter_and_more,
        list_pages_across_fetch_batches,
        the_feed_is_ordered_and_resumable,
        compaction_makes_old_revisions_out_of_range_but_not_current_ones,
        subscribe_sees_own_commits_immediately,
        check_schema_refuses_an_unmigrated_database_until_migrated,
        check_schema_refuses_newer_and_dirty_databases,
        ping_answers_and_an_unreachable_server_is_unavailable,
        next_deletion_and_expired_deletions,
        advisory_lock_admits_one_holder_at_a_time,
        secret_data_is_sealed_at_rest,
        an_unreadable_row_does_not_stop_the_feed,
    ],
    multi_thread: [
        concurrent_creates_of_one_name_leave_one_winner,
        concurrent_updates_with_one_resource_version_have_exactly_one_winner,
        list_revision_is_exactly_the_state_listed,
        subscribe_wakes_on_a_commit_from_another_store,
    ],
}

// ---------------------------------------------------------------------------
// Reaching the store: bounded waits, several hosts (issue 18).

/// A refused connection must answer UNAVAILABLE within about a second with the
/// default options, not after the whole connect timeout (sqlx keeps retrying a
/// refused connection until the pool's acquire timeout).
#[tokio::test]
async fn a_refused_connection_answers_unavailable_within_a_second() {
    let down = Store::connect(
        "postgres://postgres@127.0.0.1:1/nothing",
        StoreOptions::default(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = down.apply(vec![create_ns("a")], t(0)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(&err, Error::Unavailable(_)), "{err:?}");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
}

/// A stand-in for a Postgres host: forwards 127.0.0.1:`port` to the test server
/// until the returned task is aborted, which drops the listener and every
/// forwarded connection at once — to the store, that host has crashed.
async fn forward(port: u16, to: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            conns.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards to 127.0.0.1:5432; once `hold` is set, the next server answer that
/// completes a BEGIN is held back 300 ms (and `hold` cleared), so a caller can give
/// up while BEGIN has run on the server but its answer has not been read.
async fn begin_delaying_forward(hold: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let hold = hold.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                    return;
                };
                let (mut client_in, mut client_out) = inbound.into_split();
                let (mut server_in, mut server_out) = outbound.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_in, &mut server_out).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_in.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // CommandComplete of a BEGIN carries the tag "BEGIN\0".
                    if buf[..n].windows(6).any(|w| w == b"BEGIN\0")
                        && hold.swap(false, Ordering::SeqCst)
                    {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    if client_out.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    port
}

/// A read whose caller gives up while its `BEGIN … READ ONLY` has run on the
/// server but the answer is still on its way (a timeout, a `select!`) must not
/// leave that transaction open on the pooled connection: the connection's next
/// user, a write, would run inside it and fail with "cannot execute … in a
/// read-only transaction" (sqlx 0.9's own guard misses this window; seen under
/// load when the change-feed read's timeout fired during BEGIN).
#[tokio::test]
async fn a_read_abandoned_during_begin_leaves_no_transaction_behind() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = fresh_database().await;
    if db.backend() != Backend::Postgres {
        return;
    }
    let _migrated = db.store().await;
    let hold = Arc::new(AtomicBool::new(false));
    let port = begin_delaying_forward(hold.clone()).await;
    // Plain text, so the proxy can see BEGIN's answer.
    let url = db
        .url
        .replacen("127.0.0.1:5432", &format!("127.0.0.1:{port}"), 1);
    let url = format!(
        "{url}{}sslmode=disable",
        if url.contains('?') { '&' } else { '?' }
    );
    // One connection, so the write below gets the abandoned read's.
    let store = Store::connect(
        &url,
        StoreOptions {
            max_connections: 1,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    store.apply(vec![create_ns("a")], t(0)).await.unwrap();
    hold.store(true, Ordering::SeqCst);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(150),
        list_all(&store, Kind::Namespace, None),
    )
    .await;
    assert!(abandoned.is_err(), "the read was to be abandoned mid-BEGIN");
    assert!(!hold.load(Ordering::SeqCst), "BEGIN's answer was held");
    tokio::time::sleep(Duration::from_millis(500)).await;
    store
        .apply(vec![create_ns("b")], t(1))
        .await
        .expect("a write after an abandoned read");
    store
        .get(Kind::Namespace, "", "b")
        .await
        .expect("the write is there");
}

/// The primary crashes; a frozen host (accepts connections, never answers) stays
/// in the list; the new primary appears 1.2 s later. The store must see it within
/// one backoff pause (the frozen host's 1 s probe bound must not pace the search),
/// and a write that was waiting for a connection when the primary moved must go
/// through on the new one rather than time out on the old pool.
#[tokio::test]
async fn a_new_primary_is_used_at_once_even_beside_a_frozen_host() {
    let db = fresh_database().await;
    if db.backend() != Backend::Postgres {
        return;
    }
    let (before, after) = db.url.split_once("127.0.0.1:5432").unwrap();
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frozen_port = frozen.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = frozen.accept().await {
            open.push(s);
        }
    });
    let _migrated = db.store().await;
    let (old, new) = (free_port(), free_port());
    let old_primary = forward(old, "127.0.0.1:5432").await;
    let url = format!(
        "{before}127.0.0.1:{old},127.0.0.1:{frozen_port},127.0.0.1:{new}{after}?target_session_attrs=read-write"
    );
    let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
    store.apply(vec![create_ns("before")], t(0)).await.unwrap();

    old_primary.abort();
    let _ = old_primary.await;
    let crashed = tokio::time::Instant::now();
    // The first write after the crash fails over the dead pool and wakes the
    // monitor, as a real request would.
    let _ = store.apply(vec![create_ns("lost")], t(1)).await;
    tokio::time::sleep_until(crashed + Duration::from_millis(1100)).await;
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.apply(vec![create_ns("waiting")], t(2)).await })
    };
    tokio::time::sleep_until(crashed + Duration::from_millis(1200)).await;
    let _new_primary = forward(new, "127.0.0.1:5432").await;
    let appeared = tokio::time::Instant::now();
    let mut k = 0;
    let took = loop {
        k += 1;
        match store
            .apply(vec![create_ns(&format!("after-{k}"))], t(3))
            .await
        {
            Ok(_) => break appeared.elapsed(),
            Err(e) => {
                assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
                assert!(
                    appeared.elapsed() < Duration::from_secs(5),
                    "the new primary was never used: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!("first write on the new primary {took:?} after it appeared");
    assert!(
        took < Duration::from_millis(700),
        "the new primary was used only {took:?} after it appeared"
    );
    let w = waiting.await.unwrap();
    assert!(
        w.is_ok(),
        "a write waiting for a connection when the primary moved failed: {w:?}"
    );
    held.abort();
}

/// `postgres://u@h1:p1,h2:p2/db?target_session_attrs=read-write`: the store finds
/// the host that accepts writes (here the only one up) for queries and for LISTEN.
#[tokio::test]
async fn a_multi_host_url_uses_the_host_that_accepts_writes() {
    let db = fresh_database().await;
    let (before, after) = db.url.split_once("127.0.0.1:5432").unwrap();
    let url = format!("{before}127.0.0.1:1,127.0.0.1:5432{after}?target_session_attrs=read-write");
    let reference = db.store().await;
    let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
    store.apply(vec![create_ns("multi")], t(0)).await.unwrap();
    assert_eq!(
        reference
            .get(Kind::Namespace, "", "multi")
            .await
            .unwrap()
            .name,
        "multi"
    );
    // LISTEN runs on the same host: a commit through another store wakes it.
    let mut rx = store.subscribe();
    let change = reference
        .apply(vec![create_ns("other")], t(1))
        .await
        .unwrap();
    let want = change[0].record.resource_version;
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= want))
        .await
        .expect("LISTEN on the primary sees the commit")
        .unwrap();
    // `badge migrate` creates a missing database on the writable host.
    let fresh = format!(
        "{before}127.0.0.1:1,127.0.0.1:5432/badge_t_multi_{}",
        std::process::id()
    );
    assert!(Store::create_database_if_missing(&fresh).await.unwrap());
    assert!(!Store::create_database_if_missing(&fresh).await.unwrap());
    reference.ping().await.expect("still up");
    let mut admin = sqlx::PgConnection::connect(&format!("{before}127.0.0.1:5432/postgres"))
        .await
        .unwrap();
    sqlx::Executor::execute(
        &mut admin,
        sqlx::AssertSqlSafe(format!(
            "DROP DATABASE \"badge_t_multi_{}\"",
            std::process::id()
        )),
    )
    .await
    .unwrap();
    let bad = Store::connect("postgres://a:1,b:x/db", StoreOptions::default()).await;
    assert!(
        matches!(&bad, Err(Error::Invalid(_))) && format!("{bad:?}").contains("bad port"),
        "{bad:?}"
    );
}
