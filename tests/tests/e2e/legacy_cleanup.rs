//! The legacy-token cleaner (reference §6.3) on a real Postgres with a fixed clock:
//! unused for a period → marked invalid; invalid for another period → deleted;
//! recently used or pod-referenced secrets are left alone.

use std::sync::Arc;
use std::time::Duration;

use badge_core::legacy_cleanup::{INVALID_SINCE_LABEL, LAST_USED_LABEL};
use badge_core::{FixedClock, Kind};
use badge_identity::Objects;
use badge_identity::controllers::clean_legacy_tokens;
use badge_proto::identity as pb;
use badge_proto::meta::{ObjectMeta, ObjectReference};
use badge_store::testing::fresh_database;

const DAY: u64 = 86_400;
// 2025-01-01T00:00:00Z
const T0: u64 = 1_735_689_600;

fn token_secret(name: &str, labels: &[(&str, &str)]) -> pb::Secret {
    let mut m = ObjectMeta {
        name: name.into(),
        namespace: "apps".into(),
        ..Default::default()
    };
    m.annotations
        .insert("kubernetes.io/service-account.name".into(), "legacy".into());
    for (k, v) in labels {
        m.labels.insert((*k).into(), (*v).into());
    }
    pb::Secret {
        metadata: Some(m),
        r#type: "kubernetes.io/service-account-token".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn unused_tokens_are_invalidated_then_deleted() {
    let db = fresh_database().await;
    let store = db.store().await;
    let clock = Arc::new(FixedClock::at_unix(T0));
    let objects = Objects::new(store.clone(), clock.clone());
    badge_identity::controllers::bootstrap(&objects)
        .await
        .expect("bootstrap");
    let sa = pb::ServiceAccount {
        metadata: Some(ObjectMeta {
            name: "legacy".into(),
            namespace: "apps".into(),
            ..Default::default()
        }),
        secrets: ["unused", "used", "mounted"]
            .iter()
            .map(|n| ObjectReference {
                name: (*n).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let pod = pb::Pod {
        metadata: Some(ObjectMeta {
            name: "p".into(),
            namespace: "apps".into(),
            ..Default::default()
        }),
        spec: Some(pb::PodSpec {
            service_account_name: "legacy".into(),
            containers: vec![pb::Container {
                name: "c".into(),
                env_from: vec![pb::EnvFromSource {
                    secret_ref: Some(pb::SecretEnvSource {
                        name: "mounted".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let ns = pb::Namespace {
        metadata: Some(ObjectMeta {
            name: "apps".into(),
            ..Default::default()
        }),
        status: None,
    };
    store
        .apply(
            vec![
                Objects::create_op(&ns),
                Objects::create_op(&sa),
                Objects::create_op(&token_secret("unused", &[])),
                Objects::create_op(&token_secret("used", &[])),
                Objects::create_op(&token_secret("mounted", &[])),
                Objects::create_op(&pod),
            ],
            badge_core::Clock::now(clock.as_ref()),
        )
        .await
        .expect("setup");
    let period = Duration::from_secs(365 * DAY);

    // Day 0: tracking starts now, so nothing can be called unused yet.
    assert_eq!(
        clean_legacy_tokens(&objects, period).await.expect("pass"),
        0
    );

    // A year and two days later, `used` was used yesterday.
    clock.advance(Duration::from_secs(367 * DAY));
    let label = |name: &'static str, k: &'static str, v: &'static str| {
        let store = store.clone();
        async move {
            let rec = store.get(Kind::Secret, "apps", name).await.expect("secret");
            let mut s: pb::Secret = badge_records::decode(&rec).expect("decode");
            s.metadata
                .as_mut()
                .expect("m")
                .labels
                .insert(k.into(), v.into());
            let (labels, data) = badge_records::encode(&s);
            store
                .apply(
                    vec![badge_store::Op::Update {
                        kind: Kind::Secret,
                        namespace: "apps".into(),
                        name: name.into(),
                        precondition: Default::default(),
                        labels,
                        data,
                        deletion_timestamp: None,
                    }],
                    std::time::SystemTime::now(),
                )
                .await
                .expect("label");
        }
    };
    label("used", LAST_USED_LABEL, "2026-01-02").await;
    assert_eq!(
        clean_legacy_tokens(&objects, period).await.expect("pass"),
        1
    );
    let get = |name: &'static str| {
        let store = store.clone();
        async move {
            store
                .get(Kind::Secret, "apps", name)
                .await
                .ok()
                .map(|r| r.labels)
        }
    };
    assert_eq!(
        get("unused")
            .await
            .expect("still there")
            .get(INVALID_SINCE_LABEL)
            .map(String::as_str),
        Some("2026-01-03")
    );
    assert!(
        !get("used")
            .await
            .expect("kept")
            .contains_key(INVALID_SINCE_LABEL)
    );
    assert!(
        !get("mounted")
            .await
            .expect("kept")
            .contains_key(INVALID_SINCE_LABEL)
    );

    // Invalid for a further period: deleted. The others stay.
    clock.advance(Duration::from_secs(366 * DAY));
    clean_legacy_tokens(&objects, period).await.expect("pass");
    assert!(
        get("unused").await.is_none(),
        "deleted after a second period"
    );
    assert!(
        get("mounted").await.is_some(),
        "a pod references it: never touched"
    );
}
