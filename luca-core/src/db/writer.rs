//! The in-process write path: one thread owns the write connection and takes writes from
//! a FIFO queue, so writers in this process never fight over SQLite's file lock (the busy
//! handler only ever waits for other processes). With group commit, the writes queued at
//! one moment run in one transaction, each in its own SAVEPOINT.
//!
//! The answer a caller gets always matches the file, whatever its closure does:
//! - an authorizer refuses transaction control and luca-managed PRAGMAs while a closure
//!   runs ([`Error::Refused`]);
//! - a commit hook vetoes every commit while a closure runs, so once SQLite has rolled the
//!   transaction back by itself (`RAISE(ROLLBACK)`, `OR ROLLBACK`, FULL, IOERR), nothing
//!   the closure does afterwards can commit in autocommit mode;
//! - a rollback hook tells that SQLite rolled back during a closure: that closure gets
//!   its own error, and the other writes of its group run again without it;
//! - panics in closures, in the values they return and in their captures' `Drop` are
//!   contained: the writer thread never dies with writes in flight.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::stats::{Outcome, StatsInner};
use crate::error::panic_message;
use crate::pragmas::{self, Pragmas, Synchronous};
use crate::retry::{RetryPolicy, Retryable, Schedule};
use crate::{Error, Result};

thread_local! {
    /// Set on the writer thread: a blocking call on the write path made from a write
    /// closure would wait for itself.
    static ON_WRITER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };

    /// Frames in the WAL after the writer thread's last commit (set by the WAL hook,
    /// which SQLite calls on the committing thread).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is a writer thread (inside a write closure).
pub(crate) fn on_writer_thread() -> bool {
    ON_WRITER_THREAD.with(std::cell::Cell::get)
}

/// A write's closure with the type erased: run on the writer thread or inline.
pub(crate) trait Run {
    /// Runs the closure; keeps its value until the answer.
    fn run(&mut self, conn: &Connection) -> Result<()>;
    /// When the caller asked.
    fn enqueued(&self) -> Instant;
}

/// One queued write: its closure and where to send the answer.
pub(crate) trait Job: Run + Send {
    /// Sends the final answer: the kept value on `Ok`, else the error.
    fn answer(self: Box<Self>, outcome: Result<()>);
    /// Takes the job's place in the bounded queue, so that a run's places are given back
    /// at once (one lock of the semaphore per run, not per write).
    fn take_place(&mut self) -> Option<OwnedSemaphorePermit>;
    /// [`WritePath::answered_runs`] when the write was queued.
    fn stamp(&self) -> u64;
}

/// Runs `f` once, inside the panic guard: the value of an earlier run (a group that ran
/// again) is dropped here too, so a panicking `Drop` fails this run only.
fn run_guarded<F, T>(f: &mut F, value: &mut Option<T>, conn: &Connection) -> Result<()>
where
    F: FnMut(&Connection) -> Result<T>,
{
    match catch_unwind(AssertUnwindSafe(|| {
        drop(value.take());
        f(conn).map(|v| *value = Some(v))
    })) {
        Ok(outcome) => outcome,
        Err(payload) => Err(Error::Panicked {
            message: panic_message(&*payload),
        }),
    }
}

/// The caller's answer from a run's outcome and the value it kept.
pub(crate) fn answer_of<T>(outcome: Result<()>, value: Option<T>) -> Result<T> {
    match (outcome, value) {
        (Ok(()), Some(v)) => Ok(v),
        (Ok(()), None) => Err(Error::TransactionEnded),
        (Err(e), _) => Err(e),
    }
}

pub(crate) struct TypedJob<F, T> {
    pub(crate) f: F,
    pub(crate) value: Option<T>,
    pub(crate) reply: oneshot::Sender<Result<T>>,
    pub(crate) enqueued: Instant,
    /// A place in the bounded queue, given back when the job is answered and dropped.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// See [`Job::stamp`].
    pub(crate) stamp: u64,
}

impl<F, T> Run for TypedJob<F, T>
where
    F: FnMut(&Connection) -> Result<T>,
{
    fn run(&mut self, conn: &Connection) -> Result<()> {
        run_guarded(&mut self.f, &mut self.value, conn)
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
    }
}

impl<F, T> Job for TypedJob<F, T>
where
    F: FnMut(&Connection) -> Result<T> + Send,
    T: Send,
{
    fn answer(mut self: Box<Self>, outcome: Result<()>) {
        let answer = answer_of(outcome, self.value.take());
        // The caller may have gone away (a dropped future): the write stands regardless.
        let _ = self.reply.send(answer);
    }

    fn take_place(&mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take()
    }

    fn stamp(&self) -> u64 {
        self.stamp
    }
}

/// A write run on the calling thread: the closure stays the caller's.
pub(crate) struct InlineJob<'a, F, T> {
    pub(crate) f: &'a mut F,
    pub(crate) value: Option<T>,
    pub(crate) enqueued: Instant,
}

impl<F, T> Run for InlineJob<'_, F, T>
where
    F: FnMut(&Connection) -> Result<T>,
{
    fn run(&mut self, conn: &Connection) -> Result<()> {
        run_guarded(self.f, &mut self.value, conn)
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
    }
}

/// How long the writer thread waits for the writers of a group it just answered before
/// the path counts as idle (and writes may run inline). It sleeps meanwhile.
const REGROUP_WAIT: Duration = Duration::from_micros(200);

/// The longest a group waits for the writers of the last one (see
/// [`Writer::company_until`]).
const COMPANY_WAIT_MAX: Duration = Duration::from_millis(2);

/// Groups that keep a savepoint per write after a closure failed in a group without
/// them: a workload where closures often fail pays two statements per write, not a
/// re-run per failure.
const SAVEPOINT_GROUPS: u32 = 64;

/// Longest wait of the writer's RESTART checkpoint for readers on older snapshots.
pub(crate) const RESTART_WAIT: Duration = Duration::from_millis(50);

/// From `EARLY_FROM / 4` thresholds of WAL on, the writer resets the WAL as soon as that
/// is cheap (see [`Writer::after_run`]).
const EARLY_FROM: i64 = 14;

/// How often the RESTART checkpoint looks again whether the readers it waits for are
/// done (see [`restart_busy`]).
const RESTART_POLL: Duration = Duration::from_micros(250);

thread_local! {
    /// Until when [`restart_busy`] keeps the running RESTART checkpoint waiting.
    static RESTART_UNTIL: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The busy handler of the writer's RESTART checkpoint. SQLite's own (`busy_timeout`)
/// looks at 1, 3, 8, 18, 33 and 50 ms, so a reader that ends after 9 ms holds the writes
/// up for 18 ms; this one looks again every [`RESTART_POLL`] until [`RESTART_UNTIL`].
fn restart_busy(_tries: i32) -> bool {
    let Some(until) = RESTART_UNTIL.with(std::cell::Cell::get) else {
        return false;
    };
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    std::thread::sleep(left.min(RESTART_POLL));
    true
}

/// SQLite's WAL hook on the write connection: records the WAL's size. Installing it also
/// turns off SQLite's own auto-checkpoint, which would run on the commit path.
pub(crate) fn record_wal_pages(
    _: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// What the last background checkpoint saw: the WAL's frames, and how many of them were
/// copied into the database file.
#[derive(Clone, Copy, Default)]
pub(crate) struct Copied {
    log: i64,
    copied: i64,
}

impl Copied {
    /// Frames of a WAL of `pages` frames that are not copied yet, as far as the last
    /// background checkpoint tells (a WAL smaller than it saw has started over since).
    fn left(self, pages: i64) -> i64 {
        if pages < self.log {
            pages
        } else {
            pages - self.copied.clamp(0, pages)
        }
    }
}

/// Checkpoints off the commit path: a thread with its own connection runs a PASSIVE
/// checkpoint whenever the writer reports the WAL past the threshold.
pub(crate) struct Checkpointer {
    pub(crate) threshold: u32,
    /// Held by whoever checkpoints: the writer waits for a background checkpoint to end
    /// rather than meet SQLite's `BUSY` for the checkpoint lock. It keeps what the last
    /// background checkpoint saw.
    pub(crate) running: Arc<Mutex<Copied>>,
    pub(crate) wake: std::sync::mpsc::SyncSender<()>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

/// The checkpointer thread's loop; returns when the writer drops its end.
///
/// With `sync_file` (any `synchronous` but OFF) a pass that copied frames is followed by
/// a sync of the database file ([`sys::sync_main_file`](super::sys::sync_main_file)):
/// SQLite syncs it only after a pass that reaches the WAL's end, which a pass beside
/// constant commits never does, and the writer's reset would sync all of it.
pub(crate) fn checkpoint_loop(
    conn: Connection,
    wake: Receiver<()>,
    running: Arc<Mutex<Copied>>,
    stats: Arc<StatsInner>,
    sync_file: bool,
) {
    // Frames copied as of the last pass.
    let mut synced = 0;
    while wake.recv().is_ok() {
        let pass = {
            let mut last = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // (busy, frames in the WAL, frames copied)
            let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
            if let Ok((log, copied)) = pass {
                *last = Copied { log, copied };
                stats.checkpointed(false);
            }
            pass
        };
        let Ok((_, copied)) = pass else { continue };
        // Frames were copied since the last sync (a different count, also when the WAL
        // started over in between).
        if sync_file && copied > 0 && copied != synced {
            // Outside the lock, so the writer's reset is not held up by it. A failed sync
            // loses nothing: SQLite syncs the file before the WAL may start over.
            match super::sys::sync_main_file(&conn) {
                Ok(()) => stats.file_synced(),
                Err(code) => tracing::debug!(
                    target: "luca_core::db",
                    code,
                    "sync of the database file after a background checkpoint failed"
                ),
            }
        }
        synced = copied;
    }
}

pub(crate) enum Msg {
    Write(Box<dyn Job>),
    /// Checkpoint work an inline write found due (it is not done on a caller's thread).
    Maintain,
    Close(oneshot::Sender<()>),
}

/// Sets the writer-thread flag for the length of a write run on a caller's thread, so a
/// blocking call on the write path from inside its closure is refused, not a deadlock.
struct InlineFlag;

impl InlineFlag {
    fn set() -> InlineFlag {
        ON_WRITER_THREAD.with(|w| w.set(true));
        InlineFlag
    }
}

impl Drop for InlineFlag {
    fn drop(&mut self) {
        ON_WRITER_THREAD.with(|w| w.set(false));
    }
}

/// Settings of the write path.
#[derive(Clone, Debug)]
pub(crate) struct WriterConfig {
    pub(crate) path: PathBuf,
    pub(crate) pragmas: Pragmas,
    pub(crate) wal_autocheckpoint: u32,
    pub(crate) group_commit: bool,
    pub(crate) max_batch: usize,
    pub(crate) max_wait: Duration,
    pub(crate) retry: RetryPolicy,
}

/// What the hooks of the write connection saw while a closure ran.
#[derive(Default)]
struct Watch {
    /// A closure is running: refuse transaction control, veto commits.
    in_closure: AtomicBool,
    /// SQLite rolled the transaction back while the closure ran.
    rolled_back: AtomicBool,
    /// The first statement the authorizer refused while the closure ran.
    refused: Mutex<Option<(String, &'static str)>>,
}

const TX_REASON: &str = "`Db::write` owns the transaction (each write runs in `BEGIN IMMEDIATE` \
                         or in a savepoint of a group); return an error to roll your write back";
const PRAGMA_REASON: &str = "the write connection's settings belong to `Db`; set them with \
                             `DbBuilder` (a PRAGMA that only reads is allowed)";
/// PRAGMAs whose assignment would change how the write path behaves.
const MANAGED_PRAGMAS: [&str; 7] = [
    "journal_mode",
    "synchronous",
    "locking_mode",
    "query_only",
    "foreign_keys",
    "busy_timeout",
    "wal_autocheckpoint",
];

impl Watch {
    fn authorize(&self, ctx: &AuthContext<'_>) -> Authorization {
        if !self.in_closure.load(Relaxed) {
            return Authorization::Allow;
        }
        let refused = match ctx.action {
            AuthAction::Transaction { operation } => {
                let what = match operation {
                    TransactionOperation::Begin => "BEGIN",
                    TransactionOperation::Release => "COMMIT",
                    TransactionOperation::Rollback => "ROLLBACK",
                    // SQLite names COMMIT (and END) "COMMIT", which rusqlite does not map.
                    _ => "COMMIT",
                };
                Some((what.to_owned(), TX_REASON))
            }
            AuthAction::Savepoint {
                operation,
                savepoint_name,
            } => {
                let what = match operation {
                    TransactionOperation::Release => "RELEASE",
                    TransactionOperation::Rollback => "ROLLBACK TO",
                    _ => "SAVEPOINT",
                };
                Some((format!("{what} {savepoint_name}"), TX_REASON))
            }
            AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(value),
            } if MANAGED_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
            {
                Some((format!("PRAGMA {pragma_name} = {value}"), PRAGMA_REASON))
            }
            _ => None,
        };
        match refused {
            Some(r) => {
                let mut first = self
                    .refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert(r);
                Authorization::Deny
            }
            None => Authorization::Allow,
        }
    }

    fn enter(&self) {
        self.rolled_back.store(false, Relaxed);
        self.in_closure.store(true, Relaxed);
    }

    /// Ends a closure's run: whether SQLite rolled back, and the refused statement.
    fn leave(&self) -> (bool, Option<(String, &'static str)>) {
        self.in_closure.store(false, Relaxed);
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        (self.rolled_back.load(Relaxed), refused)
    }
}

/// Opens and configures a write connection: PRAGMAs, statement cache, hooks.
pub(crate) fn open_connection(cfg: &WriterConfig) -> Result<Connection> {
    let conn = pragmas::open(&cfg.path, &cfg.pragmas)?;
    if cfg.wal_autocheckpoint == 0 {
        // No automatic checkpoints at all (the background checkpointer is not started).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|source| Error::Open {
                path: cfg.path.clone(),
                source,
            })?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Installs the hooks that keep every answer in agreement with the file.
fn install_hooks(conn: &Connection, watch: &Arc<Watch>, wal_hook: bool) -> rusqlite::Result<()> {
    let w = Arc::clone(watch);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| w.authorize(&ctx)))?;
    let w = Arc::clone(watch);
    // `true` turns the commit into a rollback: nothing commits while a closure runs.
    conn.commit_hook(Some(move || w.in_closure.load(Relaxed)))?;
    let w = Arc::clone(watch);
    conn.rollback_hook(Some(move || {
        if w.in_closure.load(Relaxed) {
            w.rolled_back.store(true, Relaxed);
        }
    }))?;
    if wal_hook {
        conn.wal_hook(Some(record_wal_pages));
    }
    Ok(())
}

/// The write connection and its state, shared by the writer thread and the callers that
/// run a write inline (see [`Writer::inline`]).
pub(crate) type Shared = Arc<WritePath>;

/// See [`Shared`].
pub(crate) struct WritePath {
    pub(crate) writer: Mutex<Writer>,
    /// The writer thread waits for work with nothing queued: the path is idle. Inline
    /// writes run only then, not in the gap between two runs of a busy writer thread
    /// (a write taken inline there would split the next group).
    pub(crate) idle: AtomicBool,
    /// Runs of writes the writer thread has answered: a queued write carries the count
    /// (see [`Job::stamp`]), which tells a group the writers of the last run from the
    /// writes that were waiting already.
    pub(crate) answered_runs: std::sync::atomic::AtomicU64,
}

impl WritePath {
    pub(crate) fn new(writer: Writer) -> Shared {
        Arc::new(WritePath {
            writer: Mutex::new(writer),
            idle: AtomicBool::new(true),
            answered_runs: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

fn lock(shared: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    // Every panic of user code is contained before it could poison the lock; a poisoned
    // lock (a bug of ours) still guards a usable writer: `begin` ends any transaction.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The write path's state, before its thread starts.
pub(crate) fn new_writer(
    conn: Connection,
    cfg: WriterConfig,
    stats: Arc<StatsInner>,
    checkpointer: Option<Checkpointer>,
    room: Arc<Semaphore>,
) -> Writer {
    let w = Writer {
        room,
        conn: Some(conn),
        cfg,
        stats,
        checkpointer,
        watch: Arc::new(Watch::default()),
        reopen_error: None,
        retry_checkpoint_at: std::cell::Cell::new(0),
        early_checkpoint_at: std::cell::Cell::new(0),
        woke_checkpointer_at: std::cell::Cell::new(0),
        wal_pages: 0,
        maintain_due: false,
        closed: false,
        tx_started: Instant::now(),
        last_tx: Duration::ZERO,
        avg_write_ns: 0,
        answers: std::cell::RefCell::new(Vec::new()),
        savepoint_groups: 0,
    };
    w.hook_up();
    w
}

/// The writer thread's loop. Returns when the handle closes or every sender is gone.
pub(crate) fn run(path: Shared, rx: Receiver<Msg>) {
    ON_WRITER_THREAD.with(|w| w.set(true));
    let shared = &path.writer;
    let mut closing: Option<oneshot::Sender<()>> = None;
    // How many writers the last run answered: after a group, its writers are likely to
    // write again at once.
    let mut last_run = 0;
    while closing.is_none() {
        let next = match rx.try_recv() {
            Ok(msg) => Ok(msg),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // After a group, wait a moment for its writers before calling the path
                // idle: a write taken inline now would run alone ahead of the next group.
                let soon = if last_run > 1 {
                    rx.recv_timeout(REGROUP_WAIT).ok()
                } else {
                    None
                };
                match soon {
                    Some(msg) => Ok(msg),
                    None => {
                        path.idle.store(true, std::sync::atomic::Ordering::SeqCst);
                        let msg = rx.recv();
                        path.idle.store(false, std::sync::atomic::Ordering::SeqCst);
                        msg
                    }
                }
            }
        };
        let prev_run = last_run;
        last_run = 0;
        let first = match next {
            Ok(Msg::Write(job)) => job,
            Ok(Msg::Maintain) => {
                lock(shared).after_run(true);
                continue;
            }
            Ok(Msg::Close(ack)) => {
                closing = Some(ack);
                break;
            }
            Err(_) => break,
        };
        let mut w = lock(shared);
        let run_id = path
            .answered_runs
            .load(std::sync::atomic::Ordering::Acquire);
        let batch = w.collect(first, &rx, &mut closing, prev_run, run_id);
        // Only now, with the lock held: while a write waits here, no caller runs one inline.
        w.stats.dequeued(batch.len());
        last_run = batch.len();
        {
            // One span per run of writes (a group, or the writes re-run after it failed).
            let span =
                tracing::debug_span!(target: "luca_core::db", "write_batch", writes = batch.len());
            let _entered = span.enter();
            // Every answer is made by code that contains its own panics; this is the last
            // net, so that a bug cannot take the thread (and every later write) down.
            if catch_unwind(AssertUnwindSafe(|| w.execute(batch))).is_err() {
                w.rollback();
            }
        }
        let mut answers = std::mem::take(&mut *w.answers.borrow_mut());
        let (stats, room) = (Arc::clone(&w.stats), Arc::clone(&w.room));
        drop(w);
        path.answered_runs
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        send_answers(&stats, &room, &mut answers);
        let mut w = lock(shared);
        // Keeps the vector's room for the next run.
        *w.answers.borrow_mut() = answers;
        w.after_run(true);
    }
    let mut w = lock(shared);
    // From here on, no write runs inline.
    w.closed = true;
    send_answers(
        &Arc::clone(&w.stats),
        &Arc::clone(&w.room),
        &mut w.answers.borrow_mut(),
    );
    // Writes queued behind a close (or sent while it ran) are answered `Closed`: none ran.
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Write(job) = msg {
            w.stats.dequeued(1);
            let closed = Error::Closed {
                path: w.cfg.path.clone(),
            };
            contain(|| job.answer(Err(closed)));
        }
    }
    if let Some(c) = w.checkpointer.take() {
        drop(c.wake);
        let _ = c.thread.join();
    }
    if let Some(conn) = w.conn.take() {
        // Checkpoint so the WAL does not outlive the handle; a failure here loses nothing.
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        drop(conn);
    }
    drop(w);
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
    contain(move || drop(rx));
}

/// Runs `f`, swallowing a panic (one already reported by the panic hook).
fn contain(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// A write on the writer thread, with what the writer knows of it.
struct Entry {
    job: Box<dyn Job>,
    /// Its wait for the lock was recorded (once per write, not per attempt).
    waited: bool,
}

pub(crate) struct Writer {
    /// Places in the bounded write queue; queued jobs hold one until answered.
    room: Arc<Semaphore>,
    /// `None` only while a broken connection is being replaced, and after close.
    conn: Option<Connection>,
    cfg: WriterConfig,
    stats: Arc<StatsInner>,
    checkpointer: Option<Checkpointer>,
    watch: Arc<Watch>,
    /// Why the last attempt to replace a broken connection failed.
    reopen_error: Option<Error>,
    /// WAL size (pages) when the background checkpointer was last woken: it is woken again
    /// only once the WAL has grown by another threshold (or started over).
    woke_checkpointer_at: std::cell::Cell<i64>,
    /// WAL size (pages) from which the writer tries its RESTART checkpoint again: raised
    /// by a quarter of a threshold after an attempt that could not reset the WAL (half a
    /// threshold once the WAL holds five thresholds).
    retry_checkpoint_at: std::cell::Cell<i64>,
    /// WAL size (pages) from which the writer looks again whether an early, cheap reset
    /// is possible (see [`Writer::after_run`]).
    early_checkpoint_at: std::cell::Cell<i64>,
    /// Frames in the WAL after the last commit that wrote any.
    wal_pages: i64,
    /// An inline write found checkpoint work due and asked the writer thread for it.
    maintain_due: bool,
    /// The writer thread has ended: nothing runs inline any more.
    closed: bool,
    /// When the current transaction began.
    tx_started: Instant,
    /// How long the last committed transaction took, `BEGIN` to the end of `COMMIT`.
    last_tx: Duration,
    /// Groups still to run with a savepoint per write, after a closure failed in a group
    /// without them (see [`Writer::group`]).
    savepoint_groups: u32,
    /// Answers not sent yet (see [`send_answers`]).
    answers: std::cell::RefCell<Answers>,
    /// Moving average of a committed write's share of its transaction (from `BEGIN` to
    /// the end of `COMMIT`), in ns: inline writes are for paths where writes are short.
    avg_write_ns: u64,
}

/// How a closure's run ended.
struct Ran {
    outcome: Result<()>,
    /// SQLite rolled the whole transaction back while it ran.
    rolled_back: bool,
    /// Rows it changed (counted only when it succeeds).
    changes: u64,
}

impl Writer {
    /// The connection, between a successful [`Writer::begin`] and the end of its
    /// transaction (the only times it is used).
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a transaction is only run after `begin` found a connection")
    }

    fn hook_up(&self) {
        if let Some(conn) = &self.conn {
            // Only fails on a connection that is not ours; the writer owns this one.
            let _ = install_hooks(conn, &self.watch, self.checkpointer.is_some());
        }
    }

    /// The first write plus whatever is queued behind it (and, with `max_wait`, whatever
    /// arrives in time), up to `max_batch`.
    ///
    /// When every commit syncs (`synchronous=FULL` or `EXTRA`, no `max_wait`) and the last
    /// run held `last_run` writes, its writers are likely to write again at once: the
    /// group waits for them (see [`Writer::company_until`]), so that one sync serves them
    /// and the writes that were already queued. Without the wait, writers split into two
    /// half-size groups that take turns, each paying a sync. `run_id` tells the writes
    /// queued before the last run was answered (not its writers) from those after.
    fn collect(
        &self,
        first: Box<dyn Job>,
        rx: &Receiver<Msg>,
        closing: &mut Option<oneshot::Sender<()>>,
        last_run: usize,
        run_id: u64,
    ) -> Vec<Entry> {
        let entry = |job| Entry { job, waited: false };
        let mut batch = vec![entry(first)];
        let waits = self.cfg.group_commit && !self.cfg.max_wait.is_zero();
        // `None`: a `max_wait` too long to add to the clock waits without a deadline.
        // The builder bounds `max_wait`; a deadline past the clock's range waits no more.
        let until = Instant::now().checked_add(self.cfg.max_wait);
        let company = self.company_until(last_run);
        // Writes queued before the last run was answered are not its writers.
        let mut before = usize::from(batch[0].job.stamp() < run_id);
        while batch.len() < self.cfg.max_batch {
            let next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) if waits => until.and_then(|until| {
                    rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                        .ok()
                }),
                Err(TryRecvError::Empty) => match company {
                    Some(until) if batch.len() < (before + last_run).min(self.cfg.max_batch) => rx
                        .recv_timeout(until.saturating_duration_since(Instant::now()))
                        .ok(),
                    _ => None,
                },
                Err(_) => None,
            };
            match next {
                Some(Msg::Write(job)) => {
                    before += usize::from(job.stamp() < run_id);
                    batch.push(entry(job));
                }
                // Done after this run anyway.
                Some(Msg::Maintain) => {}
                Some(Msg::Close(ack)) => {
                    *closing = Some(ack);
                    break;
                }
                None => break,
            }
        }
        batch
    }

    /// Until when a group waits for the writers of the last run to come back: a quarter
    /// of the last transaction's time, at most [`COMPANY_WAIT_MAX`]; `None` (no wait) at
    /// `synchronous` `NORMAL` or `OFF` (a commit costs no sync, waiting costs more than it
    /// saves), with `max_wait` set (the caller's rule applies), without group commit, and
    /// after a lone write.
    fn company_until(&self, last_run: usize) -> Option<Instant> {
        let syncs = matches!(
            self.cfg.pragmas.synchronous,
            Synchronous::Full | Synchronous::Extra
        );
        (syncs && self.cfg.group_commit && self.cfg.max_wait.is_zero() && last_run > 1)
            .then(|| Instant::now() + (self.last_tx / 4).min(COMPANY_WAIT_MAX))
    }

    /// Commits a drained run of queued writes: as one group, or (group commit off, or a
    /// lone write) each in its own transaction, each caller answered right after its own
    /// commit.
    fn execute(&mut self, batch: Vec<Entry>) {
        if self.cfg.group_commit && batch.len() > 1 {
            self.group(batch);
        } else {
            self.one_by_one(batch);
        }
    }

    fn one_by_one(&mut self, batch: Vec<Entry>) {
        let last = batch.len().saturating_sub(1);
        for (i, entry) in batch.into_iter().enumerate() {
            self.single(entry);
            // Each caller hears right after its own commit; the last one once the lock
            // is released (see `send_answers`).
            if i < last {
                send_answers(&self.stats, &self.room, &mut self.answers.borrow_mut());
            }
        }
    }

    /// After a busy error: sleeps per the retry policy and returns `true`, or `false` when
    /// the policy gives up.
    fn backoff(&self, attempts: &mut Schedule<'_>, e: &Error) -> bool {
        let code = e.busy_code();
        if let Some(c) = code {
            self.stats.busy(c);
        }
        match attempts.on_error(code, Instant::now) {
            Some(delay) => {
                self.stats.retries.fetch_add(1, Relaxed);
                std::thread::sleep(delay);
                true
            }
            None => false,
        }
    }

    fn record_wait(&self, entry: &mut Entry, started: Instant) {
        if !entry.waited {
            entry.waited = true;
            self.stats
                .waited(started.saturating_duration_since(entry.job.enqueued()));
        }
    }

    /// Runs one closure with the hooks armed.
    fn run_closure(&self, job: &mut dyn Run) -> Ran {
        let conn = self.conn();
        let before = conn.total_changes();
        self.watch.enter();
        let outcome = job.run(conn);
        let (rolled_back, refused) = self.watch.leave();
        let changes = conn.total_changes().saturating_sub(before);
        // The hooks are the evidence; a transaction that is gone without a rollback hook
        // (hooks replaced by the closure itself) is treated the same way.
        let rolled_back = rolled_back || conn.is_autocommit();
        let outcome = match (outcome, refused) {
            (_, Some((statement, reason))) => {
                self.stats.refused.fetch_add(1, Relaxed);
                tracing::debug!(target: "luca_core::db", statement = %statement, reason, "write closure refused");
                Err(Error::Refused { statement, reason })
            }
            (Ok(()), None) if rolled_back => Err(Error::TransactionEnded),
            (outcome, None) => outcome,
        };
        Ran {
            outcome,
            rolled_back,
            changes,
        }
    }

    /// Runs one write in its own transaction, retrying the transaction on busy errors,
    /// and answers it.
    fn single(&mut self, mut entry: Entry) {
        let policy = self.cfg.retry;
        let mut attempts = schedule(&policy);
        loop {
            if let Err(e) = self.begin() {
                if e.busy_code().is_some() && self.backoff(&mut attempts, &e) {
                    continue;
                }
                return self.finish_all(vec![entry], &e, &attempts);
            }
            self.record_wait(&mut entry, Instant::now());
            let ran = self.run_closure(entry.job.as_mut());
            if ran.rolled_back || ran.outcome.is_err() {
                if ran.rolled_back {
                    self.stats.sqlite_rollbacks.fetch_add(1, Relaxed);
                }
                self.rollback();
                attempts.finish(false);
                return self.finish(entry, ran.outcome);
            }
            match self.commit() {
                Ok(()) => {
                    self.committed(1, ran.changes);
                    attempts.finish(true);
                    return self.finish(entry, Ok(()));
                }
                Err(e) if e.busy_code().is_some() && self.backoff(&mut attempts, &e) => {}
                Err(e) => {
                    attempts.finish(false);
                    return self.finish(entry, Err(e));
                }
            }
        }
    }

    /// Runs a batch in one transaction, each write in its own savepoint, and answers every
    /// caller after the shared `COMMIT`.
    ///
    /// Savepoints cost two statements per write. While closures succeed, a group runs
    /// without them: when a closure then fails, its changes cannot be undone alone, so
    /// the transaction is rolled back, the culprit answered with its error, and the others
    /// run again (a closure may run more than once), with savepoints for this group and
    /// the next [`SAVEPOINT_GROUPS`].
    fn group(&mut self, mut batch: Vec<Entry>) {
        let policy = self.cfg.retry;
        let mut attempts = schedule(&policy);
        let mut savepoints = self.savepoint_groups > 0;
        'attempt: loop {
            if let Err(e) = self.begin() {
                if e.busy_code().is_some() && self.backoff(&mut attempts, &e) {
                    continue;
                }
                return self.finish_all(batch, &e, &attempts);
            }
            let started = Instant::now();
            let mut outcomes: Vec<Result<()>> = Vec::with_capacity(batch.len());
            let mut changes = 0;
            let mut i = 0;
            while i < batch.len() {
                self.record_wait(&mut batch[i], started);
                if savepoints && exec(self.conn(), "SAVEPOINT luca_write").is_err() {
                    return self.fall_back(batch);
                }
                let ran = self.run_closure(batch[i].job.as_mut());
                if ran.rolled_back {
                    // SQLite rolled back the whole group while this closure ran: it gets
                    // its own error; the others (before and after it) run again without it.
                    self.rollback();
                    self.stats.sqlite_rollbacks.fetch_add(1, Relaxed);
                    tracing::debug!(
                        target: "luca_core::db",
                        others = batch.len() - 1,
                        "SQLite rolled back the group; re-running the others"
                    );
                    if self.answer_culprit(&mut batch, i, ran.outcome, &attempts) {
                        return;
                    }
                    continue 'attempt;
                }
                if !savepoints && ran.outcome.is_err() {
                    // No savepoint to roll back to: the group starts over without it.
                    self.rollback();
                    self.savepoint_groups = SAVEPOINT_GROUPS;
                    savepoints = true;
                    if self.answer_culprit(&mut batch, i, ran.outcome, &attempts) {
                        return;
                    }
                    continue 'attempt;
                }
                let kept = match (&ran.outcome, savepoints) {
                    (_, false) => Ok(()),
                    (Ok(()), true) => exec(self.conn(), "RELEASE luca_write"),
                    (Err(_), true) => exec(self.conn(), "ROLLBACK TO luca_write")
                        .and_then(|()| exec(self.conn(), "RELEASE luca_write")),
                };
                if kept.is_err() || self.conn().is_autocommit() {
                    // Our own savepoint statements failed (a full disk, say): what the
                    // group holds is unknown, so each write runs again alone.
                    return self.fall_back(batch);
                }
                if ran.outcome.is_ok() {
                    changes += ran.changes;
                }
                outcomes.push(ran.outcome);
                i += 1;
            }
            match self.commit() {
                Ok(()) => {
                    self.committed(batch.len(), changes);
                    self.savepoint_groups = self.savepoint_groups.saturating_sub(1);
                    attempts.finish(true);
                    let now = Instant::now();
                    for (entry, outcome) in batch.into_iter().zip(outcomes) {
                        self.finish_at(entry, outcome, now);
                    }
                    return;
                }
                Err(e) if e.busy_code().is_some() && self.backoff(&mut attempts, &e) => {}
                Err(e) if e.busy_code().is_some() => {
                    return self.finish_all(batch, &e, &attempts);
                }
                // One write broke the shared COMMIT (a deferred constraint, say). No caller
                // has been answered; run each alone so only the culprit fails.
                Err(_) => return self.fall_back(batch),
            }
        }
    }

    /// Takes the write at `i` out of a group that must run again without it and answers
    /// it; `true` when no write is left to run.
    fn answer_culprit(
        &self,
        batch: &mut Vec<Entry>,
        i: usize,
        outcome: Result<()>,
        attempts: &Schedule<'_>,
    ) -> bool {
        let culprit = batch.remove(i);
        self.finish(culprit, outcome);
        if batch.is_empty() {
            attempts.finish(false);
        }
        batch.is_empty()
    }

    fn fall_back(&mut self, batch: Vec<Entry>) {
        self.rollback();
        self.stats.commit_fallbacks.fetch_add(1, Relaxed);
        tracing::debug!(
            target: "luca_core::db",
            writes = batch.len(),
            "group COMMIT failed; re-running its writes one by one"
        );
        self.one_by_one(batch);
    }

    /// Answers every write of a transaction that could not run with the same error.
    fn finish_all(&self, batch: Vec<Entry>, e: &Error, attempts: &Schedule<'_>) {
        attempts.finish(false);
        for entry in batch {
            self.finish(entry, Err(clone_error(e)));
        }
    }

    /// `BEGIN IMMEDIATE`, on a connection that is outside any transaction.
    fn begin(&mut self) -> Result<()> {
        if !self.conn.as_ref().is_some_and(Connection::is_autocommit) {
            self.rollback();
        }
        self.tx_started = Instant::now();
        match &self.conn {
            Some(conn) => exec(conn, "BEGIN IMMEDIATE").map_err(Error::from),
            None => Err(self.reopen_error.take().unwrap_or_else(|| Error::Closed {
                path: self.cfg.path.clone(),
            })),
        }
    }

    /// `COMMIT`; on failure the transaction is rolled back.
    fn commit(&mut self) -> Result<()> {
        // The WAL hook reports the WAL's size on the committing thread (a caller's, for
        // an inline write): -1 tells that this commit wrote no frame.
        WAL_PAGES.with(|p| p.set(-1));
        let committed = exec(self.conn(), "COMMIT");
        let pages = WAL_PAGES.with(std::cell::Cell::get);
        if pages >= 0 {
            self.wal_pages = i64::from(pages);
        }
        committed.map_err(|e| {
            self.rollback();
            Error::from(e)
        })
    }

    /// Ends any open transaction. A connection that stays inside one (its `ROLLBACK`
    /// failed) is closed, which rolls back, and replaced, so the writer is never stuck.
    /// When no new connection opens, the next write is answered with the reason and
    /// tries again.
    fn rollback(&mut self) {
        if let Some(conn) = &self.conn
            && !conn.is_autocommit()
        {
            let _ = conn.execute_batch("ROLLBACK");
        }
        if self.conn.as_ref().is_some_and(Connection::is_autocommit) {
            return;
        }
        if let Some(conn) = self.conn.take() {
            self.stats.reopens.fetch_add(1, Relaxed);
            tracing::warn!(
                target: "luca_core::db",
                path = %self.cfg.path.display(),
                "the write connection could not leave its transaction; reopening it"
            );
            contain(move || drop(conn.close()));
        }
        match open_connection(&self.cfg) {
            Ok(conn) => {
                self.conn = Some(conn);
                self.hook_up();
            }
            Err(e) => {
                tracing::error!(
                    target: "luca_core::db",
                    path = %self.cfg.path.display(),
                    "cannot reopen the write connection: {e}"
                );
                self.reopen_error = Some(e);
            }
        }
    }

    fn committed(&mut self, writes: usize, changes: u64) {
        self.stats.committed(writes, changes);
        self.last_tx = self.tx_started.elapsed();
        let per_write =
            u64::try_from(self.last_tx.as_nanos()).unwrap_or(u64::MAX) / writes.max(1) as u64;
        // An eighth of the newest sample: one slow write does not turn inline writes off
        // for long, a run of them does.
        self.avg_write_ns = self.avg_write_ns - self.avg_write_ns / 8 + per_write / 8;
    }

    /// An inline write asked the writer thread for checkpoint work that has not run yet.
    pub(crate) fn maintain_due(&self) -> bool {
        self.maintain_due
    }

    /// The moving average of a write's time in its transaction.
    pub(crate) fn avg_write(&self) -> Duration {
        Duration::from_nanos(self.avg_write_ns)
    }

    /// Runs one write on the calling thread, when the writer thread is idle: the same
    /// transaction, hooks and answers as [`Writer::single`], without the two thread
    /// hand-offs. It never waits for a lock: when another process holds the write lock
    /// (`BEGIN IMMEDIATE` or `COMMIT` busy), nothing is committed and `None` hands the
    /// write to the writer thread, whose retry policy does the waiting. `None` too after
    /// close, and without a usable connection (the writer thread reports why).
    pub(crate) fn inline(&mut self, job: &mut dyn Run) -> Option<Result<()>> {
        if self.closed {
            return None;
        }
        let conn = self.conn.as_ref()?;
        if !conn.is_autocommit() || conn.busy_timeout(Duration::ZERO).is_err() {
            return None;
        }
        let begun = exec(conn, "BEGIN IMMEDIATE");
        let restored = conn.busy_timeout(self.cfg.pragmas.busy_timeout);
        if begun.is_err() || restored.is_err() {
            // Ends the transaction if `BEGIN` worked but the timeout could not be restored.
            self.rollback();
            return None;
        }
        self.tx_started = Instant::now();
        let _flag = InlineFlag::set();
        self.stats
            .waited(self.tx_started.saturating_duration_since(job.enqueued()));
        let ran = self.run_closure(job);
        if ran.rolled_back || ran.outcome.is_err() {
            if ran.rolled_back {
                self.stats.sqlite_rollbacks.fetch_add(1, Relaxed);
            }
            self.rollback();
            return Some(ran.outcome);
        }
        match self.commit() {
            Ok(()) => {
                self.committed(1, ran.changes);
                Some(Ok(()))
            }
            // Rolled back by `commit`: the writer thread runs it again, waiting per policy.
            Err(e) if e.busy_code().is_some() => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// After a run of writes was answered: past the threshold, wake the background
    /// checkpointer (once per threshold of growth). Its PASSIVE checkpoints cannot let the
    /// WAL start over while writes keep arriving (new frames land behind them), so past
    /// four times the threshold the writer finishes the job itself, between two runs: a
    /// PASSIVE checkpoint (most frames are already copied), and when readers on older
    /// snapshots kept it from copying every frame, a RESTART that waits at most
    /// [`RESTART_WAIT`] for them to finish (writes wait meanwhile; new reads start on the
    /// last snapshot and do not hold it up). Once every frame is copied and no reader uses
    /// the WAL, the next write starts it from the beginning. An attempt that cannot get
    /// there (a read longer than the wait, another process checkpointing) is tried again
    /// once the WAL has grown by a quarter of a threshold (four attempts before five
    /// thresholds; past that, after half a threshold), not after every write; meanwhile
    /// the background checkpointer, woken once per threshold of growth, resets the WAL as
    /// soon as the readers are gone. The WAL stays bounded under sustained load as long as
    /// reads are shorter than the wait.
    ///
    /// The reset stalls the writes for as long as its PASSIVE checkpoint takes: copying
    /// what the background checkpointer has not copied yet, and syncing. So from 3.5
    /// thresholds until the reset is due, the writer resets early, but only when the
    /// background checkpointer's last pass left at most a quarter of a threshold to copy
    /// (PASSIVE only, no waiting for readers); otherwise it wakes the background
    /// checkpointer and looks again after a sixteenth of a threshold of growth. Under
    /// sustained writes this halves the stall (the writes' p99.9 in the benchmark: 7 ms to
    /// 4 ms at 64 writers).
    ///
    /// After an inline write (`on_thread` false) the writer's own checkpoint is not run on
    /// the caller's thread: the result is `true` when it is due and the writer thread
    /// should be asked for it (once until it ran).
    pub(crate) fn after_run(&mut self, on_thread: bool) -> bool {
        if on_thread {
            self.maintain_due = false;
        }
        let (Some(c), Some(conn)) = (&self.checkpointer, &self.conn) else {
            return false;
        };
        let pages = self.wal_pages;
        let threshold = i64::from(c.threshold);
        if pages < self.retry_checkpoint_at.get() / 2 {
            // The WAL started over (a background checkpoint caught up once the readers
            // were gone, or another process checkpointed): attempts are due again.
            self.retry_checkpoint_at.set(0);
        }
        if pages < self.early_checkpoint_at.get() / 2 {
            self.early_checkpoint_at.set(0);
        }
        if pages >= 4 * threshold && pages >= self.retry_checkpoint_at.get() {
            if !on_thread {
                let ask = !self.maintain_due;
                self.maintain_due = true;
                return ask;
            }
            let reset = {
                let mut last = c
                    .running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let reset = self.checkpoint(conn, "PASSIVE") || self.restart(conn);
                if reset {
                    *last = Copied::default();
                }
                reset
            };
            if reset {
                self.reset_done();
            } else {
                // Four attempts before the WAL reaches 5 * threshold (one reader slowed
                // down past the wait does not take the WAL over its bound), then fewer:
                // past it a reader is pinning its snapshot and each attempt stalls writes.
                let step = if pages < 5 * threshold {
                    threshold / 4
                } else {
                    threshold / 2
                };
                self.retry_checkpoint_at
                    .set(pages.saturating_add(step.max(1)));
            }
            return false;
        }
        if pages >= EARLY_FROM * threshold / 4
            && pages < 4 * threshold
            && pages >= self.early_checkpoint_at.get()
        {
            // Early: the writer's reset stalls the writes for as long as its PASSIVE
            // checkpoint copies what the background one left. Before it is due, it runs
            // only when that is little; else the background checkpointer is woken to
            // copy more meanwhile.
            let mut reset = false;
            if let Ok(mut last) = c.running.try_lock() {
                if last.left(pages) <= (threshold / 4).max(1) {
                    if !on_thread {
                        let ask = !self.maintain_due;
                        self.maintain_due = true;
                        return ask;
                    }
                    // PASSIVE only: waiting for readers is for when the reset is due.
                    reset = self.checkpoint(conn, "PASSIVE");
                    if reset {
                        *last = Copied::default();
                    }
                } else {
                    drop(last);
                    let _ = c.wake.try_send(());
                }
            }
            if reset {
                self.reset_done();
                return false;
            }
            self.early_checkpoint_at
                .set(pages.saturating_add((threshold / 16).max(1)));
            return false;
        }
        // Once per threshold of growth, not after every commit: a PASSIVE checkpoint
        // beside constant commits never lets the WAL start over, so "past the threshold"
        // stays true and would wake the checkpointer after every write.
        let woke = self.woke_checkpointer_at.get();
        if pages < woke {
            // The WAL started over.
            self.woke_checkpointer_at.set(0);
        } else if pages >= threshold && pages >= woke + threshold {
            self.woke_checkpointer_at.set(pages);
            // At most one request pending; a full channel means one is on its way.
            let _ = c.wake.try_send(());
        }
        false
    }

    /// The writer's checkpoint copied every frame: the next write starts the WAL over, and
    /// the schedules of the attempts start again.
    fn reset_done(&mut self) {
        self.wal_pages = 0;
        self.retry_checkpoint_at.set(0);
        self.early_checkpoint_at.set(0);
    }

    /// Runs `PRAGMA wal_checkpoint(mode)`; true when it copied every frame (so the next
    /// write can start the WAL over).
    fn checkpoint(&self, conn: &Connection, mode: &str) -> bool {
        // (busy, frames in the WAL, frames checkpointed)
        let done = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match done {
            Ok((busy, log, checkpointed)) => {
                self.stats.checkpointed(true);
                busy == 0 && log == checkpointed
            }
            Err(_) => false,
        }
    }

    /// A RESTART checkpoint whose busy handler ([`restart_busy`]) waits at most
    /// [`RESTART_WAIT`] for the readers, then the configured `busy_timeout` again.
    fn restart(&self, conn: &Connection) -> bool {
        RESTART_UNTIL.with(|until| until.set(Instant::now().checked_add(RESTART_WAIT)));
        let reset =
            conn.busy_handler(Some(restart_busy)).is_ok() && self.checkpoint(conn, "RESTART");
        RESTART_UNTIL.with(|until| until.set(None));
        if conn.busy_timeout(self.cfg.pragmas.busy_timeout).is_err() {
            // Not expected (SQLite's call cannot fail and the builder bounds the value),
            // but if it did, the writer's retry policy would still wait out other
            // processes' locks, each attempt without waiting for the lock: say so.
            tracing::warn!(
                target: "luca_core::db",
                path = %self.cfg.path.display(),
                "cannot restore busy_timeout after a checkpoint"
            );
        }
        reset
    }

    /// Counts one answer and keeps it until the lock is released (see [`send_answers`]).
    fn finish(&self, entry: Entry, outcome: Result<()>) {
        self.finish_at(entry, outcome, Instant::now());
    }

    /// [`Writer::finish`] with the time of the answer read once for a whole group.
    fn finish_at(&self, entry: Entry, outcome: Result<()>, now: Instant) {
        let counted = match &outcome {
            Ok(()) => Outcome::Ok,
            Err(Error::Panicked { .. }) => Outcome::Panicked,
            Err(_) => Outcome::Failed,
        };
        self.stats
            .answered(counted, now.saturating_duration_since(entry.job.enqueued()));
        self.answers.borrow_mut().push((entry.job, outcome));
    }
}

/// Answers written by [`Writer::finish`], sent once the writer's lock is released, so
/// that a caller who writes again at once finds the path free for an inline write.
type Answers = Vec<(Box<dyn Job>, Result<()>)>;

/// Sends the answers, then gives their places in the bounded queue back. A panic while
/// answering (the `Drop` of a value the caller no longer waits for, or of the closure's
/// captures) is contained and counted.
fn send_answers(stats: &StatsInner, room: &Semaphore, answers: &mut Answers) {
    let mut places = 0;
    for (mut job, outcome) in answers.drain(..) {
        if let Some(place) = job.take_place() {
            place.forget();
            places += 1;
        }
        if catch_unwind(AssertUnwindSafe(move || job.answer(outcome))).is_err() {
            stats.panics.fetch_add(1, Relaxed);
        }
    }
    if places > 0 {
        room.add_permits(places);
    }
}

/// The retry schedule of one write.
fn schedule(policy: &RetryPolicy) -> Schedule<'_> {
    Schedule::new(
        policy,
        "luca_core::Db::write",
        std::panic::Location::caller(),
        None,
    )
    .started_at(Some(Instant::now()))
}

/// Runs a transaction-control statement from the statement cache (parsed once).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Errors are not `Clone`; a transaction that could not run answers each of its callers
/// with a copy: SQLite's failures keep their code and message, luca's own errors their
/// variant.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Sqlite(rusqlite::Error::SqliteFailure(code, msg)) => {
            Error::Sqlite(rusqlite::Error::SqliteFailure(*code, msg.clone()))
        }
        Error::Closed { path } => Error::Closed { path: path.clone() },
        Error::ReadOnly { path } => Error::ReadOnly { path: path.clone() },
        Error::NotWal { path, mode } => Error::NotWal {
            path: path.clone(),
            mode: mode.clone(),
        },
        Error::Panicked { message } => Error::Panicked {
            message: message.clone(),
        },
        Error::Pool { path, reason } => Error::Pool {
            path: path.clone(),
            reason: reason.clone(),
        },
        Error::TransactionEnded => Error::TransactionEnded,
        Error::Refused { statement, reason } => Error::Refused {
            statement: statement.clone(),
            reason,
        },
        Error::Reentered { call } => Error::Reentered { call },
        Error::TransactionLeftOpen { path } => Error::TransactionLeftOpen { path: path.clone() },
        Error::InvalidSetting { setting, reason } => Error::InvalidSetting {
            setting,
            reason: reason.clone(),
        },
        Error::InvalidPath { path, reason } => Error::InvalidPath {
            path: path.clone(),
            reason,
        },
        // Not SQLite's own failure code (a rusqlite-side error; a PostgreSQL error, which
        // a `Db` never makes): keep its text under SQLITE_ERROR, never a code that would
        // be retried.
        #[cfg(feature = "postgres")]
        Error::Postgres(_)
        | Error::PgPool(_)
        | Error::CommitOutcomeUnknown { .. }
        | Error::PgTransactionEnded { .. } => Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(e.to_string()),
        )),
        Error::Sqlite(_) | Error::Open { .. } => Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(e.to_string()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloned_errors_keep_their_kind_and_are_never_made_busy() {
        let path = PathBuf::from("/tmp/x.db");
        let closed = clone_error(&Error::Closed { path: path.clone() });
        assert!(matches!(closed, Error::Closed { path: p } if p == path));
        let busy = clone_error(&Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(517),
            Some("snap".into()),
        )));
        assert_eq!(busy.extended_code(), Some(517));
        assert_eq!(busy.to_string(), "snap");
        let other = clone_error(&Error::Sqlite(rusqlite::Error::InvalidQuery));
        assert_eq!(other.busy_code(), None);
        assert_eq!(other.extended_code(), Some(rusqlite::ffi::SQLITE_ERROR));
    }
}
