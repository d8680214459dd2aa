//! Key rotation in store mode. One replica at a time (a Postgres advisory lock)
//! decides from the stored keys' timestamps what to do: generate the first key,
//! generate a successor once the period is up (published now, signing after the
//! propagation delay), delete retired keys whose tokens have all expired. Every
//! replica follows the results through the change feed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use badge_core::key_lifecycle::{self, KeyTimes};
use badge_core::{Clock, Error, Kind, Result};
use badge_keys::{Algorithm, KeySource, SigningKey, StoredKey};
use badge_records::Index;
use badge_store::{ListQuery, Op, Precondition, Store};

use crate::keyring::{KeyRing, seal_aad};

/// Advisory-lock key for rotation ("badge-ro" in ASCII).
const ROTATION_LOCK: i64 = 0x6261_6467_652d_726f;

/// Reads every stored key (from the index: the feed keeps it current).
pub fn stored_keys(index: &Index) -> Vec<StoredKey> {
    let mut keys: Vec<StoredKey> = index
        .list(Kind::SigningKey)
        .iter()
        .filter_map(|r| match StoredKey::from_bytes(&r.data) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(kid = %r.name, error = %e, "unreadable stored signing key");
                None
            }
        })
        .collect();
    keys.sort_by(|a, b| {
        a.activates_at_unix
            .cmp(&b.activates_at_unix)
            .then(a.kid.cmp(&b.kid))
    });
    keys
}

/// The rotating side.
#[derive(Clone)]
pub struct Rotator {
    pub store: Store,
    pub ring: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub algorithm: Algorithm,
}

fn secs(t: std::time::SystemTime) -> i64 {
    badge_core::token::unix_seconds(t)
}

impl Rotator {
    /// The keys as the store has them now (under the lock the index may lag).
    async fn current(&self) -> Result<Vec<StoredKey>> {
        let all = |_: &badge_store::Record| true;
        let page = self
            .store
            .list(ListQuery {
                kind: Kind::SigningKey,
                namespace: None,
                after: None,
                limit: 0,
                filter: &all,
            })
            .await?;
        page.items
            .iter()
            .map(|r| {
                StoredKey::from_bytes(&r.data)
                    .map_err(|e| Error::Internal(format!("stored signing key {}: {e}", r.name)))
            })
            .collect()
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        activates_at: std::time::SystemTime,
    ) -> Result<StoredKey> {
        let kek = self
            .ring
            .kek()
            .ok_or_else(|| Error::precondition("no key-encryption key configured"))?;
        let now = self.clock.now();
        // RSA generation takes a while: keep it off the async workers.
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(algorithm))
            .await
            .map_err(|e| Error::Internal(format!("key generation task: {e}")))?
            .map_err(|e| Error::Internal(format!("key generation: {e}")))?;
        let stored = StoredKey::seal(
            &key,
            kek,
            &seal_aad(key.kid()),
            secs(now),
            secs(activates_at),
            KeySource::Generated,
        )
        .map_err(|e| Error::Internal(format!("sealing signing key: {e}")))?;
        let data = stored
            .to_bytes()
            .map_err(|e| Error::Internal(format!("encoding signing key: {e}")))?;
        self.store
            .apply(
                vec![Op::Create {
                    kind: Kind::SigningKey,
                    namespace: String::new(),
                    name: stored.kid.clone(),
                    labels: BTreeMap::from([("algorithm".to_string(), algorithm.to_string())]),
                    data,
                }],
                now,
            )
            .await?;
        tracing::info!(kid = %stored.kid, %algorithm, activates_at = stored.activates_at_unix, "signing key generated and published");
        Ok(stored)
    }

    /// One lifecycle pass, if this replica gets the lock.
    pub async fn tick(&self) -> Result<()> {
        let out = self
            .store
            .try_locked(ROTATION_LOCK, || async {
                let keys = self.current().await?;
                let t: Vec<KeyTimes> = keys.iter().map(times).collect();
                let now = self.clock.now();
                let plan = key_lifecycle::plan(&t, &self.ring.policy, now);
                if let Some(at) = plan.generate_activating_at {
                    self.generate(self.algorithm, at).await?;
                }
                for kid in plan.remove {
                    self.store
                        .apply(
                            vec![Op::Delete {
                                kind: Kind::SigningKey,
                                namespace: String::new(),
                                name: kid.clone(),
                                precondition: Precondition::default(),
                            }],
                            now,
                        )
                        .await?;
                    tracing::info!(%kid, "retired signing key removed: every token it signed has expired");
                }
                Ok::<(), Error>(())
            })
            .await?;
        match out {
            Some(r) => r,
            None => {
                tracing::debug!("another replica holds the rotation lock");
                Ok(())
            }
        }
    }

    /// `KeyService.RotateKeys`.
    pub async fn rotate_now(&self, algorithm: Algorithm) -> Result<StoredKey> {
        // The lock is held only for a lifecycle pass (milliseconds; a little longer
        // while an RSA key is generated), possibly by this replica's own timer: wait
        // for it for a while rather than fail the call.
        for _ in 0..100 {
            let out = self
                .store
                .try_locked(ROTATION_LOCK, || async {
                    let keys = self.current().await?;
                    let t: Vec<KeyTimes> = keys.iter().map(times).collect();
                    let at =
                        key_lifecycle::forced_activation(&t, &self.ring.policy, self.clock.now());
                    self.generate(algorithm, at).await
                })
                .await?;
            if let Some(result) = out {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Conflict(
            "another token-issuer replica has been rotating keys for 5 s; retry".into(),
        ))
    }

    /// Runs `tick` every `interval` until aborted.
    pub async fn run(self, interval: Duration) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "key rotation pass failed");
            }
            tokio::time::sleep(interval).await;
        }
    }
}

fn times(k: &StoredKey) -> KeyTimes {
    KeyTimes {
        kid: k.kid.clone(),
        created_at: std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(k.created_at_unix).unwrap_or(0)),
        activates_at: std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(k.activates_at_unix).unwrap_or(0)),
    }
}

/// Keeps the ring in step with the stored keys: rebuilds whenever the index applies
/// feed entries that changed the set.
pub async fn follow_keys(index: Index, ring: Arc<KeyRing>, clock: Arc<dyn Clock>) {
    let mut rx = index.subscribe();
    let mut seen: Vec<(String, i64)> = Vec::new();
    loop {
        let mut now_seen: Vec<(String, i64)> = index
            .list(Kind::SigningKey)
            .iter()
            .map(|r| (r.name.clone(), r.resource_version))
            .collect();
        now_seen.sort();
        if now_seen != seen {
            if let Err(e) = ring.rebuild(stored_keys(&index), clock.now()) {
                tracing::error!(error = %e, "key ring rebuilt with errors");
            }
            seen = now_seen;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
