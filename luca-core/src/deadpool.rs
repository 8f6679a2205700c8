//! A [deadpool-sqlite](https://docs.rs/deadpool-sqlite) pool whose connections get luca's
//! settings (feature `deadpool-sqlite`).
//!
//! For programs that already run a deadpool-sqlite pool and want luca's connection
//! discipline without moving to [`Db`](crate::Db): every connection the pool creates gets,
//! through a `post_create` hook and in the order [`pragmas`] documents,
//! `busy_timeout` (30 s), `journal_mode=WAL` (checked), `synchronous=NORMAL`,
//! `foreign_keys=ON` and the WAL auto-checkpoint threshold. deadpool-sqlite's own types
//! are re-exported, so the versions always match.
//!
//! One more guard: deadpool-sqlite hands a connection back out as it was returned, so a
//! closure that left a transaction open (a `BEGIN` without `COMMIT`, an early `?` past a
//! manual `BEGIN`) would pass that transaction to the next user, whose writes would then
//! join it and never commit. Here a `pre_recycle` hook rolls such a transaction back when
//! the connection is next checked out (and drops the connection if that fails). deadpool
//! has no hook on return, so until then the connection keeps its locks: finish every
//! transaction inside the `interact` closure (rusqlite's `Transaction` rolls back on drop).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("crawl.db");
//! let pool = luca_core::deadpool::pool(&path)?;
//! let conn = pool.get().await?;
//! let mode: String = conn
//!     .interact(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
//!     .await
//!     .map_err(|e| e.to_string())??;
//! assert_eq!(mode, "wal");
//! # Ok(())
//! # }
//! ```
//!
//! # Retrying
//!
//! Every connection is a separate SQLite writer, so two writers can still collide: run
//! each transaction in a [`#[db_retry]`](crate::db_retry) `async fn`. Its error type may
//! be `Box<dyn Error>`, `anyhow::Error` or a thiserror enum with `#[error(transparent)]`
//! variants for [`PoolError`] and `rusqlite::Error`: a busy error is found through
//! `source()` — also inside [`PoolError::Backend`] and [`PoolError::PostCreateHook`] (a
//! new connection whose settings met a lock). Begin write transactions with
//! `BEGIN IMMEDIATE` (`TransactionBehavior::Immediate`): a `DEFERRED` transaction that
//! reads first and then writes gets `SQLITE_BUSY` at once, without waiting, when another
//! connection committed in between.
//!
//! # The pool or [`Db`](crate::Db)?
//!
//! The pool is enough when writes are rare or come from a handful of tasks: each waits for
//! SQLite's write lock in its busy handler (polling with sleeps), and `#[db_retry]` covers
//! the rest. [`Db`](crate::Db) is worth it when many tasks write at once: its single
//! writer thread queues writes fairly in arrival order and commits them in groups (one
//! fsync for many writes), so it does not poll for a lock at all. In this repository's
//! `Db` benchmark (`bash bench/run.sh`; BENCHMARKS.md, the write-path tables), with 64
//! writers inserting, `Db::open` did 246 649 ops/s against this pool's 16 228 (15×) with a
//! p99.9 of 1.6 ms against 22 ms; with one writer 40 963 against 13 053 ops/s (3×: the pool
//! checks each connection out with a `SELECT` and hops through `spawn_blocking`). Moving
//! from the pool to `Db`: replace `pool.get().await?.interact(|c| …)` by
//! `db.write(|tx| …)` for writes (the closure gets a transaction, without `BEGIN`/`COMMIT`)
//! and `db.read(|c| …)` for reads; the file and its settings stay the same.
//!
//! deadpool-sqlite checks every connection on checkout with a `SELECT`; that cost stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use deadpool_sqlite::{
    BuildError, Config, CreatePoolError, Hook, HookError, InteractError, Manager, Metrics, Object,
    Pool, PoolConfig, PoolError, QueueMode, Runtime, Status, TimeoutType, Timeouts,
};

use crate::pragmas::{self, Pragmas, Synchronous};
use crate::{Error, Result};

/// A pool with luca's settings: as [`PoolBuilder::build`] with the defaults.
///
/// # Errors
/// As [`PoolBuilder::build`].
pub fn pool(path: impl AsRef<Path>) -> Result<Pool> {
    builder(path).build()
}

/// A builder for a pool at `path`.
pub fn builder(path: impl AsRef<Path>) -> PoolBuilder {
    PoolBuilder {
        path: path.as_ref().to_path_buf(),
        size: None,
        pragmas: Pragmas::new(),
        wal_autocheckpoint: PoolBuilder::DEFAULT_WAL_AUTOCHECKPOINT,
        wait_timeout: None,
    }
}

/// Settings of a deadpool-sqlite pool with luca's connection settings.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    path: PathBuf,
    size: Option<usize>,
    pragmas: Pragmas,
    wal_autocheckpoint: u32,
    wait_timeout: Option<Duration>,
}

impl PoolBuilder {
    /// SQLite's own default WAL auto-checkpoint threshold, in pages.
    pub const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 1000;
    /// The largest pool size accepted (as [`DbBuilder::MAX_READERS`](crate::DbBuilder::MAX_READERS)).
    pub const MAX_SIZE: usize = 1024;

    /// Most connections open at once (default: deadpool's, four per CPU).
    pub fn size(mut self, n: usize) -> Self {
        self.size = Some(n);
        self
    }

    /// How long SQLite's busy handler waits for a lock (default 30 s; at most
    /// `i32::MAX` ms).
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.pragmas = self.pragmas.with_busy_timeout(d);
        self
    }

    /// Durability level (default `NORMAL`).
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.pragmas = self.pragmas.with_synchronous(s);
        self
    }

    /// Enforce foreign keys (default on).
    pub fn foreign_keys(mut self, on: bool) -> Self {
        self.pragmas = self.pragmas.with_foreign_keys(on);
        self
    }

    /// SQLite's WAL auto-checkpoint threshold in pages (default 1000; `0` turns automatic
    /// checkpoints off). Unlike [`Db`](crate::Db), which checkpoints on a background
    /// connection, the pool leaves checkpoints to SQLite: the commit that crosses the
    /// threshold runs one.
    pub fn wal_autocheckpoint(mut self, pages: u32) -> Self {
        self.wal_autocheckpoint = pages;
        self
    }

    /// How long `Pool::get` waits for a free connection before
    /// [`PoolError::Timeout`] (default: as long as it takes).
    pub fn wait_timeout(mut self, d: Option<Duration>) -> Self {
        self.wait_timeout = d;
        self
    }

    /// Builds the pool. Connections are opened on demand; each gets the settings as it is
    /// created, and a connection whose settings fail (a file that is not a database, or
    /// cannot be WAL) is refused: `Pool::get` returns [`PoolError::PostCreateHook`].
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for an empty path or a directory; [`Error::InvalidSetting`]
    /// for a size of 0 or above [`PoolBuilder::MAX_SIZE`], or a `busy_timeout` longer than
    /// SQLite can wait; [`Error::Pool`] when deadpool refuses the configuration.
    pub fn build(self) -> Result<Pool> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::InvalidPath {
                path: self.path,
                reason: "the path is empty",
            });
        }
        if self.path.is_dir() {
            return Err(Error::InvalidPath {
                path: self.path,
                reason: "it is a directory",
            });
        }
        if let Some(n) = self.size
            && (n == 0 || n > Self::MAX_SIZE)
        {
            return Err(Error::InvalidSetting {
                setting: "size",
                reason: format!("{n} connections: the size must be 1..={}", Self::MAX_SIZE),
            });
        }
        if pragmas::busy_timeout_ms(self.pragmas.busy_timeout).is_none() {
            return Err(Error::InvalidSetting {
                setting: "busy_timeout",
                reason: format!(
                    "{:?} is longer than SQLite can wait ({} ms at most)",
                    self.pragmas.busy_timeout,
                    i32::MAX
                ),
            });
        }
        let mut pool_config = PoolConfig::default();
        if let Some(n) = self.size {
            pool_config.max_size = n;
        }
        pool_config.timeouts.wait = self.wait_timeout;
        let config = Config {
            path: self.path.clone(),
            pool: Some(pool_config),
        };
        let settings = self.pragmas;
        let checkpoint = self.wal_autocheckpoint;
        let hook = Hook::async_fn(move |conn, _| {
            Box::pin(async move {
                conn.interact(move |c| configure(c, &settings, checkpoint))
                    .await
                    .map_err(|e| HookError::message(format!("configuring a connection: {e}")))?
            })
        });
        let roll_back_leftovers = Hook::async_fn(|conn, _| {
            Box::pin(async move {
                conn.interact(|c| {
                    if c.is_autocommit() {
                        Ok(())
                    } else {
                        c.execute_batch("ROLLBACK").map_err(HookError::Backend)
                    }
                })
                .await
                .map_err(|e| HookError::message(format!("checking a returned connection: {e}")))?
            })
        });
        let path = self.path;
        let builder = match config.builder(Runtime::Tokio1) {
            Ok(builder) => builder,
            Err(never) => match never {},
        };
        builder
            .post_create(hook)
            .pre_recycle(roll_back_leftovers)
            .build()
            .map_err(|e| Error::Pool {
                path,
                reason: e.to_string(),
            })
    }
}

/// The `post_create` hook's work: luca's PRAGMAs in order, then the checkpoint threshold.
/// A SQLite error stays a `Backend` error (so a busy one is retryable); the others are
/// messages.
fn configure(
    conn: &mut rusqlite::Connection,
    settings: &Pragmas,
    checkpoint: u32,
) -> std::result::Result<(), HookError> {
    match pragmas::apply(conn, settings) {
        Ok(()) => {}
        Err(Error::Sqlite(e) | Error::Open { source: e, .. }) => return Err(HookError::Backend(e)),
        Err(other) => return Err(HookError::message(other.to_string())),
    }
    conn.pragma_update(None, "wal_autocheckpoint", checkpoint)
        .map_err(HookError::Backend)
}
