//! PEM block splitting.
//!
//! rustls-pki-types decodes the block kinds it knows (with constant-time base64 for private
//! keys), but silently skips labels it does not know, such as "RSA PUBLIC KEY", and cannot tell
//! us where in a file a block was. So we split the text into blocks here, keep their order, and
//! hand each known block to rustls-pki-types; only "RSA PUBLIC KEY" (public data) is decoded
//! with the base64 crate.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};
use zeroize::Zeroizing;

use crate::{Error, Result};

pub(crate) const LABEL_PUBLIC_KEY: &str = "PUBLIC KEY";
pub(crate) const LABEL_RSA_PUBLIC_KEY: &str = "RSA PUBLIC KEY";
pub(crate) const LABEL_CERTIFICATE: &str = "CERTIFICATE";
pub(crate) const LABEL_PRIVATE_KEY: &str = "PRIVATE KEY";
pub(crate) const LABEL_RSA_PRIVATE_KEY: &str = "RSA PRIVATE KEY";
pub(crate) const LABEL_EC_PRIVATE_KEY: &str = "EC PRIVATE KEY";
pub(crate) const LABEL_ENCRYPTED_PRIVATE_KEY: &str = "ENCRYPTED PRIVATE KEY";

/// One `-----BEGIN X-----` … `-----END X-----` block.
pub(crate) struct Block<'a> {
    /// The label X.
    pub label: &'a str,
    /// The whole block, BEGIN and END lines included.
    pub text: &'a str,
    /// The lines between BEGIN and END.
    pub body: &'a str,
}

impl Block<'_> {
    pub(crate) fn is_private_key(&self) -> bool {
        matches!(
            self.label,
            LABEL_PRIVATE_KEY | LABEL_RSA_PRIVATE_KEY | LABEL_EC_PRIVATE_KEY
        )
    }

    /// Decodes a private-key block. The DER is wiped when dropped.
    pub(crate) fn private_key(&self) -> Result<Zeroizing<PrivateKeyDer<'static>>> {
        // Legacy OpenSSL encryption ("Proc-Type: 4,ENCRYPTED" headers): say so, rather than
        // failing on the headers as if the base64 were corrupt.
        if self.body.contains("Proc-Type:") {
            return Err(encrypted_key_error());
        }
        // The underlying error is not included: for a secret block it could describe its content.
        PrivateKeyDer::from_pem_slice(self.text.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| self.invalid())
    }

    pub(crate) fn spki(&self) -> Result<SubjectPublicKeyInfoDer<'static>> {
        SubjectPublicKeyInfoDer::from_pem_slice(self.text.as_bytes()).map_err(|_| self.invalid())
    }

    pub(crate) fn certificate(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.text.as_bytes()).map_err(|_| self.invalid())
    }

    /// Decodes the body with standard base64 (used for "RSA PUBLIC KEY", which
    /// rustls-pki-types does not know).
    pub(crate) fn body_der(&self) -> Result<Vec<u8>> {
        let compact: String = self
            .body
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        STANDARD.decode(compact).map_err(|_| self.invalid())
    }

    fn invalid(&self) -> Error {
        Error::Pem(format!("cannot decode the {:?} block", self.label))
    }
}

/// Kubernetes cannot read passphrase-protected keys either; point the operator at the fix.
pub(crate) fn encrypted_key_error() -> Error {
    Error::UnsupportedKey(
        "the private key is encrypted with a passphrase; provide an unencrypted key file"
            .to_owned(),
    )
}

/// Splits `input` into PEM blocks, in order. Text outside blocks is ignored (as Go's
/// `pem.Decode` does), a BEGIN without a matching END is an error.
pub(crate) fn blocks(input: &str) -> Result<Vec<Block<'_>>> {
    let mut out = Vec::new();
    // (label, offset of the BEGIN line, offset of the body)
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_end();
        match open {
            None => {
                if let Some(label) = marker(trimmed, "-----BEGIN ") {
                    open = Some((label, start, offset));
                }
            }
            Some((label, begin, body)) => {
                if let Some(end_label) = marker(trimmed, "-----END ") {
                    if end_label != label {
                        return Err(Error::Pem(format!(
                            "block {:?} is closed by END {:?}",
                            printable(label),
                            printable(end_label)
                        )));
                    }
                    out.push(Block {
                        label,
                        text: &input[begin..offset],
                        body: &input[body..start],
                    });
                    open = None;
                } else if trimmed.starts_with("-----BEGIN ") {
                    return Err(Error::Pem(format!(
                        "block {:?} has no END line before the next BEGIN",
                        printable(label)
                    )));
                }
            }
        }
    }
    if let Some((label, _, _)) = open {
        return Err(Error::Pem(format!(
            "block {:?} has no END line",
            printable(label)
        )));
    }
    Ok(out)
}

fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix("-----")
}

/// Labels end up in error messages: bound them, so a mangled file cannot pour its content into
/// a log line.
fn printable(label: &str) -> String {
    label.chars().take(40).collect()
}

/// Renders DER as a PEM block with 64-character lines.
///
/// The result and the intermediate base64 are wiped on drop (buffers are sized up front so no
/// reallocation leaves a copy behind), because this also renders private keys.
pub(crate) fn encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64_len = base64::encoded_len(der.len(), true).unwrap_or(0);
    let mut b64 = Zeroizing::new(String::with_capacity(b64_len));
    STANDARD.encode_string(der, &mut b64);
    let mut out = Zeroizing::new(String::with_capacity(
        b64.len() + b64.len() / 64 + 2 * label.len() + 40,
    ));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so every byte is a char.
    for chunk in b64.as_bytes().chunks(64) {
        out.extend(chunk.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}
