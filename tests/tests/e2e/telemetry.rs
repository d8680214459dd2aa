//! OpenTelemetry end to end: the three services export spans and metrics over
//! OTLP/gRPC to a local receiver (the OTLP collector protocol, served here by the
//! test). One span per RPC with service, method, caller and status; the caller's
//! W3C `traceparent` is the parent; token-review's call to identity (recording a
//! legacy token's use) continues the trace of the review that caused it.
//!
//! One test in this file: the exporters are process-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use badge_proto::review as rv;
use badge_tests::{
    IdentityServer, IssuerOptions, IssuerServer, ReviewServer, create_legacy_token_secret, meta, pb,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    parent_span_id: String,
    attrs: HashMap<String, String>,
    service_name: String,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut out = self.spans.lock().expect("lock");
        for rs in req.into_inner().resource_spans {
            let service_name = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(a.value.as_ref())))
                            .collect(),
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut out = self.metrics.lock().expect("lock");
        for rm in req.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    out.push(m.name);
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Waits (flushing) until `pred` holds for the received spans.
async fn until_spans(r: &Receiver, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    for _ in 0..100 {
        badge_runtime::telemetry::force_flush();
        let spans = r.spans.lock().expect("lock").clone();
        if pred(&spans) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = r.spans.lock().expect("lock").clone();
    let names: Vec<_> = spans.iter().map(|s| (&s.name, &s.trace_id)).collect();
    panic!("{what}: not among the received spans {names:?}");
}

fn with_header<T>(msg: T, traceparent: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("traceparent", traceparent.parse().expect("header"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_receiver() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()))
            .add_service(MetricsServiceServer::new(r))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    badge_runtime::telemetry::init_with(
        &badge_runtime::config::LogConfig::default(),
        &badge_runtime::config::TelemetryConfig {
            otlp_endpoint: Some(format!("http://{addr}")),
            service_name: Some("badge-under-test".into()),
            metrics_interval_seconds: 1,
        },
        "badge-test",
    )
    .expect("telemetry");

    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let review = ReviewServer::start(&identity, &issuer).await;
    let admin = identity.admin().await;

    // 1. A call with the caller's traceparent: the server span is its child.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{parent}-01");
    pb::namespace_service_client::NamespaceServiceClient::new(admin.clone())
        .create_namespace(with_header(
            pb::CreateNamespaceRequest {
                namespace: Some(pb::Namespace {
                    metadata: meta("", "apps"),
                    ..Default::default()
                }),
            },
            &tp,
        ))
        .await
        .expect("namespace");
    let spans = until_spans(&receiver, "CreateNamespace span", |s| {
        s.iter().any(|x| {
            x.trace_id == trace
                && x.attrs.get("rpc.method").map(String::as_str) == Some("CreateNamespace")
        })
    })
    .await;
    let span = spans
        .iter()
        .find(|x| x.trace_id == trace && x.attrs["rpc.method"] == "CreateNamespace")
        .expect("span");
    assert_eq!(
        span.name,
        "badge.identity.v1.NamespaceService/CreateNamespace"
    );
    assert_eq!(span.parent_span_id, parent);
    assert_eq!(
        span.attrs["rpc.service"],
        "badge.identity.v1.NamespaceService"
    );
    assert_eq!(span.attrs["rpc.system"], "grpc");
    assert_eq!(span.attrs["badge.service"], "identity");
    assert_eq!(span.attrs["badge.caller"], "admin");
    assert_eq!(span.attrs["rpc.grpc.status_code"], "0");
    assert_eq!(span.service_name, "badge-under-test");

    // 2. A failing call records its status.
    let err = pb::pod_service_client::PodServiceClient::new(admin.clone())
        .get_pod(pb::GetPodRequest {
            namespace: "apps".into(),
            name: "missing".into(),
        })
        .await
        .expect_err("not found");
    assert_eq!(err.code(), tonic::Code::NotFound);
    until_spans(&receiver, "GetPod NOT_FOUND span", |s| {
        s.iter().any(|x| {
            x.attrs.get("rpc.method").map(String::as_str) == Some("GetPod")
                && x.attrs.get("rpc.grpc.status_code").map(String::as_str) == Some("5")
        })
    })
    .await;

    // 3. Across services: reviewing a legacy token (with a traceparent) makes
    //    token-review record its use on identity, in the same trace.
    pb::service_account_service_client::ServiceAccountServiceClient::new(admin.clone())
        .create_service_account(pb::CreateServiceAccountRequest {
            service_account: Some(pb::ServiceAccount {
                metadata: meta("apps", "legacy"),
                ..Default::default()
            }),
        })
        .await
        .expect("sa");
    let mut secrets = pb::secret_service_client::SecretServiceClient::new(admin.clone());
    create_legacy_token_secret(admin.clone(), "apps", "legacy-token", "legacy").await;
    let mut token = None;
    for _ in 0..200 {
        let s = secrets
            .get_secret(pb::GetSecretRequest {
                namespace: "apps".into(),
                name: "legacy-token".into(),
            })
            .await
            .expect("get")
            .into_inner();
        if let Some(t) = s.data.get("token") {
            token = Some(String::from_utf8(t.clone()).expect("utf8"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let token = token.expect("the issuer fills the legacy token");
    let review_trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{review_trace}-b7ad6b7169203331-01");
    let mut reviews = rv::token_review_service_client::TokenReviewServiceClient::new(
        review.channel(&identity, &identity.pki.admin),
    );
    let mut authenticated = false;
    for _ in 0..100 {
        let s = reviews
            .create_token_review(with_header(
                rv::CreateTokenReviewRequest {
                    spec: Some(rv::TokenReviewSpec {
                        token: token.clone(),
                        audiences: vec![],
                    }),
                },
                &tp,
            ))
            .await
            .expect("review")
            .into_inner();
        if s.status.is_some_and(|s| s.authenticated) {
            authenticated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(authenticated, "legacy token reviews as authenticated");
    let spans = until_spans(
        &receiver,
        "identity UpdateSecret in the review's trace",
        |s| {
            s.iter().any(|x| {
                x.trace_id == review_trace
                    && x.attrs.get("badge.service").map(String::as_str) == Some("identity")
                    && x.attrs.get("rpc.method").map(String::as_str) == Some("UpdateSecret")
            })
        },
    )
    .await;
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|x| x.trace_id == review_trace)
        .collect();
    let review_span = in_trace
        .iter()
        .find(|x| x.attrs.get("badge.service").map(String::as_str) == Some("token-review"))
        .expect("token-review span in the trace");
    assert_eq!(review_span.attrs["rpc.method"], "CreateTokenReview");
    let update = in_trace
        .iter()
        .find(|x| x.attrs.get("rpc.method").map(String::as_str) == Some("UpdateSecret"))
        .expect("update");
    assert_eq!(update.attrs["badge.caller"], "system:badge:token-review");
    assert!(
        in_trace.iter().any(|x| x.name == "legacy_token.last_used"),
        "the background write is a span of the same trace"
    );
    // No span carries the token.
    for s in &spans {
        for v in s.attrs.values() {
            assert!(!v.contains(&token[..40]), "token in span {s:?}");
        }
    }

    // 4. Metrics: requests and latencies, tokens issued, reviews by result, index
    //    size and feed lag.
    badge_tests::pb::namespace_service_client::NamespaceServiceClient::new(admin.clone())
        .get_namespace(pb::GetNamespaceRequest {
            name: "apps".into(),
        })
        .await
        .expect("get");
    badge_proto::token::token_service_client::TokenServiceClient::new(
        issuer.channel(&identity, &identity.pki.admin),
    )
    .create_token(badge_proto::token::CreateTokenRequest {
        namespace: "apps".into(),
        name: "legacy".into(),
        ..Default::default()
    })
    .await
    .expect("token");
    let wanted = [
        "badge.rpc.requests",
        "badge.rpc.duration",
        "badge.tokens.issued",
        "badge.token_reviews",
        "badge.index.objects",
        "badge.index.feed_lag",
    ];
    let mut got = Vec::new();
    for _ in 0..100 {
        badge_runtime::telemetry::force_flush();
        got = receiver.metrics.lock().expect("lock").clone();
        if wanted.iter().all(|w| got.iter().any(|g| g == w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in wanted {
        assert!(
            got.iter().any(|g| g == w),
            "metric {w} not received: {got:?}"
        );
    }
}
