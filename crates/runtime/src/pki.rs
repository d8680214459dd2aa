//! The development PKI: a CA, a server and a client certificate per service, an
//! admin client certificate in group `system:masters`, and a `kube-apiserver`
//! client certificate for token-review's webhook (see [`webhook_kubeconfig`]).
//! For local runs and tests; production brings its own CA.
//!
//! Security: the directory is created 0700 (tightened if it exists), private keys
//! are 0600, and every file is written to a fresh temporary name with exclusive
//! create (`O_CREAT|O_EXCL`, which never follows a symlink) and then renamed into
//! place, so nothing planted in the directory — a symlink at a temporary or final
//! name — can redirect a key into another file.

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

/// The user of the client certificate kube-apiserver presents to token-review's
/// webhook (bound to `system:auth-delegator` by the bootstrap policy).
pub const KUBE_APISERVER_USER: &str = badge_core::bootstrap_policy::KUBE_APISERVER_USER;
/// File stem of that certificate (`kube-apiserver.pem`, `kube-apiserver-key.pem`).
pub const KUBE_APISERVER_STEM: &str = "kube-apiserver";

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
    /// kube-apiserver's client certificate for the webhook.
    pub kube_apiserver: CertPaths,
}

impl DevPki {
    /// The files for `dir` (whether or not they exist yet).
    pub fn at(dir: &Path) -> Self {
        DevPki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            admin: cert_paths(dir, "admin"),
            kube_apiserver: cert_paths(dir, KUBE_APISERVER_STEM),
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
    create_private_dir(dir)?;

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
    // No group: its only rights come from the bootstrap binding of
    // system:auth-delegator (create tokenreviews and subjectaccessreviews).
    leaf(
        &issuer,
        &pki.kube_apiserver,
        KUBE_APISERVER_USER,
        &[],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(pki)
}

/// A kubeconfig for kube-apiserver's `--authentication-token-webhook-config-file`
/// (and `--authorization-webhook-config-file`): the webhook at `server` (its
/// exact URL, e.g. `https://127.0.0.1:8447/`), the dev CA as
/// `certificate-authority-data`, and the `kube-apiserver` client certificate and
/// key inline. It holds a private key: write it with [`write_file`] (`private`).
pub fn webhook_kubeconfig(pki: &DevPki, server: &str) -> Result<String, PkiError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| PkiError::Write {
            path: p.to_path_buf(),
            source,
        })
    };
    let ca = base64(&read(&pki.ca)?);
    let cert = base64(&read(&pki.kube_apiserver.cert)?);
    let key = base64(&read(&pki.kube_apiserver.key)?);
    Ok(format!(
        "# kube-apiserver -> Badge token-review webhook (written by Badge's dev PKI).\n\
         # --authentication-token-webhook-config-file=<this file>\n\
         # --authorization-webhook-config-file=<this file>  (optional)\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: badge-webhook\n\
         \x20 cluster:\n\
         \x20   server: {server}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: {KUBE_APISERVER_USER}\n\
         \x20 user:\n\
         \x20   client-certificate-data: {cert}\n\
         \x20   client-key-data: {key}\n\
         contexts:\n\
         - name: webhook\n\
         \x20 context:\n\
         \x20   cluster: badge-webhook\n\
         \x20   user: {KUBE_APISERVER_USER}\n\
         current-context: webhook\n"
    ))
}

/// Standard base64 with padding (RFC 4648 §4), for the kubeconfig's `*-data`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// Creates `dir` (and missing parents) with mode 0700, and tightens it to 0700
/// when it already exists: it holds the CA key and every private key. A shared
/// directory with the sticky bit (such as /tmp) is never tightened.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    create_dir_0700(dir, true)
}

/// Creates `dir` (and missing parents) with mode 0700 when missing; an existing
/// directory is left as it is (a data directory an operator chose).
pub fn create_dir_if_missing(dir: &Path) -> Result<(), PkiError> {
    create_dir_0700(dir, false)
}

fn create_dir_0700(dir: &Path, tighten: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(err)?;
        // symlink_metadata: a symlink in place of the directory is refused below
        // rather than followed to whatever it names.
        let meta = fs::symlink_metadata(dir).map_err(err)?;
        if !meta.is_dir() {
            return Err(err(std::io::Error::other("not a directory (a symlink?)")));
        }
        let mode = meta.permissions().mode();
        if tighten && mode & 0o1000 == 0 && mode & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(err)?;
    Ok(())
}

/// Temporary names are unique per process and call; an existing file of that
/// name (a leftover, or a planted symlink) is skipped, never opened.
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a fresh temporary file next to it created
/// with `O_CREAT|O_EXCL` (so a symlink there is never followed) and mode 0600 for
/// private data (0644 otherwise) from the start, then renamed over `path` (which
/// replaces a symlink at `path` rather than writing through it).
pub fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        match opts.open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(e) => return Err(err(e)),
        }
    };
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    write_file(path, bytes, private)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn base64_vectors() {
        for (plain, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), want);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    /// Finding 10: the directory is 0700, keys 0600, certificates 0644, and a
    /// symlink planted where the old code put its temporary file (`<file>.pem.tmp`,
    /// opened with O_TRUNC and followed) is left alone, as is its target.
    #[cfg(unix)]
    #[test]
    fn modes_and_planted_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        for stem in ["ca-key", "admin-key", "ca", "kube-apiserver-key"] {
            std::os::unix::fs::symlink(&victim, dir.join(format!("{stem}.pem.tmp"))).unwrap();
        }
        // A symlink at a final name is replaced, not written through.
        std::os::unix::fs::symlink(&victim, dir.join("identity-key.pem")).unwrap();

        let pki = generate(&dir, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&pki.admin.key), 0o600);
        assert_eq!(mode(&pki.kube_apiserver.key), 0o600);
        assert_eq!(mode(&pki.ca), 0o644);
        let id_key = dir.join("identity-key.pem");
        assert!(std::fs::symlink_metadata(&id_key).unwrap().is_file());
        assert_eq!(mode(&id_key), 0o600);
        // No temporary file is left behind.
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with('.'), "{name} left behind");
        }
    }

    #[test]
    fn kubeconfig_embeds_the_ca_and_the_apiserver_certificate() {
        let root = tempfile::tempdir().unwrap();
        let pki = generate(&root.path().join("pki"), &[]).unwrap();
        let k = webhook_kubeconfig(&pki, "https://127.0.0.1:8447/").unwrap();
        let ca = base64(&std::fs::read(&pki.ca).unwrap());
        let key = base64(&std::fs::read(&pki.kube_apiserver.key).unwrap());
        assert!(k.contains("    server: https://127.0.0.1:8447/\n"), "{k}");
        assert!(k.contains(&format!("    certificate-authority-data: {ca}\n")));
        assert!(k.contains(&format!("    client-key-data: {key}\n")));
        assert!(k.contains("current-context: webhook\n"));
        let der = rustls_pki_types::CertificateDer::from_pem_file(&pki.kube_apiserver.cert)
            .map(|c| c.as_ref().to_vec())
            .unwrap();
        let caller = crate::auth::caller_from_cert(&der).unwrap();
        assert_eq!(caller.user, "kube-apiserver");
        assert_eq!(
            caller.groups,
            vec![crate::auth::AUTHENTICATED_GROUP.to_string()]
        );
    }
}
