//! The `check` scenario: Envoy's `envoy.service.auth.v3.Authorization/Check`
//! against token-review, with CheckRequests shaped as Envoy builds them (a dozen
//! lower-case request headers including the pseudo-headers, the route's context
//! extensions), authenticated by a bearer token or by the mesh peer's SPIFFE ID.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use prost::Message as _;
use prost::bytes::{BufMut as _, Bytes};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstDecoder;

/// The method, as Envoy calls it.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

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

/// A CheckRequest encoded once. The load generator shares the machine's cores with
/// the server, so its own per-request cost is part of every measured rate: the echo
/// scenario sends a byte string, and re-encoding a CheckRequest (a dozen-entry map,
/// cloned per request) would charge Check for work that is Envoy's, on Envoy's
/// machine. These bytes are exactly what `AuthorizationClient::check` would send.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: CheckRequest,
    encoded: Bytes,
}

impl Prepared {
    pub fn new(request: CheckRequest) -> Self {
        let encoded = Bytes::from(request.encode_to_vec());
        Prepared { request, encoded }
    }

    /// The request's size on the wire (without gRPC framing).
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }
}

/// Sends pre-encoded bytes as the request message; decodes the reply with prost.
#[derive(Debug, Clone, Copy, Default)]
struct PreEncodedCodec;

#[derive(Debug, Clone, Copy, Default)]
struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put(item);
        Ok(())
    }
}

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = CheckResponse;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<CheckResponse>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<CheckResponse> {
        ProstDecoder::default()
    }
}

/// One Check; with `expect_allowed` a denial is an error named by its status code
/// (the body only: never the token).
pub async fn call(
    channel: Channel,
    request: &Prepared,
    expect_allowed: bool,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let reply = grpc
        .unary(
            tonic::Request::new(request.encoded.clone()),
            PathAndQuery::from_static(CHECK_PATH),
            PreEncodedCodec,
        )
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
