//! `badge-bench create-service-account` (issue 17) against a real identity server
//! on Postgres: parsed from its command line as `scripts/bench-writes.sh` gives
//! it, it runs briefly with many requests in flight (so identity's store commits
//! them in batches), every request a new name: no error, and every acknowledged
//! account is there afterwards.

use badge_bench::cli::{Cli, Command};
use badge_bench::load::LoadConfig;
use badge_runtime::tls::TlsFiles;
use badge_tests::IdentityServer;
use clap::Parser;

use crate::common::{Objects as _, strings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_service_account_scenario_writes_a_new_account_per_request() {
    let identity = IdentityServer::start().await;
    let id = identity.admin().await;
    id.ns("bench").await;
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
        "create-service-account",
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
    let report = badge_bench::load::run(&config, run.scenario.build().expect("scenario"))
        .await
        .expect("load");
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
