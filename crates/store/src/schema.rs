//! Schema versions: the migrations embedded at build time, and the check every
//! binary runs before serving so it never works on a schema it does not know.
//!
//! Each backend has its own migrations: `migrations/` (Postgres) and
//! `migrations/sqlite/` (SQLite), numbered in lockstep — migration N creates the
//! same tables on both, in each dialect.

use badge_core::{Error, Result};
use std::sync::LazyLock;

use sqlx::SqlSafeStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

use crate::Db;
use crate::error::db_error;

/// The migrations this binary embeds, per backend: (version, description, SQL),
/// exactly as sqlx names a file `<version>_<description>.sql`. Listed by hand
/// rather than with `sqlx::migrate!`: that macro needs sqlx's `macros` feature,
/// which compiles sqlx, both database drivers, rustls, aws-lc and SQLite a second
/// time for the build host (about a third of a cold release build on 2 cores).
/// `embedded_migrations_are_the_directories` fails when a file is added, renamed
/// or edited without this list following it; the checksums are sqlx's (SHA-384 of
/// the file), so databases migrated by earlier binaries verify unchanged.
const POSTGRES_FILES: &[(i64, &str, &str)] = &[
    (
        1,
        "objects",
        include_str!("../../../migrations/0001_objects.sql"),
    ),
    (
        2,
        "lean indexes",
        include_str!("../../../migrations/0002_lean_indexes.sql"),
    ),
];
const SQLITE_FILES: &[(i64, &str, &str)] = &[
    (
        1,
        "objects",
        include_str!("../../../migrations/sqlite/0001_objects.sql"),
    ),
    (
        2,
        "lean indexes",
        include_str!("../../../migrations/sqlite/0002_lean_indexes.sql"),
    ),
];

fn embed(files: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    // sqlx's `-- no-transaction` directive, as the macro reads it.
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

static POSTGRES: LazyLock<Migrator> = LazyLock::new(|| embed(POSTGRES_FILES));
static SQLITE: LazyLock<Migrator> = LazyLock::new(|| embed(SQLITE_FILES));

fn migrator(db: &Db) -> &'static Migrator {
    match db {
        Db::Postgres(_) => &POSTGRES,
        Db::Sqlite(_) => &SQLITE,
    }
}

/// sqlx's bookkeeping table.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// A migration this binary embeds.
#[derive(Clone, Copy)]
struct Known<'a> {
    version: i64,
    description: &'a str,
    checksum: &'a [u8],
}

/// A row of sqlx's bookkeeping table.
struct Applied {
    version: i64,
    success: bool,
    checksum: Vec<u8>,
}

fn known(migrator: &'static Migrator) -> Vec<Known<'static>> {
    migrator
        .iter()
        .map(|m| Known {
            version: m.version,
            description: &m.description,
            checksum: &m.checksum,
        })
        .collect()
}

fn newest(known: &[Known<'_>]) -> i64 {
    known.iter().map(|m| m.version).max().unwrap_or(0)
}

fn newer_than_binary(version: i64, newest_known: i64) -> Error {
    Error::precondition(format!(
        "database schema version {version} is newer than this binary ({newest_known}): upgrade badge"
    ))
}

pub(crate) async fn migrate(db: &Db) -> Result<()> {
    let newest_known = newest(&known(migrator(db)));
    // SQLite: queue behind this process's writers, as every write transaction does.
    let _writer = match db {
        Db::Sqlite(shared) => Some(shared.writer.lock().await),
        Db::Postgres(_) => None,
    };
    let mut attempt = 1;
    loop {
        let ran = match db {
            Db::Postgres(primary) => POSTGRES.run(&primary.pool()).await,
            Db::Sqlite(shared) => SQLITE.run(&shared.pool).await,
        };
        match ran {
            Ok(()) => return Ok(()),
            // The transient failures `Store::apply` retries, with its bound and
            // backoff: e.g. a brand-new SQLite file answers "database is locked"
            // while another connection of the pool switches it to WAL. Migrations
            // are transactional, so a retry never half-applies one.
            Err(MigrateError::Execute(e))
                if crate::error::is_retryable(&e) && attempt < crate::write::MAX_ATTEMPTS =>
            {
                tracing::debug!(attempt, error = %e, "retrying migration");
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(MigrateError::Execute(e)) => return Err(db_error(e, None)),
            Err(MigrateError::VersionMissing(v)) if v > newest_known => {
                return Err(newer_than_binary(v, newest_known));
            }
            Err(other) => {
                return Err(Error::precondition(format!(
                    "database schema migration failed: {other}"
                )));
            }
        }
    }
}

pub(crate) async fn check(db: &Db) -> Result<()> {
    // No such table (SQLSTATE 42P01 / SQLite's "no such table") maps to "not
    // migrated" in db_error.
    let applied: Vec<(i64, bool, Vec<u8>)> = with_pool!(db, |p| sqlx::query_as(
        "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version"
    )
    .fetch_all(p)
    .await)
    .map_err(|e| db_error(e, None))?;
    let applied: Vec<Applied> = applied
        .into_iter()
        .map(|(version, success, checksum)| Applied {
            version,
            success,
            checksum,
        })
        .collect();
    verify(&known(migrator(db)), &applied)
}

/// Compares what the database has applied with the migrations this binary embeds.
fn verify(known: &[Known<'_>], applied: &[Applied]) -> Result<()> {
    if applied.is_empty() {
        return Err(Error::precondition(
            "database schema is not migrated: run `badge migrate`",
        ));
    }
    if let Some(a) = applied.iter().find(|a| !a.success) {
        return Err(Error::precondition(format!(
            "database schema migration {} is dirty (it failed part-way): \
             repair it and remove its row from {MIGRATIONS_TABLE}",
            a.version
        )));
    }
    let newest_known = newest(known);
    if let Some(a) = applied.iter().rev().find(|a| a.version > newest_known) {
        return Err(newer_than_binary(a.version, newest_known));
    }
    for a in applied {
        match known.iter().find(|m| m.version == a.version) {
            None => {
                return Err(Error::precondition(format!(
                    "database schema has migration {}, which this binary does not know: \
                     use the badge release that applied it",
                    a.version
                )));
            }
            Some(m) if m.checksum != a.checksum.as_slice() => {
                return Err(Error::precondition(format!(
                    "database schema migration {} ({}) differs from this binary's: \
                     it was changed after it was applied",
                    m.version, m.description
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(m) = known
        .iter()
        .find(|m| !applied.iter().any(|a| a.version == m.version))
    {
        return Err(Error::precondition(format!(
            "database schema is missing migration {} ({}): run `badge migrate`",
            m.version, m.description
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [Known<'static>; 3] = [
        Known {
            version: 1,
            description: "objects",
            checksum: b"one",
        },
        Known {
            version: 2,
            description: "more",
            checksum: b"two",
        },
        Known {
            version: 3,
            description: "last",
            checksum: b"three",
        },
    ];

    fn applied(versions: &[i64]) -> Vec<Applied> {
        versions
            .iter()
            .map(|v| Applied {
                version: *v,
                success: true,
                checksum: KNOWN
                    .iter()
                    .find(|k| k.version == *v)
                    .map(|k| k.checksum.to_vec())
                    .unwrap_or_default(),
            })
            .collect()
    }

    fn message(r: Result<()>) -> String {
        match r {
            Err(Error::FailedPrecondition { message, .. }) => message,
            other => panic!("expected FailedPrecondition, got {other:?}"),
        }
    }

    #[test]
    fn the_embedded_migrations_verify_against_themselves() {
        for migrator in [&POSTGRES, &SQLITE] {
            let known = known(migrator);
            assert!(newest(&known) >= 1);
            let all: Vec<Applied> = known
                .iter()
                .map(|k| Applied {
                    version: k.version,
                    success: true,
                    checksum: k.checksum.to_vec(),
                })
                .collect();
            assert_eq!(verify(&known, &all), Ok(()));
        }
    }

    /// Every `<version>_<description>.sql` of the migration directories is
    /// embedded, with that version, description and content, and nothing else is.
    #[test]
    fn embedded_migrations_are_the_directories() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
        for (dir, files) in [
            (root.clone(), POSTGRES_FILES),
            (root.join("sqlite"), SQLITE_FILES),
        ] {
            let mut on_disk = Vec::new();
            for entry in std::fs::read_dir(&dir).expect("migrations dir") {
                let path = entry.expect("dir entry").path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let Some(stem) = name.strip_suffix(".sql") else {
                    continue;
                };
                let (version, description) = stem.split_once('_').expect("<version>_<name>.sql");
                let sql = std::fs::read_to_string(&path).expect("read migration");
                on_disk.push((
                    version.parse::<i64>().expect("numeric version"),
                    description.replace('_', " "),
                    sql,
                ));
            }
            on_disk.sort();
            let embedded: Vec<_> = files
                .iter()
                .map(|&(v, d, sql)| (v, d.to_owned(), sql.to_owned()))
                .collect();
            assert_eq!(
                embedded,
                on_disk,
                "{}: update POSTGRES_FILES/SQLITE_FILES",
                dir.display()
            );
        }
    }

    /// The checksums databases already record (sqlx's SHA-384 of each file, as
    /// `sqlx::migrate!` embedded it before): an applied migration must never change.
    #[test]
    fn applied_migrations_keep_their_checksums() {
        let hex = |m: &'static Migrator| {
            m.iter()
                .map(|m| {
                    m.checksum
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hex(&POSTGRES)[0],
            "c9db83d0a06dd7d40a86fb5a8e5de3b67e7ed91eeeb744d12ceddc42a8c72e17deac3fcf986a8098b8c638693465b260"
        );
        assert_eq!(
            hex(&SQLITE)[0],
            "037c125689149f5df3f405c66435ad8c0e47b49c3a48399c68fdc6aac3049f6e76dfdfb4e9eddbb86113da991e5c79b4"
        );
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        let versions = |m: &'static Migrator| {
            known(m)
                .iter()
                .map(|k| (k.version, k.description.to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(&POSTGRES), versions(&SQLITE));
    }

    #[test]
    fn all_applied_verifies() {
        assert_eq!(verify(&KNOWN, &applied(&[1, 2, 3])), Ok(()));
    }

    #[test]
    fn nothing_applied_is_not_migrated() {
        assert_eq!(
            message(verify(&KNOWN, &[])),
            "database schema is not migrated: run `badge migrate`"
        );
    }

    #[test]
    fn a_newer_database_names_both_versions() {
        let mut a = applied(&[1, 2, 3]);
        a.push(Applied {
            version: 4,
            success: true,
            checksum: b"four".to_vec(),
        });
        assert_eq!(
            message(verify(&KNOWN, &a)),
            "database schema version 4 is newer than this binary (3): upgrade badge"
        );
    }

    #[test]
    fn a_dirty_migration_is_named() {
        let mut a = applied(&[1, 2]);
        a[1].success = false;
        let msg = message(verify(&KNOWN, &a));
        assert!(msg.contains("migration 2 is dirty"), "{msg}");
    }

    #[test]
    fn a_modified_migration_is_named() {
        let mut a = applied(&[1, 2, 3]);
        a[0].checksum = b"changed".to_vec();
        let msg = message(verify(&KNOWN, &a));
        assert!(msg.contains("migration 1 (objects) differs"), "{msg}");
    }

    #[test]
    fn a_missing_migration_is_named() {
        let msg = message(verify(&KNOWN, &applied(&[1, 3])));
        assert_eq!(
            msg,
            "database schema is missing migration 2 (more): run `badge migrate`"
        );
        let msg = message(verify(&KNOWN, &applied(&[1, 2])));
        assert!(msg.contains("missing migration 3 (last)"), "{msg}");
    }

    #[test]
    fn an_unknown_older_migration_is_named() {
        let known = [KNOWN[0], KNOWN[2]];
        let mut a = applied(&[1, 3]);
        a.insert(
            1,
            Applied {
                version: 2,
                success: true,
                checksum: b"two".to_vec(),
            },
        );
        let msg = message(verify(&known, &a));
        assert!(
            msg.contains("has migration 2, which this binary does not know"),
            "{msg}"
        );
    }
}
