//! `badge up` on its default store, the embedded SQLite file under the data
//! directory: it starts with nothing installed, serves, and a restart keeps the
//! data (a service account created before the stop is there after the start).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use badge_cli::up::{UpArgs, run_until};
use badge_runtime::pki::DevPki;
use badge_tests::{identity, meta, pb};
use pb::service_account_service_client::ServiceAccountServiceClient;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Five free loopback ports (bound, then released for `badge up` to bind).
async fn free_addrs() -> Vec<SocketAddr> {
    let mut listeners = Vec::new();
    for _ in 0..5 {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect()
}

struct Up {
    identity: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn up(data_dir: &Path) -> Up {
    let a = free_addrs().await;
    let args = UpArgs {
        data_dir: data_dir.to_path_buf(),
        // The default: sqlite://<data-dir>/badge.db.
        database_url: None,
        identity_listen: a[0],
        issuer_listen: a[1],
        oidc_listen: a[2],
        review_listen: a[3],
        webhook_listen: a[4],
        issuer_url: None,
        algorithm: "ES256".into(),
        identity_reads_from_store: false,
    };
    assert_eq!(
        args.database_url(),
        format!("sqlite://{}", data_dir.join("badge.db").display())
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_until(args, async move {
        let _ = stopped.await;
    }));
    Up {
        identity: a[0],
        stop,
        task,
    }
}

impl Up {
    async fn service_accounts(&self, data_dir: &Path) -> ServiceAccountServiceClient<Channel> {
        let pki = DevPki::at(&data_dir.join("pki"));
        // The PKI is written before anything listens.
        for _ in 0..200 {
            if pki.admin.key.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).expect("ca")))
            .identity(identity(&pki.admin))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{}", self.identity))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy();
        ServiceAccountServiceClient::new(channel)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("badge up did not stop within 30s")
            .expect("join")
            .expect("badge up returned an error");
    }
}

async fn get(
    c: &mut ServiceAccountServiceClient<Channel>,
    name: &str,
) -> Result<pb::ServiceAccount, tonic::Status> {
    c.get_service_account(pb::GetServiceAccountRequest {
        namespace: "default".into(),
        name: name.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badge_up_runs_on_embedded_sqlite_and_a_restart_keeps_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("badge-data");

    let first = up(&data).await;
    let mut c = first.service_accounts(&data).await;
    let mut created = None;
    let mut last = None;
    for _ in 0..200 {
        match c
            .create_service_account(pb::CreateServiceAccountRequest {
                service_account: Some(pb::ServiceAccount {
                    metadata: meta("default", "demo"),
                    ..Default::default()
                }),
            })
            .await
        {
            Ok(r) => {
                created = Some(r.into_inner());
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = created.unwrap_or_else(|| panic!("create never succeeded: {last:?}"));
    let uid = created.metadata.expect("metadata").uid;
    assert!(!uid.is_empty());
    first.stop().await;
    assert!(data.join("badge.db").is_file(), "no database file");

    let second = up(&data).await;
    let mut c = second.service_accounts(&data).await;
    let mut found = None;
    for _ in 0..200 {
        match get(&mut c, "demo").await {
            Ok(sa) => {
                found = Some(sa);
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = found.unwrap_or_else(|| panic!("demo is gone after the restart: {last:?}"));
    assert_eq!(found.metadata.expect("metadata").uid, uid);
    second.stop().await;
}

/// Issue 13 findings 2 and 10 through `badge up`: the data and PKI directories are
/// private, the webhook kubeconfig holds the kube-apiserver certificate (0600),
/// and the webhook answers only a credential that RBAC allows: anonymous → 401,
/// an authenticated user without `create tokenreviews` → 403 with Kubernetes'
/// text, the kube-apiserver certificate → 200.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badge_up_webhook_requires_a_credential_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("badge-data");
    let a = free_addrs().await;
    let args = UpArgs {
        data_dir: data.clone(),
        database_url: None,
        identity_listen: a[0],
        issuer_listen: a[1],
        oidc_listen: a[2],
        review_listen: a[3],
        webhook_listen: a[4],
        issuer_url: None,
        algorithm: "ES256".into(),
        identity_reads_from_store: false,
    };
    let webhook = a[4];
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_until(args, async move {
        let _ = stopped.await;
    }));
    let kubeconfig = data.join("webhook-kubeconfig.yaml");
    for _ in 0..400 {
        if kubeconfig.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let pki = DevPki::at(&data.join("pki"));
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&pki.dir), 0o700, "pki directory");
    assert_eq!(
        mode(&kubeconfig),
        0o600,
        "the kubeconfig holds a private key"
    );
    assert_eq!(mode(&pki.kube_apiserver.key), 0o600);
    assert_eq!(mode(&data.join("kek")), 0o600);
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    for want in [
        format!("server: https://{webhook}/"),
        "certificate-authority-data: ".into(),
        "client-certificate-data: ".into(),
        "client-key-data: ".into(),
        "current-context: webhook".into(),
    ] {
        assert!(text.contains(&want), "{want} missing from {text}");
    }

    let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"a.b.c"}}"#;
    let ca = pki.ca.clone();
    let post = |client: Option<badge_runtime::pki::CertPaths>| {
        let ca = ca.clone();
        async move {
            badge_tests::https_post(webhook, "/", &ca, client.as_ref(), "application/json", body)
                .await
        }
    };
    // The policy loads shortly after start: wait for the apiserver's 200.
    let mut last = None;
    for _ in 0..200 {
        let (status, _, out) = post(Some(pki.kube_apiserver.clone())).await;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(v["status"]["authenticated"], false);
            last = None;
            break;
        }
        last = Some((status, String::from_utf8_lossy(&out).into_owned()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.is_none(),
        "kube-apiserver was never answered: {last:?}"
    );

    let (status, _, out) = post(None).await;
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(status, 401);
    assert_eq!(
        v,
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"Unauthorized","reason":"Unauthorized","code":401})
    );

    let mallory =
        badge_runtime::pki::issue_client(&pki.dir, "mallory", "mallory", &[]).expect("issue");
    let (status, _, out) = post(Some(mallory.clone())).await;
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(v["code"], 403);
    let message = v["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            r#"tokenreviews.authentication.k8s.io is forbidden: User "mallory" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope"#
        ),
        "{message}"
    );
    // The authorization webhook needs create subjectaccessreviews.
    let sar = br#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"admin","resourceAttributes":{"verb":"get","resource":"secrets"}}}"#;
    let (status, _, out) = badge_tests::https_post(
        webhook,
        "/",
        &pki.ca,
        Some(&mallory),
        "application/json",
        sar,
    )
    .await;
    assert_eq!(status, 403);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert!(
        v["message"].as_str().expect("message").starts_with(
            "subjectaccessreviews.authorization.k8s.io is forbidden: User \"mallory\""
        ),
        "{v}"
    );
    let (status, _, _) = badge_tests::https_post(
        webhook,
        "/",
        &pki.ca,
        Some(&pki.kube_apiserver),
        "application/json",
        sar,
    )
    .await;
    assert_eq!(status, 200);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("badge up did not stop within 30s")
        .expect("join")
        .expect("badge up returned an error");
}
