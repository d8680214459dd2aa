//! The keys this issuer signs and publishes with. In store mode they come from the
//! store through the index (so every replica sees every rotation) and the private
//! parts are unsealed with the key-encryption key once per key; in file mode they
//! are read once from PEM files. The JWKS and discovery documents are rendered when
//! the set changes and swapped atomically: serving them never builds JSON.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use badge_core::key_lifecycle::{self, KeyState, KeyTimes, Policy};
use badge_core::{Error, Result, oidc};
use badge_keys::{Kek, KeySource, PublicKey, SigningKey, StoredKey};
use badge_proto::token as pb;

/// Associated data binding a sealed private key to its record.
pub fn seal_aad(kid: &str) -> Vec<u8> {
    format!("badge/signing-key/{kid}").into_bytes()
}

/// One key of the ring.
#[derive(Clone)]
pub struct RingKey {
    pub stored: StoredKey,
    pub public: PublicKey,
    /// Present for keys this issuer can sign with.
    pub signer: Option<Arc<SigningKey>>,
}

/// An immutable snapshot.
pub struct RingState {
    pub keys: Vec<RingKey>,
    /// Keys we can sign with, by activation time (ascending): the signer at `now`
    /// is the last one activated — found without allocating on the hot path.
    signers: Vec<(SystemTime, Arc<SigningKey>)>,
    pub jwks: Arc<Vec<u8>>,
    pub discovery: Arc<Vec<u8>>,
    pub built_at: SystemTime,
}

pub struct KeyRing {
    state: RwLock<Arc<RingState>>,
    issuer: String,
    jwks_uri: String,
    pub policy: Policy,
    kek: Option<Kek>,
}

fn unix(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

fn times(k: &StoredKey) -> KeyTimes {
    KeyTimes {
        kid: k.kid.clone(),
        created_at: unix(k.created_at_unix),
        activates_at: unix(k.activates_at_unix),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    badge_core::clock::timestamp(t)
}

impl KeyRing {
    pub fn new(issuer: String, jwks_uri: String, policy: Policy, kek: Option<Kek>) -> Self {
        let empty = render(&issuer, &jwks_uri, Vec::new(), SystemTime::UNIX_EPOCH);
        KeyRing {
            state: RwLock::new(Arc::new(empty)),
            issuer,
            jwks_uri,
            policy,
            kek,
        }
    }

    pub fn kek(&self) -> Option<&Kek> {
        self.kek.as_ref()
    }

    pub fn snapshot(&self) -> Arc<RingState> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The key that signs at `now`: the most recently activated key we hold a
    /// private part for.
    pub fn active(&self, now: SystemTime) -> Option<Arc<SigningKey>> {
        let snap = self.snapshot();
        snap.signers
            .iter()
            .rev()
            .find(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
    }

    /// Whether `kid` is still published.
    pub fn publishes(&self, kid: &str) -> bool {
        self.snapshot().keys.iter().any(|k| k.stored.kid == kid)
    }

    /// Replaces the set. Private keys already unsealed are reused; a key that cannot
    /// be unsealed (wrong key-encryption key) is published but never signs, and the
    /// error is returned so start-up can refuse.
    pub fn rebuild(&self, stored: Vec<StoredKey>, now: SystemTime) -> Result<()> {
        let previous: HashMap<String, Arc<SigningKey>> = self
            .snapshot()
            .keys
            .iter()
            .filter_map(|k| k.signer.clone().map(|s| (k.stored.kid.clone(), s)))
            .collect();
        let mut keys = Vec::with_capacity(stored.len());
        let mut first_error = None;
        for s in stored {
            let public = s
                .public_key()
                .map_err(|e| Error::Internal(format!("stored signing key {}: {e}", s.kid)))?;
            let signer = if let Some(k) = previous.get(&s.kid) {
                Some(k.clone())
            } else if s.has_private_key() {
                match &self.kek {
                    Some(kek) => match s.unseal(kek, &seal_aad(&s.kid)) {
                        Ok(k) => Some(Arc::new(k)),
                        Err(e) => {
                            tracing::error!(kid = %s.kid, error = %e, "cannot unseal signing key");
                            first_error.get_or_insert(Error::precondition(format!(
                                "signing key {}: {e}",
                                s.kid
                            )));
                            None
                        }
                    },
                    None => None,
                }
            } else {
                None
            };
            keys.push(RingKey {
                stored: s,
                public,
                signer,
            });
        }
        let state = render(&self.issuer, &self.jwks_uri, keys, now);
        match self.state.write() {
            Ok(mut g) => *g = Arc::new(state),
            Err(p) => *p.into_inner() = Arc::new(state),
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Installs keys read from PEM files (Kubernetes mode): the signing key signs
    /// from the epoch on; verification keys are published only.
    pub fn install_files(
        &self,
        signing: SigningKey,
        verification: Vec<PublicKey>,
        now: SystemTime,
    ) {
        let mut keys = vec![RingKey {
            stored: StoredKey::verify_only(signing.public_key(), 0, 0, KeySource::File),
            public: signing.public_key().clone(),
            signer: Some(Arc::new(signing)),
        }];
        for p in verification {
            if keys.iter().any(|k| k.stored.kid == p.kid()) {
                continue;
            }
            keys.push(RingKey {
                stored: StoredKey::verify_only(&p, 0, 0, KeySource::File),
                public: p,
                signer: None,
            });
        }
        let state = render(&self.issuer, &self.jwks_uri, keys, now);
        match self.state.write() {
            Ok(mut g) => *g = Arc::new(state),
            Err(p) => *p.into_inner() = Arc::new(state),
        }
    }

    /// Every key with its lifecycle state at `now`, for `ListKeys`.
    pub fn describe(&self, now: SystemTime) -> Vec<pb::SigningKey> {
        let snap = self.snapshot();
        let t: Vec<KeyTimes> = snap.keys.iter().map(|k| times(&k.stored)).collect();
        let st = key_lifecycle::states(&t, &self.policy, now);
        snap.keys
            .iter()
            .map(|k| {
                let s = st.iter().find(|s| s.kid == k.stored.kid);
                let state = if k.stored.source == KeySource::File && k.signer.is_none() {
                    pb::KeyState::VerifyOnly
                } else {
                    match s.map(|s| s.state) {
                        Some(KeyState::Published) => pb::KeyState::Published,
                        Some(KeyState::Active) => pb::KeyState::Active,
                        Some(KeyState::Retired) => pb::KeyState::Retired,
                        None => pb::KeyState::Unspecified,
                    }
                };
                pb::SigningKey {
                    kid: k.stored.kid.clone(),
                    algorithm: k.stored.algorithm.to_string(),
                    state: state as i32,
                    created_at: Some(timestamp(unix(k.stored.created_at_unix))),
                    activates_at: Some(timestamp(unix(k.stored.activates_at_unix))),
                    retired_at: s.and_then(|s| s.retired_at).map(timestamp),
                    remove_after: s.and_then(|s| s.remove_after).map(timestamp),
                    public_key_pem: k.public.to_pem(),
                }
            })
            .collect()
    }

    pub fn stored_times(&self) -> Vec<KeyTimes> {
        self.snapshot()
            .keys
            .iter()
            .map(|k| times(&k.stored))
            .collect()
    }
}

fn render(issuer: &str, jwks_uri: &str, keys: Vec<RingKey>, now: SystemTime) -> RingState {
    let jwks: Vec<serde_json::Value> = keys
        .iter()
        .filter_map(|k| serde_json::to_value(k.public.jwk()).ok())
        .collect();
    let algs: Vec<&str> = keys.iter().map(|k| k.stored.algorithm.as_str()).collect();
    // Same order as key_lifecycle (activation, creation, kid), so the signer found
    // by `active` is the key the lifecycle calls active.
    let mut signers: Vec<(SystemTime, SystemTime, String, Arc<SigningKey>)> = keys
        .iter()
        .filter_map(|k| {
            let t = times(&k.stored);
            k.signer
                .clone()
                .map(|s| (t.activates_at, t.created_at, t.kid, s))
        })
        .collect();
    signers.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    RingState {
        signers: signers.into_iter().map(|(at, _, _, k)| (at, k)).collect(),
        jwks: Arc::new(oidc::jwks_document(&jwks).into_bytes()),
        discovery: Arc::new(oidc::discovery_document(issuer, jwks_uri, &algs).into_bytes()),
        keys,
        built_at: now,
    }
}
