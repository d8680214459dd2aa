//! TokenRequest rules and JWT claims, with no IO and no clock
//! (`k8s.io/kubernetes/pkg/registry/core/serviceaccount/storage/token.go`,
//! `k8s.io/kubernetes/pkg/apis/authentication/validation/validation.go`,
//! `k8s.io/kubernetes/pkg/serviceaccount/claims.go` and `legacy.go`).
//!
//! The caller looks up the service account and the bound object, generates the jti
//! (a v4 UUID), signs the claims and reads the clock; this module decides
//! everything else.
//!
//! Where Badge differs from Kubernetes on purpose:
//!
//! - Static validation also limits audiences (at most [`MAX_AUDIENCES`], each
//!   non-empty and at most [`MAX_AUDIENCE_LEN`] bytes) and requires
//!   `bound_object_ref.name`, and reports a bad bound kind as INVALID_ARGUMENT on
//!   `bound_object_ref.kind` (Kubernetes: 400 from the handler). Every violation is
//!   reported at once.
//! - The group of `bound_object_ref.api_version` is everything before the first
//!   `/`; Go falls back to the core group for an unparseable value such as
//!   `a/b/c`, Badge refuses it (group `a`).
//! - Issuer settings validation also refuses empty issuers and API audiences and a
//!   non-positive extended expiration while extension is on.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::names::quote;
use crate::oidc::parse_url;
use crate::user::service_account_username;
use crate::{Error, FieldViolation, Result};

/// Kubernetes' `--api-audiences` default: none configured means the
/// service-account issuers. The issuer puts these into tokens requested without
/// audiences and every reviewer expects them, so all services derive them by this
/// one rule: a copy that drifted would make such tokens fail review.
pub fn api_audiences(issuers: &[String], configured: &[String]) -> Vec<String> {
    if configured.is_empty() {
        issuers.to_vec()
    } else {
        configured.to_vec()
    }
}

/// Used when `expiration_seconds` is unset.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a token may be requested for (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime a token may be requested for (2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// The lifetime the ServiceAccount admission plugin puts in projected tokens; a
/// pod-bound request for exactly this many seconds gets the extended expiration.
pub const WARN_ONLY_EXPIRATION_SECONDS: i64 = 3607;
/// Default JWT lifetime of extended tokens (1 year).
pub const EXTENDED_EXPIRATION_SECONDS: i64 = 365 * 24 * 3600;
/// The `iss` of legacy (Secret-based) tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Most audiences one request may ask for.
pub const MAX_AUDIENCES: usize = 100;
/// Longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 1024;
/// The smallest `max_expiration_seconds` setting (1 hour).
pub const MIN_MAX_EXPIRATION_SECONDS: i64 = 3600;

/// How tokens are issued (Kubernetes' `--service-account-*` and `--api-audiences`
/// flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// Accepted issuers; the first one signs.
    pub issuers: Vec<String>,
    /// Audiences of tokens that ask for none; Kubernetes defaults them to all
    /// issuers (the caller does that).
    pub api_audiences: Vec<String>,
    /// Cap on requested lifetimes; `None` (or a non-positive value): no cap.
    pub max_expiration_seconds: Option<i64>,
    /// Give pod-bound 3607-second tokens for API audiences a long JWT lifetime.
    pub extend_expiration: bool,
    /// JWT lifetime of extended tokens.
    pub max_extended_expiration_seconds: i64,
}

impl IssuerSettings {
    /// Kubernetes' defaults for `issuers`: API audiences = all issuers, no cap,
    /// extension on for one year.
    pub fn with_issuers(issuers: Vec<String>) -> Self {
        IssuerSettings {
            api_audiences: issuers.clone(),
            issuers,
            max_expiration_seconds: None,
            extend_expiration: true,
            max_extended_expiration_seconds: EXTENDED_EXPIRATION_SECONDS,
        }
    }

    /// The issuer that signs new tokens (the first), if any.
    pub fn signing_issuer(&self) -> Option<&str> {
        self.issuers.first().map(String::as_str)
    }
}

/// The kinds a token can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoundKind {
    Pod,
    Secret,
    Node,
}

impl BoundKind {
    /// `Pod`, `Secret` or `Node`.
    pub fn as_str(self) -> &'static str {
        match self {
            BoundKind::Pod => "Pod",
            BoundKind::Secret => "Secret",
            BoundKind::Node => "Node",
        }
    }
}

/// `bound_object_ref` as the request has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundObjectRef {
    pub kind: String,
    pub api_version: String,
    pub name: String,
    pub uid: String,
}

/// The parts of a TokenRequest these rules look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequestSpec {
    pub audiences: Vec<String>,
    pub expiration_seconds: Option<i64>,
    pub bound_object_ref: Option<BoundObjectRef>,
}

/// Static validation of a request, every violation listed, fields named as in
/// `CreateTokenRequest`:
///
/// - `expiration_seconds`: at least 600 ("may not specify a duration less than 10
///   minutes") and at most 2^32 ("may not specify a duration larger than 2^32
///   seconds");
/// - `audiences`: at most 100; `audiences[i]`: non-empty, at most 1024 bytes;
/// - `bound_object_ref.name`: required when a ref is given;
/// - `bound_object_ref.kind`: `Pod`, `Secret` or `Node` in the core group (the part
///   of `api_version` before `/`; `""` and `v1` are core, the version is ignored),
///   otherwise "cannot bind token to object of type <group>/<version>, Kind=<kind>".
///
/// Returns the bound kind, `None` when there is no ref.
pub fn validate_request(spec: &TokenRequestSpec) -> Result<Option<BoundKind>> {
    let mut v = Vec::new();

    if let Some(exp) = spec.expiration_seconds {
        if exp < MIN_EXPIRATION_SECONDS {
            v.push(FieldViolation::new(
                "expiration_seconds",
                format!("invalid value {exp}: may not specify a duration less than 10 minutes"),
            ));
        } else if exp > MAX_EXPIRATION_SECONDS {
            v.push(FieldViolation::new(
                "expiration_seconds",
                format!("invalid value {exp}: may not specify a duration larger than 2^32 seconds"),
            ));
        }
    }

    if spec.audiences.len() > MAX_AUDIENCES {
        v.push(FieldViolation::new(
            "audiences",
            format!(
                "may not have more than {MAX_AUDIENCES} audiences, got {}",
                spec.audiences.len()
            ),
        ));
    }
    for (i, aud) in spec.audiences.iter().enumerate() {
        if aud.is_empty() {
            v.push(FieldViolation::new(
                format!("audiences[{i}]"),
                "an audience may not be empty",
            ));
        } else if aud.len() > MAX_AUDIENCE_LEN {
            v.push(FieldViolation::new(
                format!("audiences[{i}]"),
                format!(
                    "invalid value {}: may not be longer than {MAX_AUDIENCE_LEN} bytes, got {}",
                    quote(aud),
                    aud.len()
                ),
            ));
        }
    }

    let mut kind = None;
    if let Some(r) = &spec.bound_object_ref {
        if r.name.is_empty() {
            v.push(FieldViolation::new(
                "bound_object_ref.name",
                "required when bound_object_ref is given",
            ));
        }
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, ver)) => (g, ver),
            None => ("", r.api_version.as_str()),
        };
        kind = match (group, r.kind.as_str()) {
            ("", "Pod") => Some(BoundKind::Pod),
            ("", "Secret") => Some(BoundKind::Secret),
            ("", "Node") => Some(BoundKind::Node),
            _ => {
                v.push(FieldViolation::new(
                    "bound_object_ref.kind",
                    format!(
                        "cannot bind token to object of type {group}/{version}, Kind={}",
                        r.kind
                    ),
                ));
                None
            }
        };
    }

    Error::check(v)?;
    Ok(kind)
}

/// What to issue, decided from the settings, the validated request and `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPlan {
    /// The token's `aud`: the requested audiences, or the API audiences.
    pub audiences: Vec<String>,
    /// `iat` and `nbf`, unix seconds.
    pub issued_at: i64,
    /// The JWT `exp`, unix seconds (a year away for extended tokens).
    pub expires_at: i64,
    /// The response's `expiration_timestamp`: now + the (possibly capped) requested
    /// lifetime, never extended.
    pub status_expiration: i64,
    /// The `warnafter` claim, only for extended tokens.
    pub warn_after: Option<i64>,
    /// Warnings for the response.
    pub warnings: Vec<String>,
}

/// Unix seconds of `t`, floored (as Go's `Time.Unix`).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let floor = if d.subsec_nanos() > 0 { 1 } else { 0 };
            (-secs).saturating_sub(floor)
        }
    }
}

/// Steps 5, 10, 11 and 12 of Kubernetes' `TokenREST.Create` for a request that
/// passed [`validate_request`]:
///
/// - empty audiences become the API audiences;
/// - the lifetime (default 3600) is capped at `max_expiration_seconds` when that is
///   positive, with the warning "requested expiration of N seconds shortened to M
///   seconds";
/// - after the cap, when `extend_expiration` is on, the token is pod-bound, the
///   lifetime is exactly 3607 and every audience is an API audience, the JWT `exp` is
///   now + `max_extended_expiration_seconds` and `warnafter` now + 3607;
/// - the status expiration is now + the capped lifetime.
pub fn plan(
    settings: &IssuerSettings,
    spec: &TokenRequestSpec,
    pod_bound: bool,
    now: SystemTime,
) -> TokenPlan {
    let now = unix_seconds(now);
    let audiences = if spec.audiences.is_empty() {
        settings.api_audiences.clone()
    } else {
        spec.audiences.clone()
    };

    let mut warnings = Vec::new();
    let mut expiration = spec
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if let Some(max) = settings.max_expiration_seconds
        && max > 0
        && expiration > max
    {
        warnings.push(format!(
            "requested expiration of {expiration} seconds shortened to {max} seconds"
        ));
        expiration = max;
    }

    let extended = settings.extend_expiration
        && pod_bound
        && expiration == WARN_ONLY_EXPIRATION_SECONDS
        && audiences.iter().all(|a| settings.api_audiences.contains(a));

    let status_expiration = now.saturating_add(expiration);
    let (expires_at, warn_after) = if extended {
        (
            now.saturating_add(settings.max_extended_expiration_seconds),
            Some(status_expiration),
        )
    } else {
        (status_expiration, None)
    };

    TokenPlan {
        audiences,
        issued_at: now,
        expires_at,
        status_expiration,
        warn_after,
        warnings,
    }
}

/// A name and uid in the claims; an empty uid is left out (a pod's node that no
/// longer exists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

impl ObjectRef {
    pub fn new(name: impl Into<String>, uid: impl Into<String>) -> Self {
        ObjectRef {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// What the token is bound to. A pod-bound token carries the pod's node too when
/// the pod is scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    None,
    Pod {
        pod: ObjectRef,
        node: Option<ObjectRef>,
    },
    Secret(ObjectRef),
    Node(ObjectRef),
}

/// Everything a bound token's payload says.
#[derive(Debug, Clone)]
pub struct ClaimsInput<'a> {
    /// The signing issuer (the first configured).
    pub issuer: &'a str,
    pub namespace: &'a str,
    pub service_account: ObjectRef,
    pub binding: Binding,
    pub plan: &'a TokenPlan,
    /// A v4 UUID from the caller.
    pub jti: &'a str,
}

/// `{name, uid}` with empty values left out (Go's `omitempty`).
fn ref_object(r: &ObjectRef) -> Value {
    let mut m = Map::new();
    if !r.name.is_empty() {
        m.insert("name".into(), Value::from(r.name.as_str()));
    }
    if !r.uid.is_empty() {
        m.insert("uid".into(), Value::from(r.uid.as_str()));
    }
    Value::Object(m)
}

/// The payload of a bound token, as Kubernetes builds it: `aud` (always an array),
/// `exp`, `iat`, `iss`, `jti`, `kubernetes.io` {`namespace`, `node`, `pod`, `secret`,
/// `serviceaccount`, `warnafter`}, `nbf` (= `iat`), `sub`. Keys are inserted in
/// sorted order at every level, so the JSON is sorted whether or not serde_json's
/// `preserve_order` is on (Go marshals the claims from maps). Empty strings are
/// left out as Go's `omitempty` does; `warnafter` only for extended tokens.
pub fn bound_claims(input: &ClaimsInput) -> Value {
    let plan = input.plan;

    let mut k8s = Map::new();
    if !input.namespace.is_empty() {
        k8s.insert("namespace".into(), Value::from(input.namespace));
    }
    let (pod, secret, node) = match &input.binding {
        Binding::None => (None, None, None),
        Binding::Pod { pod, node } => (Some(pod), None, node.as_ref()),
        Binding::Secret(s) => (None, Some(s), None),
        Binding::Node(n) => (None, None, Some(n)),
    };
    if let Some(n) = node {
        k8s.insert("node".into(), ref_object(n));
    }
    if let Some(p) = pod {
        k8s.insert("pod".into(), ref_object(p));
    }
    if let Some(s) = secret {
        k8s.insert("secret".into(), ref_object(s));
    }
    k8s.insert("serviceaccount".into(), ref_object(&input.service_account));
    if let Some(w) = plan.warn_after {
        k8s.insert("warnafter".into(), Value::from(w));
    }

    let mut m = Map::new();
    m.insert(
        "aud".into(),
        Value::Array(
            plan.audiences
                .iter()
                .map(|a| Value::from(a.as_str()))
                .collect(),
        ),
    );
    m.insert("exp".into(), Value::from(plan.expires_at));
    m.insert("iat".into(), Value::from(plan.issued_at));
    m.insert("iss".into(), Value::from(input.issuer));
    if !input.jti.is_empty() {
        m.insert("jti".into(), Value::from(input.jti));
    }
    m.insert("kubernetes.io".into(), Value::Object(k8s));
    m.insert("nbf".into(), Value::from(plan.issued_at));
    m.insert(
        "sub".into(),
        Value::from(service_account_username(
            input.namespace,
            &input.service_account.name,
        )),
    );
    Value::Object(m)
}

/// [`bound_claims`] as compact JSON bytes, the JWS payload: the same bytes as
/// `bound_claims(input).to_string()` (a test holds them equal), written straight
/// from borrowed fields — the issuer builds one per token, and the `Value` tree cost
/// a dozen allocations.
pub fn bound_claims_json(input: &ClaimsInput) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Ref<'a> {
        #[serde(skip_serializing_if = "str::is_empty")]
        name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        uid: &'a str,
    }
    // Fields in sorted order at every level, as `bound_claims`.
    #[derive(serde::Serialize)]
    struct Kubernetes<'a> {
        #[serde(skip_serializing_if = "str::is_empty")]
        namespace: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<Ref<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pod: Option<Ref<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<Ref<'a>>,
        serviceaccount: Ref<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warnafter: Option<i64>,
    }
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        aud: &'a [String],
        exp: i64,
        iat: i64,
        iss: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        jti: &'a str,
        #[serde(rename = "kubernetes.io")]
        kubernetes: Kubernetes<'a>,
        nbf: i64,
        sub: String,
    }
    fn r(o: &ObjectRef) -> Ref<'_> {
        Ref {
            name: o.name.as_str(),
            uid: o.uid.as_str(),
        }
    }
    let (pod, secret, node) = match &input.binding {
        Binding::None => (None, None, None),
        Binding::Pod { pod, node } => (Some(r(pod)), None, node.as_ref().map(r)),
        Binding::Secret(s) => (None, Some(r(s)), None),
        Binding::Node(n) => (None, None, Some(r(n))),
    };
    let plan = input.plan;
    let payload = Payload {
        aud: &plan.audiences,
        exp: plan.expires_at,
        iat: plan.issued_at,
        iss: input.issuer,
        jti: input.jti,
        kubernetes: Kubernetes {
            namespace: input.namespace,
            node,
            pod,
            secret,
            serviceaccount: r(&input.service_account),
            warnafter: plan.warn_after,
        },
        nbf: plan.issued_at,
        sub: service_account_username(input.namespace, &input.service_account.name),
    };
    // Serializing borrowed strings and integers cannot fail; the Value path stays
    // as the fallback rather than a panic.
    serde_json::to_vec(&payload).unwrap_or_else(|_| bound_claims(input).to_string().into_bytes())
}

/// The payload of a legacy (Secret-based) token: `iss` `kubernetes/serviceaccount`,
/// `sub` and the four flat `kubernetes.io/serviceaccount/*` claims; no `aud`, `exp`,
/// `iat`, `nbf` or `jti`. Keys sorted.
pub fn legacy_claims(namespace: &str, sa_name: &str, sa_uid: &str, secret_name: &str) -> Value {
    let mut m = Map::new();
    m.insert("iss".into(), Value::from(LEGACY_ISSUER));
    m.insert(
        "kubernetes.io/serviceaccount/namespace".into(),
        Value::from(namespace),
    );
    m.insert(
        "kubernetes.io/serviceaccount/secret.name".into(),
        Value::from(secret_name),
    );
    m.insert(
        "kubernetes.io/serviceaccount/service-account.name".into(),
        Value::from(sa_name),
    );
    m.insert(
        "kubernetes.io/serviceaccount/service-account.uid".into(),
        Value::from(sa_uid),
    );
    m.insert(
        "sub".into(),
        Value::from(service_account_username(namespace, sa_name)),
    );
    Value::Object(m)
}

/// `JTI=<jti>`, the audit credential id; empty when there is no jti (as
/// Kubernetes' `CredentialIDForJTI`).
pub fn credential_id(jti: &str) -> String {
    if jti.is_empty() {
        String::new()
    } else {
        format!("JTI={jti}")
    }
}

/// The request's service account uid precondition failed (Kubernetes 409).
pub fn sa_uid_mismatch(requested: &str, actual: &str) -> Error {
    Error::Conflict(format!(
        "the UID in the token request ({requested}) does not match the UID of the service account ({actual})"
    ))
}

/// `bound_object_ref.uid` differs from the live object's (Kubernetes 409).
/// Kubernetes' message names only the requested uid, so `_actual` is not used.
pub fn bound_uid_mismatch(requested: &str, _actual: &str) -> Error {
    Error::Conflict(format!(
        "the UID in the bound object reference ({requested}) does not match the UID in record. The object might have been deleted and then recreated"
    ))
}

/// The bound pod runs as another service account (Kubernetes 400).
pub fn pod_sa_mismatch(sa_name: &str) -> Error {
    Error::invalid(
        "bound_object_ref.name",
        format!(
            "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
        ),
    )
}

/// Startup checks of the issuer settings (Kubernetes' flag validation): at least
/// one issuer; none empty or duplicated; one containing `:` must parse as a URL;
/// `max_expiration_seconds`, when set, between 3600 and 2^32; no empty API
/// audience; a positive extended expiration when extension is on. Each problem
/// names its setting (`token.issuers[1]`, `token.max_expiration_seconds`, ...).
pub fn validate_settings(s: &IssuerSettings) -> Vec<String> {
    let mut problems = Vec::new();
    if s.issuers.is_empty() {
        problems.push("token.issuers: at least one issuer is required".to_string());
    }
    for (i, issuer) in s.issuers.iter().enumerate() {
        if issuer.is_empty() {
            problems.push(format!("token.issuers[{i}]: may not be empty"));
            continue;
        }
        if let Some(j) = s.issuers[..i].iter().position(|x| x == issuer) {
            problems.push(format!(
                "token.issuers[{i}]: {issuer:?} is a duplicate of token.issuers[{j}]"
            ));
        }
        if issuer.contains(':')
            && let Err(e) = parse_url(issuer)
        {
            problems.push(format!(
                "token.issuers[{i}]: {issuer:?} contains ':' but is not a valid URL: {e}"
            ));
        }
    }
    for (i, aud) in s.api_audiences.iter().enumerate() {
        if aud.is_empty() {
            problems.push(format!("token.api_audiences[{i}]: may not be empty"));
        }
    }
    if let Some(max) = s.max_expiration_seconds
        && !(MIN_MAX_EXPIRATION_SECONDS..=MAX_EXPIRATION_SECONDS).contains(&max)
    {
        problems.push(format!(
            "token.max_expiration_seconds: must be between 1 hour (3600) and 2^32 seconds, got {max}"
        ));
    }
    if s.extend_expiration && s.max_extended_expiration_seconds <= 0 {
        problems.push(format!(
            "token.max_extended_expiration_seconds: must be positive when expiration extension is on, got {}",
            s.max_extended_expiration_seconds
        ));
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    #[test]
    fn api_audiences_default_to_the_issuers() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let issuers = v(&["https://a", "https://b"]);
        assert_eq!(api_audiences(&issuers, &[]), issuers);
        assert_eq!(api_audiences(&issuers, &v(&["api"])), v(&["api"]));
        assert!(api_audiences(&[], &[]).is_empty());
    }

    fn settings() -> IssuerSettings {
        IssuerSettings::with_issuers(vec![
            "https://issuer.example".to_string(),
            "https://old.example".to_string(),
        ])
    }

    fn spec(auds: &[&str], exp: Option<i64>) -> TokenRequestSpec {
        TokenRequestSpec {
            audiences: auds.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: exp,
            bound_object_ref: None,
        }
    }

    fn bound(kind: &str, api_version: &str, name: &str) -> TokenRequestSpec {
        TokenRequestSpec {
            bound_object_ref: Some(BoundObjectRef {
                kind: kind.into(),
                api_version: api_version.into(),
                name: name.into(),
                uid: String::new(),
            }),
            ..Default::default()
        }
    }

    fn violations(r: Result<Option<BoundKind>>) -> Vec<FieldViolation> {
        match r {
            Err(Error::Invalid(v)) => v,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn expiration_boundaries() {
        let cases: [(Option<i64>, Option<&str>); 8] = [
            (None, None),
            (Some(600), None),
            (Some(3600), None),
            (Some(1 << 32), None),
            (
                Some(599),
                Some("invalid value 599: may not specify a duration less than 10 minutes"),
            ),
            (
                Some(0),
                Some("invalid value 0: may not specify a duration less than 10 minutes"),
            ),
            (
                Some(-5),
                Some("invalid value -5: may not specify a duration less than 10 minutes"),
            ),
            (
                Some((1 << 32) + 1),
                Some(
                    "invalid value 4294967297: may not specify a duration larger than 2^32 seconds",
                ),
            ),
        ];
        for (exp, want) in cases {
            let r = validate_request(&spec(&[], exp));
            match want {
                None => assert_eq!(r, Ok(None), "{exp:?}"),
                Some(msg) => assert_eq!(
                    violations(r),
                    vec![FieldViolation::new("expiration_seconds", msg)],
                    "{exp:?}"
                ),
            }
        }
        // None defaults to 3600.
        let p = plan(&settings(), &spec(&[], None), false, now());
        assert_eq!(p.expires_at, NOW + 3600);
        assert_eq!(p.status_expiration, NOW + 3600);
    }

    #[test]
    fn audience_limits() {
        let hundred: Vec<String> = (0..100).map(|i| format!("aud-{i}")).collect();
        let ok = TokenRequestSpec {
            audiences: hundred.clone(),
            ..Default::default()
        };
        assert_eq!(validate_request(&ok), Ok(None));

        let mut too_many = ok.clone();
        too_many.audiences.push("aud-100".into());
        let v = violations(validate_request(&too_many));
        assert_eq!(
            v,
            vec![FieldViolation::new(
                "audiences",
                "may not have more than 100 audiences, got 101"
            )]
        );

        let max = "a".repeat(1024);
        assert_eq!(validate_request(&spec(&[&max], None)), Ok(None));

        let long = "a".repeat(1025);
        let v = violations(validate_request(&spec(&["ok", "", &long], None)));
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            FieldViolation::new("audiences[1]", "an audience may not be empty")
        );
        assert_eq!(v[1].field, "audiences[2]");
        assert!(
            v[1].description
                .ends_with("may not be longer than 1024 bytes, got 1025"),
            "{}",
            v[1].description
        );
        // The value is quoted but truncated.
        assert!(v[1].description.len() < 200);
    }

    #[test]
    fn every_violation_is_listed() {
        let mut s = bound("ConfigMap", "v1", "");
        s.expiration_seconds = Some(10);
        s.audiences = vec![String::new()];
        let fields: Vec<String> = violations(validate_request(&s))
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "expiration_seconds",
                "audiences[0]",
                "bound_object_ref.name",
                "bound_object_ref.kind"
            ]
        );
    }

    #[test]
    fn bound_kinds() {
        let ok = [
            ("Pod", "v1", BoundKind::Pod),
            ("Pod", "", BoundKind::Pod),
            ("Pod", "v2", BoundKind::Pod),
            ("Pod", "/v1", BoundKind::Pod),
            ("Secret", "v1", BoundKind::Secret),
            ("Secret", "", BoundKind::Secret),
            ("Node", "v1", BoundKind::Node),
            ("Node", "", BoundKind::Node),
        ];
        for (kind, api_version, want) in ok {
            assert_eq!(
                validate_request(&bound(kind, api_version, "x")),
                Ok(Some(want)),
                "{kind} {api_version}"
            );
            assert_eq!(want.as_str(), kind);
        }
        let bad = [
            (
                "Pod",
                "apps/v1",
                "cannot bind token to object of type apps/v1, Kind=Pod",
            ),
            (
                "Secret",
                "foo.io/v1",
                "cannot bind token to object of type foo.io/v1, Kind=Secret",
            ),
            (
                "Node",
                "a/b/c",
                "cannot bind token to object of type a/b/c, Kind=Node",
            ),
            (
                "ConfigMap",
                "v1",
                "cannot bind token to object of type /v1, Kind=ConfigMap",
            ),
            (
                "ConfigMap",
                "",
                "cannot bind token to object of type /, Kind=ConfigMap",
            ),
            (
                "pod",
                "v1",
                "cannot bind token to object of type /v1, Kind=pod",
            ),
            ("", "v1", "cannot bind token to object of type /v1, Kind="),
        ];
        for (kind, api_version, msg) in bad {
            assert_eq!(
                violations(validate_request(&bound(kind, api_version, "x"))),
                vec![FieldViolation::new("bound_object_ref.kind", msg)],
                "{kind} {api_version}"
            );
        }
        assert_eq!(
            violations(validate_request(&bound("Pod", "v1", ""))),
            vec![FieldViolation::new(
                "bound_object_ref.name",
                "required when bound_object_ref is given"
            )]
        );
    }

    #[test]
    fn audiences_default_to_api_audiences() {
        let p = plan(&settings(), &spec(&[], None), false, now());
        assert_eq!(
            p.audiences,
            ["https://issuer.example", "https://old.example"]
        );
        let p = plan(&settings(), &spec(&["vault"], None), false, now());
        assert_eq!(p.audiences, ["vault"]);
    }

    #[test]
    fn cap_with_warning() {
        struct Case {
            max: Option<i64>,
            requested: Option<i64>,
            want_exp: i64,
            warning: Option<&'static str>,
        }
        let cases = [
            Case {
                max: None,
                requested: Some(1 << 32),
                want_exp: 1 << 32,
                warning: None,
            },
            Case {
                max: Some(0),
                requested: Some(90_000),
                want_exp: 90_000,
                warning: None,
            },
            Case {
                max: Some(7200),
                requested: Some(7200),
                want_exp: 7200,
                warning: None,
            },
            Case {
                max: Some(7200),
                requested: Some(600),
                want_exp: 600,
                warning: None,
            },
            Case {
                max: Some(7200),
                requested: Some(7201),
                want_exp: 7200,
                warning: Some("requested expiration of 7201 seconds shortened to 7200 seconds"),
            },
            Case {
                max: Some(3600),
                requested: None,
                want_exp: 3600,
                warning: None,
            },
            Case {
                max: Some(3600),
                requested: Some(86_400),
                want_exp: 3600,
                warning: Some("requested expiration of 86400 seconds shortened to 3600 seconds"),
            },
        ];
        for c in cases {
            let mut s = settings();
            s.max_expiration_seconds = c.max;
            let p = plan(&s, &spec(&["a"], c.requested), false, now());
            assert_eq!(
                p.expires_at,
                NOW + c.want_exp,
                "{:?} {:?}",
                c.max,
                c.requested
            );
            assert_eq!(p.status_expiration, NOW + c.want_exp);
            assert_eq!(p.issued_at, NOW);
            assert_eq!(p.warn_after, None);
            let want: Vec<String> = c.warning.iter().map(|w| w.to_string()).collect();
            assert_eq!(p.warnings, want);
        }
    }

    #[test]
    fn extension() {
        struct Case {
            name: &'static str,
            extend: bool,
            pod_bound: bool,
            requested: Option<i64>,
            audiences: &'static [&'static str],
            max: Option<i64>,
            extended: bool,
        }
        let base = Case {
            name: "pod-bound 3607 with defaulted audiences",
            extend: true,
            pod_bound: true,
            requested: Some(3607),
            audiences: &[],
            max: None,
            extended: true,
        };
        let cases = [
            Case { ..base },
            Case {
                name: "explicit api audience",
                audiences: &["https://old.example"],
                ..base
            },
            Case {
                name: "extension off",
                extend: false,
                extended: false,
                ..base
            },
            Case {
                name: "not pod-bound",
                pod_bound: false,
                extended: false,
                ..base
            },
            Case {
                name: "3608",
                requested: Some(3608),
                extended: false,
                ..base
            },
            Case {
                name: "default 3600",
                requested: None,
                extended: false,
                ..base
            },
            Case {
                name: "audience not an api audience",
                audiences: &["https://issuer.example", "vault"],
                extended: false,
                ..base
            },
            Case {
                name: "cap below 3607",
                max: Some(3606),
                extended: false,
                ..base
            },
            Case {
                name: "cap above 3607",
                max: Some(7200),
                ..base
            },
            Case {
                name: "capped down to exactly 3607",
                requested: Some(86_400),
                max: Some(3607),
                ..base
            },
        ];
        for c in cases {
            let mut s = settings();
            s.extend_expiration = c.extend;
            s.max_expiration_seconds = c.max;
            let p = plan(&s, &spec(c.audiences, c.requested), c.pod_bound, now());
            let lifetime = c.requested.unwrap_or(3600).min(c.max.unwrap_or(i64::MAX));
            assert_eq!(p.status_expiration, NOW + lifetime, "{}", c.name);
            if c.extended {
                assert_eq!(
                    p.expires_at,
                    NOW + EXTENDED_EXPIRATION_SECONDS,
                    "{}",
                    c.name
                );
                assert_eq!(p.warn_after, Some(NOW + 3607), "{}", c.name);
            } else {
                assert_eq!(p.expires_at, NOW + lifetime, "{}", c.name);
                assert_eq!(p.warn_after, None, "{}", c.name);
            }
        }

        // A shorter extension (e.g. an external signer's max) is used as given.
        let mut s = settings();
        s.max_extended_expiration_seconds = 86_400;
        let p = plan(&s, &spec(&[], Some(3607)), true, now());
        assert_eq!(p.expires_at, NOW + 86_400);
        assert_eq!(p.status_expiration, NOW + 3607);
        assert_eq!(p.warn_after, Some(NOW + 3607));
    }

    #[test]
    fn unix_seconds_floors() {
        assert_eq!(unix_seconds(now()), NOW);
        assert_eq!(unix_seconds(now() + Duration::from_millis(999)), NOW);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(1)), -1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2);
        let p = plan(
            &settings(),
            &spec(&[], None),
            false,
            now() + Duration::from_millis(500),
        );
        assert_eq!(p.issued_at, NOW);
    }

    fn claims_json(binding: Binding, plan: &TokenPlan) -> String {
        let input = ClaimsInput {
            issuer: "https://issuer.example",
            namespace: "ns",
            service_account: ObjectRef::new("sa", "sa-uid"),
            binding,
            plan,
            jti: "0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a",
        };
        let bytes = bound_claims_json(&input);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text, bound_claims(&input).to_string());
        text
    }

    fn one_hour_plan(auds: &[&str]) -> TokenPlan {
        plan(&settings(), &spec(auds, None), false, now())
    }

    #[test]
    fn claims_exact() {
        let p = one_hour_plan(&["vault"]);
        let cases = [
            (
                "unbound",
                Binding::None,
                r#"{"aud":["vault"],"exp":1700003600,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","serviceaccount":{"name":"sa","uid":"sa-uid"}},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#,
            ),
            (
                "pod with node",
                Binding::Pod {
                    pod: ObjectRef::new("web-0", "pod-uid"),
                    node: Some(ObjectRef::new("node-a", "node-uid")),
                },
                r#"{"aud":["vault"],"exp":1700003600,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","node":{"name":"node-a","uid":"node-uid"},"pod":{"name":"web-0","uid":"pod-uid"},"serviceaccount":{"name":"sa","uid":"sa-uid"}},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#,
            ),
            (
                "pod with node stub",
                Binding::Pod {
                    pod: ObjectRef::new("web-0", "pod-uid"),
                    node: Some(ObjectRef::new("node-gone", "")),
                },
                r#"{"aud":["vault"],"exp":1700003600,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","node":{"name":"node-gone"},"pod":{"name":"web-0","uid":"pod-uid"},"serviceaccount":{"name":"sa","uid":"sa-uid"}},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#,
            ),
            (
                "pod not scheduled",
                Binding::Pod {
                    pod: ObjectRef::new("web-0", "pod-uid"),
                    node: None,
                },
                r#"{"aud":["vault"],"exp":1700003600,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","pod":{"name":"web-0","uid":"pod-uid"},"serviceaccount":{"name":"sa","uid":"sa-uid"}},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#,
            ),
            (
                "secret",
                Binding::Secret(ObjectRef::new("s", "secret-uid")),
                r#"{"aud":["vault"],"exp":1700003600,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","secret":{"name":"s","uid":"secret-uid"},"serviceaccount":{"name":"sa","uid":"sa-uid"}},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#,
            ),
            (
                "node",
                Binding::Node(ObjectRef::new("node-a", "node-uid")),
                r#"{"aud":["vault"],"exp":1700003600,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","node":{"name":"node-a","uid":"node-uid"},"serviceaccount":{"name":"sa","uid":"sa-uid"}},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#,
            ),
        ];
        for (name, binding, want) in cases {
            assert_eq!(claims_json(binding, &p), want, "{name}");
        }
    }

    #[test]
    fn claims_json_escapes_as_the_value_tree_does() {
        let p = one_hour_plan(&["a\"b", "ü\u{2028}\\", ""]);
        let text = claims_json(Binding::None, &p);
        // claims_json holds the bytes equal to the Value tree's; the escapes are JSON's.
        assert!(text.starts_with(r#"{"aud":["a\"b","ü"#), "{text}");
        assert!(text.contains("\u{2028}\\\\\",\"\"],\"exp\""), "{text}");
    }

    #[test]
    fn claims_extended_has_warnafter() {
        let p = plan(&settings(), &spec(&[], Some(3607)), true, now());
        let got = claims_json(
            Binding::Pod {
                pod: ObjectRef::new("web-0", "pod-uid"),
                node: Some(ObjectRef::new("node-a", "node-uid")),
            },
            &p,
        );
        assert_eq!(
            got,
            r#"{"aud":["https://issuer.example","https://old.example"],"exp":1731536000,"iat":1700000000,"iss":"https://issuer.example","jti":"0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a","kubernetes.io":{"namespace":"ns","node":{"name":"node-a","uid":"node-uid"},"pod":{"name":"web-0","uid":"pod-uid"},"serviceaccount":{"name":"sa","uid":"sa-uid"},"warnafter":1700003607},"nbf":1700000000,"sub":"system:serviceaccount:ns:sa"}"#
        );
        // The status says +3607 while the JWT lives a year.
        assert_eq!(p.status_expiration, NOW + 3607);
        assert_eq!(p.expires_at, NOW + 365 * 24 * 3600);
    }

    #[test]
    fn aud_is_always_an_array() {
        let p = one_hour_plan(&["only"]);
        let v = bound_claims(&ClaimsInput {
            issuer: "https://issuer.example",
            namespace: "ns",
            service_account: ObjectRef::new("sa", "u"),
            binding: Binding::None,
            plan: &p,
            jti: "j",
        });
        assert_eq!(v["aud"], serde_json::json!(["only"]));
        assert_eq!(v["iat"], v["nbf"]);
        // No jti: the claim is left out.
        let v = bound_claims(&ClaimsInput {
            issuer: "https://issuer.example",
            namespace: "ns",
            service_account: ObjectRef::new("sa", "u"),
            binding: Binding::None,
            plan: &p,
            jti: "",
        });
        assert!(v.get("jti").is_none());
    }

    #[test]
    fn legacy_claims_exact() {
        let got = legacy_claims("ns", "sa", "sa-uid", "sa-token-abcde").to_string();
        assert_eq!(
            got,
            r#"{"iss":"kubernetes/serviceaccount","kubernetes.io/serviceaccount/namespace":"ns","kubernetes.io/serviceaccount/secret.name":"sa-token-abcde","kubernetes.io/serviceaccount/service-account.name":"sa","kubernetes.io/serviceaccount/service-account.uid":"sa-uid","sub":"system:serviceaccount:ns:sa"}"#
        );
    }

    #[test]
    fn credential_ids() {
        assert_eq!(credential_id("abc"), "JTI=abc");
        assert_eq!(credential_id(""), "");
    }

    #[test]
    fn precondition_errors() {
        assert_eq!(
            sa_uid_mismatch("a", "b"),
            Error::Conflict(
                "the UID in the token request (a) does not match the UID of the service account (b)"
                    .into()
            )
        );
        assert_eq!(
            bound_uid_mismatch("x", "y"),
            Error::Conflict("the UID in the bound object reference (x) does not match the UID in record. The object might have been deleted and then recreated".into())
        );
        assert_eq!(
            pod_sa_mismatch("builder"),
            Error::invalid(
                "bound_object_ref.name",
                "cannot bind token for serviceaccount \"builder\" to pod running with different serviceaccount name."
            )
        );
    }

    #[test]
    fn settings_validation() {
        assert_eq!(validate_settings(&settings()), Vec::<String>::new());
        let ok_max = [3600, 1 << 32];
        for max in ok_max {
            let mut s = settings();
            s.max_expiration_seconds = Some(max);
            assert_eq!(validate_settings(&s), Vec::<String>::new(), "{max}");
        }
        let ok_issuers = [
            "kubernetes/serviceaccount",
            "my-issuer",
            "urn:example:issuer",
            "http://plain.example",
        ];
        for issuer in ok_issuers {
            let s = IssuerSettings::with_issuers(vec![issuer.into()]);
            assert_eq!(validate_settings(&s), Vec::<String>::new(), "{issuer}");
        }

        struct Case {
            name: &'static str,
            edit: fn(&mut IssuerSettings),
            want_prefix: &'static str,
        }
        let cases = [
            Case {
                name: "no issuers",
                edit: |s| s.issuers.clear(),
                want_prefix: "token.issuers: ",
            },
            Case {
                name: "empty issuer",
                edit: |s| s.issuers.push(String::new()),
                want_prefix: "token.issuers[2]: may not be empty",
            },
            Case {
                name: "duplicate",
                edit: |s| s.issuers.push("https://issuer.example".into()),
                want_prefix: "token.issuers[2]: \"https://issuer.example\" is a duplicate of token.issuers[0]",
            },
            Case {
                name: "bad url",
                edit: |s| s.issuers[1] = "1bad:x".into(),
                want_prefix: "token.issuers[1]: \"1bad:x\" contains ':'",
            },
            Case {
                name: "bad port",
                edit: |s| s.issuers[1] = "https://h:x".into(),
                want_prefix: "token.issuers[1]: ",
            },
            Case {
                name: "max too small",
                edit: |s| s.max_expiration_seconds = Some(3599),
                want_prefix: "token.max_expiration_seconds: ",
            },
            Case {
                name: "max zero",
                edit: |s| s.max_expiration_seconds = Some(0),
                want_prefix: "token.max_expiration_seconds: ",
            },
            Case {
                name: "max too large",
                edit: |s| s.max_expiration_seconds = Some((1 << 32) + 1),
                want_prefix: "token.max_expiration_seconds: ",
            },
            Case {
                name: "empty api audience",
                edit: |s| s.api_audiences.push(String::new()),
                want_prefix: "token.api_audiences[2]: ",
            },
            Case {
                name: "extension zero",
                edit: |s| s.max_extended_expiration_seconds = 0,
                want_prefix: "token.max_extended_expiration_seconds: ",
            },
        ];
        for c in cases {
            let mut s = settings();
            (c.edit)(&mut s);
            let problems = validate_settings(&s);
            assert_eq!(problems.len(), 1, "{}: {problems:?}", c.name);
            assert!(
                problems[0].starts_with(c.want_prefix),
                "{}: {}",
                c.name,
                problems[0]
            );
        }

        // Extension off: its max is not checked.
        let mut s = settings();
        s.extend_expiration = false;
        s.max_extended_expiration_seconds = 0;
        assert_eq!(validate_settings(&s), Vec::<String>::new());
        assert_eq!(s.signing_issuer(), Some("https://issuer.example"));
    }
}
