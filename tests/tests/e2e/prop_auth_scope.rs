//! Property test of the auth layer's request-scope extraction (issue 13): for every
//! scoped method of every service and any request body — structured protobuf with
//! duplicate and unknown fields, wrong wire types, the compressed flag set, truncated
//! frames, trailing bytes, a second message — the namespace and name the layer
//! authorizes (`badge_runtime::auth::first_message` + the rule's scope decoder) are
//! the ones the handler then receives through tonic's own unary framing. A body the
//! handler would accept is never one the layer cannot read.

#![allow(clippy::unwrap_used)]

#[path = "../../../crates/core/tests/prop_support/mod.rs"]
mod prop_support;

use std::sync::{Arc, Mutex};

use badge_runtime::auth::{MethodRule, ScopeFn, Target, first_message};
use http_body_util::Full;
use prop_support::{Stats, apply, edits};
use proptest::prelude::*;
use prost::bytes::{Buf as _, BufMut as _, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Every (path, scope decoder) of the services' method tables.
fn scoped_methods() -> Vec<(&'static str, ScopeFn)> {
    let mut tables: Vec<&[(&str, MethodRule)]> = badge_identity::METHOD_TABLES.to_vec();
    tables.push(badge_token_issuer::tokens::METHODS);
    tables.push(badge_token_issuer::external::METHODS);
    tables.push(badge_token_review::METHODS);
    tables.push(badge_token_review::access::METHODS);
    let methods: Vec<_> = tables
        .into_iter()
        .flatten()
        .filter_map(|(path, rule)| Some((*path, rule.scope?)))
        .collect();
    assert!(
        methods.len() > 20,
        "only {} scoped methods found",
        methods.len()
    );
    methods
}

/// The bytes tonic hands the request decoder, unchanged: the handler's prost
/// decode is `T::decode` of exactly these bytes, which is what the scope decoder
/// runs, so comparing the two is comparing the framing.
#[derive(Default)]
struct RawCodec;

struct RawDecoder;
struct RawEncoder;

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = Vec::with_capacity(src.remaining());
        while src.has_remaining() {
            let chunk = src.chunk();
            out.extend_from_slice(chunk);
            let n = chunk.len();
            src.advance(n);
        }
        Ok(Some(out))
    }
}

impl Encoder for RawEncoder {
    type Item = ();
    type Error = Status;
    fn encode(&mut self, _item: (), dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(b"");
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = ();
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// The message tonic's unary server path gives the handler, or `None` when it
/// refuses the body.
fn handler_message(rt: &tokio::runtime::Runtime, path: &str, body: &[u8]) -> Option<Vec<u8>> {
    let seen: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let svc = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |req: tonic::Request<Vec<u8>>| {
            *seen.lock().unwrap() = Some(req.into_inner());
            async { Ok::<_, Status>(tonic::Response::new(())) }
        })
    };
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let mut grpc = tonic::server::Grpc::new(RawCodec);
    rt.block_on(grpc.unary(svc, req));
    seen.lock().unwrap().take()
}

fn check(
    rt: &tokio::runtime::Runtime,
    path: &str,
    scope: ScopeFn,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let authorized: Option<Target> = first_message(body).ok().and_then(|m| scope(m).ok());
    let handled: Option<Target> = handler_message(rt, path, body).and_then(|m| scope(&m).ok());
    if let Some(h) = &handled {
        let a = authorized.as_ref().ok_or_else(|| {
            TestCaseError::fail(format!(
                "{path}: the handler reads {h:?}, the layer refuses"
            ))
        })?;
        prop_assert_eq!(a, h, "{}: authorized one target, handled another", path);
    }
    Ok(())
}

// ---- structured protobuf

#[derive(Debug, Clone)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
    Text(String),
    Message(Vec<(u32, Value)>),
    /// A tag with wire type 3, 4, 6 or 7 (groups, invalid).
    BadWire(u8),
}

fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..6, 1 => 6u32..20, 1 => 1000u32..(1 << 29)]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Value::Varint),
        any::<u64>().prop_map(Value::Fixed64),
        any::<u32>().prop_map(Value::Fixed32),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        prop_oneof![
            Just("ns".to_owned()),
            Just("a".to_owned()),
            "[a-z-]{0,6}",
            any::<String>()
        ]
        .prop_map(Value::Text),
        proptest::sample::select(vec![3u8, 4, 6, 7]).prop_map(Value::BadWire),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        proptest::collection::vec((field_number(), inner), 0..6).prop_map(Value::Message)
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode(fields: &[(u32, Value)], out: &mut Vec<u8>) {
    for (n, v) in fields {
        let tag = |wire: u64| (u64::from(*n) << 3) | wire;
        match v {
            Value::Varint(x) => {
                put_varint(out, tag(0));
                put_varint(out, *x);
            }
            Value::Fixed64(x) => {
                put_varint(out, tag(1));
                out.extend_from_slice(&x.to_le_bytes());
            }
            Value::Fixed32(x) => {
                put_varint(out, tag(5));
                out.extend_from_slice(&x.to_le_bytes());
            }
            Value::Bytes(b) => {
                put_varint(out, tag(2));
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Text(s) => {
                put_varint(out, tag(2));
                put_varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Message(m) => {
                let mut inner = Vec::new();
                encode(m, &mut inner);
                put_varint(out, tag(2));
                put_varint(out, inner.len() as u64);
                out.extend_from_slice(&inner);
            }
            Value::BadWire(w) => put_varint(out, tag(u64::from(*w))),
        }
    }
}

/// How the message is framed.
#[derive(Debug, Clone)]
struct Frame {
    flag: u8,
    /// Added to the true length (wrapping): 0 most of the time.
    length_delta: i64,
    /// Bytes after the frame (a second message, or garbage).
    trailing: Vec<u8>,
    /// Repeat the whole frame (a second message).
    twice: bool,
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![8 => Just(0i64), 1 => -8i64..8, 1 => any::<i64>()],
        prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 0..12)],
        any::<bool>(),
    )
        .prop_map(|(flag, length_delta, trailing, twice)| Frame {
            flag,
            length_delta,
            trailing,
            twice,
        })
}

fn framed(message: &[u8], f: &Frame) -> Vec<u8> {
    let len = (message.len() as i64).wrapping_add(f.length_delta) as u32;
    let mut one = vec![f.flag];
    one.extend_from_slice(&len.to_be_bytes());
    one.extend_from_slice(message);
    let mut out = one.clone();
    if f.twice {
        out.extend_from_slice(&one);
    }
    out.extend_from_slice(&f.trailing);
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn structured_requests_authorize_what_the_handler_reads() {
    let methods = scoped_methods();
    let rt = runtime();
    let stats = Stats::new("auth-scope/structured");
    let strategy = (
        any::<prop::sample::Index>(),
        proptest::collection::vec((field_number(), value()), 0..8),
        frame(),
        prop::option::of(edits(2)),
    );
    stats.run(1500, &strategy, |(i, fields, f, mutation)| {
        let (path, scope) = methods[i.index(methods.len())];
        let mut message = Vec::new();
        encode(&fields, &mut message);
        let mut body = framed(&message, &f);
        if let Some(e) = mutation {
            body = apply(&body, &e);
        }
        stats.case(body.len(), || check(&rt, path, scope, &body))
    });
}

#[test]
fn arbitrary_bodies_authorize_what_the_handler_reads() {
    let methods = scoped_methods();
    let rt = runtime();
    let stats = Stats::new("auth-scope/arbitrary");
    let strategy = (
        any::<prop::sample::Index>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    );
    stats.run(1500, &strategy, |(i, body)| {
        let (path, scope) = methods[i.index(methods.len())];
        stats.case(body.len(), || check(&rt, path, scope, &body))
    });
}

#[test]
fn every_scoped_method_reads_a_well_formed_request() {
    // Sanity for the comparison above: a plain framed message with fields 1 and 2
    // set is read by both sides, and agrees.
    let rt = runtime();
    for (path, scope) in scoped_methods() {
        let mut m = Vec::new();
        encode(
            &[(1, Value::Text("ns".into())), (2, Value::Text("a".into()))],
            &mut m,
        );
        let body = framed(
            &m,
            &Frame {
                flag: 0,
                length_delta: 0,
                trailing: Vec::new(),
                twice: false,
            },
        );
        assert!(handler_message(&rt, path, &body).is_some(), "{path}");
        check(&rt, path, scope, &body).unwrap();
    }
}
