//! The contents of an X.509-SVID as a pure function of a validated request, the signing
//! CA's validity window, the policy and `now` (and a jitter value the caller draws):
//! which identity, which DNS names, which validity, when to refresh, which key usages.
//! `badge-ca` turns a plan into DER; everything that decides lives here, so it is
//! tested with a fixed clock and no crypto.
//!
//! Lifetime rules, per API:
//! - Kubernetes (`PodCertificateRequest.spec.maxExpirationSeconds`): absent → 86400;
//!   outside [3600, 7862400] → invalid, Kubernetes' text "must be in the range [3600,
//!   7862400]"; inside → the issued lifetime is `min(request, cap)` — the field is a
//!   *maximum*, and a signer issuing less is what Kubernetes expects.
//! - Istio (`validity_duration`, seconds): ≤ 0 → the default; above the cap → invalid with
//!   istiod's text "requested TTL %s is greater than the max allowed TTL %s" (istiod
//!   refuses rather than clamps, and its agents rely on that); below 1 h → invalid.
//!
//! Both then clamp the window inside the CA's validity; a CA that cannot give at least
//! one hour is a server-side problem (FAILED_PRECONDITION), never a shorter certificate,
//! because Kubernetes rejects a status with a lifetime under an hour.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{SpiffeId, TrustDomain};
use crate::names::{invalid_value, quote, validate_dns_subdomain};
use crate::{Error, FieldViolation, Result};

/// The shortest certificate lifetime (Kubernetes: status lifetime ≥ 1 h; request ≥ 3600).
pub const MIN_LIFETIME: Duration = Duration::from_secs(3600);
/// `maxExpirationSeconds` when the request leaves it unset.
pub const KUBERNETES_DEFAULT_EXPIRATION_SECONDS: i64 = 86_400;
/// Kubernetes' upper bound of `maxExpirationSeconds` for non-`kubernetes.io` signers (91 days).
pub const KUBERNETES_MAX_EXPIRATION_SECONDS: i64 = 7_862_400;
/// The largest backdate accepted: Kubernetes requires `notBefore` within ±5 minutes of
/// the apiserver's clock.
pub const MAX_BACKDATE: Duration = Duration::from_secs(300);
/// `beginRefreshAt` stays this far from both ends of the validity (Kubernetes' rule:
/// inside [notBefore+10 min, notAfter−10 min]).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(600);
/// The most DNS SANs one certificate may carry.
pub const MAX_DNS_NAMES: usize = 8;
/// Refresh jitter: ± this fraction of the lifetime around the midpoint.
pub const REFRESH_JITTER_FRACTION: f64 = 0.1;
/// The longest pod UID (Kubernetes: ≤ 128 characters).
pub const MAX_UID_LEN: usize = 128;

/// Subject key types of PodCertificateRequest (Kubernetes names via [`KeyType::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa3072,
    Rsa4096,
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Ed25519,
}

impl KeyType {
    pub const ALL: [KeyType; 6] = [
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::EcdsaP521,
        KeyType::Ed25519,
    ];

    /// Kubernetes' name (`podCertificate.keyType`).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Rsa3072 => "RSA3072",
            KeyType::Rsa4096 => "RSA4096",
            KeyType::EcdsaP256 => "ECDSAP256",
            KeyType::EcdsaP384 => "ECDSAP384",
            KeyType::EcdsaP521 => "ECDSAP521",
            KeyType::Ed25519 => "ED25519",
        }
    }

    pub fn from_name(name: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa3072 | KeyType::Rsa4096)
    }
}

/// The Kubernetes denial reason for a key the signer does not take.
pub const REASON_UNSUPPORTED_KEY_TYPE: &str = "UnsupportedKeyType";

/// The invalid-field error for a subject key of an unsupported type: Kubernetes' reason
/// first (so clients can match it), then what was found and what is accepted.
pub fn unsupported_key_type(field: &str, found: &str, allowed: &[KeyType]) -> Error {
    let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
    Error::invalid(
        field,
        format!(
            "{REASON_UNSUPPORTED_KEY_TYPE}: the subject key is {found}, which this signer does not issue for; use one of {}",
            names.join(", ")
        ),
    )
}

/// Which DNS SANs a caller may put in its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DnsSanPolicy {
    /// No DNS SANs at all (default): the SPIFFE ID is the identity, and a DNS name is a
    /// claim about the network that Badge cannot check.
    #[default]
    None,
    /// Only the in-cluster names of a Service named like the service account, in its
    /// namespace: `<sa>.<ns>.svc` and `<sa>.<ns>.svc.<cluster_domain>`. A service
    /// account can never claim another namespace's or another account's name this way.
    ServiceAccountService { cluster_domain: String },
}

/// Issuance policy (from configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub trust_domain: TrustDomain,
    /// Istio's default when `validity_duration` ≤ 0.
    pub default_lifetime: Duration,
    /// The cap on any issued lifetime.
    pub max_lifetime: Duration,
    /// How far `notBefore` lies before `now` (clock skew between Badge and peers).
    pub backdate: Duration,
    pub allowed_key_types: Vec<KeyType>,
    pub dns: DnsSanPolicy,
}

impl Policy {
    /// Defaults: 24 h default and cap (Istio's and Kubernetes' default lifetime; short
    /// enough that a stolen key is useful for a day at most), 2 min backdate (covers
    /// ordinary skew, well inside Kubernetes' ±5 min), every Kubernetes key type, no DNS
    /// SANs.
    pub fn new(trust_domain: TrustDomain) -> Policy {
        Policy {
            trust_domain,
            default_lifetime: Duration::from_secs(86_400),
            max_lifetime: Duration::from_secs(86_400),
            backdate: Duration::from_secs(120),
            allowed_key_types: KeyType::ALL.to_vec(),
            dns: DnsSanPolicy::None,
        }
    }

    /// Checks the settings against each other (violations name `<prefix>.<setting>`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let mut v = Vec::new();
        let kube_max = Duration::from_secs(KUBERNETES_MAX_EXPIRATION_SECONDS.unsigned_abs());
        if self.max_lifetime < MIN_LIFETIME || self.max_lifetime > kube_max {
            v.push(FieldViolation::new(
                format!("{prefix}.max_lifetime"),
                format!(
                    "{}s: must be in the range [3600, {KUBERNETES_MAX_EXPIRATION_SECONDS}] seconds",
                    self.max_lifetime.as_secs()
                ),
            ));
        }
        if self.default_lifetime < MIN_LIFETIME || self.default_lifetime > self.max_lifetime {
            v.push(FieldViolation::new(
                format!("{prefix}.default_lifetime"),
                format!(
                    "{}s: must be at least 3600 seconds and at most max_lifetime ({}s)",
                    self.default_lifetime.as_secs(),
                    self.max_lifetime.as_secs()
                ),
            ));
        }
        if self.backdate > MAX_BACKDATE {
            v.push(FieldViolation::new(
                format!("{prefix}.backdate"),
                format!(
                    "{}s: must be at most 300 seconds (Kubernetes requires notBefore within 5 minutes of its clock)",
                    self.backdate.as_secs()
                ),
            ));
        }
        if self.allowed_key_types.is_empty() {
            v.push(FieldViolation::new(
                format!("{prefix}.allowed_key_types"),
                "must name at least one key type",
            ));
        }
        if let DnsSanPolicy::ServiceAccountService { cluster_domain } = &self.dns {
            for e in validate_dns_subdomain(cluster_domain) {
                v.push(FieldViolation::new(
                    format!("{prefix}.dns.cluster_domain"),
                    invalid_value(cluster_domain, &e),
                ));
            }
        }
        Error::check(v)
    }
}

/// The requested lifetime, as each API states it; `field` is the request field named in
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeRequest<'a> {
    Kubernetes {
        field: &'a str,
        max_expiration_seconds: Option<i64>,
    },
    Istio {
        field: &'a str,
        validity_duration: i64,
    },
}

/// The pod a certificate is bound to (Badge's pod extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBinding {
    pub name: String,
    pub uid: String,
}

/// A request whose caller has been authenticated and authorized for `spiffe_id`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub spiffe_id: &'a SpiffeId,
    /// The field the identity came from (e.g. the CSR's URI SAN), for errors.
    pub spiffe_id_field: &'a str,
    pub lifetime: LifetimeRequest<'a>,
    pub key_type: KeyType,
    pub key_type_field: &'a str,
    pub dns_names: &'a [String],
    pub dns_field: &'a str,
    /// Bound pod; its fields are reported as `pod_name` / `pod_uid`.
    pub pod: Option<PodBinding>,
}

/// The signing CA's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaWindow {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    pub digital_signature: bool,
    pub key_encipherment: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedKeyUsage {
    ServerAuth,
    ClientAuth,
}

/// Every SVID is usable on both ends of mTLS (X509-SVID: if EKU is present it must hold
/// both).
pub const SVID_EXTENDED_KEY_USAGE: [ExtendedKeyUsage; 2] =
    [ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth];

/// What the leaf will contain. Times are whole seconds (X.509 has no finer precision, and
/// Kubernetes requires the status times to equal the certificate's exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidPlan {
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub begin_refresh_at: SystemTime,
    pub key_type: KeyType,
    pub key_usage: KeyUsage,
    pub extended_key_usage: [ExtendedKeyUsage; 2],
    pub pod: Option<PodBinding>,
}

impl SvidPlan {
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// Go's `time.Duration.String()` for whole seconds (`24h0m0s`, `30m0s`, `45s`), as
/// istiod's messages print TTLs.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn floor_secs(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn secs_of(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The lifetime to issue, or the API's error.
pub fn lifetime(req: LifetimeRequest<'_>, policy: &Policy) -> Result<Duration> {
    match req {
        LifetimeRequest::Kubernetes {
            field,
            max_expiration_seconds,
        } => {
            let v = max_expiration_seconds.unwrap_or(KUBERNETES_DEFAULT_EXPIRATION_SECONDS);
            if !(secs_of(MIN_LIFETIME)..=KUBERNETES_MAX_EXPIRATION_SECONDS).contains(&v) {
                return Err(Error::invalid(
                    field,
                    invalid_value(
                        &v.to_string(),
                        &format!(
                            "must be in the range [3600, {KUBERNETES_MAX_EXPIRATION_SECONDS}]"
                        ),
                    ),
                ));
            }
            Ok(Duration::from_secs(v.unsigned_abs()).min(policy.max_lifetime))
        }
        LifetimeRequest::Istio {
            field,
            validity_duration,
        } => {
            if validity_duration <= 0 {
                return Ok(policy.default_lifetime.min(policy.max_lifetime));
            }
            let asked = Duration::from_secs(validity_duration.unsigned_abs());
            if asked > policy.max_lifetime {
                return Err(Error::invalid(
                    field,
                    format!(
                        "requested TTL {} is greater than the max allowed TTL {}",
                        go_duration(asked),
                        go_duration(policy.max_lifetime)
                    ),
                ));
            }
            if asked < MIN_LIFETIME {
                return Err(Error::invalid(
                    field,
                    format!(
                        "requested TTL {} is less than the min allowed TTL {}",
                        go_duration(asked),
                        go_duration(MIN_LIFETIME)
                    ),
                ));
            }
            Ok(asked)
        }
    }
}

/// DNS SANs allowed by `policy` for `spiffe_id`'s service account (already checked to be
/// one), each reported at `<field>[i]`.
fn dns_names(req: &Request<'_>, policy: &Policy, namespace: &str, sa: &str) -> Result<Vec<String>> {
    if req.dns_names.is_empty() {
        return Ok(Vec::new());
    }
    let allowed: Vec<String> = match &policy.dns {
        DnsSanPolicy::None => Vec::new(),
        DnsSanPolicy::ServiceAccountService { cluster_domain } => vec![
            format!("{sa}.{namespace}.svc"),
            format!("{sa}.{namespace}.svc.{cluster_domain}"),
        ],
    };
    let mut v = Vec::new();
    if req.dns_names.len() > MAX_DNS_NAMES {
        v.push(FieldViolation::new(
            req.dns_field,
            format!(
                "too many DNS names: {}, at most {MAX_DNS_NAMES}",
                req.dns_names.len()
            ),
        ));
        return Err(Error::Invalid(v));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, name) in req.dns_names.iter().enumerate() {
        let field = format!("{}[{i}]", req.dns_field);
        if out.contains(name) {
            v.push(FieldViolation::new(
                &field,
                format!("duplicate DNS name {}", quote(name)),
            ));
        } else if allowed.is_empty() {
            v.push(FieldViolation::new(
                &field,
                format!(
                    "DNS name {} is not allowed: this CA issues no DNS names (the SPIFFE ID is the identity)",
                    quote(name)
                ),
            ));
        } else if !allowed.contains(name) {
            v.push(FieldViolation::new(
                &field,
                format!(
                    "DNS name {} is not allowed for service account {namespace}/{sa}: allowed are {}",
                    quote(name),
                    allowed.join(", ")
                ),
            ));
        } else {
            out.push(name.clone());
        }
    }
    Error::check(v)?;
    Ok(out)
}

fn validate_pod(pod: &PodBinding) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    if pod.name.is_empty() {
        v.push(FieldViolation::new("pod_name", "pod name is required"));
    } else {
        for e in validate_dns_subdomain(&pod.name) {
            v.push(FieldViolation::new(
                "pod_name",
                invalid_value(&pod.name, &e),
            ));
        }
    }
    if pod.uid.is_empty() {
        v.push(FieldViolation::new("pod_uid", "pod uid is required"));
    } else if pod.uid.len() > MAX_UID_LEN {
        v.push(FieldViolation::new(
            "pod_uid",
            invalid_value(
                &pod.uid,
                &format!("must be no more than {MAX_UID_LEN} characters"),
            ),
        ));
    } else if !pod.uid.bytes().all(|b| b.is_ascii_graphic()) {
        // The uid goes into a certificate extension relying parties compare byte-wise.
        v.push(FieldViolation::new(
            "pod_uid",
            invalid_value(&pod.uid, "must be printable ASCII without spaces"),
        ));
    }
    v
}

/// The leaf's contents. `refresh_jitter` ∈ [-1, 1] (drawn by the caller; NaN counts as
/// 0) moves `beginRefreshAt` by up to ±10 % of the lifetime around the midpoint, so a
/// fleet issued at the same moment does not come back at the same moment.
pub fn plan(
    req: &Request<'_>,
    ca: CaWindow,
    policy: &Policy,
    now: SystemTime,
    refresh_jitter: f64,
) -> Result<SvidPlan> {
    // Defence in depth: the API layer derives the ID from the caller, but a certificate
    // for another trust domain or a non-service-account path must be impossible here.
    if req.spiffe_id.trust_domain() != &policy.trust_domain {
        return Err(Error::invalid(
            req.spiffe_id_field,
            invalid_value(
                &req.spiffe_id.to_string(),
                &format!(
                    "trust domain {} is not this CA's trust domain {}",
                    quote(req.spiffe_id.trust_domain().as_str()),
                    quote(policy.trust_domain.as_str())
                ),
            ),
        ));
    }
    let sa = req.spiffe_id.service_account(req.spiffe_id_field)?;
    if !policy.allowed_key_types.contains(&req.key_type) {
        return Err(unsupported_key_type(
            req.key_type_field,
            req.key_type.name(),
            &policy.allowed_key_types,
        ));
    }
    let lifetime = lifetime(req.lifetime, policy)?;
    let dns = dns_names(req, policy, sa.namespace, sa.name)?;
    if let Some(pod) = &req.pod {
        Error::check(validate_pod(pod))?;
    }

    let ca_nb = floor_secs(ca.not_before);
    let ca_na = floor_secs(ca.not_after);
    if now < ca_nb || now >= ca_na {
        return Err(Error::precondition(
            "the signing CA is not valid now; it must be rotated before certificates can be issued",
        ));
    }
    let not_before = floor_secs(now.checked_sub(policy.backdate).unwrap_or(UNIX_EPOCH)).max(ca_nb);
    // The window is `lifetime` long from its start, so notAfter − notBefore never exceeds
    // what was asked (Kubernetes checks exactly that). It counts from the start actually
    // used: a CA younger than the backdate (a plug-in CA made a moment ago) moves the start
    // up, and counting from now − backdate instead would cut a 1 h request below 1 h and
    // refuse it.
    let not_after = (not_before + lifetime).min(ca_na);
    let window = not_after.duration_since(not_before).unwrap_or_default();
    if window < MIN_LIFETIME {
        return Err(Error::precondition(format!(
            "the signing CA expires in less than {} and cannot issue a certificate of at least 1h; it must be rotated",
            go_duration(ca_na.duration_since(now).unwrap_or_default())
        )));
    }

    let jitter = if refresh_jitter.is_nan() {
        0.0
    } else {
        refresh_jitter.clamp(-1.0, 1.0)
    };
    let half = window / 2;
    let swing = window.mul_f64(REFRESH_JITTER_FRACTION * jitter.abs());
    let mid = not_before + half;
    let refresh = if jitter < 0.0 {
        mid - swing
    } else {
        mid + swing
    };
    let refresh = floor_secs(
        refresh
            .max(not_before + REFRESH_MARGIN)
            .min(not_after - REFRESH_MARGIN),
    );

    Ok(SvidPlan {
        spiffe_id: req.spiffe_id.clone(),
        dns_names: dns,
        not_before,
        not_after,
        begin_refresh_at: refresh,
        key_type: req.key_type,
        key_usage: KeyUsage {
            digital_signature: true,
            // RSA keys may do key transport (TLS 1.2 RSA key exchange); EC and Ed25519 keys
            // cannot, and X509-SVID forbids nothing else we would add.
            key_encipherment: req.key_type.is_rsa(),
        },
        extended_key_usage: SVID_EXTENDED_KEY_USAGE,
        pod: req.pod.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn policy() -> Policy {
        Policy::new(TrustDomain::parse("example.org").unwrap())
    }

    fn ca() -> CaWindow {
        CaWindow {
            not_before: at(NOW - 86_400),
            not_after: at(NOW + 90 * 86_400),
        }
    }

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/ns/shop/sa/web").unwrap()
    }

    fn kube(secs: Option<i64>) -> LifetimeRequest<'static> {
        LifetimeRequest::Kubernetes {
            field: "max_expiration_seconds",
            max_expiration_seconds: secs,
        }
    }

    fn istio(secs: i64) -> LifetimeRequest<'static> {
        LifetimeRequest::Istio {
            field: "validity_duration",
            validity_duration: secs,
        }
    }

    fn request<'a>(id: &'a SpiffeId, lifetime: LifetimeRequest<'a>) -> Request<'a> {
        Request {
            spiffe_id: id,
            spiffe_id_field: "csr",
            lifetime,
            key_type: KeyType::EcdsaP256,
            key_type_field: "stub_pkcs10_request",
            dns_names: &[],
            dns_field: "dns_names",
            pod: None,
        }
    }

    fn invalid(err: Error) -> FieldViolation {
        match err {
            Error::Invalid(v) => v.into_iter().next().unwrap(),
            other => panic!("want Invalid, got {other:?}"),
        }
    }

    #[test]
    fn kubernetes_lifetimes() {
        let p = policy();
        let id = id();
        // (requested, issued window) with the 24 h default cap and 2 min backdate.
        let ok: &[(Option<i64>, u64)] = &[
            (None, 86_400),
            (Some(3600), 3600),
            (Some(3601), 3601),
            (Some(86_399), 86_399),
            (Some(86_400), 86_400),
            // Above the cap but inside Kubernetes' range: clamped, as a signer may.
            (Some(86_401), 86_400),
            (Some(7_862_400), 86_400),
        ];
        for (asked, want) in ok {
            let plan = plan(&request(&id, kube(*asked)), ca(), &p, at(NOW), 0.0).unwrap();
            assert_eq!(plan.not_before, at(NOW - 120), "{asked:?}");
            assert_eq!(plan.lifetime(), Duration::from_secs(*want), "{asked:?}");
            assert!(plan.lifetime().as_secs() as i64 <= asked.unwrap_or(86_400));
        }
        for bad in [i64::MIN, -1, 0, 3599, 7_862_401, i64::MAX] {
            let v =
                invalid(plan(&request(&id, kube(Some(bad))), ca(), &p, at(NOW), 0.0).unwrap_err());
            assert_eq!(v.field, "max_expiration_seconds");
            assert_eq!(
                v.description,
                format!("invalid value \"{bad}\": must be in the range [3600, 7862400]")
            );
        }
    }

    #[test]
    fn istio_lifetimes() {
        let p = policy();
        let id = id();
        let ok: &[(i64, u64)] = &[(0, 86_400), (-5, 86_400), (3600, 3600), (86_400, 86_400)];
        for (asked, want) in ok {
            let plan = plan(&request(&id, istio(*asked)), ca(), &p, at(NOW), 0.0).unwrap();
            assert_eq!(plan.lifetime(), Duration::from_secs(*want), "{asked}");
        }
        let bad: &[(i64, &str)] = &[
            (
                86_401,
                "requested TTL 24h0m1s is greater than the max allowed TTL 24h0m0s",
            ),
            (
                7_776_000,
                "requested TTL 2160h0m0s is greater than the max allowed TTL 24h0m0s",
            ),
            (
                3599,
                "requested TTL 59m59s is less than the min allowed TTL 1h0m0s",
            ),
            (
                1,
                "requested TTL 1s is less than the min allowed TTL 1h0m0s",
            ),
        ];
        for (asked, want) in bad {
            let v =
                invalid(plan(&request(&id, istio(*asked)), ca(), &p, at(NOW), 0.0).unwrap_err());
            assert_eq!(v.field, "validity_duration");
            assert_eq!(v.description, *want);
        }
        // A larger configured cap moves the boundary.
        let mut wide = policy();
        wide.max_lifetime = Duration::from_secs(7 * 86_400);
        let plan = plan(&request(&id, istio(7 * 86_400)), ca(), &wide, at(NOW), 0.0).unwrap();
        assert_eq!(plan.lifetime(), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn validity_is_clamped_inside_the_ca() {
        let p = policy();
        let id = id();
        // CA started 30 s ago: notBefore is the CA's, not now − backdate.
        let young = CaWindow {
            not_before: at(NOW - 30),
            not_after: at(NOW + 90 * 86_400),
        };
        let plan1 = plan(&request(&id, kube(None)), young, &p, at(NOW), 0.0).unwrap();
        assert_eq!(plan1.not_before, at(NOW - 30));
        assert_eq!(plan1.not_after, at(NOW - 30 + 86_400));
        // The minimum lifetime from a CA that started a second ago: exactly 1 h, not
        // refused (the start moved up, the lifetime did not shrink).
        let newborn = CaWindow {
            not_before: at(NOW - 1),
            not_after: at(NOW + 20 * 86_400),
        };
        let plan0 = plan(&request(&id, istio(3600)), newborn, &p, at(NOW), 0.0).unwrap();
        assert_eq!(plan0.not_before, at(NOW - 1));
        assert_eq!(plan0.lifetime(), Duration::from_secs(3600));
        // CA ends in 2 h: notAfter is the CA's.
        let old = CaWindow {
            not_before: at(NOW - 86_400),
            not_after: at(NOW + 7200),
        };
        let plan2 = plan(&request(&id, kube(None)), old, &p, at(NOW), 0.0).unwrap();
        assert_eq!(plan2.not_after, at(NOW + 7200));
        // CA ends in 59 min (+ backdate = 61 min window boundary): refused, not shortened.
        for ends_in in [3479, 60, 0] {
            let dying = CaWindow {
                not_before: at(NOW - 86_400),
                not_after: at(NOW + ends_in),
            };
            let err = plan(&request(&id, kube(None)), dying, &p, at(NOW), 0.0).unwrap_err();
            assert!(
                matches!(err, Error::FailedPrecondition { .. }),
                "{ends_in}: {err:?}"
            );
        }
        // Exactly one hour of window left is still fine.
        let edge = CaWindow {
            not_before: at(NOW - 86_400),
            not_after: at(NOW - 120 + 3600),
        };
        let plan3 = plan(&request(&id, kube(None)), edge, &p, at(NOW), 0.0).unwrap();
        assert_eq!(plan3.lifetime(), Duration::from_secs(3600));
        // CA not yet valid.
        let future = CaWindow {
            not_before: at(NOW + 1),
            not_after: at(NOW + 90 * 86_400),
        };
        let err = plan(&request(&id, kube(None)), future, &p, at(NOW), 0.0).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition { .. }));
    }

    #[test]
    fn sub_second_now_is_floored() {
        let p = policy();
        let id = id();
        let now = at(NOW) + Duration::from_millis(999);
        let plan = plan(&request(&id, kube(Some(3600))), ca(), &p, now, 0.0).unwrap();
        assert_eq!(plan.not_before, at(NOW - 120));
        assert_eq!(plan.not_after, at(NOW - 120 + 3600));
    }

    #[test]
    fn refresh_is_half_with_jitter_inside_margins() {
        let p = policy();
        let id = id();
        let nb = NOW - 120;
        let cases: &[(Option<i64>, f64, u64)] = &[
            (Some(86_400), 0.0, nb + 43_200),
            (Some(86_400), 1.0, nb + 43_200 + 8640),
            (Some(86_400), -1.0, nb + 43_200 - 8640),
            (Some(86_400), 5.0, nb + 43_200 + 8640),
            (Some(86_400), f64::NAN, nb + 43_200),
            // 1 h: half is 30 min, ±6 min jitter stays inside [nb+10m, na−10m].
            (Some(3600), 1.0, nb + 1800 + 360),
            (Some(3600), -1.0, nb + 1800 - 360),
        ];
        for (asked, jitter, want) in cases {
            let plan = plan(&request(&id, kube(*asked)), ca(), &p, at(NOW), *jitter).unwrap();
            assert_eq!(plan.begin_refresh_at, at(*want), "{asked:?} {jitter}");
            assert!(plan.begin_refresh_at >= plan.not_before + REFRESH_MARGIN);
            assert!(plan.begin_refresh_at <= plan.not_after - REFRESH_MARGIN);
        }
        // With a large jitter fraction the margins would bind; check the clamp directly on a
        // CA-shortened window of 1 h: still inside.
        let edge = CaWindow {
            not_before: at(NOW - 86_400),
            not_after: at(nb + 3600),
        };
        let plan = plan(&request(&id, kube(None)), edge, &p, at(NOW), 1.0).unwrap();
        assert!(plan.begin_refresh_at <= plan.not_after - REFRESH_MARGIN);
    }

    #[test]
    fn key_usage_by_key_type() {
        let p = policy();
        let id = id();
        for kt in KeyType::ALL {
            let mut req = request(&id, kube(None));
            req.key_type = kt;
            let plan = plan(&req, ca(), &p, at(NOW), 0.0).unwrap();
            assert!(plan.key_usage.digital_signature);
            assert_eq!(plan.key_usage.key_encipherment, kt.is_rsa(), "{kt:?}");
            assert_eq!(plan.extended_key_usage, SVID_EXTENDED_KEY_USAGE);
            assert_eq!(KeyType::from_name(kt.name()), Some(kt));
        }
        let mut only_ec = policy();
        only_ec.allowed_key_types = vec![KeyType::EcdsaP256];
        let mut req = request(&id, kube(None));
        req.key_type = KeyType::Rsa3072;
        let v = invalid(plan(&req, ca(), &only_ec, at(NOW), 0.0).unwrap_err());
        assert_eq!(v.field, "stub_pkcs10_request");
        assert!(v.description.starts_with("UnsupportedKeyType: "), "{v:?}");
        assert!(v.description.contains("RSA3072") && v.description.contains("ECDSAP256"));
    }

    #[test]
    fn identity_must_be_a_service_account_in_the_trust_domain() {
        let p = policy();
        let cases: &[(&str, &str)] = &[
            (
                "spiffe://other.org/ns/shop/sa/web",
                "is not this CA's trust domain",
            ),
            ("spiffe://example.org", "not a service-account SPIFFE ID"),
            (
                "spiffe://example.org/ns/shop/sa/web/x",
                "not a service-account SPIFFE ID",
            ),
            (
                "spiffe://example.org/workload/web",
                "not a service-account SPIFFE ID",
            ),
        ];
        for (input, want) in cases {
            let id = SpiffeId::parse(input).unwrap();
            let v = invalid(plan(&request(&id, kube(None)), ca(), &p, at(NOW), 0.0).unwrap_err());
            assert_eq!(v.field, "csr", "{input}");
            assert!(v.description.contains(want), "{input}: {v:?}");
        }
    }

    #[test]
    fn dns_names_follow_the_policy() {
        let id = id();
        let names = vec!["web.shop.svc".to_owned()];
        // Default policy: none.
        let mut req = request(&id, kube(None));
        req.dns_names = &names;
        let v = invalid(plan(&req, ca(), &policy(), at(NOW), 0.0).unwrap_err());
        assert_eq!(v.field, "dns_names[0]");
        assert!(v.description.contains("issues no DNS names"), "{v:?}");

        let mut p = policy();
        p.dns = DnsSanPolicy::ServiceAccountService {
            cluster_domain: "cluster.local".to_owned(),
        };
        let ok = vec![
            "web.shop.svc".to_owned(),
            "web.shop.svc.cluster.local".to_owned(),
        ];
        req.dns_names = &ok;
        let plan1 = plan(&req, ca(), &p, at(NOW), 0.0).unwrap();
        assert_eq!(plan1.dns_names, ok);

        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["api.shop.svc"],
                "dns_names[0]",
                "not allowed for service account shop/web",
            ),
            (&["web.other.svc"], "dns_names[0]", "not allowed"),
            (
                &["web.shop.svc", "web.shop.svc"],
                "dns_names[1]",
                "duplicate",
            ),
            (&["x"; 9], "dns_names", "too many DNS names: 9"),
        ];
        for (input, field, want) in cases {
            let owned: Vec<String> = input.iter().map(|s| (*s).to_owned()).collect();
            let mut req = request(&id, kube(None));
            req.dns_names = &owned;
            let v = invalid(plan(&req, ca(), &p, at(NOW), 0.0).unwrap_err());
            assert_eq!(v.field, *field, "{input:?}");
            assert!(v.description.contains(want), "{input:?}: {v:?}");
        }
    }

    #[test]
    fn pod_binding_is_validated_and_carried() {
        let id = id();
        let mut req = request(&id, kube(None));
        req.pod = Some(PodBinding {
            name: "web-7d4b9".into(),
            uid: "0b0d2f1e-3c4a-4b5c-8d9e-0f1a2b3c4d5e".into(),
        });
        let plan1 = plan(&req, ca(), &policy(), at(NOW), 0.0).unwrap();
        assert_eq!(plan1.pod, req.pod);
        let cases: &[(&str, &str, &str, &str)] = &[
            ("", "u", "pod_name", "pod name is required"),
            ("Web", "u", "pod_name", "RFC 1123 subdomain"),
            ("web", "", "pod_uid", "pod uid is required"),
            ("web", "a b", "pod_uid", "printable ASCII"),
        ];
        for (name, uid, field, want) in cases {
            req.pod = Some(PodBinding {
                name: (*name).into(),
                uid: (*uid).into(),
            });
            let v = invalid(plan(&req, ca(), &policy(), at(NOW), 0.0).unwrap_err());
            assert_eq!(v.field, *field);
            assert!(v.description.contains(want), "{v:?}");
        }
        req.pod = Some(PodBinding {
            name: "web".into(),
            uid: "u".repeat(129),
        });
        let v = invalid(plan(&req, ca(), &policy(), at(NOW), 0.0).unwrap_err());
        assert!(v.description.contains("no more than 128"), "{v:?}");
    }

    #[test]
    fn policy_validation() {
        assert!(policy().validate("ca").is_ok());
        let mut p = policy();
        p.max_lifetime = Duration::from_secs(3599);
        p.backdate = Duration::from_secs(301);
        p.allowed_key_types.clear();
        let Err(Error::Invalid(v)) = p.validate("ca") else {
            panic!("want Invalid")
        };
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "ca.max_lifetime",
                "ca.default_lifetime",
                "ca.backdate",
                "ca.allowed_key_types"
            ]
        );
    }

    #[test]
    fn go_durations() {
        for (secs, want) in [
            (0, "0s"),
            (45, "45s"),
            (60, "1m0s"),
            (1800, "30m0s"),
            (3600, "1h0m0s"),
            (86_401, "24h0m1s"),
            (7_776_000, "2160h0m0s"),
        ] {
            assert_eq!(go_duration(Duration::from_secs(secs)), want);
        }
    }
}
