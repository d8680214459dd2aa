//! Envoy's Secret Discovery Service (`envoy.service.secret.v3.SecretDiscoveryService`)
//! on the agent's socket, attested like the Workload API.
//!
//! Resource names (SPIRE's and Istio's conventions):
//!
//! | name | secret |
//! |---|---|
//! | `default` | `tls_certificate` of the caller's first (default) identity |
//! | the SPIFFE ID, e.g. `spiffe://td/ns/shop/sa/web` | `tls_certificate` of that identity |
//! | `ROOTCA`, `spiffe://<td>` | `validation_context` with the trust domain's roots as `trusted_ca` |
//! | `ALL` (and `spiffe://<td>` with `sds_spiffe_validator: true`) | `validation_context` using Envoy's SPIFFE certificate validator |
//!
//! The SPIFFE validator (`custom_validator_config` named
//! `envoy.tls.cert_validator.spiffe`, typed `SPIFFECertValidatorConfig`) is what
//! SPIRE's agent serves to Envoy ≥ 1.18: a bundle per trust domain, chosen by the
//! peer's SPIFFE ID, rather than one pooled `trusted_ca`. SPIRE serves it for every
//! validation name to new Envoys; here `ALL` (SPIRE's name for "every trust
//! domain") always has it and `spiffe://<td>` has it when configured, while
//! `ROOTCA` stays `trusted_ca` (Istio's name, used with Envoy's default validator).
//!
//! An empty subscription means all of them. A name the caller is not entitled to is
//! `INVALID_ARGUMENT` (SPIRE's text). Certificates and keys are PEM, inline.
//! `StreamSecrets` follows [`super::xds`]; `DeltaSecrets` is `UNIMPLEMENTED`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use badge_core::Clock;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TypedExtensionConfig, data_source::Specifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::config::Workload;
use super::metrics;
use super::state::{Shared, Snapshot, View};
use super::workload_api::attest;
use super::xds;

pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const DEFAULT_NAME: &str = "default";
pub const ROOT_NAME: &str = "ROOTCA";
pub const ALL_NAME: &str = "ALL";
/// Envoy's SPIFFE certificate validator, and the type of its configuration.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
pub const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
/// Names in one subscription (Envoy names one or two per stream; SPIRE's and
/// Istio's agents serve a handful). Each name is held for the stream's life and
/// compared on every push, so a hostile caller's list is bounded.
pub const MAX_RESOURCE_NAMES: usize = 64;
/// Bytes of one resource name (a SPIFFE ID at most).
pub const MAX_RESOURCE_NAME_LEN: usize = super::workload_api::MAX_SPIFFE_ID_LEN;
/// Bytes of the Envoy node id kept for logs.
const MAX_NODE_ID_LOGGED: usize = 256;

/// Checks a request's `resource_names`.
pub fn check_names(names: &[String]) -> Result<(), Status> {
    super::workload_api::check_bounded_list(
        "resource_names",
        names,
        MAX_RESOURCE_NAMES,
        "names",
        MAX_RESOURCE_NAME_LEN,
    )
}

/// The node id as logged: the caller chooses it, so it is cut short.
fn node_id(id: &str) -> String {
    id.chars().take(MAX_NODE_ID_LOGGED).collect()
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What a subscription resolves to now.
#[derive(Debug)]
pub enum Resolved {
    Pending,
    Gone,
    Denied(String),
    /// name → encoded `Secret`, and how many certificates are among them.
    Ready(BTreeMap<String, Vec<u8>>, usize),
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

fn tls_secret(name: &str, chain_pem: &str, key_pem: &str) -> Secret {
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem.as_bytes()),
            private_key: inline(key_pem.as_bytes()),
            ..Default::default()
        })),
    }
}

fn validation_secret(name: &str, roots_pem: &str) -> Secret {
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(roots_pem.as_bytes()),
                ..Default::default()
            },
        )),
    }
}

/// A validation context for Envoy's SPIFFE validator: the trust domain's roots as
/// its bundle (PEM). Only the agent's own trust domain: Badge has no federation.
fn spiffe_validation_secret(name: &str, trust_domain: &str, roots_pem: &str) -> Secret {
    let config = SpiffeCertValidatorConfig {
        trust_domains: vec![spiffe_cert_validator_config::TrustDomain {
            // Envoy wants the bare name here, not `spiffe://…`.
            name: trust_domain.into(),
            trust_bundle: inline(roots_pem.as_bytes()),
            // No per-listener trust-domain selection: one trust domain for all.
            ..Default::default()
        }],
        trust_bundles: None,
    };
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR.into(),
                    typed_config: Some(Any {
                        type_url: SPIFFE_VALIDATOR_TYPE.into(),
                        value: config.encode_to_vec(),
                    }),
                }),
                ..Default::default()
            },
        )),
    }
}

/// The secrets `names` (empty: all) stand for, for a caller entitled to entries
/// `idx` of `workloads`; `spiffe_validator`: `spiffe://<td>` is served with the
/// SPIFFE validator rather than `trusted_ca`.
pub fn resolve(
    snap: &Snapshot,
    idx: &[usize],
    workloads: &[Workload],
    names: &[String],
    spiffe_validator: bool,
) -> Resolved {
    let (svids, bundle) = match snap.view(idx) {
        View::Pending => return Resolved::Pending,
        View::Gone => return Resolved::Gone,
        View::Ready { svids, bundle } => (svids, bundle),
    };
    let td = bundle.id();
    // The identities the caller is entitled to, issued or not yet.
    let entitled: Vec<String> = idx
        .iter()
        .filter_map(|i| workloads.get(*i))
        .map(|w| format!("{td}/ns/{}/sa/{}", w.namespace, w.service_account))
        .collect();
    let all: Vec<String>;
    let names = if names.is_empty() {
        let mut v = vec![DEFAULT_NAME.to_string()];
        v.extend(svids.iter().map(|s| s.spiffe_id.clone()));
        v.push(ROOT_NAME.into());
        v.push(td.clone());
        v.dedup();
        all = v;
        &all
    } else {
        names
    };
    let denied: Vec<&String> = names
        .iter()
        .filter(|n| {
            !(n.as_str() == DEFAULT_NAME
                || n.as_str() == ROOT_NAME
                || n.as_str() == ALL_NAME
                || **n == td
                || entitled.contains(n))
        })
        .collect();
    if !denied.is_empty() {
        return Resolved::Denied(format!(
            "workload is not authorized for the requested identities {denied:?}"
        ));
    }
    let mut out = BTreeMap::new();
    let mut certs = 0;
    for n in names {
        let secret = if n == DEFAULT_NAME {
            svids
                .first()
                .map(|s| tls_secret(n, &s.chain_pem, &s.key_pem))
        } else if n == ALL_NAME || (*n == td && spiffe_validator) {
            Some(spiffe_validation_secret(
                n,
                &bundle.trust_domain,
                &bundle.roots_pem,
            ))
        } else if n == ROOT_NAME || *n == td {
            Some(validation_secret(n, &bundle.roots_pem))
        } else {
            svids
                .iter()
                .find(|s| &s.spiffe_id == n)
                .map(|s| tls_secret(n, &s.chain_pem, &s.key_pem))
        };
        if let Some(s) = secret {
            if matches!(s.r#type, Some(secret::Type::TlsCertificate(_))) {
                certs += 1;
            }
            out.insert(n.clone(), s.encode_to_vec());
        }
    }
    Resolved::Ready(out, certs)
}

fn response(
    version: String,
    nonce: String,
    resources: &BTreeMap<String, Vec<u8>>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version,
        resources: resources
            .values()
            .map(|v| Any {
                type_url: SECRET_TYPE.into(),
                value: v.clone(),
            })
            .collect(),
        type_url: SECRET_TYPE.into(),
        nonce,
        ..Default::default()
    }
}

fn request_of(r: &DiscoveryRequest) -> xds::Request {
    xds::Request {
        version_info: r.version_info.clone(),
        resource_names: r.resource_names.clone(),
        response_nonce: r.response_nonce.clone(),
        error: r.error_detail.as_ref().map(|e| (e.code, e.message.clone())),
    }
}

fn gone() -> Status {
    Status::permission_denied(
        "no identity issued: the pod of every workload entry the caller matches is gone",
    )
}

#[derive(Clone)]
pub struct Sds {
    pub shared: Arc<Shared>,
    /// `sds_spiffe_validator`: `spiffe://<td>` with the SPIFFE validator.
    pub spiffe_validator: bool,
    /// Dates the ACKs and NACKs of each stream.
    pub clock: Arc<dyn Clock>,
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = Out<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Out<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "DeltaSecrets is not implemented: use StreamSecrets (api_type: GRPC)",
        ))
    }

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let idx = attest(&self.shared, &req, "sds")?;
        let mut inbound = req.into_inner();
        let shared = self.shared.clone();
        let spiffe_validator = self.spiffe_validator;
        let clock = self.clock.clone();
        let (tx, rx) = mpsc::channel::<Result<DiscoveryResponse, Status>>(4);
        tokio::spawn(async move {
            let mut st = xds::Stream::default();
            let mut sub = shared.subscribe();
            let mut node = String::new();
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(r)) => {
                            if let Some(n) = &r.node && node.is_empty() {
                                node = node_id(&n.id);
                            }
                            if let Err(s) = check_names(&r.resource_names) {
                                let _ = tx.send(Err(s)).await;
                                return;
                            }
                            if !r.type_url.is_empty() && r.type_url != SECRET_TYPE {
                                let _ = tx.send(Err(Status::invalid_argument(format!(
                                    "type_url: {:?} is not served here (only {SECRET_TYPE})",
                                    r.type_url
                                )))).await;
                                return;
                            }
                            match st.on_request(&request_of(&r), clock.now()) {
                                xds::Verdict::Nack { nonce, message } => {
                                    tracing::warn!(envoy_node = %node, nonce = %nonce, names = ?r.resource_names, "SDS: Envoy rejected a response (NACK), it keeps serving the last good version: {message}");
                                    continue;
                                }
                                xds::Verdict::Stale => continue,
                                xds::Verdict::Ack { version } => {
                                    tracing::debug!(envoy_node = %node, version = %version, "SDS: ACK");
                                }
                                xds::Verdict::Initial => {
                                    tracing::debug!(envoy_node = %node, names = ?r.resource_names, "SDS: subscription");
                                }
                            }
                        }
                        Ok(None) | Err(_) => return,
                    },
                    r = sub.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                }
                let snap = sub.borrow_and_update().clone();
                match resolve(&snap, &idx, &shared.workloads, st.names(), spiffe_validator) {
                    Resolved::Pending => {}
                    Resolved::Gone => {
                        let _ = tx.send(Err(gone())).await;
                        return;
                    }
                    Resolved::Denied(msg) => {
                        let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                        return;
                    }
                    Resolved::Ready(content, certs) => {
                        if let Some(r) = st.respond(content) {
                            tracing::debug!(envoy_node = %node, version = %r.version, nonce = %r.nonce, "SDS: push");
                            if tx
                                .send(Ok(response(r.version, r.nonce, &r.resources)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            metrics::served("sds", certs);
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let idx = attest(&self.shared, &req, "sds")?;
        let r = req.into_inner();
        check_names(&r.resource_names)?;
        if !r.type_url.is_empty() && r.type_url != SECRET_TYPE {
            return Err(Status::invalid_argument(format!(
                "type_url: {:?} is not served here (only {SECRET_TYPE})",
                r.type_url
            )));
        }
        match resolve(
            &self.shared.snapshot(),
            &idx,
            &self.shared.workloads,
            &r.resource_names,
            self.spiffe_validator,
        ) {
            Resolved::Pending => Err(Status::unavailable(
                "the caller's identity is still being issued; retry",
            )),
            Resolved::Gone => Err(gone()),
            Resolved::Denied(msg) => Err(Status::invalid_argument(msg)),
            Resolved::Ready(content, certs) => {
                use std::hash::{Hash as _, Hasher as _};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                content.hash(&mut h);
                metrics::served("sds", certs);
                Ok(Response::new(response(
                    format!("{:016x}", h.finish()),
                    String::new(),
                    &content,
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    use crate::node::selector::Selector;
    use crate::node::state::{Bundle, Slot, Svid};
    use zeroize::Zeroizing;

    fn workload(ns: &str, pod: &str, sa: &str) -> Workload {
        Workload {
            selectors: vec![Selector::Uid(1)],
            namespace: ns.into(),
            pod: pod.into(),
            service_account: sa.into(),
        }
    }

    fn svid(sa: &str) -> Slot {
        Slot::Ready(Arc::new(Svid {
            spiffe_id: format!("spiffe://td/ns/shop/sa/{sa}"),
            hint: format!("shop/{sa}-0"),
            pod_uid: "u".into(),
            chain_der: vec![],
            chain_pem: format!("chain of {sa}"),
            key_pkcs8_der: Zeroizing::new(vec![]),
            key_pem: Zeroizing::new(format!("key of {sa}")),
            not_after: SystemTime::UNIX_EPOCH,
            serial: "1".into(),
        }))
    }

    fn snapshot(slots: Vec<Slot>) -> Snapshot {
        Snapshot {
            bundle: Some(Arc::new(Bundle {
                trust_domain: "td".into(),
                roots_der: vec![],
                roots_pem: "roots".into(),
                jwks: b"{}".to_vec(),
                sequence: 1,
            })),
            slots,
        }
    }

    fn names(r: &Resolved) -> Vec<String> {
        match r {
            Resolved::Ready(m, _) => m.keys().cloned().collect(),
            other => panic!("{other:?}"),
        }
    }

    fn decoded(r: &Resolved, name: &str) -> Secret {
        match r {
            Resolved::Ready(m, _) => Secret::decode(m[name].as_slice()).expect("secret"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_resolve_as_spire_and_istio_name_them() {
        let ws = [
            workload("shop", "web-0", "web"),
            workload("shop", "db-0", "db"),
        ];
        let snap = snapshot(vec![svid("web"), svid("db")]);
        let s = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        // The caller is entry 0 (web) only.
        let r = resolve(&snap, &[0], &ws, &s(&["default", "ROOTCA"]), false);
        assert_eq!(names(&r), ["ROOTCA", "default"]);
        match decoded(&r, "default").r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                let Some(Specifier::InlineBytes(b)) = t.certificate_chain.and_then(|d| d.specifier)
                else {
                    panic!("inline chain")
                };
                assert_eq!(b, b"chain of web");
            }
            other => panic!("{other:?}"),
        }
        let r = resolve(
            &snap,
            &[0],
            &ws,
            &s(&["spiffe://td/ns/shop/sa/web", "spiffe://td", "ALL"]),
            false,
        );
        assert_eq!(
            names(&r),
            ["ALL", "spiffe://td", "spiffe://td/ns/shop/sa/web"]
        );
        // Everything when nothing is named.
        let r = resolve(&snap, &[0], &ws, &[], false);
        assert_eq!(
            names(&r),
            [
                "ROOTCA",
                "default",
                "spiffe://td",
                "spiffe://td/ns/shop/sa/web"
            ]
        );
        // Another workload's identity: refused by name.
        match resolve(&snap, &[0], &ws, &s(&["spiffe://td/ns/shop/sa/db"]), false) {
            Resolved::Denied(m) => assert!(m.contains("sa/db"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Entitled to both: db's by its ID, the default is the first entry's.
        let r = resolve(&snap, &[1, 0], &ws, &s(&["default"]), false);
        match decoded(&r, "default").r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                let Some(Specifier::InlineBytes(b)) = t.private_key.and_then(|d| d.specifier)
                else {
                    panic!("inline key")
                };
                assert_eq!(b, b"key of db");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The kind of validation context a name resolves to: `trusted_ca` PEM, or the
    /// SPIFFE validator's (trust domain, bundle PEM).
    fn validation(r: &Resolved, name: &str) -> Result<String, (String, String)> {
        let Some(secret::Type::ValidationContext(v)) = decoded(r, name).r#type else {
            panic!("{name}: not a validation context")
        };
        let pem = |d: Option<DataSource>| match d.and_then(|d| d.specifier) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b).expect("utf8"),
            other => panic!("{other:?}"),
        };
        match v.custom_validator_config {
            None => Ok(pem(v.trusted_ca)),
            Some(c) => {
                assert_eq!(c.name, SPIFFE_VALIDATOR);
                assert!(v.trusted_ca.is_none(), "the validator alone");
                let any = c.typed_config.expect("typed config");
                assert_eq!(any.type_url, SPIFFE_VALIDATOR_TYPE);
                let cfg = SpiffeCertValidatorConfig::decode(any.value.as_slice()).expect("config");
                assert!(cfg.trust_bundles.is_none());
                let [td] = cfg.trust_domains.as_slice() else {
                    panic!("one trust domain: {cfg:?}")
                };
                Err((td.name.clone(), pem(td.trust_bundle.clone())))
            }
        }
    }

    #[test]
    fn all_is_the_spiffe_validator_and_the_trust_domain_when_asked() {
        let ws = [workload("shop", "web-0", "web")];
        let snap = snapshot(vec![svid("web")]);
        let names: Vec<String> = ["ALL", "ROOTCA", "spiffe://td"]
            .iter()
            .map(|n| n.to_string())
            .collect();
        // The type URL is the message's own, as envoy-types names it.
        assert_eq!(
            SPIFFE_VALIDATOR_TYPE,
            <SpiffeCertValidatorConfig as prost::Name>::type_url()
        );
        let plain = resolve(&snap, &[0], &ws, &names, false);
        assert_eq!(
            validation(&plain, "ALL"),
            Err(("td".into(), "roots".into()))
        );
        assert_eq!(validation(&plain, "ROOTCA"), Ok("roots".into()));
        assert_eq!(validation(&plain, "spiffe://td"), Ok("roots".into()));
        let spiffe = resolve(&snap, &[0], &ws, &names, true);
        assert_eq!(
            validation(&spiffe, "spiffe://td"),
            Err(("td".into(), "roots".into()))
        );
        assert_eq!(validation(&spiffe, "ROOTCA"), Ok("roots".into()));
    }

    #[test]
    fn pending_and_gone() {
        let ws = [workload("shop", "web-0", "web")];
        assert!(matches!(
            resolve(&snapshot(vec![Slot::Pending]), &[0], &ws, &[], false),
            Resolved::Pending
        ));
        assert!(matches!(
            resolve(&snapshot(vec![Slot::Gone]), &[0], &ws, &[], false),
            Resolved::Gone
        ));
        let no_bundle = Snapshot {
            bundle: None,
            slots: vec![svid("web")],
        };
        assert!(matches!(
            resolve(&no_bundle, &[0], &ws, &[], false),
            Resolved::Pending
        ));
    }
}
