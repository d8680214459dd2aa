//! The workload CA's keys (docs/certificates.md "Lifecycle"), kept exactly like the
//! JWT signing keys ([`crate::keyring`], [`crate::rotation`]):
//!
//! - a CA is a store record (`Kind::CertificateAuthority`, named by its key id):
//!   its certificate chain in PEM (public) and its PKCS#8 private key sealed under
//!   the key-encryption key with associated data naming the record
//!   (`badge/ca-key/<key id>`), so a sealed key copied into another record does not
//!   open;
//! - every replica follows the records through the change feed and unseals each key
//!   once; the signing CA at `now` is the most recently activated one
//!   (`badge_core::key_lifecycle`, the same pure lifecycle as the JWT keys);
//! - one replica at a time (a Postgres advisory lock) generates the first CA, a
//!   successor once the rotation period is up (published now, signing after the
//!   propagation delay) and deletes retired CAs once their last leaf has expired;
//! - a plug-in CA (`[ca] plugin_dir`) is loaded from files and signs from start-up;
//!   nothing is generated or rotated then (the operator rotates the files).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use badge_ca::SigningCa;
use badge_ca::authority::defaults;
use badge_core::key_lifecycle::{self, KeyState, KeyTimes, Policy};
use badge_core::spiffe::TrustDomain;
use badge_core::{Clock, Error, Kind, Result};
use badge_keys::Kek;
use badge_proto::certificates as pb;
use badge_records::Index;
use badge_store::{ListQuery, Op, Precondition, Store};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};

/// Advisory-lock key for CA rotation ("badge-ca" in ASCII). Its own lock rather than
/// the signing keys' so an RSA CA being generated never delays a JWT key rotation;
/// the rule is the same: one rotating replica at a time.
const CA_ROTATION_LOCK: i64 = 0x6261_6467_652d_6361;

/// Associated data binding a sealed CA key to its record.
pub fn seal_aad(key_id: &str) -> Vec<u8> {
    format!("badge/ca-key/{key_id}").into_bytes()
}

/// Where a CA came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaSource {
    Generated,
    Plugin,
}

impl CaSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CaSource::Generated => "generated",
            CaSource::Plugin => "plugin",
        }
    }
}

/// The store's record of one CA (JSON). Never holds an unsealed key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    /// Key id of the signing key (Kubernetes' key-id algorithm over its SPKI).
    pub key_id: String,
    pub source: CaSource,
    /// The signing certificate, then intermediates (PEM).
    pub chain_pem: String,
    /// The roots (PEM); the first is the one the chain ends at.
    pub roots_pem: String,
    /// PKCS#8 of the signing key sealed by [`Kek::encrypt`] (standard base64).
    pub encrypted_private_key: String,
    /// [`Kek::id`] of the sealing KEK, so a mismatch is reported by name.
    pub kek_id: String,
    pub created_at_unix: i64,
    pub activates_at_unix: i64,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sealed key is not secret without the KEK, but has no business in logs.
        f.debug_struct("StoredCa")
            .field("key_id", &self.key_id)
            .field("activates_at_unix", &self.activates_at_unix)
            .finish_non_exhaustive()
    }
}

fn secs(t: SystemTime) -> i64 {
    badge_core::token::unix_seconds(t)
}

fn unix(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

fn pem_certs(what: &str, text: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::Internal(format!("stored CA: {what} is not PEM certificates")))
}

impl StoredCa {
    /// Seals `ca`'s key under `kek` and builds the record.
    pub fn seal(
        ca: &SigningCa,
        kek: &Kek,
        source: CaSource,
        created_at: SystemTime,
        activates_at: SystemTime,
    ) -> Result<StoredCa> {
        let sealed = kek
            .encrypt(&ca.key_pkcs8_der(), &seal_aad(ca.key_id()))
            .map_err(|e| Error::Internal(format!("sealing the CA key: {e}")))?;
        let w = ca.window();
        Ok(StoredCa {
            key_id: ca.key_id().to_string(),
            source,
            chain_pem: badge_ca::pem::certificates(&ca.chain()),
            roots_pem: badge_ca::pem::certificates(ca.roots()),
            encrypted_private_key: STANDARD.encode(sealed),
            kek_id: kek.id(),
            created_at_unix: secs(created_at),
            activates_at_unix: secs(activates_at),
            not_before_unix: secs(w.not_before),
            not_after_unix: secs(w.not_after),
        })
    }

    pub fn roots(&self) -> Result<Vec<CertificateDer<'static>>> {
        pem_certs("roots_pem", &self.roots_pem)
    }

    /// Unseals the key and rebuilds the CA; `SigningCa::from_parts` re-checks key ↔
    /// certificate ↔ root, so a tampered or mixed-up record is refused.
    pub fn unseal(&self, kek: &Kek, now: SystemTime) -> Result<SigningCa> {
        if self.kek_id != kek.id() {
            return Err(Error::precondition(format!(
                "CA {}: sealed by key-encryption key {}, but {} is configured",
                self.key_id,
                self.kek_id,
                kek.id()
            )));
        }
        let blob = STANDARD.decode(&self.encrypted_private_key).map_err(|_| {
            Error::Internal(format!("CA {}: sealed key is not base64", self.key_id))
        })?;
        let pkcs8 = kek
            .decrypt(&blob, &seal_aad(&self.key_id))
            .map_err(|e| Error::precondition(format!("CA {}: {e}", self.key_id)))?;
        let mut chain = pem_certs("chain_pem", &self.chain_pem)?;
        if chain.is_empty() {
            return Err(Error::Internal(format!("CA {}: empty chain", self.key_id)));
        }
        let cert = chain.remove(0);
        let ca = SigningCa::from_parts(&pkcs8, cert, chain, self.roots()?, now)?;
        if ca.key_id() != self.key_id {
            return Err(Error::precondition(format!(
                "CA {}: the sealed key belongs to another CA",
                self.key_id
            )));
        }
        Ok(ca)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|_| Error::Internal("cannot encode a CA record".into()))
    }

    pub fn from_bytes(b: &[u8]) -> Result<StoredCa> {
        serde_json::from_slice(b).map_err(|e| Error::Internal(format!("CA record: {e}")))
    }

    fn times(&self) -> KeyTimes {
        KeyTimes {
            kid: self.key_id.clone(),
            created_at: unix(self.created_at_unix),
            activates_at: unix(self.activates_at_unix),
        }
    }
}

/// One CA of the ring.
#[derive(Clone)]
pub struct CaEntry {
    pub stored: StoredCa,
    /// Present when this replica can sign with it.
    pub signer: Option<Arc<SigningCa>>,
}

/// An immutable snapshot.
pub struct CaState {
    pub entries: Vec<CaEntry>,
    /// Signing CAs by activation (ascending), as key_lifecycle orders them.
    signers: Vec<(SystemTime, Arc<SigningCa>)>,
    /// Every published root (old and new CAs during an overlap), deduplicated.
    pub roots: Vec<CertificateDer<'static>>,
    /// `spiffe_sequence`: the feed revision at which the set last changed.
    pub sequence: u64,
}

/// The lifecycle policy of CAs: like the JWT keys', with the leaf cap (plus the
/// leaves' backdate) as the "longest token" a retired CA must outlive.
pub fn lifecycle_policy(
    rotation_period: Duration,
    propagation_delay: Duration,
    max_leaf_lifetime: Duration,
    leaf_backdate: Duration,
) -> Policy {
    Policy {
        rotation_period,
        propagation_delay,
        max_token_lifetime: max_leaf_lifetime + leaf_backdate,
    }
}

pub struct CaRing {
    state: RwLock<Arc<CaState>>,
    kek: Option<Kek>,
    pub policy: Policy,
    pub trust_domain: TrustDomain,
    pub refresh_hint: Duration,
}

impl CaRing {
    pub fn new(policy: Policy, trust_domain: TrustDomain, kek: Option<Kek>) -> CaRing {
        CaRing {
            state: RwLock::new(Arc::new(CaState {
                entries: Vec::new(),
                signers: Vec::new(),
                roots: Vec::new(),
                sequence: 0,
            })),
            kek,
            policy,
            trust_domain,
            refresh_hint: defaults::REFRESH_HINT,
        }
    }

    pub fn kek(&self) -> Option<&Kek> {
        self.kek.as_ref()
    }

    pub fn snapshot(&self) -> Arc<CaState> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn install(&self, state: CaState) {
        match self.state.write() {
            Ok(mut g) => *g = Arc::new(state),
            Err(p) => *p.into_inner() = Arc::new(state),
        }
    }

    /// The CA that signs at `now`: the most recently activated one we can sign with.
    pub fn active(&self, now: SystemTime) -> Option<Arc<SigningCa>> {
        self.snapshot()
            .signers
            .iter()
            .rev()
            .find(|(at, _)| *at <= now)
            .map(|(_, c)| c.clone())
    }

    /// Replaces the set from stored records. CAs already unsealed are reused; one
    /// that cannot be unsealed is published (its roots stay trusted) but never signs,
    /// and the first such error is returned so start-up can refuse.
    pub fn rebuild(&self, stored: Vec<StoredCa>, sequence: u64, now: SystemTime) -> Result<()> {
        let previous: BTreeMap<String, Arc<SigningCa>> = self
            .snapshot()
            .entries
            .iter()
            .filter_map(|e| e.signer.clone().map(|s| (e.stored.key_id.clone(), s)))
            .collect();
        let mut first_error = None;
        let mut entries = Vec::with_capacity(stored.len());
        for s in stored {
            let signer = match (previous.get(&s.key_id), &self.kek) {
                (Some(c), _) => Some(c.clone()),
                (None, Some(kek)) => match s.unseal(kek, now) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        tracing::error!(key_id = %s.key_id, error = %e, "cannot unseal CA key");
                        first_error.get_or_insert(e);
                        None
                    }
                },
                (None, None) => None,
            };
            entries.push(CaEntry { stored: s, signer });
        }
        self.install(render(entries, sequence));
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Installs a plug-in CA (signs from the epoch on; the only CA).
    pub fn install_plugin(&self, ca: SigningCa) -> Result<()> {
        let w = ca.window();
        let stored = StoredCa {
            key_id: ca.key_id().to_string(),
            source: CaSource::Plugin,
            chain_pem: badge_ca::pem::certificates(&ca.chain()),
            roots_pem: badge_ca::pem::certificates(ca.roots()),
            encrypted_private_key: String::new(),
            kek_id: String::new(),
            created_at_unix: 0,
            activates_at_unix: 0,
            not_before_unix: secs(w.not_before),
            not_after_unix: secs(w.not_after),
        };
        self.install(render(
            vec![CaEntry {
                stored,
                signer: Some(Arc::new(ca)),
            }],
            1,
        ));
        Ok(())
    }

    /// Every CA with its lifecycle state at `now` (`ListCertificateAuthorities`).
    pub fn describe(&self, now: SystemTime) -> Vec<pb::CertificateAuthority> {
        let snap = self.snapshot();
        let t: Vec<KeyTimes> = snap.entries.iter().map(|e| e.stored.times()).collect();
        let st = key_lifecycle::states(&t, &self.policy, now);
        snap.entries
            .iter()
            .map(|e| {
                let s = st.iter().find(|s| s.kid == e.stored.key_id);
                let state = match s.map(|s| s.state) {
                    Some(KeyState::Published) => pb::CertificateAuthorityState::Published,
                    Some(KeyState::Active) => pb::CertificateAuthorityState::Active,
                    Some(KeyState::Retired) => pb::CertificateAuthorityState::Retired,
                    None => pb::CertificateAuthorityState::Unspecified,
                };
                describe_one(&e.stored, state, s)
            })
            .collect()
    }
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    badge_core::clock::timestamp(t)
}

fn describe_one(
    s: &StoredCa,
    state: pb::CertificateAuthorityState,
    status: Option<&key_lifecycle::KeyStatus>,
) -> pb::CertificateAuthority {
    pb::CertificateAuthority {
        key_id: s.key_id.clone(),
        state: state as i32,
        source: s.source.as_str().into(),
        created_at: Some(ts(unix(s.created_at_unix))),
        activates_at: Some(ts(unix(s.activates_at_unix))),
        retired_at: status.and_then(|s| s.retired_at).map(ts),
        remove_after: status.and_then(|s| s.remove_after).map(ts),
        not_before: Some(ts(unix(s.not_before_unix))),
        not_after: Some(ts(unix(s.not_after_unix))),
        certificate_chain_pem: format!("{}{}", s.chain_pem, s.roots_pem),
    }
}

fn render(entries: Vec<CaEntry>, sequence: u64) -> CaState {
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    for e in &entries {
        match e.stored.roots() {
            Ok(rs) => {
                for r in rs {
                    if !roots.contains(&r) {
                        roots.push(r);
                    }
                }
            }
            Err(err) => tracing::error!(key_id = %e.stored.key_id, error = %err, "CA record roots"),
        }
    }
    // Same order as key_lifecycle (activation, creation, key id).
    let mut signers: Vec<(SystemTime, SystemTime, String, Arc<SigningCa>)> = entries
        .iter()
        .filter_map(|e| {
            e.signer.clone().map(|s| {
                (
                    unix(e.stored.activates_at_unix),
                    unix(e.stored.created_at_unix),
                    e.stored.key_id.clone(),
                    s,
                )
            })
        })
        .collect();
    signers.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    CaState {
        signers: signers.into_iter().map(|(at, _, _, c)| (at, c)).collect(),
        entries,
        roots,
        sequence,
    }
}

/// Every stored CA (from the index, which the feed keeps current).
pub fn stored_cas(index: &Index) -> Vec<StoredCa> {
    let mut v: Vec<StoredCa> = index
        .list(Kind::CertificateAuthority)
        .iter()
        .filter_map(|r| match StoredCa::from_bytes(&r.data) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(key_id = %r.name, error = %e, "unreadable stored CA");
                None
            }
        })
        .collect();
    v.sort_by(|a, b| (a.activates_at_unix, &a.key_id).cmp(&(b.activates_at_unix, &b.key_id)));
    v
}

/// The rotating side.
#[derive(Clone)]
pub struct CaRotator {
    pub store: Store,
    pub ring: Arc<CaRing>,
    pub clock: Arc<dyn Clock>,
    pub algorithm: badge_ca::CaAlgorithm,
    pub validity: Duration,
}

impl CaRotator {
    /// The CAs as the store has them now (under the lock the index may lag).
    async fn current(&self) -> Result<Vec<StoredCa>> {
        let all = |_: &badge_store::Record| true;
        let page = self
            .store
            .list(ListQuery {
                kind: Kind::CertificateAuthority,
                namespace: None,
                after: None,
                limit: 0,
                filter: &all,
            })
            .await?;
        page.items
            .iter()
            .map(|r| StoredCa::from_bytes(&r.data))
            .collect()
    }

    async fn generate(&self, activates_at: SystemTime) -> Result<StoredCa> {
        let kek = self
            .ring
            .kek()
            .ok_or_else(|| Error::precondition("no key-encryption key configured"))?;
        let now = self.clock.now();
        let (alg, td, validity) = (
            self.algorithm,
            self.ring.trust_domain.clone(),
            self.validity,
        );
        // RSA generation takes a while: keep it off the async workers.
        let ca = tokio::task::spawn_blocking(move || SigningCa::generate(alg, &td, now, validity))
            .await
            .map_err(|e| Error::Internal(format!("CA generation task: {e}")))??;
        let stored = StoredCa::seal(&ca, kek, CaSource::Generated, now, activates_at)?;
        self.store
            .apply(
                vec![Op::Create {
                    kind: Kind::CertificateAuthority,
                    namespace: String::new(),
                    name: stored.key_id.clone(),
                    labels: BTreeMap::new(),
                    data: stored.to_bytes()?,
                }],
                now,
            )
            .await?;
        tracing::info!(key_id = %stored.key_id, activates_at = stored.activates_at_unix, not_after = stored.not_after_unix, "workload CA generated and published in the trust bundle");
        Ok(stored)
    }

    /// One lifecycle pass, if this replica gets the lock.
    pub async fn tick(&self) -> Result<()> {
        let out = self
            .store
            .try_locked(CA_ROTATION_LOCK, || async {
                let cas = self.current().await?;
                let t: Vec<KeyTimes> = cas.iter().map(StoredCa::times).collect();
                let now = self.clock.now();
                let plan = key_lifecycle::plan(&t, &self.ring.policy, now);
                if let Some(at) = plan.generate_activating_at {
                    self.generate(at).await?;
                }
                for key_id in plan.remove {
                    self.store
                        .apply(
                            vec![Op::Delete {
                                kind: Kind::CertificateAuthority,
                                namespace: String::new(),
                                name: key_id.clone(),
                                precondition: Precondition::default(),
                            }],
                            now,
                        )
                        .await?;
                    tracing::info!(%key_id, "retired workload CA removed from the trust bundle: every certificate it signed has expired");
                }
                Ok::<(), Error>(())
            })
            .await?;
        match out {
            Some(r) => r,
            None => Ok(()),
        }
    }

    /// `RotateCertificateAuthority`: a new CA, published now, signing after the
    /// propagation delay (at once when none signs yet).
    pub async fn rotate_now(&self) -> Result<StoredCa> {
        for _ in 0..100 {
            let out = self
                .store
                .try_locked(CA_ROTATION_LOCK, || async {
                    let cas = self.current().await?;
                    let t: Vec<KeyTimes> = cas.iter().map(StoredCa::times).collect();
                    let at =
                        key_lifecycle::forced_activation(&t, &self.ring.policy, self.clock.now());
                    self.generate(at).await
                })
                .await?;
            if let Some(r) = out {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Conflict(
            "another token-issuer replica has been rotating the CA for 5 s; retry".into(),
        ))
    }

    /// Runs `tick` every `interval` until aborted.
    pub async fn run(self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "CA rotation pass failed");
            }
        }
    }
}

/// Keeps the ring in step with the stored CAs (and the bundle's sequence in step with
/// the JWT keys too, since the SPIFFE bundle carries both).
pub async fn follow_cas(index: Index, ring: Arc<CaRing>, clock: Arc<dyn Clock>) {
    let mut rx = index.subscribe();
    let mut seen: Vec<(Kind, String, i64)> = Vec::new();
    loop {
        let mut now_seen: Vec<(Kind, String, i64)> = [Kind::CertificateAuthority, Kind::SigningKey]
            .into_iter()
            .flat_map(|k| {
                index
                    .list(k)
                    .iter()
                    .map(|r| (k, r.name.clone(), r.resource_version))
                    .collect::<Vec<_>>()
            })
            .collect();
        now_seen.sort();
        if now_seen != seen {
            let sequence = u64::try_from(index.revision()).unwrap_or(0);
            if let Err(e) = ring.rebuild(stored_cas(&index), sequence, clock.now()) {
                tracing::error!(error = %e, "CA ring rebuilt with errors");
            }
            seen = now_seen;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "CA records are made at the wall-clock time real verifiers check"
)]
mod tests {
    use super::*;
    use badge_core::FixedClock;

    const HOUR: Duration = Duration::from_secs(3600);

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes(&[byte; 32]).expect("kek")
    }

    fn td() -> TrustDomain {
        TrustDomain::parse("badge.test").expect("td")
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("now")
            .as_secs()
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn states(ring: &CaRing, now: SystemTime) -> Vec<(String, i32)> {
        ring.describe(now)
            .into_iter()
            .map(|a| (a.key_id, a.state))
            .collect()
    }

    /// The stored lifecycle on a real store with a fixed clock: first CA signs at
    /// once; a rotation publishes the successor (both roots in the bundle, sequence
    /// up) while the old CA still signs; after the propagation delay the successor
    /// signs and the old one is retired but still published; it is deleted only
    /// once its last leaf (cap + backdate after retirement) has expired; the
    /// rotation period triggers the next CA by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stored_lifecycle_publish_sign_retire_remove() {
        let db = badge_store::testing::fresh_database().await;
        let store = db.store().await;
        let clock = Arc::new(FixedClock::at_unix(now_secs()));
        let policy = lifecycle_policy(
            86_400 * Duration::from_secs(1),
            HOUR,
            HOUR,
            Duration::from_secs(120),
        );
        let ring = Arc::new(CaRing::new(policy, td(), Some(kek(7))));
        let index = Index::start(
            store.clone(),
            &[Kind::CertificateAuthority, Kind::SigningKey],
        );
        index.ready().await;
        let follower = tokio::spawn(follow_cas(index.clone(), ring.clone(), clock.clone()));
        let rotator = CaRotator {
            store: store.clone(),
            ring: ring.clone(),
            clock: clock.clone(),
            algorithm: badge_ca::CaAlgorithm::EcdsaP256,
            validity: Duration::from_secs(10 * 86_400),
        };

        rotator.tick().await.expect("first tick");
        wait_for("the first CA", || ring.snapshot().entries.len() == 1).await;
        let first = ring.snapshot().entries[0].stored.key_id.clone();
        let active = ring
            .active(clock.now())
            .expect("the first CA signs at once");
        assert_eq!(active.key_id(), first);
        assert_eq!(ring.snapshot().roots.len(), 1);
        let seq1 = ring.snapshot().sequence;
        assert!(seq1 > 0);
        // The record holds no plaintext key: only the sealed blob and public PEM.
        let raw = store
            .get(Kind::CertificateAuthority, "", &first)
            .await
            .expect("record");
        let text = String::from_utf8(raw.data).expect("utf8");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        // A second tick changes nothing.
        rotator.tick().await.expect("tick");
        assert_eq!(ring.snapshot().entries.len(), 1);

        let second = rotator.rotate_now().await.expect("rotate").key_id;
        wait_for("the rotated CA", || ring.snapshot().entries.len() == 2).await;
        let snap = ring.snapshot();
        assert_eq!(snap.roots.len(), 2, "both roots are published");
        assert!(snap.sequence > seq1, "the bundle sequence increases");
        assert_eq!(
            ring.active(clock.now()).expect("signer").key_id(),
            first,
            "the new CA does not sign before the propagation delay"
        );
        let pb_state = |s: pb::CertificateAuthorityState| s as i32;
        assert_eq!(
            states(&ring, clock.now()),
            vec![
                (
                    first.clone(),
                    pb_state(pb::CertificateAuthorityState::Active)
                ),
                (
                    second.clone(),
                    pb_state(pb::CertificateAuthorityState::Published)
                ),
            ]
        );

        clock.advance(HOUR);
        assert_eq!(ring.active(clock.now()).expect("signer").key_id(), second);
        let list = ring.describe(clock.now());
        assert_eq!(
            list[0].state,
            pb_state(pb::CertificateAuthorityState::Retired)
        );
        // Retired at the successor's activation; removable after the leaf cap and
        // the leaves' backdate.
        let retired = list[0].retired_at.expect("retired_at").seconds;
        assert_eq!(
            list[0].remove_after.expect("remove_after").seconds,
            retired + 3600 + 120
        );

        // One second before its last leaf expires the old CA is still published.
        clock.advance(HOUR + Duration::from_secs(119));
        rotator.tick().await.expect("tick");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ring.snapshot().entries.len(), 2);
        assert_eq!(ring.snapshot().roots.len(), 2);
        let seq2 = ring.snapshot().sequence;

        clock.advance(Duration::from_secs(1));
        rotator.tick().await.expect("tick");
        wait_for("the retired CA's removal", || {
            ring.snapshot().entries.len() == 1
        })
        .await;
        assert_eq!(ring.snapshot().entries[0].stored.key_id, second);
        assert_eq!(ring.snapshot().roots.len(), 1);
        assert!(ring.snapshot().sequence > seq2);

        // Automatic rotation once the period is up (counted from activation).
        clock.advance(Duration::from_secs(86_400));
        rotator.tick().await.expect("tick");
        wait_for("the automatic rotation", || {
            ring.snapshot().entries.len() == 2
        })
        .await;
        assert_eq!(ring.active(clock.now()).expect("signer").key_id(), second);
        follower.abort();
    }

    /// The sealed key is bound to its record and KEK: another KEK is refused by
    /// name, a sealed key moved into another CA's record does not open, and a record
    /// whose chain was swapped for another CA's is refused by from_parts.
    #[test]
    fn sealed_key_is_bound_to_its_record() {
        let now = SystemTime::now();
        let a = SigningCa::generate(badge_ca::CaAlgorithm::EcdsaP256, &td(), now, HOUR * 48)
            .expect("a");
        let b = SigningCa::generate(badge_ca::CaAlgorithm::EcdsaP256, &td(), now, HOUR * 48)
            .expect("b");
        let sa = StoredCa::seal(&a, &kek(1), CaSource::Generated, now, now).expect("seal a");
        let sb = StoredCa::seal(&b, &kek(1), CaSource::Generated, now, now).expect("seal b");
        let back = sa.unseal(&kek(1), now).expect("unseal");
        assert_eq!(back.key_id(), a.key_id());
        assert_eq!(
            StoredCa::from_bytes(&sa.to_bytes().expect("bytes")).expect("parse"),
            sa
        );

        let err = sa.unseal(&kek(2), now).expect_err("other KEK").to_string();
        assert!(
            err.contains(&kek(1).id()) && err.contains(&kek(2).id()),
            "{err}"
        );

        let mut moved = sb.clone();
        moved.encrypted_private_key = sa.encrypted_private_key.clone();
        assert!(
            moved.unseal(&kek(1), now).is_err(),
            "a key moved into another record must not open"
        );

        let mut swapped = sa.clone();
        swapped.chain_pem = sb.chain_pem.clone();
        swapped.roots_pem = sb.roots_pem.clone();
        assert!(
            swapped.unseal(&kek(1), now).is_err(),
            "key and chain must belong together"
        );

        // Debug never shows the sealed blob.
        assert!(!format!("{sa:?}").contains(&sa.encrypted_private_key));
    }

    #[test]
    fn config_defaults_and_checks() {
        let mut errors = Vec::new();
        let c = crate::ca_config::CaConfig::default();
        c.validate(Some("https://badge.example.com"), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            c.trust_domain("https://Badge.Example.com:8443")
                .expect("td")
                .as_str(),
            "badge.example.com"
        );
        let bad = crate::ca_config::CaConfig {
            algorithm: "DSA".into(),
            validity_seconds: 86_400,
            max_lifetime_seconds: 60,
            trust_domain: Some("Bad Domain".into()),
            istio_audiences: vec![],
            ..Default::default()
        };
        let mut errors = Vec::new();
        bad.validate(Some("https://badge.example.com"), &mut errors);
        let all = errors.join("\n");
        for want in [
            "ca.algorithm: must be \"ECDSAP256\" or \"RSA3072\", got \"DSA\"",
            "ca.trust_domain: invalid value \"Bad Domain\"",
            "ca.validity_seconds: 86400 is too short",
            "ca.istio_audiences",
        ] {
            assert!(all.contains(want), "missing {want:?} in {all}");
        }
    }
}
