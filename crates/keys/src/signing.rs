use std::fmt;

use aws_lc_rs::encoding::{AsDer as _, Pkcs8V1Der};
use aws_lc_rs::error::KeyRejected;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivateKeyDer;
use zeroize::Zeroizing;

use crate::pem;
use crate::{Algorithm, Error, PublicKey, Result};

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private signing key for service-account JWTs, parsed once.
///
/// Signing goes straight to aws-lc-rs with the pre-parsed key pair. ECDSA uses the *fixed*
/// signature encoding, so ES256/ES384 signatures are the JOSE `r||s` form (64/96 bytes) and not
/// ASN.1 DER, which JWT verifiers would reject.
///
/// `Debug` shows only the algorithm and kid.
pub struct SigningKey {
    pair: Pair,
    /// The key as PKCS#8 v1, kept (wiped on drop) so that [`SigningKey::to_pkcs8_der`] cannot
    /// fail: the process holds the key in aws-lc anyway, and an export path that can error out
    /// at the moment a key must be persisted is worse than one extra zeroizing copy.
    pkcs8: Zeroizing<Vec<u8>>,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a new key: RSA 2048 for RS256, P-256 for ES256. ES384 keys are only loaded
    /// from files.
    pub fn generate(algorithm: Algorithm) -> Result<Self> {
        match algorithm {
            Algorithm::RS256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| Error::Crypto("generating an RSA key"))?;
                Self::from_rsa(pair)
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| Error::Crypto("generating an EC key"))?;
                Self::from_ec(Algorithm::ES256, pair)
            }
            Algorithm::ES384 => Err(Error::UnsupportedGeneration(algorithm)),
        }
    }

    /// Parses an unencrypted PKCS#8 private key, detecting RSA, EC P-256 or EC P-384.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        match RsaKeyPair::from_pkcs8(der) {
            Ok(pair) => return Self::from_rsa(pair),
            Err(e) => {
                if let Some(err) = rsa_size_error(&e) {
                    return Err(err);
                }
            }
        }
        for (algorithm, signing) in ec_algorithms() {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(signing, der) {
                return Self::from_ec(algorithm, pair);
            }
        }
        Err(Error::UnsupportedKey(
            "PKCS#8 private key is malformed or not an RSA, ECDSA P-256 or ECDSA P-384 key"
                .to_owned(),
        ))
    }

    /// Parses a PKCS#1 `RSAPrivateKey` ("RSA PRIVATE KEY" PEM blocks).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self> {
        match RsaKeyPair::from_der(der) {
            Ok(pair) => Self::from_rsa(pair),
            Err(e) => Err(rsa_size_error(&e).unwrap_or_else(|| {
                Error::InvalidKey("not a valid PKCS#1 RSA private key".to_owned())
            })),
        }
    }

    /// Parses a SEC1 / RFC 5915 `ECPrivateKey` ("EC PRIVATE KEY" PEM blocks) on P-256 or P-384.
    pub fn from_sec1_der(der: &[u8]) -> Result<Self> {
        for (algorithm, signing) in ec_algorithms() {
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(signing, der) {
                return Self::from_ec(algorithm, pair);
            }
        }
        Err(Error::UnsupportedKey(
            "EC private key is malformed or not on curve P-256 or P-384".to_owned(),
        ))
    }

    /// Loads the first private key of a PEM file, as kube-apiserver's
    /// `--service-account-signing-key-file` does: "PRIVATE KEY" (PKCS#8), "RSA PRIVATE KEY"
    /// (PKCS#1) or "EC PRIVATE KEY" (SEC1). Other blocks (e.g. "EC PARAMETERS") are skipped.
    /// RSA keys must have at least 2048 bits.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        for block in pem::blocks(pem_text)? {
            if block.is_private_key() {
                return Self::from_pem_block(&block);
            }
            if block.label == pem::LABEL_ENCRYPTED_PRIVATE_KEY {
                return Err(pem::encrypted_key_error());
            }
        }
        Err(Error::NoPrivateKey)
    }

    pub(crate) fn from_pem_block(block: &pem::Block<'_>) -> Result<Self> {
        let der = block.private_key()?;
        match &*der {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8_der(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => Self::from_pkcs1_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => Self::from_sec1_der(k.secret_sec1_der()),
            _ => Err(Error::UnsupportedKey(
                "unknown private key format".to_owned(),
            )),
        }
    }

    fn from_rsa(pair: RsaKeyPair) -> Result<Self> {
        let pkcs8: Pkcs8V1Der<'static> = pair
            .as_der()
            .map_err(|_| Error::Crypto("encoding an RSA private key"))?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| Error::Crypto("encoding an RSA public key"))?;
        let public = PublicKey::from_spki_der(spki.as_ref())?;
        Ok(SigningKey {
            pair: Pair::Rsa(pair),
            pkcs8,
            public,
        })
    }

    fn from_ec(algorithm: Algorithm, pair: EcdsaKeyPair) -> Result<Self> {
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| Error::Crypto("encoding an EC private key"))?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| Error::Crypto("encoding an EC public key"))?;
        let public = PublicKey::from_spki_der(spki.as_ref())?;
        if public.algorithm() != algorithm {
            return Err(Error::InvalidKey(
                "EC key curve does not match its algorithm".to_owned(),
            ));
        }
        Ok(SigningKey {
            pair: Pair::Ec(pair),
            pkcs8,
            public,
        })
    }

    /// The key as unencrypted PKCS#8 DER (wiped on drop). Encrypt it with a
    /// [`Kek`](crate::Kek) before it leaves the process.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.pkcs8.to_vec())
    }

    /// The key as a "PRIVATE KEY" PEM (wiped on drop), e.g. to write a key file.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        pem::encode(pem::LABEL_PRIVATE_KEY, &self.pkcs8)
    }

    /// The JWS algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    /// The Kubernetes key id of the public key.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `signing_input` (`b64(header).b64(payload)`) and returns the raw JOSE signature:
    /// PKCS#1 v1.5 SHA-256 for RS256, fixed-length `r||s` for ES256/ES384.
    pub fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>> {
        // aws-lc-rs ignores the RNG argument (it seeds internally); it is required by the API.
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, signing_input, &mut signature)
                    .map_err(|_| Error::Crypto("RSA signing"))?;
                Ok(signature)
            }
            Pair::Ec(pair) => pair
                .sign(&rng, signing_input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::Crypto("ECDSA signing")),
        }
    }

    /// The protected header JSON, keys in the order alg, kid[, typ].
    ///
    /// In-process Kubernetes tokens carry exactly `{"alg":…,"kid":…}` (go-jose adds no `typ`);
    /// tokens from an external signer must carry `"typ":"JWT"` as well (KEP-740). Pass
    /// `typ = true` for the latter.
    pub fn jwt_header(&self, typ: bool) -> Vec<u8> {
        // Written by hand rather than through serde_json so it cannot fail: `alg` is a fixed
        // name and the kid is base64url output (A–Z a–z 0–9 - _), so neither needs escaping.
        let mut out = format!(r#"{{"alg":"{}","kid":"{}""#, self.algorithm(), self.kid());
        if typ {
            out.push_str(r#","typ":"JWT""#);
        }
        out.push('}');
        out.into_bytes()
    }

    /// Builds a compact JWS: `b64(header).b64(payload).b64(signature)`, base64url without
    /// padding. The JSON is taken as given; use [`jwt_header`](Self::jwt_header) for the header.
    pub fn sign_jwt(&self, header_json: &[u8], payload_json: &[u8]) -> Result<String> {
        let mut token = String::with_capacity(
            (header_json.len() + payload_json.len()) * 4 / 3 + self.signature_b64_len() + 8,
        );
        URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload_json, &mut token);
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    fn signature_b64_len(&self) -> usize {
        let raw = match &self.pair {
            Pair::Rsa(pair) => pair.public_modulus_len(),
            Pair::Ec(_) => match self.algorithm() {
                Algorithm::ES384 => 96,
                _ => 64,
            },
        };
        raw.div_ceil(3) * 4
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

fn ec_algorithms() -> [(Algorithm, &'static EcdsaSigningAlgorithm); 2] {
    [
        (Algorithm::ES256, &ECDSA_P256_SHA256_FIXED_SIGNING),
        (Algorithm::ES384, &ECDSA_P384_SHA384_FIXED_SIGNING),
    ]
}

/// aws-lc-rs rejects RSA keys outside 2048–8192 bits with these reasons; we turn them into
/// errors that say what is wrong instead of "invalid key".
fn rsa_size_error(e: &KeyRejected) -> Option<Error> {
    match e.description_() {
        "TooSmall" => Some(Error::RsaKeyTooSmall),
        "TooLarge" => Some(Error::RsaKeyTooLarge),
        _ => None,
    }
}
