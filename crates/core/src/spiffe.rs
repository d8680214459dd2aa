//! SPIFFE IDs and trust domains, and the mapping between a Kubernetes service account
//! and its SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/sa/<name>`). Pure: no IO,
//! no clock.
//!
//! Parsing applies go-spiffe's strict rules (`spiffeid.FromString`) with its error
//! texts, plus the length limits of the SPIFFE standard that go-spiffe does not enforce
//! but the Rust `spiffe` crate does (2048 bytes for the whole ID, 255 for the trust
//! domain). Why the strict side: an ID Badge accepts or emits must be accepted by every
//! client Badge meets, so Badge takes the intersection of what they accept (an
//! upper-case trust domain is lowercased by the Rust crate but refused by go-spiffe, so
//! it is refused here).
//!
//! [`plan`] turns a validated certificate request into the contents of an X.509-SVID.

pub mod plan;

use std::fmt;

use crate::names::{invalid_value, validate_dns_label, validate_dns_subdomain};
use crate::{Error, FieldViolation};

/// `spiffe://`, the only accepted scheme prefix (go-spiffe requires it literally).
pub const SCHEME_PREFIX: &str = "spiffe://";
/// The longest SPIFFE ID (whole URI, bytes) implementations must accept; Badge accepts
/// and emits nothing longer.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain (RFC 3986 host limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Trust domain used when the issuer URL gives none (see [`default_trust_domain`]).
pub const FALLBACK_TRUST_DOMAIN: &str = "cluster.local";

/// Why a string is not a SPIFFE ID or trust domain. `Display` is go-spiffe's text
/// where go-spiffe defines one (`spiffeid/errors.go`), so operators can search for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiffeIdError {
    Empty,
    WrongScheme,
    MissingTrustDomain,
    BadTrustDomainChar,
    BadPathSegmentChar,
    DotSegment,
    EmptySegment,
    TrailingSlash,
    NoLeadingSlash,
    TooLong,
    TrustDomainTooLong,
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpiffeIdError::Empty => "cannot be empty",
            SpiffeIdError::WrongScheme => "scheme is missing or invalid",
            SpiffeIdError::MissingTrustDomain => "trust domain is missing",
            SpiffeIdError::BadTrustDomainChar => {
                "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
            }
            SpiffeIdError::BadPathSegmentChar => {
                "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
            }
            SpiffeIdError::DotSegment => "path cannot contain dot segments",
            SpiffeIdError::EmptySegment => "path cannot contain empty segments",
            SpiffeIdError::TrailingSlash => "path cannot have a trailing slash",
            SpiffeIdError::NoLeadingSlash => "path must have a leading slash",
            SpiffeIdError::TooLong => "SPIFFE ID is too long: must be at most 2048 bytes",
            SpiffeIdError::TrustDomainTooLong => {
                "trust domain is too long: must be at most 255 bytes"
            }
        })
    }
}

impl std::error::Error for SpiffeIdError {}

impl SpiffeIdError {
    /// This error as an invalid-field [`Error`] quoting (a bounded prefix of) the value.
    pub fn at(self, field: &str, value: &str) -> Error {
        Error::invalid(field, invalid_value(value, &self.to_string()))
    }
}

fn is_trust_domain_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
}

fn is_path_segment_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')
}

/// go-spiffe's `ValidatePath`: empty, or `/`-separated non-empty segments of
/// `[A-Za-z0-9._-]`, none `.` or `..`, no trailing slash. Errors in scan order.
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let b = path.as_bytes();
    match b.first() {
        None => return Ok(()),
        Some(b'/') => {}
        Some(_) => return Err(SpiffeIdError::NoLeadingSlash),
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'/' {
            match &path[start..i] {
                "/" => return Err(SpiffeIdError::EmptySegment),
                "/." | "/.." => return Err(SpiffeIdError::DotSegment),
                _ => {}
            }
            start = i;
            continue;
        }
        if !is_path_segment_char(c) {
            return Err(SpiffeIdError::BadPathSegmentChar);
        }
    }
    match &path[start..] {
        "/" => Err(SpiffeIdError::TrailingSlash),
        "/." | "/.." => Err(SpiffeIdError::DotSegment),
        _ => Ok(()),
    }
}

/// A trust domain name: lowercase `[a-z0-9._-]`, 1–255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not `spiffe://example.org`).
    ///
    /// Strict on purpose: an upper-case name is refused rather than lowercased, because
    /// the configured name is compared byte-for-byte with the trust domain of every
    /// SPIFFE ID a caller presents, and go-spiffe clients refuse upper case anyway.
    pub fn parse(name: &str) -> Result<TrustDomain, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if !name.bytes().all(is_trust_domain_char) {
            return Err(SpiffeIdError::BadTrustDomainChar);
        }
        Ok(TrustDomain(name.to_owned()))
    }

    /// [`parse`](Self::parse) as a field error; a value given with the `spiffe://`
    /// scheme gets a hint instead of a character error.
    pub fn parse_field(field: &str, name: &str) -> crate::Result<TrustDomain> {
        if name.starts_with(SCHEME_PREFIX) {
            return Err(Error::invalid(
                field,
                invalid_value(
                    name,
                    "must be a trust domain name without the spiffe:// scheme (e.g. 'example.org')",
                ),
            ));
        }
        TrustDomain::parse(name).map_err(|e| e.at(field, name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>` (names signing authorities and
    /// bundles; never a workload).
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID: trust domain plus a (possibly empty) path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or starting with `/`.
    path: String,
}

impl SpiffeId {
    /// Parses `spiffe://<td><path>` with go-spiffe's rules and the 2048/255 limits.
    /// The length is checked first, so an oversized input costs no further scanning.
    pub fn parse(id: &str) -> Result<SpiffeId, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let Some(rest) = id.strip_prefix(SCHEME_PREFIX) else {
            return Err(SpiffeIdError::WrongScheme);
        };
        let td_end = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_end);
        // Scan order as go-spiffe: the first bad character wins over a missing TD.
        if !td.bytes().all(is_trust_domain_char) {
            return Err(SpiffeIdError::BadTrustDomainChar);
        }
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if td.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        validate_path(path)?;
        Ok(SpiffeId {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// [`parse`](Self::parse) as an invalid-field error naming `field` and quoting the value.
    pub fn parse_field(field: &str, id: &str) -> crate::Result<SpiffeId> {
        SpiffeId::parse(id).map_err(|e| e.at(field, id))
    }

    /// The SPIFFE ID of service account `namespace/name` in `trust_domain`.
    ///
    /// The names are validated with Badge's object-name rules (namespace: RFC 1123 label,
    /// service account: RFC 1123 subdomain), which are a subset of the path-segment
    /// charset, so the result always parses; the errors name `namespace` / `name`.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        name: &str,
    ) -> crate::Result<SpiffeId> {
        Error::check(service_account_violations(
            namespace,
            name,
            "namespace",
            "name",
        ))?;
        Ok(SpiffeId {
            trust_domain: trust_domain.clone(),
            path: format!("/ns/{namespace}/sa/{name}"),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this is a trust domain's own ID (no path): never a workload identity.
    pub fn is_root(&self) -> bool {
        self.path.is_empty()
    }

    /// The service account this ID names: exactly four segments `ns/<namespace>/sa/<name>`
    /// with literal `ns` and `sa` and names valid as Kubernetes object names.
    ///
    /// Strict, because the answer decides whose certificate a request gets: any other
    /// shape (extra segments, `/sa/` first, an upper-case name that no Kubernetes object
    /// can have) is not a service account, rather than a near match. The error (for
    /// `field`) quotes the ID and says which rule failed.
    pub fn service_account(&self, field: &str) -> crate::Result<ServiceAccountRef<'_>> {
        let not_sa = |why: &str| {
            Error::invalid(
                field,
                invalid_value(
                    &self.to_string(),
                    &format!(
                        "not a service-account SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<name>): {why}"
                    ),
                ),
            )
        };
        let segments: Vec<&str> = self.path.split('/').skip(1).collect();
        let [ns_lit, namespace, sa_lit, name] = segments.as_slice() else {
            return Err(not_sa(&format!(
                "the path has {} segments, want 4",
                segments.len()
            )));
        };
        if *ns_lit != "ns" || *sa_lit != "sa" {
            return Err(not_sa("the path must be /ns/<namespace>/sa/<name>"));
        }
        let v = service_account_violations(namespace, name, field, field);
        if let Some(first) = v.into_iter().next() {
            return Err(not_sa(&first.description));
        }
        Ok(ServiceAccountRef { namespace, name })
    }
}

fn service_account_violations(
    namespace: &str,
    name: &str,
    ns_field: &str,
    name_field: &str,
) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    if namespace.is_empty() {
        v.push(FieldViolation::new(ns_field, "namespace is required"));
    }
    for e in validate_dns_label(namespace) {
        if !namespace.is_empty() {
            v.push(FieldViolation::new(
                ns_field,
                format!("namespace {}", invalid_value(namespace, &e)),
            ));
        }
    }
    if name.is_empty() {
        v.push(FieldViolation::new(
            name_field,
            "service account name is required",
        ));
    }
    for e in validate_dns_subdomain(name) {
        if !name.is_empty() {
            v.push(FieldViolation::new(
                name_field,
                format!("service account name {}", invalid_value(name, &e)),
            ));
        }
    }
    v
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

/// A service account named by a SPIFFE ID (borrowed from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAccountRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// The default trust domain: the host of the first service-account issuer URL,
/// lowercased, without port; [`FALLBACK_TRUST_DOMAIN`] when the issuer has no host
/// that is a valid trust domain (e.g. an IPv6 literal).
///
/// Why the issuer host: the issuer already names this Badge installation to every
/// relying party (it is in every token and in OIDC discovery), so its host is unique per
/// installation without new configuration, and two installations with different issuers
/// never share a trust domain by accident (a shared default such as `cluster.local`
/// would let one installation's certificates be accepted by the other's workloads when
/// bundles are merged). Meshes that want Istio's `cluster.local` set it explicitly.
pub fn default_trust_domain(issuer_url: &str) -> TrustDomain {
    let host = crate::oidc::parse_url(issuer_url)
        .ok()
        .and_then(|u| u.host)
        .map(str::to_ascii_lowercase);
    host.and_then(|h| TrustDomain::parse(&h).ok())
        .unwrap_or_else(|| TrustDomain(FALLBACK_TRUST_DOMAIN.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_valid_ids() {
        let long_path = format!("/{}", "a".repeat(MAX_SPIFFE_ID_LEN - "spiffe://td/".len()));
        let max_td = "t".repeat(MAX_TRUST_DOMAIN_LEN);
        let cases: Vec<(String, &str, &str)> = vec![
            ("spiffe://example.org".into(), "example.org", ""),
            (
                "spiffe://example.org/ns/default/sa/web".into(),
                "example.org",
                "/ns/default/sa/web",
            ),
            ("spiffe://a_b-c.9/x".into(), "a_b-c.9", "/x"),
            // Path is case-sensitive and allows upper case, dots inside segments.
            ("spiffe://td/A.b/..c/...".into(), "td", "/A.b/..c/..."),
            // IPv4-looking trust domains are syntactically fine.
            ("spiffe://10.0.0.1/x".into(), "10.0.0.1", "/x"),
            (format!("spiffe://td{long_path}"), "td", &long_path),
            (format!("spiffe://{max_td}"), &max_td, ""),
        ];
        for (input, td, path) in &cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain().as_str(), *td, "{input}");
            assert_eq!(id.path(), *path, "{input}");
            assert_eq!(id.to_string(), *input, "round trip");
            assert_eq!(id.is_root(), path.is_empty());
        }
        assert_eq!(
            format!("spiffe://td{long_path}").len(),
            MAX_SPIFFE_ID_LEN,
            "the long case is exactly at the limit"
        );
    }

    #[test]
    fn parse_rejects_with_go_spiffe_errors() {
        use SpiffeIdError as E;
        let too_long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let td_too_long = format!("spiffe://{}/x", "t".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        let cases: Vec<(String, E)> = vec![
            ("".into(), E::Empty),
            ("example.org/x".into(), E::WrongScheme),
            ("SPIFFE://example.org/x".into(), E::WrongScheme),
            ("spiffe:/example.org/x".into(), E::WrongScheme),
            ("https://example.org/x".into(), E::WrongScheme),
            ("spiffe://".into(), E::MissingTrustDomain),
            ("spiffe:///path".into(), E::MissingTrustDomain),
            ("spiffe://Example.org/x".into(), E::BadTrustDomainChar),
            ("spiffe://example.org:8080/x".into(), E::BadTrustDomainChar),
            ("spiffe://user@example.org/x".into(), E::BadTrustDomainChar),
            ("spiffe://[::1]/x".into(), E::BadTrustDomainChar),
            ("spiffe://ex%41mple.org/x".into(), E::BadTrustDomainChar),
            ("spiffe://example.org?q=1".into(), E::BadTrustDomainChar),
            ("spiffe://example.org/".into(), E::TrailingSlash),
            ("spiffe://example.org/a/".into(), E::TrailingSlash),
            ("spiffe://example.org//a".into(), E::EmptySegment),
            ("spiffe://example.org/a//b".into(), E::EmptySegment),
            ("spiffe://example.org/.".into(), E::DotSegment),
            ("spiffe://example.org/../a".into(), E::DotSegment),
            ("spiffe://example.org/a/./b".into(), E::DotSegment),
            ("spiffe://example.org/a%20b".into(), E::BadPathSegmentChar),
            ("spiffe://example.org/a?b".into(), E::BadPathSegmentChar),
            ("spiffe://example.org/a#b".into(), E::BadPathSegmentChar),
            ("spiffe://example.org/a:b".into(), E::BadPathSegmentChar),
            ("spiffe://example.org/é".into(), E::BadPathSegmentChar),
            (too_long, E::TooLong),
            (td_too_long, E::TrustDomainTooLong),
        ];
        for (input, want) in &cases {
            assert_eq!(SpiffeId::parse(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn error_texts_are_go_spiffes() {
        assert_eq!(
            SpiffeIdError::BadTrustDomainChar.to_string(),
            "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
        );
        assert_eq!(
            SpiffeIdError::WrongScheme.to_string(),
            "scheme is missing or invalid"
        );
        assert_eq!(
            SpiffeIdError::EmptySegment.to_string(),
            "path cannot contain empty segments"
        );
    }

    #[test]
    fn parse_field_names_the_field_and_quotes_the_value() {
        let err = SpiffeId::parse_field("csr.uri_san", "spiffe://EX/x").unwrap_err();
        let Error::Invalid(v) = err else {
            panic!("want Invalid")
        };
        assert_eq!(v[0].field, "csr.uri_san");
        assert!(v[0].description.contains("\"spiffe://EX/x\""), "{v:?}");
        assert!(
            v[0].description.contains("trust domain characters"),
            "{v:?}"
        );
    }

    #[test]
    fn validate_path_rules() {
        let cases: &[(&str, Result<(), SpiffeIdError>)] = &[
            ("", Ok(())),
            ("/a", Ok(())),
            ("a", Err(SpiffeIdError::NoLeadingSlash)),
            ("/", Err(SpiffeIdError::TrailingSlash)),
            ("/a/..", Err(SpiffeIdError::DotSegment)),
            // The first problem in scan order wins.
            ("/a b//", Err(SpiffeIdError::BadPathSegmentChar)),
            ("//a b", Err(SpiffeIdError::EmptySegment)),
        ];
        for (path, want) in cases {
            assert_eq!(validate_path(path), *want, "{path:?}");
        }
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(
            TrustDomain::parse("example.org").unwrap().id_string(),
            "spiffe://example.org"
        );
        let max = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(TrustDomain::parse(&max).is_ok());
        let cases: Vec<(String, SpiffeIdError)> = vec![
            ("".into(), SpiffeIdError::MissingTrustDomain),
            ("Example.org".into(), SpiffeIdError::BadTrustDomainChar),
            ("example.org:443".into(), SpiffeIdError::BadTrustDomainChar),
            ("example.org/x".into(), SpiffeIdError::BadTrustDomainChar),
            (
                "spiffe://example.org".into(),
                SpiffeIdError::BadTrustDomainChar,
            ),
            ("a".repeat(256), SpiffeIdError::TrustDomainTooLong),
        ];
        for (input, want) in &cases {
            assert_eq!(TrustDomain::parse(input), Err(*want), "{input:?}");
        }
        let Error::Invalid(v) =
            TrustDomain::parse_field("trust_domain", "spiffe://example.org").unwrap_err()
        else {
            panic!("want Invalid")
        };
        assert_eq!(v[0].field, "trust_domain");
        assert!(v[0].description.contains("without the spiffe:// scheme"));
    }

    #[test]
    fn service_account_round_trip() {
        let td = TrustDomain::parse("example.org").unwrap();
        let cases = [
            ("default", "default"),
            ("kube-system", "coredns"),
            ("a", "my.dotted-sa"),
            (&*"n".repeat(63), &*"s".repeat(253)),
        ];
        for (ns, sa) in cases {
            let id = SpiffeId::for_service_account(&td, ns, sa).unwrap();
            assert_eq!(
                id.to_string(),
                format!("spiffe://example.org/ns/{ns}/sa/{sa}")
            );
            // The ID we emit parses, and maps back to the same service account.
            let parsed = SpiffeId::parse(&id.to_string()).unwrap();
            assert_eq!(parsed, id);
            let sa_ref = parsed.service_account("id").unwrap();
            assert_eq!((sa_ref.namespace, sa_ref.name), (ns, sa));
        }
    }

    #[test]
    fn for_service_account_rejects_bad_names() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let td = TrustDomain::parse("td").unwrap();
        let cases: &[Case<'_>] = &[
            ("", "sa", &[("namespace", "namespace is required")]),
            ("ns", "", &[("name", "service account name is required")]),
            ("Ns", "sa", &[("namespace", "RFC 1123 label")]),
            ("a.b", "sa", &[("namespace", "RFC 1123 label")]),
            ("ns", "Sa", &[("name", "RFC 1123 subdomain")]),
            ("ns", "a_b", &[("name", "RFC 1123 subdomain")]),
            (
                "-",
                "x/y",
                &[
                    ("namespace", "RFC 1123 label"),
                    ("name", "RFC 1123 subdomain"),
                ],
            ),
        ];
        for (ns, sa, want) in cases {
            let Err(Error::Invalid(v)) = SpiffeId::for_service_account(&td, ns, sa) else {
                panic!("{ns:?}/{sa:?} should be invalid");
            };
            assert_eq!(v.len(), want.len(), "{ns:?}/{sa:?}: {v:?}");
            for (got, (field, text)) in v.iter().zip(want.iter()) {
                assert_eq!(got.field, *field, "{v:?}");
                assert!(got.description.contains(text), "{v:?} lacks {text:?}");
            }
        }
    }

    #[test]
    fn service_account_is_strict() {
        let cases: &[(&str, &str)] = &[
            ("spiffe://td", "has 0 segments"),
            ("spiffe://td/ns/a/sa", "has 3 segments"),
            ("spiffe://td/ns/a/sa/b/c", "has 5 segments"),
            ("spiffe://td/sa/b/ns/a", "must be /ns/<namespace>/sa/<name>"),
            ("spiffe://td/NS/a/sa/b", "must be /ns/<namespace>/sa/<name>"),
            (
                "spiffe://td/ns/a/serviceaccount/b",
                "must be /ns/<namespace>/sa/<name>",
            ),
            ("spiffe://td/ns/A/sa/b", "RFC 1123 label"),
            ("spiffe://td/ns/a_b/sa/b", "RFC 1123 label"),
            ("spiffe://td/ns/a/sa/B", "RFC 1123 subdomain"),
            ("spiffe://td/ns/a/sa/.b", "RFC 1123 subdomain"),
        ];
        for (input, want) in cases {
            let id = SpiffeId::parse(input).unwrap();
            let Err(Error::Invalid(v)) = id.service_account("uri_san") else {
                panic!("{input} should not be a service account");
            };
            assert_eq!(v[0].field, "uri_san");
            assert!(v[0].description.contains(want), "{input}: {v:?}");
            assert!(v[0].description.contains(&format!("{input:?}")), "{v:?}");
        }
    }

    #[test]
    fn default_trust_domain_from_issuer() {
        let cases = [
            ("https://badge.example.com", "badge.example.com"),
            ("https://Badge.Example.COM:8443/path", "badge.example.com"),
            (
                "https://kubernetes.default.svc.cluster.local",
                "kubernetes.default.svc.cluster.local",
            ),
            ("https://10.1.2.3:6443", "10.1.2.3"),
            ("https://[::1]:6443", FALLBACK_TRUST_DOMAIN),
            ("not a url", FALLBACK_TRUST_DOMAIN),
            ("", FALLBACK_TRUST_DOMAIN),
        ];
        for (issuer, want) in cases {
            assert_eq!(default_trust_domain(issuer).as_str(), want, "{issuer}");
        }
    }
}
