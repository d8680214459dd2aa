//! The trusted verification keys and the signature cache.
//!
//! The keys are the token-issuer's `SigningKey` records (public parts only). A
//! [`Keys`] snapshot is immutable; a new one is built when the records change and
//! swapped in atomically, so a review never sees half a key set.
//!
//! Verified tokens are cached by the SHA-256 of the whole token: what the cache
//! holds is the token's decoded claims after its signature verified
//! ([`VerifiedToken`]), so a warm review neither decodes nor verifies again. Only
//! successes are cached, and never a verdict: the issuer, audiences, time and every
//! liveness and revocation check still run on every review, so a cached token
//! never outlives its service account, pod, secret, node or revocation. The cache
//! stays valid while keys are only added; when a key disappears the next snapshot
//! starts with an empty cache, so a removed key never vouches for anything again.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use badge_core::Kind;
use badge_core::review::{SignatureError, SignatureVerifier, VerifiedToken};
use badge_keys::{KeySet, PublicKey, StoredKey};
use badge_store::Record;

/// A bounded map of verified tokens by digest: two generations, the older one
/// dropped when the newer fills up (an approximate LRU without per-entry
/// bookkeeping). Holds at most `capacity` tokens, each its decoded claims
/// (about half a KiB).
pub struct TokenCache<V = Arc<VerifiedToken>> {
    capacity: usize,
    inner: Mutex<Generations<V>>,
}

struct Generations<V> {
    current: HashMap<[u8; 32], V>,
    previous: HashMap<[u8; 32], V>,
}

impl<V: Clone> TokenCache<V> {
    /// `capacity` 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            inner: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The token with this digest, if cached (a hit in the older generation is
    /// promoted).
    pub fn get(&self, digest: &[u8; 32]) -> Option<V> {
        if !self.enabled() {
            return None;
        }
        let mut g = self.inner.lock().ok()?;
        if let Some(v) = g.current.get(digest) {
            return Some(v.clone());
        }
        let v = g.previous.remove(digest)?;
        self.insert_locked(&mut g, *digest, v.clone());
        Some(v)
    }

    pub fn insert(&self, digest: [u8; 32], token: V) {
        if !self.enabled() {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            self.insert_locked(&mut g, digest, token);
        }
    }

    fn insert_locked(&self, g: &mut Generations<V>, digest: [u8; 32], token: V) {
        let half = (self.capacity / 2).max(1);
        if g.current.len() >= half {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(digest, token);
    }

    /// Number of tokens held.
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

/// One immutable key snapshot.
pub struct Keys {
    pub set: KeySet,
    /// `(kid, resource_version)` of the records it was built from, sorted.
    pub versions: Vec<(String, i64)>,
    /// The store revision the records were read at (index or store list).
    pub revision: i64,
    pub cache: Arc<TokenCache>,
}

impl Keys {
    pub fn empty(cache_entries: usize) -> Self {
        Keys {
            set: KeySet::default(),
            versions: Vec::new(),
            revision: 0,
            cache: Arc::new(TokenCache::new(cache_entries)),
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

    /// Installs the keys of `records` read at `revision`. The token cache is
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
            Arc::new(TokenCache::new(self.cache_entries))
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

/// A [`SignatureVerifier`] over one snapshot and its token cache, noting whether a
/// kid was unknown (so the caller can refresh the keys and retry).
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
    ) -> Result<(), SignatureError> {
        let known = if kid.is_empty() {
            !self.keys.set.is_empty()
        } else {
            self.keys.set.contains(kid)
        };
        if !known {
            self.unknown_kid.set(true);
        }
        self.keys.set.verify(kid, alg, signing_input, signature)
    }

    fn caches(&self) -> bool {
        self.keys.cache.enabled()
    }

    fn verified(&self, token_sha256: &[u8; 32]) -> Option<Arc<VerifiedToken>> {
        self.keys.cache.get(token_sha256)
    }

    fn remember(&self, token_sha256: [u8; 32], verified: Arc<VerifiedToken>) {
        self.keys.cache.insert(token_sha256, verified);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    use badge_core::review::{ObjectLookup, ObjectState, ReviewSettings, SecretState, review};
    use badge_core::token::{
        Binding, ClaimsInput, ObjectRef, TokenPlan, bound_claims_json, unix_seconds,
    };
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

    #[test]
    fn cache_is_bounded_and_promotes() {
        let c = TokenCache::<u8>::new(4);
        for i in 0..100u8 {
            c.insert([i; 32], i);
            assert!(c.len() <= 4, "{}", c.len());
        }
        assert_eq!(c.get(&[99; 32]), Some(99));
        assert_eq!(c.get(&[0; 32]), None);
        // A hit in the older generation survives the next turnover.
        c.insert([1; 32], 1);
        c.insert([2; 32], 2);
        assert_eq!(c.get(&[99; 32]), Some(99));
        let off = TokenCache::<u8>::new(0);
        off.insert([1; 32], 1);
        assert!(off.get(&[1; 32]).is_none() && off.is_empty());
    }

    /// One live service account, nothing else.
    struct OneAccount;

    impl ObjectLookup for OneAccount {
        fn service_account(&self, ns: &str, name: &str) -> Option<ObjectState> {
            (ns == "ns" && name == "sa").then(|| ObjectState {
                uid: "sa-uid".into(),
                deletion_timestamp: None,
            })
        }
        fn service_account_secrets(&self, _: &str, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn pod(&self, _: &str, _: &str) -> Option<ObjectState> {
            None
        }
        fn secret(&self, _: &str, _: &str) -> Option<SecretState> {
            None
        }
        fn node(&self, _: &str) -> Option<ObjectState> {
            None
        }
        fn revoked(&self, _: &str) -> bool {
            false
        }
    }

    const ISSUER: &str = "https://badge.example";

    fn token(key: &SigningKey, now: SystemTime) -> String {
        let plan = TokenPlan {
            audiences: vec![ISSUER.into()],
            issued_at: unix_seconds(now),
            expires_at: unix_seconds(now) + 3600,
            status_expiration: unix_seconds(now) + 3600,
            warn_after: None,
            warnings: Vec::new(),
        };
        let claims = bound_claims_json(&ClaimsInput {
            issuer: ISSUER,
            namespace: "ns",
            service_account: ObjectRef::new("sa", "sa-uid"),
            binding: Binding::None,
            plan: &plan,
            jti: "1b4f0e9d-2c3a-4d5e-8f6a-7b8c9d0e1f2a",
        });
        key.sign_jwt(&key.jwt_header(false), &claims).unwrap()
    }

    fn review_with(store: &KeyStore, token: &str, now: SystemTime) -> (Result<(), String>, bool) {
        let keys = store.snapshot();
        let v = CachingVerifier::new(&keys);
        let settings = ReviewSettings::new(vec![ISSUER.into()], vec![ISSUER.into()]);
        let outcome = review(token, &[], &settings, &v, &OneAccount, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        (outcome, v.saw_unknown_kid())
    }

    #[test]
    fn only_verified_tokens_are_kept_and_key_removal_drops_them() {
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let a = SigningKey::generate(Algorithm::ES256).unwrap();
        let b = SigningKey::generate(Algorithm::ES256).unwrap();
        let store = KeyStore::new(100);
        assert!(store.install(&[record(&a, 1)], 1));
        let good = token(&a, now);

        assert_eq!(review_with(&store, &good, now), (Ok(()), false));
        assert_eq!(store.snapshot().cache.len(), 1);
        assert_eq!(review_with(&store, &good, now), (Ok(()), false));
        assert_eq!(store.snapshot().cache.len(), 1);
        // A bad signature is not kept.
        let forged = format!("{}{}", &good[..good.len() - 4], "AAAA");
        assert!(review_with(&store, &forged, now).0.is_err());
        assert_eq!(store.snapshot().cache.len(), 1);
        // A token of an unknown key is noted (so the reviewer refreshes the keys).
        let (outcome, unknown) = review_with(&store, &token(&b, now), now);
        assert!(outcome.is_err() && unknown);

        // Adding a key keeps the cache; an older revision is ignored.
        assert!(store.install(&[record(&a, 1), record(&b, 2)], 2));
        assert_eq!(store.snapshot().cache.len(), 1);
        assert!(!store.install(&[], 1));
        assert_eq!(store.snapshot().set.len(), 2);

        // Removing the key drops the cache: the kept token no longer passes.
        assert!(store.install(&[record(&b, 2)], 3));
        assert!(store.snapshot().cache.is_empty());
        let (outcome, unknown) = review_with(&store, &good, now);
        assert!(outcome.is_err() && unknown, "{outcome:?}");
    }
}
