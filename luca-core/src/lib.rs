#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod db;
#[cfg(feature = "deadpool-sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool-sqlite")))]
pub mod deadpool;
mod error;
pub mod local;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod pragmas;
pub mod retry;
mod shared;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use db::{Db, DbBuilder, DbStats};
pub use error::{Error, Result};
pub use metrics::metrics;

/// Retries a function as a whole when it fails with a SQLite busy/locked error or (feature
/// `postgres`) a PostgreSQL serialization failure (`40001`) or deadlock (`40P01`).
///
/// See the [crate documentation](crate) and [`retry`] for the schedule. Arguments (all
/// optional): `max_retries = 5`, `delay_ms = 100`, `max_delay_ms = 30000`,
/// `jitter = "full" | "equal" | "decorrelated" | "none"`, `deadline_ms`,
/// `lock_not_available = true` (also retry PostgreSQL's `55P03` lock_not_available, a
/// failed `NOWAIT` or `lock_timeout` lock request: see
/// [`RetryPolicy::with_lock_not_available`](retry::RetryPolicy::with_lock_not_available);
/// off by default), `on_retry = path::to::hook` (a `fn(&luca_core::retry::RetryEvent)`),
/// and `crate = "path"` when `luca_core` is re-exported under another name.
///
/// # Rules
///
/// - **One attempt is the whole body, and it may run again.** So the body must not
///   consume a by-value argument (clone it, or take it by reference), cannot return a
///   `&mut` borrow of an argument, and no parameter may be a `mut` binding
///   (`mut rows: Vec<Row>`, `mut self`): what a failed attempt changed in it would carry
///   over into the next one (a drained vector would be retried empty and report success).
///   Each is a compile error; take the argument by reference, or remove `mut` and clone
///   it inside the body (`let mut rows = rows.clone();`).
/// - **Any executor.** An `async fn` sleeps between attempts on tokio's timer when it
///   runs inside a tokio runtime (paused-clock tests see the schedule exactly; the
///   runtime needs its timer enabled, as for any `tokio::time::sleep`), and on a
///   runtime-neutral timer under any other executor (`futures::executor::block_on`,
///   smol, …): one background thread, started at the first such sleep. Its future is
///   `Send` whenever the function's would be without the attribute.
/// - **Errors.** The error type may implement [`retry::Retryable`] or be an
///   `Error + 'static` whose `source()` chain holds a `rusqlite::Error` or the
///   `rusqlite::ffi::Error` inside one — thiserror's `#[error(transparent)]` forwards
///   `source()` to the latter — also inside `Box<dyn Error>` and `anyhow::Error`; with the
///   `postgres` feature, likewise a `tokio_postgres::Error` or the `DbError` inside one.
/// - **Order with other attributes.** Write `#[db_retry]` above `#[tracing::instrument]`:
///   it keeps `#[instrument]` on the function it generates, so one span covers the whole
///   call, retries included. Below it, `#[instrument]` would rewrite the body first: each
///   attempt would get its own span, and its `async move` would move by-value arguments
///   into the first attempt. `#[async_trait]` turns each `async fn` into a function
///   returning a boxed future before `#[db_retry]` sees it, which is rejected: put
///   `#[db_retry]` on an inherent or free `async fn` and call it from the trait method,
///   or use a native `async fn` in the trait, on which `#[db_retry]` works as on any
///   method.
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
/// Also generated: `new(…)` taking every field in declaration order, with the narrowest
/// visibility of the fields (a `pub` struct with a private field gets a private `new`:
/// code that may not name a field may not set it either); `update(|fields| …)` running a
/// closure over a `<Name>Fields<'_>` view with every lock-guarded field locked at once
/// (locks are taken in declaration order); `poison_count()`. `Debug` and `Default` are
/// generated only when asked for with `#[derive(Debug)]` / `#[derive(Default)]` on the
/// struct: the macro takes those derives over, `Default` building every field with its
/// type's `Default`, and `Debug` never blocking (a field whose lock is held prints as
/// `<locked>`); either holds when the fields' types have the trait. Other derives
/// (`Clone`, `PartialEq`, …) are refused: the fields are behind locks.
/// `#[shared_state(global)]` adds `Name::global() -> &'static Name`, built on first use,
/// exactly once, with every field set to its type's `Default` (the struct needs no
/// `#[derive(Default)]` for it). `#[shared_state(crate = "path")]` names `luca_core` when
/// it is re-exported under another path. Visibility, generics and doc comments of the
/// struct and of each field are kept (a field's docs are carried to its accessors), and a
/// field's `#[cfg(…)]` goes with everything generated for it (its accessors, `new`
/// parameter, `Debug` line, view member), so a field can depend on a feature;
/// `#[cfg_attr(…)]` stays on the stored field only.
///
/// A closure that panics does not brick its field: the value is kept as the closure left
/// it and the recovery is counted in `poison_count()`.
///
/// # Lock order: nested accessors cannot deadlock
///
/// Accessors may be nested (one called from inside another's closure) only **in
/// declaration order**: while a closure holds the lock of a field, it may lock the fields
/// declared after it, not those declared before it nor the same one. The rule is checked
/// on every nested call, before any waiting, and not only when two threads happen to
/// collide: breaking it panics at once, naming both fields, e.g. "lock order:
/// `RunState::failures` is held while `RunState::hosts` is locked; nest accessors in
/// declaration order (`hosts` before `failures`) or use `update(|fields| …)`". Since every
/// thread then takes the locks of a struct in one order, no two threads can each hold a
/// lock the other waits for. Specifically:
///
/// - re-entering a field from its own closure (which would wait for itself) panics too,
///   naming the field; so does calling a field's accessor inside `update(|fields| …)`
///   (use the view it receives);
/// - the order is per struct *type*: with two values `a` and `b` of one struct, `a.x`
///   inside `b.y` follows the same rule as inside `a.y`, and the same field of two values
///   cannot be nested at all (nothing orders the values; copy one value out first); all
///   instantiations of a generic struct count as one type;
/// - `#[shared(counter)]` and `#[shared(read_mostly)]` fields hold no lock and take no
///   part: they can be used anywhere, in any order (a read-mostly field written from inside
///   its own `update_` closure still panics, as that update would retry forever);
/// - locks of two *different* `#[shared_state]` structs are not ordered against each other:
///   a program that nests them must keep one order itself.
///
/// Accessors that can panic are `#[track_caller]`, so the panic points at the caller's
/// line.
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
/// #[derive(Debug)]
/// pub struct RunState {
///     /// Hosts contacted, in order.
///     pub hosts: Vec<String>,
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
/// // Nested in declaration order (`hosts` before `failures`): fine.
/// let seen = state.with_hosts(|h| state.with_failures(|f| h.len() + f.len()));
/// assert_eq!(seen, 1);
/// // Against it: panics at once, whether or not another thread is around.
/// let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
///     state.with_failures(|_| state.hosts())
/// }));
/// assert!(refused.is_err());
///
/// // Several fields changed together, under all their locks.
/// state.update(|fields| {
///     fields.hosts.push("example.org".into());
///     fields.failures.clear();
/// });
/// assert!(state.failures().is_empty());
/// assert!(format!("{state:?}").starts_with("RunState { hosts: [\"example.org\"], failures: {}, requests: 10"));
/// ```
pub use luca_macros::shared_state;

pub use rusqlite;

/// The workspace README's code blocks, compiled and run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
