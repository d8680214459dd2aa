//! PKCS#10 certificate signing requests: Istio's PEM `csr` and Kubernetes' DER
//! `stubPKCS10Request`.
//!
//! The signature is verified here, with aws-lc-rs over the request-info bytes exactly as
//! received, using the algorithm the CSR names and the key it carries. That is the proof
//! of possession: without it anyone could get a certificate for someone else's public key
//! (a key they cannot use, but one that makes the CA vouch for a binding it never saw
//! proven). rcgen's `CertificateSigningRequestParams::from_der` also verifies, but it
//! derives the key's algorithm from the *signature* algorithm (a P-384 key signed with
//! SHA-256 would be re-encoded as a P-256 key) and refuses any extension it does not
//! know, so it is not used.
//!
//! Only the public key and the SANs are read; every other requested field is ignored (the
//! CA decides the certificate's contents, as Istio's contract allows).

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use badge_core::spiffe::plan::{KeyType, unsupported_key_type};
use badge_core::{Error, Result};
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ECDSA_WITH_SHA512, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

/// The largest CSR accepted (DER bytes). An RSA-4096 CSR with a few SANs is about 1.7 KiB;
/// Kubernetes bounds the v1beta1 public key at 10 KiB. The limit keeps a hostile request
/// from making the parser and verifier walk megabytes.
pub const MAX_CSR_DER_LEN: usize = 16 * 1024;
/// The largest PEM text accepted (base64 of the DER limit plus headers and whitespace).
pub const MAX_CSR_PEM_LEN: usize = 24 * 1024;

/// A parsed CSR whose signature verified with its own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// The SubjectPublicKeyInfo exactly as in the CSR (DER).
    pub spki_der: Vec<u8>,
    /// The SPKI's BIT STRING contents (RSAPublicKey DER, EC point, Ed25519 key).
    pub public_key: Vec<u8>,
    pub key_type: KeyType,
    /// URI SANs requested (not interpreted here).
    pub uri_sans: Vec<String>,
    /// DNS SANs requested.
    pub dns_sans: Vec<String>,
    /// Whether the request asked for any other SAN type (email, IP, …).
    pub other_sans: bool,
}

/// Decodes a PEM "CERTIFICATE REQUEST" (or "NEW CERTIFICATE REQUEST") block and verifies
/// it. `field` names the request field in errors.
pub fn parse_pem(field: &str, pem: &str) -> Result<VerifiedCsr> {
    if pem.len() > MAX_CSR_PEM_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "CSR too large: {} bytes of PEM, at most {MAX_CSR_PEM_LEN}",
                pem.len()
            ),
        ));
    }
    let mut found = None;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        match item {
            Ok((SectionKind::Csr, der)) => {
                found = Some(der);
                break;
            }
            Ok(_) => continue,
            Err(_) => {
                return Err(Error::invalid(
                    field,
                    "malformed PEM: cannot decode the CSR block",
                ));
            }
        }
    }
    let Some(der) = found else {
        return Err(Error::invalid(
            field,
            "no PEM \"CERTIFICATE REQUEST\" block found",
        ));
    };
    parse_der(field, &der)
}

/// Parses and verifies a DER PKCS#10 request.
pub fn parse_der(field: &str, der: &[u8]) -> Result<VerifiedCsr> {
    let bad = |what: &str| Error::invalid(field, format!("malformed PKCS#10 request: {what}"));
    if der.is_empty() {
        return Err(Error::invalid(field, "a PKCS#10 request is required"));
    }
    if der.len() > MAX_CSR_DER_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "CSR too large: {} bytes, at most {MAX_CSR_DER_LEN}",
                der.len()
            ),
        ));
    }
    // The parser's own message is not passed on: it describes the input's bytes, and a
    // fixed text is enough to tell the caller what is wrong.
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|_| bad("not a DER CertificationRequest"))?;
    if !rest.is_empty() {
        return Err(bad("trailing data after the request"));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let public_key = spki.subject_public_key.data.to_vec();
    let key_type = classify(field, spki)?;

    // Proof of possession.
    let alg = verification_algorithm(field, key_type, &csr)?;
    UnparsedPublicKey::new(alg, &public_key)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| {
            Error::invalid(
                field,
                "the CSR's signature does not verify with its own public key (no proof of possession): it was not signed by the key it names, or it was altered",
            )
        })?;

    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    let mut other_sans = false;
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                            GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                            _ => other_sans = true,
                        }
                    }
                }
                ParsedExtension::ParseError { .. } => {
                    return Err(bad("a requested extension cannot be parsed"));
                }
                _ => {}
            }
        }
    }
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        public_key,
        key_type,
        uri_sans,
        dns_sans,
        other_sans,
    })
}

/// Number of significant bits of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    let trimmed: &[u8] = match be.iter().position(|&b| b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    let lead = trimmed
        .first()
        .map_or(0, |b| 8 - b.leading_zeros() as usize);
    (trimmed.len() - 1) * 8 + lead
}

/// The subject key's type. Exactly Kubernetes' list: RSA with a 3072- or 4096-bit
/// modulus, ECDSA on P-256/P-384/P-521 (uncompressed points), Ed25519. Anything else is
/// Kubernetes' `UnsupportedKeyType`.
fn classify(field: &str, spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyType> {
    let alg = &spki.algorithm.algorithm;
    let unsupported = |found: String| unsupported_key_type(field, &found, &KeyType::ALL);
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(Error::invalid(field, "malformed RSA public key"));
        };
        return match bit_len(rsa.modulus) {
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            bits => Err(unsupported(format!("an RSA key of {bits} bits"))),
        };
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let (kt, point_len) = match curve {
            Some(c) if c == OID_EC_P256 => (KeyType::EcdsaP256, 65),
            Some(c) if c == OID_NIST_EC_P384 => (KeyType::EcdsaP384, 97),
            Some(c) if c == OID_NIST_EC_P521 => (KeyType::EcdsaP521, 133),
            Some(c) => return Err(unsupported(format!("an EC key on curve {c}"))),
            None => return Err(Error::invalid(field, "EC public key without a named curve")),
        };
        let point = &spki.subject_public_key.data;
        if point.len() != point_len || point.first() != Some(&4) {
            return Err(Error::invalid(
                field,
                "EC public key is not an uncompressed point of its curve",
            ));
        }
        return Ok(kt);
    }
    if *alg == OID_SIG_ED25519 {
        if spki.subject_public_key.data.len() != 32 {
            return Err(Error::invalid(field, "Ed25519 public key is not 32 bytes"));
        }
        return Ok(KeyType::Ed25519);
    }
    Err(unsupported(format!("a key of algorithm {alg}")))
}

/// The aws-lc-rs verifier for the CSR's signature algorithm with a key of `key_type`.
/// Only combinations Go, OpenSSL and rcgen produce: PKCS#1 v1.5 with SHA-2 for RSA,
/// ECDSA with SHA-2, pure Ed25519. RSA-PSS CSRs are refused by name.
fn verification_algorithm(
    field: &str,
    key_type: KeyType,
    csr: &X509CertificationRequest<'_>,
) -> Result<&'static dyn VerificationAlgorithm> {
    let sig = &csr.signature_algorithm.algorithm;
    let alg: Option<&'static dyn VerificationAlgorithm> = match key_type {
        KeyType::Rsa3072 | KeyType::Rsa4096 => {
            if *sig == OID_PKCS1_SHA256WITHRSA {
                Some(&signature::RSA_PKCS1_2048_8192_SHA256)
            } else if *sig == OID_PKCS1_SHA384WITHRSA {
                Some(&signature::RSA_PKCS1_2048_8192_SHA384)
            } else if *sig == OID_PKCS1_SHA512WITHRSA {
                Some(&signature::RSA_PKCS1_2048_8192_SHA512)
            } else {
                None
            }
        }
        KeyType::EcdsaP256 => ecdsa(
            sig,
            &signature::ECDSA_P256_SHA256_ASN1,
            &signature::ECDSA_P256_SHA384_ASN1,
            None,
        ),
        KeyType::EcdsaP384 => ecdsa(
            sig,
            &signature::ECDSA_P384_SHA256_ASN1,
            &signature::ECDSA_P384_SHA384_ASN1,
            None,
        ),
        KeyType::EcdsaP521 => ecdsa(
            sig,
            &signature::ECDSA_P521_SHA256_ASN1,
            &signature::ECDSA_P521_SHA384_ASN1,
            Some(&signature::ECDSA_P521_SHA512_ASN1),
        ),
        KeyType::Ed25519 => (*sig == OID_SIG_ED25519).then_some(&signature::ED25519 as _),
    };
    alg.ok_or_else(|| {
        Error::invalid(
            field,
            format!(
                "unsupported CSR signature algorithm {sig} for a {} key",
                key_type.name()
            ),
        )
    })
}

fn ecdsa(
    sig: &x509_parser::der_parser::oid::Oid<'_>,
    sha256: &'static signature::EcdsaVerificationAlgorithm,
    sha384: &'static signature::EcdsaVerificationAlgorithm,
    sha512: Option<&'static signature::EcdsaVerificationAlgorithm>,
) -> Option<&'static dyn VerificationAlgorithm> {
    if *sig == OID_SIG_ECDSA_WITH_SHA256 {
        Some(sha256)
    } else if *sig == OID_SIG_ECDSA_WITH_SHA384 {
        Some(sha384)
    } else if *sig == OID_SIG_ECDSA_WITH_SHA512 {
        sha512.map(|a| a as _)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::bit_len;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[1]), 1);
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x7f, 0xff]), 15);
    }
}
