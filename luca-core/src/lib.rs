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

/// Rewrites a struct with named fields so that each field lives behind its own guard and
/// can only be reached through generated accessors that take sync closures: no code can
/// touch the data without its lock, and no lock can be held across an `.await`.
///
/// For a plain field `hosts: T`: `hosts()` (a clone, when `T: Clone`),
/// `with_hosts(|&T| …)`, `update_hosts(|&mut T| …)` and `set_hosts(T) -> T` (the old
/// value). Field options:
///
/// - `#[shared(counter)]` on an integer field: an atomic. `requests()`,
///   `add_requests(n)` and `incr_requests()` (both return the new value, wrapping on
///   overflow), `set_requests(n)` (returns the old value).
/// - `#[shared(read_mostly)]`: an `arc_swap::ArcSwap`. `config() -> Arc<T>` and
///   `with_config(|&T| …)` never lock; `set_config(T)` swaps in a new value (returning
///   the old one); `update_config(|&T| -> T)` is a read-copy-update whose closure **may
///   run more than once** when writers race. `with_config` is the fast read: while the
///   value is unchanged it does no atomic read-modify-write at all, because each thread
///   keeps the last value it read (until it reads the field again or exits), whereas
///   `config()` clones an `Arc`, an atomic increment on a count every reader shares.
///
/// Also generated: `new(…)` taking every field in declaration order; `update(|fields| …)`
/// running a closure over a `<Name>Fields<'_>` view with every lock-guarded field locked
/// at once (locks are taken in declaration order, so two of them never deadlock);
/// `poison_count()`; `Default` when every field type has one; a `Debug` that never blocks
/// (a field whose lock is held prints as `<locked>`). `#[shared_state(global)]` adds
/// `Name::global() -> &'static Name`, built with `Default` on first use, exactly once.
/// `#[shared_state(crate = "path")]` names `luca_core` when it is re-exported under
/// another path. Visibility, generics and doc comments of the struct and of each field are
/// kept (a field's docs are carried to its accessors).
///
/// A closure that panics does not brick its field: the value is kept as the closure left
/// it and the recovery is counted in `poison_count()`. Calling an accessor of a field from
/// inside a closure that holds that same field's lock panics with a message naming the
/// struct and field, instead of deadlocking.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use luca_core::shared_state;
///
/// #[derive(Debug, Default, PartialEq)]
/// pub struct Limits { pub per_host: usize }
///
/// #[shared_state(global)]
/// pub struct RunState {
///     /// Failures seen per host.
///     pub failures: HashMap<String, u32>,
///     #[shared(counter)]
///     pub requests: u64,
///     #[shared(read_mostly)]
///     pub limits: Limits,
/// }
///
/// let state = RunState::global();
/// state.update_failures(|f| *f.entry("example.org".into()).or_insert(0) += 1);
/// assert_eq!(state.with_failures(|f| f["example.org"]), 1);
/// assert_eq!(state.incr_requests(), 1);
/// assert_eq!(state.add_requests(9), 10);
/// state.set_limits(Limits { per_host: 4 });
/// let limits: Arc<Limits> = state.limits();
/// assert_eq!(limits.per_host, 4);
/// state.update_limits(|l| Limits { per_host: l.per_host * 2 });
/// assert_eq!(state.with_limits(|l| l.per_host), 8);
///
/// // Several fields changed together, under all their locks.
/// state.update(|fields| fields.failures.clear());
/// assert!(state.failures().is_empty());
/// assert!(format!("{state:?}").starts_with("RunState { failures: {}, requests: 10"));
/// ```
pub use luca_macros::shared_state;

pub use rusqlite;

/// The workspace README's code blocks, compiled and run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
