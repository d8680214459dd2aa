//! The trusted verification keys and the signature cache.
//!
//! The keys are the token-issuer's `SigningKey` records (public parts only). A
//! [`Keys`] snapshot is immutable; a new one is built when the records change and
//! swapped in atomically, so a review never sees half a key set.
//!
//! Verified signatures are cached by a digest of (kid, alg, signing input,
//! signature). Only successes are cached, and only the signature check: the claims
//! and every liveness check still run on every review, so a cached answer never
//! outlives its service account, pod, secret, node or revocation. The cache stays
//! valid while keys are only added; when a key disappears the next snapshot starts
//! with an empty cache, so a removed key never verifies anything again.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use badge_core::Kind;
use badge_core::review::SignatureVerifier;
use badge_keys::{KeySet, PublicKey, StoredKey};
use badge_store::Record;
use sha2::{Digest as _, Sha256};

/// A bounded set of verified-signature digests: two generations, the older one
/// dropped when the newer fills up (an approximate LRU without per-entry
/// bookkeeping). Holds at most `capacity` digests.
pub struct SigCache {
    capacity: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
}

impl SigCache {
    /// `capacity` 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        SigCache {
            capacity,
            inner: Mutex::new(Generations::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Whether the digest is cached (a hit in the older generation is promoted).
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        if !self.enabled() {
            return false;
        }
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        if g.current.contains(digest) {
            return true;
        }
        if g.previous.remove(digest) {
            self.insert_locked(&mut g, *digest);
            return true;
        }
        false
    }

    pub fn insert(&self, digest: [u8; 32]) {
        if !self.enabled() {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            self.insert_locked(&mut g, digest);
        }
    }

    fn insert_locked(&self, g: &mut Generations, digest: [u8; 32]) {
        let half = (self.capacity / 2).max(1);
        if g.current.len() >= half {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(digest);
    }

    /// Number of digests held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|g| g.current.len() + g.previous.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache key: SHA-256 over the length-prefixed parts, so no two different
/// inputs share a preimage.
pub fn signature_digest(kid: &str, alg: &str, signing_input: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [kid.as_bytes(), alg.as_bytes(), signing_input, signature] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// One immutable key snapshot.
pub struct Keys {
    pub set: KeySet,
    /// `(kid, resource_version)` of the records it was built from, sorted.
    pub versions: Vec<(String, i64)>,
    /// The store revision the records were read at (index or store list).
    pub revision: i64,
    pub cache: Arc<SigCache>,
}

impl Keys {
    pub fn empty(cache_entries: usize) -> Self {
        Keys {
            set: KeySet::default(),
            versions: Vec::new(),
            revision: 0,
            cache: Arc::new(SigCache::new(cache_entries)),
        }
    }
}

/// Public keys of `SigningKey` records; unreadable records are logged (kid only)
/// and skipped.
pub fn public_keys(records: &[Record]) -> (Vec<PublicKey>, Vec<(String, i64)>) {
    let mut keys = Vec::new();
    let mut versions = Vec::new();
    for r in records.iter().filter(|r| r.kind == Kind::SigningKey) {
        versions.push((r.name.clone(), r.resource_version));
        match StoredKey::from_bytes(&r.data).and_then(|k| k.public_key()) {
            Ok(k) => keys.push(k),
            Err(e) => tracing::error!(kid = %r.name, error = %e, "unreadable signing key record"),
        }
    }
    keys.sort_by(|a, b| a.kid().cmp(b.kid()));
    versions.sort();
    (keys, versions)
}

/// The current snapshot, swapped atomically.
pub struct KeyStore {
    current: RwLock<Arc<Keys>>,
    cache_entries: usize,
}

impl KeyStore {
    pub fn new(cache_entries: usize) -> Self {
        KeyStore {
            current: RwLock::new(Arc::new(Keys::empty(cache_entries))),
            cache_entries,
        }
    }

    pub fn snapshot(&self) -> Arc<Keys> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Installs the keys of `records` read at `revision`. The signature cache is
    /// kept when every previous key is still present (with the same bytes), and
    /// started afresh otherwise. Returns whether the key set changed.
    pub fn install(&self, records: &[Record], revision: i64) -> bool {
        let (keys, versions) = public_keys(records);
        let set = KeySet::new(keys);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let old = guard.clone();
        if old.revision > revision {
            // A newer snapshot is already installed (e.g. a store refresh raced
            // the feed).
            return false;
        }
        let changed = old.set != set;
        let kept = old.set.keys().iter().all(|k| set.keys().contains(k));
        let cache = if kept {
            old.cache.clone()
        } else {
            Arc::new(SigCache::new(self.cache_entries))
        };
        if changed {
            let kids: Vec<&str> = set.keys().iter().map(PublicKey::kid).collect();
            tracing::info!(?kids, revision, "verification keys updated");
        }
        *guard = Arc::new(Keys {
            set,
            versions,
            revision,
            cache,
        });
        changed
    }
}

/// A [`SignatureVerifier`] over one snapshot with the signature cache, noting
/// whether a kid was unknown (so the caller can refresh the keys and retry).
pub struct CachingVerifier<'a> {
    keys: &'a Keys,
    unknown_kid: Cell<bool>,
}

impl<'a> CachingVerifier<'a> {
    pub fn new(keys: &'a Keys) -> Self {
        CachingVerifier {
            keys,
            unknown_kid: Cell::new(false),
        }
    }

    /// A token named a kid no key has (or there are no keys at all).
    pub fn saw_unknown_kid(&self) -> bool {
        self.unknown_kid.get()
    }
}

impl SignatureVerifier for CachingVerifier<'_> {
    fn verify(
        &self,
        kid: &str,
        alg: &str,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        let cache = &self.keys.cache;
        let digest = cache
            .enabled()
            .then(|| signature_digest(kid, alg, signing_input, signature));
        if let Some(d) = &digest
            && cache.contains(d)
        {
            return Ok(());
        }
        let known = if kid.is_empty() {
            !self.keys.set.is_empty()
        } else {
            self.keys.set.contains(kid)
        };
        if !known {
            self.unknown_kid.set(true);
        }
        let result = self.keys.set.verify(kid, alg, signing_input, signature);
        if result.is_ok()
            && let Some(d) = digest
        {
            cache.insert(d);
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    use badge_keys::{Algorithm, KeySource, SigningKey};

    use super::*;

    fn record(key: &SigningKey, rv: i64) -> Record {
        let stored = StoredKey::verify_only(key.public_key(), 0, 0, KeySource::Generated);
        Record {
            kind: Kind::SigningKey,
            namespace: String::new(),
            name: key.kid().to_owned(),
            uid: "u".into(),
            resource_version: rv,
            labels: BTreeMap::new(),
            data: stored.to_bytes().unwrap(),
            creation_timestamp: UNIX_EPOCH,
            deletion_timestamp: None,
        }
    }

    fn parts(token: &str) -> (&[u8], Vec<u8>) {
        use base64::Engine as _;
        let (input, sig) = token.rsplit_once('.').unwrap();
        (
            input.as_bytes(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .unwrap(),
        )
    }

    #[test]
    fn cache_is_bounded_and_promotes() {
        let c = SigCache::new(4);
        for i in 0..100u8 {
            c.insert([i; 32]);
            assert!(c.len() <= 4, "{}", c.len());
        }
        assert!(c.contains(&[99; 32]));
        assert!(!c.contains(&[0; 32]));
        let off = SigCache::new(0);
        off.insert([1; 32]);
        assert!(!off.contains(&[1; 32]) && off.is_empty());
    }

    #[test]
    fn digests_separate_their_parts() {
        assert_ne!(
            signature_digest("ab", "c", b"", b""),
            signature_digest("a", "bc", b"", b"")
        );
        assert_ne!(
            signature_digest("", "", b"x", b"y"),
            signature_digest("", "", b"xy", b"")
        );
    }

    #[test]
    fn only_successes_are_cached_and_removal_drops_the_cache() {
        let a = SigningKey::generate(Algorithm::ES256).unwrap();
        let b = SigningKey::generate(Algorithm::ES256).unwrap();
        let store = KeyStore::new(100);
        assert!(store.install(&[record(&a, 1)], 1));
        let token = a.sign_jwt(&a.jwt_header(false), br#"{"x":1}"#).unwrap();
        let (input, sig) = parts(&token);

        let keys = store.snapshot();
        let v = CachingVerifier::new(&keys);
        assert!(v.verify(a.kid(), "ES256", input, &sig).is_ok());
        assert!(!v.saw_unknown_kid());
        assert_eq!(keys.cache.len(), 1);
        // A failure is not cached.
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(v.verify(a.kid(), "ES256", input, &bad).is_err());
        assert_eq!(keys.cache.len(), 1);
        // Unknown kid noted.
        let v = CachingVerifier::new(&keys);
        assert!(v.verify("nope", "ES256", input, &sig).is_err());
        assert!(v.saw_unknown_kid());

        // Adding a key keeps the cache; an older revision is ignored.
        assert!(store.install(&[record(&a, 1), record(&b, 2)], 2));
        assert_eq!(store.snapshot().cache.len(), 1);
        assert!(!store.install(&[], 1));
        assert_eq!(store.snapshot().set.len(), 2);

        // Removing the key drops the cache: the cached signature no longer passes.
        assert!(store.install(&[record(&b, 2)], 3));
        let keys = store.snapshot();
        assert!(keys.cache.is_empty());
        let v = CachingVerifier::new(&keys);
        assert!(v.verify(a.kid(), "ES256", input, &sig).is_err());
        assert!(v.saw_unknown_kid());
    }
}
