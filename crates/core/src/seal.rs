//! Encryption at rest, as an interface: the store seals the data of sensitive kinds
//! (Secrets) with whatever implements this (the key-encryption key in
//! `badge-keys`), so core and the store stay free of crypto crates.

/// Authenticated encryption with associated data. Implementations must fail (never
/// return garbage) on a wrong key, tampered data or different `aad`.
pub trait DataSealer: Send + Sync + 'static {
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, String>;
    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, String>;
}
