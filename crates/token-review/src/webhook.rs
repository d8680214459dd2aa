//! Kubernetes' webhook token authentication (reference §4.2): kube-apiserver, with
//! `--authentication-token-webhook-config-file` pointing here, POSTs a TokenReview
//! (`authentication.k8s.io/v1beta1` by default, or `v1`) and expects the same
//! version back with `status` filled in:
//!
//! ```json
//! {"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",
//!  "spec":{"token":"<jwt>","audiences":["https://kubernetes.default.svc"]}}
//! ```
//!
//! is answered (HTTP 200 whether or not the token authenticates) with
//!
//! ```json
//! {"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",
//!  "status":{"authenticated":true,
//!            "user":{"username":"system:serviceaccount:ns:sa","uid":"…",
//!                    "groups":["system:serviceaccounts","system:serviceaccounts:ns","system:authenticated"],
//!                    "extra":{"authentication.kubernetes.io/credential-id":["JTI=…"]}},
//!            "audiences":["https://kubernetes.default.svc"]}}
//! ```
//!
//! or `"status":{"authenticated":false,"error":"<Kubernetes' text>"}`. Any path is
//! accepted (the apiserver posts to the exact server URL of its kubeconfig).
//! Malformed JSON, another kind or apiVersion, or an empty token → 400 with a
//! Kubernetes `Status` body; bodies over 1 MiB → 413; anything but POST → 405;
//! the index still loading → 503 (the apiserver retries).
//!
//! # Who may ask
//!
//! A review answers "is this token valid, and whose is it" and "may this user do
//! that" — a token oracle and a map of the RBAC policy — so the webhook requires
//! a credential exactly as the gRPC `CreateTokenReview` and
//! `CreateSubjectAccessReview` do, read by the same code: a client certificate
//! from `webhook.client_ca` (default: the server's CA; CN = user, O = groups), or
//! an `Authorization: Bearer <service-account token>` header reviewed as the gRPC
//! auth layer reviews it. kube-apiserver presents the client certificate of its
//! webhook kubeconfig (`badge up` writes one for the dev PKI's `kube-apiserver`
//! certificate). The caller then needs RBAC `create` on `tokenreviews`
//! (`authentication.k8s.io`) for a TokenReview, or on `subjectaccessreviews`
//! (`authorization.k8s.io`) for a SubjectAccessReview — the bootstrap
//! `system:auth-delegator` ClusterRole, bound to the user `kube-apiserver`.
//! No credential or a bad one → 401 (`reason: Unauthorized`); not allowed → 403
//! (`reason: Forbidden`, Kubernetes' "is forbidden" text). Both are decided
//! before the body is read, except the 403, which needs the body's kind.

use std::sync::Arc;

use std::time::Duration;

use badge_core::rbac::Attributes;
use badge_core::review::ReviewReport;
use badge_runtime::auth::{Authorizer as _, Caller};
use badge_runtime::https::{self, BodyError, Full, Peer};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tonic::Code;

use crate::grpc::TOKEN_REQUIRED;
use badge_access::{Guard, Reviewer, Via};

/// Largest request body accepted (see [`https::WEBHOOK_MAX_BODY_BYTES`]).
pub const MAX_BODY_BYTES: usize = https::WEBHOOK_MAX_BODY_BYTES;

/// Request bodies read at once, across the process: only authenticated callers
/// get this far, and this bounds what even they can make the process buffer
/// (64 × 1 MiB) however many connections and streams they open.
static BODY_READS: Semaphore = Semaphore::const_new(64);
/// How long a request waits for one of those before it is refused with 503.
const BODY_READ_WAIT: Duration = Duration::from_secs(1);

/// The TokenReview versions kube-apiserver speaks to a webhook.
pub const API_VERSIONS: [&str; 2] = ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"];

/// A parsed webhook request.
#[derive(Debug, PartialEq, Eq)]
pub struct WebhookRequest {
    pub api_version: String,
    pub token: String,
    pub audiences: Vec<String>,
}

/// A refused request: HTTP status, Kubernetes `reason`, message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal {
        code: StatusCode::BAD_REQUEST,
        reason: "BadRequest",
        message: message.into(),
    }
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, Refusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_request(format!("{path}: must be a string"))),
    }
}

/// Parses a TokenReview body. Errors never quote the body (it holds a token):
/// JSON errors name only the position.
pub fn parse_request(body: &[u8]) -> Result<WebhookRequest, Refusal> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad_request(format!(
            "request body is not valid JSON (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(obj) = value else {
        return Err(bad_request("request body must be a JSON object"));
    };
    let api_version = string_field(&obj, "apiVersion", "apiVersion")?.unwrap_or("");
    if !API_VERSIONS.contains(&api_version) {
        return Err(bad_request(format!(
            "apiVersion: unsupported value {api_version:?}: expected \"authentication.k8s.io/v1\" or \"authentication.k8s.io/v1beta1\""
        )));
    }
    let kind = string_field(&obj, "kind", "kind")?.unwrap_or("");
    if kind != "TokenReview" {
        return Err(bad_request(format!(
            "kind: unsupported value {kind:?}: expected \"TokenReview\""
        )));
    }
    let spec = match obj.get("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad_request("spec: must be an object")),
    };
    let token = string_field(&spec, "token", "spec.token")?.unwrap_or("");
    if token.is_empty() {
        return Err(bad_request(format!("spec.token: {TOKEN_REQUIRED}")));
    }
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad_request("spec.audiences: must be an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad_request("spec.audiences: must be an array of strings")),
    };
    Ok(WebhookRequest {
        api_version: api_version.to_owned(),
        token: token.to_owned(),
        audiences,
    })
}

/// The TokenReview answer in `api_version`, with Kubernetes' omitempty rules
/// (no `extra`/`audiences` when empty). Never carries the token.
pub fn response_body(api_version: &str, report: &ReviewReport) -> Value {
    let status = match &report.outcome {
        Ok(a) => {
            let mut user = Map::new();
            user.insert("username".into(), json!(a.user.username));
            if !a.user.uid.is_empty() {
                user.insert("uid".into(), json!(a.user.uid));
            }
            if !a.user.groups.is_empty() {
                user.insert("groups".into(), json!(a.user.groups));
            }
            if !a.user.extra.is_empty() {
                user.insert("extra".into(), json!(a.user.extra));
            }
            let mut status = Map::new();
            status.insert("authenticated".into(), json!(true));
            status.insert("user".into(), Value::Object(user));
            if !a.audiences.is_empty() {
                status.insert("audiences".into(), json!(a.audiences));
            }
            Value::Object(status)
        }
        Err(e) => json!({"authenticated": false, "error": e.to_string()}),
    };
    json!({"apiVersion": api_version, "kind": "TokenReview", "status": status})
}

fn json_response(code: StatusCode, body: &Value) -> Response<Full> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.to_string()))
        .unwrap_or_else(|_| Response::new(Full::empty()))
}

/// Kubernetes' `Status` object for a refused request.
pub fn status_body(r: &Refusal) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": r.message,
        "reason": r.reason,
        "code": r.code.as_u16(),
    })
}

fn refuse(r: Refusal) -> Response<Full> {
    let mut resp = json_response(r.code, &status_body(&r));
    if r.code == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
    }
    resp
}

/// kube-apiserver's text for a request without valid credentials.
pub const UNAUTHORIZED: &str = "Unauthorized";

fn unauthorized() -> Refusal {
    Refusal {
        code: StatusCode::UNAUTHORIZED,
        reason: "Unauthorized",
        // Kubernetes says no more than this to an unauthenticated client; why is
        // logged (never the token).
        message: UNAUTHORIZED.into(),
    }
}

fn unavailable(message: impl Into<String>) -> Refusal {
    Refusal {
        code: StatusCode::SERVICE_UNAVAILABLE,
        reason: "ServiceUnavailable",
        message: message.into(),
    }
}

/// The caller of a webhook request, read as the gRPC auth layer reads it: a
/// bearer token when an `Authorization` header is present (reviewed by the
/// guard, never falling back to the certificate), else the verified client
/// certificate's identity.
async fn authenticate(guard: &Guard, req: &Request<Incoming>) -> Result<Caller, Refusal> {
    // Read synchronously: the request is not held across the await below.
    let token = badge_runtime::auth::bearer(req.headers()).map(|t| t.map(str::to_owned));
    let peer = req.extensions().get::<Peer>().cloned();
    let addr = peer
        .as_ref()
        .map(|p| p.addr.to_string())
        .unwrap_or_default();
    let refused = |why: &str| {
        tracing::info!(peer = %addr, reason = %why, "webhook request refused: unauthenticated");
        unauthorized()
    };
    match token {
        Some(Err(status)) => Err(refused(status.message())),
        Some(Ok(token)) => match guard.authenticate_token(&token).await {
            Ok(caller) => Ok(caller),
            Err(status) if status.code() == Code::Unauthenticated => Err(refused(status.message())),
            Err(status) => Err(unavailable(status.message())),
        },
        None => match peer.and_then(|p| p.certificate) {
            Some(Ok(caller)) => Ok(caller),
            Some(Err(why)) => Err(refused(&why)),
            None => Err(refused(
                "no credentials: present a client certificate issued by webhook.client_ca, or an Authorization: Bearer <service-account token> header",
            )),
        },
    }
}

/// `create` on `resource` in `group`, cluster-wide: what the gRPC method of the
/// same review requires ([`crate::METHODS`], [`crate::access::METHODS`]).
fn create(group: &str, resource: &str) -> Attributes {
    Attributes::Resource {
        verb: "create".into(),
        namespace: String::new(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: String::new(),
        name: String::new(),
    }
}

/// Asks the guard (the gRPC auth layer's authorizer) whether `caller` may create
/// `resource` in `group`.
fn authorize(guard: &Guard, caller: &Caller, group: &str, resource: &str) -> Result<(), Refusal> {
    let Err(status) = guard.authorize(caller, &create(group, resource)) else {
        return Ok(());
    };
    if status.code() != Code::PermissionDenied {
        return Err(unavailable(status.message()));
    }
    // Kubernetes names a grouped resource `<resource>.<group>` in front of "is
    // forbidden" (`tokenreviews.authentication.k8s.io is forbidden: User ...`);
    // the rest is the shared text.
    let text = status.message();
    let message = match text.strip_prefix(&format!("{resource} is forbidden")) {
        Some(rest) => format!("{resource}.{group} is forbidden{rest}"),
        None => text.to_owned(),
    };
    tracing::info!(user = %caller.user, %resource, "webhook request refused: forbidden");
    Err(Refusal {
        code: StatusCode::FORBIDDEN,
        reason: "Forbidden",
        message,
    })
}

/// Answers one webhook request.
pub async fn handle(
    reviewer: Arc<Reviewer>,
    guard: Arc<Guard>,
    req: Request<Incoming>,
) -> Response<Full> {
    match answer(&reviewer, &guard, req).await {
        Ok(resp) => resp,
        Err(r) => refuse(r),
    }
}

async fn answer(
    reviewer: &Reviewer,
    guard: &Arc<Guard>,
    req: Request<Incoming>,
) -> Result<Response<Full>, Refusal> {
    // Security: the credential is checked before anything else, so an anonymous
    // client learns nothing and costs nothing (its body is never read).
    let caller = authenticate(guard, &req).await?;
    if req.method() != Method::POST {
        return Err(Refusal {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("method {} is not allowed: POST a TokenReview", req.method()),
        });
    }
    let Ok(_reading) = tokio::time::timeout(BODY_READ_WAIT, BODY_READS.acquire()).await else {
        return Err(unavailable(
            "server busy: too many webhook request bodies are being read; retry",
        ));
    };
    let body = match https::read_body(req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e @ BodyError::TooLarge { .. }) => {
            return Err(Refusal {
                code: StatusCode::PAYLOAD_TOO_LARGE,
                reason: "RequestEntityTooLarge",
                message: e.to_string(),
            });
        }
        Err(e) => return Err(bad_request(e.to_string())),
    };
    drop(_reading);
    // Kubernetes' authorization webhook shares the listener: told apart by its
    // apiVersion group.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && v["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("authorization.k8s.io/"))
    {
        authorize(
            guard,
            &caller,
            "authorization.k8s.io",
            "subjectaccessreviews",
        )?;
        let answer = crate::access::webhook(guard, &v).map_err(bad_request)?;
        // Audited as the gRPC CreateSubjectAccessReview is, plus who asked.
        tracing::info!(
            target: "audit",
            event = "access.reviewed",
            via = "webhook",
            requester = %caller.user,
            user = %v["spec"]["user"].as_str().unwrap_or_default(),
            allowed = answer["status"]["allowed"].as_bool().unwrap_or(false),
            "subject access review"
        );
        return Ok(json_response(StatusCode::OK, &answer));
    }
    authorize(guard, &caller, "authentication.k8s.io", "tokenreviews")?;
    let parsed = parse_request(&body)?;
    match reviewer
        .review(&parsed.token, &parsed.audiences, Via::Webhook, &caller.user)
        .await
    {
        Ok(report) => Ok(json_response(
            StatusCode::OK,
            &response_body(&parsed.api_version, &report),
        )),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use badge_core::review::{Authenticated, UserInfo};

    use super::*;

    #[test]
    fn apiserver_bodies_parse() {
        let body = br#"{"apiVersion":"authentication.k8s.io/v1beta1","kind":"TokenReview","metadata":{"creationTimestamp":null},"spec":{"token":"a.b.c","audiences":["https://kubernetes.default.svc"]},"status":{"user":{}}}"#;
        assert_eq!(
            parse_request(body).unwrap(),
            WebhookRequest {
                api_version: "authentication.k8s.io/v1beta1".into(),
                token: "a.b.c".into(),
                audiences: vec!["https://kubernetes.default.svc".into()],
            }
        );
        let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","metadata":{"creationTimestamp":null},"spec":{"token":"t"},"status":{"user":{}}}"#;
        let r = parse_request(body).unwrap();
        assert_eq!(r.api_version, "authentication.k8s.io/v1");
        assert!(r.audiences.is_empty());
    }

    #[test]
    fn bad_bodies_are_400_and_never_quote_the_token() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json secret-token", "not valid JSON"),
            (b"[]", "must be a JSON object"),
            (
                br#"{"apiVersion":"authentication.k8s.io/v2","kind":"TokenReview","spec":{"token":"secret-token"}}"#,
                "apiVersion",
            ),
            (
                br#"{"kind":"TokenReview","spec":{"token":"secret-token"}}"#,
                "apiVersion",
            ),
            (
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SubjectAccessReview","spec":{"token":"secret-token"}}"#,
                "kind",
            ),
            (
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{}}"#,
                TOKEN_REQUIRED,
            ),
            (
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":""}}"#,
                TOKEN_REQUIRED,
            ),
            (
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":7}}"#,
                "spec.token",
            ),
            (
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"secret-token","audiences":"secret-token"}}"#,
                "spec.audiences",
            ),
            (
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"secret-token","#,
                "not valid JSON",
            ),
        ];
        for (body, want) in cases {
            let r = parse_request(body).unwrap_err();
            assert_eq!(r.code, StatusCode::BAD_REQUEST);
            assert!(r.message.contains(want), "{} !~ {want}", r.message);
            assert!(!r.message.contains("secret-token"), "{}", r.message);
        }
        let s = status_body(&bad_request("x"));
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["code"], 400);
        assert_eq!(s["reason"], "BadRequest");
    }

    #[test]
    fn responses_follow_kubernetes_omitempty() {
        let ok = ReviewReport {
            outcome: Ok(Authenticated {
                user: UserInfo {
                    username: "system:serviceaccount:ns:sa".into(),
                    uid: "u".into(),
                    groups: vec!["g".into()],
                    extra: BTreeMap::new(),
                },
                audiences: vec!["a".into()],
                ..Default::default()
            }),
            audit_annotations: vec![],
            legacy_secret: None,
        };
        let v = response_body("authentication.k8s.io/v1", &ok);
        assert_eq!(
            v,
            json!({"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","status":{
                "authenticated":true,
                "user":{"username":"system:serviceaccount:ns:sa","uid":"u","groups":["g"]},
                "audiences":["a"]}})
        );
        let failed = ReviewReport {
            outcome: Err(badge_core::review::ReviewError::InvalidBearerToken),
            audit_annotations: vec![],
            legacy_secret: None,
        };
        assert_eq!(
            response_body("authentication.k8s.io/v1beta1", &failed),
            json!({"apiVersion":"authentication.k8s.io/v1beta1","kind":"TokenReview",
                   "status":{"authenticated":false,"error":"invalid bearer token"}})
        );
    }
}
