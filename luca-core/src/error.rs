//! The crate's error type.

use std::path::PathBuf;

use crate::retry::{BusyCode, Retryable};

/// Everything luca's runtime can fail with.
///
/// Every variant that concerns a database file names the file, so a log line is enough to
/// find it. SQLite's own errors are kept whole (with their extended result code) in
/// [`Error::Sqlite`], and PostgreSQL's (with their SQLSTATE) in `Error::Postgres` (feature
/// `postgres`), so [`Retryable::busy_code`] can classify them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from SQLite or rusqlite, unchanged.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),

    /// A database file could not be opened or configured.
    #[error("cannot open SQLite database `{}`: {source}", path.display())]
    Open {
        /// The file that was being opened.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// `PRAGMA journal_mode=WAL` did not take effect (for example on a read-only file or a
    /// file system without shared memory).
    #[error(
        "SQLite database `{}` is in journal mode `{mode}`, not `wal`; \
         WAL needs a writable file on a local file system",
        path.display()
    )]
    NotWal {
        /// The file that was being configured.
        path: PathBuf,
        /// The journal mode SQLite reported instead.
        mode: String,
    },

    /// The database file can only be opened read-only, so it cannot take writes.
    #[error(
        "SQLite database `{}` is read-only (file permissions or a read-only file system); \
         `Db` needs to write to it and to its `-wal` and `-shm` files",
        path.display()
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },

    /// The [`Db`](crate::Db) was closed, or its writer thread stopped.
    #[error("the database handle for `{}` is closed", path.display())]
    Closed {
        /// The database file.
        path: PathBuf,
    },

    /// A closure passed to [`Db::read`](crate::Db::read) or [`Db::write`](crate::Db::write)
    /// panicked. Its transaction (or savepoint) was rolled back; other callers were not
    /// affected.
    #[error("a database closure panicked: {message}")]
    Panicked {
        /// The panic message, when it was a string.
        message: String,
    },

    /// No reader connection became free within the pool's wait timeout, or one could not
    /// be created.
    #[error("no reader connection for `{}`: {reason}", path.display())]
    Pool {
        /// The database file.
        path: PathBuf,
        /// What the pool reported.
        reason: String,
    },

    /// SQLite rolled back the transaction a write closure ran in (a trigger's
    /// `RAISE(ROLLBACK, …)`, `INSERT OR ROLLBACK`, a full disk, an I/O error), and the
    /// closure returned `Ok` anyway, having swallowed SQLite's error. Nothing of the
    /// closure was committed; when the closure returns SQLite's error itself, that error is
    /// what its caller gets.
    #[error(
        "SQLite rolled back the transaction while the write closure ran, and the closure \
         returned `Ok`; nothing of it was committed (return SQLite's error to see why)"
    )]
    TransactionEnded,

    /// A write closure ran a statement that [`Db::write`](crate::Db::write) refuses:
    /// transaction control (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`),
    /// which belongs to the write path, or a `PRAGMA` that changes a setting `Db` manages
    /// (`journal_mode`, `synchronous`, `locking_mode`, `query_only`, `foreign_keys`,
    /// `busy_timeout`, `wal_autocheckpoint`). The statement never ran and nothing of the
    /// closure was committed, whatever the closure returned.
    #[error("a write closure may not run `{statement}`: {reason}")]
    Refused {
        /// The refused statement, as SQLite described it (for example `COMMIT` or
        /// `PRAGMA synchronous = OFF`).
        statement: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// A blocking call on a [`Db`](crate::Db) was made from inside one of its own write
    /// closures (on the writer thread, or inline on the caller's): it would wait for
    /// itself forever. Do the work in the closure, with the `&Connection` it was given.
    #[error(
        "`{call}` was called from inside a write closure of the same `Db`, which would wait \
         for itself forever; use the closure's `&Connection` instead"
    )]
    Reentered {
        /// The call that was refused: `Db::write` (also through `Db::write_blocking`) or
        /// `Db::close`.
        call: &'static str,
    },

    /// A [`local::with_connection`](crate::local::with_connection) closure returned `Ok`
    /// with a transaction still open. The transaction was rolled back, so what the closure
    /// wrote is not in the file; commit inside the closure.
    #[error(
        "a `with_connection` closure for `{}` returned with a transaction open; it was \
         rolled back: run `COMMIT` inside the closure",
        path.display()
    )]
    TransactionLeftOpen {
        /// The database file.
        path: PathBuf,
    },

    /// A setting that cannot work, refused before anything was opened.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting, as the builder names it.
        setting: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A path that cannot name a database file.
    #[error("invalid database path `{}`: {reason}", path.display())]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An error from PostgreSQL or tokio-postgres, unchanged (its SQLSTATE, if any, is
    /// what [`Retryable::busy_code`] classifies).
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),

    /// No PostgreSQL connection could be taken from a [`PgDb`](crate::postgres::PgDb)'s
    /// pool (the server refused or could not be reached, or the pool's wait timed out).
    #[cfg(feature = "postgres")]
    #[error("no PostgreSQL connection from the pool: {0}")]
    PgPool(#[source] deadpool_postgres::PoolError),

    /// The connection was lost (or failed) while `COMMIT` was in flight, so whether the
    /// transaction was committed is unknown. It was **not** retried: running it again
    /// could apply it twice. Check the database (for example for a row the transaction
    /// wrote with a unique key) before deciding to run it again.
    #[cfg(feature = "postgres")]
    #[error(
        "the PostgreSQL connection failed while COMMIT was in flight; the transaction may or \
         may not have been committed (it was not retried): {source}"
    )]
    CommitOutcomeUnknown {
        /// What the driver reported.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A [`PgDb`](crate::postgres::PgDb) closure ended its transaction itself (it ran
    /// `COMMIT` or `ROLLBACK`): what it ran before that may be committed, and what it ran
    /// after ran outside the transaction. It was not retried. Return from the closure
    /// instead: `PgDb` commits when it returns `Ok` and rolls back when it returns `Err`.
    #[cfg(feature = "postgres")]
    #[error("a PgDb closure ended its own transaction (COMMIT or ROLLBACK): {reason}")]
    PgTransactionEnded {
        /// What happened after.
        reason: &'static str,
    },
}

/// `Result` with [`luca_core::Error`](Error) as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The SQLite error inside, if any.
    pub fn sqlite(&self) -> Option<&rusqlite::Error> {
        match self {
            Error::Sqlite(e) | Error::Open { source: e, .. } => Some(e),
            Error::NotWal { .. }
            | Error::InvalidPath { .. }
            | Error::ReadOnly { .. }
            | Error::Closed { .. }
            | Error::Panicked { .. }
            | Error::Pool { .. }
            | Error::TransactionEnded
            | Error::Refused { .. }
            | Error::Reentered { .. }
            | Error::TransactionLeftOpen { .. }
            | Error::InvalidSetting { .. } => None,
            #[cfg(feature = "postgres")]
            Error::Postgres(_)
            | Error::PgPool(_)
            | Error::CommitOutcomeUnknown { .. }
            | Error::PgTransactionEnded { .. } => None,
        }
    }

    /// The PostgreSQL error inside, if any (also the one behind
    /// [`Error::CommitOutcomeUnknown`] and a pool's backend error).
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Postgres(e) | Error::CommitOutcomeUnknown { source: e } => Some(e),
            Error::PgPool(deadpool_postgres::PoolError::Backend(e)) => Some(e),
            _ => None,
        }
    }

    /// SQLite's extended result code, if this error came from SQLite.
    pub fn extended_code(&self) -> Option<i32> {
        match self.sqlite()? {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
            _ => None,
        }
    }
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl Retryable for Error {
    fn busy_code(&self) -> Option<BusyCode> {
        match self {
            // The outcome is unknown: running the transaction again could apply it twice.
            #[cfg(feature = "postgres")]
            Error::CommitOutcomeUnknown { .. } => None,
            #[cfg(feature = "postgres")]
            Error::Postgres(e) | Error::PgPool(deadpool_postgres::PoolError::Backend(e)) => {
                e.busy_code()
            }
            _ => self.sqlite().and_then(Retryable::busy_code),
        }
    }
}
