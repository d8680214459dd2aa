//! Serving a set of gRPC services the Badge way: mTLS, the auth layer, health
//! (NOT_SERVING until the store answers), reflection v1 and v1alpha, graceful stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{AuthLayer, Authorizer, MethodTable};
use crate::limits::{BufferBudget, Limits};
use crate::tls::TlsMaterial;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builder for one gRPC listener.
pub struct GrpcServer {
    /// `badge.service` on spans and metrics (e.g. `identity`).
    service: &'static str,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    tables: Vec<MethodTable>,
    health: HealthReporter,
    limits: Limits,
    /// Descriptor sets of non-Badge services this listener serves (reflection).
    descriptors: Vec<&'static [u8]>,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        GrpcServer {
            service: "badge",
            routes,
            names: Vec::new(),
            tables: Vec::new(),
            health,
            limits: Limits::default(),
            descriptors: Vec::new(),
        }
    }

    /// Reflects the services of an encoded FileDescriptorSet besides Badge's own
    /// (e.g. Envoy's ext_authz on token-review).
    pub fn with_descriptors(mut self, set: &'static [u8]) -> Self {
        self.descriptors.push(set);
        self
    }

    /// The listener's limits (`[server.limits]`; defaults otherwise).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Names the server in spans and metrics.
    pub fn named(mut self, service: &'static str) -> Self {
        self.service = service;
        self
    }

    /// Adds a service and its method table (every method needs a rule).
    pub fn add_service<S>(mut self, service: S, table: MethodTable) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.names.push(S::NAME);
        self.tables.push(table);
        self
    }

    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Registers every service (and "") as NOT_SERVING, so a health check made
    /// before the first readiness probe answers NOT_SERVING, never NOT_FOUND. Call
    /// before [`spawn_readiness`].
    pub async fn register_not_serving(&self) {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for n in &self.names {
            self.health
                .set_service_status(*n, ServingStatus::NotServing)
                .await;
        }
    }

    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// The auth layer this server will use (tests check method coverage with it).
    pub fn auth_layer(&self, authorizer: Arc<dyn Authorizer>) -> AuthLayer {
        AuthLayer::with_budget(
            &self.tables,
            authorizer,
            BufferBudget::new(self.limits.max_buffered_bytes),
        )
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight calls.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: &TlsMaterial,
        authorizer: Arc<dyn Authorizer>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let auth = self.auth_layer(authorizer);
        let mut routes = self.routes;
        // Reflection lists only what this listener serves (the descriptor set holds
        // every Badge API).
        let names = self.names.clone();
        let descriptors = self.descriptors.clone();
        let reflection = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(badge_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.BadRequest etc., so grpcurl can print error details.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for n in &names {
                b = b.with_service_name(*n);
            }
            for d in &descriptors {
                b = b.register_encoded_file_descriptor_set(d);
            }
            b
        };
        routes.add_service(
            reflection()
                .build_v1()
                .map_err(|e| ServeError::Reflection(e.to_string()))?,
        );
        routes.add_service(
            reflection()
                .build_v1alpha()
                .map_err(|e| ServeError::Reflection(e.to_string()))?,
        );
        // Client certificates are optional at the TLS level: token-only workloads
        // connect with a bearer token, and the auth layer refuses a request that
        // has neither.
        let acceptor = tls
            .server_acceptor(true)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
        let limits = self.limits;
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
            // Security: hyper's HTTP/2 default is no limit on concurrent streams.
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            // Streams a client resets before the server answers count against this
            // (the HTTP/2 "rapid reset" flood); past it the connection is closed.
            .http2_max_pending_accept_reset_streams(Some(64))
            // Outermost: the span covers authentication and refusals too.
            .layer(crate::telemetry::TraceLayer {
                service: self.service,
            })
            .layer(auth)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(
                crate::transport::incoming(listener, acceptor, &limits),
                shutdown,
            )
            .await?;
        Ok(())
    }
}

/// Keeps health in step with a probe (e.g. a store ping): NOT_SERVING until the
/// first success, back to NOT_SERVING when it fails, SERVING when it recovers.
pub fn spawn_readiness<F, Fut>(
    health: HealthReporter,
    names: Vec<&'static str>,
    every: Duration,
    probe: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        loop {
            let ok = probe().await;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if last != Some(ok) {
                tracing::info!(?status, "health changed");
                last = Some(ok);
            }
            // Re-asserted every round (cheap), so no other writer can leave it stale.
            health.set_service_status("", status).await;
            for n in &names {
                health.set_service_status(*n, status).await;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: draining");
}

/// Background tasks of a service, aborted together when dropped (when `serve`
/// returns, its controllers stop with it).
#[derive(Default)]
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    pub fn push(&mut self, t: tokio::task::JoinHandle<()>) {
        self.0.push(t);
    }
}

impl FromIterator<tokio::task::JoinHandle<()>> for Tasks {
    fn from_iter<I: IntoIterator<Item = tokio::task::JoinHandle<()>>>(iter: I) -> Self {
        Tasks(iter.into_iter().collect())
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The multi-threaded runtime every Badge server process runs on (and the bench's
/// echo server, so the ceiling is measured on the same scheduler).
///
/// Built with `--cfg tokio_unstable` (the workspace's `.cargo/config.toml`), the
/// LIFO slot is off: with it, a handler finishing its answer wakes the connection
/// task straight into the slot, so the connection writes that one answer — one
/// TLS record and one `writev` per RPC while other handlers are still queued.
/// Without it, the connection task queues behind the handlers that are ready and
/// writes their answers together.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// A binary's `main`: runs `main` on [`runtime`], then flushes telemetry (spans
/// and metrics still buffered for the exporter). `Err` only when the runtime could
/// not start.
pub fn run_main<T>(main: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    // Flushed inside the runtime: the exporters send on it.
    Ok(runtime()?.block_on(async {
        let result = main.await;
        crate::telemetry::flush();
        result
    }))
}
