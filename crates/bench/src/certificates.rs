//! The certificate scenarios (issue 14): Istio's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` and Kubernetes'
//! `badge.certificates.v1.PodCertificateService/CreatePodCertificate`, each sending
//! CSRs from a pool made up front (one key per CSR, generated with rcgen; a fresh
//! key per request would measure key generation, not the CA), and
//! [`csr_rates`]: one core's rate of `badge_ca::csr` parse + proof-of-possession
//! verification per subject key type.
//!
//! Tokens and private keys: a bearer token lives only in the prepared request
//! metadata (never in a `Debug`, a report or an error); the subject keys are dropped
//! as soon as their CSR is signed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use badge_core::spiffe::plan::KeyType;
use badge_proto::certificates::pod_certificate_service_client::PodCertificateServiceClient;
use badge_proto::certificates::{CreatePodCertificateRequest, PodCertificateRequestSpec};
use badge_proto::istio::v1::auth::IstioCertificateRequest;
use badge_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use base64::Engine as _;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

/// The most CSRs a pool may hold (the 10,000-workload burst uses one per workload).
pub const MAX_POOL: usize = 100_000;

/// Kubernetes' subject key type name (`ECDSAP256`, `RSA3072`, ...).
pub fn key_type(text: &str) -> Result<KeyType, String> {
    KeyType::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = KeyType::ALL.iter().map(|k| k.name()).collect();
        format!("one of {}", names.join(", "))
    })
}

fn new_key(kt: KeyType) -> anyhow::Result<KeyPair> {
    let key = match kt {
        KeyType::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        }
        KeyType::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
        }
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::EcdsaP521 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512),
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
    };
    key.with_context(|| format!("generating a {} key", kt.name()))
}

/// One pooled CSR, in both encodings (Istio sends PEM, Kubernetes DER).
#[derive(Clone)]
pub struct Csr {
    pub pem: String,
    pub der: Vec<u8>,
}

/// A CSR for a new `kt` key, with `uri` as its only URI SAN (none when `None`),
/// shaped as istio-agent's: an empty subject.
pub fn csr(kt: KeyType, uri: Option<&str>) -> anyhow::Result<Csr> {
    let key = new_key(kt)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(uri) = uri {
        params.subject_alt_names.push(SanType::URI(
            uri.try_into()
                .with_context(|| format!("{uri:?} is not a URI SAN"))?,
        ));
    }
    let request = params.serialize_request(&key).context("signing the CSR")?;
    Ok(Csr {
        pem: request.pem().context("PEM of the CSR")?,
        der: request.der().to_vec(),
    })
}

/// `count` CSRs with a new `kt` key each; CSR `i` asks for `uris[i % uris.len()]`
/// (no URI SAN when `uris` is empty). Generated on every core (RSA keys take a
/// while).
pub fn csr_pool(kt: KeyType, uris: &[String], count: usize) -> anyhow::Result<Vec<Csr>> {
    if count == 0 || count > MAX_POOL {
        bail!("--pool must be 1..={MAX_POOL}");
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count);
    let uri = |i: usize| (!uris.is_empty()).then(|| uris[i % uris.len()].as_str());
    let parts: Vec<anyhow::Result<Vec<(usize, Csr)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| Ok((i, csr(kt, uri(i))?)))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("CSR thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for part in parts {
        all.extend(part?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, c)| c).collect())
}

/// The token in `path` (surrounding whitespace ignored). Errors name the file,
/// never its contents.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("--token-file {}: no token in it", path.display());
    }
    Ok(token)
}

/// The (namespace, service account) of a service-account JWT, from its `sub`
/// claim (`system:serviceaccount:<ns>:<sa>`), read without verification: the
/// server decides; this only names the SPIFFE ID the CSR asks for.
pub fn token_account(token: &str) -> Option<(String, String)> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    let (ns, sa) = sub
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    Some((ns.to_string(), sa.to_string()))
}

/// `authorization: Bearer <token>`.
fn bearer(token: &str, file: &Path) -> anyhow::Result<AsciiMetadataValue> {
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        anyhow::anyhow!(
            "--token-file {}: the token is not a valid header value",
            file.display()
        )
    })
}

/// Round-robin over a pool: request `n` takes entry `n % len`.
struct Cursor(AtomicUsize);

impl Cursor {
    fn next(&self, len: usize) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed) % len
    }
}

/// One pooled Istio request: a workload's token and its CSR.
struct IstioEntry {
    bearer: AsciiMetadataValue,
    csr: String,
}

/// The `istio-certificate` scenario's requests.
pub struct IstioPool {
    entries: Vec<IstioEntry>,
    next: Cursor,
    validity_seconds: i64,
    key_type: KeyType,
    accounts: usize,
}

impl fmt::Debug for IstioPool {
    // Never the tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IstioPool")
            .field("csrs", &self.entries.len())
            .field("accounts", &self.accounts)
            .field("key_type", &self.key_type.name())
            .field("validity_seconds", &self.validity_seconds)
            .finish()
    }
}

/// What the `istio-certificate` scenario sends.
#[derive(Debug, Clone)]
pub struct IstioSpec {
    /// One token per workload account (audience `istio-ca`).
    pub token_files: Vec<PathBuf>,
    /// The SPIFFE ID of each token, in order; empty: derived from each token's
    /// service account and `trust_domain`.
    pub spiffe_ids: Vec<String>,
    pub trust_domain: Option<String>,
    pub key_type: KeyType,
    pub pool: usize,
    pub validity_seconds: i64,
}

impl IstioPool {
    /// Reads the tokens and makes `spec.pool` CSRs; CSR `i` belongs to account
    /// `i % accounts` and asks for exactly its SPIFFE ID.
    pub fn build(spec: &IstioSpec) -> anyhow::Result<IstioPool> {
        if spec.token_files.is_empty() {
            bail!("--token-file: at least one (a service-account token with audience istio-ca)");
        }
        if !spec.spiffe_ids.is_empty() && spec.spiffe_ids.len() != spec.token_files.len() {
            bail!(
                "--spiffe-id: give one per --token-file ({} tokens, {} SPIFFE IDs)",
                spec.token_files.len(),
                spec.spiffe_ids.len()
            );
        }
        let mut accounts = Vec::with_capacity(spec.token_files.len());
        for (i, file) in spec.token_files.iter().enumerate() {
            let token = read_token(file)?;
            let id = match (spec.spiffe_ids.get(i), &spec.trust_domain) {
                (Some(id), _) => id.clone(),
                (None, Some(td)) => {
                    let (ns, sa) = token_account(&token).with_context(|| {
                        format!(
                            "--token-file {}: not a service-account JWT (no sub system:serviceaccount:<ns>:<sa>)",
                            file.display()
                        )
                    })?;
                    format!("spiffe://{td}/ns/{ns}/sa/{sa}")
                }
                (None, None) => bail!("--trust-domain or --spiffe-id is required"),
            };
            accounts.push((bearer(&token, file)?, id));
        }
        let uris: Vec<String> = accounts.iter().map(|(_, id)| id.clone()).collect();
        let csrs = csr_pool(spec.key_type, &uris, spec.pool)?;
        let entries = csrs
            .into_iter()
            .enumerate()
            .map(|(i, c)| IstioEntry {
                bearer: accounts[i % accounts.len()].0.clone(),
                csr: c.pem,
            })
            .collect();
        Ok(IstioPool {
            entries,
            next: Cursor(AtomicUsize::new(0)),
            validity_seconds: spec.validity_seconds,
            key_type: spec.key_type,
            accounts: accounts.len(),
        })
    }

    /// One CreateCertificate with the next pooled CSR; the answer must be a chain
    /// of at least two certificates (the leaf and, last, the root).
    pub async fn call(&self, channel: Channel) -> Result<(), Status> {
        let entry = &self.entries[self.next.next(self.entries.len())];
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: entry.csr.clone(),
            validity_duration: self.validity_seconds,
            metadata: None,
        });
        request
            .metadata_mut()
            .insert("authorization", entry.bearer.clone());
        let chain = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await?
            .into_inner()
            .cert_chain;
        if chain.len() < 2 {
            return Err(Status::data_loss(format!(
                "a certificate chain of {} entries: want the leaf and at least the root",
                chain.len()
            )));
        }
        Ok(())
    }
}

/// The `pod-certificate` scenario's requests: one pod's PodCertificateRequest
/// with a pooled stub CSR each time.
pub struct PodPool {
    namespace: String,
    spec: PodCertificateRequestSpec,
    csrs: Vec<Vec<u8>>,
    next: Cursor,
    bearer: Option<AsciiMetadataValue>,
    key_type: KeyType,
}

impl fmt::Debug for PodPool {
    // Never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodPool")
            .field("namespace", &self.namespace)
            .field("pod", &self.spec.pod_name)
            .field("node", &self.spec.node_name)
            .field("csrs", &self.csrs.len())
            .field("key_type", &self.key_type.name())
            .field("bearer", &self.bearer.is_some())
            .finish()
    }
}

/// What the `pod-certificate` scenario sends.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub node: String,
    pub node_uid: String,
    pub signer: String,
    pub max_expiration_seconds: Option<i32>,
    /// The pod's own pod-bound token (API audiences); `None`: the connection's
    /// client certificate authenticates (the pod's node, `system:node:<node>`).
    pub token_file: Option<PathBuf>,
    pub key_type: KeyType,
    pub pool: usize,
}

impl PodPool {
    pub fn build(spec: &PodSpec) -> anyhow::Result<PodPool> {
        let bearer = match &spec.token_file {
            Some(f) => Some(bearer(&read_token(f)?, f)?),
            None => None,
        };
        // The signer decides the names: the stub carries none.
        let csrs = csr_pool(spec.key_type, &[], spec.pool)?
            .into_iter()
            .map(|c| c.der)
            .collect();
        Ok(PodPool {
            namespace: spec.namespace.clone(),
            spec: PodCertificateRequestSpec {
                signer_name: spec.signer.clone(),
                pod_name: spec.pod.clone(),
                pod_uid: spec.pod_uid.clone(),
                service_account_name: spec.service_account.clone(),
                service_account_uid: spec.service_account_uid.clone(),
                node_name: spec.node.clone(),
                node_uid: spec.node_uid.clone(),
                max_expiration_seconds: spec.max_expiration_seconds,
                ..Default::default()
            },
            csrs,
            next: Cursor(AtomicUsize::new(0)),
            bearer,
            key_type: spec.key_type,
        })
    }

    /// One CreatePodCertificate with the next pooled stub CSR; the answer must be
    /// `Issued` with a chain of at least two certificates (leaf, intermediate).
    pub async fn call(&self, channel: Channel) -> Result<(), Status> {
        let stub = &self.csrs[self.next.next(self.csrs.len())];
        let mut request = tonic::Request::new(CreatePodCertificateRequest {
            namespace: self.namespace.clone(),
            spec: Some(PodCertificateRequestSpec {
                stub_pkcs10_request: stub.clone(),
                ..self.spec.clone()
            }),
        });
        if let Some(b) = &self.bearer {
            request.metadata_mut().insert("authorization", b.clone());
        }
        let status = PodCertificateServiceClient::new(channel)
            .create_pod_certificate(request)
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        let issued = status
            .conditions
            .iter()
            .any(|c| c.r#type == "Issued" && c.status == "True");
        let certs = status
            .certificate_chain
            .matches("-----BEGIN CERTIFICATE-----")
            .count();
        if !issued || certs < 2 {
            return Err(Status::data_loss(format!(
                "not issued with a chain: Issued={issued}, {certs} certificates"
            )));
        }
        Ok(())
    }
}

/// One key type's CSR verification rate on one core.
#[derive(Debug, Clone)]
pub struct CsrRate {
    pub key_type: KeyType,
    pub der_bytes: usize,
    pub pem_bytes: usize,
    /// `badge_ca::csr::parse_pem` (Istio's path) per second.
    pub pem_per_second: f64,
    /// `badge_ca::csr::parse_der` (Kubernetes' stubPKCS10Request) per second.
    pub der_per_second: f64,
}

impl CsrRate {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "key_type": self.key_type.name(),
            "der_bytes": self.der_bytes,
            "pem_bytes": self.pem_bytes,
            "parse_pem_per_second": self.pem_per_second.round(),
            "parse_der_per_second": self.der_per_second.round(),
        })
    }
}

impl fmt::Display for CsrRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} {:>5} B DER {:>5} B PEM   parse_pem {:>9.0}/s ({:>6.1} us)   parse_der {:>9.0}/s ({:>6.1} us)",
            self.key_type.name(),
            self.der_bytes,
            self.pem_bytes,
            self.pem_per_second,
            1e6 / self.pem_per_second.max(f64::MIN_POSITIVE),
            self.der_per_second,
            1e6 / self.der_per_second.max(f64::MIN_POSITIVE),
        )
    }
}

/// How often `f` runs per second on this thread, for about `window`.
fn rate(window: Duration, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    // Warm the caches and the branch predictors first.
    for _ in 0..16 {
        f()?;
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        for _ in 0..16 {
            f()?;
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= window {
            return Ok(n as f64 / elapsed.as_secs_f64());
        }
    }
}

/// For each key type: one CSR with a SPIFFE URI SAN, parsed and verified with
/// `badge_ca::csr` (exactly what both APIs run per request) again and again on the
/// calling thread for `window` per encoding.
pub fn csr_rates(key_types: &[KeyType], window: Duration) -> anyhow::Result<Vec<CsrRate>> {
    let mut out = Vec::with_capacity(key_types.len());
    for &kt in key_types {
        let c = csr(kt, Some("spiffe://127.0.0.1/ns/bench/sa/workload"))?;
        let check = |r: badge_core::Result<badge_ca::VerifiedCsr>| {
            let v = r.map_err(|e| anyhow::anyhow!("{} CSR refused: {e}", kt.name()))?;
            if v.key_type != kt {
                bail!("{} CSR read as {}", kt.name(), v.key_type.name());
            }
            Ok(())
        };
        let pem_per_second = rate(window, || check(badge_ca::csr::parse_pem("csr", &c.pem)))?;
        let der_per_second = rate(window, || {
            check(badge_ca::csr::parse_der("stubPKCS10Request", &c.der))
        })?;
        out.push(CsrRate {
            key_type: kt,
            der_bytes: c.der.len(),
            pem_bytes: c.pem.len(),
            pem_per_second,
            der_per_second,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            b(br#"{"alg":"ES256"}"#),
            b(claims.to_string().as_bytes()),
            b(b"sig")
        )
    }

    #[test]
    fn account_of_a_token() {
        let t = jwt(&serde_json::json!({"sub": "system:serviceaccount:shop:web"}));
        assert_eq!(token_account(&t), Some(("shop".into(), "web".into())));
        for bad in [
            jwt(&serde_json::json!({"sub": "alice"})),
            jwt(&serde_json::json!({})),
            "not-a-jwt".to_string(),
            "a.%%%.c".to_string(),
        ] {
            assert_eq!(token_account(&bad), None, "{bad}");
        }
    }

    #[test]
    fn pooled_csrs_verify_and_cycle_their_identities() {
        let uris = vec![
            "spiffe://td/ns/a/sa/one".to_string(),
            "spiffe://td/ns/a/sa/two".to_string(),
        ];
        let pool = csr_pool(KeyType::EcdsaP256, &uris, 5).expect("pool");
        assert_eq!(pool.len(), 5);
        for (i, c) in pool.iter().enumerate() {
            let v = badge_ca::csr::parse_pem("csr", &c.pem).expect("verifies");
            assert_eq!(v.uri_sans, vec![uris[i % 2].clone()]);
            assert_eq!(v.key_type, KeyType::EcdsaP256);
            assert_eq!(badge_ca::csr::parse_der("stub", &c.der).expect("der"), v);
        }
        // Every CSR its own key.
        let mut keys: Vec<_> = pool
            .iter()
            .map(|c| {
                badge_ca::csr::parse_der("stub", &c.der)
                    .expect("der")
                    .public_key
            })
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 5);
        assert!(csr_pool(KeyType::EcdsaP256, &uris, 0).is_err());
    }

    #[test]
    fn key_type_names() {
        assert_eq!(key_type("RSA3072"), Ok(KeyType::Rsa3072));
        assert_eq!(key_type("ECDSAP256"), Ok(KeyType::EcdsaP256));
        assert!(
            key_type("rsa")
                .expect_err("not a key type")
                .contains("ECDSAP256")
        );
    }

    #[test]
    fn csr_rate_runs() {
        let r = csr_rates(&[KeyType::EcdsaP256], Duration::from_millis(20)).expect("rates");
        assert!(r[0].pem_per_second > 0.0 && r[0].der_per_second > 0.0);
        assert!(r[0].to_string().starts_with("ECDSAP256"));
    }

    #[test]
    fn debug_shows_no_token() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        let token = jwt(&serde_json::json!({"sub": "system:serviceaccount:shop:web"}));
        std::fs::write(&file, &token).expect("write");
        let pool = IstioPool::build(&IstioSpec {
            token_files: vec![file.clone()],
            spiffe_ids: vec![],
            trust_domain: Some("td".into()),
            key_type: KeyType::EcdsaP256,
            pool: 2,
            validity_seconds: 0,
        })
        .expect("pool");
        let shown = format!("{pool:?}");
        assert!(!shown.contains(&token), "{shown}");
        let v = badge_ca::csr::parse_pem("csr", &pool.entries[1].csr).expect("csr");
        assert_eq!(v.uri_sans, vec!["spiffe://td/ns/shop/sa/web".to_string()]);
        let pod = PodPool::build(&PodSpec {
            namespace: "shop".into(),
            pod: "web-0".into(),
            pod_uid: "u".into(),
            service_account: "web".into(),
            service_account_uid: "s".into(),
            node: "n".into(),
            node_uid: "nu".into(),
            signer: badge_ca::SIGNER_NAME.into(),
            max_expiration_seconds: None,
            token_file: Some(file),
            key_type: KeyType::EcdsaP256,
            pool: 1,
        })
        .expect("pod pool");
        let shown = format!("{pod:?}");
        assert!(!shown.contains(&token), "{shown}");
    }
}
