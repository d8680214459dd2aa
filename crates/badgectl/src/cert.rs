//! Workload certificates on the client side (`badgectl create certificate`): the
//! subject key and its PKCS#10 request, checks of the chain the CA returns, and the
//! credential bundle file.
//!
//! The bundle has Kubernetes' podCertificate `credentialBundlePath` layout: the
//! PKCS#8 private key PEM first, then the certificate chain PEM, leaf first, then the
//! intermediates (the root is left out, as in Kubernetes' `certificateChain`: a TLS
//! peer does not send it, and relying parties take it from the trust bundle). The file
//! is written atomically with mode 0600 (see [`write_private_file`]).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use badge_core::spiffe::SpiffeId;
use badge_core::spiffe::plan::KeyType as CaKeyType;
use zeroize::Zeroizing;

/// The subject key types, with Kubernetes' `podCertificate.keyType` names: exactly
/// the set Badge's CA accepts ([`CaKeyType::ALL`]; a unit test keeps them equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (the default: small, fast, what Istio uses).
    #[value(name = "ECDSAP256")]
    EcdsaP256,
    /// ECDSA P-384.
    #[value(name = "ECDSAP384")]
    EcdsaP384,
    /// ECDSA P-521.
    #[value(name = "ECDSAP521")]
    EcdsaP521,
    /// RSA 3072 bits.
    #[value(name = "RSA3072")]
    Rsa3072,
    /// RSA 4096 bits (slow to generate).
    #[value(name = "RSA4096")]
    Rsa4096,
    /// Ed25519.
    #[value(name = "ED25519")]
    Ed25519,
}

impl KeyType {
    /// The CA's key type of the same name.
    pub fn ca(self) -> CaKeyType {
        match self {
            KeyType::EcdsaP256 => CaKeyType::EcdsaP256,
            KeyType::EcdsaP384 => CaKeyType::EcdsaP384,
            KeyType::EcdsaP521 => CaKeyType::EcdsaP521,
            KeyType::Rsa3072 => CaKeyType::Rsa3072,
            KeyType::Rsa4096 => CaKeyType::Rsa4096,
            KeyType::Ed25519 => CaKeyType::Ed25519,
        }
    }

    pub fn name(self) -> &'static str {
        self.ca().name()
    }

    /// A new key of this type, in memory only.
    pub fn generate(self) -> anyhow::Result<rcgen::KeyPair> {
        use rcgen::{KeyPair, RsaKeySize};
        let key = match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::EcdsaP521 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512),
            KeyType::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
            KeyType::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
            }
            KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        };
        let key = key.map_err(|e| anyhow::anyhow!("generating a {} key: {e}", self.name()))?;
        if self == KeyType::Ed25519 {
            return ed25519_pkcs8_v1(&key);
        }
        Ok(key)
    }
}

/// The same Ed25519 key with a PKCS#8 v1 encoding. aws-lc-rs makes v2 (RFC 5958,
/// with the public key), which OpenSSL 3.0 and other readers refuse; v1 (RFC 5208,
/// the seed only) is what `openssl genpkey` and Go write and every reader takes.
fn ed25519_pkcs8_v1(key: &rcgen::KeyPair) -> anyhow::Result<rcgen::KeyPair> {
    // v2: SEQUENCE { INTEGER 1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET
    // STRING <32-byte seed> }, [1] public key }.
    const V2_PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.serialized_der();
    let seed = match der.strip_prefix(&V2_PREFIX[..]) {
        Some(rest) if rest.len() >= 32 => &rest[..32],
        _ if der.starts_with(&V1_PREFIX) && der.len() == V1_PREFIX.len() + 32 => {
            return rcgen::KeyPair::try_from(der)
                .map_err(|e| anyhow::anyhow!("re-reading the ED25519 key: {e}"));
        }
        _ => bail!("unexpected PKCS#8 encoding of the generated ED25519 key"),
    };
    let mut v1 = Zeroizing::new(Vec::with_capacity(V1_PREFIX.len() + 32));
    v1.extend_from_slice(&V1_PREFIX);
    v1.extend_from_slice(seed);
    rcgen::KeyPair::try_from(v1.as_slice())
        .map_err(|e| anyhow::anyhow!("re-reading the ED25519 key: {e}"))
}

/// A subject key with its certificate request.
pub struct KeyAndCsr {
    /// PKCS#8 PEM of the private key (wiped on drop).
    pub key_pem: Zeroizing<String>,
    /// The key's SubjectPublicKeyInfo (DER), to match against the issued leaf.
    pub spki: Vec<u8>,
    /// PEM PKCS#10, signed with the key (the CA's proof of possession).
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// A new key of `key_type` and a CSR with an empty subject whose only SAN is the URI
/// `spiffe_id` (no SAN when `None`: Badge's CA then issues for the token's identity).
pub fn key_and_csr(key_type: KeyType, spiffe_id: Option<&SpiffeId>) -> anyhow::Result<KeyAndCsr> {
    use rcgen::PublicKeyData as _;
    let key = key_type.generate()?;
    let mut params = rcgen::CertificateParams::default();
    // X509-SVID: the SAN is the identity; the subject stays empty.
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(id) = spiffe_id {
        let uri = rcgen::string::Ia5String::try_from(id.to_string())
            .map_err(|e| anyhow::anyhow!("SPIFFE ID {id}: {e}"))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    }
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| anyhow::anyhow!("building the certificate request: {e}"))?;
    Ok(KeyAndCsr {
        key_pem: Zeroizing::new(key.serialize_pem()),
        spki: key.subject_public_key_info(),
        csr_pem: csr,
    })
}

/// What the issued leaf says, for the summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub spiffe_id: String,
    /// Lowercase hex, as in the CA's audit event.
    pub serial: String,
    pub not_after_unix: i64,
}

impl Leaf {
    /// `<SPIFFE ID> serial <hex> notAfter <RFC 3339>`.
    pub fn summary(&self) -> String {
        let not_after = crate::k8s::rfc3339(&prost_types::Timestamp {
            seconds: self.not_after_unix,
            nanos: 0,
        });
        format!(
            "{} serial {} notAfter {not_after}",
            self.spiffe_id, self.serial
        )
    }
}

/// Checks the CA's chain (leaf first) against the request and keeps what goes in the
/// bundle: the leaf must carry `spki` and exactly one URI SAN, the expected SPIFFE ID
/// (`expected`, or when the trust domain was not known, any trust domain's ID of
/// service account `namespace/name`); a self-issued last entry (the root) is dropped.
pub fn check_chain(
    chain: &[String],
    spki: &[u8],
    expected: Option<&SpiffeId>,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(Vec<String>, Leaf)> {
    let Some(leaf_pem) = chain.first() else {
        bail!("the CA returned an empty certificate chain");
    };
    let leaf_der = single_certificate_der(leaf_pem).context("the CA's leaf certificate")?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
        .map_err(|e| anyhow::anyhow!("the CA's leaf certificate does not parse: {e}"))?;
    if leaf.tbs_certificate.subject_pki.raw != spki {
        bail!("the CA's leaf certificate is not for the generated key");
    }
    let uris: Vec<&str> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        bail!(
            "the CA's leaf certificate has {} URI SANs, want exactly one SPIFFE ID",
            uris.len()
        );
    };
    let id = SpiffeId::parse(uri)
        .map_err(|e| anyhow::anyhow!("the leaf's URI SAN {uri:?} is not a SPIFFE ID: {e}"))?;
    let matches = match expected {
        Some(want) => &id == want,
        None => id
            .service_account("uri")
            .is_ok_and(|sa| sa.namespace == namespace && sa.name == name),
    };
    if !matches {
        let want = match expected {
            Some(w) => w.to_string(),
            None => format!("spiffe://<trust domain>/ns/{namespace}/sa/{name}"),
        };
        bail!("the CA issued a certificate for {id}, not {want}");
    }
    let serial = leaf
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    let info = Leaf {
        spiffe_id: id.to_string(),
        serial,
        not_after_unix: leaf.validity().not_after.timestamp(),
    };
    let mut kept: Vec<String> = chain.to_vec();
    if kept.len() >= 2
        && let Some(last) = kept.last()
        && is_self_issued(last)?
    {
        kept.pop();
    }
    Ok((kept, info))
}

fn single_certificate_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let mut found = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| anyhow::anyhow!("not PEM: {e}"))?;
        if p.label == "CERTIFICATE" {
            found.push(p.contents);
        }
    }
    match <[Vec<u8>; 1]>::try_from(found) {
        Ok([der]) => Ok(der),
        Err(v) => bail!("{} certificates in one chain entry, want 1", v.len()),
    }
}

fn is_self_issued(pem: &str) -> anyhow::Result<bool> {
    let der = single_certificate_der(pem).context("the CA's chain")?;
    let (_, c) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("a certificate of the CA's chain does not parse: {e}"))?;
    Ok(c.subject().as_raw() == c.issuer().as_raw())
}

/// The credential bundle: the private key PEM, then each certificate PEM in order.
pub fn bundle(key_pem: &str, chain: &[String]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(
        key_pem.len() + chain.iter().map(String::len).sum::<usize>() + chain.len() + 1,
    ));
    for part in std::iter::once(key_pem).chain(chain.iter().map(String::as_str)) {
        s.push_str(part);
        if !part.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// Refuses an output path that is a symbolic link or exists as anything but a
/// regular file (checked before anything is requested, and again when writing).
pub fn check_output_path(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symbolic link: refusing to write a private key through it",
            path.display()
        ),
        Ok(m) if !m.is_file() => bail!("{} exists and is not a regular file", path.display()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = parent_dir(path);
            if !dir.is_dir() {
                bail!("{}: no such directory", dir.display());
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `contents` to `path` so that no reader ever sees a partial file, and no
/// other user can read it: a new temporary file in the same directory, created with
/// mode 0600, written and fsynced, then renamed over `path` (the directory is fsynced
/// too). A symbolic link at `path` is refused; were one put there between the check
/// and the rename, the rename replaces the link itself and never writes through it.
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    check_output_path(path)?;
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // Whatever the umask did at creation, the key file is the owner's only.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", tmp.path().display()))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::Error::new(e.error))
        .with_context(|| format!("renaming into {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Best effort: the rename itself is durable once the directory is.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a token file (surrounding whitespace trimmed; wiped on drop). Errors name the
/// file, never its content.
pub fn read_token_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?,
    );
    let token = Zeroizing::new(text.trim().to_string());
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use badge_core::spiffe::TrustDomain;
    use clap::ValueEnum as _;
    use x509_parser::prelude::FromDer as _;

    fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::for_service_account(&TrustDomain::parse(td).expect("td"), ns, sa).expect("id")
    }

    #[test]
    fn key_types_are_the_cas() {
        let ours: Vec<&str> = KeyType::value_variants().iter().map(|k| k.name()).collect();
        let cas: Vec<&str> = CaKeyType::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(ours.len(), cas.len());
        for name in &cas {
            let k = KeyType::from_str(name, false).expect("the CA's name parses");
            assert_eq!(k.name(), *name);
            assert_eq!(
                k.to_possible_value().expect("visible").get_name(),
                *name,
                "clap shows the CA's name"
            );
        }
        assert_eq!(
            KeyType::from_str("ecdsap384", true).expect("ignore case"),
            KeyType::EcdsaP384
        );
        assert!(KeyType::from_str("DSA", true).is_err());
    }

    /// Every key type makes a key and a CSR Badge's CA would take: the CSR's key is
    /// the key (openssl checks the signature in the end-to-end test), PKCS#8 PEM.
    #[test]
    fn keys_and_csrs() {
        let me = id("example.org", "default", "web");
        for k in KeyType::value_variants() {
            if *k == KeyType::Rsa4096 {
                continue; // slow; same code path as RSA3072
            }
            let g = key_and_csr(*k, Some(&me)).expect("generated");
            assert!(
                g.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
                "{}: PKCS#8",
                k.name()
            );
            // PKCS#8 v1 (version 0), the form every reader takes.
            let der = x509_parser::pem::Pem::iter_from_buffer(g.key_pem.as_bytes())
                .next()
                .expect("one block")
                .expect("pem")
                .contents;
            let (_, info) = x509_parser::der_parser::parse_der(&der).expect("der");
            let version = info.as_sequence().expect("sequence")[0]
                .as_u32()
                .expect("version");
            assert_eq!(version, 0, "{}: PKCS#8 v1", k.name());
            assert!(
                g.csr_pem
                    .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n")
            );
            let pem = x509_parser::pem::Pem::iter_from_buffer(g.csr_pem.as_bytes())
                .next()
                .expect("one block")
                .expect("pem");
            let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(
                &pem.contents,
            )
            .expect("csr parses");
            match csr.verify_signature() {
                Ok(()) => {}
                // x509-parser cannot check P-521 signatures; openssl and Badge's CA do
                // (the end-to-end test).
                Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm)
                    if *k == KeyType::EcdsaP521 => {}
                Err(e) => panic!("{}: CSR signature: {e}", k.name()),
            }
            assert_eq!(
                csr.certification_request_info.subject_pki.raw,
                g.spki.as_slice()
            );
            assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
            let uris: Vec<String> = csr
                .requested_extensions()
                .into_iter()
                .flatten()
                .filter_map(|e| match e {
                    x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(
                        s.general_names
                            .iter()
                            .map(|g| g.to_string())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(uris, vec![format!("URI({me})")], "{}", k.name());
            assert!(
                !format!("{g:?}").contains("PRIVATE KEY"),
                "Debug hides the key"
            );
        }
        let none = key_and_csr(KeyType::EcdsaP256, None).expect("no SAN");
        let pem = x509_parser::pem::Pem::iter_from_buffer(none.csr_pem.as_bytes())
            .next()
            .expect("block")
            .expect("pem");
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
                .expect("csr");
        assert!(csr.requested_extensions().is_none());
    }

    /// A CA, an intermediate and a leaf made here, to check what `check_chain` keeps.
    fn issue(leaf_key: &rcgen::KeyPair, uris: &[&str]) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let root_key = KeyPair::generate().expect("key");
        let mut rp = CertificateParams::new(Vec::<String>::new()).expect("params");
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        rp.distinguished_name
            .push(rcgen::DnType::CommonName, "test root");
        let root = rp.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(rp, &root_key);
        let int_key = KeyPair::generate().expect("key");
        let mut ip = CertificateParams::new(Vec::<String>::new()).expect("params");
        ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ip.distinguished_name
            .push(rcgen::DnType::CommonName, "test intermediate");
        let int = ip.signed_by(&int_key, &root_issuer).expect("intermediate");
        let int_issuer = Issuer::new(ip, &int_key);
        let mut lp = CertificateParams::new(Vec::<String>::new()).expect("params");
        lp.distinguished_name = rcgen::DistinguishedName::new();
        lp.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("ia5")))
            .collect();
        let leaf = lp.signed_by(leaf_key, &int_issuer).expect("leaf");
        (leaf.pem(), int.pem(), root.pem())
    }

    #[test]
    fn chains_are_checked_and_the_root_dropped() {
        use rcgen::PublicKeyData as _;
        let me = id("example.org", "default", "web");
        let key = rcgen::KeyPair::generate().expect("key");
        let spki = key.subject_public_key_info();
        let me_uri = me.to_string();
        let (leaf, int, root) = issue(&key, &[me_uri.as_str()]);
        let chain = vec![leaf.clone(), int.clone(), root.clone()];

        let (kept, info) = check_chain(&chain, &spki, Some(&me), "default", "web").expect("checks");
        assert_eq!(kept, vec![leaf.clone(), int.clone()], "root dropped");
        assert_eq!(info.spiffe_id, me.to_string());
        assert_eq!(info.serial.len() % 2, 0);
        assert!(!info.serial.is_empty());
        let summary = info.summary();
        assert!(
            summary.starts_with("spiffe://example.org/ns/default/sa/web serial ")
                && summary.contains(" notAfter ")
                && summary.ends_with('Z'),
            "{summary}"
        );
        // Trust domain unknown: the path decides.
        check_chain(&chain, &spki, None, "default", "web").expect("any trust domain");
        let e = check_chain(&chain, &spki, None, "default", "db").expect_err("other account");
        assert!(
            e.to_string()
                .contains("not spiffe://<trust domain>/ns/default/sa/db"),
            "{e}"
        );
        let other = id("other.org", "default", "web");
        let e = check_chain(&chain, &spki, Some(&other), "default", "web").expect_err("other td");
        assert!(
            e.to_string().contains("issued a certificate for spiffe://example.org/ns/default/sa/web, not spiffe://other.org/"),
            "{e}"
        );
        // Not our key.
        let stranger = rcgen::KeyPair::generate().expect("key");
        let e = check_chain(
            &chain,
            &stranger.subject_public_key_info(),
            Some(&me),
            "default",
            "web",
        )
        .expect_err("other key");
        assert!(e.to_string().contains("not for the generated key"), "{e}");
        // Two URIs.
        let (two, _, _) = issue(&key, &[me_uri.as_str(), "spiffe://example.org/x"]);
        let e = check_chain(&[two, int.clone()], &spki, Some(&me), "default", "web")
            .expect_err("two uris");
        assert!(e.to_string().contains("2 URI SANs"), "{e}");
        // No root at the end: nothing dropped.
        let (kept, _) = check_chain(
            &[leaf.clone(), int.clone()],
            &spki,
            Some(&me),
            "default",
            "web",
        )
        .expect("checks");
        assert_eq!(kept.len(), 2);
        assert!(check_chain(&[], &spki, Some(&me), "default", "web").is_err());
    }

    #[test]
    fn bundle_layout_key_first_then_the_chain() {
        let b = bundle(
            "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n",
            &[
                "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----".into(),
                "-----BEGIN CERTIFICATE-----\nint\n-----END CERTIFICATE-----\n".into(),
            ],
        );
        assert_eq!(
            b.as_str(),
            "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nint\n-----END CERTIFICATE-----\n"
        );
    }

    #[test]
    fn private_files_are_0600_atomic_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.pem");
        write_private_file(&path, b"one").expect("written");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Replacing an existing (even world-readable) file: still 0600.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private_file(&path, b"two").expect("rewritten");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the file: no temporary left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("web.pem")]);

        // A symlink is refused, and its target is untouched.
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").expect("write");
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let e = write_private_file(&link, b"secret").expect_err("symlink");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
        // A dangling one too.
        let dangling = dir.path().join("dangling.pem");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
        assert!(write_private_file(&dangling, b"secret").is_err());
        assert!(!dir.path().join("nowhere").exists());
        // A directory, and a missing directory.
        assert!(write_private_file(dir.path(), b"x").is_err());
        let e = write_private_file(&dir.path().join("no/such.pem"), b"x").expect_err("no dir");
        assert!(e.to_string().contains("no such directory"), "{e}");
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "  abc.def.ghi\n").expect("write");
        assert_eq!(read_token_file(&p).expect("read").as_str(), "abc.def.ghi");
        std::fs::write(&p, "\n").expect("write");
        assert!(
            read_token_file(&p)
                .expect_err("empty")
                .to_string()
                .contains("is empty")
        );
        let e = read_token_file(&dir.path().join("none")).expect_err("missing");
        assert!(e.to_string().contains("reading the token file"), "{e}");
    }
}
