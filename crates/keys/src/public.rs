use std::fmt;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use x509_parser::asn1_rs::Oid;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::pem;
use crate::{Algorithm, Error, MAX_RSA_BITS, MIN_RSA_BITS, Result, SigningKey};

/// Kubernetes' key id: base64url without padding of SHA-256 over the DER PKIX
/// SubjectPublicKeyInfo (`keyIDFromPublicKey` in `k/k:pkg/serviceaccount/jwt.go`).
///
/// Pass the canonical DER (as [`PublicKey::spki_der`] holds it): Go re-marshals the parsed key,
/// so the id is defined over the canonical encoding, not over whatever bytes a file held.
pub fn key_id(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(spki_der))
}

/// DER prefix of a P-256 SubjectPublicKeyInfo up to the uncompressed point, exactly as Go's
/// `x509.MarshalPKIXPublicKey` writes it (id-ecPublicKey, prime256v1, BIT STRING of 66 bytes).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Same for P-384 (secp384r1, BIT STRING of 98 bytes).
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// One entry of a JSON Web Key Set, shaped as kube-apiserver serves `/openid/v1/jwks`.
///
/// Field order follows go-jose's `rawJSONWebKey` (use, kty, kid, crv, alg, x, y, n, e), so the
/// serialised JSON is byte-for-byte what Kubernetes publishes: RSA keys render as
/// `{"use":"sig","kty":"RSA","kid":…,"alg":"RS256","n":…,"e":…}` and EC keys as
/// `{"use":"sig","kty":"EC","kid":…,"crv":"P-256","alg":"ES256","x":…,"y":…}`.
/// All numbers are base64url without padding, big-endian; `n` and `e` without leading zero
/// bytes, `x` and `y` at the curve's fixed length (RFC 7518 §6.2.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always "sig".
    #[serde(rename = "use")]
    pub key_use: String,
    /// "RSA" or "EC".
    pub kty: String,
    /// Key id.
    pub kid: String,
    /// "P-256" or "P-384" (EC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// "RS256", "ES256" or "ES384".
    pub alg: String,
    /// EC x coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// A verification key: algorithm, key id and canonical PKIX DER, pre-parsed for verification.
#[derive(Clone)]
pub struct PublicKey {
    algorithm: Algorithm,
    kid: String,
    spki_der: Vec<u8>,
    jwk: Jwk,
    verifier: ParsedPublicKey,
}

impl PublicKey {
    /// Parses a DER PKIX SubjectPublicKeyInfo: RSA (2048–8192 bits) → RS256, EC P-256 → ES256,
    /// EC P-384 → ES384. Everything else is rejected.
    ///
    /// The key is re-encoded canonically (as Go's `x509.MarshalPKIXPublicKey` does) before the
    /// key id is computed, so the kid matches Kubernetes even for non-canonical input.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| Error::InvalidKey("not a DER-encoded SubjectPublicKeyInfo".to_owned()))?;
        if !rest.is_empty() {
            return Err(Error::InvalidKey(
                "trailing bytes after the SubjectPublicKeyInfo".to_owned(),
            ));
        }
        let oid = &spki.algorithm.algorithm;
        if *oid == OID_PKCS1_RSAENCRYPTION {
            Self::from_rsa_der(der)
        } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| Oid::try_from(p).ok())
                .ok_or_else(|| {
                    Error::InvalidKey("EC public key without a named curve".to_owned())
                })?;
            let point: &[u8] = &spki.subject_public_key.data;
            if curve == OID_EC_P256 {
                Self::from_ec_point(Algorithm::ES256, point)
            } else if curve == OID_NIST_EC_P384 {
                Self::from_ec_point(Algorithm::ES384, point)
            } else {
                Err(Error::UnsupportedKey(format!(
                    "EC curve {} (supported: P-256, P-384)",
                    curve.to_id_string()
                )))
            }
        } else {
            Err(Error::UnsupportedKey(format!(
                "public key algorithm {} (supported: RSA, ECDSA P-256, ECDSA P-384)",
                oid.to_id_string()
            )))
        }
    }

    /// Like [`from_spki_der`](Self::from_spki_der) but with a key id chosen elsewhere: an
    /// external JWT signer names its keys itself, and Kubernetes uses that name, not a derived one
    /// (KEP-740 `FetchKeys`).
    pub fn from_spki_der_with_kid(der: &[u8], kid: impl Into<String>) -> Result<Self> {
        let mut key = Self::from_spki_der(der)?;
        key.kid = kid.into();
        key.jwk.kid.clone_from(&key.kid);
        Ok(key)
    }

    /// Parses a PKCS#1 `RSAPublicKey` ("RSA PUBLIC KEY" PEM blocks).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self> {
        Self::from_rsa_der(der)
    }

    /// Takes the SubjectPublicKeyInfo of a DER X.509 certificate. Only the key is used; the
    /// certificate's validity and issuer are not checked (Kubernetes does the same for
    /// `--service-account-key-file`).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| Error::InvalidKey("not a DER-encoded X.509 certificate".to_owned()))?;
        Self::from_spki_der(cert.tbs_certificate.subject_pki.raw)
    }

    /// Parses every key of a PEM file, as kube-apiserver's `--service-account-key-file` does:
    /// "PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE" (its public key) and the private-key blocks
    /// "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY" (their public half). Other blocks, such
    /// as the "EC PARAMETERS" that `openssl ecparam -genkey` writes, are skipped as Kubernetes
    /// skips them. A key block that does not parse, or holds an unsupported key type, is an
    /// error rather than silently skipped, so a bad key file fails at startup.
    pub fn from_pem(pem_text: &str) -> Result<Vec<PublicKey>> {
        let mut keys = Vec::new();
        for block in pem::blocks(pem_text)? {
            let key = match block.label {
                pem::LABEL_PUBLIC_KEY => Self::from_spki_der(block.spki()?.as_ref())?,
                pem::LABEL_RSA_PUBLIC_KEY => Self::from_pkcs1_der(&block.body_der()?)?,
                pem::LABEL_CERTIFICATE => {
                    Self::from_certificate_der(block.certificate()?.as_ref())?
                }
                _ if block.is_private_key() => {
                    SigningKey::from_pem_block(&block)?.public_key().clone()
                }
                _ => continue,
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(Error::NoPublicKey);
        }
        Ok(keys)
    }

    fn from_rsa_der(der: &[u8]) -> Result<Self> {
        // Accepts PKCS#1 RSAPublicKey or an RSA SubjectPublicKeyInfo.
        let key = aws_lc_rs::rsa::PublicKey::from_der(der)
            .map_err(|_| Error::InvalidKey("malformed RSA public key".to_owned()))?;
        let n = key.modulus().big_endian_without_leading_zero();
        let e = key.exponent().big_endian_without_leading_zero();
        let bits = match n.first() {
            Some(first) => n.len() * 8 - first.leading_zeros() as usize,
            None => 0,
        };
        // Reject small keys up front: aws-lc-rs refuses to verify with them anyway, and a clear
        // load-time error beats tokens that silently never verify.
        if bits < MIN_RSA_BITS {
            return Err(Error::RsaKeyTooSmall);
        }
        if bits > MAX_RSA_BITS {
            return Err(Error::RsaKeyTooLarge);
        }
        let spki_der = key
            .as_der()
            .map_err(|_| Error::Crypto("encoding an RSA public key"))?
            .as_ref()
            .to_vec();
        let verifier = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &spki_der)
            .map_err(|_| Error::InvalidKey("malformed RSA public key".to_owned()))?;
        let kid = key_id(&spki_der);
        let jwk = Jwk {
            key_use: "sig".to_owned(),
            kty: "RSA".to_owned(),
            kid: kid.clone(),
            crv: None,
            alg: Algorithm::RS256.as_str().to_owned(),
            x: None,
            y: None,
            n: Some(URL_SAFE_NO_PAD.encode(n)),
            e: Some(URL_SAFE_NO_PAD.encode(e)),
        };
        Ok(PublicKey {
            algorithm: Algorithm::RS256,
            kid,
            spki_der,
            jwk,
            verifier,
        })
    }

    fn from_ec_point(algorithm: Algorithm, point: &[u8]) -> Result<Self> {
        let (prefix, coordinate_len, verify_alg, crv): (&[u8], usize, _, _) = match algorithm {
            Algorithm::ES256 => (&P256_SPKI_PREFIX, 32, &ECDSA_P256_SHA256_FIXED, "P-256"),
            Algorithm::ES384 => (&P384_SPKI_PREFIX, 48, &ECDSA_P384_SHA384_FIXED, "P-384"),
            Algorithm::RS256 => {
                return Err(Error::InvalidKey("RS256 is not an EC algorithm".to_owned()));
            }
        };
        // Go's x509 parser only accepts uncompressed points for ECDSA keys; so do we.
        if point.len() != 1 + 2 * coordinate_len || point.first() != Some(&0x04) {
            return Err(Error::InvalidKey(format!(
                "{crv} public key is not an uncompressed point"
            )));
        }
        let mut spki_der = Vec::with_capacity(prefix.len() + point.len());
        spki_der.extend_from_slice(prefix);
        spki_der.extend_from_slice(point);
        // Parsing checks that the point is on the curve.
        let verifier = ParsedPublicKey::new(verify_alg, &spki_der)
            .map_err(|_| Error::InvalidKey(format!("{crv} public key is not a valid point")))?;
        let kid = key_id(&spki_der);
        let (x, y) = point[1..].split_at(coordinate_len);
        let jwk = Jwk {
            key_use: "sig".to_owned(),
            kty: "EC".to_owned(),
            kid: kid.clone(),
            crv: Some(crv.to_owned()),
            alg: algorithm.as_str().to_owned(),
            x: Some(URL_SAFE_NO_PAD.encode(x)),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            n: None,
            e: None,
        };
        Ok(PublicKey {
            algorithm,
            kid,
            spki_der,
            jwk,
            verifier,
        })
    }

    /// The JWS algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Canonical DER PKIX SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// "PUBLIC KEY" PEM.
    pub fn to_pem(&self) -> String {
        String::clone(&pem::encode(pem::LABEL_PUBLIC_KEY, &self.spki_der))
    }

    /// The JWKS entry.
    pub fn jwk(&self) -> Jwk {
        self.jwk.clone()
    }

    /// Checks a raw JOSE signature (RS256: PKCS#1 v1.5; ES256/ES384: fixed-length r||s) over
    /// `signing_input` (`b64(header).b64(payload)`).
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        self.verifier.verify_sig(signing_input, signature).is_ok()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm
            && self.kid == other.kid
            && self.spki_der == other.spki_der
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}
