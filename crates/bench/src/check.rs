//! The `check` scenario: Envoy's `envoy.service.auth.v3.Authorization/Check`
//! against token-review, with CheckRequests shaped as Envoy builds them (a dozen
//! lower-case request headers including the pseudo-headers, the route's context
//! extensions), authenticated by a bearer token or by the mesh peer's SPIFFE ID.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tonic::Status;
use tonic::transport::Channel;

/// What one Check asks.
#[derive(Debug, Clone, Default)]
pub struct CheckSpec {
    /// `authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// `source.principal` (the peer certificate's URI SAN); empty: none.
    pub principal: String,
    pub method: String,
    pub path: String,
    /// `badge.dev/audiences` (comma-joined); empty: the API audiences.
    pub audiences: Vec<String>,
}

/// The CheckRequest Envoy sends for an HTTP/2 request with the usual headers.
pub fn envoy_request(spec: &CheckSpec) -> CheckRequest {
    let mut headers: HashMap<String, String> = [
        (":authority", "shop.example.com"),
        (":method", spec.method.as_str()),
        (":path", spec.path.as_str()),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) badge-bench"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "7f0c1e0e-4b8e-4a57-9d0b-2f7f3b0e2c11"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(t) = &spec.token {
        headers.insert("authorization".into(), format!("Bearer {t}"));
    }
    let mut ext = HashMap::new();
    if !spec.audiences.is_empty() {
        ext.insert("badge.dev/audiences".to_string(), spec.audiences.join(","));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: spec.principal.clone(),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: "1234567890".into(),
                    method: spec.method.clone(),
                    headers,
                    path: spec.path.clone(),
                    host: "shop.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

/// One Check; with `expect_allowed` a denial is an error named by its status code
/// (the body only: never the token).
pub async fn call(
    channel: Channel,
    request: &CheckRequest,
    expect_allowed: bool,
) -> Result<(), Status> {
    let reply = AuthorizationClient::new(channel)
        .check(request.clone())
        .await?
        .into_inner();
    let code = reply.status.as_ref().map_or(0, |s| s.code);
    if expect_allowed && code != 0 {
        let body = match reply.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d.body,
            _ => String::new(),
        };
        return Err(Status::new(
            tonic::Code::from(code),
            format!("denied: {body}"),
        ));
    }
    Ok(())
}
