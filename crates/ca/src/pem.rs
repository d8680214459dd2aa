//! PEM rendering of certificates (public data only).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;

/// One "CERTIFICATE" block with 64-character lines, ending in a newline (istiod's form:
/// each `cert_chain` element is one such block).
pub fn certificate(der: &CertificateDer<'_>) -> String {
    let b64 = STANDARD.encode(der.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.extend(chunk.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Certificates concatenated as PEM, in the given order.
pub fn certificates<'a>(ders: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    ders.into_iter().map(certificate).collect()
}
