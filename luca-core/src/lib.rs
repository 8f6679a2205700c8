#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod db;
mod error;
pub mod local;
pub mod metrics;
pub mod pragmas;
pub mod retry;
mod shared;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use db::{Db, DbBuilder, DbStats};
pub use error::{Error, Result};
pub use metrics::metrics;

/// Retries a function as a whole when it fails with a SQLite busy/locked error.
///
/// See the [crate documentation](crate) and [`retry`] for the schedule. Arguments (all
/// optional): `max_retries = 5`, `delay_ms = 100`, `max_delay_ms = 30000`,
/// `jitter = "full" | "equal" | "decorrelated" | "none"`, `deadline_ms`,
/// `on_retry = path::to::hook` (a `fn(&luca_core::retry::RetryEvent)`), and
/// `crate = "path"` when `luca_core` is re-exported under another name.
///
/// ```
/// use luca_core::db_retry;
/// use luca_core::rusqlite::Connection;
///
/// #[db_retry(max_retries = 3, delay_ms = 10, jitter = "equal")]
/// fn bump(conn: &Connection, id: i64) -> luca_core::Result<i64> {
///     conn.execute("UPDATE counters SET n = n + 1 WHERE id = ?1", [id])?;
///     Ok(conn.query_row("SELECT n FROM counters WHERE id = ?1", [id], |r| r.get(0))?)
/// }
///
/// let conn = Connection::open_in_memory()?;
/// conn.execute_batch("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER);
///                     INSERT INTO counters VALUES (1, 41);")?;
/// assert_eq!(bump(&conn, 1)?, 42);
/// # Ok::<(), luca_core::Error>(())
/// ```
pub use luca_macros::db_retry;

pub use rusqlite;
