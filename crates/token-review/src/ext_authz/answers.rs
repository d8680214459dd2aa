//! Answers kept for repeat mesh-peer checks.
//!
//! A mesh peer asks the same thing over and over (the same SPIFFE ID, method, path
//! and route), and the answer is a function of the request and of the index: the
//! service account (and, with a certificate, the pod) and the RBAC objects. An
//! allowed peer's answer is kept, already encoded, with the index generations it
//! was computed at; a repeat with the same generations costs a hash lookup.
//!
//! Security (revocation): the generations of every kind an answer read are part of
//! its tag, and they are read *before* the answer is computed, so a change the
//! index has applied — a deleted or re-created service account or pod, any RBAC
//! object created, changed or deleted — makes every kept answer stale on the next
//! Check, exactly as the uncached path would see it. Only what the request itself
//! decides is the key (principal, certificate, method, path without its query, the
//! route's context extensions); everything else that could change the answer keeps a
//! request off this path (`ExtAuthz::answer_key`: a bearer token, a client
//! `x-badge-*` header) or is never kept (denials, anonymous and bearer requesters,
//! an account or pod already marked for deletion — its deletion leeway is a matter
//! of time, not of generations).
//!
//! Bounded: at most [`MAX_ENTRIES`] answers and [`MAX_BYTES`] of keys; when full the
//! whole map is dropped (the next checks take the full path and refill it), so a
//! caller cycling through paths costs memory only up to the bound.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

use badge_core::rbac::Attributes;

use super::Requester;
use super::wire::CheckAnswer;

/// The most answers kept.
pub const MAX_ENTRIES: usize = 4096;
/// The most bytes of keys kept (a certificate can be a few KiB).
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// A request whose key is larger than this is not kept (a long path or a large
/// context extension would crowd out the rest).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// What a request decides of its answer (see the module documentation).
#[derive(Debug, Clone)]
pub struct Key<'a> {
    pub principal: &'a str,
    /// `source.certificate` as sent (URL-encoded PEM; empty without one).
    pub certificate: &'a str,
    pub method: &'a str,
    /// `:path` without query and fragment (all RBAC reads of it).
    pub path: &'a str,
    /// `context_extensions` (key, value), in order.
    pub extensions: Vec<(&'a [u8], &'a [u8])>,
}

impl Key<'_> {
    fn len(&self) -> usize {
        self.principal.len()
            + self.certificate.len()
            + self.method.len()
            + self.path.len()
            + self
                .extensions
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The index generations an answer was computed at: (the identity kinds it read,
/// the RBAC kinds).
pub type Tag = (u64, u64);

/// A context extension's key and value, copied.
type Extension = (Box<[u8]>, Box<[u8]>);

/// One kept answer.
pub struct Answer {
    principal: String,
    certificate: String,
    method: String,
    path: String,
    extensions: Vec<Extension>,
    tag: Tag,
    size: usize,
    /// Who was allowed (audit and metrics of a repeat).
    pub requester: Requester,
    /// What was allowed (audit).
    pub attrs: Attributes,
    pub encoded: CheckAnswer,
}

impl Answer {
    fn matches(&self, k: &Key<'_>) -> bool {
        self.principal == k.principal
            && self.certificate == k.certificate
            && self.method == k.method
            && self.path == k.path
            && self.extensions.len() == k.extensions.len()
            && self
                .extensions
                .iter()
                .zip(&k.extensions)
                .all(|((a, b), (c, d))| **a == **c && **b == **d)
    }
}

#[derive(Default)]
struct Map {
    /// By the key's hash; the entry holds the whole key, compared on every hit.
    entries: HashMap<u64, Arc<Answer>>,
    bytes: usize,
}

/// The kept answers of one `ExtAuthz`.
#[derive(Default)]
pub struct Answers {
    hasher: std::collections::hash_map::RandomState,
    map: RwLock<Map>,
}

impl Answers {
    fn hash(&self, k: &Key<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        k.principal.hash(&mut h);
        k.certificate.hash(&mut h);
        k.method.hash(&mut h);
        k.path.hash(&mut h);
        for (key, value) in &k.extensions {
            key.hash(&mut h);
            value.hash(&mut h);
        }
        h.finish()
    }

    /// The answer kept for `k`, if it was computed at generations `tag`.
    pub fn get(&self, k: &Key<'_>, tag: Tag) -> Option<Arc<Answer>> {
        let h = self.hash(k);
        let map = self.map.read().ok()?;
        let a = map.entries.get(&h)?;
        (a.tag == tag && a.matches(k)).then(|| a.clone())
    }

    /// Keeps an allowed answer computed at `tag` (read before it was computed).
    pub fn insert(
        &self,
        k: &Key<'_>,
        tag: Tag,
        requester: &Requester,
        attrs: &Attributes,
        encoded: &CheckAnswer,
    ) {
        let size = k.len();
        if size > MAX_KEY_BYTES {
            return;
        }
        let h = self.hash(k);
        let answer = Arc::new(Answer {
            principal: k.principal.to_owned(),
            certificate: k.certificate.to_owned(),
            method: k.method.to_owned(),
            path: k.path.to_owned(),
            // Copies: the entries are slices of the whole request's buffer.
            extensions: k
                .extensions
                .iter()
                .map(|(key, value)| (Box::from(*key), Box::from(*value)))
                .collect(),
            tag,
            size,
            requester: requester.clone(),
            attrs: attrs.clone(),
            encoded: encoded.clone(),
        });
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if map.entries.len() >= MAX_ENTRIES || map.bytes + size > MAX_BYTES {
            map.entries.clear();
            map.bytes = 0;
        }
        if let Some(old) = map.entries.insert(h, answer) {
            map.bytes -= old.size;
        }
        map.bytes += size;
    }

    /// How many answers are kept (tests).
    pub fn len(&self) -> usize {
        self.map.read().map_or(0, |m| m.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::ext_authz::Credential;

    fn requester() -> Requester {
        Requester {
            user: "system:serviceaccount:apps:web".into(),
            uid: "u-1".into(),
            groups: vec!["system:authenticated".into()],
            credential: Credential::Peer,
        }
    }

    fn attrs() -> Attributes {
        Attributes::NonResource {
            verb: "get".into(),
            path: "/shop/orders".into(),
        }
    }

    #[test]
    fn an_answer_is_kept_for_its_key_and_generations_only() {
        let a = Answers::default();
        let key = Key {
            principal: "spiffe://td/ns/apps/sa/web",
            certificate: "",
            method: "GET",
            path: "/shop/orders",
            extensions: vec![(b"badge.dev/audiences".as_slice(), b"shop".as_slice())],
        };
        let answer = CheckAnswer(prost::bytes::Bytes::from_static(b"ok"));
        assert!(a.get(&key, (1, 1)).is_none());
        a.insert(&key, (1, 1), &requester(), &attrs(), &answer);
        let hit = a.get(&key, (1, 1)).expect("kept");
        assert_eq!(hit.encoded, answer);
        assert_eq!(hit.requester, requester());
        // Security: any change of an identity or RBAC kind since the answer was
        // computed (a deleted account, a removed binding) drops it.
        assert!(a.get(&key, (2, 1)).is_none(), "identity generation moved");
        assert!(a.get(&key, (1, 2)).is_none(), "RBAC generation moved");
        // Every part of the key is compared, not only its hash.
        for other in [
            Key {
                principal: "spiffe://td/ns/apps/sa/db",
                ..key.clone()
            },
            Key {
                certificate: "-----BEGIN",
                ..key.clone()
            },
            Key {
                method: "POST",
                ..key.clone()
            },
            Key {
                path: "/shop/orders/1",
                ..key.clone()
            },
            Key {
                extensions: vec![],
                ..key.clone()
            },
        ] {
            assert!(a.get(&other, (1, 1)).is_none(), "{other:?}");
        }
        // A newer answer replaces the older one.
        a.insert(&key, (2, 1), &requester(), &attrs(), &answer);
        assert!(a.get(&key, (1, 1)).is_none());
        assert!(a.get(&key, (2, 1)).is_some());
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn the_map_is_bounded() {
        let a = Answers::default();
        let answer = CheckAnswer::default();
        let paths: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("/p/{i}")).collect();
        for p in &paths {
            let key = Key {
                principal: "spiffe://td/ns/apps/sa/web",
                certificate: "",
                method: "GET",
                path: p,
                extensions: vec![],
            };
            a.insert(&key, (1, 1), &requester(), &attrs(), &answer);
        }
        assert!(a.len() <= MAX_ENTRIES, "{}", a.len());
        let huge = "x".repeat(MAX_KEY_BYTES + 1);
        let key = Key {
            principal: "p",
            certificate: &huge,
            method: "GET",
            path: "/",
            extensions: vec![],
        };
        a.insert(&key, (1, 1), &requester(), &attrs(), &answer);
        assert!(
            a.get(&key, (1, 1)).is_none(),
            "an oversized key is not kept"
        );
    }
}
