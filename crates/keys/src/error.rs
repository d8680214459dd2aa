use std::path::PathBuf;

use crate::Algorithm;

/// Errors of this crate.
///
/// Security: every message is built from fixed text and non-secret facts (PEM labels, lengths,
/// key ids, KEK fingerprints, file paths). No variant carries key bytes, file content or the text
/// of an underlying parser error that might quote its input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An algorithm name other than RS256, ES256 or ES384.
    #[error("unknown signing algorithm {0:?} (supported: RS256, ES256, ES384)")]
    UnknownAlgorithm(String),

    /// Key generation was asked for an algorithm Badge does not generate.
    #[error("Badge generates RS256 or ES256 keys only, not {0}")]
    UnsupportedGeneration(Algorithm),

    /// An RSA key below 2048 bits.
    #[error("RSA key is smaller than 2048 bits; RSA keys must have 2048 to 8192 bits")]
    RsaKeyTooSmall,

    /// An RSA key above 8192 bits.
    #[error("RSA key is larger than 8192 bits; RSA keys must have 2048 to 8192 bits")]
    RsaKeyTooLarge,

    /// A key of a type or curve that cannot sign service-account tokens here.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),

    /// Bytes that do not encode the key structure they were given as.
    #[error("invalid key: {0}")]
    InvalidKey(String),

    /// Malformed PEM.
    #[error("invalid PEM: {0}")]
    Pem(String),

    /// PEM data without any private-key block.
    #[error(
        "no private key found: expected a \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" PEM block"
    )]
    NoPrivateKey,

    /// PEM data without any public-key, certificate or private-key block.
    #[error(
        "no public key found: expected \"PUBLIC KEY\", \"RSA PUBLIC KEY\", \"CERTIFICATE\" or private-key PEM blocks"
    )]
    NoPublicKey,

    /// A cryptographic primitive failed (key generation, signing, random numbers, encoding).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),

    /// AES-GCM authentication failed. Deliberately one message for every cause, so a caller
    /// never gets garbage plaintext and an attacker learns nothing about which check failed.
    #[error("cannot decrypt: wrong key-encryption key or corrupted data")]
    Decrypt,

    /// A key-encryption key given inline (not from a file) is malformed.
    #[error("invalid key-encryption key: {0}")]
    InvalidKek(String),

    /// A key-encryption key file cannot be read or is malformed. Names the path, never the content.
    #[error("key-encryption key file {}: {reason}", .path.display())]
    KekFile {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A stored signing key was encrypted under another KEK than the one supplied.
    #[error("signing key {kid} was encrypted with key-encryption key {stored}, not {current}")]
    KekMismatch {
        /// Key id of the signing key.
        kid: String,
        /// Fingerprint recorded with the key.
        stored: String,
        /// Fingerprint of the KEK supplied.
        current: String,
    },

    /// A stored key has no private part (it is a verification-only key).
    #[error("signing key {kid} has no private key (it is a verification-only key)")]
    NoPrivateKeyStored {
        /// Key id of the stored key.
        kid: String,
    },

    /// A stored key record is malformed or inconsistent.
    #[error("invalid stored key record: {0}")]
    Record(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
