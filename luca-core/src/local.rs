//! Thread-local connection reuse for threaded (non-async) code.
//!
//! [`with_connection`] hands the closure the same [`Connection`] every time the same thread
//! asks for the same file, opened once with luca's PRAGMAs ([`crate::pragmas`]): busy_timeout
//! 30 s, WAL (checked), `synchronous=NORMAL`, `foreign_keys=ON`. Connections live until the
//! thread exits or [`cleanup_connections`] closes them.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.db");
//! use luca_core::local::with_connection;
//!
//! with_connection(&path, |conn| {
//!     conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")?;
//!     conn.execute("INSERT INTO t VALUES (1)", [])?;
//!     Ok(())
//! })?;
//! let mode: String = with_connection(&path, |conn| {
//!     Ok(conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
//! })?;
//! assert_eq!(mode, "wal");
//! # luca_core::local::cleanup_connections();
//! # Ok::<(), luca_core::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rusqlite::Connection;

use crate::pragmas::{self, Pragmas};
use crate::{Error, Result};

thread_local! {
    static CONNECTIONS: RefCell<HashMap<PathBuf, Rc<Connection>>> = RefCell::new(HashMap::new());
}

/// The cache key of a database path: its directory resolved (symlinks, `..`) when it
/// exists, so two spellings of one file share a connection.
fn key(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|_| Error::InvalidPath {
        path: path.to_path_buf(),
        reason: "it cannot be made absolute",
    })?;
    let resolved = match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir.canonicalize().ok().map(|dir| dir.join(name)),
        _ => None,
    };
    Ok(resolved.unwrap_or(absolute))
}

/// Runs `f` with this thread's connection to `path`, opening and configuring it on first
/// use.
///
/// Nested calls for the same path (from inside `f`) get the same connection. Inside `f`,
/// `?` converts `rusqlite` errors; with `#[db_retry]` on the caller, a busy error retries
/// the whole call.
///
/// # Errors
/// Opening errors as in [`pragmas::open`], and whatever `f` returns.
pub fn with_connection<T, F>(path: impl AsRef<Path>, f: F) -> Result<T>
where
    F: FnOnce(&Connection) -> Result<T>,
{
    let conn = connection(path.as_ref())?;
    f(&conn)
}

fn connection(path: &Path) -> Result<Rc<Connection>> {
    let key = key(path)?;
    if let Some(conn) = CONNECTIONS.with_borrow(|m| m.get(&key).cloned()) {
        return Ok(conn);
    }
    let conn = Rc::new(pragmas::open(path, &Pragmas::new())?);
    CONNECTIONS.with_borrow_mut(|m| m.insert(key, Rc::clone(&conn)));
    Ok(conn)
}

/// Closes this thread's cached connections and returns how many there were.
///
/// A connection still in use by an enclosing [`with_connection`] closes when that closure
/// returns. Call this in long-running threads that touch many files, and before deleting
/// a database file.
pub fn cleanup_connections() -> usize {
    CONNECTIONS.with_borrow_mut(|m| {
        let n = m.len();
        m.clear();
        n
    })
}

/// How many connections this thread holds open.
pub fn open_connections() -> usize {
    CONNECTIONS.with_borrow(HashMap::len)
}
