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
//! generated server takes [`RawCheckRequest`] for `Check` (`build.rs`:
//! `extern_path`): the request's bytes, read lean for an answer-cache lookup and
//! decoded into these messages otherwise; reflection still serves Envoy's own
//! descriptors.
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

/// `envoy.service.auth.v3.CheckRequest` as the server receives it: the encoded
/// `attributes` (every occurrence of field 1; an embedded message and `bytes` share
/// their wire type), decoded only when needed (`build.rs` makes it the generated
/// server's request type).
///
/// Why: a mesh peer's repeat request is answered from the cache by [`Lean`], which
/// reads the few fields the cache needs from these bytes without allocating;
/// decoding the whole request (a `Vec` and two reference-counted slices per header)
/// was the largest cost left on that path. Every other request is decoded in full
/// ([`RawCheckRequest::decode_full`]), exactly as before.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawCheckRequest {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub attributes: Vec<Bytes>,
}

impl RawCheckRequest {
    /// The request decoded in full. Occurrences of `attributes` are merged, as
    /// protobuf merges a repeated embedded message.
    pub fn decode_full(&self) -> Result<CheckRequest, prost::DecodeError> {
        let mut attributes: Option<AttributeContext> = None;
        for b in &self.attributes {
            prost::Message::merge(attributes.get_or_insert_with(Default::default), b.clone())?;
        }
        Ok(CheckRequest { attributes })
    }

    /// The fields an answer-cache lookup reads, when the request has the plain shape
    /// Envoy sends (see [`Lean`]); `None`: decode it in full.
    pub fn lean(&self) -> Option<Lean<'_>> {
        match self.attributes.as_slice() {
            [one] => Lean::read(one),
            _ => None,
        }
    }
}

/// A protobuf field as [`fields`] reads it.
enum Field<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

/// The fields of an encoded message, in order; an `Err` (a malformed field, or a
/// group, which Envoy's messages do not have) ends them.
fn fields(b: &[u8]) -> Fields<'_> {
    Fields { b }
}

struct Fields<'a> {
    b: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.b.is_empty() {
            return None;
        }
        let r = read_field(&mut self.b);
        if r.is_err() {
            self.b = &[];
        }
        Some(r)
    }
}

fn varint(b: &mut &[u8]) -> Result<u64, ()> {
    prost::encoding::decode_varint(b).map_err(|_| ())
}

fn read_field<'a>(b: &mut &'a [u8]) -> Result<(u32, Field<'a>), ()> {
    let key = varint(b)?;
    let tag = u32::try_from(key >> 3).map_err(|_| ())?;
    if tag == 0 {
        return Err(());
    }
    let cur: &'a [u8] = b;
    let field = match key & 7 {
        0 => {
            varint(b)?;
            Field::Scalar
        }
        1 => {
            *b = cur.get(8..).ok_or(())?;
            Field::Scalar
        }
        2 => {
            let len = usize::try_from(varint(b)?).map_err(|_| ())?;
            let cur: &'a [u8] = b;
            let v = cur.get(..len).ok_or(())?;
            *b = &cur[len..];
            Field::Bytes(v)
        }
        5 => {
            *b = cur.get(4..).ok_or(())?;
            Field::Scalar
        }
        _ => return Err(()),
    };
    Ok((tag, field))
}

/// A `map<string, string>` entry's key and value (the last of each wins, as
/// protobuf decodes them); `None` if malformed or not UTF-8.
fn entry(b: &[u8]) -> Option<(&str, &str)> {
    let (mut k, mut v): (&[u8], &[u8]) = (&[], &[]);
    for f in fields(b) {
        match f.ok()? {
            (1, Field::Bytes(x)) => k = x,
            (2, Field::Bytes(x)) => v = x,
            (1 | 2, Field::Scalar) => return None,
            _ => {}
        }
    }
    Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))
}

/// Text of a `string` field (`None` if not UTF-8: the full decode refuses it).
fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// What an answer-cache lookup reads of a CheckRequest, borrowed from its bytes.
///
/// Read only from a request of the plain shape Envoy sends: every message Badge
/// reads present at most once, no `header_map` (Envoy's `encode_raw_headers`),
/// every header and context extension valid UTF-8, nothing malformed. Anything else
/// is `None` and the request is decoded in full, so this reading never has to
/// reproduce protobuf's merging of repeated messages or the validation's answers.
/// Header and extension maps keep protobuf's rule: of repeated keys the last wins.
#[derive(Debug, Default)]
pub struct Lean<'a> {
    /// `source.principal`, `source.certificate`.
    pub principal: &'a str,
    pub certificate: &'a str,
    /// `request.http.method` (else the `:method` header) and `path` (else `:path`).
    pub method: &'a str,
    pub path: &'a str,
    /// The `authorization` header (the last one).
    pub authorization: Option<&'a str>,
    /// Whether a header's key starts with `x-badge-` (ASCII case-insensitive):
    /// the answer must then remove it.
    pub badge_header: bool,
    /// `context_extensions`, in order.
    pub extensions: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Lean<'a> {
    fn read(b: &'a [u8]) -> Option<Lean<'a>> {
        let mut lean = Lean::default();
        let (mut source, mut request) = (false, false);
        let (mut method_header, mut path_header) = (None, None);
        for f in fields(b) {
            match f.ok()? {
                (1, Field::Bytes(peer)) => {
                    if std::mem::replace(&mut source, true) {
                        return None;
                    }
                    for f in fields(peer) {
                        match f.ok()? {
                            (4, Field::Bytes(x)) => lean.principal = text(x)?,
                            (5, Field::Bytes(x)) => lean.certificate = text(x)?,
                            (4 | 5, Field::Scalar) => return None,
                            _ => {}
                        }
                    }
                }
                (4, Field::Bytes(req)) => {
                    if std::mem::replace(&mut request, true) {
                        return None;
                    }
                    let mut http_seen = false;
                    for f in fields(req) {
                        match f.ok()? {
                            (2, Field::Bytes(http)) => {
                                if std::mem::replace(&mut http_seen, true) {
                                    return None;
                                }
                                for f in fields(http) {
                                    match f.ok()? {
                                        (2, Field::Bytes(x)) => lean.method = text(x)?,
                                        (3, Field::Bytes(x)) => {
                                            let (k, v) = entry(x)?;
                                            match k {
                                                ":method" => method_header = Some(v),
                                                ":path" => path_header = Some(v),
                                                "authorization" => lean.authorization = Some(v),
                                                _ => {}
                                            }
                                            lean.badge_header |= is_badge_header(k);
                                        }
                                        (4, Field::Bytes(x)) => lean.path = text(x)?,
                                        // Raw header maps are folded by the full path.
                                        (13, _) => return None,
                                        (2..=4, Field::Scalar) => return None,
                                        _ => {}
                                    }
                                }
                            }
                            (2, Field::Scalar) => return None,
                            _ => {}
                        }
                    }
                }
                (10, Field::Bytes(x)) => {
                    let (k, v) = entry(x)?;
                    lean.extensions.push((k.as_bytes(), v.as_bytes()));
                }
                (1 | 4 | 10, Field::Scalar) => return None,
                _ => {}
            }
        }
        // As `http_view`: the dedicated fields win, the pseudo-headers cover a
        // client that only fills headers.
        if lean.method.is_empty() {
            lean.method = method_header.unwrap_or_default();
        }
        if lean.path.is_empty() {
            lean.path = path_header.unwrap_or_default();
        }
        Some(lean)
    }
}

/// Whether a header key is one of Badge's (`x-badge-*`, any case): a client's must
/// be removed.
pub fn is_badge_header(key: &str) -> bool {
    key.as_bytes()
        .get(..super::HEADER_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(super::HEADER_PREFIX.as_bytes()))
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

        // The server's reading: the same request, decoded in full or read lean.
        let raw = RawCheckRequest::decode(full.as_slice()).unwrap();
        assert_eq!(
            raw.decode_full().unwrap(),
            CheckRequest::decode(full.as_slice()).unwrap()
        );
        let l = raw.lean().expect("Envoy's plain shape is read lean");
        assert_eq!(
            (l.principal, l.certificate, l.method, l.path),
            ("spiffe://td/ns/a/sa/b", "PEM", "GET", "/a?q")
        );
        assert_eq!(l.authorization, Some("Bearer t"));
        assert!(l.badge_header);
        assert_eq!(
            l.extensions,
            vec![(b"badge.dev/audiences".as_slice(), b"x".as_slice())]
        );
    }

    /// The lean reading: the pseudo-headers stand in for empty fields, the last of
    /// repeated header keys wins, and every shape it does not reproduce is left to
    /// the full decode.
    #[test]
    fn the_lean_reading_leaves_unusual_shapes_to_the_full_decode() {
        let http = HttpRequest {
            headers: vec![
                Entry::new(":method", "POST"),
                Entry::new(":path", "/p"),
                Entry::new("authorization", "first"),
                Entry::new("authorization", "Bearer last"),
            ],
            ..Default::default()
        };
        let ctx = AttributeContext {
            source: Some(Peer {
                principal: "spiffe://td/ns/a/sa/b".into(),
                certificate: String::new(),
            }),
            request: Some(Request {
                http: Some(http.clone()),
            }),
            context_extensions: vec![],
        };
        let encode = |ctx: &AttributeContext| {
            RawCheckRequest::decode(
                CheckRequest {
                    attributes: Some(ctx.clone()),
                }
                .encode_to_vec()
                .as_slice(),
            )
            .unwrap()
        };
        let raw = encode(&ctx);
        let l = raw.lean().unwrap();
        assert_eq!((l.method, l.path), ("POST", "/p"));
        assert_eq!(l.authorization, Some("Bearer last"));
        assert!(!l.badge_header);
        assert!(l.extensions.is_empty());

        // Raw header maps (Envoy's encode_raw_headers) are folded by the full path.
        let mut with_map = ctx.clone();
        with_map
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .header_map = Some(HeaderMap::default());
        assert!(encode(&with_map).lean().is_none());
        // Non-UTF-8 header text is refused by the full path's validation.
        let mut bad = ctx.clone();
        bad.request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .headers
            .push(Entry {
                key: Bytes::from_static(b"x"),
                value: Bytes::from_static(b"\xff"),
            });
        assert!(encode(&bad).lean().is_none());
        // A message repeated (protobuf merges the occurrences) or a request split
        // over two `attributes` fields.
        let mut twice = CheckRequest {
            attributes: Some(ctx.clone()),
        }
        .encode_to_vec();
        twice.extend(
            CheckRequest {
                attributes: Some(ctx.clone()),
            }
            .encode_to_vec(),
        );
        let raw = RawCheckRequest::decode(twice.as_slice()).unwrap();
        assert!(raw.lean().is_none());
        // Merged as the generated message merges them (repeated fields appended).
        assert_eq!(
            raw.decode_full().unwrap(),
            CheckRequest::decode(twice.as_slice()).unwrap()
        );
        let mut source_twice = Vec::new();
        prost::encoding::message::encode(1, ctx.source.as_ref().unwrap(), &mut source_twice);
        prost::encoding::message::encode(1, ctx.source.as_ref().unwrap(), &mut source_twice);
        let mut framed = Vec::new();
        prost::encoding::bytes::encode(1, &source_twice, &mut framed);
        assert!(
            RawCheckRequest::decode(framed.as_slice())
                .unwrap()
                .lean()
                .is_none()
        );
        // Malformed bytes.
        let raw = RawCheckRequest {
            attributes: vec![Bytes::from_static(&[0x0a, 0x05, 0x01])],
        };
        assert!(raw.lean().is_none());
        assert!(raw.decode_full().is_err());
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
