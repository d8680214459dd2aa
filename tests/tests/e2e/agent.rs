//! `badge-agent` end to end: a pod's projected token volumes written to a directory
//! from real identity / token-issuer servers over mTLS, reviewed by token-review;
//! forced refresh; stop leaves the files; deleting the pod removes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use badge_agent::Exit;
use badge_proto::review as rv;
use badge_tests::{meta, pb};

use crate::common::{Objects, Stack, agent_args, eventually, mode};

/// How long the agent gets to write or refresh its files.
const WAIT: Duration = Duration::from_secs(10);

impl Stack {
    async fn review(&self, token: &str, audiences: &[&str]) -> rv::TokenReviewStatus {
        rv::token_review_service_client::TokenReviewServiceClient::new(
            self.review
                .channel(&self.identity, &self.identity.pki.admin),
        )
        .create_token_review(rv::CreateTokenReviewRequest {
            spec: Some(rv::TokenReviewSpec {
                token: token.into(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
            }),
        })
        .await
        .expect("review")
        .into_inner()
        .status
        .expect("status")
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A namespace `apps`, a service account `web-sa` and a pod `web` with a projected
/// `vault` token at `vault/token` (and admission's kube-api-access `token`).
async fn workload(s: &Stack) -> String {
    let admin = s.identity.admin().await;
    admin.ns("apps").await;
    admin.sa("apps", "web-sa").await;
    use pb::volume::Source;
    use pb::volume_projection::Projection;
    let pod = admin
        .create_pod(pb::Pod {
            metadata: meta("apps", "web"),
            spec: Some(pb::PodSpec {
                service_account_name: "web-sa".into(),
                volumes: vec![pb::Volume {
                    name: "vault-token".into(),
                    source: Some(Source::Projected(pb::ProjectedVolumeSource {
                        sources: vec![pb::VolumeProjection {
                            projection: Some(Projection::ServiceAccountToken(
                                pb::ServiceAccountTokenProjection {
                                    audience: "vault".into(),
                                    expiration_seconds: Some(600),
                                    path: "vault/token".into(),
                                },
                            )),
                        }],
                        default_mode: None,
                    })),
                }],
                containers: vec![pb::Container {
                    name: "app".into(),
                    image: "example/web:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
        .await;
    pod.metadata.expect("metadata").uid
}

#[tokio::test]
async fn agent_projects_refreshes_and_cleans_up() {
    let s = Stack::start().await;
    let pod_uid = workload(&s).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("serviceaccount");
    let vault: PathBuf = dir.join("vault/token");
    let api: PathBuf = dir.join("token");

    // First run: files appear; stop leaves them.
    let (handle, control) = badge_agent::control();
    let task = tokio::spawn(badge_agent::run(
        agent_args(&s.identity, &s.issuer, "apps", "web", &dir),
        control,
    ));
    eventually("the token files", WAIT, || vault.is_file() && api.is_file()).await;
    assert_eq!(read(&dir.join("namespace")), "apps");
    assert_eq!(
        std::fs::read(dir.join("ca.crt")).expect("ca.crt"),
        std::fs::read(&s.identity.pki.ca).expect("ca")
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        for f in [&vault, &api, &dir.join("ca.crt"), &dir.join("namespace")] {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    }
    let first = read(&vault);
    let st = s.review(&first, &["vault"]).await;
    assert!(st.authenticated, "{}", st.error);
    let user = st.user.expect("user");
    assert_eq!(user.username, "system:serviceaccount:apps:web-sa");
    assert_eq!(
        user.extra
            .get("authentication.kubernetes.io/pod-uid")
            .map(|v| v.items.clone()),
        Some(vec![pod_uid.clone()])
    );
    // The kube-api-access token carries the API audiences.
    let st = s.review(&read(&api), &[]).await;
    assert!(st.authenticated, "{}", st.error);

    handle.stop();
    let exit = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent");
    assert_eq!(exit, Exit::Stopped);
    assert!(vault.is_file() && api.is_file(), "stop leaves the files");

    // Second run: a forced refresh (SIGHUP) writes new tokens.
    let (handle, control) = badge_agent::control();
    let task = tokio::spawn(badge_agent::run(
        agent_args(&s.identity, &s.issuer, "apps", "web", &dir),
        control,
    ));
    eventually("the restarted agent's token", WAIT, || {
        read(&vault) != first
    })
    .await;
    let second = read(&vault);
    handle.refresh();
    eventually("a refreshed token", WAIT, || {
        let t = read(&vault);
        !t.is_empty() && t != second
    })
    .await;
    let third = read(&vault);
    let st = s.review(&third, &["vault"]).await;
    assert!(st.authenticated, "{}", st.error);
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.join("vault"))
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["token"]);

    // Deleting the pod removes the files and ends the agent.
    pb::pod_service_client::PodServiceClient::new(s.identity.admin().await)
        .delete_pod(pb::DeletePodRequest {
            namespace: "apps".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .expect("delete pod");
    let exit = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("agent exits after the pod is deleted")
        .expect("join")
        .expect("agent");
    assert_eq!(exit, Exit::PodDeleted);
    for f in [&vault, &api, &dir.join("ca.crt"), &dir.join("namespace")] {
        assert!(!f.exists(), "{} removed", f.display());
    }
    // And the token it had written is dead with the pod.
    assert!(!s.review(&third, &["vault"]).await.authenticated);
}

#[tokio::test]
async fn agent_for_a_missing_pod_fails() {
    let s = Stack::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_handle, control) = badge_agent::control();
    let e = badge_agent::run(
        agent_args(&s.identity, &s.issuer, "default", "nope", tmp.path()),
        control,
    )
    .await
    .expect_err("no pod");
    assert!(e.to_string().contains("pod default/nope not found"), "{e}");
}

#[tokio::test]
async fn agent_keeps_retrying_while_the_issuer_is_unreachable() {
    let s = Stack::start().await;
    workload(&s).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sa");
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut args = agent_args(&s.identity, &s.issuer, "apps", "web", &dir);
    args.conn.issuer_endpoint = Some(format!("https://127.0.0.1:{port}"));
    let (handle, control) = badge_agent::control();
    let task = tokio::spawn(badge_agent::run(args, control));
    // ca.crt and namespace are written; the tokens are retried with backoff (1 s,
    // 2 s, ...) and the agent keeps running.
    eventually("ca.crt", WAIT, || dir.join("ca.crt").is_file()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!task.is_finished(), "the agent does not give up");
    assert!(!dir.join("vault/token").exists());
    handle.stop();
    let exit = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("agent");
    assert_eq!(exit, Exit::Stopped);
    assert!(dir.join("ca.crt").is_file(), "stop leaves the files");
}

/// #13 finding 10: the agent refuses a target directory that is a symlink or that
/// another user owns (that user could read the tokens or redirect them), before
/// writing anything, with an error naming the directory.
#[tokio::test]
async fn agent_refuses_a_symlinked_or_foreign_target_directory() {
    use std::os::unix::fs::MetadataExt;
    let s = Stack::start().await;
    workload(&s).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = tmp.path().join("tokens");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");

    let (_handle, control) = badge_agent::control();
    // Refused at once (before the fix it projected through the link and ran on).
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        badge_agent::run(
            agent_args(&s.identity, &s.issuer, "apps", "web", &link),
            control,
        ),
    )
    .await
    .expect("the agent ran on instead of refusing the symlinked directory")
    .expect_err("a symlinked directory is refused");
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!(
            "{} is a symlink (to {}): refusing to write tokens through it",
            link.display(),
            real.display()
        )),
        "{e}"
    );
    assert!(
        std::fs::read_dir(&real).expect("ls").next().is_none(),
        "nothing written through the link"
    );

    // Another user's directory: as root, one chowned away; otherwise root's own /.
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let foreign = if me == 0 {
        let d = tmp.path().join("foreign");
        std::fs::create_dir(&d).expect("mkdir");
        std::os::unix::fs::chown(&d, Some(4242), Some(4242)).expect("chown as root");
        d
    } else {
        PathBuf::from("/")
    };
    let owner = std::fs::metadata(&foreign).expect("stat").uid();
    let (_handle, control) = badge_agent::control();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        badge_agent::run(
            agent_args(&s.identity, &s.issuer, "apps", "web", &foreign),
            control,
        ),
    )
    .await
    .expect("the agent ran on instead of refusing another user's directory")
    .expect_err("another user's directory is refused");
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!(
            "{} is owned by uid {owner}, not by the agent's uid {me}",
            foreign.display()
        )),
        "{e}"
    );
    assert!(
        std::fs::read_dir(&foreign)
            .expect("ls")
            .all(|e| e.expect("entry").file_name() != "ca.crt"),
        "nothing written into it"
    );
}
