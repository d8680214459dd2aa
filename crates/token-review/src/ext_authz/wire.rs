//! Envoy's `CheckRequest` as Badge reads it: the fields the decision uses, with the
//! header and context-extension maps kept as the byte slices they arrived in.
//!
//! Why not the generated message: decoding Envoy's full `AttributeContext` builds a
//! `HashMap<String, String>` of every request header (a dozen or more: two
//! allocations and a SipHash each, plus rehashing) for the two or three Badge looks
//! at — measured at ~14 % of the server's CPU per Check, more than the decision
//! itself. These messages use the same field numbers and wire types, so they decode
//! exactly what Envoy sends: a map on the wire *is* a repeated key/value message,
//! and `string` and `bytes` share their encoding. Fields Badge does not read
//! (addresses, TLS session, metadata, the body, …) are skipped unparsed. The
//! generated server takes this type for `Check` (`build.rs`: `extern_path`);
//! reflection still serves Envoy's own descriptors.
//!
//! Map semantics are protobuf's: of repeated keys the last one wins
//! ([`lookup`] searches from the end). Text is validated once, in
//! [`CheckRequest::validate`], for every entry kept — a CheckRequest Envoy could
//! not have sent (non-UTF-8 text) is refused, as decoding the generated message
//! would refuse it.

use prost::bytes::Bytes;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext` (source, request, context_extensions).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// `map<string, string> context_extensions = 10`.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer` (principal, certificate).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(string, tag = "4")]
    pub principal: String,
    #[prost(string, tag = "5")]
    pub certificate: String,
}

/// `AttributeContext.Request` (http).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest` (method, headers, path, header_map).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// `map<string, string> headers = 3`.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(string, tag = "4")]
    pub path: String,
    /// Envoy's `encode_raw_headers: true` form of the headers.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// One entry of a `map<string, string>`, as the bytes it arrived in (slices of the
/// request buffer: no copy).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl Entry {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Entry {
        Entry {
            key: Bytes::from(key.into()),
            value: Bytes::from(value.into()),
        }
    }

    /// The key as text ("" if it is not UTF-8, which [`CheckRequest::validate`]
    /// refuses before anything reads it).
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or_default()
    }

    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or_default()
    }
}

/// The value of `key` in a decoded map: the last entry wins, as protobuf decodes
/// repeated map keys.
pub fn lookup<'a>(entries: &'a [Entry], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|e| e.key == key.as_bytes())
        .map(Entry::value_str)
}

fn all_text(entries: &[Entry]) -> bool {
    entries
        .iter()
        .all(|e| std::str::from_utf8(&e.key).is_ok() && std::str::from_utf8(&e.value).is_ok())
}

impl CheckRequest {
    /// `Err` names the field whose text is not UTF-8.
    pub fn validate(&self) -> Result<(), String> {
        let Some(ctx) = &self.attributes else {
            return Ok(());
        };
        if !all_text(&ctx.context_extensions) {
            return Err("attributes.context_extensions: a key or value is not UTF-8".into());
        }
        let http = ctx.request.as_ref().and_then(|r| r.http.as_ref());
        if http.is_some_and(|h| !all_text(&h.headers)) {
            return Err("attributes.request.http.headers: a key or value is not UTF-8".into());
        }
        Ok(())
    }
}

/// Check's answer as the server sends it: an `envoy.service.auth.v3.CheckResponse`
/// already encoded (`build.rs` makes it the generated server's response type).
///
/// Why: an allowed mesh peer's answer is kept and sent again for the same request
/// ([`super::ExtAuthz`]'s answer cache); as bytes, a repeat costs a reference count,
/// not the dozen allocations of rebuilding and re-encoding the message. Encode-only:
/// the server never decodes one (a decode skips every field).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckAnswer(pub Bytes);

impl CheckAnswer {
    /// `response` encoded.
    pub fn encode(response: &super::CheckResponse) -> CheckAnswer {
        CheckAnswer(Bytes::from(prost::Message::encode_to_vec(response)))
    }
}

impl prost::Message for CheckAnswer {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::ext_authz::pb::envoy::service::auth::v3 as envoy;
    use prost::Message;
    use std::collections::HashMap;

    /// What Envoy's own AttributeContext encodes, this one decodes: the fields Badge reads,
    /// everything else skipped.
    #[test]
    fn decodes_what_envoys_message_encodes() {
        use envoy::attribute_context::{HttpRequest as EHttp, Peer as EPeer, Request as EReq};
        let headers: HashMap<String, String> = [
            (":method", "GET"),
            (":path", "/a"),
            ("authorization", "Bearer t"),
            ("x-badge-user", "forged"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let attributes = envoy::AttributeContext {
            source: Some(EPeer {
                principal: "spiffe://td/ns/a/sa/b".into(),
                certificate: "PEM".into(),
                service: "skipped".into(),
                ..Default::default()
            }),
            destination: Some(EPeer {
                principal: "destination: skipped".into(),
                ..Default::default()
            }),
            request: Some(EReq {
                http: Some(EHttp {
                    id: "1".into(),
                    method: "GET".into(),
                    headers,
                    path: "/a?q".into(),
                    host: "h".into(),
                    body: "skipped".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("badge.dev/audiences".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        // Envoy's CheckRequest is `AttributeContext attributes = 1` (its generated
        // type is this module's, see build.rs): framed by hand.
        let mut full = Vec::new();
        prost::encoding::message::encode(1, &attributes, &mut full);
        let lean = CheckRequest::decode(full.as_slice()).unwrap();
        lean.validate().unwrap();
        let ctx = lean.attributes.unwrap();
        let peer = ctx.source.unwrap();
        assert_eq!(peer.principal, "spiffe://td/ns/a/sa/b");
        assert_eq!(peer.certificate, "PEM");
        let http = ctx.request.unwrap().http.unwrap();
        assert_eq!((http.method.as_str(), http.path.as_str()), ("GET", "/a?q"));
        assert_eq!(http.headers.len(), 4);
        assert_eq!(lookup(&http.headers, "authorization"), Some("Bearer t"));
        assert_eq!(lookup(&http.headers, "x-badge-user"), Some("forged"));
        assert_eq!(lookup(&http.headers, "absent"), None);
        assert_eq!(
            lookup(&ctx.context_extensions, "badge.dev/audiences"),
            Some("x")
        );
    }

    #[test]
    fn the_last_of_repeated_keys_wins_and_text_must_be_utf8() {
        let mut http = HttpRequest {
            headers: vec![
                Entry::new("authorization", "first"),
                Entry::new("authorization", "last"),
            ],
            ..Default::default()
        };
        assert_eq!(lookup(&http.headers, "authorization"), Some("last"));
        http.headers.push(Entry {
            key: Bytes::from_static(b"x-bad"),
            value: Bytes::from_static(b"\xff"),
        });
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request { http: Some(http) }),
                ..Default::default()
            }),
        };
        let e = req.validate().unwrap_err();
        assert!(e.starts_with("attributes.request.http.headers"), "{e}");
    }
}
