//! Kubernetes' pod certificates: `badge.certificates.v1.PodCertificateService/
//! CreatePodCertificate`, a PodCertificateRequest (certificates.k8s.io/v1 spec
//! fields) answered synchronously with its status.
//!
//! Who may ask: RBAC `create podcertificaterequests` (certificates.k8s.io) in the
//! namespace — checked by the auth layer — and then, as Kubernetes' NodeRestriction
//! does for the kubelet, only the node the pod runs on (a client certificate
//! `system:node:<node>` in `system:nodes`) or the pod itself (its own pod-bound
//! service-account token). Why both: RBAC says who may use the API at all; the
//! identity rule makes sure that a node can only get certificates for pods it
//! runs, and a pod only for itself, so a grant of `create` never lets anyone mint
//! another workload's identity. Every name and uid in the spec must match the live
//! objects (a deleted or re-created pod is refused), so the certificate is tied to
//! the pod that exists now.
//!
//! Proof of possession: `stubPKCS10Request` (a PKCS#10 request signed by the subject
//! key), as certificates.k8s.io/v1 requires. v1beta1's `pkixPublicKey` +
//! `proofOfPossession` pair is refused by name (v1 removed it; one path to test).

use std::sync::Arc;
use std::time::Instant;

use badge_core::review::{EXTRA_POD_NAME, EXTRA_POD_UID};
use badge_core::spiffe::SpiffeId;
use badge_core::spiffe::plan::{self, LifetimeRequest, PodBinding};
use badge_core::{Clock, Error, FieldViolation, Kind, Result};
use badge_proto::certificates as pb;
use badge_proto::certificates::pod_certificate_service_server::PodCertificateService;
use badge_proto::identity::Pod;
use badge_records::{Index, decode};
use badge_runtime::MethodRule;
use badge_runtime::auth::{Caller, MethodTable};
use badge_runtime::status::status;
use badge_store::Record;
use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};

use crate::certificates::Ca;

pub const METHODS: MethodTable = &[(
    "/badge.certificates.v1.PodCertificateService/CreatePodCertificate",
    MethodRule::new("create", "certificates.k8s.io", "podcertificaterequests")
        .scoped::<pb::CreatePodCertificateRequest>(),
)];

const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";

#[derive(Clone)]
pub struct PodCertificates {
    pub ca: Ca,
    pub index: Index,
    pub clock: Arc<dyn Clock>,
}

fn required(v: &mut Vec<FieldViolation>, field: &str, value: &str) {
    if value.is_empty() {
        v.push(FieldViolation::new(field, "Required value"));
    } else if value.len() > plan::MAX_UID_LEN && field.ends_with("UID") {
        v.push(FieldViolation::new(
            field,
            format!("Too long: may not be more than {} bytes", plan::MAX_UID_LEN),
        ));
    }
}

fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound(format!("{} {name:?} not found", kind.resource()))
}

/// The spec's uid differs from the live object's (Kubernetes 409, as for tokens).
fn uid_mismatch(field: &str, requested: &str, kind: Kind, name: &str) -> Error {
    Error::Conflict(format!(
        "{field} ({requested}) does not match the UID of {} {name:?} in record. The object might have been deleted and then recreated",
        kind.resource()
    ))
}

/// Who is asking, as far as this API cares.
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
        "user {:?} may not request pod certificates: only the pod's node (system:node:<node> in system:nodes) or the pod itself (its pod-bound service-account token) may",
        caller.user
    )))
}

impl PodCertificates {
    /// Looks an object up, confirming a uid mismatch against the store before
    /// refusing (the index may briefly hold the previous incarnation).
    async fn live(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: &str,
        field: &str,
    ) -> Result<Record> {
        let rec = self
            .index
            .lookup(kind, namespace, name)
            .await?
            .ok_or_else(|| not_found(kind, name))?;
        if rec.uid == uid {
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
            Err(uid_mismatch(field, uid, kind, name))
        }
    }

    async fn create(
        &self,
        caller: &Caller,
        r: pb::CreatePodCertificateRequest,
        audit: &mut (String, String),
    ) -> Result<pb::CreatePodCertificateResponse> {
        let spec = r.spec.unwrap_or_default();
        audit.1 = spec.pod_name.clone();
        // Static validation first: a bad request never costs a lookup.
        if spec.signer_name != badge_ca::SIGNER_NAME {
            return Err(Error::invalid(
                "spec.signerName",
                format!(
                    "Unsupported value: {:?}: supported values: {:?}",
                    spec.signer_name,
                    badge_ca::SIGNER_NAME
                ),
            ));
        }
        let mut v = Vec::new();
        required(&mut v, "spec.podName", &spec.pod_name);
        required(&mut v, "spec.podUID", &spec.pod_uid);
        required(
            &mut v,
            "spec.serviceAccountName",
            &spec.service_account_name,
        );
        required(&mut v, "spec.serviceAccountUID", &spec.service_account_uid);
        required(&mut v, "spec.nodeName", &spec.node_name);
        required(&mut v, "spec.nodeUID", &spec.node_uid);
        if !spec.pkix_public_key.is_empty() || !spec.proof_of_possession.is_empty() {
            v.push(FieldViolation::new(
                "spec.pkixPublicKey",
                "Forbidden: not supported (removed in certificates.k8s.io/v1): send stubPKCS10Request",
            ));
        }
        if spec.stub_pkcs10_request.is_empty() {
            v.push(FieldViolation::new(
                "spec.stubPKCS10Request",
                "Required value",
            ));
        }
        Error::check(v)?;
        // Proof of possession: the stub CSR's signature with its own key.
        let csr = badge_ca::csr::parse_der("spec.stubPKCS10Request", &spec.stub_pkcs10_request)?;
        let id = SpiffeId::for_service_account(
            &self.ca.ring.trust_domain,
            &r.namespace,
            &spec.service_account_name,
        )?;
        audit.0 = id.to_string();

        // The caller: the pod's node, or the pod itself.
        match requester(caller)? {
            Requester::Node(node) if node != spec.node_name => {
                return Err(Error::PermissionDenied(format!(
                    "PodCertificateRequest.Spec.NodeName={:?}, which is not the requesting node {node:?}",
                    spec.node_name
                )));
            }
            Requester::Node(_) => {}
            Requester::Pod { name, uid } => {
                let own_sa = format!(
                    "system:serviceaccount:{}:{}",
                    r.namespace, spec.service_account_name
                );
                if name != spec.pod_name || uid != spec.pod_uid || caller.user != own_sa {
                    return Err(Error::PermissionDenied(format!(
                        "a pod may only request its own certificate: the token is bound to pod {name:?} ({uid}) of {:?}, the request names pod {:?} ({}) of service account {:?}",
                        caller.user, spec.pod_name, spec.pod_uid, spec.service_account_name
                    )));
                }
            }
        }

        // The live objects, as NodeRestriction checks them. The pod is read from
        // the store itself, not the feed-fed index: the certificate carries the
        // pod's name and uid as proof that it is alive, so a pod deleted a moment
        // ago (its deletion not yet applied here) must not get one.
        let pod_rec = self
            .index
            .fresh(Kind::Pod, &r.namespace, &spec.pod_name)
            .await?
            .ok_or_else(|| not_found(Kind::Pod, &spec.pod_name))?;
        if pod_rec.uid != spec.pod_uid {
            return Err(uid_mismatch(
                "spec.podUID",
                &spec.pod_uid,
                Kind::Pod,
                &spec.pod_name,
            ));
        }
        let pod: Pod = decode(&pod_rec)?;
        if pod_rec.deletion_timestamp.is_some() {
            return Err(Error::Conflict(format!(
                "pods {:?} is being deleted: no new certificates are issued for it",
                spec.pod_name
            )));
        }
        let pspec = pod.spec.unwrap_or_default();
        if pspec.service_account_name != spec.service_account_name {
            return Err(Error::PermissionDenied(format!(
                "spec.serviceAccountName: pod {:?} runs as service account {:?}, not {:?}",
                spec.pod_name, pspec.service_account_name, spec.service_account_name
            )));
        }
        if pspec.node_name != spec.node_name {
            return Err(Error::PermissionDenied(format!(
                "spec.nodeName: pod {:?} is bound to node {:?}, not {:?}",
                spec.pod_name, pspec.node_name, spec.node_name
            )));
        }
        self.live(
            Kind::ServiceAccount,
            &r.namespace,
            &spec.service_account_name,
            &spec.service_account_uid,
            "spec.serviceAccountUID",
        )
        .await?;
        self.live(
            Kind::Node,
            "",
            &spec.node_name,
            &spec.node_uid,
            "spec.nodeUID",
        )
        .await?;

        let preq = plan::Request {
            spiffe_id: &id,
            spiffe_id_field: "spec.serviceAccountName",
            lifetime: LifetimeRequest::Kubernetes {
                field: "spec.maxExpirationSeconds",
                max_expiration_seconds: spec.max_expiration_seconds.map(i64::from),
            },
            key_type: csr.key_type,
            key_type_field: "spec.stubPKCS10Request",
            // The signer decides the names: the stub's SANs are not read (Kubernetes:
            // "signers normally only extract the public key").
            dns_names: &[],
            dns_field: "spec.stubPKCS10Request",
            pod: Some(PodBinding {
                name: spec.pod_name.clone(),
                uid: spec.pod_uid.clone(),
            }),
        };
        let (issued, signer) = crate::istio::sign(&self.ca, &*self.clock, &preq, &csr)?;
        // certificateChain: the leaf, then what TLS presents (no root), as
        // Kubernetes documents for signers.
        let mut chain = issued.pem();
        for pem in signer.chain_pem() {
            chain.push_str(pem);
        }
        tracing::info!(
            target: "audit",
            event = "certificate.issued",
            api = "kubernetes",
            requester = %caller.user,
            spiffe_id = %id,
            pod = %spec.pod_name,
            pod_uid = %spec.pod_uid,
            namespace = %r.namespace,
            serial = %issued.serial_hex(),
            not_after = badge_core::token::unix_seconds(issued.not_after),
            ca_key_id = %signer.key_id(),
            "issued workload certificate"
        );
        let ts = badge_core::clock::timestamp;
        Ok(pb::CreatePodCertificateResponse {
            status: Some(pb::PodCertificateRequestStatus {
                conditions: vec![pb::PodCertificateCondition {
                    r#type: "Issued".into(),
                    status: "True".into(),
                    observed_generation: 1,
                    last_transition_time: Some(ts(self.clock.now())),
                    reason: "Issued".into(),
                    message: format!(
                        "issued by {} (CA {})",
                        badge_ca::SIGNER_NAME,
                        signer.key_id()
                    ),
                }],
                certificate_chain: chain,
                not_before: Some(ts(issued.not_before)),
                begin_refresh_at: Some(ts(issued.begin_refresh_at)),
                not_after: Some(ts(issued.not_after)),
            }),
            spiffe_id: id.to_string(),
            serial_number: issued.serial_hex(),
        })
    }
}

#[tonic::async_trait]
impl PodCertificateService for PodCertificates {
    async fn create_pod_certificate(
        &self,
        req: Request<pb::CreatePodCertificateRequest>,
    ) -> std::result::Result<Response<pb::CreatePodCertificateResponse>, Status> {
        let began = Instant::now();
        let caller = badge_runtime::auth::caller(&req)?.clone();
        let mut audit = (String::new(), String::new());
        let out = self
            .create(&caller, req.into_inner(), &mut audit)
            .await
            .map_err(status);
        let m = crate::istio::metrics();
        let result = match &out {
            Ok(_) => "issued".to_string(),
            Err(s) => crate::istio::result_of(s),
        };
        m.issued.add(
            1,
            &[
                KeyValue::new("api", "kubernetes"),
                KeyValue::new("result", result),
            ],
        );
        m.duration.record(
            began.elapsed().as_secs_f64(),
            &[KeyValue::new("api", "kubernetes")],
        );
        if let Err(s) = &out {
            tracing::info!(
                target: "audit",
                event = "certificate.refused",
                api = "kubernetes",
                requester = %caller.user,
                spiffe_id = %audit.0,
                pod = %audit.1,
                code = ?s.code(),
                reason = %s.message(),
                "refused workload certificate"
            );
        }
        out.map(Response::new)
    }
}
