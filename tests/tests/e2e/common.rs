//! Helpers shared by several modules: the objects tests create in identity, the
//! usual three-service stack, waiting, and small conversions. Server start-up itself
//! is the helper crate's (`badge_tests::{IdentityServer, IssuerServer,
//! ReviewServer}`); what is here is what the modules used to redefine each.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use badge_agent::AgentArgs;
use badge_proto::rbac as rb;
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, ReviewServer, meta, pb};
use clap::Parser as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Identity objects created as a test sets the scene, through a channel allowed to
/// create them (the admin's, system:masters). Implemented by a channel and by each
/// module's environment, which names its channel.
// Private to this test binary: no caller needs the futures to be `Send`-bounded.
#[allow(async_fn_in_trait)]
pub trait Objects {
    /// A channel to identity as system:masters.
    fn identity_admin(&self) -> Channel;

    async fn ns(&self, name: &str) {
        pb::namespace_service_client::NamespaceServiceClient::new(self.identity_admin())
            .create_namespace(pb::CreateNamespaceRequest {
                namespace: Some(pb::Namespace {
                    metadata: meta("", name),
                    status: None,
                }),
            })
            .await
            .expect("namespace");
    }

    async fn sa(&self, ns: &str, name: &str) -> pb::ServiceAccount {
        pb::service_account_service_client::ServiceAccountServiceClient::new(self.identity_admin())
            .create_service_account(pb::CreateServiceAccountRequest {
                service_account: Some(service_account(ns, name)),
            })
            .await
            .expect("sa")
            .into_inner()
    }

    async fn node(&self, name: &str) -> pb::Node {
        pb::node_service_client::NodeServiceClient::new(self.identity_admin())
            .create_node(pb::CreateNodeRequest {
                node: Some(pb::Node {
                    metadata: meta("", name),
                }),
            })
            .await
            .expect("node")
            .into_inner()
    }

    /// Pod `ns/name` running as `sa` on `node`.
    async fn pod(&self, ns: &str, name: &str, sa: &str, node: &str) -> pb::Pod {
        self.create_pod(pb::Pod {
            metadata: meta(ns, name),
            spec: Some(pb::PodSpec {
                service_account_name: sa.into(),
                node_name: node.into(),
                ..Default::default()
            }),
        })
        .await
    }

    async fn create_pod(&self, pod: pb::Pod) -> pb::Pod {
        pb::pod_service_client::PodServiceClient::new(self.identity_admin())
            .create_pod(pb::CreatePodRequest { pod: Some(pod) })
            .await
            .expect("pod")
            .into_inner()
    }

    async fn delete_pod(&self, ns: &str, name: &str) {
        pb::pod_service_client::PodServiceClient::new(self.identity_admin())
            .delete_pod(pb::DeletePodRequest {
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("delete pod");
    }
}

impl Objects for Channel {
    fn identity_admin(&self) -> Channel {
        self.clone()
    }
}

/// A ServiceAccount `ns/name` as a request carries it.
pub fn service_account(ns: &str, name: &str) -> pb::ServiceAccount {
    pb::ServiceAccount {
        metadata: meta(ns, name),
        ..Default::default()
    }
}

/// The uid of an object's metadata.
pub fn uid(m: &Option<badge_proto::meta::ObjectMeta>) -> String {
    m.as_ref().expect("meta").uid.clone()
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A TLS channel to `addr` with no client certificate (bearer callers, as
/// istio-agent connects): trusting Badge's server CA only.
pub fn anonymous(identity: &IdentityServer, addr: SocketAddr) -> Channel {
    let ca = std::fs::read(&identity.pki.ca).expect("ca");
    Channel::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect_lazy()
}

/// identity (accepting the issuer's tokens), token-issuer and token-review.
pub struct Stack {
    pub identity: IdentityServer,
    pub issuer: IssuerServer,
    pub review: ReviewServer,
}

impl Stack {
    pub async fn start() -> Stack {
        let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://127.0.0.1:{}",
            oidc.local_addr().expect("addr").port()
        );
        let identity = IdentityServer::start_accepting(&[url]).await;
        let issuer = IssuerServer::start_on(&identity, IssuerOptions::default(), oidc).await;
        let review = ReviewServer::start(&identity, &issuer).await;
        Stack {
            identity,
            issuer,
            review,
        }
    }
}

/// The pod agent's arguments for pod `namespace/pod` writing into `dir`, connecting
/// to `identity` and `issuer` with the admin certificate.
pub fn agent_args(
    identity: &IdentityServer,
    issuer: &IssuerServer,
    namespace: &str,
    pod: &str,
    dir: &Path,
) -> AgentArgs {
    AgentArgs::try_parse_from([
        "badge-agent".to_string(),
        "--namespace".into(),
        namespace.into(),
        "--pod".into(),
        pod.into(),
        "--dir".into(),
        dir.display().to_string(),
        "--identity-endpoint".into(),
        identity.url(),
        "--issuer-endpoint".into(),
        format!("https://{}", issuer.grpc),
        "--ca".into(),
        identity.pki.ca.display().to_string(),
        "--client-cert".into(),
        identity.pki.admin.cert.display().to_string(),
        "--client-key".into(),
        identity.pki.admin.key.display().to_string(),
    ])
    .expect("agent arguments")
}

/// Polls `cond` every 50 ms for up to `limit`, then panics naming `what`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let polls = limit.as_millis() / 50;
    for _ in 0..polls {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A file's permission bits.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Envoy's descriptors, from the envoy-types crate this workspace builds with (its
/// `src/generated/types.bin`, the FileDescriptorSet its code was generated from);
/// located through `cargo metadata`, so the version is the locked one. Filtered to this
/// host's platform: offline, an unfiltered `cargo metadata` wants every platform's crates
/// (Windows-only ones too) in the local registry, and a build downloads only this host's.
pub fn envoy_descriptors() -> prost_reflect::DescriptorPool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types in the dependency graph")
        .to_string();
    let bin = std::path::Path::new(&manifest)
        .parent()
        .expect("dir")
        .join("src/generated/types.bin");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    prost_reflect::DescriptorPool::decode(bytes.as_slice()).expect("descriptor set")
}

/// Runs the openssl CLI in `dir`; its standard output. Panics with both outputs when
/// it fails.
pub fn openssl<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], dir: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// RBAC `create podcertificaterequests` for the nodes and for shop/web.
pub async fn grant_pod_certificates(admin: &Channel) {
    let rule = rb::PolicyRule {
        verbs: vec!["create".into()],
        api_groups: vec!["certificates.k8s.io".into()],
        resources: vec!["podcertificaterequests".into()],
        ..Default::default()
    };
    cluster_role(admin, "pod-certificates", vec![rule]).await;
    bind(
        admin,
        "pod-certificates",
        "pod-certificates",
        vec![
            subject("Group", "system:nodes", ""),
            subject("ServiceAccount", "web", "shop"),
        ],
    )
    .await;
}

/// The JSON log lines written on this thread, for assertions on what is (and is
/// not) logged.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures the logs up to `level` until the guard drops. Test runtimes are
    /// single-threaded: the servers' tasks run on this thread and log here.
    pub fn start(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || sink.clone())
            .with_max_level(level)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// How much has been captured so far, for [`Captured::text_since`].
    pub fn mark(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    pub fn text(&self) -> String {
        self.text_since(0)
    }

    pub fn text_since(&self, mark: usize) -> String {
        String::from_utf8(self.0.lock().expect("lock")[mark..].to_vec()).expect("utf8")
    }
}

pub async fn cluster_role(admin: &Channel, name: &str, rules: Vec<rb::PolicyRule>) {
    rb::cluster_role_service_client::ClusterRoleServiceClient::new(admin.clone())
        .create_cluster_role(rb::CreateClusterRoleRequest {
            cluster_role: Some(rb::ClusterRole {
                metadata: meta("", name),
                rules,
            }),
        })
        .await
        .expect("cluster role");
}

pub async fn bind(admin: &Channel, name: &str, role: &str, subjects: Vec<rb::Subject>) {
    rb::cluster_role_binding_service_client::ClusterRoleBindingServiceClient::new(admin.clone())
        .create_cluster_role_binding(rb::CreateClusterRoleBindingRequest {
            cluster_role_binding: Some(rb::ClusterRoleBinding {
                metadata: meta("", name),
                subjects,
                role_ref: Some(rb::RoleRef {
                    kind: "ClusterRole".into(),
                    name: role.into(),
                    ..Default::default()
                }),
            }),
        })
        .await
        .expect("cluster role binding");
}

pub fn subject(kind: &str, name: &str, namespace: &str) -> rb::Subject {
    rb::Subject {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

/// An EC P-256 key (PKCS#8 PEM at `<dir>/<stem>.key`) and a CSR (`<stem>.csr`, its
/// PEM returned) with `uri` as URI SAN (none when empty), made by the openssl CLI.
pub fn ec_csr(dir: &Path, stem: &str, uri: &str) -> String {
    let key = format!("{stem}.key");
    let csr = format!("{stem}.csr");
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/O=workload",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    let san = format!("subjectAltName=URI:{uri}");
    if !uri.is_empty() {
        args.extend(["-addext", &san]);
    }
    openssl(&args, dir);
    std::fs::read_to_string(dir.join(csr)).expect("csr")
}
