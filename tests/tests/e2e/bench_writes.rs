//! `badge-bench create-service-account`, `create-pod`, `service-account-churn` and
//! `pod-churn` (issue 17) against real servers on Postgres: parsed from their
//! command lines as `scripts/bench-writes.sh` gives them, each runs briefly with
//! many requests in flight (so identity's store commits them in batches): no
//! error, every acknowledged object is there afterwards, the churn's creates,
//! updates and deletes reach the change feed in each account's order, and the
//! pod churn's pods are gone with their tokens refused.

use badge_bench::cli::{Cli, Command};
use badge_bench::load::LoadConfig;
use badge_runtime::tls::TlsFiles;
use badge_tests::IdentityServer;
use clap::Parser;

use crate::common::{Objects as _, strings};

/// Runs `scenario --namespace bench --name-prefix load-` against `identity` for
/// a second, parsed from the command line the bench script uses.
async fn run(identity: &IdentityServer, scenario: &str) -> badge_bench::report::Report {
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    let words = strings(&[
        "badge-bench",
        "run",
        "--target",
        &identity.url(),
        "--ca",
        &path(&identity.pki.ca),
        "--cert",
        &path(&identity.pki.admin.cert),
        "--key",
        &path(&identity.pki.admin.key),
        "--connections",
        "2",
        "--in-flight",
        "16",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        scenario,
        "--namespace",
        "bench",
        "--name-prefix",
        "load-",
    ]);
    let Command::Run(run) = Cli::try_parse_from(words).expect("parse").command else {
        panic!("run")
    };
    let config = LoadConfig {
        target: run.target,
        server_name: run.server_name,
        tls: TlsFiles {
            ca: run.tls.ca,
            cert: run.tls.cert,
            key: run.tls.key,
        },
        connections: run.load.connections,
        in_flight: run.load.in_flight,
        duration: run.load.duration,
        warmup: run.load.warmup,
        threads: run.load.threads,
    };
    badge_bench::load::run(&config, run.scenario.build().expect("scenario"))
        .await
        .expect("load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_service_account_scenario_writes_a_new_account_per_request() {
    let identity = IdentityServer::start().await;
    let id = identity.admin().await;
    id.ns("bench").await;
    let report = run(&identity, "create-service-account").await;
    assert!(report.ok > 0, "{report}");
    assert_eq!(report.errors_total(), 0, "{report}");

    // Warm-up requests write too: at least the measured ones are there, each
    // under its own name, plus the namespace's `default`.
    let store = identity.db.store().await;
    let all = |_: &badge_store::Record| true;
    let listed = store
        .list(badge_store::ListQuery {
            kind: badge_core::Kind::ServiceAccount,
            namespace: Some("bench"),
            after: None,
            limit: 0,
            filter: &all,
        })
        .await
        .expect("list");
    let names: std::collections::HashSet<&str> = listed
        .items
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| n.starts_with("load-"))
        .collect();
    assert!(
        names.len() as u64 >= report.ok,
        "{} accounts stored, {} acknowledged",
        names.len(),
        report.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_scenario_creates_updates_and_deletes_in_each_accounts_order() {
    let identity = IdentityServer::start().await;
    let id = identity.admin().await;
    id.ns("bench").await;
    let report = run(&identity, "service-account-churn").await;
    assert!(report.ok > 0, "{report}");
    // An update or delete answered Conflict or NotFound would mean the server
    // answered an earlier write of the same account wrongly.
    assert_eq!(report.errors_total(), 0, "{report}");

    let store = identity.db.store().await;
    let feed = store.changes_since(0, 0).await.expect("feed");
    let mut seen: std::collections::BTreeMap<&str, Vec<badge_store::EventType>> =
        Default::default();
    for c in feed.iter().filter(|c| c.record.name.starts_with("load-")) {
        seen.entry(c.record.name.as_str())
            .or_default()
            .push(c.event);
    }
    use badge_store::EventType::{Added, Deleted, Modified};
    let mut counts = [0usize; 3];
    for (name, events) in &seen {
        assert!(
            [Added, Modified, Deleted].starts_with(events),
            "{name}: events {events:?} out of order"
        );
        counts[events.len() - 1] += 1;
        let stored = store
            .get(badge_core::Kind::ServiceAccount, "bench", name)
            .await
            .is_ok();
        assert_eq!(stored, events.len() < 3, "{name}: {events:?}");
    }
    assert!(
        counts.iter().all(|&n| n > 0),
        "created only / updated / deleted accounts: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_pod_scenario_writes_a_new_pod_per_request_through_admission() {
    let identity = IdentityServer::start().await;
    let id = identity.admin().await;
    id.ns("bench").await;
    let report = run(&identity, "create-pod").await;
    assert!(report.ok > 0, "{report}");
    assert_eq!(report.errors_total(), 0, "{report}");
    let store = identity.db.store().await;
    let all = |_: &badge_store::Record| true;
    let listed = store
        .list(badge_store::ListQuery {
            kind: badge_core::Kind::Pod,
            namespace: Some("bench"),
            after: None,
            limit: 0,
            filter: &all,
        })
        .await
        .expect("list");
    let pods = listed
        .items
        .iter()
        .filter(|r| r.name.starts_with("load-"))
        .count();
    assert!(
        pods as u64 >= report.ok,
        "{pods} pods stored, {} acknowledged",
        report.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_churn_creates_binds_reviews_and_revokes_every_pod() {
    use badge_tests::{IssuerOptions, IssuerServer, ReviewServer};
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let review = ReviewServer::start(&identity, &issuer).await;
    identity.admin().await.ns("bench").await;
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    let words = strings(&[
        "badge-bench",
        "pod-churn",
        "--identity",
        &identity.url(),
        "--issuer",
        &format!("https://{}", issuer.grpc),
        "--review",
        &format!("https://{}", review.grpc),
        "--ca",
        &path(&identity.pki.ca),
        "--cert",
        &path(&identity.pki.admin.cert),
        "--key",
        &path(&identity.pki.admin.key),
        "--namespace",
        "bench",
        "--workers",
        "8",
        "--reviewers",
        "4",
        "--duration",
        "1s",
        "--name-prefix",
        "churn-",
    ]);
    let Command::PodChurn(args) = Cli::try_parse_from(words).expect("parse").command else {
        panic!("pod-churn")
    };
    let report = badge_bench::pod_churn::run(args.config())
        .await
        .expect("pod churn");
    // Every pod went through every step: its token authenticated while it lived
    // and was refused once it was deleted (a late refusal is an error).
    assert!(report.pods_completed > 0, "{report}");
    assert_eq!(report.errors(), 0, "{report}");
    assert_eq!(report.create_pod.ok, report.pods_completed, "{report}");
    assert_eq!(report.delete_pod.ok, report.pods_completed, "{report}");
    assert!(report.review_live.ok > 0, "{report}");
    assert_eq!(
        report.revocation_us.len(),
        report.pods_completed,
        "{report}"
    );
    let store = identity.db.store().await;
    let all = |_: &badge_store::Record| true;
    let left = store
        .list(badge_store::ListQuery {
            kind: badge_core::Kind::Pod,
            namespace: Some("bench"),
            after: None,
            limit: 0,
            filter: &all,
        })
        .await
        .expect("list");
    assert!(
        left.items.is_empty(),
        "pods left behind: {:?}",
        left.items.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
}
