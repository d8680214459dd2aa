#![allow(
    clippy::disallowed_methods,
    reason = "certificates here are checked by real verifiers against the wall clock"
)]
//! badge-ca tests. Issued certificates are checked field by field here and then handed
//! to third-party verifiers: `openssl verify`, the Rust `spiffe` crate's X.509-SVID
//! parser, and a rustls/webpki mTLS handshake between two issued leaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use badge_core::Error;
use badge_core::spiffe::plan::{
    self, KeyType, LifetimeRequest, PodBinding, Policy, Request, SvidPlan,
};
use badge_core::spiffe::{SpiffeId, TrustDomain};
use base64::Engine as _;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::authority::{CaAlgorithm, IssuedCertificate, PluginPem, SigningCa, defaults};
use crate::{bundle, csr, pem, pod_extension};

const ID: &str = "spiffe://example.org/ns/shop/sa/web";

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// Keys are slow to generate (RSA 4096 especially): one per type per test binary.
fn key(kt: KeyType) -> &'static KeyPair {
    static KEYS: OnceLock<Vec<(KeyType, KeyPair)>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        KeyType::ALL
            .iter()
            .map(|&kt| {
                let k = match kt {
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
                (kt, k.unwrap())
            })
            .collect()
    });
    &keys.iter().find(|(k, _)| *k == kt).unwrap().1
}

fn ca() -> &'static SigningCa {
    static CA: OnceLock<SigningCa> = OnceLock::new();
    CA.get_or_init(|| {
        SigningCa::generate(CaAlgorithm::EcdsaP256, &td(), now(), defaults::CA_VALIDITY).unwrap()
    })
}

/// A CSR (DER) for `key` asking for `uris`, made with rcgen as a client would.
fn csr_der(key: &KeyPair, uris: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for u in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*u).try_into().unwrap()));
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

fn invalid(err: Error) -> (String, String) {
    match err {
        Error::Invalid(v) => (v[0].field.clone(), v[0].description.clone()),
        other => panic!("want Invalid, got {other:?}"),
    }
}

fn precondition(err: Error) -> String {
    match err {
        Error::FailedPrecondition { message, .. } => message,
        other => panic!("want FailedPrecondition, got {other:?}"),
    }
}

fn plan_for(
    ca: &SigningCa,
    csr: &csr::VerifiedCsr,
    id: &SpiffeId,
    pod: Option<PodBinding>,
) -> SvidPlan {
    let policy = Policy::new(td());
    plan::plan(
        &Request {
            spiffe_id: id,
            spiffe_id_field: "csr",
            lifetime: LifetimeRequest::Kubernetes {
                field: "max_expiration_seconds",
                max_expiration_seconds: Some(3600 * 5),
            },
            key_type: csr.key_type,
            key_type_field: "stub_pkcs10_request",
            dns_names: &[],
            dns_field: "dns_names",
            pod,
        },
        ca.window(),
        &policy,
        now(),
        0.3,
    )
    .unwrap()
}

fn pod() -> PodBinding {
    PodBinding {
        name: "web-7d4b9c".into(),
        uid: "0b0d2f1e-3c4a-4b5c-8d9e-0f1a2b3c4d5e".into(),
    }
}

/// CSR → verify → plan → issue for `kt`.
fn issue(ca: &SigningCa, kt: KeyType) -> (csr::VerifiedCsr, SvidPlan, IssuedCertificate) {
    let der = csr_der(key(kt), &[ID]);
    let verified = csr::parse_der("stub_pkcs10_request", &der).unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let plan = plan_for(ca, &verified, &id, Some(pod()));
    let leaf = ca.issue(&plan, &verified).unwrap();
    (verified, plan, leaf)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

// ---------------------------------------------------------------------------------------
// CSR parsing and proof of possession

#[test]
fn csr_round_trip_for_every_key_type() {
    for kt in KeyType::ALL {
        let k = key(kt);
        let der = csr_der(k, &[ID, "spiffe://example.org/other"]);
        let v = csr::parse_der("stub_pkcs10_request", &der).unwrap();
        assert_eq!(v.key_type, kt, "{kt:?}");
        assert_eq!(v.spki_der, k.subject_public_key_info(), "{kt:?}");
        assert_eq!(v.uri_sans, [ID, "spiffe://example.org/other"]);
        assert!(v.dns_sans.is_empty() && !v.other_sans);
        // The same request as PEM (Istio's form), with text around it.
        let pem = format!(
            "junk before\n{}trailing text\n",
            CertificateParams::default()
                .serialize_request(k)
                .unwrap()
                .pem()
                .unwrap()
        );
        let v = csr::parse_pem("csr", &pem).unwrap();
        assert_eq!(v.key_type, kt);
    }
}

/// A signer that names one key but signs with another: the CSR of someone who wants a
/// certificate for a key they do not hold.
struct Mismatched {
    named: &'static KeyPair,
    signs: &'static KeyPair,
}

impl PublicKeyData for Mismatched {
    fn der_bytes(&self) -> &[u8] {
        self.named.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.named.algorithm()
    }
}

impl rcgen::SigningKey for Mismatched {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signs.sign(msg)
    }
}

#[test]
fn csr_without_proof_of_possession_is_refused() {
    // Same algorithm, other key.
    let other = Box::leak(Box::new(
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
    ));
    let cases = [
        (key(KeyType::EcdsaP256), &*other),
        (key(KeyType::Ed25519), key(KeyType::Ed25519)),
        (key(KeyType::Rsa3072), key(KeyType::Rsa4096)),
    ];
    for (named, signs) in cases {
        let signer = Mismatched { named, signs };
        if std::ptr::eq(named, signs) {
            continue;
        }
        let mut params = CertificateParams::default();
        params
            .subject_alt_names
            .push(SanType::URI(ID.try_into().unwrap()));
        let der = params.serialize_request(&signer).unwrap().der().to_vec();
        let (field, text) = invalid(csr::parse_der("stub_pkcs10_request", &der).unwrap_err());
        assert_eq!(field, "stub_pkcs10_request");
        assert!(text.contains("no proof of possession"), "{text}");
    }

    // Tampered: the requested SPIFFE ID changed after signing (web → wex).
    let mut der = csr_der(key(KeyType::EcdsaP256), &[ID]);
    let pos = der.windows(7).position(|w| w == b"/sa/web").unwrap();
    der[pos + 6] = b'x';
    let (_, text) = invalid(csr::parse_der("csr", &der).unwrap_err());
    assert!(text.contains("no proof of possession"), "{text}");

    // Tampered signature.
    let mut der = csr_der(key(KeyType::EcdsaP384), &[ID]);
    let last = der.len() - 3;
    der[last] ^= 1;
    assert!(csr::parse_der("csr", &der).is_err());
}

#[test]
fn malformed_csrs_name_the_field() {
    let good = csr_der(key(KeyType::EcdsaP256), &[ID]);
    let mut trailing = good.clone();
    trailing.push(0);
    let cert_pem = pem::certificate(ca().cert());
    let huge = vec![0x30; csr::MAX_CSR_DER_LEN + 1];
    let der_cases: &[(&[u8], &str)] = &[
        (b"", "a PKCS#10 request is required"),
        (b"not der", "malformed PKCS#10 request"),
        (&good[..good.len() / 2], "malformed PKCS#10 request"),
        (&trailing, "trailing data"),
        (&huge, "CSR too large"),
        (ca().cert().as_ref(), "malformed PKCS#10 request"),
    ];
    for (der, want) in der_cases {
        let (field, text) = invalid(csr::parse_der("stub_pkcs10_request", der).unwrap_err());
        assert_eq!(field, "stub_pkcs10_request");
        assert!(text.contains(want), "{want}: {text}");
    }
    let pem_cases: &[(&str, &str)] = &[
        ("", "no PEM \"CERTIFICATE REQUEST\" block"),
        (&cert_pem, "no PEM \"CERTIFICATE REQUEST\" block"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n",
            "malformed PEM",
        ),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "malformed PKCS#10 request",
        ),
    ];
    for (text_in, want) in pem_cases {
        let (field, text) = invalid(csr::parse_pem("csr", text_in).unwrap_err());
        assert_eq!(field, "csr");
        assert!(text.contains(want), "{want}: {text}");
    }
    let big = "x".repeat(csr::MAX_CSR_PEM_LEN + 1);
    assert!(
        invalid(csr::parse_pem("csr", &big).unwrap_err())
            .1
            .contains("too large")
    );
}

#[test]
fn unsupported_key_types_are_kubernetes_unsupported_key_type() {
    let rsa2048 =
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let (field, text) =
        invalid(csr::parse_der("stub_pkcs10_request", &csr_der(&rsa2048, &[])).unwrap_err());
    assert_eq!(field, "stub_pkcs10_request");
    assert!(text.starts_with("UnsupportedKeyType: "), "{text}");
    assert!(text.contains("an RSA key of 2048 bits"), "{text}");
    assert!(text.contains("RSA3072, RSA4096, ECDSAP256, ECDSAP384, ECDSAP521, ED25519"));
}

fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed to run the third-party verification tests")
}

fn openssl_ok(args: &[&str], dir: &Path) -> String {
    let out = openssl(args, dir);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openssl_made_csrs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let subj = "/CN=ignored";
    let san = format!("subjectAltName=URI:{ID}");
    let cases: &[(&[&str], Result<KeyType, &str>)] = &[
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Ok(KeyType::EcdsaP256),
        ),
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Ok(KeyType::EcdsaP384),
        ),
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            Ok(KeyType::EcdsaP521),
        ),
        (&["-newkey", "ed25519"], Ok(KeyType::Ed25519)),
        (&["-newkey", "rsa:3072"], Ok(KeyType::Rsa3072)),
        (&["-newkey", "rsa:3072", "-sha384"], Ok(KeyType::Rsa3072)),
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
            Err("UnsupportedKeyType: the subject key is an EC key on curve 1.3.132.0.10"),
        ),
        (
            &["-newkey", "rsa:3072", "-sigopt", "rsa_padding_mode:pss"],
            Err("unsupported CSR signature algorithm 1.2.840.113549.1.1.10 for a RSA3072 key"),
        ),
    ];
    for (i, (opts, want)) in cases.iter().enumerate() {
        let out = format!("{i}.csr");
        let keyout = format!("{i}.key");
        let mut args = vec!["req", "-new", "-nodes", "-subj", subj, "-addext", &san];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["-keyout", &keyout, "-out", &out]);
        openssl_ok(&args, d);
        let pem_text = std::fs::read_to_string(d.join(&out)).unwrap();
        match (csr::parse_pem("csr", &pem_text), want) {
            (Ok(v), Ok(kt)) => {
                assert_eq!(v.key_type, *kt, "{opts:?}");
                assert_eq!(v.uri_sans, [ID]);
            }
            (Err(e), Err(text)) => {
                let (_, got) = invalid(e);
                assert!(got.contains(text), "{opts:?}: {got}");
            }
            (got, _) => panic!("{opts:?}: unexpected {got:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Leaf contents

fn find_ext<'a>(
    cert: &'a X509Certificate<'a>,
    oid: &str,
) -> Option<&'a x509_parser::extensions::X509Extension<'a>> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)
}

#[test]
fn leaf_profile_for_every_key_type() {
    let ca = ca();
    let (_, inter) = X509Certificate::from_der(ca.cert().as_ref()).unwrap();
    for kt in KeyType::ALL {
        let (verified, plan, leaf) = issue(ca, kt);
        let (_, cert) = X509Certificate::from_der(leaf.der.as_ref()).unwrap();
        // Subject empty, SAN critical with exactly the SPIFFE ID.
        assert_eq!(cert.subject().iter().count(), 0, "{kt:?}");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        assert_eq!(san.value.general_names, [GeneralName::URI(ID)]);
        // basicConstraints present, critical, not a CA.
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        // keyUsage critical: digitalSignature (+ keyEncipherment for RSA), never CA bits.
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        assert_eq!(ku.value.key_encipherment(), kt.is_rsa(), "{kt:?}");
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        // EKU serverAuth + clientAuth.
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        // Serial: positive, 16 bytes, matches what was reported.
        let serial = cert.raw_serial();
        assert_eq!(serial, leaf.serial.as_slice());
        assert_eq!(serial.len(), 16);
        assert_eq!(serial[0] & 0xc0, 0x40);
        // Validity is the plan's, to the second.
        assert_eq!(
            cert.validity().not_before.timestamp(),
            unix(plan.not_before)
        );
        assert_eq!(cert.validity().not_after.timestamp(), unix(plan.not_after));
        // The key is the CSR's, byte for byte.
        assert_eq!(cert.public_key().raw, verified.spki_der.as_slice());
        // Pod binding: non-critical, decodes to the pod.
        let ext = find_ext(&cert, pod_extension::POD_BINDING_OID_STR).unwrap();
        assert!(!ext.critical);
        assert_eq!(pod_extension::decode(ext.value), Some(pod()));
        // Signed by the intermediate, AKI = its SKI.
        cert.verify_signature(Some(inter.public_key())).unwrap();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            })
            .unwrap();
        let ski = inter
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki.0, ski.0);
    }
}

#[test]
fn serials_differ() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let (_, _, leaf) = issue(ca(), KeyType::EcdsaP256);
        assert!(seen.insert(leaf.serial_hex()));
    }
}

#[test]
fn no_pod_no_extension_and_dns_names() {
    let ca = ca();
    let der = csr_der(key(KeyType::EcdsaP256), &[ID]);
    let v = csr::parse_der("csr", &der).unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let mut plan = plan_for(ca, &v, &id, None);
    plan.dns_names = vec!["web.shop.svc".into()];
    let leaf = ca.issue(&plan, &v).unwrap();
    let (_, cert) = X509Certificate::from_der(leaf.der.as_ref()).unwrap();
    assert!(find_ext(&cert, pod_extension::POD_BINDING_OID_STR).is_none());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI(ID), GeneralName::DNSName("web.shop.svc")]
    );
}

#[test]
fn issue_refuses_plans_outside_the_ca_or_for_another_key() {
    let ca = ca();
    let v = csr::parse_der("csr", &csr_der(key(KeyType::EcdsaP256), &[ID])).unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let mut plan = plan_for(ca, &v, &id, None);
    plan.not_after = ca.window().not_after + Duration::from_secs(1);
    assert!(matches!(ca.issue(&plan, &v), Err(Error::Internal(_))));
    let mut plan = plan_for(ca, &v, &id, None);
    plan.key_type = KeyType::Ed25519;
    assert!(matches!(ca.issue(&plan, &v), Err(Error::Internal(_))));
}

// ---------------------------------------------------------------------------------------
// Third-party verifiers

struct Written {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn write_chain(ca: &SigningCa, leaf: &IssuedCertificate) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    std::fs::write(path.join("root.pem"), bundle::pem_bundle(ca.roots())).unwrap();
    std::fs::write(
        path.join("intermediate.pem"),
        pem::certificates(&ca.chain()),
    )
    .unwrap();
    std::fs::write(path.join("leaf.pem"), leaf.pem()).unwrap();
    Written { _dir: dir, path }
}

fn openssl_verify(ca: &SigningCa, leaf: &IssuedCertificate) {
    let w = write_chain(ca, leaf);
    for purpose in ["sslclient", "sslserver"] {
        let out = openssl_ok(
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                "leaf.pem",
            ],
            &w.path,
        );
        assert_eq!(out.trim(), "leaf.pem: OK");
    }
}

#[test]
fn openssl_verifies_every_key_type_on_both_ca_algorithms() {
    let rsa_ca =
        SigningCa::generate(CaAlgorithm::Rsa3072, &td(), now(), defaults::CA_VALIDITY).unwrap();
    for ca in [ca(), &rsa_ca] {
        for kt in KeyType::ALL {
            let (_, _, leaf) = issue(ca, kt);
            openssl_verify(ca, &leaf);
        }
    }
    // Negative control: the leaf does not verify against another CA's root.
    let other =
        SigningCa::generate(CaAlgorithm::EcdsaP256, &td(), now(), defaults::CA_VALIDITY).unwrap();
    let (_, _, leaf) = issue(ca(), KeyType::EcdsaP256);
    let w = write_chain(ca(), &leaf);
    std::fs::write(w.path.join("root.pem"), bundle::pem_bundle(other.roots())).unwrap();
    let out = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "leaf.pem",
        ],
        &w.path,
    );
    assert!(!out.status.success());
}

#[test]
fn spiffe_crate_accepts_the_svid_and_bundle() {
    for kt in [KeyType::EcdsaP256, KeyType::Rsa3072, KeyType::EcdsaP384] {
        let (_, _, leaf) = issue(ca(), kt);
        let mut chain = leaf.der.to_vec();
        for c in ca().chain() {
            chain.extend_from_slice(c.as_ref());
        }
        let svid = spiffe::X509Svid::parse_from_der(&chain, &key(kt).serialize_der())
            .unwrap_or_else(|e| panic!("{kt:?}: {e}"));
        assert_eq!(svid.spiffe_id().to_string(), ID);
        assert_eq!(svid.cert_chain().len(), 2);
    }
    let roots: Vec<u8> = ca().roots().iter().flat_map(|c| c.to_vec()).collect();
    let bundle = spiffe::X509Bundle::parse_from_der(
        spiffe::TrustDomain::new("example.org").unwrap(),
        &roots,
    )
    .unwrap();
    assert_eq!(bundle.authorities().len(), 1);
}

#[test]
fn spiffe_crate_agrees_on_what_badge_accepts() {
    // Every ID Badge accepts, the Rust spiffe crate accepts as the same ID; every ID
    // the spiffe crate refuses, Badge refuses (Badge is the stricter of the two).
    let ids = [
        "spiffe://example.org",
        "spiffe://example.org/ns/default/sa/web",
        "spiffe://a_b-c.9/A.b/..c",
        "spiffe://Example.org/x",
        "SPIFFE://example.org/x",
        "spiffe://example.org/",
        "spiffe://example.org//x",
        "spiffe://example.org/./x",
        "spiffe://example.org/a b",
        "spiffe://example.org:80/x",
        "spiffe://user@example.org/x",
        "spiffe://example.org/x?y",
        "spiffe://",
        "",
    ];
    for id in ids {
        let ours = SpiffeId::parse(id);
        let theirs = spiffe::SpiffeId::new(id);
        match (&ours, &theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(theirs.to_string(), ours.to_string(), "{id}"),
            (Ok(_), Err(e)) => panic!("{id}: Badge accepts, the spiffe crate refuses: {e}"),
            (Err(_), _) => {}
        }
    }
}

/// Server-side verifier: the chain is checked by webpki (rustls' verifier) against the
/// roots, then the peer's SPIFFE ID against the expected one. The DNS-name check is the
/// only failure tolerated — SVIDs carry no DNS name — and rustls runs it after the
/// chain check, so a NotValidForName error means the chain itself verified.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: String,
}

fn peer_spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = c.subject_alternative_name().ok()??;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Some((*one).to_owned()),
        _ => None,
    }
}

impl rustls::client::danger::ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        if peer_spiffe_id(end_entity).as_deref() != Some(self.expected.as_str()) {
            return Err(rustls::Error::General("unexpected peer SPIFFE ID".into()));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

struct Workload {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn workload(ca: &SigningCa, id: &str, kt: KeyType) -> Workload {
    let k = key(kt);
    let v = csr::parse_der("csr", &csr_der(k, &[id])).unwrap();
    let sid = SpiffeId::parse(id).unwrap();
    let plan = plan_for(ca, &v, &sid, None);
    let leaf = ca.issue(&plan, &v).unwrap();
    let mut chain = vec![leaf.der];
    chain.extend(ca.chain());
    Workload {
        chain,
        key: PrivateKeyDer::Pkcs8(k.serialize_der().into()),
    }
}

/// One mTLS handshake: `server` serves, `client` connects expecting `expect_server`;
/// both sides trust `roots`. Returns the client's SPIFFE ID as the server saw it.
async fn handshake(
    roots: &[CertificateDer<'static>],
    server: Workload,
    client: Workload,
    expect_server: &str,
) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let store = Arc::new(store);
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        store.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server.chain, server.key)
        .unwrap();
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(store, provider.clone())
            .build()
            .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            inner,
            expected: expect_server.to_owned(),
        }))
        .with_client_auth_cert(client.chain, client.key)
        .unwrap();

    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let name = rustls_pki_types::ServerName::try_from("workload.invalid").unwrap();
    let server_side = async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls = acceptor.accept(s_io).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(peer_spiffe_id)
            .ok_or("no client SPIFFE ID")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let client_side = async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls = connector
            .connect(name, c_io)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let (s, c) = tokio::join!(server_side, client_side);
    let reply = c?;
    assert_eq!(&reply, b"pong");
    s
}

#[tokio::test]
async fn rustls_mtls_between_two_workloads_checks_spiffe_ids() {
    let ca = ca();
    let web = "spiffe://example.org/ns/shop/sa/web";
    let api = "spiffe://example.org/ns/shop/sa/api";
    for (skt, ckt) in [
        (KeyType::EcdsaP256, KeyType::EcdsaP256),
        (KeyType::Rsa3072, KeyType::EcdsaP384),
        (KeyType::Ed25519, KeyType::Rsa4096),
    ] {
        let seen = handshake(
            ca.roots(),
            workload(ca, web, skt),
            workload(ca, api, ckt),
            web,
        )
        .await
        .unwrap_or_else(|e| panic!("{skt:?}/{ckt:?}: {e}"));
        assert_eq!(seen, api);
    }
    // The client expects another identity: refused.
    let err = handshake(
        ca.roots(),
        workload(ca, web, KeyType::EcdsaP256),
        workload(ca, api, KeyType::EcdsaP256),
        "spiffe://example.org/ns/shop/sa/db",
    )
    .await
    .unwrap_err();
    assert!(err.contains("unexpected peer SPIFFE ID"), "{err}");
    // A server from another CA: refused by the chain check.
    let other =
        SigningCa::generate(CaAlgorithm::EcdsaP256, &td(), now(), defaults::CA_VALIDITY).unwrap();
    let err = handshake(
        ca.roots(),
        workload(&other, web, KeyType::EcdsaP256),
        workload(ca, api, KeyType::EcdsaP256),
        web,
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("unknown"), "{err}");
}

// ---------------------------------------------------------------------------------------
// CA generation, stored parts and plug-in files

#[test]
fn generated_ca_shape() {
    let at = now();
    let ca = SigningCa::generate(CaAlgorithm::EcdsaP256, &td(), at, defaults::CA_VALIDITY).unwrap();
    let (_, root) = X509Certificate::from_der(ca.roots()[0].as_ref()).unwrap();
    let (_, inter) = X509Certificate::from_der(ca.cert().as_ref()).unwrap();
    assert_eq!(root.subject(), root.issuer());
    assert_eq!(inter.issuer(), root.subject());
    assert_ne!(inter.subject(), root.subject());
    assert!(inter.subject().to_string().contains("example.org"));
    assert_eq!(
        root.basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(1)
    );
    assert_eq!(
        inter
            .basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(0)
    );
    for c in [&root, &inter] {
        let ku = c.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert_eq!(
            c.validity().not_before.timestamp(),
            unix(at) - defaults::CA_BACKDATE.as_secs() as i64
        );
        assert_eq!(
            c.validity().not_after.timestamp(),
            unix(at) + defaults::CA_VALIDITY.as_secs() as i64
        );
    }
    assert_eq!(
        unix(ca.window().not_after),
        unix(at) + defaults::CA_VALIDITY.as_secs() as i64
    );
    assert_eq!(ca.chain_with_root().len(), 2);
    // The PEM encoded once is the chain's, in order; the chain alone has no root.
    let pems: Vec<String> = ca
        .chain_with_root()
        .iter()
        .map(crate::pem::certificate)
        .collect();
    assert_eq!(ca.chain_with_root_pem(), pems.as_slice());
    assert_eq!(ca.chain_pem(), &pems[..1]);
    // The key round-trips through stored parts (what the keyring will seal and unseal),
    // and a mixed-up record is refused.
    let again = SigningCa::from_parts(
        &ca.key_pkcs8_der(),
        ca.cert().clone(),
        vec![],
        ca.roots().to_vec(),
        at,
    )
    .unwrap();
    assert_eq!(again.key_id(), ca.key_id());
    let other =
        SigningCa::generate(CaAlgorithm::EcdsaP256, &td(), at, defaults::CA_VALIDITY).unwrap();
    let msg = precondition(
        SigningCa::from_parts(
            &other.key_pkcs8_der(),
            ca.cert().clone(),
            vec![],
            ca.roots().to_vec(),
            at,
        )
        .unwrap_err(),
    );
    assert!(msg.contains("does not belong"), "{msg}");
    let msg = precondition(
        SigningCa::from_parts(
            &ca.key_pkcs8_der(),
            ca.cert().clone(),
            vec![],
            other.roots().to_vec(),
            at,
        )
        .unwrap_err(),
    );
    assert!(msg.contains("does not verify"), "{msg}");
    // Debug shows no key material.
    let dbg = format!("{ca:?}");
    assert!(dbg.contains(ca.key_id()) && !dbg.contains("PRIVATE"));
}

/// An Istio-style plug-in CA made with the openssl CLI: RSA-2048 root, intermediate with
/// a PKCS#1 ("RSA PRIVATE KEY") key, cert-chain.pem = ca-cert + root.
fn openssl_plugin_ca(d: &Path) {
    std::fs::write(
        d.join("ext.cnf"),
        "[v3_ca]\nbasicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl_ok(
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "root-key.pem",
            "-out",
            "root-cert.pem",
            "-days",
            "30",
            "-subj",
            "/O=Istio/CN=Root CA",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        d,
    );
    openssl_ok(&["genrsa", "-traditional", "-out", "ca-key.pem", "2048"], d);
    openssl_ok(
        &[
            "req",
            "-new",
            "-key",
            "ca-key.pem",
            "-out",
            "ca.csr",
            "-subj",
            "/O=Istio/CN=Intermediate CA",
        ],
        d,
    );
    openssl_ok(
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "ca-cert.pem",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "v3_ca",
        ],
        d,
    );
    let chain = std::fs::read_to_string(d.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    std::fs::write(d.join("cert-chain.pem"), chain).unwrap();
}

#[test]
fn plugin_ca_from_openssl_files_issues_verifiable_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_plugin_ca(d);
    assert!(
        std::fs::read_to_string(d.join("ca-key.pem"))
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    let ca = SigningCa::from_plugin_dir(d, now()).unwrap();
    assert!(
        ca.intermediates().is_empty(),
        "ca-cert and root are de-duplicated"
    );
    assert_eq!(ca.chain_with_root().len(), 2);
    for kt in [KeyType::EcdsaP256, KeyType::Rsa3072, KeyType::Ed25519] {
        let (_, _, leaf) = issue(&ca, kt);
        openssl_verify(&ca, &leaf);
    }
    // Without cert-chain.pem it still loads (the chain is ca-cert → root).
    std::fs::remove_file(d.join("cert-chain.pem")).unwrap();
    SigningCa::from_plugin_dir(d, now()).unwrap();
}

#[test]
fn plugin_ca_checks_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_plugin_ca(d);
    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
    let (ca_cert, ca_key, root, chain) = (
        read("ca-cert.pem"),
        read("ca-key.pem"),
        read("root-cert.pem"),
        read("cert-chain.pem"),
    );
    let root_key = read("root-key.pem");
    let other = ca();
    let other_key = zeroize::Zeroizing::new(format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(other.key_pkcs8_der().as_slice())
    ));
    let other_root = bundle::pem_bundle(other.roots());
    let (_, _, leaf) = issue(other, KeyType::EcdsaP256);
    let leaf_pem = leaf.pem();
    let files = |ca_cert: &str, ca_key: &str, root: &str, chain: Option<&str>| {
        SigningCa::from_plugin_pem(
            &PluginPem {
                ca_cert,
                ca_key,
                root_cert: root,
                cert_chain: chain,
            },
            now(),
        )
    };
    let cases: Vec<(Result<SigningCa, Error>, &str)> = vec![
        (
            files(&ca_cert, &other_key, &root, Some(&chain)),
            "ca-key.pem: the private key does not belong to ca-cert.pem",
        ),
        (
            files(&ca_cert, &root_key, &root, Some(&chain)),
            "ca-key.pem: the private key does not belong",
        ),
        (files(&ca_cert, "", &root, None), "ca-key.pem:"),
        (
            files("", &ca_key, &root, None),
            "ca-cert.pem: no CERTIFICATE block found",
        ),
        (
            files(&ca_cert, &ca_key, "", None),
            "root-cert.pem: no CERTIFICATE block found",
        ),
        (
            files(&ca_cert, &ca_key, &other_root, None),
            "the chain does not verify",
        ),
        (
            files(&leaf_pem, &ca_key, &root, None),
            "ca-cert.pem: not a CA certificate",
        ),
        (
            files(&ca_cert, &ca_key, &ca_cert, None),
            "root-cert.pem: every root must be self-signed",
        ),
    ];
    for (result, want) in cases {
        let msg = precondition(result.unwrap_err());
        assert!(msg.contains(want), "want {want:?}, got {msg:?}");
        // Errors never quote key material.
        assert!(!msg.contains("-----BEGIN"), "{msg}");
        for body_line in ca_key
            .lines()
            .chain(other_key.lines())
            .filter(|l| !l.starts_with("-----"))
        {
            assert!(
                !msg.contains(&body_line[..16.min(body_line.len())]),
                "{msg}"
            );
        }
    }
    // Not valid yet / any more.
    let msg = precondition(
        SigningCa::from_plugin_pem(
            &PluginPem {
                ca_cert: &ca_cert,
                ca_key: &ca_key,
                root_cert: &root,
                cert_chain: None,
            },
            now() + Duration::from_secs(31 * 86_400),
        )
        .unwrap_err(),
    );
    assert!(msg.contains("not valid now"), "{msg}");
    // Missing directory files are named.
    let empty = tempfile::tempdir().unwrap();
    let msg = precondition(SigningCa::from_plugin_dir(empty.path(), now()).unwrap_err());
    assert!(msg.contains("ca-cert.pem"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Trust bundle

#[test]
fn spiffe_bundle_document() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let ec = ca();
    let rsa =
        SigningCa::generate(CaAlgorithm::Rsa3072, &td(), now(), defaults::CA_VALIDITY).unwrap();
    let mut roots = ec.roots().to_vec();
    roots.extend(rsa.roots().iter().cloned());
    let jwt = serde_json::json!({"kty":"EC","crv":"P-256","x":"AA","y":"BB","kid":"k1","alg":"ES256","use":"sig"});
    let doc = bundle::spiffe_bundle_json(&roots, &[jwt], 7, 300).unwrap();
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["spiffe_sequence"], 7);
    assert_eq!(v["spiffe_refresh_hint"], 300);
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for (k, root) in keys.iter().zip(&roots) {
        assert_eq!(k["use"], "x509-svid");
        assert!(k.get("kid").is_none(), "x509-svid keys must not carry kid");
        let x5c = k["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        assert_eq!(
            STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(),
            root.as_ref()
        );
    }
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    let (_, root0) = X509Certificate::from_der(roots[0].as_ref()).unwrap();
    let point = &root0.public_key().subject_public_key.data;
    let x = URL_SAFE_NO_PAD
        .decode(keys[0]["x"].as_str().unwrap())
        .unwrap();
    let y = URL_SAFE_NO_PAD
        .decode(keys[0]["y"].as_str().unwrap())
        .unwrap();
    assert_eq!([&[4u8][..], &x, &y].concat(), point.to_vec());
    assert_eq!(keys[1]["kty"], "RSA");
    assert_eq!(keys[1]["e"], "AQAB");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(keys[1]["n"].as_str().unwrap())
            .unwrap()
            .len(),
        384
    );
    assert_eq!(keys[2]["use"], "jwt-svid");
    assert_eq!(keys[2]["kid"], "k1");
    // A JWT key without kid is a bug upstream, not something to publish.
    let no_kid = serde_json::json!({"kty":"EC"});
    assert!(bundle::spiffe_bundle_json(&roots, &[no_kid], 1, 300).is_err());
    // PEM bundle parses back to the same certificates.
    let pem_text = bundle::pem_bundle(&roots);
    let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back, roots);
    // Empty authorities: `keys` is still present (an empty set means "trust nothing").
    let empty: serde_json::Value =
        serde_json::from_str(&bundle::spiffe_bundle_json(&[], &[], 1, 300).unwrap()).unwrap();
    assert_eq!(empty["keys"], serde_json::json!([]));
}

// ---------------------------------------------------------------------------------------
// Wire contracts (protos)

#[test]
fn protos_match_the_wire_contracts() {
    use prost::Message as _;
    let fds = prost_types::FileDescriptorSet::decode(badge_proto::FILE_DESCRIPTOR_SET).unwrap();
    let message = |package: &str, name: &str| {
        fds.file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| f.message_type.iter())
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{package}.{name} missing"))
            .clone()
    };
    let fields = |m: &prost_types::DescriptorProto| -> Vec<(String, i32)> {
        m.field
            .iter()
            .map(|f| (f.name().to_owned(), f.number()))
            .collect()
    };
    let istio_req = message("istio.v1.auth", "IstioCertificateRequest");
    assert_eq!(
        fields(&istio_req),
        [
            ("csr".to_owned(), 1),
            ("validity_duration".to_owned(), 3),
            ("metadata".to_owned(), 4)
        ]
    );
    let istio_resp = message("istio.v1.auth", "IstioCertificateResponse");
    assert_eq!(fields(&istio_resp), [("cert_chain".to_owned(), 1)]);
    let spec = message("badge.certificates.v1", "PodCertificateRequestSpec");
    assert_eq!(
        fields(&spec),
        [
            "signer_name",
            "pod_name",
            "pod_uid",
            "service_account_name",
            "service_account_uid",
            "node_name",
            "node_uid",
            "max_expiration_seconds",
            "pkix_public_key",
            "proof_of_possession",
            "unverified_user_annotations",
            "stub_pkcs10_request",
        ]
        .iter()
        .zip(1..)
        .map(|(n, i)| ((*n).to_owned(), i))
        .collect::<Vec<_>>()
    );
    let status = message("badge.certificates.v1", "PodCertificateRequestStatus");
    assert_eq!(
        fields(&status),
        [
            ("conditions".to_owned(), 1),
            ("certificate_chain".to_owned(), 2),
            ("not_before".to_owned(), 4),
            ("begin_refresh_at".to_owned(), 5),
            ("not_after".to_owned(), 6)
        ]
    );
    // Method paths as clients call them.
    assert_eq!(
        badge_proto::istio::v1::auth::istio_certificate_service_server::SERVICE_NAME,
        "istio.v1.auth.IstioCertificateService"
    );
    assert_eq!(
        badge_proto::certificates::pod_certificate_service_server::SERVICE_NAME,
        "badge.certificates.v1.PodCertificateService"
    );
    // Bytes as istio-agent sends them: csr (1), validity_duration (3).
    let req = badge_proto::istio::v1::auth::IstioCertificateRequest {
        csr: "x".into(),
        validity_duration: 5,
        metadata: None,
    };
    assert_eq!(req.encode_to_vec(), [0x0a, 1, b'x', 0x18, 5]);
}
