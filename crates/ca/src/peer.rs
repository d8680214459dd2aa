//! The relying party's side: what a peer's X.509-SVID says about who it is and which
//! pod it was issued to, read from the certificate a mesh gateway forwards (Envoy's
//! ext_authz `source.certificate`, with `include_peer_certificate: true`).
//!
//! No signature or validity check here: the gateway completed the TLS handshake
//! against the trust bundle before it forwarded the certificate, and Badge already
//! trusts the gateway's word for the peer (it may only ask with RBAC `create checks`).
//! What this adds is the binding Badge's CA puts in every pod certificate, so the
//! caller can refuse a certificate whose pod is gone.

use badge_core::spiffe::plan::PodBinding;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::pod_extension;

/// What a forwarded peer certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Every URI SAN (an X.509-SVID has exactly one: its SPIFFE ID).
    pub uris: Vec<String>,
    /// Badge's pod-binding extension, when the certificate carries one.
    pub pod: Option<PodBinding>,
}

/// Reads the first certificate of `pem` (the leaf; Envoy forwards only the peer's
/// own certificate). `Err` says what is wrong, without echoing the input.
pub fn read_pem(pem: &str) -> Result<PeerCertificate, String> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no PEM CERTIFICATE block".to_string())?
        .map_err(|_| "malformed PEM".to_string())?;
    read_der(&der)
}

/// [`read_pem`] for DER.
pub fn read_der(der: &[u8]) -> Result<PeerCertificate, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| "not an X.509 certificate".to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let mut uris = Vec::new();
    let mut pod = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == pod_extension::POD_BINDING_OID_STR {
            // Security: a binding we cannot read is not "no binding" — the CA put
            // something there and a relying party must not silently skip the check.
            pod = Some(
                pod_extension::decode(ext.value)
                    .ok_or_else(|| "malformed pod-binding extension".to_string())?,
            );
            continue;
        }
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            uris.extend(san.general_names.iter().filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            }));
        }
    }
    Ok(PeerCertificate { uris, pod })
}
