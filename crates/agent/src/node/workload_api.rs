//! The SPIFFE Workload API (`SpiffeWorkloadAPI`) on the agent's Unix socket.
//!
//! Every call must carry `workload.spiffe.io: true` (else `INVALID_ARGUMENT`, which
//! clients do not retry). The caller is identified by the kernel (its uid, gid
//! and pid from the socket, [`peer`]) and matched against the configured
//! selectors; a caller matching none gets `PERMISSION_DENIED` and nothing else.
//! Streams send their first message as soon as the caller's identity exists, then
//! a complete new message on every change (rotation, bundle), and end with
//! `PERMISSION_DENIED` once every pod the caller stood for is gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use badge_core::Clock;
use badge_proto::certificates as cpb;
use badge_proto::identity as id;
use badge_proto::spiffe_workload as pb;
use badge_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use badgectl::conn::Ch;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::jwt;
use super::metrics;
use super::selector::Peer;
use super::state::{Shared, Snapshot, Svid, View};

/// The security header every Workload API request must carry.
pub const HEADER: &str = "workload.spiffe.io";

// Bounds on request fields. The requests of this API are tiny; a caller that
// matched a selector may still be hostile, and every audience and token it sends
// is held, hashed into cache keys, forwarded to token-issuer (audiences) and
// parsed (tokens), so each is bounded well above any real use and refused with
// INVALID_ARGUMENT naming the field.
/// Audiences in one `FetchJWTSVID`.
pub const MAX_AUDIENCES: usize = 16;
/// Bytes of one audience.
pub const MAX_AUDIENCE_LEN: usize = 256;
/// Bytes of a SPIFFE ID (the SPIFFE specification's URI limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Bytes of the token given to `ValidateJWTSVID` (Badge's are about 1 KiB).
pub const MAX_JWT_LEN: usize = 8 * 1024;
/// Minted JWT-SVIDs kept for reuse: distinct audiences each add an entry, so a
/// caller cycling through audiences must not grow the cache without bound (past
/// it, tokens are minted but not kept).
pub const MAX_JWT_CACHE: usize = 4096;

/// Checks `audience` of a JWT-SVID request: 1 to [`MAX_AUDIENCES`] non-empty
/// values of at most [`MAX_AUDIENCE_LEN`] bytes.
pub fn check_audiences(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    check_bounded_list(
        "audience",
        audience,
        MAX_AUDIENCES,
        "audiences",
        MAX_AUDIENCE_LEN,
    )
}

/// A request's list field `field`: at most `max` `noun` of at most `max_len` bytes
/// each, else INVALID_ARGUMENT naming the field (and the item). What a caller sends is
/// held for the call or the stream, so every list it controls is bounded this way.
pub fn check_bounded_list(
    field: &str,
    items: &[String],
    max: usize,
    noun: &str,
    max_len: usize,
) -> Result<(), Status> {
    if items.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {max} {noun} (got {})",
            items.len()
        )));
    }
    if let Some((i, item)) = items.iter().enumerate().find(|(_, a)| a.len() > max_len) {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}]: longer than {max_len} bytes ({})",
            item.len()
        )));
    }
    Ok(())
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The caller's credentials, read by tokio from the accepted socket
/// (`SO_PEERCRED`) and handed to the request by tonic.
pub fn peer<T>(req: &Request<T>) -> Result<Peer, Status> {
    let info = req.extensions().get::<super::conn::ConnInfo>();
    let cred = info.and_then(|i| i.uds.peer_cred).ok_or_else(|| {
        Status::permission_denied(
            "the caller's peer credentials are unavailable: no identity can be attested",
        )
    })?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
        groups: info.and_then(|i| i.groups.clone()),
    })
}

/// Attests the caller: the entries it matches, or PERMISSION_DENIED.
pub fn attest<T>(
    shared: &Shared,
    req: &Request<T>,
    api: &'static str,
) -> Result<Vec<usize>, Status> {
    let p = peer(req)?;
    let idx = shared.entitled(&p);
    if idx.is_empty() {
        metrics::denied(api);
        tracing::info!(uid = p.uid, gid = p.gid, pid = ?p.pid, groups = ?p.groups, api, "caller matches no workload selector: refused");
        return Err(Status::permission_denied(format!(
            "no identity issued: the caller (uid {}, gid {}) matches no workload selector of this agent",
            p.uid, p.gid
        )));
    }
    Ok(idx)
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: workload.spiffe.io: true is required",
        )),
    }
}

/// An entitlement's pods are gone.
fn gone() -> Status {
    Status::permission_denied(
        "no identity issued: the pod of every workload entry the caller matches is gone",
    )
}

/// Streams `render(view)` to the caller: the first message when it exists, then
/// every different one; ends with [`gone`].
fn follow<T, F>(shared: &Arc<Shared>, idx: Vec<usize>, api: &'static str, render: F) -> Out<T>
where
    T: prost::Message + Send + 'static,
    F: Fn(&Snapshot, &[usize]) -> Option<Result<(T, usize), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(4);
    let mut sub = shared.subscribe();
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        loop {
            let snap = sub.borrow_and_update().clone();
            match render(&snap, &idx) {
                Some(Ok((msg, svids))) => {
                    let bytes = msg.encode_to_vec();
                    if last.as_ref() != Some(&bytes) {
                        last = Some(bytes);
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        metrics::served(api, svids);
                    }
                }
                Some(Err(s)) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                None => {}
            }
            tokio::select! {
                r = sub.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

fn x509_svid(s: &Svid, bundle: &super::state::Bundle) -> pb::X509svid {
    pb::X509svid {
        spiffe_id: s.spiffe_id.clone(),
        x509_svid: s.chain_der.concat(),
        x509_svid_key: s.key_pkcs8_der.to_vec(),
        bundle: bundle.roots_concatenated(),
        hint: s.hint.clone(),
    }
}

/// Minted JWT-SVIDs by (entry, pod uid, audiences): (token, issued, expires).
pub type JwtCache = Arc<Mutex<HashMap<String, (String, SystemTime, SystemTime)>>>;

/// The service.
#[derive(Clone)]
pub struct WorkloadApi {
    pub shared: Arc<Shared>,
    pub identity: Ch,
    pub issuer: Ch,
    pub jwt_ttl_seconds: i64,
    pub jwt_cache: JwtCache,
    /// The only source of wall-clock time (JWT-SVID cache ages).
    pub clock: Arc<dyn Clock>,
}

/// Whether a JWT-SVID minted at `issued`, expiring at `expires`, is still handed
/// out at `now`: during the first half of its life (an expiry before the issue
/// time leaves no half: never).
pub fn reusable(issued: SystemTime, expires: SystemTime, now: SystemTime) -> bool {
    let half = expires.duration_since(issued).unwrap_or_default() / 2;
    now < issued + half
}

/// Waits (up to 10 s) until the caller's identity exists.
async fn ready(
    shared: &Shared,
    idx: &[usize],
) -> Result<(Vec<Arc<Svid>>, Arc<super::state::Bundle>), Status> {
    let mut sub = shared.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snap = sub.borrow_and_update().clone();
        match snap.view(idx) {
            View::Ready { svids, bundle } => return Ok((svids, bundle)),
            View::Gone => return Err(gone()),
            View::Pending => {}
        }
        tokio::select! {
            r = sub.changed() => if r.is_err() { return Err(Status::unavailable("the agent is stopping")) },
            () = tokio::time::sleep_until(deadline) => return Err(Status::unavailable("the caller's identity is still being issued; retry")),
        }
    }
}

impl WorkloadApi {
    async fn mint(&self, s: &Svid, audience: &[String]) -> Result<String, Status> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = format!("{}\n{}\n{}", s.hint, s.pod_uid, aud.join("\n"));
        let now = self.clock.now();
        if let Ok(c) = self.jwt_cache.lock()
            && let Some((token, issued, exp)) = c.get(&key)
            && reusable(*issued, *exp, now)
        {
            return Ok(token.clone());
        }
        let (ns, pod) = s.hint.split_once('/').unwrap_or(("", ""));
        let r = cpb::jwt_svid_service_client::JwtSvidServiceClient::new(self.issuer.clone())
            .mint_jwt_svid(cpb::MintJwtSvidRequest {
                namespace: ns.into(),
                pod_name: pod.into(),
                pod_uid: s.pod_uid.clone(),
                audience: aud,
                ttl_seconds: self.jwt_ttl_seconds,
            })
            .await
            .map_err(|e| {
                metrics::failure("jwt");
                match e.code() {
                    Code::InvalidArgument => Status::invalid_argument(e.message().to_string()),
                    _ => Status::unavailable(format!(
                        "minting the JWT-SVID failed: {}: {}",
                        e.code(),
                        e.message()
                    )),
                }
            })?
            .into_inner();
        let exp = r
            .expires_at
            .and_then(|t| u64::try_from(t.seconds).ok())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(now);
        if let Ok(mut c) = self.jwt_cache.lock() {
            c.retain(|_, (_, _, e)| *e > now);
            if c.len() < MAX_JWT_CACHE {
                c.insert(key, (r.svid.clone(), now, exp));
            }
        }
        Ok(r.svid)
    }

    /// Whether the token's service account (and pod, when bound) still exist.
    async fn alive(&self, v: &jwt::Validated) -> Result<(), Status> {
        let id = badge_core::spiffe::SpiffeId::parse(&v.spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("svid: {e}")))?;
        let sa = id
            .service_account("sub")
            .map_err(|e| Status::invalid_argument(format!("svid: {e}")))?;
        let (ns, name) = (sa.namespace.to_string(), sa.name.to_string());
        let r = id::service_account_service_client::ServiceAccountServiceClient::new(
            self.identity.clone(),
        )
        .get_service_account(id::GetServiceAccountRequest {
            namespace: ns.clone(),
            name: name.clone(),
        })
        .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {
                return Err(Status::invalid_argument(format!(
                    "svid: service account {ns}/{name} no longer exists"
                )));
            }
            Err(s) => {
                return Err(Status::unavailable(format!(
                    "checking the service account failed: {}: {}",
                    s.code(),
                    s.message()
                )));
            }
        }
        let Some(pod) = v.claims.get("badge.dev/pod") else {
            return Ok(());
        };
        let pname = pod.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let puid = pod.get("uid").and_then(|v| v.as_str()).unwrap_or("");
        let r = id::pod_service_client::PodServiceClient::new(self.identity.clone())
            .get_pod(id::GetPodRequest {
                namespace: ns.clone(),
                name: pname.into(),
            })
            .await;
        match r {
            Ok(p) if p.get_ref().metadata.as_ref().map(|m| m.uid.as_str()) == Some(puid) => Ok(()),
            Ok(_) => Err(Status::invalid_argument(format!(
                "svid: pod {ns}/{pname} ({puid}) no longer exists (re-created with another uid)"
            ))),
            Err(s) if s.code() == Code::NotFound => Err(Status::invalid_argument(format!(
                "svid: pod {ns}/{pname} ({puid}) no longer exists"
            ))),
            Err(s) => Err(Status::unavailable(format!(
                "checking the pod failed: {}: {}",
                s.code(),
                s.message()
            ))),
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Out<pb::X509svidResponse>;
    type FetchX509BundlesStream = Out<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Out<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let idx = attest(&self.shared, &req, "workload_x509")?;
        Ok(Response::new(follow(
            &self.shared,
            idx,
            "workload_x509",
            |snap, idx| match snap.view(idx) {
                View::Pending => None,
                View::Gone => Some(Err(gone())),
                View::Ready { svids, bundle } => Some(Ok((
                    pb::X509svidResponse {
                        svids: svids.iter().map(|s| x509_svid(s, &bundle)).collect(),
                        crl: vec![],
                        federated_bundles: HashMap::new(),
                    },
                    svids.len(),
                ))),
            },
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let idx = attest(&self.shared, &req, "workload_x509_bundles")?;
        Ok(Response::new(follow(
            &self.shared,
            idx,
            "workload_x509_bundles",
            |snap, idx| match snap.view(idx) {
                View::Pending => None,
                View::Gone => Some(Err(gone())),
                View::Ready { bundle, .. } => Some(Ok((
                    pb::X509BundlesResponse {
                        crl: vec![],
                        bundles: HashMap::from([(bundle.id(), bundle.roots_concatenated())]),
                    },
                    0,
                ))),
            },
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&req)?;
        let idx = attest(&self.shared, &req, "workload_jwt")?;
        let r = req.into_inner();
        check_audiences(&r.audience)?;
        if r.spiffe_id.len() > MAX_SPIFFE_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "spiffe_id: longer than {MAX_SPIFFE_ID_LEN} bytes"
            )));
        }
        let (svids, _) = ready(&self.shared, &idx).await?;
        let chosen: Vec<&Arc<Svid>> = if r.spiffe_id.is_empty() {
            svids.iter().collect()
        } else {
            let c: Vec<_> = svids
                .iter()
                .filter(|s| s.spiffe_id == r.spiffe_id)
                .collect();
            if c.is_empty() {
                return Err(Status::permission_denied(format!(
                    "no identity issued: the caller is not entitled to {:?}",
                    r.spiffe_id
                )));
            }
            c
        };
        let mut out = Vec::with_capacity(chosen.len());
        for s in chosen {
            out.push(pb::Jwtsvid {
                spiffe_id: s.spiffe_id.clone(),
                svid: self.mint(s, &r.audience).await?,
                hint: s.hint.clone(),
            });
        }
        metrics::served("workload_jwt", out.len());
        Ok(Response::new(pb::JwtsvidResponse { svids: out }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let idx = attest(&self.shared, &req, "workload_jwt_bundles")?;
        Ok(Response::new(follow(
            &self.shared,
            idx,
            "workload_jwt_bundles",
            |snap, idx| match snap.view(idx) {
                View::Pending => None,
                View::Gone => Some(Err(gone())),
                View::Ready { bundle, .. } => Some(Ok((
                    pb::JwtBundlesResponse {
                        bundles: HashMap::from([(bundle.id(), bundle.jwks.clone())]),
                    },
                    0,
                ))),
            },
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let idx = attest(&self.shared, &req, "workload_validate")?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.audience.len() > MAX_AUDIENCE_LEN {
            return Err(Status::invalid_argument(format!(
                "audience: longer than {MAX_AUDIENCE_LEN} bytes ({})",
                r.audience.len()
            )));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // Checked before any parsing: the token is never decoded past this size.
        if r.svid.len() > MAX_JWT_LEN {
            return Err(Status::invalid_argument(format!(
                "svid: longer than {MAX_JWT_LEN} bytes ({})",
                r.svid.len()
            )));
        }
        let (_, bundle) = ready(&self.shared, &idx).await?;
        let v = jwt::validate(&r.svid, &r.audience, &bundle)
            .map_err(|e| Status::invalid_argument(format!("svid: {e}")))?;
        self.alive(&v).await?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id.clone(),
            claims: Some(jwt::to_struct(&v.claims)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached JWT-SVID is handed out for the first half of its life only.
    #[test]
    fn jwt_svids_are_reused_for_the_first_half_of_their_life() {
        let clock = badge_core::FixedClock::at_unix(1_700_000_000);
        let issued = clock.now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (lifetime, age at the check, reused)
        let cases: &[(Duration, Duration, bool)] = &[
            (s(300), s(0), true),
            (s(300), s(149), true),
            (s(300), ms(149_999), true),
            (s(300), s(150), false), // exactly half: a new one
            (s(300), s(151), false),
            (s(300), s(300), false),
            (s(300), s(3600), false),
            (s(1), ms(499), true),
            (s(1), ms(500), false),
            (s(0), s(0), false), // expires on issue: never reused
        ];
        for (lifetime, age, want) in cases {
            let at = badge_core::FixedClock::at_unix(1_700_000_000);
            at.advance(*age);
            assert_eq!(
                reusable(issued, issued + *lifetime, at.now()),
                *want,
                "lifetime {lifetime:?} age {age:?}"
            );
        }
        // Expiry before issue (a server clock behind ours): never reused.
        assert!(!reusable(issued, issued - s(10), issued));
    }
}
