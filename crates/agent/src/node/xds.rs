//! The state-of-the-world xDS protocol of one SDS stream (Envoy's
//! `xds_protocol.rst`), apart from any IO so it can be tested with a fixed clock:
//!
//! - the first request (empty `response_nonce`) is answered as soon as its
//!   resources exist;
//! - a request whose `response_nonce` is not the last nonce sent is stale: ignored;
//! - **ACK** = `response_nonce` = last nonce, no `error_detail`: recorded; answered
//!   only if the subscription gained a name (or the content changed meanwhile);
//! - **NACK** = `error_detail` set: logged by the caller, the last good version
//!   stays what Envoy serves, nothing is re-sent until the content changes;
//! - a content change (rotation, bundle) sends a new version when the subscribed
//!   resources differ from what was last sent; identical content is never re-sent.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// The parts of a `DiscoveryRequest` the protocol looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub version_info: String,
    pub resource_names: Vec<String>,
    pub response_nonce: String,
    /// `error_detail`: (code, message), a NACK.
    pub error: Option<(i32, String)>,
}

/// What a request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The stream's first request (or a new subscription after an ACK).
    Initial,
    Ack {
        version: String,
    },
    Nack {
        nonce: String,
        message: String,
    },
    /// Answers a response that was superseded: ignored.
    Stale,
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub version: String,
    pub nonce: String,
    /// Names of the resources, each with its encoded `Secret`.
    pub resources: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Sent {
    nonce: String,
    content: BTreeMap<String, Vec<u8>>,
}

/// One stream's protocol state.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    names: Vec<String>,
    /// Set once the first request arrived.
    started: bool,
    sent: Option<Sent>,
    versions: u64,
    nonces: u64,
    /// Whether a name was added since the last response.
    grew: bool,
    /// The version Envoy last acknowledged, and when.
    pub acked: Option<(String, SystemTime)>,
    /// The last rejection: when, nonce, message.
    pub last_nack: Option<(SystemTime, String, String)>,
}

impl Stream {
    /// The subscribed names (empty: everything the caller may have).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Classifies `req` and updates the subscription.
    pub fn on_request(&mut self, req: &Request, now: SystemTime) -> Verdict {
        let last_nonce = self.sent.as_ref().map(|s| s.nonce.as_str());
        if !req.response_nonce.is_empty() && Some(req.response_nonce.as_str()) != last_nonce {
            return Verdict::Stale;
        }
        let grew = req.resource_names.iter().any(|n| !self.names.contains(n))
            || (self.names.is_empty() != req.resource_names.is_empty() && self.started);
        self.names = req.resource_names.clone();
        self.started = true;
        self.grew |= grew;
        if let Some((_, message)) = &req.error {
            self.last_nack = Some((now, req.response_nonce.clone(), message.clone()));
            return Verdict::Nack {
                nonce: req.response_nonce.clone(),
                message: message.clone(),
            };
        }
        if req.response_nonce.is_empty() {
            self.grew = true;
            return Verdict::Initial;
        }
        self.acked = Some((req.version_info.clone(), now));
        Verdict::Ack {
            version: req.version_info.clone(),
        }
    }

    /// The response to send for `content` (the subscribed resources as they are
    /// now), if any: when a name was added since the last response, or when any
    /// resource differs from what was last sent.
    pub fn respond(&mut self, content: BTreeMap<String, Vec<u8>>) -> Option<Response> {
        if !self.started {
            return None;
        }
        let changed = match &self.sent {
            None => true,
            Some(s) => content.iter().any(|(k, v)| s.content.get(k) != Some(v)),
        };
        if !(changed || self.grew) || content.is_empty() {
            return None;
        }
        self.grew = false;
        if changed {
            self.versions += 1;
        }
        self.nonces += 1;
        let version = self.versions.to_string();
        let nonce = format!("{:08x}", self.nonces);
        self.sent = Some(Sent {
            nonce: nonce.clone(),
            content: content.clone(),
        });
        Some(Response {
            version,
            nonce,
            resources: content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn req(names: &[&str], version: &str, nonce: &str) -> Request {
        Request {
            version_info: version.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            error: None,
        }
    }

    fn content(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn initial_ack_rotation_ack() {
        let mut s = Stream::default();
        assert_eq!(
            s.respond(content(&[("default", b"c1")])),
            None,
            "no request yet"
        );
        assert_eq!(
            s.on_request(&req(&["default", "ROOTCA"], "", ""), t(0)),
            Verdict::Initial
        );
        let r1 = s
            .respond(content(&[("default", b"c1"), ("ROOTCA", b"r1")]))
            .expect("first answer");
        assert_eq!((r1.version.as_str(), r1.nonce.as_str()), ("1", "00000001"));
        assert_eq!(r1.resources.len(), 2);
        // ACK: nothing to send.
        assert_eq!(
            s.on_request(&req(&["default", "ROOTCA"], "1", &r1.nonce), t(1)),
            Verdict::Ack {
                version: "1".into()
            }
        );
        assert_eq!(s.acked, Some(("1".into(), t(1))));
        assert_eq!(
            s.respond(content(&[("default", b"c1"), ("ROOTCA", b"r1")])),
            None
        );
        // Rotation: a new version with both.
        let r2 = s
            .respond(content(&[("default", b"c2"), ("ROOTCA", b"r1")]))
            .expect("push");
        assert_eq!(r2.version, "2");
        assert_ne!(r2.nonce, r1.nonce);
        // Identical content again: nothing.
        assert_eq!(
            s.respond(content(&[("default", b"c2"), ("ROOTCA", b"r1")])),
            None
        );
    }

    #[test]
    fn nack_keeps_the_last_good_version_and_stale_requests_are_ignored() {
        let mut s = Stream::default();
        s.on_request(&req(&["default"], "", ""), t(0));
        let r1 = s.respond(content(&[("default", b"c1")])).expect("r1");
        s.on_request(&req(&["default"], "1", &r1.nonce), t(1));
        let r2 = s.respond(content(&[("default", b"c2")])).expect("r2");
        // A late ACK of r1 (its nonce is no longer the last): stale.
        assert_eq!(
            s.on_request(&req(&["default"], "1", &r1.nonce), t(2)),
            Verdict::Stale
        );
        // NACK of r2: version_info stays the last good one.
        let mut nack = req(&["default"], "1", &r2.nonce);
        nack.error = Some((3, "bad key".into()));
        assert_eq!(
            s.on_request(&nack, t(3)),
            Verdict::Nack {
                nonce: r2.nonce.clone(),
                message: "bad key".into()
            }
        );
        assert_eq!(
            s.last_nack,
            Some((t(3), r2.nonce.clone(), "bad key".into()))
        );
        assert_eq!(s.acked, Some(("1".into(), t(1))), "still the last ACK");
        // Nothing re-sent for the same content; a new one is.
        assert_eq!(s.respond(content(&[("default", b"c2")])), None);
        let r3 = s.respond(content(&[("default", b"c3")])).expect("r3");
        assert_eq!(r3.version, "3");
    }

    #[test]
    fn a_new_name_is_answered_even_if_nothing_changed() {
        let mut s = Stream::default();
        s.on_request(&req(&["default"], "", ""), t(0));
        let r1 = s.respond(content(&[("default", b"c1")])).expect("r1");
        // ACK that also subscribes ROOTCA.
        s.on_request(&req(&["default", "ROOTCA"], "1", &r1.nonce), t(1));
        let r2 = s
            .respond(content(&[("default", b"c1"), ("ROOTCA", b"r1")]))
            .expect("new name");
        assert_eq!(r2.resources.len(), 2);
        // Dropping a name needs no answer.
        s.on_request(&req(&["ROOTCA"], &r2.version, &r2.nonce), t(2));
        assert_eq!(s.respond(content(&[("ROOTCA", b"r1")])), None);
        assert_eq!(s.names(), ["ROOTCA"]);
    }

    #[test]
    fn nothing_is_sent_before_the_resources_exist() {
        let mut s = Stream::default();
        s.on_request(&req(&["default"], "", ""), t(0));
        assert_eq!(s.respond(BTreeMap::new()), None);
        assert!(s.respond(content(&[("default", b"c1")])).is_some());
    }
}
