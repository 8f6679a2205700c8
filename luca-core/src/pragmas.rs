//! The connection settings every luca connection gets, applied in the order that works.
//!
//! 1. `busy_timeout` first: switching to WAL needs a lock, and without a timeout that
//!    switch fails at once when another connection holds one.
//! 2. `journal_mode=WAL`, read back and checked: SQLite silently keeps another mode
//!    (`memory` for `:memory:`, `delete` on some file systems) instead of failing.
//! 3. `synchronous=NORMAL`: in WAL mode always consistent and durable across a process
//!    crash; only checkpoints fsync.
//! 4. `foreign_keys=ON`.
//! 5. `query_only=ON` for connections that must never write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::{Error, Result};

/// `synchronous` levels (see SQLite's `PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// No syncs at all: a power loss can corrupt the database.
    Off,
    /// WAL default for luca: consistent always, durable across process crashes.
    #[default]
    Normal,
    /// Sync the WAL on every commit: durable across power loss.
    Full,
    /// `FULL` plus a directory sync in rollback-journal modes.
    Extra,
}

impl Synchronous {
    /// The PRAGMA value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// The settings [`apply`] writes to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Pragmas {
    /// How long SQLite's own busy handler waits for another process's lock (default 30 s).
    pub busy_timeout: Duration,
    /// Durability level (default `NORMAL`).
    pub synchronous: Synchronous,
    /// Enforce foreign keys (default on).
    pub foreign_keys: bool,
    /// Refuse every write on this connection (default off).
    pub query_only: bool,
}

impl Default for Pragmas {
    fn default() -> Self {
        Pragmas::new()
    }
}

impl Pragmas {
    /// Default `busy_timeout`: 30 s.
    pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

    /// busy_timeout 30 s, `synchronous=NORMAL`, foreign keys on, writable.
    pub const fn new() -> Self {
        Pragmas {
            busy_timeout: Self::DEFAULT_BUSY_TIMEOUT,
            synchronous: Synchronous::Normal,
            foreign_keys: true,
            query_only: false,
        }
    }

    /// Sets `busy_timeout`.
    pub const fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// Sets `synchronous`.
    pub const fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets `foreign_keys`.
    pub const fn with_foreign_keys(mut self, on: bool) -> Self {
        self.foreign_keys = on;
        self
    }

    /// Sets `query_only`.
    pub const fn with_query_only(mut self, on: bool) -> Self {
        self.query_only = on;
        self
    }
}

/// `busy_timeout` in the whole milliseconds SQLite takes, or `None` when it does not fit
/// (SQLite's limit is `i32::MAX` ms).
pub(crate) fn busy_timeout_ms(d: Duration) -> Option<i32> {
    i32::try_from(d.as_millis()).ok()
}

/// Applies `pragmas` to `conn` in the documented order and checks that WAL took effect.
///
/// # Errors
/// [`Error::NotWal`] when SQLite keeps another journal mode; [`Error::Open`] when a
/// PRAGMA fails (for example a file that is not a database);
/// [`Error::InvalidSetting`] for a `busy_timeout` longer than SQLite can wait.
pub fn apply(conn: &Connection, pragmas: &Pragmas) -> Result<()> {
    // SQLite names an in-memory or temporary database with an empty path.
    let path = || PathBuf::from(conn.path().filter(|p| !p.is_empty()).unwrap_or(":memory:"));
    let open_err = |source| Error::Open {
        path: path(),
        source,
    };
    let Some(ms) = busy_timeout_ms(pragmas.busy_timeout) else {
        return Err(Error::InvalidSetting {
            setting: "busy_timeout",
            reason: format!(
                "{:?} is longer than SQLite can wait ({} ms at most)",
                pragmas.busy_timeout,
                i32::MAX
            ),
        });
    };
    conn.pragma_update(None, "busy_timeout", ms)
        .map_err(open_err)?;
    // A query-only connection cannot switch modes; it checks that the file is WAL.
    let sql = if pragmas.query_only {
        "PRAGMA journal_mode"
    } else {
        "PRAGMA journal_mode=WAL"
    };
    let mode: String = conn.query_row(sql, [], |r| r.get(0)).map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotWal { path: path(), mode });
    }
    conn.pragma_update(None, "synchronous", pragmas.synchronous.as_str())
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", pragmas.foreign_keys)
        .map_err(open_err)?;
    if pragmas.query_only {
        conn.pragma_update(None, "query_only", true)
            .map_err(open_err)?;
    }
    Ok(())
}

/// Opens `path` (creating it if missing) and applies `pragmas`.
///
/// # Errors
/// [`Error::InvalidPath`] for an empty path or a directory, [`Error::Open`] when SQLite
/// cannot open or read the file, [`Error::NotWal`] as in [`apply`].
pub fn open(path: &Path, pragmas: &Pragmas) -> Result<Connection> {
    let conn = open_unconfigured(path)?;
    apply(&conn, pragmas)?;
    Ok(conn)
}

/// Opens an existing `path` read-only and applies `pragmas` (which should say
/// `query_only`): whatever runs on it, SQLite refuses every write.
pub(crate) fn open_read_only(path: &Path, pragmas: &Pragmas) -> Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    apply(&conn, pragmas)?;
    Ok(conn)
}

/// Opens `path` (creating it if missing) with SQLite's defaults, after checking that the
/// path can name a database file.
pub(crate) fn open_unconfigured(path: &Path) -> Result<Connection> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidPath {
            path: path.to_path_buf(),
            reason: "the path is empty",
        });
    }
    if path.is_dir() {
        return Err(Error::InvalidPath {
            path: path.to_path_buf(),
            reason: "it is a directory",
        });
    }
    Connection::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}
