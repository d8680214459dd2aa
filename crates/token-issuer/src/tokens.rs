//! `TokenService.CreateToken` (Kubernetes TokenRequest, reference §1.3) and
//! `KeyService`.

use std::sync::Arc;

use badge_core::token::{
    self, Binding, BoundKind, BoundObjectRef, ClaimsInput, IssuerSettings, ObjectRef,
    TokenRequestSpec,
};
use badge_core::{Clock, Error, Kind, Result, names};
use badge_keys::Algorithm;
use badge_proto::identity::Pod;
use badge_proto::token::{
    self as pb, key_service_server::KeyService, token_service_server::TokenService,
};
use badge_records::{Index, decode};
use badge_runtime::{Caller, MethodRule, MethodTable, status};
use badge_store::Record;
use tonic::{Request, Response, Status};

use crate::keyring::KeyRing;
use crate::rotation::Rotator;

/// Every issuer method → what it does in RBAC terms. CreateToken is Kubernetes'
/// `create` on `serviceaccounts/token`.
pub const METHODS: MethodTable = &[
    (
        "/badge.token.v1.TokenService/CreateToken",
        MethodRule::new("create", "", "serviceaccounts")
            .sub("token")
            .scoped::<pb::CreateTokenRequest>(),
    ),
    (
        "/badge.token.v1.TokenService/RevokeToken",
        MethodRule::new("delete", "", "serviceaccounts").sub("token"),
    ),
    (
        "/badge.token.v1.KeyService/RotateKeys",
        MethodRule::new("update", "badge.dev", "signingkeys"),
    ),
    (
        "/badge.token.v1.KeyService/ListKeys",
        MethodRule::new("list", "badge.dev", "signingkeys"),
    ),
];

#[derive(Clone)]
pub struct Issuer {
    pub settings: Arc<IssuerSettings>,
    pub index: Index,
    pub ring: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    /// None in file mode (no rotation).
    pub rotator: Option<Rotator>,
    pub default_algorithm: Algorithm,
    /// Whether the store answered the last health probe. The index serves lookups
    /// from memory, but while the store is unreachable it cannot learn of
    /// deletions, so tokens are refused (UNAVAILABLE) rather than issued on stale
    /// data; it recovers by itself when the probe succeeds again.
    pub store_ok: Arc<std::sync::atomic::AtomicBool>,
    pub store: badge_store::Store,
    /// The longest a token may live (how long a revocation is kept by default).
    pub max_token_lifetime: std::time::Duration,
}

fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound(format!("{} {name:?} not found", kind.resource()))
}

impl Issuer {
    /// Looks an object up, confirming a uid mismatch against the store before
    /// refusing (the index may briefly hold the previous incarnation).
    async fn bound(&self, kind: Kind, namespace: &str, name: &str, uid: &str) -> Result<Record> {
        let rec = self
            .index
            .lookup(kind, namespace, name)
            .await?
            .ok_or_else(|| not_found(kind, name))?;
        if uid.is_empty() || rec.uid == uid {
            return Ok(rec);
        }
        let fresh = self
            .index
            .fresh(kind, namespace, name)
            .await?
            .ok_or_else(|| not_found(kind, name))?;
        if fresh.uid == uid {
            Ok(fresh)
        } else {
            Err(token::bound_uid_mismatch(uid, &fresh.uid))
        }
    }

    /// Everything CreateToken does, in Kubernetes' order.
    pub async fn create_token(
        &self,
        caller: Option<&Caller>,
        r: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse> {
        if !self.store_ok.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Unavailable(
                "the store is unreachable: cannot confirm that the service account and bound object still exist".into(),
            ));
        }
        names::validate_key(Kind::ServiceAccount, &r.namespace, &r.name)?;
        let spec = TokenRequestSpec {
            audiences: r.audiences.clone(),
            expiration_seconds: r.expiration_seconds,
            bound_object_ref: r.bound_object_ref.as_ref().map(|b| BoundObjectRef {
                kind: b.kind.clone(),
                api_version: b.api_version.clone(),
                name: b.name.clone(),
                uid: b.uid.clone(),
            }),
        };
        // Static validation first: a bad request never costs a lookup.
        let bound_kind = token::validate_request(&spec)?;

        let sa_rec = self
            .index
            .lookup(Kind::ServiceAccount, &r.namespace, &r.name)
            .await?
            .ok_or_else(|| not_found(Kind::ServiceAccount, &r.name))?;
        if !r.service_account_uid.is_empty() && r.service_account_uid != sa_rec.uid {
            let fresh = self
                .index
                .fresh(Kind::ServiceAccount, &r.namespace, &r.name)
                .await?
                .ok_or_else(|| not_found(Kind::ServiceAccount, &r.name))?;
            if fresh.uid != r.service_account_uid {
                return Err(token::sa_uid_mismatch(&r.service_account_uid, &fresh.uid));
            }
        }
        // The record's name is the object's: no need to decode the whole account.
        let sa_name = sa_rec.name.clone();

        let bref = spec.bound_object_ref.clone().unwrap_or_default();
        let binding = match bound_kind {
            None => Binding::None,
            Some(BoundKind::Pod) => {
                let rec = self
                    .bound(Kind::Pod, &r.namespace, &bref.name, &bref.uid)
                    .await?;
                let pod: Pod = decode(&rec)?;
                let spec = pod.spec.unwrap_or_default();
                if spec.service_account_name != sa_name {
                    return Err(token::pod_sa_mismatch(&sa_name));
                }
                // The node is informational for pod-bound tokens: a missing Node
                // record embeds the name alone.
                let node = if spec.node_name.is_empty() {
                    None
                } else {
                    let uid = self
                        .index
                        .lookup(Kind::Node, "", &spec.node_name)
                        .await?
                        .map(|n| n.uid)
                        .unwrap_or_default();
                    Some(ObjectRef::new(spec.node_name.clone(), uid))
                };
                Binding::Pod {
                    pod: ObjectRef::new(rec.name, rec.uid),
                    node,
                }
            }
            Some(BoundKind::Secret) => {
                let rec = self
                    .bound(Kind::Secret, &r.namespace, &bref.name, &bref.uid)
                    .await?;
                Binding::Secret(ObjectRef::new(rec.name, rec.uid))
            }
            Some(BoundKind::Node) => {
                let rec = self.bound(Kind::Node, "", &bref.name, &bref.uid).await?;
                Binding::Node(ObjectRef::new(rec.name, rec.uid))
            }
        };
        let pod_bound = matches!(binding, Binding::Pod { .. });
        let now = self.clock.now();
        let plan = token::plan(&self.settings, &spec, pod_bound, now);
        let key = self
            .ring
            .active(now)
            .ok_or_else(|| Error::Unavailable("no signing key is active yet".into()))?;
        let jti = uuid::Uuid::new_v4().to_string();
        let issuer = self
            .settings
            .signing_issuer()
            .unwrap_or_default()
            .to_string();
        let claims = token::bound_claims_json(&ClaimsInput {
            issuer: &issuer,
            namespace: &r.namespace,
            service_account: ObjectRef::new(sa_name.clone(), sa_rec.uid.clone()),
            binding: binding.clone(),
            plan: &plan,
            jti: &jti,
        });
        // Signed inline, even RS256 (~0.3 ms): measured here, handing RSA signatures
        // to blocking threads cost a third of the throughput in thread switches.
        let jwt = key
            .sign_jwt(&key.jwt_header(false), &claims)
            .map_err(|e| Error::Internal(format!("signing: {e}")))?;
        let credential_id = token::credential_id(&jti);
        let bound = match &binding {
            Binding::None => String::new(),
            Binding::Pod { pod, .. } => format!("Pod/{}", pod.name),
            Binding::Secret(s) => format!("Secret/{}", s.name),
            Binding::Node(n) => format!("Node/{}", n.name),
        };
        badge_runtime::telemetry::metrics::tokens_issued().add(
            1,
            &[
                opentelemetry::KeyValue::new("alg", key.algorithm().as_str()),
                opentelemetry::KeyValue::new(
                    "bound_kind",
                    match &binding {
                        Binding::None => "none",
                        Binding::Pod { .. } => "Pod",
                        Binding::Secret(_) => "Secret",
                        Binding::Node(_) => "Node",
                    },
                ),
            ],
        );
        // One audit event per issued token: who asked, for whom, what it can do and
        // until when — never the token itself.
        tracing::info!(
            target: "audit",
            event = "token.issued",
            requester = caller.map(|c| c.user.as_str()).unwrap_or(""),
            namespace = %r.namespace,
            service_account = %sa_name,
            audiences = ?plan.audiences,
            bound_object = %bound,
            credential_id = %credential_id,
            kid = %key.kid(),
            expires_at = plan.expires_at,
            "issued service account token"
        );
        Ok(pb::CreateTokenResponse {
            token: jwt,
            expiration_timestamp: Some(prost_types::Timestamp {
                seconds: plan.status_expiration,
                nanos: 0,
            }),
            warnings: plan.warnings,
            audiences: plan.audiences,
            credential_id,
        })
    }
}

impl Issuer {
    /// Stores a revocation, or extends a stored one; answers the expiry that is
    /// stored. Revoking twice is not an error (the token is revoked either way), but
    /// the answer must never claim an expiry the store does not hold: a revocation
    /// that ends before its token does would let the token back in. So the later of
    /// the two expiries wins, written against the version that was read.
    async fn store_revocation(
        &self,
        rev: badge_core::revocation::Revocation,
        now: std::time::SystemTime,
    ) -> Result<i64> {
        let create = badge_store::Op::Create {
            kind: Kind::Revocation,
            namespace: String::new(),
            name: rev.jti.clone(),
            labels: Default::default(),
            data: rev.to_bytes(),
        };
        match self.store.apply(vec![create], now).await {
            Ok(_) => return Ok(rev.expires_at_unix),
            Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        // A concurrent revoker may win between our read and write: retry on the
        // fresh version a few times (Kubernetes' GuaranteedUpdate loop).
        for _ in 0..5 {
            let stored = match self.store.get(Kind::Revocation, "", &rev.jti).await {
                Ok(r) => r,
                // Deleted meanwhile (the cleaner removes expired ones): create again.
                Err(Error::NotFound(_)) => return Box::pin(self.store_revocation(rev, now)).await,
                Err(e) => return Err(e),
            };
            let mut old = badge_core::revocation::Revocation::from_bytes(&stored.data)?;
            if old.expires_at_unix >= rev.expires_at_unix {
                return Ok(old.expires_at_unix);
            }
            // Extend: the first revocation's time, author and reason stay.
            old.expires_at_unix = rev.expires_at_unix;
            let update = badge_store::Op::Update {
                kind: Kind::Revocation,
                namespace: String::new(),
                name: rev.jti.clone(),
                precondition: badge_store::Precondition {
                    resource_version: Some(stored.resource_version),
                    uid: Some(stored.uid.clone()),
                },
                labels: stored.labels.clone(),
                data: old.to_bytes(),
                deletion_timestamp: None,
            };
            match self.store.apply(vec![update], now).await {
                Ok(_) => return Ok(rev.expires_at_unix),
                Err(Error::Conflict(_) | Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "revocation of {:?} is being changed concurrently: retry",
            token::credential_id(&rev.jti)
        )))
    }

    /// Revokes one token until it expires: a Revocation record every reviewer
    /// learns of through the change feed.
    pub async fn revoke_token(
        &self,
        caller: Option<&Caller>,
        r: pb::RevokeTokenRequest,
    ) -> Result<pb::RevokeTokenResponse> {
        let jti = badge_core::revocation::parse_credential_id("credential_id", &r.credential_id)?;
        if r.reason.len() > 1024 {
            return Err(Error::invalid("reason", "at most 1024 bytes"));
        }
        let now = self.clock.now();
        let now_s = token::unix_seconds(now);
        let expires_at_unix = match &r.expires_at {
            Some(ts) if ts.seconds <= now_s => {
                return Err(Error::invalid(
                    "expires_at",
                    format!(
                        "{} is in the past: an expired token needs no revocation",
                        ts.seconds
                    ),
                ));
            }
            Some(ts) => ts.seconds,
            None => now_s.saturating_add(
                i64::try_from(self.max_token_lifetime.as_secs()).unwrap_or(i64::MAX / 2),
            ),
        };
        let rev = badge_core::revocation::Revocation {
            jti: jti.clone(),
            expires_at_unix,
            revoked_at_unix: now_s,
            revoked_by: caller.map(|c| c.user.clone()).unwrap_or_default(),
            reason: r.reason.clone(),
        };
        let expires_at_unix = self.store_revocation(rev, now).await?;
        let credential_id = token::credential_id(&jti);
        tracing::info!(
            target: "audit",
            event = "token.revoked",
            requester = caller.map(|c| c.user.as_str()).unwrap_or(""),
            credential_id = %credential_id,
            expires_at = expires_at_unix,
            reason = %r.reason,
            "revoked service account token"
        );
        Ok(pb::RevokeTokenResponse {
            credential_id,
            expires_at: Some(prost_types::Timestamp {
                seconds: expires_at_unix,
                nanos: 0,
            }),
        })
    }
}

/// Deletes revocations whose tokens have expired, every minute. Idempotent, so
/// every replica may run it.
pub async fn prune_revocations(store: badge_store::Store, clock: Arc<dyn Clock>) {
    loop {
        let now = clock.now();
        let now_s = token::unix_seconds(now);
        let expired = |r: &Record| {
            badge_core::revocation::Revocation::from_bytes(&r.data)
                .map(|rev| rev.expires_at_unix < now_s)
                .unwrap_or(false)
        };
        let page = store
            .list(badge_store::ListQuery {
                kind: Kind::Revocation,
                namespace: None,
                after: None,
                limit: 0,
                filter: &expired,
            })
            .await;
        if let Ok(page) = page {
            for r in page.items {
                let op = badge_store::Op::Delete {
                    kind: Kind::Revocation,
                    namespace: String::new(),
                    name: r.name.clone(),
                    precondition: badge_store::Precondition {
                        resource_version: Some(r.resource_version),
                        uid: None,
                    },
                };
                if store.apply(vec![op], now).await.is_ok() {
                    tracing::info!(jti = %r.name, "expired revocation pruned");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
}

#[tonic::async_trait]
impl TokenService for Issuer {
    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        Ok(Response::new(
            Issuer::revoke_token(self, caller.as_ref(), req.into_inner())
                .await
                .map_err(status)?,
        ))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let resp = Issuer::create_token(self, caller.as_ref(), req.into_inner())
            .await
            .map_err(status)?;
        let warnings = resp.warnings.clone();
        Ok(badge_runtime::status::with_warnings(resp, warnings))
    }
}

#[tonic::async_trait]
impl KeyService for Issuer {
    async fn rotate_keys(
        &self,
        req: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        let r = req.into_inner();
        let Some(rotator) = &self.rotator else {
            return Err(status(Error::precondition(
                "keys come from files (keys.signing_key_file): rotate them by replacing the files",
            )));
        };
        let algorithm = if r.algorithm.is_empty() {
            self.default_algorithm
        } else {
            match r.algorithm.as_str() {
                "ES256" => Algorithm::ES256,
                "RS256" => Algorithm::RS256,
                other => {
                    return Err(status(Error::invalid(
                        "algorithm",
                        format!("must be \"ES256\" or \"RS256\", got {other:?}"),
                    )));
                }
            }
        };
        let stored = rotator.rotate_now(algorithm).await.map_err(status)?;
        // Show it as ListKeys would (the ring may not have applied it yet).
        let now = self.clock.now();
        let key = self
            .ring
            .describe(now)
            .into_iter()
            .find(|k| k.kid == stored.kid)
            .unwrap_or_else(|| pb::SigningKey {
                kid: stored.kid.clone(),
                algorithm: stored.algorithm.to_string(),
                state: if stored.activates_at_unix <= badge_core::token::unix_seconds(now) {
                    pb::KeyState::Active
                } else {
                    pb::KeyState::Published
                } as i32,
                created_at: Some(prost_types::Timestamp {
                    seconds: stored.created_at_unix,
                    nanos: 0,
                }),
                activates_at: Some(prost_types::Timestamp {
                    seconds: stored.activates_at_unix,
                    nanos: 0,
                }),
                retired_at: None,
                remove_after: None,
                public_key_pem: stored.public_key().map(|p| p.to_pem()).unwrap_or_default(),
            });
        Ok(Response::new(pb::RotateKeysResponse { key: Some(key) }))
    }

    async fn list_keys(
        &self,
        _req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        Ok(Response::new(pb::ListKeysResponse {
            keys: self.ring.describe(self.clock.now()),
        }))
    }
}
