//! The development PKI: a CA, a server and a client certificate per service and an
//! admin client certificate in group `system:masters`. For local runs and tests;
//! production brings its own CA.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The services a dev PKI issues certificates for.
pub const SERVICES: [&str; 3] = ["identity", "token-issuer", "token-review"];

/// The group that bypasses authorization (Kubernetes' `system:masters`).
pub const MASTERS_GROUP: &str = badge_core::bootstrap_policy::MASTERS;

/// Group of every Badge service's client certificate.
pub const SERVICES_GROUP: &str = "system:badge-services";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating certificate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid subject alternative name {0:?}")]
    San(String),
}

/// Paths of one certificate and its key.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where everything was written.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub admin: CertPaths,
}

impl DevPki {
    /// The files for `dir` (whether or not they exist yet).
    pub fn at(dir: &Path) -> Self {
        DevPki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            admin: cert_paths(dir, "admin"),
        }
    }

    /// Server certificate of a service.
    pub fn server(&self, service: &str) -> CertPaths {
        cert_paths(&self.dir, service)
    }

    /// Client certificate a service uses to call the others.
    pub fn client(&self, service: &str) -> CertPaths {
        cert_paths(&self.dir, &format!("{service}-client"))
    }

    /// True when a CA has already been generated there.
    pub fn exists(&self) -> bool {
        self.ca.exists()
    }
}

fn cert_paths(dir: &Path, stem: &str) -> CertPaths {
    CertPaths {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    }
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

/// Generates a fresh dev PKI in `dir` (created if needed), overwriting what is
/// there. `extra_names` are added to every server certificate next to `localhost`,
/// `127.0.0.1`, `::1` and the service name; IPs become IP SANs.
pub fn generate(dir: &Path, extra_names: &[String]) -> Result<DevPki, PkiError> {
    let pki = DevPki::at(dir);
    fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    let ca_key = KeyPair::generate().map_err(gen_err("ca key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "badge dev ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err("ca"))?;
    write(&pki.ca, ca_cert.pem().as_bytes(), false)?;
    write(
        &dir.join("ca-key.pem"),
        ca_key.serialize_pem().as_bytes(),
        true,
    )?;
    let issuer = Issuer::new(ca_params, ca_key);

    for service in SERVICES {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            service.to_string(),
            format!("badge-{service}"),
        ];
        names.extend(extra_names.iter().cloned());
        let paths = pki.server(service);
        leaf(
            &issuer,
            &paths,
            &format!("badge-{service}"),
            &[],
            &names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        leaf(
            &issuer,
            &pki.client(service),
            &format!("system:badge:{service}"),
            &[SERVICES_GROUP],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
    }
    leaf(
        &issuer,
        &pki.admin,
        "admin",
        &[MASTERS_GROUP],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(pki)
}

/// Issues a client certificate for `user` in `groups` with the CA key in `dir`
/// (used by tests and operators to mint identities).
pub fn issue_client(
    dir: &Path,
    stem: &str,
    user: &str,
    groups: &[&str],
) -> Result<CertPaths, PkiError> {
    let read =
        |p: PathBuf| fs::read_to_string(&p).map_err(|source| PkiError::Write { path: p, source });
    let ca_pem = read(dir.join("ca.pem"))?;
    let key_pem = read(dir.join("ca-key.pem"))?;
    let key = KeyPair::from_pem(&key_pem).map_err(gen_err("ca key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(gen_err("ca"))?;
    let paths = cert_paths(dir, stem);
    leaf(
        &issuer,
        &paths,
        user,
        groups,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(paths)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    paths: &CertPaths,
    common_name: &str,
    organizations: &[&str],
    names: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(), PkiError> {
    let key = KeyPair::generate().map_err(gen_err(common_name))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // Kubernetes' x509 authenticator: CN is the user, each O a group.
    for o in organizations {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    for n in names {
        let san = match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into().map_err(|_| PkiError::San(n.clone()))?),
        };
        params.subject_alt_names.push(san);
    }
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(gen_err(common_name))?;
    write(&paths.cert, cert.pem().as_bytes(), false)?;
    write(&paths.key, key.serialize_pem().as_bytes(), true)
}

/// Writes atomically (temp file + rename); private keys get mode 0600 on Unix.
fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
