//! JWT-SVIDs for pods: `badge.certificates.v1.JwtSvidService/MintJwtSvid`, what the
//! node agent (`badge-agent node`) calls when a workload asks its Workload API for
//! a JWT-SVID.
//!
//! Who may ask: RBAC `create jwtsvids` (group `badge.dev`) in the namespace —
//! checked by the auth layer — and then, as for pod certificates, only the pod's
//! node (`system:node:<node>` in `system:nodes`) or the pod itself (its pod-bound
//! service-account token). The pod is read from the store (not the feed-fed
//! index), so a pod deleted a moment ago gets nothing; its uid must match.
//!
//! The token (SPIFFE JWT-SVID profile): header `{alg, kid, typ: "JWT"}` only;
//! claims `sub` (the service account's SPIFFE ID), `aud` (as asked), `exp`, `iat`,
//! `jti` and Badge's pod binding `badge.dev/pod` {name, uid}. Signed with the key
//! that signs service-account tokens now, so the trust bundle's `use: jwt-svid`
//! keys verify it. There is no `iss`: a JWT-SVID is not a service-account token and
//! TokenReview (which requires one of its issuers) refuses it; likewise a
//! service-account token is no JWT-SVID (its `sub` is no SPIFFE ID).

use std::sync::Arc;
use std::time::Duration;

use badge_core::review::{EXTRA_POD_NAME, EXTRA_POD_UID};
use badge_core::spiffe::SpiffeId;
use badge_core::{Clock, Error, FieldViolation, Kind, Result};
use badge_proto::certificates as pb;
use badge_proto::certificates::jwt_svid_service_server::JwtSvidService;
use badge_proto::identity::Pod;
use badge_records::{Index, decode};
use badge_runtime::MethodRule;
use badge_runtime::auth::{Caller, MethodTable};
use badge_runtime::status::status;
use tonic::{Request, Response, Status};

use crate::certificates::Ca;
use crate::keyring::KeyRing;

pub const METHODS: MethodTable = &[(
    "/badge.certificates.v1.JwtSvidService/MintJwtSvid",
    MethodRule::new("create", "badge.dev", "jwtsvids").scoped::<pb::MintJwtSvidRequest>(),
)];

/// Lifetime when the request names none: short, as SPIFFE recommends.
pub const DEFAULT_TTL_SECONDS: i64 = 300;
pub const MIN_TTL_SECONDS: i64 = 60;
pub const MAX_TTL_SECONDS: i64 = 3600;
const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_LEN: usize = 512;
/// Badge's pod-binding claim.
pub const POD_CLAIM: &str = "badge.dev/pod";

const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";

#[derive(Clone)]
pub struct JwtSvids {
    pub ca: Ca,
    pub keys: Arc<KeyRing>,
    pub index: Index,
    pub clock: Arc<dyn Clock>,
}

enum Requester<'a> {
    Node(&'a str),
    Pod { name: &'a str, uid: &'a str },
}

fn requester(caller: &Caller) -> Result<Requester<'_>> {
    if let Some(node) = caller.user.strip_prefix(NODE_PREFIX)
        && caller.in_group(NODES_GROUP)
    {
        return Ok(Requester::Node(node));
    }
    let first = |k: &str| {
        caller
            .extra
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
    };
    if caller.user.starts_with("system:serviceaccount:")
        && let (Some(name), Some(uid)) = (first(EXTRA_POD_NAME), first(EXTRA_POD_UID))
    {
        return Ok(Requester::Pod { name, uid });
    }
    Err(Error::PermissionDenied(format!(
        "user {:?} may not mint JWT-SVIDs: only the pod's node (system:node:<node> in system:nodes) or the pod itself (its pod-bound service-account token) may",
        caller.user
    )))
}

/// Static checks of a request: every bad field named.
pub fn validate(r: &pb::MintJwtSvidRequest) -> Result<Duration> {
    let mut v = Vec::new();
    for (field, value) in [
        ("namespace", &r.namespace),
        ("pod_name", &r.pod_name),
        ("pod_uid", &r.pod_uid),
    ] {
        if value.is_empty() {
            v.push(FieldViolation::new(field, "Required value"));
        }
    }
    if r.audience.is_empty() {
        v.push(FieldViolation::new(
            "audience",
            "Required value: at least one audience",
        ));
    }
    if r.audience.len() > MAX_AUDIENCES {
        v.push(FieldViolation::new(
            "audience",
            format!(
                "Too many: {} audiences, at most {MAX_AUDIENCES}",
                r.audience.len()
            ),
        ));
    }
    for (i, a) in r.audience.iter().enumerate() {
        if a.is_empty() {
            v.push(FieldViolation::new(
                format!("audience[{i}]"),
                "Required value: an audience may not be empty",
            ));
        } else if a.len() > MAX_AUDIENCE_LEN {
            v.push(FieldViolation::new(
                format!("audience[{i}]"),
                format!("Too long: at most {MAX_AUDIENCE_LEN} bytes"),
            ));
        }
    }
    let ttl = if r.ttl_seconds == 0 {
        DEFAULT_TTL_SECONDS
    } else {
        r.ttl_seconds
    };
    if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl) {
        v.push(FieldViolation::new(
            "ttl_seconds",
            format!(
                "Invalid value: {}: must be in the range [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}] (0: {DEFAULT_TTL_SECONDS})",
                r.ttl_seconds
            ),
        ));
    }
    Error::check(v)?;
    Ok(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)))
}

impl JwtSvids {
    async fn mint(
        &self,
        caller: &Caller,
        r: pb::MintJwtSvidRequest,
    ) -> Result<pb::MintJwtSvidResponse> {
        let ttl = validate(&r)?;
        let who = requester(caller)?;
        if let Requester::Pod { name, uid } = who
            && (name != r.pod_name || uid != r.pod_uid)
        {
            return Err(Error::PermissionDenied(format!(
                "a pod may only mint its own JWT-SVID: the token is bound to pod {name:?} ({uid}), the request names pod {:?} ({})",
                r.pod_name, r.pod_uid
            )));
        }
        let pod_rec = self
            .index
            .fresh(Kind::Pod, &r.namespace, &r.pod_name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("pods {:?} not found", r.pod_name)))?;
        if pod_rec.uid != r.pod_uid {
            return Err(Error::Conflict(format!(
                "pod_uid ({}) does not match the UID of pods {:?} in record. The object might have been deleted and then recreated",
                r.pod_uid, r.pod_name
            )));
        }
        if pod_rec.deletion_timestamp.is_some() {
            return Err(Error::Conflict(format!(
                "pods {:?} is being deleted: no new JWT-SVIDs are minted for it",
                r.pod_name
            )));
        }
        let pod: Pod = decode(&pod_rec)?;
        let spec = pod.spec.unwrap_or_default();
        match who {
            Requester::Node(node) if node != spec.node_name => {
                return Err(Error::PermissionDenied(format!(
                    "pod_name: pod {:?} is bound to node {:?}, not to the requesting node {node:?}",
                    r.pod_name, spec.node_name
                )));
            }
            Requester::Pod { .. } => {
                let own = format!(
                    "system:serviceaccount:{}:{}",
                    r.namespace, spec.service_account_name
                );
                if caller.user != own {
                    return Err(Error::PermissionDenied(format!(
                        "a pod may only mint its own JWT-SVID: {:?} is not pod {:?}'s service account",
                        caller.user, r.pod_name
                    )));
                }
            }
            Requester::Node(_) => {}
        }
        let sa = if spec.service_account_name.is_empty() {
            "default".to_string()
        } else {
            spec.service_account_name.clone()
        };
        self.index
            .lookup(Kind::ServiceAccount, &r.namespace, &sa)
            .await?
            .ok_or_else(|| Error::NotFound(format!("serviceaccounts {sa:?} not found")))?;
        let id = SpiffeId::for_service_account(&self.ca.ring.trust_domain, &r.namespace, &sa)?;

        let now = self.clock.now();
        let key = self
            .keys
            .active(now)
            .ok_or_else(|| Error::Unavailable("no signing key is active yet; retry".into()))?;
        let iat = badge_core::token::unix_seconds(now);
        let exp = badge_core::token::unix_seconds(now + ttl);
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = serde_json::json!({
            "sub": id.to_string(),
            "aud": r.audience,
            "exp": exp,
            "iat": iat,
            "jti": jti,
            POD_CLAIM: {"name": r.pod_name, "uid": r.pod_uid},
        });
        let payload = serde_json::to_vec(&claims)
            .map_err(|e| Error::Internal(format!("encoding claims: {e}")))?;
        let svid = key
            .sign_jwt(&key.jwt_header(true), &payload)
            .map_err(|e| Error::Internal(format!("signing: {e}")))?;
        tracing::info!(
            target: "audit",
            event = "jwt_svid.issued",
            requester = %caller.user,
            spiffe_id = %id,
            namespace = %r.namespace,
            pod = %r.pod_name,
            pod_uid = %r.pod_uid,
            audience = ?r.audience,
            jti = %jti,
            exp,
            kid = %key.kid(),
            "minted JWT-SVID"
        );
        Ok(pb::MintJwtSvidResponse {
            spiffe_id: id.to_string(),
            svid,
            expires_at: Some(badge_core::clock::timestamp(now + ttl)),
        })
    }
}

#[tonic::async_trait]
impl JwtSvidService for JwtSvids {
    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> std::result::Result<Response<pb::MintJwtSvidResponse>, Status> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        let r = req.into_inner();
        let (ns, pod) = (r.namespace.clone(), r.pod_name.clone());
        let out = self.mint(&caller, r).await.map_err(status);
        if let Err(s) = &out {
            tracing::info!(
                target: "audit",
                event = "jwt_svid.refused",
                requester = %caller.user,
                namespace = %ns,
                pod = %pod,
                code = ?s.code(),
                reason = %s.message(),
                "refused JWT-SVID"
            );
        }
        out.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::MintJwtSvidRequest {
        pb::MintJwtSvidRequest {
            namespace: "shop".into(),
            pod_name: "web-0".into(),
            pod_uid: "u1".into(),
            audience: vec!["orders".into()],
            ttl_seconds: 0,
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        assert_eq!(validate(&req()).expect("valid"), Duration::from_secs(300));
        let bad = pb::MintJwtSvidRequest {
            namespace: String::new(),
            pod_name: String::new(),
            pod_uid: String::new(),
            audience: vec![String::new()],
            ttl_seconds: 59,
        };
        let msg = validate(&bad).expect_err("invalid").to_string();
        for f in [
            "namespace",
            "pod_name",
            "pod_uid",
            "audience[0]",
            "ttl_seconds",
        ] {
            assert!(msg.contains(f), "{msg} lacks {f}");
        }
        let none = pb::MintJwtSvidRequest {
            audience: vec![],
            ..req()
        };
        assert!(
            validate(&none)
                .expect_err("no audience")
                .to_string()
                .contains("audience")
        );
        let long = pb::MintJwtSvidRequest {
            ttl_seconds: 3601,
            ..req()
        };
        assert!(validate(&long).is_err());
    }
}
