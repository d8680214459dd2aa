//! The echo service and an in-process server for it, with the transport of Badge's
//! services (`badge_runtime::transport`): rustls (aws-lc), a client certificate
//! from the CA required, HTTP/2 keep-alive every 30 s, `TCP_NODELAY`, no vectored
//! writes under HTTP/2.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use badge_runtime::tls::TlsMaterial;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::proto::echo_service_server::{EchoService, EchoServiceServer};
use crate::proto::{EchoRequest, EchoResponse};

/// Answers every request with its own payload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

/// A running echo server.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// How long [`EchoServer::stop`] waits for connections to drain.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl EchoServer {
    /// Binds `listen` and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr, tls: &TlsMaterial) -> anyhow::Result<EchoServer> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("local address")?;
        let acceptor = tls
            .server_acceptor(false)
            .context("server TLS configuration")?;
        let incoming = badge_runtime::transport::incoming(
            listener,
            acceptor,
            &badge_runtime::limits::Limits::default(),
        );
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(EchoServiceServer::new(Echo));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Ok(EchoServer {
            addr,
            shutdown,
            task,
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<addr>`, for [`crate::load::LoadConfig::target`].
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops accepting, waits (bounded) for open connections to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(joined) => joined.context("echo server task")?.context("echo server"),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}
