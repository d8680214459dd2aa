//! Istio's CA API, `istio.v1.auth.IstioCertificateService/CreateCertificate` (the
//! contract istio-agent, ztunnel and cert-manager's istio-csr speak), served on the
//! token-issuer's gRPC listener.
//!
//! Who may ask, and for what: the caller authenticates with `authorization: Bearer
//! <service-account token>` whose audience is one of `[ca] istio_audiences`
//! (default `istio-ca`, what istio-agent requests). The auth layer does not review
//! it (its review uses this server's API audiences, and an `istio-ca`-only token
//! would be refused there — `MethodRule::handler_authenticates`); this handler does,
//! through the same reviewer (signature, expiry, revocation, live pod/secret). No
//! RBAC decision is made, as in istiod: the caller's identity alone decides the
//! certificate's identity, so the only certificate a token can buy is one for the
//! service account it already proves — the CSR's URI SAN must be absent or exactly
//! that SPIFFE ID. A pod-bound token also puts its pod in the certificate (Badge's
//! pod-binding extension).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use badge_access::{Reviewer, Via};
use badge_ca::IssuedCertificate;
use badge_core::review::{EXTRA_POD_NAME, EXTRA_POD_UID};
use badge_core::spiffe::SpiffeId;
use badge_core::spiffe::plan::{self, LifetimeRequest, PodBinding};
use badge_core::{Clock, Error};
use badge_proto::istio::v1::auth as pb;
use badge_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use badge_runtime::MethodRule;
use badge_runtime::auth::MethodTable;
use badge_runtime::status::status;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use tonic::{Request, Response, Status};

use crate::certificates::Ca;

/// The handler authenticates (see the module docs); requests are a CSR (≤ 24 KiB
/// PEM) plus metadata, so the default request limit applies.
pub const METHODS: MethodTable = &[(
    "/istio.v1.auth.IstioCertificateService/CreateCertificate",
    MethodRule::new(
        "create",
        "certificates.k8s.io",
        "certificatesigningrequests",
    )
    .handler_authenticates(),
)];

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// `badge.certificates.issued` {api, result} and `badge.certificates.duration`
/// {api} (seconds).
pub struct Metrics {
    pub issued: Counter<u64>,
    pub duration: Histogram<f64>,
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = badge_runtime::telemetry::metrics::meter();
        Metrics {
            issued: m
                .u64_counter("badge.certificates.issued")
                .with_description("workload certificate requests, by API and result")
                .build(),
            duration: m
                .f64_histogram("badge.certificates.duration")
                .with_unit("s")
                .with_description("workload certificate issuance latency")
                .build(),
        }
    })
}

/// The `result` attribute of a refusal: the gRPC code's name.
pub fn result_of(s: &Status) -> String {
    format!("{:?}", s.code()).to_lowercase()
}

/// A random value in [-1, 1] for the refresh jitter (the plan is pure; the draw is
/// here). Not security relevant: it only spreads renewals.
pub fn jitter() -> f64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    let v = u16::from_be_bytes([b[0], b[1]]);
    f64::from(v) / f64::from(u16::MAX) * 2.0 - 1.0
}

/// Plans and signs with the CA active now.
pub fn sign(
    ca: &Ca,
    clock: &dyn Clock,
    req: &plan::Request<'_>,
    csr: &badge_ca::VerifiedCsr,
) -> badge_core::Result<(IssuedCertificate, Arc<badge_ca::SigningCa>)> {
    let now = clock.now();
    let signer = ca.ring.active(now).ok_or_else(|| {
        Error::Unavailable("the workload CA is starting: no CA signs yet; retry".into())
    })?;
    let plan = plan::plan(req, signer.window(), &ca.issuance, now, jitter())?;
    let issued = signer.issue(&plan, csr)?;
    Ok((issued, signer))
}

#[derive(Clone)]
pub struct IstioCa {
    pub ca: Ca,
    pub reviewer: Arc<Reviewer>,
    pub audiences: Vec<String>,
    pub clock: Arc<dyn Clock>,
}

/// What is known of a caller for the audit trail of a refusal.
#[derive(Default)]
struct Who {
    requester: String,
    spiffe_id: String,
    pod: String,
}

impl IstioCa {
    async fn create(
        &self,
        req: Request<pb::IstioCertificateRequest>,
        who: &mut Who,
    ) -> Result<pb::IstioCertificateResponse, Status> {
        let token = match badge_runtime::auth::bearer(&req.metadata().clone().into_headers()) {
            Some(t) => t?.to_owned(),
            None => {
                return Err(Status::unauthenticated(
                    "no credentials: CreateCertificate needs an authorization: Bearer <service-account token> header",
                ));
            }
        };
        let report = self
            .reviewer
            .review(&token, &self.audiences, Via::Bearer, "")
            .await
            .map_err(status)?;
        let authn = report.outcome.map_err(|e| {
            // The review's reason (expired, revoked, wrong audience, pod gone, …)
            // names no token material.
            status(Error::Unauthenticated(format!(
                "request authenticate failure: {e}"
            )))
        })?;
        let user = &authn.user;
        who.requester = user.username.clone();
        let Some((ns, sa)) = user
            .username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|r| r.split_once(':'))
        else {
            return Err(Status::permission_denied(format!(
                "user {:?} is not a service account: only service-account tokens get workload certificates",
                user.username
            )));
        };
        let id =
            SpiffeId::for_service_account(&self.ca.ring.trust_domain, ns, sa).map_err(status)?;
        who.spiffe_id = id.to_string();
        let first = |k: &str| user.extra.get(k).and_then(|v| v.first()).cloned();
        let pod = match (first(EXTRA_POD_NAME), first(EXTRA_POD_UID)) {
            (Some(name), Some(uid)) => Some(PodBinding { name, uid }),
            _ => None,
        };
        who.pod = pod.as_ref().map(|p| p.name.clone()).unwrap_or_default();

        let r = req.into_inner();
        let csr = badge_ca::csr::parse_pem("csr", &r.csr).map_err(status)?;
        // The identity is the caller's; the CSR may only repeat it. Anything else is
        // an attempt to get another identity (istiod: PERMISSION_DENIED).
        let caller_id = id.to_string();
        match csr.uri_sans.as_slice() {
            [] => {}
            [one] if *one == caller_id => {}
            other => {
                return Err(Status::permission_denied(format!(
                    "csr: requested identities {other:?} do not match the caller's identity {caller_id:?}"
                )));
            }
        }
        if csr.other_sans {
            return Err(status(Error::invalid(
                "csr",
                "only a URI SAN (the caller's SPIFFE ID) and DNS SANs may be requested",
            )));
        }
        let preq = plan::Request {
            spiffe_id: &id,
            spiffe_id_field: "csr",
            lifetime: LifetimeRequest::Istio {
                field: "validity_duration",
                validity_duration: r.validity_duration,
            },
            key_type: csr.key_type,
            key_type_field: "csr",
            dns_names: &csr.dns_sans,
            dns_field: "csr",
            pod,
        };
        let (issued, signer) = sign(&self.ca, &*self.clock, &preq, &csr).map_err(status)?;
        // Istio's cert_chain: leaf, intermediates, root last (istio-agent refuses a
        // one-entry chain and takes the last entry as the root).
        let mut chain = vec![issued.pem()];
        chain.extend(signer.chain_with_root_pem().iter().cloned());
        // One audit event per certificate — never the key or the CSR.
        tracing::info!(
            target: "audit",
            event = "certificate.issued",
            api = "istio",
            requester = %who.requester,
            spiffe_id = %who.spiffe_id,
            pod = %who.pod,
            namespace = ns,
            serial = %issued.serial_hex(),
            not_after = badge_core::token::unix_seconds(issued.not_after),
            ca_key_id = %signer.key_id(),
            "issued workload certificate"
        );
        Ok(pb::IstioCertificateResponse { cert_chain: chain })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for IstioCa {
    async fn create_certificate(
        &self,
        req: Request<pb::IstioCertificateRequest>,
    ) -> Result<Response<pb::IstioCertificateResponse>, Status> {
        let began = Instant::now();
        let mut who = Who::default();
        let out = self.create(req, &mut who).await;
        let m = metrics();
        let result = match &out {
            Ok(_) => "issued".to_string(),
            Err(s) => result_of(s),
        };
        m.issued.add(
            1,
            &[
                KeyValue::new("api", "istio"),
                KeyValue::new("result", result),
            ],
        );
        m.duration.record(
            began.elapsed().as_secs_f64(),
            &[KeyValue::new("api", "istio")],
        );
        if let Err(s) = &out {
            // One audit event per refusal, with what was established of the caller.
            tracing::info!(
                target: "audit",
                event = "certificate.refused",
                api = "istio",
                requester = %who.requester,
                spiffe_id = %who.spiffe_id,
                pod = %who.pod,
                code = ?s.code(),
                reason = %s.message(),
                "refused workload certificate"
            );
        }
        out.map(Response::new)
    }
}
