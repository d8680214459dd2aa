//! The mapping from sqlx errors to domain errors, and the store's own error texts.

use badge_core::{Error, Kind};

pub(crate) fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound(format!("{} \"{name}\" not found", kind.resource()))
}

pub(crate) fn already_exists(kind: Kind, name: &str) -> Error {
    Error::AlreadyExists(format!("{} \"{name}\" already exists", kind.resource()))
}

pub(crate) fn modified_concurrently(kind: Kind, name: &str) -> Error {
    Error::Conflict(format!(
        "operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
         please apply your changes to the latest version and try again",
        kind.resource()
    ))
}

/// A failed write (a request of a batch, or the batch's own statements).
pub(crate) enum TxError {
    /// Serialization failure or deadlock: the whole batch may succeed if run again.
    Retry(String),
    /// A statement failed (not retryable). On Postgres the transaction is aborted
    /// from here on unless the statement ran inside a savepoint.
    Statement(Error),
    /// Refused by a check that ran before anything was written (not found,
    /// already exists, a failed precondition, invalid), or a decoding error: the
    /// transaction itself is still usable.
    Fatal(Error),
}

impl TxError {
    pub(crate) fn db(e: sqlx::Error) -> Self {
        Self::classify(e, None)
    }

    pub(crate) fn db_about(e: sqlx::Error, kind: Kind, name: &str) -> Self {
        Self::classify(e, Some((kind, name)))
    }

    fn classify(e: sqlx::Error, about: Option<(Kind, &str)>) -> Self {
        if is_retryable(&e) {
            TxError::Retry(e.to_string())
        } else {
            TxError::Statement(db_error(e, about))
        }
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Fatal(e)
    }
}

/// Serialization failure or deadlock (Postgres), or a database another process
/// holds locked past the busy timeout (SQLite): the transaction may succeed if run
/// again.
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => match sqlite_code(d.as_ref()) {
            Some(code) => matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED),
            None => matches!(d.code().as_deref(), Some("40001" | "40P01")),
        },
        _ => false,
    }
}

const SQLITE_ERROR: i32 = 1;
const SQLITE_READONLY: i32 = 8;
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// The (extended) result code of an SQLite error; `None` for Postgres errors.
fn sqlite_code(d: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    d.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    d.code()?.parse().ok()
}

/// The one mapping from sqlx errors (and SQLSTATEs / SQLite result codes) to
/// domain errors. `about` names the object a unique violation is about. Messages
/// never include object data.
pub(crate) fn db_error(e: sqlx::Error, about: Option<(Kind, &str)>) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => match about {
            Some((kind, name)) => already_exists(kind, name),
            None => Error::AlreadyExists("object already exists".to_owned()),
        },
        sqlx::Error::Database(d) if sqlite_code(d.as_ref()).is_some() => {
            let code = sqlite_code(d.as_ref()).unwrap_or(0);
            match code & 0xff {
                SQLITE_ERROR if d.message().starts_with("no such table") => {
                    Error::precondition("database schema is not migrated: run `badge migrate`")
                }
                SQLITE_BUSY | SQLITE_LOCKED => Error::Unavailable(format!(
                    "store unavailable: {} (is another process using the database file?)",
                    d.message()
                )),
                SQLITE_READONLY | SQLITE_IOERR | SQLITE_CORRUPT | SQLITE_FULL | SQLITE_CANTOPEN
                | SQLITE_NOTADB => {
                    Error::Unavailable(format!("store unavailable: {}", d.message()))
                }
                _ => Error::Internal(format!("store error: {e}")),
            }
        }
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("40001" | "40P01") => Error::Conflict(format!(
                "the store could not serialise concurrent writes ({}); retry",
                d.message()
            )),
            // undefined_table: the schema is not there at all.
            Some("42P01") => {
                Error::precondition("database schema is not migrated: run `badge migrate`")
            }
            // Class 08 connection exceptions, 57P0x shutdown / cannot connect now,
            // 53300 too many connections, 25006 read-only transaction (a demoted
            // primary: the store is finding the new one).
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "53300"
                    || code == "25006" =>
            {
                Error::Unavailable(format!("store unavailable: {}", d.message()))
            }
            _ => Error::Internal(format!("store error: {e}")),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Error::Unavailable(format!("store unavailable: {e}")),
        _ => Error::Internal(format!("store error: {e}")),
    }
}
