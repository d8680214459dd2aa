//! `badge.certificates.v1.CertificateAuthorityService`: on-demand CA rotation, the
//! CA list and the trust bundle over gRPC; and the start-up of the workload CA
//! (generated in the store, or plugged in from files).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use badge_ca::SigningCa;
use badge_core::{Clock, Error};
use badge_keys::Kek;
use badge_proto::certificates as pb;
use badge_proto::certificates::certificate_authority_service_server::CertificateAuthorityService;
use badge_records::Index;
use badge_runtime::MethodRule;
use badge_runtime::auth::MethodTable;
use badge_runtime::status::status;
use badge_store::Store;
use tonic::{Request, Response, Status};

use crate::ca_keyring::{self, CaRing, CaRotator};
use crate::config::IssuerConfig;
use crate::keyring::KeyRing;

/// RBAC of the CA methods. Rotation and the CA list are operator actions (verbs on
/// `certificateauthorities.badge.dev`, like `signingkeys`); the trust bundle is
/// public data (also served over HTTPS without any credential), so any
/// authenticated caller may read it.
pub const METHODS: MethodTable = &[
    (
        "/badge.certificates.v1.CertificateAuthorityService/RotateCertificateAuthority",
        MethodRule::new("update", "badge.dev", "certificateauthorities"),
    ),
    (
        "/badge.certificates.v1.CertificateAuthorityService/ListCertificateAuthorities",
        MethodRule::new("list", "badge.dev", "certificateauthorities"),
    ),
    (
        "/badge.certificates.v1.CertificateAuthorityService/GetTrustBundle",
        MethodRule::new("get", "badge.dev", "trustbundles").any_authenticated(),
    ),
];

/// The running CA.
#[derive(Clone)]
pub struct Ca {
    pub ring: Arc<CaRing>,
    /// None with a plug-in CA (no rotation).
    pub rotator: Option<CaRotator>,
    /// What certificates may be (lifetimes, key types, DNS names).
    pub issuance: badge_core::spiffe::plan::Policy,
}

/// Starts the CA: a plug-in CA from `[ca] plugin_dir`, else the stored CAs followed
/// through the change feed with this replica taking part in rotation. `None` when the
/// CA is disabled, or when there is neither a key-encryption key nor a plug-in
/// directory (file-mode JWT keys): a generated CA key must never be stored unsealed.
pub async fn start(
    config: &IssuerConfig,
    store: &Store,
    index: &Index,
    kek: Option<Kek>,
    clock: Arc<dyn Clock>,
    tasks: &mut badge_runtime::server::Tasks,
) -> anyhow::Result<Option<Ca>> {
    let c = &config.ca;
    if !c.enabled {
        return Ok(None);
    }
    let first_issuer = config.token.issuers.first().cloned().unwrap_or_default();
    let trust_domain = c.trust_domain(&first_issuer).map_err(anyhow::Error::msg)?;
    let issuance = c.issuance_policy(trust_domain.clone());
    let policy = ca_keyring::lifecycle_policy(
        Duration::from_secs(c.rotation_period_seconds),
        Duration::from_secs(c.propagation_delay_seconds),
        issuance.max_lifetime,
        issuance.backdate,
    );
    if let Some(dir) = &c.plugin_dir {
        let ca = SigningCa::from_plugin_dir(dir, clock.now())
            .map_err(|e| anyhow::anyhow!("ca.plugin_dir {}: {e}", dir.display()))?;
        tracing::info!(key_id = %ca.key_id(), dir = %dir.display(), "plug-in workload CA loaded");
        let ring = Arc::new(CaRing::new(policy, trust_domain, None));
        ring.install_plugin(ca)?;
        return Ok(Some(Ca {
            ring,
            rotator: None,
            issuance,
        }));
    }
    let Some(kek) = kek else {
        tracing::warn!(
            "ca: no key-encryption key (keys.signing_key_file mode) and no ca.plugin_dir: the workload CA is not served"
        );
        return Ok(None);
    };
    let algorithm = c.algorithm().map_err(anyhow::Error::msg)?;
    let ring = Arc::new(CaRing::new(policy, trust_domain, Some(kek)));
    ring.rebuild(
        ca_keyring::stored_cas(index),
        u64::try_from(index.revision()).unwrap_or(0),
        clock.now(),
    )
    .context("ca: the configured key-encryption key cannot unseal the stored CA keys")?;
    let rotator = CaRotator {
        store: store.clone(),
        ring: ring.clone(),
        clock: clock.clone(),
        algorithm,
        validity: Duration::from_secs(c.validity_seconds),
    };
    tasks.push(tokio::spawn(ca_keyring::follow_cas(
        index.clone(),
        ring.clone(),
        clock.clone(),
    )));
    rotator.tick().await.context("CA rotation")?;
    tasks.push(tokio::spawn(
        rotator
            .clone()
            .run(Duration::from_secs(c.check_interval_seconds)),
    ));
    // Wait until a CA signs (another replica may be generating the first one).
    for _ in 0..200 {
        if ring.active(clock.now()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Some(Ca {
        ring,
        rotator: Some(rotator),
        issuance,
    }))
}

/// The gRPC service.
#[derive(Clone)]
pub struct CaService {
    pub ca: Ca,
    pub keys: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
}

/// The SPIFFE bundle: every published CA root (`x509-svid`) and every published JWT
/// key (`jwt-svid`), so one document serves both SVID types.
pub fn bundle_json(ca: &CaRing, keys: &KeyRing) -> badge_core::Result<String> {
    let snap = ca.snapshot();
    let jwt: Vec<serde_json::Value> = keys
        .snapshot()
        .keys
        .iter()
        .filter_map(|k| serde_json::to_value(k.public.jwk()).ok())
        .collect();
    badge_ca::bundle::spiffe_bundle_json(
        &snap.roots,
        &jwt,
        snap.sequence,
        ca.refresh_hint.as_secs(),
    )
}

pub fn bundle_pem(ca: &CaRing) -> String {
    badge_ca::bundle::pem_bundle(&ca.snapshot().roots)
}

#[tonic::async_trait]
impl CertificateAuthorityService for CaService {
    async fn rotate_certificate_authority(
        &self,
        _req: Request<pb::RotateCertificateAuthorityRequest>,
    ) -> Result<Response<pb::RotateCertificateAuthorityResponse>, Status> {
        let Some(rotator) = &self.ca.rotator else {
            return Err(status(Error::precondition(
                "the CA is plugged in from files (ca.plugin_dir): rotate it by replacing the files",
            )));
        };
        let stored = rotator.rotate_now().await.map_err(status)?;
        let now = self.clock.now();
        // Show it as the list would (the ring may not have applied it yet).
        let authority = self
            .ca
            .ring
            .describe(now)
            .into_iter()
            .find(|a| a.key_id == stored.key_id)
            .unwrap_or_else(|| pb::CertificateAuthority {
                key_id: stored.key_id.clone(),
                state: if stored.activates_at_unix <= badge_core::token::unix_seconds(now) {
                    pb::CertificateAuthorityState::Active
                } else {
                    pb::CertificateAuthorityState::Published
                } as i32,
                source: stored.source.as_str().into(),
                created_at: Some(badge_core::clock::timestamp(unix(stored.created_at_unix))),
                activates_at: Some(badge_core::clock::timestamp(unix(stored.activates_at_unix))),
                retired_at: None,
                remove_after: None,
                not_before: Some(badge_core::clock::timestamp(unix(stored.not_before_unix))),
                not_after: Some(badge_core::clock::timestamp(unix(stored.not_after_unix))),
                certificate_chain_pem: format!("{}{}", stored.chain_pem, stored.roots_pem),
            });
        tracing::info!(
            target: "audit",
            event = "ca.rotated",
            requester = badge_runtime::auth::caller(&_req).map(|c| c.user.as_str()).unwrap_or(""),
            key_id = %stored.key_id,
            activates_at = stored.activates_at_unix,
            "workload CA rotated on demand"
        );
        Ok(Response::new(pb::RotateCertificateAuthorityResponse {
            authority: Some(authority),
        }))
    }

    async fn list_certificate_authorities(
        &self,
        _req: Request<pb::ListCertificateAuthoritiesRequest>,
    ) -> Result<Response<pb::ListCertificateAuthoritiesResponse>, Status> {
        Ok(Response::new(pb::ListCertificateAuthoritiesResponse {
            authorities: self.ca.ring.describe(self.clock.now()),
        }))
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        let ring = &self.ca.ring;
        Ok(Response::new(pb::GetTrustBundleResponse {
            trust_domain: ring.trust_domain.to_string(),
            spiffe_bundle_json: bundle_json(ring, &self.keys).map_err(status)?,
            roots_pem: bundle_pem(ring),
            sequence: ring.snapshot().sequence,
            refresh_hint_seconds: i64::try_from(ring.refresh_hint.as_secs()).unwrap_or(300),
        }))
    }
}

fn unix(t: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
}
