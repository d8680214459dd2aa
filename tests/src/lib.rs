//! Test harness: starts the real identity server on an ephemeral port over real
//! mTLS against a fresh Postgres database, and hands out tonic clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use badge_identity::{FeedConfig, IdentityConfig};
use badge_runtime::config::{DatabaseConfig, ListenConfig, LogConfig};
use badge_runtime::pki::{self, CertPaths, DevPki};
use badge_runtime::tls::TlsFiles;
use badge_store::testing::{TestDatabase, fresh_database};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use badge_proto::identity as pb;

/// A running identity server.
pub struct IdentityServer {
    pub addr: SocketAddr,
    pub pki: DevPki,
    pub db: TestDatabase,
    pub config: IdentityConfig,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl IdentityServer {
    /// Fresh database, fresh dev PKI, server on 127.0.0.1:0.
    pub async fn start() -> Self {
        let db = fresh_database().await;
        let store = db.store().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki::generate(dir.path(), &[]).expect("dev pki");
        let server = pki.server("identity");
        let config = IdentityConfig {
            server: ListenConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                tls: TlsFiles {
                    ca: pki.ca.clone(),
                    cert: server.cert,
                    key: server.key,
                },
            },
            database: DatabaseConfig {
                url: db.url.clone(),
                max_connections: 8,
            },
            log: LogConfig::default(),
            feed: FeedConfig::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            badge_identity::serve(
                &cfg,
                store,
                Arc::new(badge_core::SystemClock),
                listener,
                Arc::new(badge_runtime::MastersOnly),
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let s = IdentityServer {
            addr,
            pki,
            db,
            config,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready when an admin call succeeds.
        let ch = s.admin().await;
        let mut ns = pb::namespace_service_client::NamespaceServiceClient::new(ch);
        for _ in 0..100 {
            if ns
                .get_namespace(pb::GetNamespaceRequest {
                    name: "default".into(),
                })
                .await
                .is_ok()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("identity server did not become ready");
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A channel authenticated with the admin certificate (system:masters).
    pub async fn admin(&self) -> Channel {
        self.channel_as(&self.pki.admin).await
    }

    /// A channel authenticated with `cert`, trusting the dev CA.
    pub async fn channel_as(&self, cert: &CertPaths) -> Channel {
        let ca = std::fs::read(&self.pki.ca).expect("ca");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(identity(cert))
            .domain_name("localhost");
        Channel::from_shared(self.url())
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy()
    }

    /// Issues a client certificate for `user` in `groups` from the dev CA.
    pub fn issue(&self, stem: &str, user: &str, groups: &[&str]) -> CertPaths {
        pki::issue_client(&self.pki.dir, stem, user, groups).expect("issue")
    }

    /// Graceful stop; returns what `serve` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub fn identity(cert: &CertPaths) -> Identity {
    Identity::from_pem(
        std::fs::read(&cert.cert).expect("cert"),
        std::fs::read(&cert.key).expect("key"),
    )
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

/// Metadata with name and namespace.
pub fn meta(namespace: &str, name: &str) -> Option<badge_proto::meta::ObjectMeta> {
    Some(badge_proto::meta::ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    })
}
