//! The audit trail of the identity API, in one place: [`Audited`] wraps every
//! identity gRPC service, so each create, update and delete of every kind, and
//! each Secret read (Get and List; Watch audits the Secret events it delivers,
//! see `watch`), emits exactly one event on the `audit` tracing target — the
//! same target the token-issuer (`token.issued`) and the reviewers
//! (`token.reviewed`) use:
//!
//! `event = "identity.request"`, `user` (the authenticated caller), `verb`,
//! `resource`, `namespace`, `name`, `resource_version` (the object's after a
//! write, the one the client sent on a refusal), `code` (`OK` or the gRPC code)
//! and, on a refusal, its `reason`.
//!
//! Security: only object keys are recorded — never Secret data, never labels or
//! annotations (their values may carry secrets). Requests refused by the auth
//! layer (no credential, RBAC denied) are logged there and never reach a service.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use badge_proto::meta::ObjectMeta;
use badge_runtime::{Caller, MethodRule, MethodTable};
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use tonic::Code;
use tonic::body::Body;
use tonic::server::NamedService;
use tower_service::Service;

/// Any object: every identity and RBAC kind has its metadata in field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyObject {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

/// A Create/Update request: the object is field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, optional, tag = "1")]
    object: Option<AnyObject>,
}

/// The methods an event is emitted for: writes of every kind and Secret reads.
fn audited(rule: &MethodRule) -> bool {
    matches!(rule.verb, "create" | "update" | "delete")
        || (rule.resource == "secrets" && matches!(rule.verb, "get" | "list"))
}

/// The message of a unary gRPC body (after the 5-byte prefix).
fn message(body: &[u8]) -> &[u8] {
    body.get(5..).unwrap_or_default()
}

/// What one audited call acted on, read from its request.
#[derive(Default)]
struct Key {
    namespace: String,
    name: String,
    resource_version: String,
}

fn request_key(rule: &MethodRule, body: &[u8]) -> Key {
    let msg = message(body);
    if matches!(rule.verb, "create" | "update") {
        // The scope of a create names no object; the object's metadata does.
        let meta = <WriteRequest as prost::Message>::decode(msg)
            .ok()
            .and_then(|r| r.object?.metadata)
            .unwrap_or_default();
        return Key {
            namespace: meta.namespace,
            name: meta.name,
            resource_version: meta.resource_version,
        };
    }
    let target = rule
        .scope
        .and_then(|scope| scope(msg).ok())
        .unwrap_or_default();
    Key {
        namespace: target.namespace,
        name: target.name,
        resource_version: String::new(),
    }
}

/// The gRPC status of a finished unary response: the trailers-only header of a
/// refusal, else the trailers.
fn code_of(headers: &http::HeaderMap, trailers: Option<&http::HeaderMap>) -> Code {
    let read = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
    };
    read(headers)
        .or_else(|| trailers.and_then(read))
        .unwrap_or(Code::Ok)
}

fn reason_of(headers: &http::HeaderMap, trailers: Option<&http::HeaderMap>) -> String {
    let read = |h: &http::HeaderMap| {
        h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
    };
    read(headers)
        .or_else(|| trailers.and_then(read))
        .unwrap_or_default()
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn emit(user: &str, rule: &MethodRule, key: &Key, code: Code, reason: &str) {
    tracing::info!(
        target: "audit",
        event = "identity.request",
        user,
        verb = rule.verb,
        resource = rule.resource,
        namespace = %key.namespace,
        name = %key.name,
        resource_version = %key.resource_version,
        code = ?code,
        reason,
        "identity request"
    );
}

/// A Secret delivered by a Watch (list or change): one event each, as a read.
pub(crate) fn secret_watched(user: &str, record: &badge_store::Record, revision: i64) {
    const WATCH_SECRETS: MethodRule = MethodRule::new("watch", "", "secrets");
    let key = Key {
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        resource_version: revision.to_string(),
    };
    emit(user, &WATCH_SECRETS, &key, Code::Ok, "");
}

/// An identity gRPC service with its calls audited (see the module docs).
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    rules: Arc<HashMap<&'static str, MethodRule>>,
}

impl<S> Audited<S> {
    pub fn new(inner: S, table: MethodTable) -> Self {
        Audited {
            inner,
            rules: Arc::new(table.iter().copied().collect()),
        }
    }

    /// Wraps `inner` with the rules of every identity method table (the RBAC
    /// services share one table).
    pub fn all(inner: S) -> Self {
        Audited {
            inner,
            rules: Arc::new(
                crate::METHOD_TABLES
                    .iter()
                    .flat_map(|t| t.iter().copied())
                    .collect(),
            ),
        }
    }
}

impl<S: NamedService> NamedService for Audited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Audited<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rule = self.rules.get(req.uri().path()).copied().filter(audited);
        let Some(rule) = rule else {
            return Box::pin(inner.call(req));
        };
        Box::pin(async move {
            let user = req
                .extensions()
                .get::<Caller>()
                .map(|c| c.user.clone())
                .unwrap_or_default();
            // The auth layer has already read (and bounded) this unary request to
            // authorize it; reading it again here costs a copy of a small buffer.
            let (parts, body) = req.into_parts();
            let bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(status) => {
                    emit(
                        &user,
                        &rule,
                        &Key::default(),
                        status.code(),
                        status.message(),
                    );
                    return Ok(status.into_http());
                }
            };
            let mut key = request_key(&rule, &bytes);
            let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            let resp = inner.call(req).await?;
            let (parts, body) = resp.into_parts();
            if parts.headers.contains_key("grpc-status") {
                // Trailers-only: refused by the handler (invalid, not found, ...).
                emit(
                    &user,
                    &rule,
                    &key,
                    code_of(&parts.headers, None),
                    &reason_of(&parts.headers, None),
                );
                return Ok(http::Response::from_parts(parts, body));
            }
            let collected = match body.collect().await {
                Ok(c) => c,
                Err(status) => {
                    emit(&user, &rule, &key, status.code(), status.message());
                    return Ok(status.into_http());
                }
            };
            let trailers = collected.trailers().cloned();
            let code = code_of(&parts.headers, trailers.as_ref());
            let bytes = collected.to_bytes();
            if code == Code::Ok && rule.verb != "list" {
                // The object as stored: its name (creates may generate one) and
                // the resource_version the write produced.
                if let Some(meta) = <AnyObject as prost::Message>::decode(message(&bytes))
                    .ok()
                    .and_then(|o| o.metadata)
                {
                    key.namespace = meta.namespace;
                    key.name = meta.name;
                    key.resource_version = meta.resource_version;
                }
            }
            emit(
                &user,
                &rule,
                &key,
                code,
                &reason_of(&parts.headers, trailers.as_ref()),
            );
            let body = Full::new(bytes).with_trailers(async move { trailers.map(Ok) });
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%25c"), "a b%c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn writes_and_secret_reads_are_audited() {
        let rules: HashMap<&str, MethodRule> = crate::METHOD_TABLES
            .iter()
            .flat_map(|t| t.iter().copied())
            .collect();
        let on = |p: &str| audited(rules.get(p).expect("rule"));
        assert!(on("/badge.identity.v1.PodService/CreatePod"));
        assert!(on("/badge.identity.v1.NamespaceService/DeleteNamespace"));
        assert!(on("/badge.identity.v1.SecretService/GetSecret"));
        assert!(on("/badge.identity.v1.SecretService/ListSecrets"));
        assert!(!on("/badge.identity.v1.PodService/GetPod"));
        assert!(!on("/badge.identity.v1.WatchService/Watch"));
    }
}
