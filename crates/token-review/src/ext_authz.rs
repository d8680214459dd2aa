//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external authorization
//! (ext_authz) answered with Kubernetes semantics — who is asking by Badge's token
//! review or the mesh peer certificate, what they may do by Badge's RBAC — from the
//! in-memory index, so a deleted pod or a revoked token is refused on the next
//! request.
//!
//! # The caller: Envoy
//!
//! Envoy connects like every Badge caller (client certificate from Badge's CA, or a
//! bearer token) and needs RBAC `create` on `checks` in Badge's API group
//! `badge.dev` (bootstrap ClusterRole `system:badge:ext-authz`, bound to nobody:
//! bind it to your gateways). Security: that grant is trust — the CheckRequest's
//! `source.principal` is Envoy's statement of who its peer is, exactly as
//! Kubernetes trusts an authenticating front proxy's headers. A caller without the
//! rule is refused with PERMISSION_DENIED (a gRPC error: it is the caller that is
//! not allowed, not a decision about the request it forwards).
//!
//! # Who is asking, in this order
//!
//! 1. `authorization: Bearer <token>` among the request headers: reviewed exactly as
//!    TokenReview reviews it (signature, issuer, audiences, expiry, bound objects,
//!    revocation). Audiences: the route's context extension `badge.dev/audiences`
//!    (comma-separated), else the API audiences. A token that fails is a 401 — never
//!    a fall-back to the peer or to anonymous (Kubernetes: a presented credential
//!    that fails is an error, not "no credential").
//! 2. The mesh peer, `source.principal` (Envoy fills it from the peer certificate's
//!    URI SAN): `spiffe://<mesh.trust_domain>/ns/<ns>/sa/<sa>` is the service account
//!    `system:serviceaccount:<ns>:<sa>` with Kubernetes' service-account groups, if
//!    that account exists in the index (absent or deleted → 401). With Envoy's
//!    `include_peer_certificate: true` the certificate comes too
//!    (`source.certificate`): it must name the principal, and when it carries
//!    Badge's pod binding (every certificate Badge's CA issues to a pod does) that
//!    pod — name and uid — must be alive (deleted or re-created → 401), so a deleted
//!    pod's certificate is refused on the next request, not when it expires.
//!    A principal Badge does not vouch for — another trust domain, a SPIFFE ID that
//!    is not a service account's, a DNS name or subject — is treated as **no
//!    credential** (anonymous), as Kubernetes treats a request no authenticator
//!    recognizes: it can then do only what `system:unauthenticated` may, never more.
//! 3. Otherwise `system:anonymous` in `system:unauthenticated`.
//!
//! # What is asked
//!
//! Kubernetes' non-resource attributes: verb = the lower-cased HTTP method, path =
//! `:path` without query and fragment, percent-decoded as Kubernetes' `URL.Path`.
//! Security: a path with dot segments, an encoded `/` or `\`, or an invalid escape
//! is refused (400): the upstream would resolve it to a path other than the one
//! authorized (configure Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action: REJECT_REQUEST`, see
//! `examples/envoy-ext-authz.yaml`). With context extension `badge.dev/resource` the
//! request is a resource request instead (`badge.dev/verb` — default: Kubernetes'
//! mapping of the method —, `badge.dev/group`, `badge.dev/namespace`,
//! `badge.dev/name`, `badge.dev/subresource`).
//!
//! # The answer
//!
//! Always a CheckResponse for a decision, never a gRPC error (Envoy treats an error
//! as a failure, which `failure_mode_allow` turns into an allow):
//! - allowed: OK, `x-badge-user`, `x-badge-uid` (when there is one) and
//!   `x-badge-groups` (comma-separated) set with OVERWRITE_IF_EXISTS_OR_ADD, and
//!   every other `x-badge-*` header the client sent removed (a client must not be
//!   able to forge who it is to the upstream); with the route's
//!   `badge.dev/remove-authorization: "true"` the `authorization` header too;
//! - not authenticated: UNAUTHENTICATED (16), HTTP 401, `www-authenticate: Bearer`,
//!   the review's reason as body;
//! - not allowed: PERMISSION_DENIED (7), HTTP 403, Kubernetes' forbidden text;
//! - malformed CheckRequest (no method or path, bad path, bad context extension):
//!   INVALID_ARGUMENT (3), HTTP 400 naming the field.
//!
//! gRPC errors are for Badge failures only (UNAVAILABLE while the index loads),
//! counted as `decision = error`.
//!
//! # Repeat requests of a mesh peer
//!
//! An allowed mesh peer's answer is kept, encoded, with the index generations of
//! what it read (the service account, the pod when a certificate binds one, the
//! RBAC objects), and sent again for the same request while they are unchanged
//! ([`answers`]); the request is then read from its bytes without being decoded
//! ([`wire::Lean`]). A deletion or an RBAC change applied to the index drops it on
//! the next Check: revocation is as immediate as without the cache.
//!
//! # Audit and metrics
//!
//! One audit event (`ext_authz.denied`) per denied check; allowed checks are
//! aggregated: every `mesh.audit_allowed_every`-th one is an `ext_authz.allowed`
//! event carrying the count since the previous (0: none). Never a token, a header
//! value or a query string. Metrics: `badge.ext_authz.checks` {decision, reason} and
//! `badge.ext_authz.duration` (seconds).

/// Envoy's ext_authz messages and server, generated by `build.rs` from
/// [`FILE_DESCRIPTOR_SET`]; laid out as envoy-types' `pb` module (same paths).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/envoy.rs"));
}

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::ext_authz::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use crate::ext_authz::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, authorization_server::Authorization,
    check_response::HttpResponse,
};
use crate::ext_authz::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpCode};
use crate::ext_authz::pb::google::rpc::Status as RpcStatus;
use badge_access::{Guard, Reviewer, Via};
use badge_core::rbac::{Attributes, UserInfo};
use badge_core::review::{
    ALL_SERVICE_ACCOUNTS_GROUP, AUTHENTICATED_GROUP, SERVICE_ACCOUNTS_GROUP_PREFIX,
};
use badge_core::spiffe::{SpiffeId, TrustDomain};
use badge_core::{Error, Kind};
use badge_records::Entry as IndexEntry;
use badge_runtime::{Caller, MethodRule, MethodTable, forbidden, status};
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};
use wire::{AttributeContext, CheckAnswer, Entry, RawCheckRequest, lookup};

pub mod answers;
pub mod wire;

pub use crate::ext_authz::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// Badge's API group (its own resources: signingkeys, trustbundles, …).
pub const CHECKS_GROUP: &str = "badge.dev";
/// What a gateway does when it asks: `create` a check.
pub const CHECKS_RESOURCE: &str = "checks";
/// The method, as Envoy calls it.
pub const CHECK_METHOD: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Envoy's CheckRequest carries every request header (Envoy's default limit is
/// 60 KiB of headers) and, with `with_request_body`, up to `max_request_bytes` of
/// body: 1 MiB covers both with room.
pub const CHECK_MAX_REQUEST: usize = 1024 * 1024;

/// Envoy's `envoy/service/auth/v3/external_auth.proto` and its imports, as a
/// FileDescriptorSet taken from the envoy-types crate (checked by
/// `tests/tests/e2e/ext_authz.rs`): served by reflection, so grpcurl calls Check
/// without .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("../envoy-ext-authz.bin");

/// `create checks` in `badge.dev`: the gateway must be allowed to ask.
pub const METHODS: MethodTable = &[(
    CHECK_METHOD,
    MethodRule::new("create", CHECKS_GROUP, CHECKS_RESOURCE).max_request(CHECK_MAX_REQUEST),
)];

/// Context extensions (set per route or virtual host in Envoy).
pub const EXT_AUDIENCES: &str = "badge.dev/audiences";
pub const EXT_RESOURCE: &str = "badge.dev/resource";
pub const EXT_VERB: &str = "badge.dev/verb";
pub const EXT_GROUP: &str = "badge.dev/group";
pub const EXT_NAMESPACE: &str = "badge.dev/namespace";
pub const EXT_NAME: &str = "badge.dev/name";
pub const EXT_SUBRESOURCE: &str = "badge.dev/subresource";
/// `"true"`: an allowed request's `authorization` header is removed before it
/// reaches the upstream (the token was for Badge's check, not the application).
pub const EXT_REMOVE_AUTHORIZATION: &str = "badge.dev/remove-authorization";

/// The identity headers handed to the upstream.
pub const HEADER_USER: &str = "x-badge-user";
pub const HEADER_UID: &str = "x-badge-uid";
pub const HEADER_GROUPS: &str = "x-badge-groups";
/// Every header with this prefix is Badge's to set: client copies are removed.
pub const HEADER_PREFIX: &str = "x-badge-";

pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

/// gRPC codes in `CheckResponse.status` (google.rpc.Code).
const CODE_OK: i32 = 0;
const CODE_INVALID_ARGUMENT: i32 = 3;
const CODE_PERMISSION_DENIED: i32 = 7;
const CODE_UNAUTHENTICATED: i32 = 16;

/// How the requester was identified (metrics and audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    Peer,
    Anonymous,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Bearer => "bearer",
            Credential::Peer => "peer",
            Credential::Anonymous => "anonymous",
        }
    }
}

/// The answer cache's key of a request (see `ExtAuthz::answer_key`), from either
/// reading of it (the full decode or [`wire::Lean`]), so both give the same key.
fn key_of<'a>(
    principal: &'a str,
    certificate: &'a str,
    method: &'a str,
    path: &'a str,
    authorization: Option<&str>,
    badge_header: bool,
    extensions: Vec<(&'a [u8], &'a [u8])>,
) -> Option<answers::Key<'a>> {
    if principal.is_empty() {
        return None;
    }
    // A bearer token is the requester whenever there is one (module docs).
    if authorization.and_then(bearer_token).is_some() {
        return None;
    }
    // Security: a client's x-badge-* headers must be removed, which a kept answer
    // (built for a request without them) would not do.
    if badge_header {
        return None;
    }
    Some(answers::Key {
        principal,
        certificate,
        method,
        // The query and fragment are not part of what RBAC decides on
        // (`request_path`).
        path: path.split(['?', '#']).next().unwrap_or_default(),
        extensions,
    })
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub credential: Credential,
}

impl Requester {
    pub fn anonymous() -> Self {
        Requester {
            user: ANONYMOUS_USER.into(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED_GROUP.into()],
            credential: Credential::Anonymous,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Requester),
    /// 401: the credential failed (text for the body).
    Unauthenticated {
        credential: Credential,
        reason: String,
    },
    /// 403: Kubernetes' forbidden text.
    Forbidden {
        requester: Requester,
        message: String,
    },
    /// 400: the CheckRequest (or the route's context extensions) cannot be read.
    Invalid(String),
}

impl Verdict {
    fn decision(&self) -> &'static str {
        match self {
            Verdict::Allowed(_) => "allowed",
            Verdict::Unauthenticated { .. } => "unauthenticated",
            Verdict::Forbidden { .. } => "forbidden",
            Verdict::Invalid(_) => "invalid",
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading the CheckRequest (pure)
// ---------------------------------------------------------------------------------

/// The request's HTTP attributes Badge reads.
#[derive(Debug, Default)]
struct HttpView<'a> {
    headers: &'a [Entry],
    method: &'a str,
    path: &'a str,
}

fn http_view(ctx: &AttributeContext) -> HttpView<'_> {
    let Some(http) = ctx.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return HttpView::default();
    };
    let header = |k: &str| lookup(&http.headers, k);
    // Envoy sends both the pseudo-headers and the dedicated fields; the fields win
    // (they are what Envoy itself parsed), the pseudo-headers cover a client that
    // only fills headers.
    let method = if http.method.is_empty() {
        header(":method").unwrap_or_default()
    } else {
        &http.method
    };
    let path = if http.path.is_empty() {
        header(":path").unwrap_or_default()
    } else {
        &http.path
    };
    HttpView {
        headers: &http.headers,
        method,
        path,
    }
}

/// Envoy with `encode_raw_headers: true` sends the request headers in
/// `header_map` (values as bytes) instead of `headers`: folded into `headers`
/// (lower-case keys, repeated headers joined with `,` as Envoy joins them), so the
/// credential is read and forged `x-badge-*` headers are removed either way.
pub fn merge_raw_headers(ctx: &mut AttributeContext) {
    let Some(http) = ctx.request.as_mut().and_then(|r| r.http.as_mut()) else {
        return;
    };
    let Some(map) = http.header_map.take() else {
        return;
    };
    for h in map.headers {
        let value = if h.value.is_empty() {
            String::from_utf8_lossy(&h.raw_value).into_owned()
        } else {
            h.value
        };
        let key = h.key.to_ascii_lowercase();
        match http
            .headers
            .iter_mut()
            .rev()
            .find(|e| e.key == key.as_bytes())
        {
            Some(e) => {
                let joined = format!("{},{value}", e.value_str());
                e.value = Bytes::from(joined);
            }
            None => http.headers.push(Entry::new(key, value)),
        }
    }
}

/// The bearer token of an `authorization` header, as Kubernetes' bearer-token
/// authenticator reads it: scheme `bearer` in any case, then the token; anything
/// else (another scheme, an empty token) is no bearer credential.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let mut parts = authorization.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `badge.dev/audiences`: comma-separated, blanks ignored; absent → the API
/// audiences (empty list).
pub fn audiences(ext: &[Entry]) -> Vec<String> {
    lookup(ext, EXT_AUDIENCES)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX`-decoding of Envoy's URL-encoded `source.certificate`; `None` on an invalid
/// escape or non-UTF-8 (a PEM is ASCII).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = hex(*b.get(i + 1)?)?;
            let l = hex(*b.get(i + 2)?)?;
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path RBAC matches: `:path` without query or fragment, percent-decoded (as
/// Kubernetes' `URL.Path`). `Err` names what is wrong with it.
///
/// Security: refused, because the upstream would act on another path than the one
/// authorized (a rule for `/public/*` must not admit `/public/../admin`): dot
/// segments, encoded `/` or `\` (`%2F`, `%5C`: one path for RBAC, another for the
/// upstream's router), invalid escapes, control characters and non-UTF-8.
pub fn request_path(raw: &str) -> Result<String, String> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(format!(
            "path {:?} must start with \"/\"",
            quote_short(path)
        ));
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(format!(
                    "path {:?} has an invalid percent-escape",
                    quote_short(path)
                ));
            };
            let d = h * 16 + l;
            if d == b'/' || d == b'\\' {
                return Err(format!(
                    "path {:?} has an encoded \"/\" or \"\\\" (set Envoy's path_with_escaped_slashes_action)",
                    quote_short(path)
                ));
            }
            out.push(d);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out)
        .map_err(|_| format!("path {:?} is not UTF-8 once decoded", quote_short(path)))?;
    if decoded.chars().any(char::is_control) {
        return Err(format!(
            "path {:?} has control characters",
            quote_short(path)
        ));
    }
    if decoded.split('/').any(|s| s == "." || s == "..") {
        return Err(format!(
            "path {:?} has dot segments (set Envoy's normalize_path)",
            quote_short(path)
        ));
    }
    Ok(decoded)
}

/// Long values are cut in messages (a path can be kilobytes).
fn quote_short(v: &str) -> &str {
    match v.char_indices().nth(256) {
        Some((i, _)) => &v[..i],
        None => v,
    }
}

/// Kubernetes' verb for a resource request from its HTTP method
/// (`apiserver/pkg/endpoints/request/requestinfo.go`): a collection (no name) is
/// `list` / `deletecollection`.
fn resource_verb(method: &str, named: bool) -> Option<&'static str> {
    Some(match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" if named => "get",
        "GET" | "HEAD" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        "DELETE" => "deletecollection",
        _ => return None,
    })
}

/// What the request does, in RBAC terms. `Err`: a 400 naming the field.
pub fn attributes(ctx: &AttributeContext) -> Result<Attributes, String> {
    let http = http_view(ctx);
    let ext = &ctx.context_extensions;
    if http.method.is_empty() {
        return Err("attributes.request.http.method: the HTTP method is required".into());
    }
    if let Some(resource) = lookup(ext, EXT_RESOURCE) {
        let get = |k: &str| lookup(ext, k).unwrap_or_default().to_owned();
        if resource.is_empty() || resource.contains('/') {
            return Err(format!(
                "context_extensions[{EXT_RESOURCE}]: invalid value {:?}: a resource name (put a subresource in {EXT_SUBRESOURCE})",
                quote_short(resource)
            ));
        }
        let name = get(EXT_NAME);
        let verb = match lookup(ext, EXT_VERB) {
            Some(v) if !v.is_empty() => v.to_owned(),
            Some(_) => {
                return Err(format!(
                    "context_extensions[{EXT_VERB}]: must not be empty"
                ));
            }
            None => resource_verb(http.method, !name.is_empty())
                .ok_or_else(|| {
                    format!(
                        "attributes.request.http.method: {:?} has no Kubernetes verb: set {EXT_VERB}",
                        quote_short(http.method)
                    )
                })?
                .to_owned(),
        };
        return Ok(Attributes::Resource {
            verb,
            namespace: get(EXT_NAMESPACE),
            api_group: get(EXT_GROUP),
            resource: resource.to_owned(),
            subresource: get(EXT_SUBRESOURCE),
            name,
        });
    }
    if http.path.is_empty() {
        return Err("attributes.request.http.path: the request path is required".into());
    }
    let path = request_path(http.path).map_err(|e| format!("attributes.request.http.path: {e}"))?;
    Ok(Attributes::NonResource {
        verb: http.method.to_ascii_lowercase(),
        path,
    })
}

/// A peer principal Badge vouches for: a service-account SPIFFE ID of `td`.
/// `None`: not Badge's to judge (another trust domain, another ID shape, not a
/// SPIFFE ID at all) — the request is then anonymous.
pub fn peer_service_account(principal: &str, td: &TrustDomain) -> Option<(String, String)> {
    let id = SpiffeId::parse(principal).ok()?;
    if id.trust_domain() != td {
        return None;
    }
    let sa = id.service_account("attributes.source.principal").ok()?;
    Some((sa.namespace.to_owned(), sa.name.to_owned()))
}

// ---------------------------------------------------------------------------------
// The answer (pure)
// ---------------------------------------------------------------------------------

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        // Explicit: the enum's default APPENDs, which would keep a forged value next
        // to ours.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn rpc_status(code: i32, message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code,
        message: message.into(),
        details: Vec::new(),
    })
}

fn denied(
    code: i32,
    http: HttpCode,
    headers: Vec<HeaderValueOption>,
    body: String,
) -> CheckResponse {
    CheckResponse {
        status: rpc_status(code, &body),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        })),
        ..Default::default()
    }
}

/// The CheckResponse for a verdict. `client_headers`: the request's headers (to
/// remove forged `x-badge-*` ones); `remove_authorization`: the route asked for the
/// `authorization` header to be removed on allow.
pub fn response(
    verdict: &Verdict,
    client_headers: Option<&[Entry]>,
    remove_authorization: bool,
) -> CheckResponse {
    let text = ("content-type", "text/plain; charset=utf-8");
    match verdict {
        Verdict::Allowed(r) => {
            let mut set = vec![header(HEADER_USER, &r.user)];
            if !r.uid.is_empty() {
                set.push(header(HEADER_UID, &r.uid));
            }
            set.push(header(HEADER_GROUPS, &r.groups.join(",")));
            // Envoy applies removals after the headers set, so the ones we set are
            // not listed (they are overwritten instead).
            let mut remove: Vec<String> = client_headers
                .into_iter()
                .flatten()
                .map(Entry::key_str)
                .filter(|k| {
                    k.get(..HEADER_PREFIX.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
                })
                .map(str::to_ascii_lowercase)
                .filter(|k| {
                    !set.iter()
                        .any(|s| s.header.as_ref().is_some_and(|h| &h.key == k))
                })
                .collect();
            if remove_authorization {
                remove.push("authorization".into());
            }
            remove.sort();
            remove.dedup();
            CheckResponse {
                status: rpc_status(CODE_OK, ""),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: set,
                    headers_to_remove: remove,
                    ..Default::default()
                })),
                ..Default::default()
            }
        }
        Verdict::Unauthenticated { reason, .. } => denied(
            CODE_UNAUTHENTICATED,
            HttpCode::Unauthorized,
            vec![header("www-authenticate", "Bearer"), header(text.0, text.1)],
            reason.clone(),
        ),
        Verdict::Forbidden { message, .. } => denied(
            CODE_PERMISSION_DENIED,
            HttpCode::Forbidden,
            vec![header(text.0, text.1)],
            message.clone(),
        ),
        Verdict::Invalid(message) => denied(
            CODE_INVALID_ARGUMENT,
            HttpCode::BadRequest,
            vec![header(text.0, text.1)],
            message.clone(),
        ),
    }
}

// ---------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------

/// Metric instruments.
mod metrics {
    use std::sync::OnceLock;

    use opentelemetry::metrics::{Counter, Histogram};

    pub struct Checks {
        /// `badge.ext_authz.checks` {decision, reason}.
        pub checks: Counter<u64>,
        /// `badge.ext_authz.duration` seconds {decision}.
        pub duration: Histogram<f64>,
    }

    pub fn get() -> &'static Checks {
        static M: OnceLock<Checks> = OnceLock::new();
        M.get_or_init(|| {
            let m = badge_runtime::telemetry::metrics::meter();
            Checks {
                checks: m
                    .u64_counter("badge.ext_authz.checks")
                    .with_description("Envoy ext_authz checks, by decision and reason")
                    .build(),
                duration: m
                    .f64_histogram("badge.ext_authz.duration")
                    .with_unit("s")
                    .with_description("Envoy ext_authz check latency")
                    .build(),
            }
        })
    }
}

/// `envoy.service.auth.v3.Authorization`.
pub struct ExtAuthz {
    pub reviewer: Arc<Reviewer>,
    pub guard: Arc<Guard>,
    /// The trust domain whose service-account SPIFFE IDs Badge vouches for.
    pub trust_domain: TrustDomain,
    /// Every n-th allowed check is audited (with the count since the last); 0: none.
    pub audit_allowed_every: u64,
    allowed_since_audit: AtomicU64,
    /// Allowed mesh-peer answers, by request and index generations (see
    /// [`answers`]).
    answers: answers::Answers,
}

impl ExtAuthz {
    pub fn new(
        reviewer: Arc<Reviewer>,
        guard: Arc<Guard>,
        trust_domain: TrustDomain,
        audit_allowed_every: u64,
    ) -> Self {
        ExtAuthz {
            reviewer,
            guard,
            trust_domain,
            audit_allowed_every,
            allowed_since_audit: AtomicU64::new(0),
            answers: answers::Answers::default(),
        }
    }

    /// How many answers are kept (tests).
    pub fn kept_answers(&self) -> usize {
        self.answers.len()
    }

    /// The cache's key of a request that may be answered from it: a mesh peer's
    /// (a principal, no bearer token) whose allowed answer would remove no client
    /// header. `None`: the request takes the full path every time.
    fn answer_key<'a>(&self, ctx: &'a AttributeContext) -> Option<answers::Key<'a>> {
        let source = ctx.source.as_ref()?;
        let http = http_view(ctx);
        key_of(
            &source.principal,
            &source.certificate,
            http.method,
            http.path,
            lookup(http.headers, "authorization"),
            http.headers
                .iter()
                .any(|e| wire::is_badge_header(e.key_str())),
            ctx.context_extensions
                .iter()
                .map(|e| (&e.key[..], &e.value[..]))
                .collect(),
        )
    }

    /// The index generations a peer's answer depends on: its service account (and
    /// pod, when a certificate binds one) and the RBAC objects. Read before an
    /// answer is computed, so a change racing with it can only make it stale.
    fn answer_tag(&self, key: &answers::Key<'_>) -> answers::Tag {
        const ACCOUNT: [Kind; 1] = [Kind::ServiceAccount];
        const ACCOUNT_AND_POD: [Kind; 2] = [Kind::ServiceAccount, Kind::Pod];
        // Pods churn in a cluster: only an answer that read one depends on them.
        let identity: &[Kind] = if key.certificate.is_empty() {
            &ACCOUNT
        } else {
            &ACCOUNT_AND_POD
        };
        (
            self.reviewer.index.generation(identity),
            self.guard
                .policy()
                .index()
                .generation(&badge_access::RBAC_KINDS),
        )
    }

    /// The object's uid and deletion timestamp, from the index. An object created a
    /// moment ago through another process may not have reached the index yet: a miss
    /// is confirmed in the store (misses are denials, rare; skipped while the store is
    /// unreachable, when the index is the answer — availability, as for reviews).
    async fn live(&self, kind: Kind, ns: &str, name: &str) -> Option<(String, Option<SystemTime>)> {
        let state = |e: &IndexEntry| (e.uid(), e.deletion_timestamp());
        let found = self.reviewer.index.map(kind, ns, name, state);
        if found.is_some() || !self.reviewer.store_ok.load(Ordering::Relaxed) {
            return found;
        }
        match self.reviewer.index.fresh(kind, ns, name).await {
            Ok(r) => r.map(|r| state(&IndexEntry::new(r))),
            Err(e) => {
                tracing::warn!(kind = ?kind, namespace = %ns, name = %name, error = %e, "ext_authz: confirming a missing object in the store failed");
                None
            }
        }
    }

    /// Who is asking (see the module documentation for the order). `Err` only for a
    /// Badge failure; a failed credential is `Ok(Err(reason))`.
    async fn requester(
        &self,
        ctx: &AttributeContext,
        http: &HttpView<'_>,
        envoy: &str,
    ) -> Result<Result<(Requester, bool), (Credential, String)>, Error> {
        if let Some(token) = lookup(http.headers, "authorization").and_then(bearer_token) {
            let aud = audiences(&ctx.context_extensions);
            let report = self
                .reviewer
                .review(token, &aud, Via::ExtAuthz, envoy)
                .await?;
            return Ok(match report.outcome {
                Ok(a) => Ok((
                    Requester {
                        user: a.user.username,
                        uid: a.user.uid,
                        groups: a.user.groups,
                        credential: Credential::Bearer,
                    },
                    false,
                )),
                // The review's own text (Kubernetes' TokenReview `status.error`).
                Err(e) => Err((Credential::Bearer, e.to_string())),
            });
        }
        let principal = ctx
            .source
            .as_ref()
            .map(|p| p.principal.as_str())
            .unwrap_or_default();
        if let Some((ns, name)) = peer_service_account(principal, &self.trust_domain) {
            if !self.reviewer.is_ready() {
                return Err(Error::Unavailable(
                    "token review is starting: the index is still loading from the store".into(),
                ));
            }
            let refuse =
                |why: String| Ok(Err((Credential::Peer, format!("peer {principal}: {why}"))));
            let now: SystemTime = self.reviewer.clock.now();
            let leeway = self.reviewer.settings.deletion_leeway;
            let alive = |deleted: Option<SystemTime>| deleted.is_none_or(|t| now < t + leeway);
            // Security: the certificate may outlive its service account; the account
            // must exist now (and not be deleted past the deletion leeway), as a
            // bound token's does.
            // An account or pod marked for deletion is still alive for the leeway:
            // its answer then depends on the time, so it is not kept.
            let mut keep = true;
            let uid = match self.live(Kind::ServiceAccount, &ns, &name).await {
                Some((uid, deleted)) if alive(deleted) => {
                    keep &= deleted.is_none();
                    uid
                }
                Some(_) => return refuse(format!("service account {ns}/{name} has been deleted")),
                None => return refuse(format!("service account {ns}/{name} does not exist")),
            };
            // With `include_peer_certificate`, Envoy forwards the certificate itself:
            // Badge's CA binds every pod certificate to its pod (name and uid), and
            // that pod must still be alive — a deleted pod's certificate is refused on
            // the next request, not when it expires. A certificate without the
            // binding (another CA of the trust domain) is judged by its account only.
            let certificate = ctx
                .source
                .as_ref()
                .map(|p| p.certificate.as_str())
                .unwrap_or_default();
            if !certificate.is_empty() {
                let peer = percent_decode(certificate)
                    .ok_or_else(|| "not URL-encoded".to_string())
                    .and_then(|pem| badge_ca::peer::read_pem(&pem));
                let peer = match peer {
                    Ok(p) => p,
                    Err(e) => return refuse(format!("attributes.source.certificate: {e}")),
                };
                // Security: the principal is what RBAC sees and the binding what is
                // checked: both must come from the same certificate.
                if !peer.uris.iter().any(|u| u == principal) {
                    return refuse(
                        "attributes.source.certificate does not name the principal".into(),
                    );
                }
                if let Some(pod) = &peer.pod {
                    match self.live(Kind::Pod, &ns, &pod.name).await {
                        Some((live_uid, deleted)) if live_uid == pod.uid && alive(deleted) => {
                            keep &= deleted.is_none();
                        }
                        Some((live_uid, _)) if live_uid == pod.uid => {
                            return refuse(format!("pod {ns}/{} has been deleted", pod.name));
                        }
                        // The pattern of Kubernetes' texts for a pod-bound token whose
                        // pod was replaced by one of the same name.
                        Some((live_uid, _)) => {
                            return refuse(format!(
                                "pod UID ({live_uid}) does not match the certificate's pod binding ({})",
                                pod.uid
                            ));
                        }
                        None => {
                            return refuse(format!(
                                "pod {ns}/{} (uid {}) does not exist",
                                pod.name, pod.uid
                            ));
                        }
                    }
                }
            }
            return Ok(Ok((
                Requester {
                    user: format!("system:serviceaccount:{ns}:{name}"),
                    uid,
                    groups: vec![
                        ALL_SERVICE_ACCOUNTS_GROUP.into(),
                        format!("{SERVICE_ACCOUNTS_GROUP_PREFIX}{ns}"),
                        AUTHENTICATED_GROUP.into(),
                    ],
                    credential: Credential::Peer,
                },
                keep,
            )));
        }
        Ok(Ok((Requester::anonymous(), false)))
    }

    /// The verdict for one CheckRequest. `Err`: a Badge failure.
    pub async fn verdict(&self, ctx: &AttributeContext, envoy: &str) -> Result<Verdict, Error> {
        Ok(self.verdict_for(ctx, &attributes(ctx), envoy).await?.0)
    }

    /// [`ExtAuthz::verdict`] with the request's attributes already read, and
    /// whether an allowed answer may be kept (a peer whose account and pod are not
    /// marked for deletion).
    async fn verdict_for(
        &self,
        ctx: &AttributeContext,
        attrs: &Result<Attributes, String>,
        envoy: &str,
    ) -> Result<(Verdict, bool), Error> {
        let attrs = match attrs {
            Ok(a) => a,
            Err(e) => return Ok((Verdict::Invalid(e.clone()), false)),
        };
        let http = http_view(ctx);
        let (requester, keep) = match self.requester(ctx, &http, envoy).await? {
            Ok(r) => r,
            Err((credential, reason)) => {
                return Ok((Verdict::Unauthenticated { credential, reason }, false));
            }
        };
        if !self.guard.policy().is_loaded() {
            return Err(Error::Unavailable(
                "authorization policy is still loading from the store: retry".into(),
            ));
        }
        // Moved into the RBAC user and back: every Check takes this path, and the
        // copies cost more than the decision.
        let Requester {
            user,
            uid,
            groups,
            credential,
        } = requester;
        let user = UserInfo { name: user, groups };
        let allowed = self.guard.allows(&user, attrs);
        let UserInfo { name, groups } = user;
        let requester = Requester {
            user: name,
            uid,
            groups,
            credential,
        };
        // The allow path needs no reason (see `Guard::allows`); a denial asks again
        // for Kubernetes' text.
        Ok(if allowed {
            (Verdict::Allowed(requester), keep)
        } else {
            let user = UserInfo {
                name: requester.user.clone(),
                groups: requester.groups.clone(),
            };
            let d = self.guard.decide(&user, attrs);
            let caller = Caller {
                user: requester.user.clone(),
                ..Default::default()
            };
            let message = forbidden(&caller, attrs, &d.reason).message().to_owned();
            (Verdict::Forbidden { requester, message }, false)
        })
    }

    fn audit(&self, verdict: &Verdict, attrs: Option<&Attributes>, envoy: &str) {
        if let Verdict::Allowed(r) = verdict {
            return self.audit_allowed(r, attrs, envoy);
        }
        let (verb, target) = audit_target(attrs);
        match verdict {
            Verdict::Allowed(_) => {}
            Verdict::Unauthenticated { credential, reason } => {
                tracing::info!(target: "audit", event = "ext_authz.denied", requester = envoy, code = 401, credential = credential.as_str(), verb, target = %target, reason = %reason, "ext_authz: denied");
            }
            Verdict::Forbidden { requester, message } => {
                tracing::info!(target: "audit", event = "ext_authz.denied", requester = envoy, code = 403, user = %requester.user, credential = requester.credential.as_str(), verb, target = %target, reason = %message, "ext_authz: denied");
            }
            Verdict::Invalid(message) => {
                tracing::info!(target: "audit", event = "ext_authz.denied", requester = envoy, code = 400, reason = %message, "ext_authz: denied");
            }
        }
    }

    /// Allowed checks are aggregated: every `audit_allowed_every`-th is an event.
    fn audit_allowed(&self, r: &Requester, attrs: Option<&Attributes>, envoy: &str) {
        let every = self.audit_allowed_every;
        if every == 0 {
            return;
        }
        let n = self.allowed_since_audit.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= every {
            self.allowed_since_audit.fetch_sub(n, Ordering::Relaxed);
            // Only a sampled check pays for its target's text.
            let (verb, target) = audit_target(attrs);
            tracing::info!(target: "audit", event = "ext_authz.allowed", requester = envoy, allowed_checks = n, user = %r.user, credential = r.credential.as_str(), verb, target = %target, "ext_authz: allowed checks (sampled)");
        }
    }
}

/// The request's method and path as audited (no query: it may carry secrets),
/// never header values or tokens.
fn audit_target(attrs: Option<&Attributes>) -> (&str, String) {
    match attrs {
        Some(Attributes::NonResource { verb, path }) => (verb.as_str(), path.clone()),
        Some(Attributes::Resource {
            verb,
            namespace,
            api_group,
            resource,
            subresource,
            name,
        }) => (
            verb.as_str(),
            format!("{api_group}/{resource}/{subresource} {namespace}/{name}"),
        ),
        None => ("", String::new()),
    }
}

fn reason(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Allowed(r) | Verdict::Forbidden { requester: r, .. } => r.credential.as_str(),
        Verdict::Unauthenticated { credential, .. } => credential.as_str(),
        Verdict::Invalid(_) => "request",
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<RawCheckRequest>) -> Result<Response<CheckAnswer>, Status> {
        let started = Instant::now();
        let (_, extensions, raw) = req.into_parts();
        let envoy = extensions.get::<Caller>().map_or("", |c| c.user.as_str());
        let m = metrics::get();
        // A mesh peer's repeat request: the answer kept for it, if nothing it depends
        // on has changed in the index since (see `answers`). Looked up from the
        // request's bytes as they are (`wire::Lean`); anything else, and every miss,
        // takes the full path below.
        let kept = raw
            .lean()
            .and_then(|l| {
                key_of(
                    l.principal,
                    l.certificate,
                    l.method,
                    l.path,
                    l.authorization,
                    l.badge_header,
                    l.extensions,
                )
            })
            // As on the full path: nothing is answered while the index is loading.
            .filter(|_| self.reviewer.is_ready())
            .and_then(|k| self.answers.get(&k, self.answer_tag(&k)));
        if let Some(kept) = kept {
            self.audit_allowed(&kept.requester, Some(&kept.attrs), envoy);
            let decision = opentelemetry::KeyValue::new("decision", "allowed");
            m.checks.add(
                1,
                &[
                    decision.clone(),
                    opentelemetry::KeyValue::new("reason", kept.requester.credential.as_str()),
                ],
            );
            m.duration
                .record(started.elapsed().as_secs_f64(), &[decision]);
            return Ok(Response::new(kept.encoded.clone()));
        }
        // As tonic's decoder answers a request it cannot decode.
        let message = raw
            .decode_full()
            .map_err(|e| Status::internal(e.to_string()))?;
        // Text Envoy could not have sent is refused before anything reads it.
        let invalid = message.validate().err();
        let mut ctx = message.attributes.unwrap_or_default();
        merge_raw_headers(&mut ctx);
        // The cache's key, and the index generations read before the answer is
        // computed (see `answers`).
        let key = if invalid.is_none() {
            self.answer_key(&ctx)
        } else {
            None
        };
        let tag = key.as_ref().map(|k| self.answer_tag(k));
        let attrs = match invalid {
            Some(e) => Err(e),
            None => attributes(&ctx),
        };
        let (verdict, keep) = match self.verdict_for(&ctx, &attrs, envoy).await {
            Ok(v) => v,
            Err(e) => {
                let attrs = [
                    opentelemetry::KeyValue::new("decision", "error"),
                    opentelemetry::KeyValue::new("reason", "badge"),
                ];
                m.checks.add(1, &attrs);
                m.duration
                    .record(started.elapsed().as_secs_f64(), &attrs[..1]);
                tracing::warn!(requester = envoy, error = %e, "ext_authz: check failed");
                return Err(status(e));
            }
        };
        self.audit(&verdict, attrs.as_ref().ok(), envoy);
        let decision = opentelemetry::KeyValue::new("decision", verdict.decision());
        m.checks.add(
            1,
            &[
                decision.clone(),
                opentelemetry::KeyValue::new("reason", reason(&verdict)),
            ],
        );
        m.duration
            .record(started.elapsed().as_secs_f64(), &[decision]);
        let headers = http_view(&ctx).headers;
        let remove_authorization =
            lookup(&ctx.context_extensions, EXT_REMOVE_AUTHORIZATION).is_some_and(|v| v == "true");
        let encoded = CheckAnswer::encode(&response(&verdict, Some(headers), remove_authorization));
        if keep
            && let (Some(k), Some(tag), Verdict::Allowed(r), Ok(a)) = (&key, tag, &verdict, &attrs)
        {
            self.answers.insert(k, tag, r, a, &encoded);
        }
        Ok(Response::new(encoded))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use wire::{HttpRequest, Request as AttrRequest};

    fn entries(kv: &[(&str, &str)]) -> Vec<Entry> {
        kv.iter().map(|(k, v)| Entry::new(*k, *v)).collect()
    }

    fn ctx(method: &str, path: &str, ext: &[(&str, &str)]) -> AttributeContext {
        AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    headers: entries(&[(":method", method), (":path", path)]),
                    ..Default::default()
                }),
            }),
            context_extensions: entries(ext),
            ..Default::default()
        }
    }

    #[test]
    fn non_resource_attributes_from_method_and_path() {
        assert_eq!(
            attributes(&ctx("POST", "/api/orders?token=secret#x", &[])).unwrap(),
            Attributes::NonResource {
                verb: "post".into(),
                path: "/api/orders".into()
            }
        );
        // Percent-decoded as Kubernetes' URL.Path.
        assert_eq!(
            attributes(&ctx("GET", "/a%20b/%7Euser", &[])).unwrap(),
            Attributes::NonResource {
                verb: "get".into(),
                path: "/a b/~user".into()
            }
        );
    }

    #[test]
    fn paths_the_upstream_would_read_differently_are_refused() {
        for bad in [
            "/public/../admin",
            "/public/./x",
            "/public/%2e%2e/admin",
            "/public%2Fadmin",
            "/public%5cadmin",
            "/bad%zz",
            "/bad%",
            "/nul%00",
            "relative",
            "/%ff",
        ] {
            let e = attributes(&ctx("GET", bad, &[])).unwrap_err();
            assert!(
                e.starts_with("attributes.request.http.path: path "),
                "{bad}: {e}"
            );
        }
        let e = attributes(&ctx("", "/x", &[])).unwrap_err();
        assert!(e.contains("attributes.request.http.method"), "{e}");
        let e = attributes(&ctx("GET", "", &[])).unwrap_err();
        assert!(e.contains("attributes.request.http.path"), "{e}");
    }

    #[test]
    fn resource_attributes_from_context_extensions() {
        let a = attributes(&ctx(
            "DELETE",
            "/whatever",
            &[
                (EXT_RESOURCE, "orders"),
                (EXT_GROUP, "shop.example.com"),
                (EXT_NAMESPACE, "shop"),
            ],
        ))
        .unwrap();
        assert_eq!(
            a,
            Attributes::Resource {
                verb: "deletecollection".into(),
                namespace: "shop".into(),
                api_group: "shop.example.com".into(),
                resource: "orders".into(),
                subresource: String::new(),
                name: String::new(),
            }
        );
        let a = attributes(&ctx(
            "GET",
            "/x",
            &[(EXT_RESOURCE, "orders"), (EXT_NAME, "o-1")],
        ))
        .unwrap();
        assert!(matches!(a, Attributes::Resource { ref verb, .. } if verb == "get"));
        let a = attributes(&ctx(
            "POST",
            "/x",
            &[(EXT_RESOURCE, "orders"), (EXT_VERB, "approve")],
        ))
        .unwrap();
        assert!(matches!(a, Attributes::Resource { ref verb, .. } if verb == "approve"));
        let e = attributes(&ctx("TRACE", "/x", &[(EXT_RESOURCE, "orders")])).unwrap_err();
        assert!(e.contains("badge.dev/verb"), "{e}");
        let e = attributes(&ctx("GET", "/x", &[(EXT_RESOURCE, "a/b")])).unwrap_err();
        assert!(e.contains("context_extensions[badge.dev/resource]"), "{e}");
    }

    #[test]
    fn bearer_tokens_as_kubernetes_reads_them() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  BEARER abc  "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn audiences_from_the_route() {
        let ext = entries(&[(EXT_AUDIENCES, " a, ,b ")]);
        assert_eq!(audiences(&ext), vec!["a", "b"]);
        assert!(audiences(&[]).is_empty());
    }

    #[test]
    fn peer_principals_badge_vouches_for() {
        let td = TrustDomain::parse("badge.test").unwrap();
        assert_eq!(
            peer_service_account("spiffe://badge.test/ns/apps/sa/web", &td),
            Some(("apps".into(), "web".into()))
        );
        for other in [
            "spiffe://other.test/ns/apps/sa/web",
            "spiffe://badge.test/workload/web",
            "spiffe://badge.test/ns/apps/sa/web/extra",
            "web.apps.svc",
            "CN=web",
            "",
        ] {
            assert_eq!(peer_service_account(other, &td), None, "{other}");
        }
    }

    #[test]
    fn allowed_sets_identity_headers_and_strips_forged_ones() {
        let client = entries(&[
            ("x-badge-user", "admin"),
            ("x-badge-uid", "forged"),
            ("X-Badge-Extra", "x"),
            ("x-badge-extra", "y"),
            ("authorization", "Bearer t"),
        ]);
        let r = response(
            &Verdict::Allowed(Requester::anonymous()),
            Some(&client[..]),
            false,
        );
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("{r:?}")
        };
        let set: Vec<(String, String, i32)> = ok
            .headers
            .iter()
            .map(|h| {
                let v = h.header.as_ref().unwrap();
                (v.key.clone(), v.value.clone(), h.append_action)
            })
            .collect();
        let ow = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        assert_eq!(
            set,
            vec![
                ("x-badge-user".into(), "system:anonymous".into(), ow),
                ("x-badge-groups".into(), "system:unauthenticated".into(), ow),
            ]
        );
        // Anonymous has no uid: the forged one is removed rather than kept.
        assert_eq!(ok.headers_to_remove, vec!["x-badge-extra", "x-badge-uid"]);
    }

    #[test]
    fn raw_header_maps_are_read_as_headers() {
        use wire::{HeaderMap, HeaderValue};
        let mut c = ctx("GET", "/x", &[]);
        let http = c.request.as_mut().unwrap().http.as_mut().unwrap();
        http.headers.clear();
        http.header_map = Some(HeaderMap {
            headers: vec![
                HeaderValue {
                    key: ":path".into(),
                    raw_value: Bytes::from_static(b"/x"),
                    ..Default::default()
                },
                HeaderValue {
                    key: ":method".into(),
                    raw_value: Bytes::from_static(b"GET"),
                    ..Default::default()
                },
                HeaderValue {
                    key: "X-Badge-User".into(),
                    raw_value: Bytes::from_static(b"admin"),
                    ..Default::default()
                },
                HeaderValue {
                    key: "x-badge-user".into(),
                    value: "root".into(),
                    ..Default::default()
                },
            ],
        });
        merge_raw_headers(&mut c);
        let http = c.request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(lookup(&http.headers, "x-badge-user"), Some("admin,root"));
        assert!(http.header_map.is_none());
        assert!(attributes(&c).is_ok());
        let r = response(
            &Verdict::Allowed(Requester::anonymous()),
            Some(&http.headers[..]),
            false,
        );
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("{r:?}")
        };
        // Forged x-badge-user is overwritten (set), so not in the removals.
        assert!(ok.headers.iter().any(|h| {
            h.header
                .as_ref()
                .is_some_and(|h| h.key == "x-badge-user" && h.value == "system:anonymous")
        }));
    }

    #[test]
    fn the_route_can_have_the_token_removed_on_allow() {
        let client = entries(&[("authorization", "Bearer t")]);
        let r = response(
            &Verdict::Allowed(Requester::anonymous()),
            Some(&client[..]),
            true,
        );
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("{r:?}")
        };
        assert_eq!(ok.headers_to_remove, vec!["authorization"]);
        // Denials forward nothing upstream: nothing to remove.
        let r = response(&Verdict::Invalid("x".into()), Some(&client[..]), true);
        assert!(matches!(
            r.http_response,
            Some(HttpResponse::DeniedResponse(_))
        ));
    }

    #[test]
    fn denials_carry_envoy_status_and_http_answer() {
        let r = response(
            &Verdict::Unauthenticated {
                credential: Credential::Bearer,
                reason: "service account token has expired".into(),
            },
            None,
            false,
        );
        assert_eq!(r.status.as_ref().unwrap().code, 16);
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
            panic!("{r:?}")
        };
        assert_eq!(d.status.as_ref().unwrap().code, 401);
        assert!(d.headers.iter().any(|h| {
            h.header
                .as_ref()
                .is_some_and(|h| h.key == "www-authenticate" && h.value == "Bearer")
        }));
        assert_eq!(d.body, "service account token has expired");
        let r = response(
            &Verdict::Forbidden {
                requester: Requester::anonymous(),
                message: "forbidden".into(),
            },
            None,
            false,
        );
        assert_eq!(r.status.as_ref().unwrap().code, 7);
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
            panic!("{r:?}")
        };
        assert_eq!(d.status.as_ref().unwrap().code, 403);
    }
}
