//! The one authentication/authorization layer every RPC passes through.
//!
//! Authentication: the caller is the verified client certificate (CN = user, each
//! O = a group, as Kubernetes' x509 authenticator). Authorization: every full gRPC
//! method must have an entry in the method table (verb, API group, resource,
//! subresource); a method without one is refused, so a new RPC cannot ship
//! unguarded. The decision itself is an [`Authorizer`]; until RBAC lands only
//! `system:masters` may do anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use crate::pki::MASTERS_GROUP;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

impl Caller {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a method does, in Kubernetes RBAC terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodRule {
    pub verb: &'static str,
    pub api_group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
}

impl MethodRule {
    pub const fn new(verb: &'static str, api_group: &'static str, resource: &'static str) -> Self {
        MethodRule {
            verb,
            api_group,
            resource,
            subresource: "",
        }
    }

    pub const fn sub(self, subresource: &'static str) -> Self {
        MethodRule {
            subresource,
            ..self
        }
    }
}

/// Full gRPC method path (`/badge.identity.v1.PodService/CreatePod`) → rule.
pub type MethodTable = &'static [(&'static str, MethodRule)];

/// Methods any authenticated caller may use: health checks and reflection (which
/// only describes the schema).
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Decides whether `caller` may do `rule`.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err(reason)` denies.
    fn authorize(&self, caller: &Caller, rule: &MethodRule) -> Result<(), String>;
}

/// The policy until RBAC: `system:masters` may do everything, everyone else nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct MastersOnly;

impl Authorizer for MastersOnly {
    fn authorize(&self, caller: &Caller, rule: &MethodRule) -> Result<(), String> {
        if caller.in_group(MASTERS_GROUP) {
            return Ok(());
        }
        let resource = if rule.subresource.is_empty() {
            rule.resource.to_string()
        } else {
            format!("{}/{}", rule.resource, rule.subresource)
        };
        Err(format!(
            "user {:?} cannot {} resource {:?} in API group {:?}: no policy allows it",
            caller.user, rule.verb, resource, rule.api_group
        ))
    }
}

/// What each Badge service may do on the others' APIs before RBAC exists:
/// (user, verb, API group, resource). Least privilege: only what the calls need.
const SERVICE_GRANTS: &[(&str, &str, &str, &str)] = &[
    // token-issuer's legacy-token controller fills and deletes token Secrets.
    ("system:badge:token-issuer", "get", "", "secrets"),
    ("system:badge:token-issuer", "update", "", "secrets"),
    ("system:badge:token-issuer", "delete", "", "secrets"),
    // token-review records legacy-token use (the last-used label) on Secrets.
    ("system:badge:token-review", "get", "", "secrets"),
    ("system:badge:token-review", "update", "", "secrets"),
];

/// The policy until RBAC: `system:masters` may do everything, the Badge services
/// what [`SERVICE_GRANTS`] lists, everyone else nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootstrapPolicy;

impl Authorizer for BootstrapPolicy {
    fn authorize(&self, caller: &Caller, rule: &MethodRule) -> Result<(), String> {
        let granted = caller.in_group(crate::pki::SERVICES_GROUP)
            && rule.subresource.is_empty()
            && SERVICE_GRANTS.iter().any(|(user, verb, group, resource)| {
                *user == caller.user
                    && *verb == rule.verb
                    && *group == rule.api_group
                    && *resource == rule.resource
            });
        if granted {
            return Ok(());
        }
        MastersOnly.authorize(caller, rule)
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
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Ok(Caller { user, groups })
}

struct State {
    rules: HashMap<&'static str, MethodRule>,
    authorizer: Arc<dyn Authorizer>,
    /// Parsed identities by certificate bytes: parsing X.509 on every call costs
    /// more than the rest of the layer. Keyed by the full DER (not a connection
    /// handle), so a cached identity can only ever belong to the same certificate.
    callers: std::sync::RwLock<HashMap<Vec<u8>, Caller>>,
}

/// Bound on cached identities (cleared when exceeded).
const CALLER_CACHE: usize = 4096;

impl State {
    fn check<B>(&self, req: &http::Request<B>) -> Result<Caller, Status> {
        let caller = self.authenticate(req)?;
        let path = req.uri().path();
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(caller);
        }
        let Some(rule) = self.rules.get(path) else {
            // Fail closed: a method nobody wrote a rule for is not callable.
            return Err(Status::permission_denied(format!(
                "method {path} has no authorization rule"
            )));
        };
        self.authorizer
            .authorize(&caller, rule)
            .map_err(Status::permission_denied)?;
        Ok(caller)
    }
}

impl State {
    fn authenticate<B>(&self, req: &http::Request<B>) -> Result<Caller, Status> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let Some(certs) = certs else {
            return Err(Status::unauthenticated(
                "no client certificate: present one issued by the configured CA",
            ));
        };
        let Some(leaf) = certs.first() else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        // rustls has verified the chain before the request got here.
        let der = leaf.as_ref();
        if let Ok(cache) = self.callers.read()
            && let Some(c) = cache.get(der)
        {
            return Ok(c.clone());
        }
        let caller = caller_from_cert(der).map_err(Status::unauthenticated)?;
        if let Ok(mut cache) = self.callers.write() {
            if cache.len() >= CALLER_CACHE {
                cache.clear();
            }
            cache.insert(der.to_vec(), caller.clone());
        }
        Ok(caller)
    }
}

/// Tower layer enforcing the above; put it on the server so it wraps every service.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

impl AuthLayer {
    pub fn new(tables: &[MethodTable], authorizer: Arc<dyn Authorizer>) -> Self {
        let rules = tables.iter().flat_map(|t| t.iter().copied()).collect();
        AuthLayer {
            state: Arc::new(State {
                rules,
                authorizer,
                callers: std::sync::RwLock::new(HashMap::new()),
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

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.state.check(&req) {
            Ok(caller) => {
                tracing::debug!(user = %caller.user, method = %req.uri().path(), "authorized");
                req.extensions_mut().insert(caller);
                // Take the service that was polled ready; leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                tracing::info!(method = %req.uri().path(), code = ?status.code(), reason = %status.message(), "refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The authenticated caller of a request (set by [`AuthLayer`]).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("request did not pass the auth layer"))
}
