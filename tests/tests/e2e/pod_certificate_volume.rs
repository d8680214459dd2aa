//! `badge-agent` (per-pod mode) and a `podCertificate` projected volume, end to end
//! against real identity / token-issuer servers: the credential bundle (0600, the
//! PKCS#8 key first, then the chain leaf first; the key matches the leaf; the chain
//! verifies against the trust bundle; the leaf's URI SAN is the pod's SPIFFE ID),
//! key + chain files, forced rotations that a concurrent reader never sees torn,
//! and removal when the pod is deleted. Identity refuses a bad source by field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use badge_agent::Exit;
use badge_proto::certificates as cpb;
use badge_proto::rbac as rb;
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, meta, pb};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Objects, agent_args, eventually, mode, openssl};

/// How long the agent gets to write or rotate its files.
const WAIT: Duration = Duration::from_secs(20);

struct Stack {
    identity: IdentityServer,
    issuer: IssuerServer,
}

async fn stack() -> Stack {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    Stack { identity, issuer }
}

impl Stack {
    async fn roots_pem(&self) -> String {
        cpb::certificate_authority_service_client::CertificateAuthorityServiceClient::new(
            self.issuer
                .channel(&self.identity, &self.identity.pki.admin),
        )
        .get_trust_bundle(cpb::GetTrustBundleRequest {})
        .await
        .expect("GetTrustBundle")
        .into_inner()
        .roots_pem
    }
}

fn pod_certificate(bundle: &str, key: &str, chain: &str, key_type: &str) -> pb::VolumeProjection {
    pb::VolumeProjection {
        projection: Some(pb::volume_projection::Projection::PodCertificate(
            pb::PodCertificateProjection {
                signer_name: "badge.dev/spiffe".into(),
                key_type: key_type.into(),
                max_expiration_seconds: Some(3600),
                credential_bundle_path: bundle.into(),
                key_path: key.into(),
                certificate_chain_path: chain.into(),
                user_annotations: [("example.com/team".to_string(), "web".to_string())].into(),
            },
        )),
    }
}

fn pod(sources: Vec<pb::VolumeProjection>) -> pb::Pod {
    pb::Pod {
        metadata: meta("apps", "web"),
        spec: Some(pb::PodSpec {
            service_account_name: "web-sa".into(),
            node_name: "node-a".into(),
            volumes: vec![pb::Volume {
                name: "certs".into(),
                source: Some(pb::volume::Source::Projected(pb::ProjectedVolumeSource {
                    sources,
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
    }
}

/// Namespace `apps`, service account `web-sa` (with RBAC `create
/// podcertificaterequests`: the agent, holding an admin certificate, calls as the
/// pod), node `node-a`, and pod `web` on it with a bundle source and a key + chain
/// source.
async fn workload(s: &Stack) {
    let admin = s.identity.admin().await;
    admin.ns("apps").await;
    admin.sa("apps", "web-sa").await;
    admin.node("node-a").await;
    grant_web_sa_pod_certificates(&admin).await;
    admin
        .create_pod(pod(vec![
            pod_certificate("tls/credentialbundle.pem", "", "", "ECDSAP256"),
            pod_certificate("", "split/tls.key", "split/tls.crt", "ED25519"),
        ]))
        .await;
}

async fn grant_web_sa_pod_certificates(admin: &Channel) {
    rb::role_service_client::RoleServiceClient::new(admin.clone())
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: meta("apps", "pod-certificates"),
                rules: vec![rb::PolicyRule {
                    verbs: vec!["create".into()],
                    api_groups: vec!["certificates.k8s.io".into()],
                    resources: vec!["podcertificaterequests".into()],
                    ..Default::default()
                }],
            }),
        })
        .await
        .expect("role");
    rb::role_binding_service_client::RoleBindingServiceClient::new(admin.clone())
        .create_role_binding(rb::CreateRoleBindingRequest {
            role_binding: Some(rb::RoleBinding {
                metadata: meta("apps", "pod-certificates"),
                subjects: vec![rb::Subject {
                    kind: "ServiceAccount".into(),
                    name: "web-sa".into(),
                    namespace: "apps".into(),
                    ..Default::default()
                }],
                role_ref: Some(rb::RoleRef {
                    kind: "Role".into(),
                    name: "pod-certificates".into(),
                    api_group: "rbac.authorization.k8s.io".into(),
                }),
            }),
        })
        .await
        .expect("role binding");
}

/// The PEM blocks of `text`: (label, whole block).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(l) = line.strip_prefix("-----BEGIN ") {
            cur = Some((l.trim_end_matches('-').to_string(), String::new()));
        }
        if let Some((_, b)) = cur.as_mut() {
            b.push_str(line);
            b.push('\n');
        }
        if line.starts_with("-----END ")
            && let Some(c) = cur.take()
        {
            out.push(c);
        }
    }
    out
}

/// openssl with `-in input` after `args`.
fn openssl_in(args: &[&str], input: &Path) -> String {
    let input = input.to_str().expect("utf-8 path");
    openssl(&[args, &["-in", input]].concat(), Path::new("."))
}

/// Whether the key (PEM) matches the leaf (PEM), by their public keys (openssl).
fn key_matches_leaf(scratch: &Path, key_pem: &str, leaf_pem: &str) -> bool {
    let k = scratch.join("k.pem");
    let c = scratch.join("c.pem");
    std::fs::write(&k, key_pem).expect("write");
    std::fs::write(&c, leaf_pem).expect("write");
    let a = openssl_in(&["pkey", "-pubout"], &k);
    let b = openssl_in(&["x509", "-pubkey", "-noout"], &c);
    a == b
}

/// The bundle's (key, leaf, every certificate) after checking the layout.
fn split_bundle(text: &str) -> (String, String, Vec<String>) {
    let b = blocks(text);
    assert!(
        b.len() >= 2,
        "key and at least one certificate: {}",
        b.len()
    );
    assert_eq!(b[0].0, "PRIVATE KEY", "the PKCS#8 key comes first");
    assert!(
        b[1..].iter().all(|(l, _)| l == "CERTIFICATE"),
        "then only certificates"
    );
    let certs: Vec<String> = b[1..].iter().map(|(_, p)| p.clone()).collect();
    (b[0].1.clone(), certs[0].clone(), certs)
}

#[tokio::test]
async fn agent_writes_rotates_and_removes_pod_certificates() {
    let s = stack().await;
    workload(&s).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("certs");
    let bundle: PathBuf = dir.join("tls/credentialbundle.pem");
    let key_file: PathBuf = dir.join("split/tls.key");
    let chain_file: PathBuf = dir.join("split/tls.crt");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");

    let (handle, control) = badge_agent::control();
    let task = tokio::spawn(badge_agent::run(
        agent_args(&s.identity, &s.issuer, "apps", "web", &dir),
        control,
    ));
    eventually("the certificate files", WAIT, || {
        bundle.is_file() && key_file.is_file() && chain_file.is_file()
    })
    .await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tls")), 0o700);
    for f in [&bundle, &key_file, &chain_file] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }

    // Layout, key ↔ leaf, chain ↔ trust bundle, URI SAN.
    let first = std::fs::read_to_string(&bundle).expect("bundle");
    let (key, leaf, certs) = split_bundle(&first);
    assert!(key_matches_leaf(&scratch, &key, &leaf));
    let roots = scratch.join("roots.pem");
    std::fs::write(&roots, s.roots_pem().await).expect("roots");
    let leaf_file = scratch.join("leaf.pem");
    std::fs::write(&leaf_file, &leaf).expect("leaf");
    let untrusted = scratch.join("untrusted.pem");
    std::fs::write(&untrusted, certs[1..].concat()).expect("untrusted");
    let mut verify = Command::new("openssl");
    verify.args(["verify", "-CAfile"]).arg(&roots);
    if certs.len() > 1 {
        verify.arg("-untrusted").arg(&untrusted);
    }
    let out = verify.arg(&leaf_file).output().expect("openssl verify");
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = openssl_in(&["x509", "-noout", "-ext", "subjectAltName"], &leaf_file);
    let uri = text
        .split([',', '\n'])
        .map(str::trim)
        .find_map(|p| p.strip_prefix("URI:"))
        .expect("a URI SAN")
        .to_string();
    assert!(
        uri.starts_with("spiffe://") && uri.ends_with("/ns/apps/sa/web-sa"),
        "{uri}"
    );
    // The leaf asked for at most an hour lives at most an hour.
    let dates = openssl_in(&["x509", "-noout", "-startdate", "-enddate"], &leaf_file);
    assert!(dates.contains("notAfter="), "{dates}");

    // Key + chain files: an Ed25519 key (PKCS#8 v1: OpenSSL 3.0 reads it), matching
    // its leaf.
    let k = std::fs::read_to_string(&key_file).expect("key");
    let c = std::fs::read_to_string(&chain_file).expect("chain");
    assert_eq!(blocks(&k).len(), 1);
    assert_eq!(blocks(&k)[0].0, "PRIVATE KEY");
    assert!(openssl_in(&["pkey", "-noout", "-text"], &key_file).contains("ED25519"));
    let chain_blocks = blocks(&c);
    assert!(chain_blocks.iter().all(|(l, _)| l == "CERTIFICATE"));
    assert!(key_matches_leaf(&scratch, &k, &chain_blocks[0].1));

    // Rotation: a reader looping on the bundle never sees a key with another
    // generation's certificate.
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, checked, bundle) = (stop.clone(), checked.clone(), bundle.clone());
        let scratch = scratch.join("reader");
        std::fs::create_dir(&scratch).expect("reader scratch");
        std::thread::spawn(move || {
            let mut seen: HashSet<String> = HashSet::new();
            let mut reads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&bundle).expect("the bundle is always there");
                reads += 1;
                if seen.insert(text.clone()) {
                    let (key, leaf, _) = split_bundle(&text);
                    assert!(
                        key_matches_leaf(&scratch, &key, &leaf),
                        "torn bundle: key and leaf from different generations"
                    );
                    checked.fetch_add(1, Ordering::Relaxed);
                }
            }
            (reads, seen)
        })
    };
    let mut last = first.clone();
    for _ in 0..4 {
        handle.refresh();
        let before = last.clone();
        eventually("a rotated bundle", WAIT, || {
            std::fs::read_to_string(&bundle).is_ok_and(|t| t != before)
        })
        .await;
        last = std::fs::read_to_string(&bundle).expect("bundle");
        let k2 = std::fs::read_to_string(&key_file).expect("key");
        assert_ne!(k2, "", "the key file stays in place");
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen) = reader.join().expect("reader never saw a torn bundle");
    assert!(seen.len() >= 2, "the reader saw rotations ({reads} reads)");
    assert!(checked.load(Ordering::Relaxed) >= 2);
    let (k_last, _, _) = split_bundle(&last);
    assert_ne!(k_last, key, "each rotation generates a new key");
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.join("tls"))
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["credentialbundle.pem"]);

    // Deleting the pod removes every file and ends the agent.
    pb::pod_service_client::PodServiceClient::new(s.identity.admin().await)
        .delete_pod(pb::DeletePodRequest {
            namespace: "apps".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .expect("delete pod");
    let exit = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("agent exits after the pod is deleted")
        .expect("join")
        .expect("agent");
    assert_eq!(exit, Exit::PodDeleted);
    for f in [&bundle, &key_file, &chain_file] {
        assert!(!f.exists(), "{} removed", f.display());
    }
}

#[tokio::test]
async fn identity_refuses_a_bad_pod_certificate_source_by_field() {
    let s = stack().await;
    let admin = s.identity.admin().await;
    let mut bad = pod_certificate("a.pem", "", "", "RSA2048");
    if let Some(pb::volume_projection::Projection::PodCertificate(p)) = &mut bad.projection {
        p.max_expiration_seconds = Some(60);
    }
    let e = pb::pod_service_client::PodServiceClient::new(admin.clone())
        .create_pod(pb::CreatePodRequest {
            pod: Some(pod(vec![
                bad,
                pod_certificate("", "../k", "a.pem", "ED25519"),
            ])),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let m = e.message();
    for want in [
        "spec.volumes[0].projected.sources[0].pod_certificate.key_type",
        "Unsupported value: \"RSA2048\"",
        "spec.volumes[0].projected.sources[0].pod_certificate.max_expiration_seconds",
        "invalid value 60: must be in the range [3600, 7862400]",
        "spec.volumes[0].projected.sources[1].pod_certificate.key_path",
        "must not contain '..'",
        "spec.volumes[0].projected.sources[1].pod_certificate.certificate_chain_path",
        "conflicting duplicate path \"a.pem\"",
    ] {
        assert!(m.contains(want), "{want:?} in {m}");
    }
}
