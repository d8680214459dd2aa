//! The load generator against the in-process echo server over real mTLS, and the
//! loopback guard.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use badge_bench::echo::EchoServer;
use badge_bench::load::{self, LoadConfig};
use badge_bench::scenario::Scenario;
use badge_bench::target::RefusedTarget;
use badge_runtime::pki;
use badge_runtime::tls::{TlsFiles, TlsMaterial};

async fn echo_server(dir: &Path) -> (EchoServer, TlsFiles) {
    let pki = pki::generate(dir, &[]).unwrap();
    let server_cert = pki.server("identity");
    let server_tls = TlsMaterial::load(&TlsFiles {
        ca: pki.ca.clone(),
        cert: server_cert.cert,
        key: server_cert.key,
    })
    .unwrap();
    let server = EchoServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &server_tls)
        .await
        .unwrap();
    let client = TlsFiles {
        ca: pki.ca.clone(),
        cert: pki.admin.cert.clone(),
        key: pki.admin.key.clone(),
    };
    (server, client)
}

fn config(target: String, tls: TlsFiles, duration: Duration) -> LoadConfig {
    LoadConfig {
        target,
        server_name: "localhost".to_string(),
        tls,
        connections: 2,
        in_flight: 4,
        duration,
        warmup: Duration::from_millis(200),
        threads: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_mtls_two_by_four() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = echo_server(dir.path()).await;
    let started = Instant::now();
    let report = load::run(
        &config(server.url(), client, Duration::from_secs(1)),
        Scenario::echo(64),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    server.stop().await.unwrap();

    assert!(report.ok > 0, "{report}");
    assert_eq!(report.errors_total(), 0, "{report}");
    assert_eq!(report.cut_off, 0, "{report}");
    assert_eq!(report.latency_us.len(), report.ok);
    assert!(report.quantile_ms(0.5) > 0.0);
    assert!(report.elapsed >= Duration::from_secs(1), "{report}");
    // Bounded: 0.2 s warmup + 1 s window, then it stops by itself.
    assert!(took < Duration::from_secs(4), "run took {took:?}");
    let json = report.to_json();
    assert_eq!(json["scenario"], "echo");
    assert_eq!(json["ok"], report.ok);
    assert_eq!(json["errors"], 0);
}

#[tokio::test]
async fn server_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = echo_server(dir.path()).await;
    // A client whose certificate comes from another CA cannot connect.
    let other = tempfile::tempdir().unwrap();
    let other_pki = pki::generate(other.path(), &[]).unwrap();
    let stranger = TlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: other_pki.admin.cert.clone(),
        key: other_pki.admin.key.clone(),
    };
    let result = load::run(
        &config(server.url(), stranger, Duration::from_millis(300)),
        Scenario::echo(8),
    )
    .await;
    server.stop().await.unwrap();
    match result {
        Err(_) => {}
        // TLS 1.3 may report the rejected certificate on the first request instead.
        Ok(report) => {
            assert_eq!(report.ok, 0, "{report}");
            assert!(report.errors_total() > 0, "{report}");
        }
    }
}

#[tokio::test]
async fn non_loopback_target_is_refused_before_connecting() {
    // The TLS paths do not exist: the target check must come first, so the error
    // is the refusal, not a file error, and nothing was dialled (10.0.0.1:1 would
    // hang until the connect timeout).
    let missing = TlsFiles {
        ca: "/nonexistent/ca.pem".into(),
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    };
    for target in [
        "https://10.0.0.1:1",
        "https://[2001:db8::1]:443",
        "https://example.com:443",
        "https://0.0.0.0:1",
    ] {
        let started = Instant::now();
        let err = load::run(
            &config(target.to_string(), missing.clone(), Duration::from_secs(1)),
            Scenario::echo(8),
        )
        .await
        .expect_err(target);
        let refused = err
            .downcast_ref::<RefusedTarget>()
            .unwrap_or_else(|| panic!("{target}: expected a refusal, got {err:#}"));
        assert_eq!(refused.target, target);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}

#[tokio::test]
async fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = echo_server(dir.path()).await;
    let mut too_long = config(server.url(), client.clone(), Duration::from_secs(301));
    assert!(load::run(&too_long, Scenario::echo(8)).await.is_err());
    too_long.duration = Duration::from_secs(1);
    too_long.connections = 0;
    assert!(load::run(&too_long, Scenario::echo(8)).await.is_err());
    too_long.connections = 2;
    for threads in [0, 65] {
        too_long.threads = Some(threads);
        let err = load::run(&too_long, Scenario::echo(8)).await.unwrap_err();
        assert!(format!("{err:#}").contains("--threads"), "{err:#}");
    }
    server.stop().await.unwrap();
}

/// Every connection on every client thread keeps its requests in flight for the
/// whole window, together: by Little's law the time spent in requests over the
/// window is the number in flight (3 connections x 4 here, on 2 threads with one
/// taking two connections). A thread that started late, or a connection left
/// idle, shows as fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_connections_on_all_threads_load_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = echo_server(dir.path()).await;
    let mut run = config(server.url(), client, Duration::from_secs(1));
    run.connections = 3;
    run.threads = Some(2);
    let report = load::run(&run, Scenario::echo(64)).await.unwrap();
    server.stop().await.unwrap();

    assert_eq!(report.errors_total(), 0, "{report}");
    let in_flight = report.ok as f64 * report.mean_ms() / 1000.0 / report.elapsed.as_secs_f64();
    assert!(
        (10.0..=12.5).contains(&in_flight),
        "{in_flight:.2} requests in flight on average, 12 expected: {report}"
    );
}
