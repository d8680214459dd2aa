//! Service-account issuer discovery (OIDC): the two documents Kubernetes serves at
//! `/.well-known/openid-configuration` and `/openid/v1/jwks`
//! (`k8s.io/kubernetes/pkg/serviceaccount/openidmetadata.go`,
//! `k8s.io/kubernetes/pkg/routes/openidmetadata.go`). Pure: the caller serves them.
//!
//! Where Badge differs from Kubernetes on purpose:
//!
//! - The issuer URL check is stricter than Go's `url.Parse`: any `?` or `#` is
//!   refused (Go only refuses a non-empty query or fragment), the host may not be
//!   empty, and whitespace or control characters are refused anywhere.

use serde::Serialize;

/// Where the discovery document is served (always at the root, whatever path the
/// issuer URL has).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the key set is served.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// Content type of the discovery document.
pub const DISCOVERY_CONTENT_TYPE: &str = "application/json";
/// Content type of the key set.
pub const JWKS_CONTENT_TYPE: &str = "application/jwk-set+json";
/// `Cache-Control` max-age for static keys (Kubernetes' `GetCacheAgeMaxSeconds`).
pub const DEFAULT_CACHE_MAX_AGE_SECONDS: u64 = 3600;

/// Checks that `url` can be an issuer for discovery: it parses, its scheme is
/// `https` (any case, as Go lower-cases it), its host is not empty, and it has no
/// query and no fragment.
///
/// Errors: a message naming the problem and quoting the URL.
pub fn validate_issuer_url(url: &str) -> Result<(), String> {
    let parts = parse_url(url).map_err(|e| format!("issuer URL {url:?} does not parse: {e}"))?;
    if !parts
        .scheme
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err(format!("issuer URL must use https scheme, got: {url:?}"));
    }
    if parts.query.is_some() {
        return Err(format!("issuer URL may not include a query, got: {url:?}"));
    }
    if parts.fragment.is_some() {
        return Err(format!(
            "issuer URL may not include a fragment, got: {url:?}"
        ));
    }
    if parts.host.is_none_or(str::is_empty) {
        return Err(format!("issuer URL must have a host, got: {url:?}"));
    }
    Ok(())
}

/// Kubernetes' `openIDMetadata`; field order is the JSON order.
#[derive(Serialize)]
struct Discovery<'a> {
    issuer: &'a str,
    jwks_uri: &'a str,
    response_types_supported: [&'a str; 1],
    subject_types_supported: [&'a str; 1],
    id_token_signing_alg_values_supported: Vec<&'a str>,
}

/// The discovery document, compact JSON with exactly these fields in this order:
/// `issuer`, `jwks_uri`, `response_types_supported` (`["id_token"]`),
/// `subject_types_supported` (`["public"]`), `id_token_signing_alg_values_supported`
/// (`algs` sorted and de-duplicated).
pub fn discovery_document(issuer: &str, jwks_uri: &str, algs: &[&str]) -> String {
    let mut algs = algs.to_vec();
    algs.sort_unstable();
    algs.dedup();
    let doc = Discovery {
        issuer,
        jwks_uri,
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: algs,
    };
    // Serialising plain strings into a String cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

/// `https://<external_address>/openid/v1/jwks`, the `jwks_uri` when none is
/// configured.
pub fn default_jwks_uri(external_address: &str) -> String {
    format!("https://{external_address}{JWKS_PATH}")
}

/// `{"keys":[...]}` with `keys` in the given order.
pub fn jwks_document(keys: &[serde_json::Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

/// `public, max-age=<N>`.
pub fn cache_control(max_age_seconds: u64) -> String {
    format!("public, max-age={max_age_seconds}")
}

/// The pieces of a URL, split the RFC 3986 way. `host` is `None` when there is no
/// authority (`//...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    pub scheme: Option<&'a str>,
    pub host: Option<&'a str>,
    pub port: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fragment: Option<&'a str>,
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// A small, lenient URL parser: about what Go's `url.Parse` accepts, minus
/// whitespace. Refuses control characters and whitespace, bad `%` escapes, an
/// invalid or empty scheme before a `:` in the first segment, an invalid port and
/// invalid host characters.
pub(crate) fn parse_url(url: &str) -> Result<UrlParts<'_>, String> {
    if url.is_empty() {
        return Err("empty URL".to_string());
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_control() || b.is_ascii_whitespace())
    {
        return Err("invalid control or whitespace character in URL".to_string());
    }
    let bytes = url.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let ok = matches!(
                (bytes.get(i + 1), bytes.get(i + 2)),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()
            );
            if !ok {
                return Err("invalid URL escape".to_string());
            }
        }
    }

    let (rest, fragment) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };

    // A ':' before any '/' ends the scheme, which must then be a valid one.
    let first_segment_end = rest.find('/').unwrap_or(rest.len());
    let (scheme, rest) = match rest[..first_segment_end].find(':') {
        Some(0) => return Err("missing protocol scheme".to_string()),
        Some(i) => {
            let scheme = &rest[..i];
            if !is_scheme(scheme) {
                return Err(format!("invalid scheme {scheme:?}"));
            }
            (Some(scheme), &rest[i + 1..])
        }
        None => (None, rest),
    };

    let Some(after_slashes) = rest.strip_prefix("//") else {
        return Ok(UrlParts {
            scheme,
            host: None,
            port: None,
            path: rest,
            query,
            fragment,
        });
    };
    let authority_end = after_slashes.find('/').unwrap_or(after_slashes.len());
    let (authority, path) = after_slashes.split_at(authority_end);
    let host_port = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some(close) = v6.find(']') else {
            return Err("missing ']' in host".to_string());
        };
        let inside = &v6[..close];
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'%'))
        {
            return Err(format!("invalid IPv6 host {host_port:?}"));
        }
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("invalid characters after host {host_port:?}")),
        };
        (&host_port[..close + 2], port)
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if let Some(p) = port
        && !p.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("invalid port {p:?} after host"));
    }
    if !host.starts_with('[') && !host.bytes().all(is_host_byte) {
        return Err(format!("invalid character in host name {host:?}"));
    }
    Ok(UrlParts {
        scheme,
        host: Some(host),
        port,
        path,
        query,
        fragment,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls() {
        let ok = [
            "https://issuer.example.com",
            "https://issuer.example.com/",
            "https://issuer.example.com/some/path",
            "https://issuer.example.com:8443/x",
            "HTTPS://Issuer.Example.com",
            "https://[::1]:6443",
            "https://user@host.example/",
        ];
        for url in ok {
            assert_eq!(validate_issuer_url(url), Ok(()), "{url}");
        }
        let bad = [
            ("http://issuer.example.com", "https scheme"),
            ("issuer.example.com", "https scheme"),
            ("kubernetes/serviceaccount", "https scheme"),
            ("https://issuer.example.com?x=1", "query"),
            ("https://issuer.example.com?", "query"),
            ("https://issuer.example.com#frag", "fragment"),
            ("https://issuer.example.com/#", "fragment"),
            ("https://", "host"),
            ("https:///path", "host"),
            ("https:issuer.example.com", "host"),
            ("https://issuer.example.com:port", "does not parse"),
            ("https://iss uer.example.com", "does not parse"),
            ("https://issuer.example.com/%zz", "does not parse"),
            ("https://[::1", "does not parse"),
            ("://x", "does not parse"),
            ("", "does not parse"),
        ];
        for (url, want) in bad {
            let err = validate_issuer_url(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn url_parts() {
        let p = parse_url("https://u@h.example:8443/a/b?q=1#f").unwrap();
        assert_eq!(
            p,
            UrlParts {
                scheme: Some("https"),
                host: Some("h.example"),
                port: Some("8443"),
                path: "/a/b",
                query: Some("q=1"),
                fragment: Some("f"),
            }
        );
        let p = parse_url("foo/bar:baz").unwrap();
        assert_eq!((p.scheme, p.host, p.path), (None, None, "foo/bar:baz"));
        let p = parse_url("urn:example:thing").unwrap();
        assert_eq!(
            (p.scheme, p.host, p.path),
            (Some("urn"), None, "example:thing")
        );
        assert!(parse_url("1foo:bar").is_err());
        assert!(parse_url("a\tb:c").is_err());
        assert!(parse_url("https://h:80x").is_err());
    }

    #[test]
    fn discovery() {
        let doc = discovery_document(
            "https://issuer.example.com",
            "https://api.example.com:6443/openid/v1/jwks",
            &["RS256", "ES256", "RS256"],
        );
        assert_eq!(
            doc,
            r#"{"issuer":"https://issuer.example.com","jwks_uri":"https://api.example.com:6443/openid/v1/jwks","response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["ES256","RS256"]}"#
        );
        let empty = discovery_document("https://i", "https://j", &[]);
        assert!(empty.ends_with(r#""id_token_signing_alg_values_supported":[]}"#));
    }

    #[test]
    fn jwks_uri_and_headers() {
        assert_eq!(
            default_jwks_uri("api.example.com:6443"),
            "https://api.example.com:6443/openid/v1/jwks"
        );
        assert_eq!(cache_control(3600), "public, max-age=3600");
        assert_eq!(cache_control(0), "public, max-age=0");
        assert_eq!(
            cache_control(DEFAULT_CACHE_MAX_AGE_SECONDS),
            "public, max-age=3600"
        );
        assert_eq!(DISCOVERY_PATH, "/.well-known/openid-configuration");
        assert_eq!(JWKS_PATH, "/openid/v1/jwks");
        assert_eq!(DISCOVERY_CONTENT_TYPE, "application/json");
        assert_eq!(JWKS_CONTENT_TYPE, "application/jwk-set+json");
    }

    #[test]
    fn jwks() {
        assert_eq!(jwks_document(&[]), r#"{"keys":[]}"#);
        let k1 = serde_json::json!({"kty": "EC", "kid": "a", "use": "sig"});
        let k2 = serde_json::json!({"kty": "RSA", "kid": "b"});
        let doc = jwks_document(&[k1.clone(), k2.clone()]);
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed, serde_json::json!({"keys": [k1, k2]}));
        assert!(doc.starts_with(r#"{"keys":[{"#));
    }
}
