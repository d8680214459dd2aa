//! Badge's SPIFFE X.509 CA: the pieces that need crypto. The decisions (which identity,
//! which lifetime, which key types) are pure functions in `badge_core::spiffe`; this
//! crate parses and verifies CSRs ([`csr`]), signs X.509-SVIDs and builds or loads CAs
//! ([`authority`]), encodes Badge's pod-binding extension ([`pod_extension`]), reads it
//! back for relying parties ([`peer`]) and renders trust bundles ([`bundle`]). No IO
//! except reading plug-in CA files; no clock (time is a parameter).
//! docs/certificates.md describes the design.
//!
//! Nothing here logs or formats private keys: `Debug` of [`authority::SigningCa`] shows
//! its key id and validity only, and errors carry fixed texts plus non-secret facts.

pub mod authority;
pub mod bundle;
pub mod csr;
pub mod peer;
pub mod pem;
pub mod pod_extension;

pub use authority::{CaAlgorithm, IssuedCertificate, PluginPem, SigningCa};
pub use csr::VerifiedCsr;

/// Badge's signer name for Kubernetes PodCertificateRequests.
pub const SIGNER_NAME: &str = "badge.dev/spiffe";

#[cfg(test)]
mod tests;
