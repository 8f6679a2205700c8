//! `PgDb`: a deadpool-postgres pool whose writes retry whole transactions.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::{IsolationLevel, NoTls};

use crate::error::panic_message;
use crate::retry::{BusyCode, RetryPolicy, Retryable, Schedule};
use crate::{Error, Result};

/// The marker a transaction sets when it starts and [`PgDb`] checks before `COMMIT`: a
/// closure that ended the transaction itself (`COMMIT`, `ROLLBACK`) loses it.
const MARK: &str = "SET LOCAL luca.pgdb_tx = 'on'";
const CHECK_MARK: &str = "SELECT current_setting('luca.pgdb_tx', true) IS NOT DISTINCT FROM 'on'";

/// Builds a [`PgDb`]; see [`PgDb::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PgDbBuilder {
    url: String,
    max_connections: usize,
    pool_wait_timeout: Option<Duration>,
    policy: RetryPolicy,
    write_isolation: IsolationLevel,
}

impl PgDbBuilder {
    /// Default number of pooled connections: 16.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
    /// Default wait for a free connection: 30 s.
    pub const DEFAULT_POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default retry policy of writes: 10 retries from 5 ms (capped at 1 s), full jitter.
    /// Serialization failures are frequent under contention and cheap to retry.
    pub const DEFAULT_RETRY_POLICY: RetryPolicy = RetryPolicy::new()
        .with_max_retries(10)
        .with_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_secs(1));

    /// Most connections the pool opens (at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How long `read` and `write` wait for a free connection before failing with
    /// [`Error::PgPool`]; `None` waits without limit.
    pub fn pool_wait_timeout(mut self, d: Option<Duration>) -> Self {
        self.pool_wait_timeout = d;
        self
    }

    /// The schedule on which `read` and `write` run a transaction again after a
    /// serialization failure or deadlock (and `55P03` when the policy opts in).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The isolation level of `write` transactions: SERIALIZABLE by default, under which
    /// every committed set of transactions behaves as if they ran one at a time (the
    /// conflicts that would break that fail with `40001`, and are retried).
    pub fn write_isolation(mut self, level: IsolationLevel) -> Self {
        self.write_isolation = level;
        self
    }

    /// Builds the pool and opens one connection, so a wrong URL or an unreachable server
    /// fails here rather than at the first `read` or `write`.
    pub async fn build(self) -> Result<PgDb> {
        let config =
            tokio_postgres::Config::from_str(&self.url).map_err(|e| Error::InvalidSetting {
                setting: "url",
                reason: e.to_string(),
            })?;
        if self.max_connections == 0 {
            return Err(Error::InvalidSetting {
                setting: "max_connections",
                reason: "must be at least 1".into(),
            });
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.max_connections)
            .wait_timeout(self.pool_wait_timeout)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::InvalidSetting {
                setting: "pool",
                reason: e.to_string(),
            })?;
        drop(pool.get().await.map_err(Error::PgPool)?);
        Ok(PgDb {
            inner: Arc::new(Inner {
                pool,
                policy: self.policy,
                write_isolation: self.write_isolation,
                stats: Stats::default(),
            }),
        })
    }
}

/// A PostgreSQL connection pool whose `write`s run whole transactions again after a
/// serialization failure (`40001`) or deadlock (`40P01`), as [`Db`](crate::Db) does for
/// SQLite's busy errors.
///
/// - [`PgDb::write`] runs an async closure in a transaction at SERIALIZABLE (configurable
///   with [`PgDbBuilder::write_isolation`]) and commits it. On `40001` / `40P01` (from any
///   statement or from `COMMIT` itself) the transaction is rolled back and the **whole
///   closure** runs again on the [`RetryPolicy`]: it must derive everything it writes
///   from what it reads in that attempt.
/// - [`PgDb::read`] runs a closure in a `READ ONLY`, REPEATABLE READ transaction (one
///   consistent snapshot), on the same retry policy.
/// - A connection lost while `COMMIT` was in flight is **not** retried: nobody can tell
///   whether the transaction committed, and running it again could apply it twice. The
///   caller gets [`Error::CommitOutcomeUnknown`].
/// - A closure that ends the transaction itself (`COMMIT`, `ROLLBACK`) gets
///   [`Error::PgTransactionEnded`] and is never retried; a closure that panics gets
///   [`Error::Panicked`] with its transaction rolled back; a `read`/`write` future dropped
///   mid-transaction rolls its transaction back (tokio-postgres queues the `ROLLBACK`
///   before the connection's next use).
///
/// Cloning is cheap: clones share the pool and the statistics.
///
/// A `write` or `read` future is `Send` (it can be `tokio::spawn`ed) when its closure is
/// an `async move` closure that owns what it captures (clone an `Arc` into it): rustc
/// cannot yet prove `Send` for the future of an async closure that borrows from its
/// surroundings. Awaited in place, any closure works.
///
/// ```no_run
/// # async fn demo(url: &str) -> luca_core::Result<()> {
/// use luca_core::postgres::PgDb;
///
/// let db = PgDb::connect(url).await?;
/// let balance: i64 = db
///     .write(async |tx| {
///         let row = tx.query_one("SELECT balance FROM accounts WHERE id = 1", &[]).await?;
///         let balance: i64 = row.get(0);
///         tx.execute("UPDATE accounts SET balance = $1 WHERE id = 1", &[&(balance + 10)])
///             .await?;
///         Ok(balance + 10)
///     })
///     .await?;
/// # let _ = balance; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgDb {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    policy: RetryPolicy,
    write_isolation: IsolationLevel,
    stats: Stats,
}

impl fmt::Debug for PgDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDb")
            .field("pool", &self.inner.pool.status())
            .field("policy", &self.inner.policy)
            .field("write_isolation", &self.inner.write_isolation)
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
}

impl PgDb {
    /// A builder for `url` (a `postgresql://…` URL or a `key=value` string, as
    /// `tokio_postgres::Config` parses them).
    pub fn builder(url: impl Into<String>) -> PgDbBuilder {
        PgDbBuilder {
            url: url.into(),
            max_connections: PgDbBuilder::DEFAULT_MAX_CONNECTIONS,
            pool_wait_timeout: Some(PgDbBuilder::DEFAULT_POOL_WAIT_TIMEOUT),
            policy: PgDbBuilder::DEFAULT_RETRY_POLICY,
            write_isolation: IsolationLevel::Serializable,
        }
    }

    /// [`PgDb::builder`] with the defaults, built.
    pub async fn connect(url: impl Into<String>) -> Result<PgDb> {
        PgDb::builder(url).build().await
    }

    /// The underlying pool, for what `read` and `write` do not cover (`LISTEN`, `COPY`,
    /// schema changes outside a transaction).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The retry policy of `read` and `write`.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.policy
    }

    /// Runs `f` in a transaction at the write isolation level (SERIALIZABLE unless
    /// configured otherwise) and commits it; after a serialization failure or deadlock,
    /// rolls back and runs `f` again, on the retry policy. See [`PgDb`].
    #[track_caller]
    pub fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T>>
    where
        F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
    {
        run(
            Arc::clone(&self.inner),
            Kind::Write,
            "PgDb::write",
            Location::caller(),
            f,
        )
    }

    /// Runs `f` in a `READ ONLY`, REPEATABLE READ transaction (one consistent snapshot);
    /// retried as [`PgDb::write`] is.
    #[track_caller]
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T>>
    where
        F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
    {
        run(
            Arc::clone(&self.inner),
            Kind::Read,
            "PgDb::read",
            Location::caller(),
            f,
        )
    }

    /// Counters of this pool's transactions.
    pub fn stats(&self) -> PgDbStats {
        let s = &self.inner.stats;
        let status = self.inner.pool.status();
        PgDbStats {
            writes_ok: s.writes_ok.load(Relaxed),
            writes_failed: s.writes_failed.load(Relaxed),
            reads: s.reads.load(Relaxed),
            retries: s.retries.load(Relaxed),
            busy_by_code: std::array::from_fn(|i| s.busy_by_code[i].load(Relaxed)),
            commit_outcome_unknown: s.commit_unknown.load(Relaxed),
            transactions_ended: s.ended.load(Relaxed),
            panics: s.panics.load(Relaxed),
            connections: status.size,
            idle_connections: status.available,
        }
    }
}

// `run` owns its `Arc<Inner>` and its schedule owns its policy: a reference held across
// the closure's await, next to the closure's (higher-ranked) future, keeps rustc from
// proving the future `Send`, and it could not be spawned.
async fn run<T, F>(
    inner: Arc<Inner>,
    kind: Kind,
    function: &'static str,
    location: &'static Location<'static>,
    mut f: F,
) -> Result<T>
where
    F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
{
    let policy = inner.policy;
    let mut schedule = Schedule::owned(policy, function, location, None);
    schedule.start(crate::__private::now_async);
    loop {
        let result = attempt(&inner.pool, inner.write_isolation, kind, &mut f).await;
        let err = match result {
            Ok(v) => {
                schedule.finish(true);
                match kind {
                    Kind::Read => inner.stats.reads.fetch_add(1, Relaxed),
                    Kind::Write => inner.stats.writes_ok.fetch_add(1, Relaxed),
                };
                return Ok(v);
            }
            Err(e) => e,
        };
        let code = err.busy_code();
        if let Some(code) = code.filter(|&c| policy.retries(c)) {
            inner.stats.busy(code);
        }
        if let Some(delay) = schedule.on_error(code, crate::__private::now_async) {
            inner.stats.retries.fetch_add(1, Relaxed);
            drop(err);
            crate::retry::sleep(delay).await;
            continue;
        }
        schedule.finish(false);
        let stats = &inner.stats;
        match &err {
            Error::CommitOutcomeUnknown { .. } => stats.commit_unknown.fetch_add(1, Relaxed),
            Error::PgTransactionEnded { .. } => stats.ended.fetch_add(1, Relaxed),
            Error::Panicked { .. } => stats.panics.fetch_add(1, Relaxed),
            _ => 0,
        };
        if let Kind::Write = kind {
            stats.writes_failed.fetch_add(1, Relaxed);
        }
        return Err(err);
    }
}

/// One transaction: take a connection, begin, run the closure, commit.
async fn attempt<T, F>(
    pool: &Pool,
    write_isolation: IsolationLevel,
    kind: Kind,
    f: &mut F,
) -> Result<T>
where
    F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
{
    let mut client = pool.get().await.map_err(Error::PgPool)?;
    let builder = client.build_transaction();
    let tx = match kind {
        Kind::Write => builder.isolation_level(write_isolation),
        Kind::Read => builder
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true),
    }
    .start()
    .await?;
    tx.batch_execute(MARK).await?;

    // The closure's future is boxed so that a panic in any of its polls can be caught
    // (a pinned box needs no pin projection).
    let mut fut: Pin<Box<_>> = Box::pin(f(&tx));
    let outcome = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await;
    drop(fut);

    match outcome {
        Err(payload) => {
            // A failed ROLLBACK leaves nothing to undo: the connection is gone, and the
            // server rolls back what it had.
            let _ = tx.rollback().await;
            Err(Error::Panicked {
                message: panic_message(&*payload),
            })
        }
        Ok(Err(e)) => {
            // Retrying is only safe while the failed statement ran inside this
            // transaction: a closure that ran COMMIT before it would have part of its
            // work applied already.
            if e.busy_code().is_some() && !still_ours(&tx).await {
                return Err(Error::PgTransactionEnded {
                    reason: "it ran a statement that failed with a retryable error after \
                             ending its transaction; it was not retried",
                });
            }
            let _ = tx.rollback().await;
            Err(e)
        }
        Ok(Ok(value)) => {
            if !still_ours(&tx).await {
                return Err(Error::PgTransactionEnded {
                    reason: "it returned `Ok` after ending its transaction",
                });
            }
            match tx.commit().await {
                Ok(()) => Ok(value),
                // The server answered: the transaction did not commit (a `40001` here is
                // retried like any other).
                Err(e) if e.as_db_error().is_some() => Err(Error::Postgres(e)),
                Err(e) => Err(Error::CommitOutcomeUnknown { source: e }),
            }
        }
    }
}

/// Whether the connection is still inside the transaction [`PgDb`] began: its marker is
/// set, or the transaction is aborted (`25P02`: only a transaction can be).
async fn still_ours(tx: &Transaction<'_>) -> bool {
    match tx.query_one(CHECK_MARK, &[]).await {
        Ok(row) => row.try_get::<_, bool>(0).unwrap_or(false),
        Err(e) => e.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION),
    }
}

#[derive(Default)]
struct Stats {
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
    reads: AtomicU64,
    retries: AtomicU64,
    busy_by_code: [AtomicU64; BusyCode::COUNT],
    commit_unknown: AtomicU64,
    ended: AtomicU64,
    panics: AtomicU64,
}

impl Stats {
    fn busy(&self, code: BusyCode) {
        self.busy_by_code[code.index()].fetch_add(1, Relaxed);
    }
}

/// A snapshot of a [`PgDb`]'s counters, from [`PgDb::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgDbStats {
    /// Writes committed.
    pub writes_ok: u64,
    /// Writes that returned an error (after any retries).
    pub writes_failed: u64,
    /// Reads that succeeded.
    pub reads: u64,
    /// Transactions run again after a retryable error.
    pub retries: u64,
    /// Attempts that failed with a retryable error, by code; index with
    /// [`BusyCode::index`].
    pub busy_by_code: [u64; BusyCode::COUNT],
    /// Writes that failed with [`Error::CommitOutcomeUnknown`].
    pub commit_outcome_unknown: u64,
    /// Calls that failed with [`Error::PgTransactionEnded`].
    pub transactions_ended: u64,
    /// Closures that panicked.
    pub panics: u64,
    /// Connections the pool holds now.
    pub connections: usize,
    /// Of those, the ones not in use.
    pub idle_connections: usize,
}

impl PgDbStats {
    /// Retryable errors met, every code.
    pub fn busy_total(&self) -> u64 {
        self.busy_by_code.iter().sum()
    }
}

impl fmt::Display for PgDbStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "writes ok {} failed {} | reads {} | retries {} | commit outcome unknown {} | \
             transactions ended by the closure {} | panics {} | connections {} ({} idle)",
            self.writes_ok,
            self.writes_failed,
            self.reads,
            self.retries,
            self.commit_outcome_unknown,
            self.transactions_ended,
            self.panics,
            self.connections,
            self.idle_connections
        )?;
        for code in BusyCode::ALL {
            let n = self.busy_by_code[code.index()];
            if n != 0 {
                writeln!(f, "  {:<26} {n}", code.to_string())?;
            }
        }
        Ok(())
    }
}
