//! [`Db`]: a WAL connection pool for many concurrent tasks, with one fair write path and
//! group commit.
//!
//! Reads run on a bounded pool of read-only connections (deadpool's managed pool; no
//! round trip to SQLite on checkout). Writes go through one FIFO queue to one writer
//! thread that owns the write connection: inside one process, writers never fight over
//! SQLite's file lock, so the busy handler only ever waits on other processes. While
//! writes are queued, the writer commits them together: one `BEGIN IMMEDIATE … COMMIT`,
//! each caller's closure in its own `SAVEPOINT` (adaptive group commit; a lone writer
//! commits alone). A caller is answered only after the shared `COMMIT` succeeded. When
//! the path is idle and no other write is under way, a short write runs on the caller's
//! thread instead, skipping the hop to the writer thread and back
//! ([`DbBuilder::inline_limit`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> luca_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("jobs.db");
//! use luca_core::Db;
//!
//! let db = Db::open(&path).await?;
//! db.write(|conn| {
//!     conn.execute_batch("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, url TEXT)")?;
//!     Ok(())
//! })
//! .await?;
//! let id = db
//!     .write(|conn| {
//!         conn.execute("INSERT INTO jobs (url) VALUES (?1)", ["https://example.org/"])?;
//!         Ok(conn.last_insert_rowid())
//!     })
//!     .await?;
//! let url: String = db
//!     .read(move |conn| Ok(conn.query_row("SELECT url FROM jobs WHERE id = ?1", [id], |r| r.get(0))?))
//!     .await?;
//! assert_eq!(url, "https://example.org/");
//! println!("{}", db.stats());
//! db.close().await?;
//! # Ok(())
//! # }
//! ```

mod stats;
mod sys;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Pool, PoolError, RecycleError, RecycleResult};
use deadpool_sync::SyncWrapper;
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use self::stats::StatsInner;
pub use self::stats::{DbStats, Percentiles};
use self::writer::{InlineJob, Msg, TypedJob, WriterConfig};
use crate::error::panic_message;
use crate::pragmas::{self, Pragmas, Synchronous};
use crate::retry::RetryPolicy;
use crate::{Error, Result};

/// A cheap, cloneable handle to one SQLite file: a bounded reader pool and one fair,
/// group-committing write path. See the [module documentation](self).
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    readers: Pool<ReadManager>,
    writes: Sender<Msg>,
    /// The write connection, shared with the writer thread for inline writes.
    writer: writer::Shared,
    /// Writes and reads run inline only while their average takes at most this long
    /// (zero: never).
    inline_limit: Duration,
    /// Moving average of reads' time in their closure, in ns.
    avg_read_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Calls of [`Db::write`] and [`Db::write_blocking`] under way: from the call until
    /// the caller has its answer (or drops the call). A write runs inline only when it is
    /// the only one: an answered write whose task has not run yet comes back soon, and
    /// the writer thread groups it with the others.
    writes_in_flight: std::sync::atomic::AtomicUsize,
    /// Calls of [`Db::read`] under way, counted the same way.
    reads_in_flight: std::sync::atomic::AtomicUsize,
    /// Worker threads of the runtime the handle was opened in: with more reads under way
    /// than that, some reading task is waiting for a worker.
    workers: usize,
    /// Places in the bounded write queue (queued or running writes).
    room: Arc<Semaphore>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<StatsInner>,
    runtime: tokio::runtime::Handle,
    /// A runtime of our own when the handle was opened outside of one.
    own_runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        {
            let _runtime = self.runtime.enter();
            self.readers.close();
        }
        if let Some(rt) = self.own_runtime.take() {
            // Never blocks, so dropping the last handle inside async code is fine too.
            rt.shutdown_background();
        }
    }
}

/// Inline reads and writes a thread runs before its runtime's other tasks get a turn.
/// An inline operation is ready at once, so a task reading in a loop would otherwise keep
/// its worker until tokio's cooperative budget runs out (128 operations): with 64 tasks
/// reading on two workers, each task's first read after such a turn waited for the
/// other tasks' 128 reads each (about 8 ms in the benchmark's read section).
const INLINE_TURN: u32 = 16;

thread_local! {
    /// Inline operations run on this thread since its last turn ended.
    static INLINE_STREAK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// After an inline read or write: every [`INLINE_TURN`] of them on this thread, the task
/// yields (to the back of its runtime's queue); otherwise it spends its cooperative
/// budget as any other ready operation.
async fn inline_turn() {
    let turn_over = INLINE_STREAK.with(|streak| {
        let n = streak.get() + 1;
        streak.set(if n >= INLINE_TURN { 0 } else { n });
        n >= INLINE_TURN
    });
    if turn_over {
        tokio::task::yield_now().await;
    } else {
        tokio::task::coop::consume_budget().await;
    }
}

/// Counts one call of [`Db::write`] in [`Inner::writes_in_flight`] (or of [`Db::read`] in
/// [`Inner::reads_in_flight`]) for as long as it lives (also when its future is dropped
/// unfinished).
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> InFlight<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .field("readers", &self.inner.readers.status())
            .finish_non_exhaustive()
    }
}

/// Settings for [`Db`]; start with [`Db::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct DbBuilder {
    path: PathBuf,
    max_readers: usize,
    busy_timeout: Duration,
    synchronous: Synchronous,
    wal_autocheckpoint: u32,
    group_commit: bool,
    max_batch: usize,
    max_wait: Duration,
    max_queue: usize,
    pool_wait_timeout: Option<Duration>,
    retry: RetryPolicy,
    inline_limit: Duration,
}

impl DbBuilder {
    /// The default bound of the write queue.
    pub const DEFAULT_MAX_QUEUE: usize = 4096;

    /// The most reader connections accepted by [`max_readers`](Self::max_readers): each
    /// is an open file and a few MiB of cache at most; the pool reserves room for all.
    pub const MAX_READERS: usize = 1024;

    /// The default [`inline_limit`](Self::inline_limit): 250 µs.
    pub const DEFAULT_INLINE_LIMIT: Duration = Duration::from_micros(250);

    /// The longest [`max_wait`](Self::max_wait) accepted: 60 s.
    pub const MAX_WAIT_LIMIT: Duration = Duration::from_secs(60);

    fn new(path: PathBuf) -> DbBuilder {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        DbBuilder {
            path,
            max_readers: (2 * cpus).max(4),
            busy_timeout: Pragmas::DEFAULT_BUSY_TIMEOUT,
            synchronous: Synchronous::Normal,
            wal_autocheckpoint: 1000,
            group_commit: true,
            max_batch: 256,
            max_wait: Duration::ZERO,
            max_queue: DbBuilder::DEFAULT_MAX_QUEUE,
            pool_wait_timeout: Some(Duration::from_secs(30)),
            retry: RetryPolicy::new(),
            inline_limit: DbBuilder::DEFAULT_INLINE_LIMIT,
        }
    }

    /// Most reader connections open at once (default: twice the CPUs, at least 4; at least
    /// 1). More than [`MAX_READERS`](Self::MAX_READERS) is refused by
    /// [`DbBuilder::build`] with [`Error::InvalidSetting`].
    pub fn max_readers(mut self, n: usize) -> Self {
        self.max_readers = n.max(1);
        self
    }

    /// How long SQLite's busy handler waits for another process's lock (default 30 s).
    /// SQLite takes whole milliseconds up to `i32::MAX` (about 24.8 days); a longer value
    /// is refused by [`DbBuilder::build`] with [`Error::InvalidSetting`].
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// Durability (default `NORMAL`: consistent always, durable across process crashes).
    /// At `FULL` and `EXTRA` groups wait briefly for their writers' next writes (see
    /// [`max_wait`](Self::max_wait)).
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// Checkpoint the WAL once it holds this many pages (default 1000, SQLite's own
    /// default). Checkpoints run on a background connection (`PASSIVE`), never on the
    /// commit path: SQLite's auto-checkpoint would make the commit that crosses the
    /// threshold, and every caller in its group, wait for it. After each background pass
    /// that copied pages, the database file is synced there too (unless
    /// [`synchronous`](Self::synchronous) is `OFF`; counted in
    /// [`DbStats::file_syncs`]), so the writer's own checkpoint, the one that lets the WAL
    /// start over, has little left to sync while writes wait. `0` turns automatic
    /// checkpoints off, leaving them to you.
    pub fn wal_autocheckpoint(mut self, pages: u32) -> Self {
        self.wal_autocheckpoint = pages;
        self
    }

    /// Group commit on (the default) or off. Off, every write is its own transaction.
    pub fn group_commit(mut self, on: bool) -> Self {
        self.group_commit = on;
        self
    }

    /// Most writes in one group commit (default 256).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// With group commit, how long a lone write waits for company before committing
    /// (default 0: a batch forms from the writes already queued). Ignored when group
    /// commit is off. A batch closes as soon as it holds `max_batch` writes.
    ///
    /// With the default 0 and [`synchronous`](Self::synchronous) `FULL` or `EXTRA`, where
    /// every commit costs a sync, a group waits for the writers of the group before it as
    /// they come back (at most a quarter of the last transaction's time, at most 2 ms),
    /// so that 16 writers share one sync instead of taking turns in two groups of 8.
    /// A lone writer never waits.
    /// At most [`MAX_WAIT_LIMIT`](Self::MAX_WAIT_LIMIT): a longer wait (such as
    /// `Duration::MAX`) would leave a lone write hanging, and is refused by
    /// [`DbBuilder::build`] with [`Error::InvalidSetting`].
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Most writes queued or running at once (default
    /// [`DEFAULT_MAX_QUEUE`](Self::DEFAULT_MAX_QUEUE); at least 1). A write that finds the
    /// queue full waits for room: [`Db::write`] asynchronously, in FIFO order,
    /// [`Db::write_blocking`] by blocking its thread. Memory stays bounded however many
    /// callers flood the write path.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long `read` waits for a free reader connection (default 30 s; `None` waits
    /// forever).
    pub fn pool_wait_timeout(mut self, d: Option<Duration>) -> Self {
        self.pool_wait_timeout = d;
        self
    }

    /// How the writer retries a transaction that met another process's lock after
    /// `busy_timeout` (default: [`RetryPolicy::new`]).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Inline writes: while no other write is under way, a write runs on the
    /// calling thread instead of being handed to the writer thread and back — the same
    /// transaction, hooks and answer, without two thread wake-ups (about 20 µs on a small
    /// machine, most of a short write's cost). See "Inline writes" on [`Db::write`].
    ///
    /// [`Db::write`] runs a write inline only while the moving average of recent writes'
    /// time in their transactions (closure and `COMMIT`, fsync included) is at most
    /// `limit` (default [`DEFAULT_INLINE_LIMIT`](Self::DEFAULT_INLINE_LIMIT)): where writes
    /// are that short the hop is their main cost, and the async worker is held no longer
    /// than one short write; where they are longer, the hop costs little and the worker
    /// stays free. [`Db::write_blocking`] runs inline whenever the path is idle and no
    /// other write is under way, whatever the average (its caller waits either way).
    /// `Duration::ZERO` turns inline writes off: every write runs on the writer thread.
    /// Also off while [`max_wait`](Self::max_wait) is set (a write waiting for company
    /// cannot run alone on its caller's thread).
    pub fn inline_limit(mut self, limit: Duration) -> Self {
        self.inline_limit = limit;
        self
    }

    fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            path: self.path.clone(),
            pragmas: self.pragmas(),
            wal_autocheckpoint: self.wal_autocheckpoint,
            group_commit: self.group_commit,
            max_batch: self.max_batch,
            max_wait: self.max_wait,
            retry: self.retry,
        }
    }

    fn pragmas(&self) -> Pragmas {
        Pragmas::new()
            .with_busy_timeout(self.busy_timeout)
            .with_synchronous(self.synchronous)
    }

    /// Opens the database: creates the file if missing, switches it to WAL, checks it is
    /// readable and writable, and starts the writer.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] (empty path, a directory), [`Error::Open`] (missing
    /// directory, not a database, corrupt), [`Error::ReadOnly`], [`Error::NotWal`] — each
    /// naming the path; [`Error::InvalidSetting`] for a `busy_timeout` SQLite cannot take,
    /// a `max_wait` past [`DbBuilder::MAX_WAIT_LIMIT`] or more readers than
    /// [`DbBuilder::MAX_READERS`].
    pub async fn build(self) -> Result<Db> {
        let handle = tokio::runtime::Handle::current();
        let builder = self.clone();
        // Opening files and connections blocks: keep it off the async worker.
        let opened = tokio::task::spawn_blocking(move || builder.open_files())
            .await
            .map_err(|e| Error::Panicked {
                message: e.to_string(),
            })??;
        self.start(opened, handle, None)
    }

    /// The write connection and the checkpointer, opened and checked.
    fn open_files(&self) -> Result<Opened> {
        self.validate()?;
        let stats = Arc::new(StatsInner::new());
        let writer = open_writer(self)?;
        let checkpointer = self.start_checkpointer(&stats)?;
        Ok(Opened {
            writer,
            checkpointer,
            stats,
        })
    }

    fn validate(&self) -> Result<()> {
        if pragmas::busy_timeout_ms(self.busy_timeout).is_none() {
            return Err(Error::InvalidSetting {
                setting: "busy_timeout",
                reason: format!(
                    "{:?} is longer than SQLite can wait ({} ms at most)",
                    self.busy_timeout,
                    i32::MAX
                ),
            });
        }
        if self.max_readers > Self::MAX_READERS {
            return Err(Error::InvalidSetting {
                setting: "max_readers",
                reason: format!(
                    "{} reader connections; at most {}",
                    self.max_readers,
                    Self::MAX_READERS
                ),
            });
        }
        if self.max_wait > Self::MAX_WAIT_LIMIT {
            return Err(Error::InvalidSetting {
                setting: "max_wait",
                reason: format!(
                    "{:?} would keep a lone write waiting for company; at most {:?}",
                    self.max_wait,
                    Self::MAX_WAIT_LIMIT
                ),
            });
        }
        Ok(())
    }

    /// [`DbBuilder::build`] for threaded code. Inside a tokio runtime it uses that runtime
    /// for its readers; outside one, it starts a small one of its own.
    ///
    /// # Errors
    /// As [`DbBuilder::build`].
    pub fn build_blocking(self) -> Result<Db> {
        let opened = self.open_files()?;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => self.start(opened, handle, None),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("luca-db")
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Pool {
                        path: self.path.clone(),
                        reason: format!("cannot start a runtime: {e}"),
                    })?;
                let handle = rt.handle().clone();
                self.start(opened, handle, Some(rt))
            }
        }
    }

    fn start(
        self,
        opened: Opened,
        runtime: tokio::runtime::Handle,
        own_runtime: Option<tokio::runtime::Runtime>,
    ) -> Result<Db> {
        let Opened {
            writer,
            checkpointer,
            stats,
        } = opened;
        let manager = ReadManager {
            path: self.path.clone(),
            pragmas: self.pragmas().with_query_only(true),
        };
        let readers = Pool::builder(manager)
            .max_size(self.max_readers)
            .wait_timeout(self.pool_wait_timeout)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Pool {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let (tx, rx) = mpsc::channel();
        let room = Arc::new(Semaphore::new(self.max_queue));
        let shared = writer::WritePath::new(writer::new_writer(
            writer,
            self.writer_config(),
            Arc::clone(&stats),
            checkpointer,
            Arc::clone(&room),
        ));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("luca-db-writer".into())
            .spawn(move || writer::run(thread_shared, rx))
            .map_err(|e| Error::Pool {
                path: self.path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Db {
            inner: Arc::new(Inner {
                path: self.path,
                readers,
                writes: tx,
                writer: shared,
                // Waiting for company and inline writes exclude each other.
                inline_limit: if self.group_commit && !self.max_wait.is_zero() {
                    Duration::ZERO
                } else {
                    self.inline_limit
                },
                avg_read_ns: Arc::new(std::sync::atomic::AtomicU64::new(0)),
                writes_in_flight: std::sync::atomic::AtomicUsize::new(0),
                reads_in_flight: std::sync::atomic::AtomicUsize::new(0),
                workers: runtime.metrics().num_workers().max(1),
                room,
                writer_thread: Mutex::new(Some(thread)),
                stats,
                runtime,
                own_runtime,
            }),
        })
    }
}

/// What [`DbBuilder::open_files`] opened.
struct Opened {
    writer: Connection,
    checkpointer: Option<writer::Checkpointer>,
    stats: Arc<StatsInner>,
}

impl DbBuilder {
    fn start_checkpointer(&self, stats: &Arc<StatsInner>) -> Result<Option<writer::Checkpointer>> {
        if self.wal_autocheckpoint == 0 {
            return Ok(None);
        }
        let conn = pragmas::open(&self.path, &self.pragmas())?;
        // With synchronous OFF nothing is synced, the database file included.
        let sync_file = self.synchronous != Synchronous::Off;
        let (wake, rx) = mpsc::sync_channel(1);
        let stats = Arc::clone(stats);
        let running = Arc::new(Mutex::new(writer::Copied::default()));
        let held = Arc::clone(&running);
        let thread = std::thread::Builder::new()
            .name("luca-db-checkpoint".into())
            .spawn(move || writer::checkpoint_loop(conn, rx, held, stats, sync_file))
            .map_err(|e| Error::Pool {
                path: self.path.clone(),
                reason: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Some(writer::Checkpointer {
            threshold: self.wal_autocheckpoint,
            running,
            wake,
            thread,
        }))
    }
}

/// Opens and checks the write connection.
fn open_writer(b: &DbBuilder) -> Result<Connection> {
    let open_err = |source| Error::Open {
        path: b.path.clone(),
        source,
    };
    let conn = pragmas::open_unconfigured(&b.path)?;
    // SQLite falls back to a read-only open when the file cannot be written; say so
    // before any PRAGMA fails in a less obvious way.
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(open_err)? {
        return Err(Error::ReadOnly {
            path: b.path.clone(),
        });
    }
    drop(conn);
    let conn = writer::open_connection(&b.writer_config())?;
    // Reads the schema: a file whose first pages are damaged fails here, not later.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(open_err)?;
    Ok(conn)
}

impl Db {
    /// Opens `path` with the defaults (creating it if missing). See [`DbBuilder::build`].
    ///
    /// # Errors
    /// As [`DbBuilder::build`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::builder(path).build().await
    }

    /// [`Db::open`] for threaded code. See [`DbBuilder::build_blocking`].
    ///
    /// # Errors
    /// As [`DbBuilder::build`].
    pub fn open_blocking(path: impl AsRef<Path>) -> Result<Db> {
        Db::builder(path).build_blocking()
    }

    /// Settings for a new handle.
    pub fn builder(path: impl AsRef<Path>) -> DbBuilder {
        DbBuilder::new(path.as_ref().to_path_buf())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection (opened read-only, so nothing `f` runs can write,
    /// whatever PRAGMA it sets; it sees the last committed state). Reads never wait for
    /// writes (WAL): a write in progress does not hold a reader up.
    ///
    /// Where `f` runs: while recent reads took at most [`DbBuilder::inline_limit`] on
    /// average (default 250 µs: point lookups, short scans), on the calling thread, inside
    /// this call — a hop to a blocking thread and back would cost more than the read;
    /// otherwise (long scans, and with `inline_limit(Duration::ZERO)`) on tokio's blocking
    /// pool, never on the async worker. As for inline writes, `f` must not wait for
    /// another task of the caller's runtime. A task reading in a loop lets the other
    /// tasks of its worker run: after each inline read while more reads are under way
    /// than the runtime has workers (a reading task is waiting for one), otherwise after
    /// every 16 inline operations of its thread.
    ///
    /// A connection `f` leaves inside an open transaction is rolled back before anyone
    /// else gets it; a panic in `f` is returned as [`Error::Panicked`] and the connection
    /// is discarded.
    ///
    /// # Errors
    /// Whatever `f` returns; [`Error::Pool`] when no reader frees up within the wait
    /// timeout; [`Error::Closed`] after [`Db::close`].
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = &self.inner;
        let _in_flight = InFlight::enter(&inner.reads_in_flight);
        let conn = inner.readers.get().await.map_err(|e| self.pool_error(e))?;
        inner
            .stats
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let avg = inner.avg_read_ns.load(std::sync::atomic::Ordering::Relaxed);
        let inline =
            !inner.inline_limit.is_zero() && Duration::from_nanos(avg) <= inner.inline_limit;
        if inline {
            let started = Instant::now();
            let ran = match conn.lock() {
                Ok(guard) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let result = f(&guard);
                    (result, end_read(&inner.stats, &guard))
                })),
                // A pooled connection whose lock is poisoned is never handed out
                // (`recycle` refuses it); should it happen, the connection goes.
                Err(_) => Ok((
                    Err(Error::Pool {
                        path: inner.path.clone(),
                        reason: "a reader connection's lock is poisoned".into(),
                    }),
                    false,
                )),
            };
            note_read(&inner.avg_read_ns, started);
            let outcome = self.settle_read(conn, ran);
            if inner
                .reads_in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                > inner.workers
            {
                // More readers than workers: some reading task waits for this worker, and
                // gets it now, not after this task's next reads.
                tokio::task::yield_now().await;
            } else {
                inline_turn().await;
            }
            return outcome;
        }
        let stats = Arc::clone(&inner.stats);
        let avg_read = Arc::clone(&inner.avg_read_ns);
        let outcome = conn
            .interact(move |c: &mut Connection| {
                let started = Instant::now();
                let result = f(c);
                let clean = end_read(&stats, c);
                note_read(&avg_read, started);
                (result, clean)
            })
            .await;
        match outcome {
            Ok(ran) => self.settle_read(conn, Ok(ran)),
            Err(deadpool_sync::InteractError::Panic(payload)) => {
                self.settle_read(conn, Err(payload))
            }
            Err(deadpool_sync::InteractError::Cancelled) => Err(self.closed()),
        }
    }

    /// The answer of a read, from what its closure returned and whether its connection
    /// came back clean (outside any transaction). A connection left inside a transaction
    /// it could not leave, or by a panicking closure (its state unknown), is never handed
    /// out again.
    fn settle_read<T>(
        &self,
        conn: managed::Object<ReadManager>,
        ran: std::thread::Result<(Result<T>, bool)>,
    ) -> Result<T> {
        match ran {
            Ok((result, true)) => result,
            Ok((result, false)) => {
                let _ = managed::Object::take(conn);
                result
            }
            Err(payload) => {
                let _ = managed::Object::take(conn);
                self.inner
                    .stats
                    .panics
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(Error::Panicked {
                    message: panic_message(&*payload),
                })
            }
        }
    }

    /// [`Db::read`] for threaded code: blocks the calling thread.
    ///
    /// # Errors
    /// As [`Db::read`].
    ///
    /// # Panics
    /// When called from inside an async task (use [`Db::read`] there).
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.inner.runtime.block_on(self.read(f))
    }

    /// Runs `f` on the write path and waits until its transaction committed.
    ///
    /// `f` runs inside `BEGIN IMMEDIATE … COMMIT`, or inside a `SAVEPOINT` of a group
    /// commit; the `&Connection` is the same type either way. If
    /// `f` returns an error (or panics), only its own changes are rolled back and it gets
    /// the error. `Ok` is returned only after the `COMMIT` that includes the write
    /// succeeded. `f` may run more than once (when another process's lock forces the
    /// transaction to be retried, when SQLite rolled back a group because of another
    /// caller's write, or when another write of its group failed: groups run without a
    /// savepoint per write until a closure fails, then with them for a while), so it must
    /// not have side effects outside the database.
    ///
    /// # What a write closure may not do
    /// - Transaction control: `BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`,
    ///   `RELEASE` and `ROLLBACK TO` are refused while `f` runs (SQLite reports "not
    ///   authorized" to `f`); the write path owns the transaction. To roll your write
    ///   back, return an error.
    /// - Assignments to the PRAGMAs `Db` manages (`journal_mode`, `synchronous`,
    ///   `locking_mode`, `query_only`, `foreign_keys`, `busy_timeout`,
    ///   `wal_autocheckpoint`) are refused the same way; reading them is fine.
    ///
    /// A closure that ran a refused statement gets [`Error::Refused`] and nothing of it is
    /// committed, even if it ignored SQLite's error and returned `Ok`. Installing hooks or
    /// an authorizer of your own on the write connection is not supported.
    ///
    /// # When SQLite rolls back by itself
    /// A trigger's `RAISE(ROLLBACK, …)`, `INSERT OR ROLLBACK`, or an I/O error or full
    /// disk can make SQLite roll back the whole transaction while `f` runs. Then `f`'s
    /// caller gets `f`'s error (SQLite's own, with its message), or
    /// [`Error::TransactionEnded`] if `f` swallowed it; nothing `f` runs afterwards can
    /// commit. The other writes of its group are run again without it and committed.
    ///
    /// # Inline writes
    /// When no other write is under way (queued, running, or answered but not yet taken
    /// by its caller), `f` runs on the calling thread, inside this call, instead of on
    /// the writer thread (see [`DbBuilder::inline_limit`]): same transaction, hooks and
    /// guarantees, without two thread wake-ups. It never waits for a lock there: when
    /// another process holds the write lock, the write goes to the writer thread, which
    /// waits per the retry policy. So `f` holds its caller's thread
    /// (an async worker) for as long as it runs itself — the default limit keeps that
    /// to paths whose writes take at most 250 µs on average. Consequences for `f`: it
    /// cannot count on running on a thread of its own (thread-locals, a blocking call
    /// into this runtime such as [`Db::read_blocking`]); it must not wait for another task
    /// of the caller's runtime (on a current-thread runtime that task could never run) —
    /// with [`DbBuilder::inline_limit`]`(Duration::ZERO)` every write runs on the writer
    /// thread. A task that writes in a loop still lets the other tasks of its worker run:
    /// it yields after every 16 inline operations of its thread. With other writers
    /// about, every write goes to the writer thread, also while its queue is empty for a
    /// moment: their tasks, answered and about to write again, are grouped with it
    /// instead of waiting for a worker that one task keeps busy with writes of its own.
    ///
    /// # Backpressure and cancellation
    /// At most [`DbBuilder::max_queue`] writes are queued or running; a write that finds
    /// the queue full waits here, asynchronously and in FIFO order, for room. A write runs
    /// inline or is queued during the first poll of this future that finds room:
    /// - dropped before that (never polled, or still waiting for room), the write never
    ///   runs;
    /// - dropped after that, the write is not cancelled: it is committed or rolled back
    ///   as a whole all the same, and its answer is discarded.
    ///
    /// # Errors
    /// Whatever `f` returns; [`Error::Refused`] and [`Error::TransactionEnded`] as above;
    /// [`Error::Closed`] after [`Db::close`]; a busy error when another process held the
    /// lock past the retry policy; [`Error::Reentered`] when called (through a blocking
    /// executor) from inside a write closure of the same `Db`.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.write_with(f, false).await
    }

    async fn write_with<T, F>(&self, mut f: F, blocking: bool) -> Result<T>
    where
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.not_on_writer("Db::write")?;
        let _in_flight = InFlight::enter(&self.inner.writes_in_flight);
        if let Some(answer) = self.try_inline(&mut f, blocking) {
            contain_drop(&self.inner.stats, f);
            // A blocking caller holds its thread anyway; on an async worker, a yield
            // inside its `block_on` would wait for a turn that worker never gives.
            if !blocking {
                inline_turn().await;
            }
            return answer;
        }
        let permit = match self.inner.room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(self.closed()),
            Err(TryAcquireError::NoPermits) => {
                self.inner
                    .stats
                    .queue_full_waits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner
                    .room
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| self.closed())?
            }
        };
        let rx = self.enqueue(f, permit)?;
        rx.await.map_err(|_| self.closed())?
    }

    /// [`Db::write`] for threaded code: blocks the calling thread until the write is
    /// answered (and, when the queue is full, until there is room).
    ///
    /// It never panics and never needs a runtime: the write path is a thread of its own.
    /// Called on an async worker thread it works too, but it stalls that worker (and every
    /// task on it) until the write commits; use [`Db::write`] there.
    ///
    /// # Errors
    /// As [`Db::write`]; [`Error::Reentered`] when called from inside a write closure of
    /// the same `Db` (the writer would wait for itself).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        block_on(self.write_with(f, true))
    }

    /// Runs the write on the calling thread when the writer is idle (see
    /// [`DbBuilder::inline_limit`]); `None` when it must be queued (nothing of it is in
    /// the file then).
    fn try_inline<T, F>(&self, f: &mut F, blocking: bool) -> Option<Result<T>>
    where
        F: FnMut(&Connection) -> Result<T>,
    {
        let inner = &*self.inner;
        if inner.inline_limit.is_zero()
            // Another write is under way (queued, running, or answered but not yet taken
            // by its task): this one goes to the writer thread, which groups them. Left
            // inline, a task writing in a loop would keep the path to itself while the
            // tasks answered before it wait for its worker (up to tokio's budget, 128
            // writes), and no write would be grouped.
            || inner
                .writes_in_flight
                .load(std::sync::atomic::Ordering::SeqCst)
                > 1
            || inner
                .stats
                .queue_depth
                .load(std::sync::atomic::Ordering::Relaxed)
                != 0
            || !inner.writer.idle.load(std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        // A running write holds a place in the bounded queue too; none after close.
        let _room = inner.room.try_acquire().ok()?;
        let mut w = match inner.writer.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        // Checkpoint work is due on the writer thread: writes queue behind it, so that it
        // runs before the WAL grows further.
        if w.maintain_due() || (!blocking && w.avg_write() > inner.inline_limit) {
            return None;
        }
        let mut job = InlineJob {
            f,
            value: None,
            enqueued: Instant::now(),
        };
        let outcome = {
            let span = tracing::debug_span!(target: "luca_core::db", "write_batch", writes = 1);
            let _entered = span.enter();
            w.inline(&mut job)
        };
        let maintain = outcome.is_some() && w.after_run(false);
        drop(w);
        if maintain {
            // The writer thread runs the checkpoint; a closed path needs none.
            let _ = inner.writes.send(Msg::Maintain);
        }
        let value = job.value.take();
        let Some(outcome) = outcome else {
            // The closure may have run before a busy `COMMIT`: its value goes, the write
            // runs again on the writer thread.
            contain_drop(&inner.stats, value);
            return None;
        };
        let counted = match &outcome {
            Ok(()) => stats::Outcome::Ok,
            Err(Error::Panicked { .. }) => stats::Outcome::Panicked,
            Err(_) => stats::Outcome::Failed,
        };
        inner.stats.answered(counted, job.enqueued.elapsed());
        inner
            .stats
            .inline_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(match outcome {
            Ok(()) => value.ok_or(Error::TransactionEnded),
            Err(e) => {
                contain_drop(&inner.stats, value);
                Err(e)
            }
        })
    }

    fn enqueue<T, F>(
        &self,
        f: F,
        permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<Result<T>>>
    where
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = TypedJob {
            f,
            value: None,
            reply,
            enqueued: Instant::now(),
            permit: Some(permit),
            stamp: self
                .inner
                .writer
                .answered_runs
                .load(std::sync::atomic::Ordering::Acquire),
        };
        self.inner.stats.enqueued();
        if self.inner.writes.send(Msg::Write(Box::new(job))).is_err() {
            self.inner.stats.dequeued(1);
            return Err(self.closed());
        }
        Ok(rx)
    }

    /// A call that waits for the writer, made on the writer thread, would wait forever.
    fn not_on_writer(&self, call: &'static str) -> Result<()> {
        if writer::on_writer_thread() {
            return Err(Error::Reentered { call });
        }
        Ok(())
    }

    /// Counters, queue depth, lock-wait and latency percentiles, group sizes.
    pub fn stats(&self) -> DbStats {
        self.inner.stats.snapshot()
    }

    /// Finishes the writes already queued, checkpoints the WAL, and closes the pool.
    /// Writes still waiting for room in a full queue are answered [`Error::Closed`] and
    /// never run. Later calls on any clone of this handle return [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::Closed`] when the handle was already closed; [`Error::Reentered`] when
    /// called (through a blocking executor) from inside a write closure.
    pub async fn close(&self) -> Result<()> {
        self.not_on_writer("Db::close")?;
        let (ack, done) = oneshot::channel();
        if self.inner.writes.send(Msg::Close(ack)).is_err() {
            return Err(self.closed());
        }
        self.inner.room.close();
        let _ = done.await;
        self.finish_close();
        Ok(())
    }

    /// [`Db::close`] for threaded code: blocks the calling thread. Like
    /// [`Db::write_blocking`], it never panics and needs no runtime.
    ///
    /// # Errors
    /// As [`Db::close`].
    pub fn close_blocking(&self) -> Result<()> {
        block_on(self.close())
    }

    fn finish_close(&self) {
        // Dropping a pooled connection hands it to the runtime's blocking pool.
        let _runtime = self.inner.runtime.enter();
        self.inner.readers.close();
        let thread = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    fn closed(&self) -> Error {
        Error::Closed {
            path: self.inner.path.clone(),
        }
    }

    fn pool_error(&self, e: PoolError<Error>) -> Error {
        match e {
            PoolError::Closed => self.closed(),
            PoolError::Backend(e) => e,
            other => Error::Pool {
                path: self.inner.path.clone(),
                reason: other.to_string(),
            },
        }
    }
}

/// After a read: rolls back a transaction `f` left open; `false` when that failed (the
/// connection must not be handed out again).
fn end_read(stats: &StatsInner, c: &Connection) -> bool {
    c.is_autocommit() || {
        stats
            .dirty_rollbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.execute_batch("ROLLBACK").is_ok()
    }
}

/// Adds a read that started at `started` to the moving average of reads' time. Shared
/// by all readers; a lost update between two readers only drops one sample.
fn note_read(avg: &std::sync::atomic::AtomicU64, started: Instant) {
    let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let old = avg.load(std::sync::atomic::Ordering::Relaxed);
    avg.store(
        old - old / 8 + took / 8,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Drops `v`; a panic in its `Drop` is contained and counted, as on the writer thread.
fn contain_drop<V>(stats: &StatsInner, v: V) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(v))).is_err() {
        stats
            .panics
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs a future to completion on the calling thread, parking it between polls. The
/// futures it runs (a semaphore, a oneshot, a blocking join) need no runtime; tokio's
/// cooperative budget is lifted so that a call from inside a task cannot spin.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(tokio::task::unconstrained(f));
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Creates reader connections; recycling costs no round trip to SQLite.
struct ReadManager {
    path: PathBuf,
    pragmas: Pragmas,
}

impl managed::Manager for ReadManager {
    type Type = SyncWrapper<Connection>;
    type Error = Error;

    async fn create(&self) -> Result<SyncWrapper<Connection>> {
        let path = self.path.clone();
        let pragmas = self.pragmas;
        SyncWrapper::new(deadpool::Runtime::Tokio1, move || {
            pragmas::open_read_only(&path, &pragmas)
        })
        .await
    }

    async fn recycle(
        &self,
        conn: &mut SyncWrapper<Connection>,
        _: &Metrics,
    ) -> RecycleResult<Error> {
        if conn.is_mutex_poisoned() {
            return Err(RecycleError::message(
                "a closure panicked while holding this connection",
            ));
        }
        Ok(())
    }
}
