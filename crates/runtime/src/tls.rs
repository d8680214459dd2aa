//! TLS material for listeners (see [`crate::transport`]) and for calls to other
//! services.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// PEM files: the CA that client (and peer server) certificates must chain to, and
/// this process's certificate and key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// The PEM parsed but rustls refused it (the reason names no key bytes).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    // A cheap sanity check so a swapped path fails at start-up with its name,
    // not at the first handshake.
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

/// Loaded PEM bytes.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(TlsMaterial {
            ca: read("tls.ca", &files.ca, "certificate")?,
            cert: read("tls.cert", &files.cert, "certificate")?,
            key: read("tls.key", &files.key, "private key")?,
        })
    }

    /// Our chain and key, and the CA as rustls roots.
    #[allow(clippy::type_complexity)]
    fn parsed(
        &self,
    ) -> Result<
        (
            Vec<rustls_pki_types::CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
            tokio_rustls::rustls::RootCertStore,
        ),
        TlsError,
    > {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let config =
            |what: &str, e: &dyn std::fmt::Display| TlsError::Config(format!("{what}: {e}"));
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config("tls.cert", &e))?;
        // The error names the PEM problem, never key bytes.
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| config("tls.key", &e))?;
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca) {
            let ca = ca.map_err(|e| config("tls.ca", &e))?;
            roots.add(ca).map_err(|e| config("tls.ca", &e))?;
        }
        Ok((certs, key, roots))
    }

    /// Server side for [`crate::transport::incoming`]: our identity, client
    /// certificates verified against `ca` (required, or optional when the auth
    /// layer accepts bearer tokens instead), ALPN `h2`, rustls with aws-lc.
    pub fn server_acceptor(
        &self,
        client_auth_optional: bool,
    ) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        use tokio_rustls::rustls;

        let config = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
        let (certs, key, roots) = self.parsed()?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        );
        let verifier = if client_auth_optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        }
        .build()
        .map_err(|e| config(&e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| config(&e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)))
    }

    /// Client side for [`crate::transport::channel`]: trust `ca`, present our
    /// certificate, ALPN `h2`, rustls with aws-lc.
    pub fn client_connector(&self) -> Result<tokio_rustls::TlsConnector, TlsError> {
        use tokio_rustls::rustls;

        let config = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
        let (certs, key, roots) = self.parsed()?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| config(&e))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            client,
        )))
    }

    /// Client side: trust `ca`, present our certificate.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(server_name)
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca
    }
}
