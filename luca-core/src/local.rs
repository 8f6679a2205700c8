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
//!
//! # Transactions never outlive the call
//!
//! A closure may run `BEGIN … COMMIT` on the connection itself. When the **outermost**
//! `with_connection` call for a connection ends with a transaction still open, that
//! transaction is rolled back before the call returns, so the cached connection is never
//! handed on holding a lock:
//!
//! - the closure returned `Err` (an early `?` between `BEGIN` and `COMMIT`): rolled back,
//!   the closure's error is returned;
//! - the closure panicked: rolled back while the panic unwinds, and the panic goes on;
//! - the closure returned `Ok` without committing: rolled back, and the call returns
//!   [`Error::TransactionLeftOpen`] instead of the value, because the writes the closure
//!   made are not in the file.
//!
//! A nested call for the same connection (`with_connection` for the same file from inside
//! a closure) never rolls back: the transaction belongs to the outermost call, which may
//! commit it after the nested call returns. Only the outermost call cleans up. If the
//! rollback itself fails, the connection is dropped from the cache (closing it rolls the
//! transaction back) and the next call opens a fresh one.
//!
//! So `#[db_retry]` on a function that calls `with_connection` re-runs each attempt on a
//! connection outside any transaction: a busy error between `BEGIN` and `COMMIT` leaves
//! nothing behind.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rusqlite::Connection;

use crate::pragmas::{self, Pragmas};
use crate::{Error, Result};

/// One cached connection and how many `with_connection` calls on this thread use it now.
struct Cached {
    conn: Connection,
    depth: Cell<u32>,
}

thread_local! {
    static CONNECTIONS: RefCell<HashMap<PathBuf, Rc<Cached>>> = RefCell::new(HashMap::new());
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
/// When the outermost call for this connection ends (`f` returned or panicked) with a
/// transaction open, the transaction is rolled back: see the
/// [module documentation](self#transactions-never-outlive-the-call).
///
/// # Errors
/// Opening errors as in [`pragmas::open`], and whatever `f` returns. When `f` returns
/// `Ok` from the outermost call with a transaction still open, the transaction is rolled
/// back and [`Error::TransactionLeftOpen`] is returned instead.
pub fn with_connection<T, F>(path: impl AsRef<Path>, f: F) -> Result<T>
where
    F: FnOnce(&Connection) -> Result<T>,
{
    let (key, cached) = connection(path.as_ref())?;
    let guard = Use::enter(key, cached);
    let result = f(&guard.cached.conn);
    let left_open = guard.outermost() && !guard.cached.conn.is_autocommit();
    // Rolls back an open transaction when this is the outermost call, also on a panic.
    drop(guard);
    match result {
        Ok(_) if left_open => Err(Error::TransactionLeftOpen {
            path: path.as_ref().to_path_buf(),
        }),
        other => other,
    }
}

/// One `with_connection` call's use of a cached connection. The outermost use rolls back
/// a transaction the closure left open when it ends, whether the closure returned or
/// panicked.
struct Use {
    key: PathBuf,
    cached: Rc<Cached>,
}

impl Use {
    fn enter(key: PathBuf, cached: Rc<Cached>) -> Use {
        cached.depth.set(cached.depth.get() + 1);
        Use { key, cached }
    }

    fn outermost(&self) -> bool {
        self.cached.depth.get() == 1
    }
}

impl Drop for Use {
    fn drop(&mut self) {
        let outermost = self.outermost();
        self.cached.depth.set(self.cached.depth.get() - 1);
        if !outermost || self.cached.conn.is_autocommit() {
            return;
        }
        if self.cached.conn.execute_batch("ROLLBACK").is_ok() && self.cached.conn.is_autocommit() {
            return;
        }
        // The rollback failed: never hand this connection on. Closing it (when the last
        // `Rc` goes) rolls the transaction back.
        let _ = CONNECTIONS.try_with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&self.key)
                .is_some_and(|c| Rc::ptr_eq(c, &self.cached))
            {
                m.remove(&self.key);
            }
        });
    }
}

fn connection(path: &Path) -> Result<(PathBuf, Rc<Cached>)> {
    let key = key(path)?;
    if let Some(cached) = CONNECTIONS.with_borrow(|m| m.get(&key).cloned()) {
        return Ok((key, cached));
    }
    let cached = Rc::new(Cached {
        conn: pragmas::open(path, &Pragmas::new())?,
        depth: Cell::new(0),
    });
    CONNECTIONS.with_borrow_mut(|m| m.insert(key.clone(), Rc::clone(&cached)));
    Ok((key, cached))
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
