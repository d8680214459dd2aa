//! Kubernetes' ExternalJWTSigner (KEP-740, reference §9), packages `v1` and
//! `v1alpha1`: a kube-apiserver started with `--service-account-signing-endpoint`
//! hands Badge its claims and gets back `{alg, kid, typ: "JWT"}` and a signature
//! made with Badge's active key.

use std::sync::Arc;

use badge_core::token::MAX_EXPIRATION_SECONDS;
use badge_core::{Clock, Error, Result};
use badge_proto::externaljwt::{v1, v1alpha1};
use badge_runtime::{MethodRule, MethodTable, status};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};

use crate::keyring::KeyRing;

/// The apiserver sends a JWT payload; anything much larger than a real one is
/// refused before decoding.
const MAX_CLAIMS_LEN: usize = 64 * 1024;

/// The same service on the mTLS gRPC listener (the Unix socket has no auth layer:
/// its file permissions are the guard, as in Kubernetes).
pub const METHODS: MethodTable = &[
    (
        "/v1.ExternalJWTSigner/Sign",
        MethodRule::new("sign", "badge.dev", "signingkeys"),
    ),
    (
        "/v1.ExternalJWTSigner/FetchKeys",
        MethodRule::new("list", "badge.dev", "signingkeys"),
    ),
    (
        "/v1.ExternalJWTSigner/Metadata",
        MethodRule::new("get", "badge.dev", "signingkeys"),
    ),
    (
        "/v1alpha1.ExternalJWTSigner/Sign",
        MethodRule::new("sign", "badge.dev", "signingkeys"),
    ),
    (
        "/v1alpha1.ExternalJWTSigner/FetchKeys",
        MethodRule::new("list", "badge.dev", "signingkeys"),
    ),
    (
        "/v1alpha1.ExternalJWTSigner/Metadata",
        MethodRule::new("get", "badge.dev", "signingkeys"),
    ),
];

#[derive(Clone)]
pub struct ExternalSigner {
    pub ring: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub refresh_hint_seconds: i64,
    /// `--service-account-max-token-expiration` to report (0: 2^32 s).
    pub max_expiration_seconds: i64,
}

/// (header, signature), both base64url.
fn sign(s: &ExternalSigner, claims: &str) -> Result<(String, String)> {
    if claims.is_empty() {
        return Err(Error::invalid("claims", "claims are required"));
    }
    if claims.len() > MAX_CLAIMS_LEN {
        return Err(Error::invalid(
            "claims",
            format!("too long: {} bytes, at most {MAX_CLAIMS_LEN}", claims.len()),
        ));
    }
    // Sign only what is a JWT payload: base64url (no padding) of a JSON object.
    let raw = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| Error::invalid("claims", "must be unpadded base64url"))?;
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(Error::invalid("claims", "must encode a JSON object")),
    }
    let key = s
        .ring
        .active(s.clock.now())
        .ok_or_else(|| Error::Unavailable("no signing key is active yet".into()))?;
    let header = URL_SAFE_NO_PAD.encode(key.jwt_header(true));
    let input = format!("{header}.{claims}");
    let sig = key
        .sign(input.as_bytes())
        .map_err(|e| Error::Internal(format!("signing: {e}")))?;
    tracing::info!(target: "audit", event = "external.signed", kid = %key.kid(), "signed claims for the apiserver");
    Ok((header, URL_SAFE_NO_PAD.encode(sig)))
}

struct Keys {
    keys: Vec<(String, Vec<u8>)>,
    timestamp: prost_types::Timestamp,
}

fn keys(s: &ExternalSigner) -> Result<Keys> {
    let snap = s.ring.snapshot();
    if snap.keys.is_empty() {
        return Err(Error::Unavailable("no keys published yet".into()));
    }
    Ok(Keys {
        keys: snap
            .keys
            .iter()
            .map(|k| (k.stored.kid.clone(), k.public.spki_der().to_vec()))
            .collect(),
        timestamp: badge_core::clock::timestamp(snap.built_at),
    })
}

fn max_expiration(s: &ExternalSigner) -> i64 {
    if s.max_expiration_seconds > 0 {
        s.max_expiration_seconds
    } else {
        MAX_EXPIRATION_SECONDS
    }
}

macro_rules! signer_impl {
    ($pkg:ident) => {
        #[tonic::async_trait]
        impl $pkg::external_jwt_signer_server::ExternalJwtSigner for ExternalSigner {
            async fn sign(
                &self,
                req: Request<$pkg::SignJwtRequest>,
            ) -> std::result::Result<Response<$pkg::SignJwtResponse>, Status> {
                let (header, signature) = sign(self, &req.into_inner().claims).map_err(status)?;
                Ok(Response::new($pkg::SignJwtResponse { header, signature }))
            }

            async fn fetch_keys(
                &self,
                _req: Request<$pkg::FetchKeysRequest>,
            ) -> std::result::Result<Response<$pkg::FetchKeysResponse>, Status> {
                let k = keys(self).map_err(status)?;
                Ok(Response::new($pkg::FetchKeysResponse {
                    keys: k
                        .keys
                        .into_iter()
                        .map(|(key_id, key)| $pkg::Key {
                            key_id,
                            key,
                            exclude_from_oidc_discovery: false,
                        })
                        .collect(),
                    data_timestamp: Some(k.timestamp),
                    refresh_hint_seconds: self.refresh_hint_seconds,
                }))
            }

            async fn metadata(
                &self,
                _req: Request<$pkg::MetadataRequest>,
            ) -> std::result::Result<Response<$pkg::MetadataResponse>, Status> {
                Ok(Response::new($pkg::MetadataResponse {
                    max_token_expiration_seconds: max_expiration(self),
                }))
            }
        }
    };
}

signer_impl!(v1);
signer_impl!(v1alpha1);

/// The Unix socket: who may reach it, and binding it without a window.
///
/// Security: the socket has no auth layer (as in Kubernetes, where the apiserver
/// dials it with insecure credentials), so a connection on it may mint tokens for
/// any identity. Two layers keep other local users out:
///
/// 1. **No window at bind.** `bind` creates the socket with `0777 & !umask`
///    (usually 0755, which lets every user connect), and a `chmod` afterwards
///    leaves a moment in which another user can connect and keep that connection.
///    So the socket is bound inside a fresh 0700 directory (nobody else may even
///    look it up there), narrowed to 0600, and only then renamed into place: at
///    `path` it is 0600 from its first instant.
/// 2. **Peer credentials.** Every accepted connection's peer uid (`SO_PEERCRED`)
///    must be the socket owner's or root's (root passes file permissions anyway),
///    so a mode widened later by hand, or a descriptor passed on, still does not
///    admit another user.
pub mod socket {
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use anyhow::{Context, bail};
    use tokio::net::{UnixListener, UnixStream};
    use tokio_stream::wrappers::UnixListenerStream;
    use tokio_stream::{Stream, StreamExt};

    /// The socket's mode: its owner only.
    pub const SOCKET_MODE: u32 = 0o600;

    /// The listening socket and the uid that owns it (this process's effective
    /// uid, read from the socket file it just created rather than from `/proc`).
    pub struct PrivateSocket {
        pub listener: UnixListener,
        pub owner_uid: u32,
    }

    /// Binds a Unix socket at `path` that only its owner can reach from the
    /// moment it exists (see the module docs). A stale socket at `path` is
    /// replaced; anything else there (a file, a directory) is refused, never
    /// deleted: a mistyped path must not cost an operator a file.
    pub fn bind(path: &Path) -> anyhow::Result<PrivateSocket> {
        let shown = path.display();
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => bail!(
                "external_signer.socket {shown}: exists and is not a socket; refusing to replace it"
            ),
            _ => {}
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let staging = private_dir(parent).with_context(|| {
            format!("external_signer.socket {shown}: creating a private directory next to it")
        })?;
        let bound = (|| -> anyhow::Result<PrivateSocket> {
            // A short name: a socket path is limited to ~107 bytes.
            let tmp = staging.join("s");
            let listener = UnixListener::bind(&tmp)
                .with_context(|| format!("external_signer.socket {shown}: bind"))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
                .with_context(|| format!("external_signer.socket {shown}: chmod 600"))?;
            let owner_uid = std::fs::symlink_metadata(&tmp)
                .with_context(|| format!("external_signer.socket {shown}: stat"))?
                .uid();
            // Atomic, and replaces a stale socket in the same step.
            std::fs::rename(&tmp, path)
                .with_context(|| format!("external_signer.socket {shown}: moving it into place"))?;
            Ok(PrivateSocket {
                listener,
                owner_uid,
            })
        })();
        // Empty after the rename; on failure it still holds the bound socket.
        let _ = std::fs::remove_dir_all(&staging);
        bound
    }

    /// A new directory `<parent>/.badge-XXXXXXXX`, mode 0700 (the umask can only
    /// narrow it). Created exclusively: an existing one (someone else's) is never
    /// reused.
    fn private_dir(parent: &Path) -> io::Result<PathBuf> {
        let mut last = None;
        for _ in 0..4 {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let dir = parent.join(format!(".badge-{}", &id[..8]));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free directory name")))
    }

    /// Whether a peer running as `peer_uid` may use a socket owned by `owner_uid`:
    /// the owner, or root (whom file permissions do not stop either).
    pub fn peer_allowed(peer_uid: u32, owner_uid: u32) -> bool {
        peer_uid == owner_uid || peer_uid == 0
    }

    /// The connections accepted on `socket` whose peer may use it; the others are
    /// closed at once and logged with the peer's uid and pid.
    pub fn incoming(socket: PrivateSocket) -> impl Stream<Item = io::Result<UnixStream>> {
        let owner = socket.owner_uid;
        UnixListenerStream::new(socket.listener).filter(move |conn| {
            let Ok(stream) = conn else {
                return true;
            };
            match stream.peer_cred() {
                Ok(cred) if peer_allowed(cred.uid(), owner) => true,
                Ok(cred) => {
                    tracing::warn!(
                        peer_uid = cred.uid(),
                        peer_pid = ?cred.pid(),
                        owner_uid = owner,
                        "ExternalJWTSigner socket: connection from another user refused"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ExternalJWTSigner socket: peer credentials unavailable; connection refused");
                    false
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::socket::{bind, peer_allowed};

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("badge_t_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn only_the_owner_and_root_may_use_the_socket() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000), "root passes file permissions anyway");
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(
            !peer_allowed(1000, 0),
            "a socket owned by root admits no one else"
        );
    }

    /// Security regression (#13 finding 10): the socket was bound at its path
    /// (0755 with the usual umask) and narrowed afterwards. A watcher that looks
    /// at the path as fast as it can must never see it with any mode but 0600.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_socket_is_never_reachable_with_a_wider_mode() {
        let dir = temp_dir();
        let path = dir.join("signer.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        seen.insert(m.permissions().mode() & 0o777);
                    }
                }
                seen
            })
        };
        for _ in 0..1000 {
            let socket = bind(&path).expect("bind");
            drop(socket);
            // Sometimes absent between rounds, sometimes replaced while stale.
            if rand_bit() {
                let _ = std::fs::remove_file(&path);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().expect("watcher");
        assert_eq!(
            seen.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>(),
            vec!["600"],
            "modes the socket path was seen with"
        );
        // Nothing left behind but the socket itself.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(names.len() <= 1, "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rand_bit() -> bool {
        uuid::Uuid::new_v4().as_bytes()[0] & 1 == 1
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = temp_dir();
        let path = dir.join("signer.sock");
        let first = bind(&path).expect("first bind");
        drop(first);
        let second = bind(&path).expect("a stale socket is replaced");
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("stat")
                .file_type()
                .is_socket()
        );
        // It answers at the path (the rename kept the bound socket reachable).
        tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect to the renamed socket");
        drop(second);

        let file = dir.join("not-a-socket");
        std::fs::write(&file, b"keep me").expect("write");
        let err = bind(&file).err().expect("a regular file is refused");
        assert_eq!(
            err.to_string(),
            format!(
                "external_signer.socket {}: exists and is not a socket; refusing to replace it",
                file.display()
            )
        );
        assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
