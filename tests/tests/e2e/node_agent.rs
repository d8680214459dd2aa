//! `badge-agent node` end to end against real identity and token-issuer servers
//! (mTLS, Postgres): the SPIFFE Workload API driven by the `spiffe` crate's client,
//! Envoy SDS driven by envoy-types' generated client as Envoy drives it, an mTLS
//! handshake between two workloads using only what their agents gave them, and
//! the end of a deleted pod's streams.
//!
//! Every connection from this test comes from the same uid, so the two workloads
//! get two agents (two sockets, one node), each mapping this uid to another pod.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use badge_agent::AgentArgs;
use badge_agent::node::{NodeConfig, NodeHandle};
use badge_proto::rbac as rb;
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, meta, pb};
use clap::Parser as _;
use envoy_types::pb::envoy::config::core::v3::{Node, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message as _;
use spiffe::WorkloadApiClient;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Objects, envoy_descriptors};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

struct Env {
    identity: IdentityServer,
    issuer: IssuerServer,
    node: badge_runtime::pki::CertPaths,
    dir: tempfile::TempDir,
}

/// This process's uid (the owner of /proc/self).
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").expect("proc").uid()
}

async fn env() -> Env {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let id = identity.admin().await;
    id.ns("shop").await;
    for sa in ["web", "db"] {
        id.sa("shop", sa).await;
    }
    id.node("node-a").await;
    for (pod, sa) in [("web-0", "web"), ("db-0", "db")] {
        id.pod("shop", pod, sa, "node-a").await;
    }
    grant_node_agent(&id).await;
    let node = identity.issue("node-a", "system:node:node-a", &["system:nodes"]);
    Env {
        identity,
        issuer,
        node,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

/// The node agent's RBAC, as README "Meshes" documents it.
async fn grant_node_agent(admin: &Channel) {
    let rule = |verbs: &[&str], group: &str, resources: &[&str]| rb::PolicyRule {
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        api_groups: vec![group.into()],
        resources: resources.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone())
        .create_cluster_role(rb::CreateClusterRoleRequest {
            cluster_role: Some(rb::ClusterRole {
                metadata: meta("", "badge:node-agent"),
                rules: vec![
                    rule(&["get", "list", "watch"], "", &["pods"]),
                    rule(&["get"], "", &["serviceaccounts", "nodes"]),
                    rule(
                        &["create"],
                        "certificates.k8s.io",
                        &["podcertificaterequests"],
                    ),
                    rule(&["create"], "badge.dev", &["jwtsvids"]),
                ],
            }),
        })
        .await
        .expect("cluster role");
    rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(admin.clone())
        .create_cluster_role_binding(rb::CreateClusterRoleBindingRequest {
            cluster_role_binding: Some(rb::ClusterRoleBinding {
                metadata: meta("", "badge:node-agent"),
                subjects: vec![rb::Subject {
                    kind: "Group".into(),
                    name: "system:nodes".into(),
                    ..Default::default()
                }],
                role_ref: Some(rb::RoleRef {
                    kind: "ClusterRole".into(),
                    name: "badge:node-agent".into(),
                    ..Default::default()
                }),
            }),
        })
        .await
        .expect("cluster role binding");
}

struct Agent {
    socket: PathBuf,
    handle: NodeHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    started: Instant,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.handle.stop();
        self.task.abort();
    }
}

impl Env {
    /// Starts a node agent whose only entry maps `uid` to shop/`pod`.
    fn agent(&self, name: &str, uid: u32, pod: &str, sa: &str) -> Agent {
        self.agent_with(name, &[format!("unix:uid:{uid}")], pod, sa, "")
    }

    /// Starts a node agent whose only entry maps `selectors` to shop/`pod`; `extra`
    /// is more of the configuration (YAML lines).
    fn agent_with(
        &self,
        name: &str,
        selectors: &[String],
        pod: &str,
        sa: &str,
        extra: &str,
    ) -> Agent {
        let socket = self.dir.path().join(format!("{name}/agent.sock"));
        let selectors = selectors
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "node: node-a\nsocket: {}\npod_poll_ms: 1000\nbundle_poll_ms: 200\nrefresh_jitter_ms: 0\n{extra}workloads:\n- selectors: [{selectors}]\n  namespace: shop\n  pod: {pod}\n  service_account: {sa}\n",
            socket.display()
        );
        let config: NodeConfig = serde_yaml::from_str(&yaml).expect("config");
        let args = AgentArgs::try_parse_from([
            "badge-agent".to_string(),
            "node".into(),
            "--agent-config".into(),
            "unused.yaml".into(),
            "--identity-endpoint".into(),
            self.identity.url(),
            "--issuer-endpoint".into(),
            format!("https://{}", self.issuer.grpc),
            "--ca".into(),
            self.identity.pki.ca.display().to_string(),
            "--client-cert".into(),
            self.node.cert.display().to_string(),
            "--client-key".into(),
            self.node.key.display().to_string(),
        ])
        .expect("args");
        let handle = NodeHandle::new();
        let h = handle.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move { badge_agent::node::run(&args.conn, config, h).await });
        Agent {
            socket,
            handle,
            task,
            started,
        }
    }

    async fn delete_pod(&self, name: &str) {
        self.identity.admin().await.delete_pod("shop", name).await;
    }

    fn trust_domain(&self) -> String {
        // The default: the host of the first issuer URL.
        let url = &self.issuer.issuer;
        url.trim_start_matches("https://")
            .split(':')
            .next()
            .unwrap_or("")
            .to_string()
    }
}

impl Agent {
    async fn wait_for_socket(&self) {
        for _ in 0..400 {
            if self.socket.exists() {
                return;
            }
            assert!(!self.task.is_finished(), "the agent exited during start-up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no socket at {}", self.socket.display());
    }

    async fn client(&self) -> WorkloadApiClient {
        self.wait_for_socket().await;
        WorkloadApiClient::connect_to(format!("unix:{}", self.socket.display()))
            .await
            .expect("workload api client")
    }

    /// A raw gRPC channel over the socket.
    async fn channel(&self) -> Channel {
        self.try_channel().await.expect("channel")
    }

    /// A raw gRPC channel over the socket, or why none could be opened.
    async fn try_channel(&self) -> Result<Channel, tonic::transport::Error> {
        self.wait_for_socket().await;
        let path = self.socket.clone();
        tonic::transport::Endpoint::from_static("http://agent.invalid")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
    }
}

fn serial(ctx: &spiffe::X509Context) -> Vec<u8> {
    ctx.default_svid().expect("svid").leaf().as_bytes().to_vec()
}

/// The Workload API with the `spiffe` crate: first SVID (timed), its SPIFFE ID, a
/// rotation arriving on the open stream, JWT-SVIDs fetched and validated, the
/// security header, and a caller no selector matches.
#[tokio::test]
async fn workload_api_x509_and_jwt() {
    let e = env().await;
    let td = e.trust_domain();
    let web = e.agent("web", my_uid(), "web-0", "web");
    let client = web.client().await;
    let mut stream = client.stream_x509_contexts().await.expect("stream");
    let first = stream.next().await.expect("first").expect("context");
    let to_first = web.started.elapsed();
    let svid = first.default_svid().expect("svid");
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{td}/ns/shop/sa/web")
    );
    assert_eq!(svid.hint(), Some("shop/web-0"));
    assert!(svid.cert_chain().len() >= 2, "leaf and intermediate");
    let bundle = first
        .bundle_set()
        .get(svid.spiffe_id().trust_domain())
        .expect("bundle of the trust domain");
    assert!(!bundle.authorities().is_empty());

    // First-answer latency of a new FetchX509SVID on a warm agent.
    let mut lat = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        client.fetch_x509_context().await.expect("fetch");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "node agent: start → first X.509-SVID served {to_first:?}; FetchX509SVID first answer p50 {:?} max {:?} (20 calls)",
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );

    // Rotation: a new certificate on the same stream.
    web.handle.refresh();
    let rotated = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a rotation in time")
        .expect("stream open")
        .expect("context");
    assert_ne!(serial(&rotated), serial(&first), "a new certificate");
    assert_eq!(
        rotated.default_svid().expect("svid").spiffe_id(),
        svid.spiffe_id()
    );

    // CA rotation: the new root (published before it signs) reaches the open stream.
    let roots = |c: &spiffe::X509Context| {
        c.bundle_set()
            .get(c.default_svid().expect("svid").spiffe_id().trust_domain())
            .expect("bundle")
            .authorities()
            .len()
    };
    let before = roots(&rotated);
    badge_proto::certificates::certificate_authority_service_client::CertificateAuthorityServiceClient::new(
        e.issuer.channel(&e.identity, &e.identity.pki.admin),
    )
    .rotate_certificate_authority(badge_proto::certificates::RotateCertificateAuthorityRequest {})
    .await
    .expect("rotate the CA");
    let t = Instant::now();
    let with_new_root = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the new bundle in time")
        .expect("stream open")
        .expect("context");
    assert_eq!(roots(&with_new_root), before + 1, "old and new roots");
    assert_eq!(serial(&with_new_root), serial(&rotated), "same SVID");
    println!(
        "node agent: CA rotation → new bundle on the open stream in {:?} (bundle_poll_ms 200)",
        t.elapsed()
    );

    // JWT-SVIDs.
    let jwt = client
        .fetch_jwt_svid(["orders"], None)
        .await
        .expect("jwt svid");
    assert_eq!(
        jwt.spiffe_id().to_string(),
        format!("spiffe://{td}/ns/shop/sa/web")
    );
    assert_eq!(jwt.audience(), ["orders".to_string()]);
    let checked = client
        .validate_jwt_token("orders", jwt.token())
        .await
        .expect("validated");
    assert_eq!(checked.spiffe_id(), jwt.spiffe_id());
    let wrong = client.validate_jwt_token("billing", jwt.token()).await;
    assert!(wrong.is_err(), "another audience is refused");
    let bundles = client.fetch_jwt_bundles().await.expect("jwt bundles");
    assert!(bundles.get(svid.spiffe_id().trust_domain()).is_some());
    let x509_bundles = client.fetch_x509_bundles().await.expect("x509 bundles");
    assert_eq!(
        x509_bundles
            .get(svid.spiffe_id().trust_domain())
            .expect("own trust domain")
            .authorities()
            .len(),
        before + 1
    );
    // Health: SERVING once the bundle is known.
    let health = tonic_health::pb::health_client::HealthClient::new(web.channel().await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "SpiffeWorkloadAPI".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Raw calls: the security header, and a missing audience.
    let raw =
        badge_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
            web.channel().await,
        );
    let err = raw
        .clone()
        .fetch_x509svid(badge_proto::spiffe_workload::X509svidRequest {})
        .await
        .expect_err("no header");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("security header"),
        "{}",
        err.message()
    );
    let mut req = tonic::Request::new(badge_proto::spiffe_workload::JwtsvidRequest {
        audience: vec![],
        spiffe_id: String::new(),
    });
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("value"));
    let err = raw
        .clone()
        .fetch_jwtsvid(req)
        .await
        .expect_err("no audience");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("audience"), "{}", err.message());

    // A caller no selector matches: refused, nothing served.
    let other = e.agent("other", my_uid().wrapping_add(1), "web-0", "web");
    let client = other.client().await;
    let refused = client.fetch_x509_context().await.expect_err("refused");
    assert!(
        format!("{refused:?}").contains("PermissionDenied")
            || format!("{refused}").contains("no identity issued"),
        "{refused:?}"
    );
    let mut req = tonic::Request::new(badge_proto::spiffe_workload::X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("value"));
    let err =
        badge_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
            other.channel().await,
        )
        .fetch_x509svid(req)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
}

fn sds_request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: Some(Node {
            id: "sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local".into(),
            cluster: "web".into(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn next(responses: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

fn secrets(r: &DiscoveryResponse) -> Vec<Secret> {
    r.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, SECRET_TYPE);
            Secret::decode(a.value.as_slice()).expect("secret")
        })
        .collect()
}

fn inline(ds: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).expect("utf8"),
        other => panic!("not inline bytes: {other:?}"),
    }
}

fn chain_of(s: &Secret) -> String {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            assert!(inline(&t.private_key).starts_with("-----BEGIN PRIVATE KEY-----"));
            inline(&t.certificate_chain)
        }
        other => panic!("{}: not a tls_certificate: {other:?}", s.name),
    }
}

/// SDS as Envoy drives it: one stream subscribing to the certificate and the
/// validation context, ACKs, a push on rotation, a NACK (nothing re-sent, the next
/// change still pushed), names by SPIFFE ID, an unauthorized name refused, and the
/// stream ended when the pod is deleted.
#[tokio::test]
async fn envoy_sds() {
    let e = env().await;
    let td = e.trust_domain();
    let web = e.agent("web", my_uid(), "web-0", "web");
    let mut sds = SecretDiscoveryServiceClient::new(web.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(8);
    let mut responses = sds
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(sds_request(&["default", "ROOTCA"], "", ""))
        .await
        .expect("send");
    let r1 = next(&mut responses).await;
    assert_eq!(r1.type_url, SECRET_TYPE);
    assert_eq!(r1.version_info, "1");
    assert!(!r1.nonce.is_empty());
    let s1 = secrets(&r1);
    let names: Vec<&str> = s1.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA", "default"]);
    let cert1 = chain_of(&s1[1]);
    match &s1[0].r#type {
        Some(secret::Type::ValidationContext(v)) => {
            assert!(inline(&v.trusted_ca).contains("BEGIN CERTIFICATE"))
        }
        other => panic!("ROOTCA: {other:?}"),
    }
    // ACK: no answer.
    tx.send(sds_request(
        &["default", "ROOTCA"],
        &r1.version_info,
        &r1.nonce,
    ))
    .await
    .expect("ack");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), responses.message())
            .await
            .is_err(),
        "an ACK is not answered"
    );
    // Rotation: pushed.
    web.handle.refresh();
    let r2 = next(&mut responses).await;
    assert_eq!(r2.version_info, "2");
    assert_ne!(r2.nonce, r1.nonce);
    let cert2 = chain_of(
        secrets(&r2)
            .iter()
            .find(|s| s.name == "default")
            .expect("default"),
    );
    assert_ne!(cert1, cert2, "a new certificate");
    // NACK it: nothing is re-sent for the same content.
    let mut nack = sds_request(&["default", "ROOTCA"], &r1.version_info, &r2.nonce);
    nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
        code: 3,
        message: "Failed to load certificate chain".into(),
        details: vec![],
    });
    tx.send(nack).await.expect("nack");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), responses.message())
            .await
            .is_err(),
        "a NACK is not answered with the same content"
    );
    // The next rotation is pushed.
    web.handle.refresh();
    let r3 = next(&mut responses).await;
    assert_eq!(r3.version_info, "3");
    tx.send(sds_request(
        &["default", "ROOTCA"],
        &r3.version_info,
        &r3.nonce,
    ))
    .await
    .expect("ack");

    // A name by SPIFFE ID and the trust domain, over FetchSecrets.
    let id = format!("spiffe://{td}/ns/shop/sa/web");
    let td_id = format!("spiffe://{td}");
    let fetched = sds
        .fetch_secrets(sds_request(&[&id, &td_id], "", ""))
        .await
        .expect("fetch")
        .into_inner();
    let mut names: Vec<String> = secrets(&fetched).into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, [td_id, id.clone()]);
    // Another workload's identity: refused.
    let err = sds
        .fetch_secrets(sds_request(
            &[&format!("spiffe://{td}/ns/shop/sa/db")],
            "",
            "",
        ))
        .await
        .expect_err("not entitled");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not authorized"),
        "{}",
        err.message()
    );

    // The pod is deleted: the stream ends.
    let t = Instant::now();
    e.delete_pod("web-0").await;
    let end = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the stream ends in time");
    let status = end.expect_err("ended with a status");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    println!(
        "node agent: pod deleted → SDS stream ended in {:?}",
        t.elapsed()
    );
}

/// A rustls server-certificate check for SPIFFE peers: the chain must verify to the
/// bundle; the name is not checked (SVIDs carry a URI SAN, checked after the
/// handshake).
#[derive(Debug)]
struct SpiffeServerVerifier(Arc<tokio_rustls::rustls::client::WebPkiServerVerifier>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        use tokio_rustls::rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// (chain, key, roots) of a workload, from its agent only.
fn material(
    ctx: &spiffe::X509Context,
) -> (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
    tokio_rustls::rustls::RootCertStore,
) {
    let svid = ctx.default_svid().expect("svid");
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(svid.private_key().as_bytes().to_vec().into());
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let bundle = ctx
        .bundle_set()
        .get(svid.spiffe_id().trust_domain())
        .expect("bundle");
    for a in bundle.authorities() {
        roots
            .add(rustls_pki_types::CertificateDer::from(
                a.as_bytes().to_vec(),
            ))
            .expect("root");
    }
    (chain, key, roots)
}

fn peer_id(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> String {
    let leaf = certs.and_then(|c| c.first()).expect("peer certificate");
    spiffe::cert::spiffe_id_from_der(leaf.as_ref())
        .expect("a SPIFFE ID")
        .to_string()
}

/// Two workloads (web and db, two agents on one node) complete an mTLS handshake
/// with rustls using only what their agents gave them, each checking the other's
/// SPIFFE ID; then db's pod is deleted and its Workload API stream ends.
#[tokio::test]
async fn two_workloads_mtls_then_pod_deleted() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    let e = env().await;
    let td = e.trust_domain();
    let web = e.agent("web", my_uid(), "web-0", "web");
    let db = e.agent("db", my_uid(), "db-0", "db");
    let web_ctx = web.client().await.fetch_x509_context().await.expect("web");
    let db_client = db.client().await;
    let mut db_stream = db_client.stream_x509_contexts().await.expect("db stream");
    let db_ctx = db_stream.next().await.expect("first").expect("db");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // db serves, requiring a client certificate from its trust domain.
    let (chain, key, roots) = material(&db_ctx);
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .expect("client verifier");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    // web connects.
    let (chain, key, roots) = material(&web_ctx);
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .expect("server verifier");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier(server_verifier)))
        .with_client_auth_cert(chain, key)
        .expect("client config");

    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let serving = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.expect("server handshake");
        let peer = peer_id(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.expect("read");
        tls.write_all(b"pong").await.expect("write");
        tls.flush().await.expect("flush");
        peer
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from("db.shop").expect("name");
    let mut tls = connector.connect(name, a).await.expect("client handshake");
    let server_peer = peer_id(tls.get_ref().1.peer_certificates());
    tls.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"pong");
    assert_eq!(server_peer, format!("spiffe://{td}/ns/shop/sa/db"));
    assert_eq!(
        serving.await.expect("server"),
        format!("spiffe://{td}/ns/shop/sa/web")
    );

    // A JWT-SVID of db, valid at web's agent while db's pod lives.
    let db_jwt = db_client
        .fetch_jwt_svid(["web"], None)
        .await
        .expect("db jwt");
    let web_client = web.client().await;
    web_client
        .validate_jwt_token("web", db_jwt.token())
        .await
        .expect("valid while the pod lives");

    // db's pod is deleted: its stream ends (the agent sees identity's Watch).
    let t = Instant::now();
    e.delete_pod("db-0").await;
    let end = tokio::time::timeout(Duration::from_secs(10), db_stream.next())
        .await
        .expect("the stream ends in time");
    match end {
        None => {}
        Some(Err(err)) => assert!(
            format!("{err:?}").contains("PermissionDenied")
                || format!("{err}").contains("no identity"),
            "{err:?}"
        ),
        Some(Ok(_)) => panic!("an SVID after the pod was deleted"),
    }
    println!(
        "node agent: pod deleted → Workload API stream ended in {:?}",
        t.elapsed()
    );
    // And nothing new is served for it; its JWT-SVID no longer validates.
    assert!(db_client.fetch_x509_context().await.is_err());
    let err = web_client
        .validate_jwt_token("web", db_jwt.token())
        .await
        .expect_err("the pod is gone");
    assert!(format!("{err}").contains("no longer exists"), "{err}");
    // web is unaffected.
    assert!(web.client().await.fetch_x509_context().await.is_ok());
}

/// examples/envoy-sds.yaml is a valid Envoy bootstrap (every field and `@type`
/// checked against Envoy's descriptors, unknown fields refused), and every SDS
/// secret it names comes from the agent's socket with names the agent serves.
#[test]
fn the_documented_envoy_sds_configuration_matches_envoy_descriptors() {
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::core::v3::{
        address::Address as Addr, config_source::ConfigSourceSpecifier,
        grpc_service::TargetSpecifier,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
        common_tls_context::ValidationContextType,
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/envoy-sds.yaml");
    let text = std::fs::read_to_string(&path).expect("example");
    let json: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
    let pool = envoy_descriptors();
    let desc = pool
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .expect("Bootstrap descriptor");
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
    let msg = prost_reflect::DynamicMessage::deserialize_with_options(desc, json, &options)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let boot = Bootstrap::decode(msg.encode_to_vec().as_slice()).expect("Bootstrap");
    let statics = boot.static_resources.expect("static_resources");
    let agent = statics
        .clusters
        .iter()
        .find(|c| c.name == "badge_agent")
        .expect("the agent's cluster");
    let endpoint = agent
        .load_assignment
        .as_ref()
        .and_then(|l| l.endpoints.first())
        .and_then(|e| e.lb_endpoints.first())
        .expect("an endpoint");
    let addr = match &endpoint.host_identifier {
        Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e),
        ) => e.address.as_ref().and_then(|a| a.address.clone()),
        other => panic!("{other:?}"),
    };
    match addr {
        Some(Addr::Pipe(p)) => assert_eq!(p.path, "badge-data/agent.sock"),
        other => panic!("the agent is reached over its Unix socket: {other:?}"),
    }
    let check_sds = |s: &SdsSecretConfig, names: &[&str]| {
        assert!(names.contains(&s.name.as_str()), "{}", s.name);
        let api = match s
            .sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref())
        {
            Some(ConfigSourceSpecifier::ApiConfigSource(api)) => api,
            other => panic!("{other:?}"),
        };
        match api
            .grpc_services
            .first()
            .and_then(|g| g.target_specifier.as_ref())
        {
            Some(TargetSpecifier::EnvoyGrpc(g)) => assert_eq!(g.cluster_name, "badge_agent"),
            other => panic!("{other:?}"),
        }
    };
    let check_common = |c: &CommonTlsContext| {
        assert_eq!(c.tls_certificate_sds_secret_configs.len(), 1);
        check_sds(&c.tls_certificate_sds_secret_configs[0], &["default"]);
        match &c.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(v)) => {
                check_sds(
                    v.validation_context_sds_secret_config
                        .as_ref()
                        .expect("sds validation"),
                    &["ROOTCA"],
                );
                let sans = &v
                    .default_validation_context
                    .as_ref()
                    .expect("default validation")
                    .match_typed_subject_alt_names;
                assert!(!sans.is_empty(), "the peer's SPIFFE ID is checked");
            }
            other => panic!("{other:?}"),
        }
    };
    let listener_tls = statics.listeners[0].filter_chains[0]
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.as_ref())
        .expect("inbound TLS");
    let envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any) =
        listener_tls;
    let down = DownstreamTlsContext::decode(any.value.as_slice()).expect("downstream");
    assert!(down.require_client_certificate.is_some_and(|v| v.value));
    check_common(down.common_tls_context.as_ref().expect("common"));
    let db = statics
        .clusters
        .iter()
        .find(|c| c.name == "db")
        .expect("db cluster");
    let envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any) =
        db.transport_socket
            .as_ref()
            .and_then(|t| t.config_type.as_ref())
            .expect("upstream TLS");
    let up = UpstreamTlsContext::decode(any.value.as_slice()).expect("upstream");
    check_common(up.common_tls_context.as_ref().expect("common"));
}

/// token-issuer's MintJwtSvid: the node for a pod bound to it gets a JWT-SVID
/// whose `sub` is the pod's SPIFFE ID (no `iss`, so TokenReview would refuse it);
/// another node, a caller that is no node, a stale uid, a missing audience and a
/// caller without the RBAC grant are refused, each naming what is wrong.
#[tokio::test]
async fn mint_jwt_svid_is_for_the_pods_own_node() {
    use badge_proto::certificates as cpb;
    use base64::Engine as _;
    let e = env().await;
    let td = e.trust_domain();
    let id = e.identity.admin().await;
    let uid = pb::pod_service_client::PodServiceClient::new(id.clone())
        .get_pod(pb::GetPodRequest {
            namespace: "shop".into(),
            name: "web-0".into(),
        })
        .await
        .expect("pod")
        .into_inner()
        .metadata
        .expect("meta")
        .uid;
    let req = |pod_uid: &str, audience: &[&str]| cpb::MintJwtSvidRequest {
        namespace: "shop".into(),
        pod_name: "web-0".into(),
        pod_uid: pod_uid.into(),
        audience: audience.iter().map(|a| a.to_string()).collect(),
        ttl_seconds: 0,
    };
    let mint = |cert: &badge_runtime::pki::CertPaths, r: cpb::MintJwtSvidRequest| {
        let ch = e.issuer.channel(&e.identity, cert);
        async move {
            cpb::jwt_svid_service_client::JwtSvidServiceClient::new(ch)
                .mint_jwt_svid(r)
                .await
                .map(|r| r.into_inner())
        }
    };
    // The grant reaches the issuer through the change feed: retry briefly.
    let mut ok = None;
    for _ in 0..50 {
        match mint(&e.node, req(&uid, &["orders"])).await {
            Ok(r) => {
                ok = Some(r);
                break;
            }
            Err(s) if s.code() == Code::PermissionDenied && s.message().contains("RBAC") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let r = ok.expect("minted");
    assert_eq!(r.spiffe_id, format!("spiffe://{td}/ns/shop/sa/web"));
    let payload = r.svid.split('.').nth(1).expect("payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(claims["sub"], r.spiffe_id.as_str());
    assert_eq!(claims["aud"], serde_json::json!(["orders"]));
    assert_eq!(claims["badge.dev/pod"]["uid"], uid.as_str());
    assert!(
        claims.get("iss").is_none(),
        "no issuer: not a service-account token"
    );
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 300);

    let refused = |r: Result<cpb::MintJwtSvidResponse, tonic::Status>, code: Code, text: &str| {
        let s = r.expect_err("refused");
        assert_eq!(s.code(), code, "{}", s.message());
        assert!(
            s.message().contains(text),
            "{:?} lacks {text:?}",
            s.message()
        );
    };
    let node_b = e
        .identity
        .issue("node-b", "system:node:node-b", &["system:nodes"]);
    refused(
        mint(&node_b, req(&uid, &["orders"])).await,
        Code::PermissionDenied,
        "not to the requesting node \"node-b\"",
    );
    refused(
        mint(&e.identity.pki.admin, req(&uid, &["orders"])).await,
        Code::PermissionDenied,
        "may not mint JWT-SVIDs",
    );
    refused(
        mint(&e.node, req("not-the-uid", &["orders"])).await,
        Code::Aborted,
        "pod_uid",
    );
    refused(
        mint(&e.node, req(&uid, &[])).await,
        Code::InvalidArgument,
        "audience",
    );
    let stranger = e.identity.issue("stranger", "system:node:node-a", &[]);
    refused(
        mint(&stranger, req(&uid, &["orders"])).await,
        Code::PermissionDenied,
        "jwtsvids",
    );
}

/// A Workload API request with its security header.
fn workload_request<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("value"));
    r
}

fn assert_invalid(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().starts_with(field),
        "{} does not name {field}",
        err.message()
    );
}

/// What an attested caller can make the agent hold is bounded, each bound checked
/// with a real client on the socket: request fields (INVALID_ARGUMENT naming the
/// field), message size, and connections (over the cap: refused; a slot is given
/// back when a connection closes).
#[tokio::test]
async fn an_attested_caller_is_bounded() {
    use badge_proto::spiffe_workload as w;
    let e = env().await;
    let web = e.agent_with(
        "web",
        &[format!("unix:uid:{}", my_uid())],
        "web-0",
        "web",
        "max_connections: 2\n",
    );
    let chan = web.channel().await;
    let api = w::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(chan.clone());
    // The identity first, so that every refusal below is about the request.
    let mut stream = api
        .clone()
        .fetch_x509svid(workload_request(w::X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an SVID in time")
        .expect("ok")
        .expect("a message");

    let jwt = |audience: Vec<String>, spiffe_id: String| {
        let mut api = api.clone();
        async move {
            api.fetch_jwtsvid(workload_request(w::JwtsvidRequest {
                audience,
                spiffe_id,
            }))
            .await
            .expect_err("refused")
        }
    };
    let many: Vec<String> = (0..17).map(|i| format!("aud-{i}")).collect();
    assert_invalid(&jwt(many, String::new()).await, "audience: at most 16");
    assert_invalid(
        &jwt(vec!["ok".into(), "a".repeat(257)], String::new()).await,
        "audience[1]: longer than 256",
    );
    assert_invalid(
        &jwt(
            vec!["ok".into()],
            format!("spiffe://x/{}", "a".repeat(2048)),
        )
        .await,
        "spiffe_id: longer than 2048",
    );
    let validate = |audience: String, svid: String| {
        let mut api = api.clone();
        async move {
            api.validate_jwtsvid(workload_request(w::ValidateJwtsvidRequest {
                audience,
                svid,
            }))
            .await
            .expect_err("refused")
        }
    };
    assert_invalid(
        &validate("a".repeat(257), "x.y.z".into()).await,
        "audience: longer than 256",
    );
    assert_invalid(
        &validate("orders".into(), "a".repeat(8193)).await,
        "svid: longer than 8192",
    );
    // Past the decoding limit the message is not even read.
    let err = validate("orders".into(), "a".repeat(100 * 1024)).await;
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("65536"), "{}", err.message());

    let mut sds = SecretDiscoveryServiceClient::new(chan.clone());
    let names: Vec<String> = (0..65).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let err = sds
        .fetch_secrets(sds_request(&refs, "", ""))
        .await
        .expect_err("too many names");
    assert_invalid(&err, "resource_names: at most 64");
    let long = "a".repeat(2049);
    let err = sds
        .fetch_secrets(sds_request(&["default", &long], "", ""))
        .await
        .expect_err("too long a name");
    assert_invalid(&err, "resource_names[1]: longer than 2048");
    // On a stream: the stream ends with the same status.
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(2);
    let mut responses = sds
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(sds_request(&refs, "", "")).await.expect("send");
    let end = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an answer in time")
        .expect_err("refused");
    assert_invalid(&end, "resource_names: at most 64");

    // Connections: `chan` holds one of two slots; a second connection is served, a
    // third refused (closed at accept: the HTTP/2 handshake or the call fails).
    let second = web.channel().await;
    tonic_health::pb::health_client::HealthClient::new(second.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the second connection is served");
    let third = match web.try_channel().await {
        Err(_) => None,
        Ok(c) => Some(
            tonic_health::pb::health_client::HealthClient::new(c)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect_err("the third connection is refused"),
        ),
    };
    // Closed by the agent: tonic's client reports it as a transport error.
    if let Some(s) = third {
        assert!(
            matches!(s.code(), Code::Unavailable | Code::Unknown),
            "{s:?}"
        );
        assert!(s.message().contains("transport error"), "{s:?}");
    }
    // Closing one gives its slot back.
    drop(second);
    let t = Instant::now();
    loop {
        let served = match web.try_channel().await {
            Ok(c) => tonic_health::pb::health_client::HealthClient::new(c)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the slot of a closed connection was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first connection was never disturbed.
    drop(stream);
    tonic_health::pb::health_client::HealthClient::new(chan)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the first connection still served");
}

/// This process's supplementary groups, as /proc says.
fn my_groups() -> Vec<u32> {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn refused_by_attestation(e: &impl std::fmt::Debug) {
    let shown = format!("{e:?}");
    assert!(
        // The spiffe crate reports PERMISSION_DENIED as NoIdentityIssued.
        ["PermissionDenied", "no identity issued", "NoIdentityIssued"]
            .iter()
            .any(|m| shown.contains(m)),
        "{shown}"
    );
}

/// `unix:supplementary_gid:<n>`: read from /proc/<pid>/status as the connection is
/// accepted. This process lacks the group: refused. A process that has it —
/// grpcurl started by `setpriv --groups` (root only) — gets the identity; when this
/// process has supplementary groups of its own, one of them is matched in-process.
#[tokio::test]
async fn supplementary_gid_selector() {
    let e = env().await;
    let td = e.trust_domain();
    let mine = my_groups();
    let g = (4242u32..).find(|g| !mine.contains(g)).expect("a free gid");
    let with_g = e.agent_with(
        "with-g",
        &[
            format!("unix:uid:{}", my_uid()),
            format!("unix:supplementary_gid:{g}"),
        ],
        "web-0",
        "web",
        "",
    );
    let refused = with_g
        .client()
        .await
        .fetch_x509_context()
        .await
        .expect_err("not in the group: refused");
    refused_by_attestation(&refused);

    if let Some(own) = mine.first() {
        let by_own = e.agent_with(
            "by-own",
            &[format!("unix:supplementary_gid:{own}")],
            "web-0",
            "web",
            "",
        );
        let ctx = by_own
            .client()
            .await
            .fetch_x509_context()
            .await
            .expect("matched by its own supplementary group");
        assert_eq!(
            ctx.default_svid().expect("svid").spiffe_id().to_string(),
            format!("spiffe://{td}/ns/shop/sa/web")
        );
    }

    let tools = ["setpriv", "grpcurl"].iter().all(|t| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if my_uid() != 0 || !tools {
        println!(
            "supplementary_gid: no root or no setpriv/grpcurl, the matching process is not run"
        );
        return;
    }
    with_g.wait_for_socket().await;
    let socket = with_g.socket.display().to_string();
    let run = move |groups: Option<u32>| {
        let socket = socket.clone();
        // Blocking: off the runtime, which serves the agent meanwhile.
        tokio::task::spawn_blocking(move || {
            let grpcurl = [
                "grpcurl",
                "-plaintext",
                "-unix",
                "-authority",
                "localhost",
                "-H",
                "workload.spiffe.io: true",
                "-max-time",
                "5",
                &socket,
                "SpiffeWorkloadAPI/FetchX509SVID",
            ];
            let mut cmd = match groups {
                Some(g) => {
                    let mut c = std::process::Command::new("setpriv");
                    c.args(["--groups", &g.to_string(), "--"]).args(grpcurl);
                    c
                }
                None => {
                    let mut c = std::process::Command::new(grpcurl[0]);
                    c.args(&grpcurl[1..]);
                    c
                }
            };
            let out = cmd.output().expect("grpcurl runs");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let with_group = run(Some(g)).await.expect("joined");
    assert!(
        with_group.contains(&format!("spiffe://{td}/ns/shop/sa/web")),
        "in group {g}: {with_group}"
    );
    let without = run(None).await.expect("joined");
    assert!(without.contains("PermissionDenied"), "without: {without}");
}

/// The roots inside a validation context served with Envoy's SPIFFE validator:
/// (trust domain, bundle PEM), decoded as Envoy decodes the typed config.
fn spiffe_validator_of(s: &Secret) -> (String, String) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SpiffeCertValidatorConfig;
    let Some(secret::Type::ValidationContext(v)) = &s.r#type else {
        panic!("{}: not a validation context", s.name)
    };
    let c = v
        .custom_validator_config
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no custom validator", s.name));
    assert_eq!(c.name, "envoy.tls.cert_validator.spiffe");
    let any = c.typed_config.as_ref().expect("typed_config");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let cfg = SpiffeCertValidatorConfig::decode(any.value.as_slice()).expect("decodes");
    assert_eq!(cfg.trust_domains.len(), 1, "{cfg:?}");
    let td = &cfg.trust_domains[0];
    (td.name.clone(), inline(&td.trust_bundle))
}

/// DER of every certificate in `pem`, each parsed.
fn pem_roots(pem: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.expect("a PEM certificate").to_vec())
        .collect()
}

/// SDS with Envoy's SPIFFE certificate validator: `ALL` (and, with
/// `sds_spiffe_validator: true`, `spiffe://<td>`) carry a
/// `SPIFFECertValidatorConfig` for the trust domain whose bundle is the CA's
/// roots; `ROOTCA` stays `trusted_ca`; a CA rotation pushes the new bundle.
#[tokio::test]
async fn envoy_sds_spiffe_validator() {
    let e = env().await;
    let td = e.trust_domain();
    let td_id = format!("spiffe://{td}");
    let web = e.agent_with(
        "web",
        &[format!("unix:uid:{}", my_uid())],
        "web-0",
        "web",
        "sds_spiffe_validator: true\n",
    );
    let ca = || {
        badge_proto::certificates::certificate_authority_service_client::CertificateAuthorityServiceClient::new(
            e.issuer.channel(&e.identity, &e.identity.pki.admin),
        )
    };
    let mut sds = SecretDiscoveryServiceClient::new(web.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(8);
    let mut responses = sds
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let names = ["ALL", td_id.as_str(), "ROOTCA"];
    tx.send(sds_request(&names, "", "")).await.expect("send");
    let r1 = next(&mut responses).await;
    let s1 = secrets(&r1);
    let by = |s: &[Secret], n: &str| {
        s.iter()
            .find(|x| x.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    let expected = pem_roots(
        &ca()
            .get_trust_bundle(badge_proto::certificates::GetTrustBundleRequest {})
            .await
            .expect("bundle")
            .into_inner()
            .roots_pem,
    );
    assert!(!expected.is_empty());
    for n in ["ALL", td_id.as_str()] {
        let (name, pem) = spiffe_validator_of(&by(&s1, n));
        assert_eq!(name, td, "{n}: the bare trust domain name");
        assert_eq!(pem_roots(&pem), expected, "{n}: the CA's roots");
    }
    match &by(&s1, "ROOTCA").r#type {
        Some(secret::Type::ValidationContext(v)) => {
            assert!(v.custom_validator_config.is_none());
            assert_eq!(pem_roots(&inline(&v.trusted_ca)), expected);
        }
        other => panic!("ROOTCA: {other:?}"),
    }
    tx.send(sds_request(&names, &r1.version_info, &r1.nonce))
        .await
        .expect("ack");

    // A CA rotation: the new root reaches the validator's bundle on the stream.
    ca().rotate_certificate_authority(
        badge_proto::certificates::RotateCertificateAuthorityRequest {},
    )
    .await
    .expect("rotate the CA");
    let r2 = next(&mut responses).await;
    assert_ne!(r2.version_info, r1.version_info);
    let s2 = secrets(&r2);
    let rotated = pem_roots(
        &ca()
            .get_trust_bundle(badge_proto::certificates::GetTrustBundleRequest {})
            .await
            .expect("bundle")
            .into_inner()
            .roots_pem,
    );
    assert_eq!(rotated.len(), expected.len() + 1, "old and new roots");
    for n in ["ALL", td_id.as_str()] {
        let (name, pem) = spiffe_validator_of(&by(&s2, n));
        assert_eq!(name, td);
        assert_eq!(pem_roots(&pem), rotated, "{n}: the new bundle");
    }
}
