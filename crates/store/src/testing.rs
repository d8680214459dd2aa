//! Test support (feature `testing`): a fresh, uniquely named database per test —
//! on the Postgres server named by `BADGE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), or an SQLite file in a new
//! temporary directory. Tests never skip silently: no reachable server is a loud
//! panic.
//!
//! [`fresh_database`] is Postgres unless `BADGE_TEST_BACKEND=sqlite`;
//! [`fresh_database_on`] picks the backend explicitly (the store's own suite runs
//! every test on both).
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test support: a failure fails the test that called it, loudly"
)]

use std::path::PathBuf;

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::{Store, StoreOptions};

/// Which backend a test database is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// `BADGE_TEST_BACKEND` (`postgres` or `sqlite`; default postgres).
    pub fn from_env() -> Backend {
        match std::env::var("BADGE_TEST_BACKEND")
            .as_deref()
            .map(str::trim)
        {
            Ok("sqlite") => Backend::Sqlite,
            Ok("" | "postgres") | Err(_) => Backend::Postgres,
            Ok(other) => panic!("BADGE_TEST_BACKEND={other:?}: expected postgres or sqlite"),
        }
    }
}

/// The server used when `BADGE_TEST_DATABASE_URL` is unset.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test; dropped (best effort) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of the new database.
    pub url: String,
    name: String,
    backend: Backend,
    /// Postgres: the server's maintenance database, to drop this one from.
    admin_url: String,
    /// SQLite: the temporary directory holding the file.
    dir: Option<PathBuf>,
}

/// Set by [`use_test_server`]: overrides `BADGE_TEST_DATABASE_URL` for this process.
static TEST_SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every later [`fresh_database`] of this process create its database on the
/// server at `url` (e.g. an HA cluster's multi-host URL, for the failover test)
/// instead of `BADGE_TEST_DATABASE_URL`. The first call wins.
pub fn use_test_server(url: &str) {
    let _ = TEST_SERVER.set(url.to_owned());
}

/// `url`, or for a multi-host URL the single-host URL of the host that accepts
/// writes now (CREATE/DROP DATABASE must run there).
async fn writable_url(url: &str) -> String {
    let Ok(Some(list)) = crate::primary::parse_hosts(url) else {
        return url.to_owned();
    };
    let hosts: Vec<_> = list
        .urls
        .iter()
        .filter_map(|u| u.parse::<sqlx::postgres::PgConnectOptions>().ok())
        .collect();
    match crate::primary::find_primary(&hosts).await {
        Some(i) => list.urls[i].clone(),
        None => panic!(
            "\n\n*** no host of {} accepts writes (is the cluster up?)\n",
            list.labels.join(",")
        ),
    }
}

fn admin_url() -> String {
    if let Some(url) = TEST_SERVER.get() {
        return url.clone();
    }
    std::env::var("BADGE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_owned())
}

async fn admin_connection(url: &str) -> PgConnection {
    match PgConnection::connect(url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "\n\n*** badge-store tests need PostgreSQL and none answered at {url}: {e}\n\
             *** start one (PostgreSQL 15 on 127.0.0.1:5432, user postgres, trust auth) or set \
             BADGE_TEST_DATABASE_URL to a server where this user may CREATE DATABASE.\n\
             *** These tests never skip.\n"
        ),
    }
}

/// Creates an empty database named `badge_t_<uuid>` (not migrated: see
/// [`TestDatabase::store`]) on the backend `BADGE_TEST_BACKEND` names (Postgres by
/// default).
pub async fn fresh_database() -> TestDatabase {
    fresh_database_on(Backend::from_env()).await
}

/// Creates an empty database named `badge_t_<uuid>` on `backend`: a database on
/// the test Postgres server, or `badge_t_<uuid>.db` in a new temporary directory.
pub async fn fresh_database_on(backend: Backend) -> TestDatabase {
    match backend {
        Backend::Postgres => fresh_postgres().await,
        Backend::Sqlite => fresh_sqlite(),
    }
}

fn fresh_sqlite() -> TestDatabase {
    let name = format!("badge_t_{}", uuid::Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(&name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    TestDatabase {
        url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        name,
        backend: Backend::Sqlite,
        admin_url: String::new(),
        dir: Some(dir),
    }
}

async fn fresh_postgres() -> TestDatabase {
    let admin_url = admin_url();
    let name = format!("badge_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin_connection(&writable_url(&admin_url).await).await;
    if let Err(e) = conn
        .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
    {
        panic!("creating test database {name} on {admin_url} failed: {e}");
    }
    let _ = conn.close().await;
    TestDatabase {
        url: with_database(&admin_url, &name),
        name,
        backend: Backend::Postgres,
        admin_url,
        dir: None,
    }
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend it is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs one statement on its own connection (for tests that reach past the
    /// store, e.g. to tamper with the migrations table).
    pub async fn execute(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        let done = match self.backend {
            Backend::Postgres => match PgConnection::connect(&self.url).await {
                Ok(mut c) => c.execute(sql).await.map(drop),
                Err(e) => Err(e),
            },
            Backend::Sqlite => match SqliteConnection::connect(&self.url).await {
                Ok(mut c) => c.execute(sql).await.map(drop),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = done {
            panic!("on test database {}: {e}", self.name);
        }
    }

    /// The first column of every row `sql` selects, as bytes (for tests that look
    /// at what is stored on disk).
    pub async fn fetch_bytes(&self, sql: &str) -> Vec<Vec<u8>> {
        let sql = AssertSqlSafe(sql.to_owned());
        let rows = match self.backend {
            Backend::Postgres => match PgConnection::connect(&self.url).await {
                Ok(mut c) => sqlx::query_scalar(sql).fetch_all(&mut c).await,
                Err(e) => Err(e),
            },
            Backend::Sqlite => match SqliteConnection::connect(&self.url).await {
                Ok(mut c) => sqlx::query_scalar(sql).fetch_all(&mut c).await,
                Err(e) => Err(e),
            },
        };
        match rows {
            Ok(rows) => rows,
            Err(e) => panic!("on test database {}: {e}", self.name),
        }
    }

    /// A store on this database, migrated.
    pub async fn store(&self) -> Store {
        let store = self.unmigrated_store().await;
        if let Err(e) = store.migrate().await {
            panic!("migrating test database {}: {e}", self.name);
        }
        store
    }

    /// A store on this database without running migrations.
    pub async fn unmigrated_store(&self) -> Store {
        match Store::connect(&self.url, StoreOptions::default()).await {
            Ok(s) => s,
            Err(e) => panic!("connecting to test database {}: {e}", self.name),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // Stores still open on the file keep working until they close it.
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("warning: could not remove {}: {e}", dir.display());
            }
            return;
        }
        // Drop runs inside the test's runtime, which cannot be blocked on: use a
        // thread with its own. WITH (FORCE) ends connections a Store still holds.
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&writable_url(&admin_url).await)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .await
                .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// `url` with its database (path) replaced by `database`; the query is kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
