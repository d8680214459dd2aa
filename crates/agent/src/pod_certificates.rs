//! Kubernetes' `podCertificate` projected sources in the per-pod agent, and the key
//! generation and `CreatePodCertificate` call shared with the node agent
//! ([`generate_key`], [`request`]).
//!
//! For each source the agent generates a key of the asked `keyType` in memory,
//! asks token-issuer's `badge.certificates.v1.PodCertificateService/
//! CreatePodCertificate` (with `maxExpirationSeconds`, the user annotations and the
//! live pod / service account / node uids), and writes:
//!
//! - `credentialBundlePath`: the PKCS#8 key PEM, then the chain PEM, leaf first, in
//!   one file replaced atomically (temporary file in the same directory, mode 0600,
//!   fsync, rename): the form to read when key and certificate must match, as in
//!   Kubernetes;
//! - or `keyPath` + `certificateChainPath`: both written to temporary files first,
//!   then the key renamed into place, then the chain. A reader that opens both
//!   during a rotation can still see the new key with the old chain for an instant,
//!   so it must check that they match (Kubernetes says the same).
//!
//! Renewal at the certificate's `beginRefreshAt` plus up to 5 minutes of jitter
//! (never past the midpoint to `notAfter`); failures back off 1 s → 30 s while the
//! old certificate stays in place. [`crate::Control::Refresh`] renews now; the
//! files go when the pod goes (with the token files).
//!
//! Who asks: token-issuer accepts only the pod's node (`system:node:<node>`) or the
//! pod itself (a pod-bound token). The agent first calls with its own credentials
//! (right when it runs as the pod's node, or with the pod's own token); if that is
//! refused (PERMISSION_DENIED, e.g. an admin certificate), it mints a short-lived
//! (10 min) token bound to the pod with its own credentials (`create
//! serviceaccounts/token`, which it needs for token projections anyway) and calls
//! as the pod from then on. The pod's service account then needs RBAC `create
//! podcertificaterequests` (group `certificates.k8s.io`) in the namespace. Keys and
//! tokens are never logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use badge_core::Clock;
use badge_proto::certificates as cpb;
use badge_proto::identity as id;
use badge_proto::token as tk;
use badgectl::conn::Ch;
use tonic::Code;
use zeroize::Zeroizing;

use crate::node::issue::{draw_jitter, pem_certificates, refresh_due};
use crate::{Agent, BACKOFF_START, PodCheck, next_backoff, safe_path};

/// The most jitter added to `beginRefreshAt` (KEP-4317: up to 5 minutes).
pub const CERTIFICATE_JITTER: Duration = Duration::from_secs(5 * 60);
/// Lifetime of the pod-bound token the agent mints to call as the pod.
const CALLER_TOKEN_SECONDS: i64 = 600;

/// A new key of Kubernetes' `key_type`, in memory.
pub fn generate_key(key_type: &str) -> Result<rcgen::KeyPair, String> {
    use rcgen::{KeyPair, RsaKeySize};
    let r = match key_type {
        "RSA3072" => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        "RSA4096" => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
        "ECDSAP256" => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        "ECDSAP384" => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        "ECDSAP521" => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512),
        "ED25519" => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        other => {
            return Err(format!(
                "keyType {other:?} is not one of RSA3072, RSA4096, ECDSAP256, ECDSAP384, ECDSAP521, ED25519"
            ));
        }
    };
    r.map_err(|e| format!("generating a {key_type} key: {e}"))
}

/// The key as PKCS#8 PEM (`PRIVATE KEY`). Ed25519 keys are written as PKCS#8 v1
/// (RFC 8410: the seed only): the v2 form with the public key that the crypto
/// backend exports is not read by OpenSSL 3.0 ("unsupported").
pub fn key_pem(key: &rcgen::KeyPair) -> Zeroizing<String> {
    use base64::Engine as _;
    const V2_PREFIX: [u8; 14] = [
        0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    const V1_HEADER: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = Zeroizing::new(key.serialize_der());
    let seed = der
        .get(2..2 + V2_PREFIX.len())
        .filter(|p| *p == V2_PREFIX)
        .and_then(|_| der.get(2 + V2_PREFIX.len()..2 + V2_PREFIX.len() + 32));
    let Some(seed) = seed else {
        return Zeroizing::new(key.serialize_pem());
    };
    let mut v1 = Zeroizing::new(V1_HEADER.to_vec());
    v1.extend_from_slice(seed);
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(v1.as_slice()));
    let mut out = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// What `CreatePodCertificate` returned.
pub struct Issued {
    /// Leaf first (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// As the server sent it.
    pub chain_pem: String,
    pub not_after: SystemTime,
    pub begin_refresh_at: SystemTime,
    pub spiffe_id: String,
    pub serial: String,
}

fn to_system(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// When to begin refreshing a certificate answered at `now`: the server's
/// `beginRefreshAt`, else halfway from `now` to `not_after` (`now` itself when it
/// is already past).
pub fn begin_refresh_at(
    given: Option<SystemTime>,
    not_after: SystemTime,
    now: SystemTime,
) -> SystemTime {
    given.unwrap_or_else(|| now + not_after.duration_since(now).unwrap_or_default() / 2)
}

/// Asks for a certificate for `key`: `spec` without the stub CSR, which is made
/// here. `bearer`, when given, is sent as `authorization: Bearer` (the pod's own
/// token) instead of the channel's credential. `clock` dates the answer (for a
/// missing `beginRefreshAt`).
pub async fn request(
    issuer: Ch,
    namespace: &str,
    mut spec: cpb::PodCertificateRequestSpec,
    key: &rcgen::KeyPair,
    bearer: Option<&str>,
    clock: &dyn Clock,
) -> Result<Issued, tonic::Status> {
    let internal = |what: &str, e: rcgen::Error| tonic::Status::internal(format!("{what}: {e}"));
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| internal("CSR parameters", e))?
        .serialize_request(key)
        .map_err(|e| internal("signing the CSR", e))?;
    spec.stub_pkcs10_request = csr.der().to_vec();
    let mut req = tonic::Request::new(cpb::CreatePodCertificateRequest {
        namespace: namespace.to_owned(),
        spec: Some(spec),
    });
    if let Some(t) = bearer {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| tonic::Status::internal("the pod token is not a valid header value"))?;
        req.metadata_mut().insert("authorization", v);
    }
    let r = cpb::pod_certificate_service_client::PodCertificateServiceClient::new(issuer)
        .create_pod_certificate(req)
        .await?
        .into_inner();
    let status = r.status.unwrap_or_default();
    let chain_der = pem_certificates(&status.certificate_chain);
    if chain_der.is_empty() {
        return Err(tonic::Status::internal(
            "token-issuer answered without a certificate chain",
        ));
    }
    let not_after = to_system(status.not_after.as_ref())
        .ok_or_else(|| tonic::Status::internal("token-issuer answered without notAfter"))?;
    let begin_refresh_at = begin_refresh_at(
        to_system(status.begin_refresh_at.as_ref()),
        not_after,
        clock.now(),
    );
    Ok(Issued {
        chain_der,
        chain_pem: status.certificate_chain,
        not_after,
        begin_refresh_at,
        spiffe_id: r.spiffe_id,
        serial: r.serial_number,
    })
}

/// PEM `CERTIFICATE` blocks of `chain` (DER), in order.
pub fn chain_pem(chain: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Where one source's credentials go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    Bundle(PathBuf),
    KeyAndChain { key: PathBuf, chain: PathBuf },
}

/// One `podCertificate` projection of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSource {
    pub signer_name: String,
    pub key_type: String,
    pub max_expiration_seconds: Option<i32>,
    pub user_annotations: std::collections::HashMap<String, String>,
    pub files: Files,
}

impl CertificateSource {
    fn paths(&self) -> Vec<&Path> {
        match &self.files {
            Files::Bundle(b) => vec![b],
            Files::KeyAndChain { key, chain } => vec![key, chain],
        }
    }

    fn describe(&self) -> String {
        self.paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

fn key_and_chain(key: &str, chain: &str) -> Result<Files, String> {
    Ok(Files::KeyAndChain {
        key: safe_path(key)?,
        chain: safe_path(chain)?,
    })
}

/// Every `podCertificate` projection of `pod`'s volumes, in order. A source whose
/// paths are unsafe, incomplete, or already taken (by `taken`, the token paths, or
/// an earlier source) is skipped with a warning (identity refuses such pods; this
/// guards against older objects).
pub fn certificate_sources(pod: &id::Pod, taken: &[PathBuf]) -> Vec<CertificateSource> {
    use id::volume::Source;
    use id::volume_projection::Projection;
    let mut out: Vec<CertificateSource> = Vec::new();
    let mut used: Vec<PathBuf> = taken.to_vec();
    let Some(spec) = &pod.spec else {
        return out;
    };
    for v in &spec.volumes {
        let Some(Source::Projected(p)) = &v.source else {
            continue;
        };
        for s in &p.sources {
            let Some(Projection::PodCertificate(c)) = &s.projection else {
                continue;
            };
            let files = match (
                c.credential_bundle_path.as_str(),
                c.key_path.as_str(),
                c.certificate_chain_path.as_str(),
            ) {
                (b, "", "") if !b.is_empty() => safe_path(b).map(Files::Bundle),
                ("", k, ch) if !k.is_empty() && !ch.is_empty() => key_and_chain(k, ch),
                _ => Err(
                    "needs exactly one of credentialBundlePath or keyPath + certificateChainPath"
                        .into(),
                ),
            };
            let files = match files {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(volume = %v.name, "skipping podCertificate projection: {e}");
                    continue;
                }
            };
            let source = CertificateSource {
                signer_name: c.signer_name.clone(),
                key_type: c.key_type.clone(),
                max_expiration_seconds: c.max_expiration_seconds,
                user_annotations: c.user_annotations.clone(),
                files,
            };
            let paths: Vec<PathBuf> = source.paths().iter().map(|p| p.to_path_buf()).collect();
            if paths.iter().any(|p| used.contains(p)) || paths.first() == paths.get(1) {
                tracing::warn!(volume = %v.name, paths = %source.describe(), "skipping podCertificate projection: another source already writes this path");
                continue;
            }
            used.extend(paths);
            out.push(source);
        }
    }
    out
}

/// A source and its schedule.
pub struct CertificateState {
    pub source: CertificateSource,
    pub due: SystemTime,
    pub backoff: Duration,
    pub not_after: Option<SystemTime>,
}

impl CertificateState {
    pub fn new(source: CertificateSource, now: SystemTime) -> Self {
        Self {
            source,
            due: now,
            backoff: BACKOFF_START,
            not_after: None,
        }
    }
}

/// Who the agent calls `CreatePodCertificate` as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAs {
    /// Its own credentials (the pod's node, or the pod's token).
    Itself,
    /// A pod-bound token it mints for each request.
    Pod,
}

/// The uids the request must name.
struct Uids {
    service_account: String,
    node_name: String,
    node: String,
}

impl Agent {
    async fn uids(&self) -> Result<Uids, tonic::Status> {
        let pod = self.get_pod().await?;
        let node_name = pod.spec.map(|s| s.node_name).unwrap_or_default();
        if node_name.is_empty() {
            return Err(tonic::Status::failed_precondition(
                "the pod is not bound to a node (spec.nodeName is empty): pod certificates name the pod's node",
            ));
        }
        let sa = id::service_account_service_client::ServiceAccountServiceClient::new(
            self.identity.clone(),
        )
        .get_service_account(id::GetServiceAccountRequest {
            namespace: self.args.namespace.clone(),
            name: self.service_account.clone(),
        })
        .await?
        .into_inner();
        let node = id::node_service_client::NodeServiceClient::new(self.identity.clone())
            .get_node(id::GetNodeRequest {
                name: node_name.clone(),
            })
            .await?
            .into_inner();
        Ok(Uids {
            service_account: sa.metadata.map(|m| m.uid).unwrap_or_default(),
            node_name,
            node: node.metadata.map(|m| m.uid).unwrap_or_default(),
        })
    }

    /// A short-lived token bound to the pod, to call as the pod. Never logged.
    async fn pod_token(&self) -> Result<Zeroizing<String>, tonic::Status> {
        let r = tk::token_service_client::TokenServiceClient::new(self.issuer.clone())
            .create_token(tk::CreateTokenRequest {
                namespace: self.args.namespace.clone(),
                name: self.service_account.clone(),
                audiences: vec![],
                expiration_seconds: Some(CALLER_TOKEN_SECONDS),
                bound_object_ref: Some(tk::BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: self.args.pod.clone(),
                    uid: self.uid.clone(),
                }),
                service_account_uid: String::new(),
            })
            .await?
            .into_inner();
        Ok(Zeroizing::new(r.token))
    }

    /// A new key and certificate for `s`.
    async fn certify(
        &self,
        s: &CertificateSource,
        call_as: &mut CallAs,
    ) -> Result<(Zeroizing<String>, Issued), tonic::Status> {
        let key = generate_key(&s.key_type).map_err(tonic::Status::internal)?;
        let uids = self.uids().await?;
        let spec = cpb::PodCertificateRequestSpec {
            signer_name: s.signer_name.clone(),
            pod_name: self.args.pod.clone(),
            pod_uid: self.uid.clone(),
            service_account_name: self.service_account.clone(),
            service_account_uid: uids.service_account,
            node_name: uids.node_name,
            node_uid: uids.node,
            max_expiration_seconds: s.max_expiration_seconds,
            unverified_user_annotations: s.user_annotations.clone(),
            ..Default::default()
        };
        let ns = self.args.namespace.clone();
        if *call_as == CallAs::Itself {
            match request(
                self.issuer.clone(),
                &ns,
                spec.clone(),
                &key,
                None,
                self.clock.as_ref(),
            )
            .await
            {
                Ok(i) => return Ok((key_pem(&key), i)),
                Err(st) if st.code() == Code::PermissionDenied => {
                    tracing::info!(
                        "CreatePodCertificate refused the agent's own credentials ({}); calling as the pod with a pod-bound token from now on",
                        st.message()
                    );
                    *call_as = CallAs::Pod;
                }
                Err(st) => return Err(st),
            }
        }
        let token = self.pod_token().await?;
        let issued = request(
            self.issuer.clone(),
            &ns,
            spec,
            &key,
            Some(token.as_str()),
            self.clock.as_ref(),
        )
        .await?;
        Ok((key_pem(&key), issued))
    }

    /// Writes the credentials of `s` (see the module documentation for the order).
    fn write_credentials(
        &mut self,
        s: &CertificateSource,
        key_pem: &str,
        issued: &Issued,
    ) -> anyhow::Result<()> {
        let chain = chain_pem(&issued.chain_der);
        match &s.files {
            Files::Bundle(p) => {
                let mut bundle = Zeroizing::new(String::with_capacity(key_pem.len() + chain.len()));
                bundle.push_str(key_pem);
                bundle.push_str(&chain);
                self.write(p, bundle.as_bytes())
            }
            Files::KeyAndChain { key, chain: c } => {
                self.write_pair(key, key_pem.as_bytes(), c, chain.as_bytes())
            }
        }
    }

    /// Refreshes every due certificate. `Ok(Some(why))`: the pod is gone.
    pub(crate) async fn refresh_certificates(
        &mut self,
        certs: &mut [CertificateState],
        call_as: &mut CallAs,
    ) -> anyhow::Result<Option<String>> {
        let now = self.clock.now();
        for c in certs.iter_mut().filter(|c| c.due <= now) {
            let what = c.source.describe();
            match self.certify(&c.source, call_as).await {
                Ok((key_pem, issued)) => {
                    self.write_credentials(&c.source, &key_pem, &issued)?;
                    c.not_after = Some(issued.not_after);
                    c.backoff = BACKOFF_START;
                    c.due = refresh_due(
                        issued.begin_refresh_at,
                        issued.not_after,
                        draw_jitter(CERTIFICATE_JITTER),
                    );
                    tracing::info!(paths = %what, spiffe_id = %issued.spiffe_id, serial = %issued.serial, chain_blocks = issued.chain_der.len(), refresh_in = ?c.due.duration_since(self.clock.now()).unwrap_or_default(), "pod certificate written");
                }
                Err(s) => {
                    if matches!(
                        s.code(),
                        Code::NotFound | Code::Aborted | Code::InvalidArgument
                    ) && let PodCheck::Gone(why) = self.check_pod().await
                    {
                        return Ok(Some(why));
                    }
                    let valid = c.not_after.is_some_and(|e| e > self.clock.now());
                    if valid {
                        tracing::warn!(paths = %what, "pod certificate request failed, keeping the current certificate, retrying in {:?}: {}: {}", c.backoff, s.code(), s.message());
                    } else {
                        tracing::error!(paths = %what, "pod certificate request failed and no valid certificate is in place, retrying in {:?}: {}: {}", c.backoff, s.code(), s.message());
                    }
                    c.due = self.clock.now() + c.backoff;
                    c.backoff = next_backoff(c.backoff);
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_generates() {
        for t in ["ECDSAP256", "ECDSAP384", "ECDSAP521", "ED25519", "RSA3072"] {
            let k = generate_key(t).expect(t);
            assert!(k.serialize_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        let Err(e) = generate_key("RSA2048") else {
            panic!("RSA2048 refused")
        };
        assert!(e.contains("\"RSA2048\""), "{e}");
    }

    #[test]
    fn begin_refresh_defaults_to_halfway_to_not_after() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (beginRefreshAt given, notAfter after now, expected after now)
        let cases: &[(Option<Duration>, Duration, Duration)] = &[
            (None, s(86_400), s(43_200)),  // halfway
            (None, s(1), ms(500)),         // sub-second halves are kept
            (None, s(0), s(0)),            // expires now: refresh now
            (Some(s(7)), s(86_400), s(7)), // the server's answer wins
            (Some(s(0)), s(100), s(0)),
            (Some(s(200)), s(100), s(200)), // even past notAfter: as given
        ];
        for (given, not_after, want) in cases {
            let clock = badge_core::FixedClock::at_unix(1_700_000_000);
            let now = clock.now();
            assert_eq!(
                begin_refresh_at(given.map(|g| now + g), now + *not_after, now),
                t0 + *want,
                "given {given:?} not_after +{not_after:?}"
            );
        }
        // Already expired when answered (clock skew): now.
        assert_eq!(begin_refresh_at(None, t0 - s(5), t0), t0);
    }

    #[test]
    fn chain_pem_round_trips() {
        let der = vec![vec![1u8; 100], vec![2u8; 70]];
        let pem = chain_pem(&der);
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pem.lines().all(|l| l.len() <= 64));
    }
}
