//! Badge key material: the signing keys of service-account JWTs and the key-encryption key
//! (KEK) that protects private keys and Secret data at rest.
//!
//! * [`SigningKey`] is parsed once and signs with aws-lc-rs directly: jsonwebtoken re-parses the
//!   private key on every encode, which makes RS256 about 2.5× slower.
//! * [`PublicKey`] carries the Kubernetes key id ([`key_id`]) and renders the JWKS entry
//!   ([`Jwk`]) exactly as kube-apiserver publishes it.
//! * [`Kek`] is AES-256-GCM with a random nonce per blob.
//! * [`StoredKey`] is the JSON record the token issuer keeps per signing key.
//!
//! Nothing in this crate prints key material: `Debug` shows algorithm and kid only, and error
//! messages are built from fixed text plus non-secret facts (labels, lengths, paths, ids).

mod algorithm;
mod error;
mod kek;
mod pem;
mod public;
mod signing;
mod stored;
mod verify;

pub use algorithm::Algorithm;
pub use error::{Error, Result};
pub use kek::{KEK_LEN, Kek};
pub use public::{Jwk, PublicKey, key_id};
pub use signing::SigningKey;
pub use stored::{KeySource, StoredKey};
pub use verify::KeySet;

/// Minimum RSA modulus size accepted anywhere in Badge (signing and verification keys).
pub const MIN_RSA_BITS: usize = 2048;
/// Maximum RSA modulus size (the largest aws-lc-rs verifies with RS256).
pub const MAX_RSA_BITS: usize = 8192;

#[cfg(test)]
mod tests;
