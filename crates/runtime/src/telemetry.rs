//! Logs, traces and metrics.
//!
//! - **Logs**: pretty for people, JSON for machines, written by a dedicated thread.
//! - **Traces**: with an OTLP endpoint (`telemetry.otlp_endpoint`, else
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`), every tracing span is exported over OTLP/gRPC
//!   through `tracing-opentelemetry`. Each RPC gets one server span ([`TraceLayer`])
//!   with the service, method, caller and gRPC status, parented by the caller's W3C
//!   `traceparent`; the services' calls to each other carry it on ([`inject`]).
//! - **Metrics**: `opentelemetry` instruments ([`metrics`]), exported every
//!   `telemetry.metrics_interval_seconds` to the same endpoint. Without an endpoint the
//!   instruments are no-ops.

use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Keeps the log writer thread alive; [`flush`] drops it to write out the rest.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);
/// The OpenTelemetry providers, flushed and shut down by [`flush`].
static PROVIDERS: Mutex<Option<(SdkTracerProvider, SdkMeterProvider)>> = Mutex::new(None);
/// Whether spans are exported (an OTLP endpoint is configured). Without export the
/// per-RPC span is a debug-level span: with the default `info` filter it is never
/// built, which saved ~8 % of a server's CPU per small RPC (the log formatter
/// renders every span's fields when the span opens); `RUST_LOG=debug` brings it
/// back as the context of log lines.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs only, no export (the `badge` tool).
pub fn init(log: &LogConfig) {
    if let Err(e) = init_with(log, &TelemetryConfig::default(), "badge") {
        eprintln!("telemetry: {e}");
    }
}

/// Installs the global subscriber (`RUST_LOG` wins over the configured level) and,
/// when an OTLP endpoint is configured, the trace and metric exporters. Must run
/// inside the tokio runtime (the OTLP/gRPC exporter uses it). `Err`: the exporter
/// could not be built (a bad endpoint).
///
/// Log lines are written to stdout by a dedicated thread, so request handlers never
/// wait on the terminal or a pipe; the writer is not lossy (audit events must not
/// be dropped): when its buffer is full, loggers wait.
pub fn init_with(
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    service: &str,
) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt: Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let providers = providers(telemetry, service)?;
    let otel = providers.as_ref().map(|(tracer, _)| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("badge"))
            .with_filter(LevelFilter::INFO)
    });
    // try_init: tests may install a subscriber more than once.
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if installed.is_ok() {
        if let Ok(mut g) = GUARD.lock() {
            *g = Some(guard);
        }
        if let Some((tracer, meter)) = providers {
            EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_meter_provider(meter.clone());
            if let Ok(mut p) = PROVIDERS.lock() {
                *p = Some((tracer, meter));
            }
        }
    }
    Ok(())
}

/// The exporters, when an endpoint is configured (here or in the environment).
fn providers(
    telemetry: &TelemetryConfig,
    service: &str,
) -> Result<Option<(SdkTracerProvider, SdkMeterProvider)>, String> {
    let env = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty());
    if telemetry.otlp_endpoint.is_none() && env.is_none() {
        return Ok(None);
    }
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| telemetry.service_name.clone())
        .unwrap_or_else(|| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    let mut spans = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let mut metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic();
    // Without an explicit endpoint the exporters read OTEL_EXPORTER_OTLP_ENDPOINT.
    if let Some(e) = &telemetry.otlp_endpoint {
        spans = spans.with_endpoint(e.clone());
        metrics = metrics.with_endpoint(e.clone());
    }
    let spans = spans
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let metrics = metrics
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
        .with_interval(Duration::from_secs(
            telemetry.metrics_interval_seconds.max(1),
        ))
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    Ok(Some((tracer, meter)))
}

/// Exports what is buffered (spans, metrics) without stopping.
pub fn force_flush() {
    if let Ok(p) = PROVIDERS.lock()
        && let Some((tracer, meter)) = p.as_ref()
    {
        let _ = tracer.force_flush();
        let _ = meter.force_flush();
    }
}

/// Writes out every buffered log line and exports the remaining spans and metrics;
/// call before the process exits (statics are not dropped, so without this the last
/// lines — e.g. audit events — could be lost).
pub fn flush() {
    if let Ok(mut p) = PROVIDERS.lock()
        && let Some((tracer, meter)) = p.take()
    {
        let _ = tracer.shutdown();
        let _ = meter.shutdown();
    }
    if let Ok(mut g) = GUARD.lock() {
        drop(g.take());
    }
}

/// Reads W3C trace headers from HTTP/2 request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes W3C trace headers into gRPC request metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A tonic interceptor for calls to other Badge services: carries the current
/// span's trace context as `traceparent` (a no-op without an exporter).
pub fn inject(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()));
    });
    Ok(req)
}

/// A trace context captured to continue the trace later (queued work).
pub type TraceContext = opentelemetry::Context;

/// A channel to another Badge service whose calls carry the current trace.
pub type TracedChannel = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// Wraps `channel` so every call carries `traceparent` ([`inject`]).
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    tonic::service::interceptor::InterceptedService::new(channel, inject as _)
}

/// Runs `f` in a new span whose parent is `parent` (a trace context captured where
/// the work was queued), so background work joins the trace that caused it.
pub fn in_span<F: Future>(
    span: tracing::Span,
    parent: opentelemetry::Context,
    f: F,
) -> impl Future<Output = F::Output> {
    let _ = span.set_parent(parent);
    f.instrument(span)
}

/// The current span's trace context, to hand to [`in_span`] later.
pub fn current_context() -> opentelemetry::Context {
    tracing::Span::current().context()
}

/// The instruments every service records into.
pub mod metrics {
    use std::sync::OnceLock;

    use opentelemetry::metrics::{Counter, Histogram, Meter};

    /// The meter of the global provider (a no-op until [`super::init_with`]
    /// installs an exporter).
    pub fn meter() -> Meter {
        opentelemetry::global::meter("badge")
    }

    pub struct Rpc {
        /// `badge.rpc.requests` {badge.service, rpc.method, rpc.grpc.status_code}
        pub requests: Counter<u64>,
        /// `badge.rpc.duration` in seconds, same attributes.
        pub duration: Histogram<f64>,
    }

    /// RPC instruments, created on first use (after the provider is installed).
    pub fn rpc() -> &'static Rpc {
        static RPC: OnceLock<Rpc> = OnceLock::new();
        RPC.get_or_init(|| {
            let m = meter();
            Rpc {
                requests: m
                    .u64_counter("badge.rpc.requests")
                    .with_description("gRPC requests served, by service, method and status")
                    .build(),
                duration: m
                    .f64_histogram("badge.rpc.duration")
                    .with_unit("s")
                    .with_description("gRPC request latency")
                    .build(),
            }
        })
    }

    /// `badge.tokens.issued` {alg, bound_kind}.
    pub fn tokens_issued() -> &'static Counter<u64> {
        static C: OnceLock<Counter<u64>> = OnceLock::new();
        C.get_or_init(|| {
            meter()
                .u64_counter("badge.tokens.issued")
                .with_description("service-account tokens signed")
                .build()
        })
    }

    /// `badge.token_reviews` {via, result = authenticated | rejected}.
    pub fn token_reviews() -> &'static Counter<u64> {
        static C: OnceLock<Counter<u64>> = OnceLock::new();
        C.get_or_init(|| {
            meter()
                .u64_counter("badge.token_reviews")
                .with_description("token reviews, by entry point and result")
                .build()
        })
    }
}

/// One server span and the RPC metrics per call; put it outside the auth layer so
/// refusals are traced too.
#[derive(Clone, Copy)]
pub struct TraceLayer {
    pub service: &'static str,
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
    service: &'static str,
}

/// The gRPC status of a response: in the headers for trailers-only answers
/// (errors), otherwise OK (tonic sends OK in the trailers).
fn grpc_code(res: &http::Response<Body>) -> i32 {
    res.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl<S> Service<http::Request<Body>> for TraceService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_owned();
        // Health probes arrive every few seconds from every balancer: not traced.
        if path.starts_with("/grpc.health.v1.") {
            return Box::pin(inner.call(req));
        }
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path.as_str(), ""));
        macro_rules! rpc_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "rpc",
                    otel.name = %path.trim_start_matches('/'),
                    otel.kind = "server",
                    otel.status_code = tracing::field::Empty,
                    rpc.system = "grpc",
                    rpc.service = %service,
                    rpc.method = %method,
                    rpc.grpc.status_code = tracing::field::Empty,
                    badge.service = self.service,
                    badge.caller = tracing::field::Empty,
                )
            };
        }
        let span = if EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
            let span = rpc_span!(tracing::Level::INFO);
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(req.headers()))
            });
            let _ = span.set_parent(parent);
            span
        } else {
            rpc_span!(tracing::Level::DEBUG)
        };
        let badge_service = self.service;
        let started = Instant::now();
        let recorded = span.clone();
        Box::pin(
            async move {
                let res = inner.call(req).await;
                let code = res.as_ref().map(grpc_code).unwrap_or(2);
                recorded.record("rpc.grpc.status_code", code);
                if code != 0 {
                    recorded.record("otel.status_code", "ERROR");
                }
                let attrs = [
                    opentelemetry::KeyValue::new("badge.service", badge_service),
                    opentelemetry::KeyValue::new("rpc.method", path),
                    opentelemetry::KeyValue::new("rpc.grpc.status_code", i64::from(code)),
                ];
                let m = metrics::rpc();
                m.requests.add(1, &attrs);
                m.duration.record(started.elapsed().as_secs_f64(), &attrs);
                res
            }
            .instrument(span),
        )
    }
}
