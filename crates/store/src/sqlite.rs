//! SQLite-only: the embedded backend's connection, and the in-process stand-ins for
//! what Postgres does across processes (the writers' lock, the change-feed wake-up,
//! advisory locks).
//!
//! One SQLite database serves **one process**. Every [`Store`](crate::Store) that
//! process opens on the same file shares one [`Shared`]: one pool, one writers'
//! mutex (so commit order equals revision order), one revision watch (so a commit
//! through any of them wakes every subscriber) and one set of held `try_locked`
//! keys. A second process on the same file would still be safe for the data
//! (SQLite's own locking, `BEGIN IMMEDIATE`), but it would not hear the first
//! one's commits and the advisory locks would not exclude it: run Postgres for
//! more than one process.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use badge_core::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

use crate::{StoreOptions, publish};

/// Whether `url` names an SQLite database (`sqlite://PATH` or `sqlite:PATH`).
pub(crate) fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// What every `Store` of this process on one database file shares.
pub(crate) struct Shared {
    pub(crate) pool: SqlitePool,
    pub(crate) revision: watch::Sender<i64>,
    /// Held by every write transaction from before `BEGIN IMMEDIATE` until it
    /// ends: writers queue here instead of spinning on SQLite's busy handler.
    pub(crate) writer: Arc<tokio::sync::Mutex<()>>,
    /// Keys held through [`crate::Store::try_locked`].
    locks: Mutex<HashSet<i64>>,
}

/// Open databases of this process, by absolute path.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The connect options of `url`: the file is created when missing, in WAL mode
/// (readers never block the writer), with foreign keys on and a busy timeout for
/// the rare case of another process holding the write lock.
fn connect_options(url: &str, busy_timeout: Duration) -> Result<SqliteConnectOptions> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::invalid("database_url", format!("is not a valid sqlite url: {e}")))?;
    if opts.get_filename().as_os_str().is_empty()
        || opts
            .get_filename()
            .to_string_lossy()
            .starts_with("file:sqlx-in-memory")
    {
        return Err(Error::invalid(
            "database_url",
            "must name a database file (sqlite://PATH): an in-memory database would lose \
             everything on exit",
        ));
    }
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(busy_timeout))
}

/// The absolute path of the database file (the key of [`OPEN`]).
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    // Not created yet: resolve the directory, keep the file name.
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => match dir.canonicalize() {
            Ok(dir) => dir.join(name),
            Err(_) => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        },
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Creates the directory the database file lives in. Directories created here are
/// 0700: the database holds every object (Secret data sealed, but also RBAC state
/// and token metadata), so nobody but the service's user lists or enters it.
/// Existing directories keep their mode (an operator's choice).
fn create_parent(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::Unavailable(format!(
                    "store unavailable: creating the database directory {}: {e}",
                    dir.display()
                ))
            }),
        _ => Ok(()),
    }
}

/// The mode of the database file and of SQLite's `-wal` and `-shm` files.
const FILE_MODE: u32 = 0o600;

/// Creates the database file 0600 before SQLite opens it, and narrows an existing
/// one (and its `-wal`/`-shm`) that others may read.
///
/// Security: SQLite creates a missing file with 0644 (less the umask), readable by
/// every local user, and gives its `-wal` and `-shm` files the main file's mode.
/// Creating the file ourselves, exclusively and 0600, before SQLite first opens it
/// leaves no moment in which it is readable by others, and the journal files follow.
/// Files from older versions (0644) are narrowed here; if that fails (a file owned
/// by another user), the store still opens and a warning names the file.
fn create_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "store unavailable: creating the database file {}: {e}",
                path.display()
            )));
        }
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    for file in files {
        // `metadata` follows a symlink: the target's mode is what protects the data.
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        // Only regular files: a directory in the file's place is SQLite's error to
        // report, not ours to chmod.
        if !meta.is_file() || meta.permissions().mode() & 0o077 == 0 {
            continue;
        }
        if let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(FILE_MODE))
        {
            tracing::warn!(
                file = %file.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o7777),
                error = %e,
                "the database file is readable by other users and could not be narrowed to 0600"
            );
        }
    }
    Ok(())
}

/// The shared state of the database `url` names, opened on first use. Like the
/// Postgres pool, no connection is made here (the directory and an empty, private
/// file are created here; SQLite initialises the file on the first connection).
pub(crate) fn open(url: &str, opts: &StoreOptions) -> Result<Arc<Shared>> {
    let connect = connect_options(url, opts.connect_timeout.max(Duration::from_secs(5)))?;
    let path = absolute(connect.get_filename());
    create_parent(&path)?;
    create_private_file(&path)?;
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|_, s| s.strong_count() > 0);
    if let Some(shared) = open.get(&path).and_then(Weak::upgrade) {
        return Ok(shared);
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(opts.max_connections.max(1))
        .acquire_timeout(opts.connect_timeout)
        .connect_lazy_with(connect.filename(&path));
    let (revision, _) = watch::channel(0_i64);
    let shared = Arc::new(Shared {
        pool,
        revision,
        writer: Arc::new(tokio::sync::Mutex::new(())),
        locks: Mutex::new(HashSet::new()),
    });
    open.insert(path, Arc::downgrade(&shared));
    drop(open);
    // Start subscribers at the stored revision, as the Postgres listener's first
    // catch-up does. Best effort: an unmigrated database has no counter yet.
    let catch_up = Arc::downgrade(&shared);
    tokio::spawn(async move {
        let Some(shared) = catch_up.upgrade() else {
            return;
        };
        let rev: sqlx::Result<i64> =
            sqlx::query_scalar("SELECT revision FROM revision_counter WHERE id = 1")
                .fetch_one(&shared.pool)
                .await;
        match rev {
            Ok(rev) => publish(&shared.revision, rev),
            Err(e) => tracing::debug!(error = %e, "no revision to catch up on yet"),
        }
    });
    Ok(shared)
}

/// Creates the database file (and its directory) when missing. Returns whether it
/// created it.
pub(crate) async fn create_database_if_missing(url: &str) -> Result<bool> {
    let connect = connect_options(url, Duration::from_secs(5))?;
    let path = connect.get_filename().to_path_buf();
    if path.exists() {
        return Ok(false);
    }
    create_parent(&path)?;
    create_private_file(&path)?;
    let conn: SqliteConnection = connect
        .connect()
        .await
        .map_err(|e| crate::error::db_error(e, None))?;
    let _ = conn.close().await;
    Ok(true)
}

impl Shared {
    /// Takes the in-process lock `key`; `None` while someone holds it. The lock is
    /// released when the guard drops (also when the holder is cancelled).
    pub(crate) fn try_lock(self: &Arc<Self>, key: i64) -> Option<KeyGuard> {
        let mut held = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(key).then(|| KeyGuard {
            shared: self.clone(),
            key,
        })
    }
}

pub(crate) struct KeyGuard {
    shared: Arc<Shared>,
    key: i64,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The permission bits, in octal as `ls` and `chmod` show them.
    fn mode(path: &Path) -> String {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        format!("{:o}", meta.permissions().mode() & 0o777)
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("badge_t_{}", uuid::Uuid::new_v4().simple()))
    }

    fn sibling(path: &Path, suffix: &str) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Security regression (#13 finding 10): the database and SQLite's journal files
    /// were created 0644, readable by every local user.
    #[tokio::test]
    async fn the_database_and_its_wal_and_shm_files_are_private() {
        let dir = temp_dir();
        let file = dir.join("data").join("badge.db");
        let url = format!("sqlite://{}", file.display());
        let shared = open(&url, &StoreOptions::default()).expect("test setup");
        sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(&shared.pool)
            .await
            .expect("test setup");
        sqlx::query("INSERT INTO t VALUES ('a')")
            .execute(&shared.pool)
            .await
            .expect("test setup");
        // While the pool is open, the WAL and shared-memory files exist.
        for path in [file.clone(), sibling(&file, "-wal"), sibling(&file, "-shm")] {
            assert_eq!(mode(&path), "600", "{}", path.display());
        }
        assert_eq!(
            mode(&dir.join("data")),
            "700",
            "the directory created for it"
        );
        shared.pool.close().await;
        drop(shared);

        // create_database_if_missing (`badge migrate`) makes the same file.
        let other = dir.join("other.db");
        assert!(
            create_database_if_missing(&format!("sqlite://{}", other.display()))
                .await
                .expect("test setup")
        );
        assert_eq!(mode(&other), "600");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_existing_world_readable_database_is_narrowed_on_open() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).expect("test setup");
        let file = dir.join("old.db");
        let wal = sibling(&file, "-wal");
        for path in [&file, &wal] {
            std::fs::write(path, b"").expect("test setup");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                .expect("test setup");
        }
        let shared = open(
            &format!("sqlite://{}", file.display()),
            &StoreOptions::default(),
        )
        .expect("test setup");
        assert_eq!(mode(&file), "600");
        assert_eq!(mode(&wal), "600");
        // A directory where the file should be is left alone (SQLite reports it).
        drop(shared);
        let before = mode(&dir);
        let _ = open(
            &format!("sqlite://{}", dir.display()),
            &StoreOptions::default(),
        );
        assert_eq!(mode(&dir), before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
