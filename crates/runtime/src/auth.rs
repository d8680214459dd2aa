//! The one authentication/authorization layer every RPC passes through.
//!
//! **Authentication.** An `authorization: Bearer <token>` header, when present, is
//! the caller: a service-account token validated as TokenReview validates it (with
//! the API audiences) by the service's [`Authorizer`]; a bad token is
//! UNAUTHENTICATED, it never falls back to the certificate. Otherwise the verified
//! client certificate is the caller (CN = user, each O = a group, as Kubernetes'
//! x509 authenticator). Either way the caller is in `system:authenticated`. No
//! credential → UNAUTHENTICATED (health checks excepted: load balancers probe
//! without one, as Kubernetes' `system:public-info-viewer` allows `/healthz`).
//!
//! **Authorization.** Every full gRPC method must have an entry in the method table:
//! (verb, API group, resource, subresource) plus, for methods acting on a namespace
//! or a named object, the request type whose [`Scope`] names them. The layer decodes
//! that message (once more; unary requests are small) to build Kubernetes' request
//! attributes and asks the [`Authorizer`]. A method without an entry is refused, so
//! a new RPC cannot ship unguarded. Denied → PERMISSION_DENIED with Kubernetes'
//! "is forbidden" text and the authorizer's reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use badge_core::rbac::Attributes;
use badge_proto::Scope;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt as _, Full, Limited};
use tonic::Status;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::limits::{BufferBudget, DEFAULT_MAX_REQUEST};
use crate::pki::MASTERS_GROUP;

/// Every authenticated caller is in this group (as in Kubernetes).
pub use badge_core::review::AUTHENTICATED_GROUP;

/// Who is calling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    /// The service account's uid for token callers; empty for certificates.
    pub uid: String,
    pub groups: Vec<String>,
    /// Token callers: pod-name, pod-uid, node-name, node-uid, credential-id.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Caller {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request names, read from its message by [`Scope`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    /// (API group, resource) pairs overriding the method's own (Watch).
    pub resources: Vec<(&'static str, &'static str)>,
}

/// Decodes a request message and reads its scope.
pub type ScopeFn = fn(&[u8]) -> Result<Target, prost::DecodeError>;

fn decode_scope<T: Scope + prost::Message + Default>(
    message: &[u8],
) -> Result<Target, prost::DecodeError> {
    let m = T::decode(message)?;
    Ok(Target {
        namespace: m.namespace().to_owned(),
        name: m.name().to_owned(),
        resources: m.resources(),
    })
}

/// What a method does, in Kubernetes RBAC terms.
#[derive(Debug, Clone, Copy)]
pub struct MethodRule {
    pub verb: &'static str,
    pub api_group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// How to read the namespace and name from the request; `None`: cluster-wide,
    /// unnamed (e.g. `create tokenreviews`).
    pub scope: Option<ScopeFn>,
    /// The largest request message accepted (see [`crate::limits`]).
    pub max_request: usize,
    /// Who decides: RBAC (default), or see [`Check`].
    pub check: Check,
}

/// How the layer admits a method's callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Authenticated, then authorized by RBAC with the rule's attributes.
    Rbac,
    /// Any authenticated caller (public data, e.g. a trust bundle).
    Authenticated,
    /// The handler authenticates the request itself (it reads the credential from
    /// the request): for APIs whose bearer tokens carry an audience other than this
    /// server's API audiences (Istio's `istio-ca`), which the layer's review would
    /// refuse. Such a handler must refuse a request it cannot authenticate.
    Handler,
}

impl MethodRule {
    pub const fn new(verb: &'static str, api_group: &'static str, resource: &'static str) -> Self {
        MethodRule {
            verb,
            api_group,
            resource,
            subresource: "",
            scope: None,
            max_request: DEFAULT_MAX_REQUEST,
            check: Check::Rbac,
        }
    }

    /// Any authenticated caller may call the method (no RBAC decision).
    pub const fn any_authenticated(self) -> Self {
        MethodRule {
            check: Check::Authenticated,
            ..self
        }
    }

    /// The handler authenticates and authorizes (see [`Check::Handler`]).
    pub const fn handler_authenticates(self) -> Self {
        MethodRule {
            check: Check::Handler,
            ..self
        }
    }

    /// Requests of this method may be up to `bytes` long (default
    /// [`DEFAULT_MAX_REQUEST`]).
    pub const fn max_request(self, bytes: usize) -> Self {
        MethodRule {
            max_request: bytes,
            ..self
        }
    }

    pub const fn sub(self, subresource: &'static str) -> Self {
        MethodRule {
            subresource,
            ..self
        }
    }

    /// The request message `T` names the namespace and object (see [`Scope`]).
    pub const fn scoped<T: Scope + prost::Message + Default>(self) -> Self {
        MethodRule {
            scope: Some(decode_scope::<T>),
            ..self
        }
    }

    /// Kubernetes' request attributes for this rule and a target.
    pub fn attributes(&self, target: &Target) -> Vec<Attributes> {
        let one = |group: &str, resource: &str| Attributes::Resource {
            verb: self.verb.to_owned(),
            namespace: target.namespace.clone(),
            api_group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: self.subresource.to_owned(),
            name: target.name.clone(),
        };
        if target.resources.is_empty() {
            vec![one(self.api_group, self.resource)]
        } else {
            target.resources.iter().map(|(g, r)| one(g, r)).collect()
        }
    }
}

/// Full gRPC method path (`/badge.identity.v1.PodService/CreatePod`) → rule.
pub type MethodTable = &'static [(&'static str, MethodRule)];

/// Health checks: anyone, even without a credential.
const PUBLIC_PREFIXES: [&str; 1] = ["/grpc.health.v1.Health/"];
/// Reflection only describes the schema: any authenticated caller.
const AUTHENTICATED_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Kubernetes' forbidden text: `pods "web" is forbidden: User "bob" cannot get
/// resource "pods" in API group "" in the namespace "dev": <reason>`.
pub fn forbidden(caller: &Caller, attrs: &Attributes, reason: &str) -> Status {
    let message = match attrs {
        Attributes::Resource {
            verb,
            namespace,
            api_group,
            resource,
            subresource,
            name,
        } => {
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let what = if name.is_empty() {
                full.clone()
            } else {
                format!("{full} {name:?}")
            };
            let scope = if namespace.is_empty() {
                " at the cluster scope".to_owned()
            } else {
                format!(" in the namespace {namespace:?}")
            };
            format!(
                "{what} is forbidden: User {:?} cannot {verb} resource {full:?} in API group {api_group:?}{scope}",
                caller.user
            )
        }
        Attributes::NonResource { verb, path } => format!(
            "forbidden: User {:?} cannot {verb} path {path:?}",
            caller.user
        ),
    };
    if reason.is_empty() {
        Status::permission_denied(message)
    } else {
        Status::permission_denied(format!("{message}: {reason}"))
    }
}

/// Decides who the caller is (bearer tokens) and what they may do.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err` denies: PERMISSION_DENIED (see [`forbidden`]), or UNAVAILABLE while
    /// the policy is not loaded.
    fn authorize(&self, caller: &Caller, attrs: &Attributes) -> Result<(), Status>;

    /// The caller a bearer token stands for. Default: bearer tokens are refused.
    fn authenticate_token<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Caller, Status>> {
        Box::pin(async {
            Err(Status::unauthenticated(
                "bearer tokens are not accepted by this server: present a client certificate",
            ))
        })
    }
}

/// `system:masters` may do everything, everyone else nothing (tests, and tools that
/// run before any policy exists).
#[derive(Debug, Default, Clone, Copy)]
pub struct MastersOnly;

impl Authorizer for MastersOnly {
    fn authorize(&self, caller: &Caller, attrs: &Attributes) -> Result<(), Status> {
        if caller.in_group(MASTERS_GROUP) {
            return Ok(());
        }
        Err(forbidden(caller, attrs, "only system:masters may call"))
    }
}

/// Reads CN and O from a DER certificate.
pub fn caller_from_cert(der: &[u8]) -> Result<Caller, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| "client certificate could not be parsed".to_string())?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    if user.is_empty() {
        return Err("client certificate has no common name".into());
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    Ok(Caller {
        user,
        groups,
        ..Caller::default()
    })
}

/// How long an authenticated request may wait for room in the process's
/// buffering budget before it is refused as RESOURCE_EXHAUSTED.
const BUFFER_WAIT: Duration = Duration::from_secs(1);

/// The size limit error of a request body.
fn too_large(path: &str, max: usize) -> Status {
    Status::resource_exhausted(format!(
        "request message larger than {max} bytes, the limit of {path}"
    ))
}

/// A request body cut off past `max` message bytes (plus the 5-byte prefix).
fn limited(body: Body, max: usize) -> Body {
    Body::new(Limited::new(body, max.saturating_add(5)))
}

/// A response body that keeps its connection marked busy until it is finished
/// or dropped (a Watch stream is in flight for as long as it streams).
struct Tracked {
    inner: Body,
    _in_flight: Option<crate::transport::InFlight>,
}

impl hyper::body::Body for Tracked {
    type Data = hyper::body::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The first gRPC message of a buffered request body (5-byte prefix: compressed
/// flag, big-endian length). An empty body is an empty message.
///
/// Public (hidden) only so the property test `tests/tests/e2e/prop_auth_scope.rs` can
/// check, for any body, that the scope the layer authorizes is the one the handler
/// then decodes: a disagreement would authorize one object and act on another.
#[doc(hidden)]
pub fn first_message(body: &[u8]) -> Result<&[u8], Status> {
    if body.is_empty() {
        return Ok(body);
    }
    let Some(prefix) = body.get(..5) else {
        return Err(Status::invalid_argument("truncated gRPC message prefix"));
    };
    if prefix[0] != 0 {
        // The servers never advertise compression, so clients do not send it.
        return Err(Status::unimplemented(
            "compressed request messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    body.get(5..5 + len)
        .ok_or_else(|| Status::invalid_argument("truncated gRPC message"))
}

/// The token of an `authorization: Bearer <token>` header, if one is present
/// (also how the HTTPS webhook reads its bearer credential).
pub fn bearer(headers: &http::HeaderMap) -> Option<Result<&str, Status>> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("authorization header must be \"Bearer <token>\""));
    Some(parsed)
}

/// What a request presented.
enum Credential {
    /// A bearer token, still to be reviewed.
    Token(String),
    /// A verified client certificate's identity.
    Certificate(Caller),
}

/// A method's rule, as the layer uses it.
struct Rule {
    rule: MethodRule,
    /// The request attributes of a rule without a scope (the same for every
    /// request of the method): built once, not per request.
    unscoped: Option<Attributes>,
}

struct State {
    rules: HashMap<&'static str, Rule>,
    authorizer: Arc<dyn Authorizer>,
    budget: BufferBudget,
}

impl State {
    /// Authenticates and authorizes; hands back the request (its body rebuilt when
    /// it had to be read) and the caller.
    async fn admit(
        &self,
        req: http::Request<Body>,
    ) -> Result<(http::Request<Body>, Caller), Status> {
        let path = req.uri().path().to_owned();
        let entry = self.rules.get(path.as_str());
        // Read the credential synchronously: the request body is not `Sync`, so no
        // borrow of the request may live across an await.
        let credential = self.credential(&req);
        if PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok((req, Caller::default()));
        }
        if let Some(Rule { rule, .. }) = entry
            && rule.check == Check::Handler
        {
            // The handler reviews the credential with its own audiences; the body
            // is still cut off at the method's limit.
            let (parts, body) = req.into_parts();
            return Ok((
                http::Request::from_parts(parts, limited(body, rule.max_request)),
                Caller::default(),
            ));
        }
        let caller = match credential? {
            Credential::Token(token) => self.authorizer.authenticate_token(&token).await?,
            Credential::Certificate(caller) => caller,
        };
        tracing::Span::current().record("badge.caller", caller.user.as_str());
        if AUTHENTICATED_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok((req, caller));
        }
        let Some(Rule { rule, unscoped }) = entry else {
            // Fail closed: a method nobody wrote a rule for is not callable.
            return Err(Status::permission_denied(format!(
                "method {path} has no authorization rule"
            )));
        };
        // Only an authenticated caller gets here. Its request (one unary message)
        // is read whole, at most the method's limit, and the bytes it may make the
        // process hold are also bounded in total (the budget): 256 streams × many
        // connections cannot pin unbounded memory before authorization.
        let (parts, body) = req.into_parts();
        let (bytes, reserved) = self.read_message(&path, body, rule.max_request).await?;
        let target = match rule.scope {
            None => Target::default(),
            Some(scope) => scope(first_message(&bytes)?).map_err(|e| {
                Status::invalid_argument(format!("request message could not be decoded: {e}"))
            })?,
        };
        drop(reserved);
        let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
        if rule.check == Check::Rbac {
            match unscoped {
                Some(attrs) => self.authorizer.authorize(&caller, attrs)?,
                None => {
                    for attrs in rule.attributes(&target) {
                        self.authorizer.authorize(&caller, &attrs)?;
                    }
                }
            }
        }
        Ok((req, caller))
    }

    /// Reads a unary request body: one gRPC message of at most `max` bytes. The
    /// budget is reserved for the size the message's prefix declares before the
    /// message itself is read (so a small request holds a small reservation), and
    /// a declared size over the limit is refused before its bytes arrive.
    async fn read_message(
        &self,
        path: &str,
        body: Body,
        max: usize,
    ) -> Result<
        (
            hyper::body::Bytes,
            Option<tokio::sync::OwnedSemaphorePermit>,
        ),
        Status,
    > {
        let limit = max.saturating_add(5);
        let mut body = Limited::new(body, limit);
        // A small unary request usually arrives as one DATA frame: it is kept as the
        // frame's own bytes (no copy, no allocation). Only a message split across
        // frames is gathered into `buf`.
        let mut first: Option<hyper::body::Bytes> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut reserved = None;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => too_large(path, max),
                    Err(e) => Status::from_error(e),
                })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let len = match first.take() {
                None if buf.is_empty() => {
                    let len = data.len();
                    first = Some(data);
                    len
                }
                // A second frame: from here on, the message is gathered.
                held => {
                    if let Some(held) = held {
                        buf.extend_from_slice(&held);
                    }
                    buf.extend_from_slice(&data);
                    buf.len()
                }
            };
            if reserved.is_none() && len >= 5 {
                let head = first.as_deref().unwrap_or(&buf);
                let declared = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if declared > max {
                    return Err(too_large(path, max));
                }
                let Some(permit) = self.budget.reserve(declared + 5, BUFFER_WAIT).await else {
                    return Err(Status::resource_exhausted(format!(
                        "server busy: {} bytes of requests are awaiting authorization; retry",
                        self.budget.total()
                    )));
                };
                if first.is_none() {
                    buf.reserve_exact((declared + 5).saturating_sub(buf.len()));
                }
                reserved = Some(permit);
            }
        }
        let bytes = match first {
            Some(one) => one,
            None => buf.into(),
        };
        Ok((bytes, reserved))
    }

    fn credential<B>(&self, req: &http::Request<B>) -> Result<Credential, Status> {
        if let Some(token) = bearer(req.headers()) {
            return Ok(Credential::Token(token?.to_owned()));
        }
        let peer = req.extensions().get::<crate::transport::PeerInfo>();
        let Some((peer, leaf)) =
            peer.and_then(|p| Some((p, p.certs.as_ref().and_then(|c| c.first())?)))
        else {
            return Err(Status::unauthenticated(
                "no credentials: present a client certificate issued by the configured CA, or an authorization: Bearer <service-account token> header",
            ));
        };
        // rustls has verified the chain before the request got here. Parsing X.509
        // costs more than the rest of the layer, so it happens once per connection:
        // the slot lives in that connection's `PeerInfo`, beside its chain.
        let caller = peer
            .caller
            .get_or_init(|| caller_from_cert(leaf.as_ref()))
            .clone()
            .map_err(Status::unauthenticated)?;
        Ok(Credential::Certificate(caller))
    }
}

/// Tower layer enforcing the above; put it on the server so it wraps every service.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

impl AuthLayer {
    pub fn new(tables: &[MethodTable], authorizer: Arc<dyn Authorizer>) -> Self {
        Self::with_budget(
            tables,
            authorizer,
            BufferBudget::new(crate::limits::Limits::default().max_buffered_bytes),
        )
    }

    /// As [`AuthLayer::new`], buffering at most `budget` bytes for authorization.
    pub fn with_budget(
        tables: &[MethodTable],
        authorizer: Arc<dyn Authorizer>,
        budget: BufferBudget,
    ) -> Self {
        let rules = tables
            .iter()
            .flat_map(|t| t.iter().copied())
            .map(|(path, rule)| {
                let unscoped = match rule.scope {
                    None => rule.attributes(&Target::default()).pop(),
                    Some(_) => None,
                };
                (path, Rule { rule, unscoped })
            })
            .collect();
        AuthLayer {
            state: Arc::new(State {
                rules,
                authorizer,
                budget,
            }),
        }
    }

    /// Whether `path` has a rule (used by the "every method has an entry" tests).
    pub fn has_rule(&self, path: &str) -> bool {
        self.state.rules.contains_key(path)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<http::Request<Body>> for AuthService<S>
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
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        // The connection is busy (not idle) until the response is finished.
        let in_flight = req
            .extensions()
            .get::<crate::transport::PeerInfo>()
            .map(|p| p.activity.begin());
        Box::pin(async move {
            // A cheap clone (shared bytes), for the refusal's log line.
            let uri = req.uri().clone();
            let response = match state.admit(req).await {
                Ok((mut req, caller)) => {
                    tracing::debug!(user = %caller.user, method = %req.uri().path(), "authorized");
                    req.extensions_mut().insert(caller);
                    inner.call(req).await?
                }
                Err(status) => {
                    // Named here: the per-RPC span is only built when traces are exported.
                    // On the audit target: a refused call is as much a security
                    // event as an allowed write (the reason never holds a token).
                    tracing::info!(target: "audit", event = "request.refused", method = %uri.path(), code = ?status.code(), reason = %status.message(), "refused");
                    status.into_http()
                }
            };
            Ok(response.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// The authenticated caller of a request (set by [`AuthLayer`]).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("request did not pass the auth layer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(ns: &str, name: &str, sub: &str) -> Attributes {
        Attributes::Resource {
            verb: "get".into(),
            namespace: ns.into(),
            api_group: "".into(),
            resource: "pods".into(),
            subresource: sub.into(),
            name: name.into(),
        }
    }

    #[test]
    fn forbidden_texts() {
        let bob = Caller {
            user: "bob".into(),
            ..Caller::default()
        };
        let cases = [
            (
                attrs("dev", "web", ""),
                "no RBAC policy matched",
                "pods \"web\" is forbidden: User \"bob\" cannot get resource \"pods\" in API group \"\" in the namespace \"dev\": no RBAC policy matched",
            ),
            (
                attrs("", "", ""),
                "",
                "pods is forbidden: User \"bob\" cannot get resource \"pods\" in API group \"\" at the cluster scope",
            ),
            (
                attrs("dev", "sa", "token"),
                "x",
                "pods/token \"sa\" is forbidden: User \"bob\" cannot get resource \"pods/token\" in API group \"\" in the namespace \"dev\": x",
            ),
        ];
        for (a, reason, want) in cases {
            let s = forbidden(&bob, &a, reason);
            assert_eq!(s.code(), tonic::Code::PermissionDenied);
            assert_eq!(s.message(), want);
        }
    }

    #[test]
    fn message_prefix() {
        assert_eq!(first_message(&[]).expect("ok"), &[] as &[u8]);
        assert_eq!(first_message(&[0, 0, 0, 0, 2, 8, 1]).expect("ok"), &[8, 1]);
        assert_eq!(
            first_message(&[0, 0, 0, 0, 9, 8])
                .expect_err("should fail")
                .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            first_message(&[1, 0, 0, 0, 1, 8])
                .expect_err("should fail")
                .code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            first_message(&[0, 0]).expect_err("should fail").code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn bearer_header() {
        let mut h = http::HeaderMap::new();
        assert!(bearer(&h).is_none());
        h.insert("authorization", "Bearer abc".parse().expect("ok"));
        assert_eq!(bearer(&h).expect("ok").expect("ok"), "abc");
        h.insert("authorization", "bearer  abc ".parse().expect("ok"));
        assert_eq!(bearer(&h).expect("ok").expect("ok"), "abc");
        for bad in ["Basic abc", "Bearer", "Bearer  ", "abc"] {
            h.insert("authorization", bad.parse().expect("ok"));
            assert_eq!(
                bearer(&h).expect("ok").expect_err("should fail").code(),
                tonic::Code::Unauthenticated,
                "{bad}"
            );
        }
    }

    #[test]
    fn scoped_rules_read_namespace_and_name() {
        use prost::Message as _;
        let rule =
            MethodRule::new("get", "", "pods").scoped::<badge_proto::identity::GetPodRequest>();
        let msg = badge_proto::identity::GetPodRequest {
            namespace: "dev".into(),
            name: "web".into(),
        }
        .encode_to_vec();
        let target = (rule.scope.expect("ok"))(&msg).expect("ok");
        assert_eq!(rule.attributes(&target), vec![attrs("dev", "web", "")]);
        let watch =
            MethodRule::new("watch", "", "*").scoped::<badge_proto::identity::WatchRequest>();
        let msg = badge_proto::identity::WatchRequest {
            kinds: vec![4, 3, 4],
            namespace: "dev".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let target = (watch.scope.expect("ok"))(&msg).expect("ok");
        let resources: Vec<String> = watch
            .attributes(&target)
            .iter()
            .map(|a| match a {
                Attributes::Resource {
                    resource,
                    verb,
                    namespace,
                    ..
                } => {
                    format!("{verb} {resource} in {namespace}")
                }
                Attributes::NonResource { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(resources, ["watch pods in dev", "watch secrets in dev"]);
    }
}
