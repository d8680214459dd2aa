//! Opaque list continuation tokens (AIP-158 style `page_token`/`next_page_token`).
//!
//! A token is `base64url-nopad(check || payload)`: `payload` is compact JSON of
//! [`PageToken`], `check` the first 8 bytes of SHA-256 over [`DOMAIN`] and the payload.
//!
//! The check is an integrity check, not a signature: the domain string is public, so
//! a determined client can mint a token. That is acceptable because a token only
//! carries a position ("continue after namespace/name") inside the list the request
//! already asks for: kind, namespace and selector are re-checked against the request,
//! and authorization is decided on the request, never on the token. What the check
//! buys is that random, truncated or hand-edited tokens fail loudly with
//! INVALID_ARGUMENT instead of silently restarting or skipping part of a list.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::selector::LabelSelector;
use crate::{Error, Kind, Result};

/// Domain separation for the check, versioned so a future format change makes old
/// tokens invalid rather than misread.
pub const DOMAIN: &[u8] = b"badge.page_token.v1\0";
/// `page_size` 0 means this many.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Larger `page_size`s are clamped to this, bounding the work one request can cause.
pub const MAX_PAGE_SIZE: usize = 1000;

const CHECK_LEN: usize = 8;
const INVALID: &str = "invalid page token";
const MISMATCH: &str =
    "page token does not match the request (kind/namespace/label_selector changed)";

/// Where a list stopped, and which list it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageToken {
    /// The kind's name (`Kind::as_str`).
    #[serde(rename = "k")]
    pub kind: String,
    /// The namespace filter of the request, "" for all namespaces / cluster scope.
    #[serde(rename = "s")]
    pub scope: String,
    /// The request's label selector in canonical form (`LabelSelector`'s `Display`).
    #[serde(rename = "l")]
    pub selector: String,
    /// The last item returned: the next page starts strictly after
    /// `(after_namespace, after_name)`.
    #[serde(rename = "n")]
    pub after_namespace: String,
    #[serde(rename = "m")]
    pub after_name: String,
}

fn check(payload: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(payload)
        .finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

impl PageToken {
    /// A token for the list `(kind, scope, selector)` that resumes after
    /// `(after_namespace, after_name)`.
    pub fn new(
        kind: Kind,
        scope: &str,
        selector: &LabelSelector,
        after_namespace: &str,
        after_name: &str,
    ) -> Self {
        PageToken {
            kind: kind.as_str().to_owned(),
            scope: scope.to_owned(),
            selector: selector.to_string(),
            after_namespace: after_namespace.to_owned(),
            after_name: after_name.to_owned(),
        }
    }

    /// The opaque string handed to clients as `next_page_token`.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings cannot fail; an empty payload would only
        // make the token undecodable, never wrong.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let mut raw = Vec::with_capacity(CHECK_LEN + payload.len());
        raw.extend_from_slice(&check(&payload));
        raw.extend_from_slice(&payload);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a client's `page_token` and checks that it was issued for the same
    /// list: kind, namespace filter and (canonical) label selector.
    ///
    /// Errors are `Invalid` on field `page_token`: "invalid page token" for anything
    /// that is not a token we issued, or "page token does not match the request ..."
    /// when the list parameters changed between pages, because resuming a different
    /// list from that position would silently skip or repeat items.
    pub fn decode(
        token: &str,
        kind: Kind,
        scope: &str,
        selector: &LabelSelector,
    ) -> Result<PageToken> {
        let invalid = || Error::invalid("page_token", INVALID);
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (sum, payload) = raw.split_at_checked(CHECK_LEN).ok_or_else(invalid)?;
        if sum != check(payload) {
            return Err(invalid());
        }
        let tok: PageToken = serde_json::from_slice(payload).map_err(|_| invalid())?;
        if tok.kind != kind.as_str() || tok.scope != scope || tok.selector != selector.to_string() {
            return Err(Error::invalid("page_token", MISMATCH));
        }
        Ok(tok)
    }

    /// [`PageToken::decode`] where an empty token means "first page" (`None`).
    pub fn decode_optional(
        token: &str,
        kind: Kind,
        scope: &str,
        selector: &LabelSelector,
    ) -> Result<Option<PageToken>> {
        if token.is_empty() {
            Ok(None)
        } else {
            Self::decode(token, kind, scope, selector).map(Some)
        }
    }
}

/// The number of items to return for a request's `page_size`: 0 means
/// [`DEFAULT_PAGE_SIZE`], larger than [`MAX_PAGE_SIZE`] is clamped, negative is
/// invalid.
pub fn page_size(requested: i32) -> Result<usize> {
    match usize::try_from(requested) {
        Err(_) => Err(Error::invalid(
            "page_size",
            format!("must not be negative, got {requested}"),
        )),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    fn sample() -> PageToken {
        PageToken::new(Kind::Pod, "ns1", &sel("app=web"), "ns1", "pod-7")
    }

    fn assert_invalid(r: Result<PageToken>, want: &str) {
        match r {
            Err(Error::Invalid(v)) => {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].field, "page_token");
                assert_eq!(v[0].description, want);
            }
            other => panic!("want Invalid({want:?}), got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let cases = [
            sample(),
            PageToken::new(
                Kind::Namespace,
                "",
                &LabelSelector::everything(),
                "",
                "kube-system",
            ),
            PageToken::new(
                Kind::ServiceAccount,
                "",
                &sel("a in (x,y),!b"),
                "zz-ns",
                "default",
            ),
            // Odd characters survive (names are validated elsewhere, the token must not care).
            PageToken::new(Kind::Secret, "n\"s", &sel(""), "é/\n", "\u{0}"),
        ];
        for t in cases {
            let enc = t.encode();
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "not url-safe: {enc}"
            );
            let kind: Kind = t.kind.parse().unwrap();
            let got = PageToken::decode(&enc, kind, &t.scope, &sel(&t.selector)).unwrap();
            assert_eq!(got, t);
        }
    }

    #[test]
    fn selector_spelling_does_not_matter() {
        let enc = PageToken::new(Kind::Pod, "ns1", &sel("b , a==x"), "ns1", "p").encode();
        assert!(PageToken::decode(&enc, Kind::Pod, "ns1", &sel("a=x,b")).is_ok());
    }

    #[test]
    fn garbage_is_invalid() {
        let good = sample().encode();
        let mut flipped = good.clone().into_bytes();
        // Change one payload character (past the 11 chars that hold the 8-byte check).
        let i = flipped.len() - 3;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();

        let forged_payload = {
            // A well-formed payload with a wrong check.
            let payload = serde_json::to_vec(&sample()).unwrap();
            let mut raw = vec![0u8; CHECK_LEN];
            raw.extend_from_slice(&payload);
            URL_SAFE_NO_PAD.encode(raw)
        };
        let right_check_wrong_json = {
            let payload = b"{\"k\":\"Pod\"}".to_vec();
            let mut raw = check(&payload).to_vec();
            raw.extend_from_slice(&payload);
            URL_SAFE_NO_PAD.encode(raw)
        };
        let unknown_field = {
            let mut v = serde_json::to_value(sample()).unwrap();
            v["x"] = serde_json::json!("extra");
            let payload = serde_json::to_vec(&v).unwrap();
            let mut raw = check(&payload).to_vec();
            raw.extend_from_slice(&payload);
            URL_SAFE_NO_PAD.encode(raw)
        };
        let cases = [
            String::new(),
            "x".to_owned(),
            "not base64!".to_owned(),
            "AAAA".to_owned(),
            good[..good.len() - 1].to_owned(),
            good[..10].to_owned(),
            format!("{good}A"),
            format!("{good}="),
            flipped,
            forged_payload,
            right_check_wrong_json,
            unknown_field,
        ];
        for c in cases {
            assert_invalid(
                PageToken::decode(&c, Kind::Pod, "ns1", &sel("app=web")),
                "invalid page token",
            );
        }
    }

    #[test]
    fn different_list_is_a_mismatch() {
        let good = sample().encode();
        let cases: &[(Kind, &str, &str)] = &[
            (Kind::Secret, "ns1", "app=web"),
            (Kind::Pod, "ns2", "app=web"),
            (Kind::Pod, "", "app=web"),
            (Kind::Pod, "ns1", ""),
            (Kind::Pod, "ns1", "app=db"),
            (Kind::Pod, "ns1", "app!=web"),
        ];
        for (kind, scope, selector) in cases {
            assert_invalid(
                PageToken::decode(&good, *kind, scope, &sel(selector)),
                MISMATCH,
            );
        }
        assert!(PageToken::decode(&good, Kind::Pod, "ns1", &sel("app=web")).is_ok());
    }

    #[test]
    fn optional() {
        let s = sel("app=web");
        assert_eq!(
            PageToken::decode_optional("", Kind::Pod, "ns1", &s).unwrap(),
            None
        );
        assert_eq!(
            PageToken::decode_optional(&sample().encode(), Kind::Pod, "ns1", &s).unwrap(),
            Some(sample())
        );
        assert!(PageToken::decode_optional("junk", Kind::Pod, "ns1", &s).is_err());
    }

    #[test]
    fn page_sizes() {
        let cases: &[(i32, usize)] = &[
            (0, 100),
            (1, 1),
            (100, 100),
            (999, 999),
            (1000, 1000),
            (1001, 1000),
            (i32::MAX, 1000),
        ];
        for (req, want) in cases {
            assert_eq!(page_size(*req).unwrap(), *want, "page_size({req})");
        }
        for req in [-1, i32::MIN] {
            let err = page_size(req).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("page_size: must not be negative, got {req}")
            );
        }
    }
}
