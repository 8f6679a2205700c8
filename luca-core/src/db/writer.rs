//! The in-process write path: one thread owns the write connection and takes writes from
//! a FIFO queue, so writers in this process never fight over SQLite's file lock (the busy
//! handler only ever waits for other processes). With group commit, the writes queued at
//! one moment run in one transaction, each in its own SAVEPOINT.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::stats::StatsInner;
use crate::error::panic_message;
use crate::retry::{RetryPolicy, Retryable, Schedule};
use crate::{Error, Result};

/// One queued write, its closure and where to send the answer, with the type erased.
pub(crate) trait Job: Send {
    /// Runs the closure; keeps its value until [`Job::answer`].
    fn run(&mut self, conn: &Connection) -> Result<()>;
    /// Sends the final answer: the kept value on `Ok`, else the error.
    fn answer(self: Box<Self>, outcome: Result<()>);
    /// When the caller asked.
    fn enqueued(&self) -> Instant;
}

pub(crate) struct TypedJob<F, T> {
    pub(crate) f: F,
    pub(crate) value: Option<T>,
    pub(crate) reply: oneshot::Sender<Result<T>>,
    pub(crate) enqueued: Instant,
}

impl<F, T> Job for TypedJob<F, T>
where
    F: FnMut(&Connection) -> Result<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> Result<()> {
        match catch_unwind(AssertUnwindSafe(|| (self.f)(conn))) {
            Ok(Ok(v)) => {
                self.value = Some(v);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(payload) => Err(Error::Panicked {
                message: panic_message(&*payload),
            }),
        }
    }

    fn answer(mut self: Box<Self>, outcome: Result<()>) {
        let answer = match (outcome, self.value.take()) {
            (Ok(()), Some(v)) => Ok(v),
            (Ok(()), None) => Err(Error::TransactionEnded),
            (Err(e), _) => Err(e),
        };
        // The caller may have gone away (a dropped future): the write stands regardless.
        let _ = self.reply.send(answer);
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
    }
}

thread_local! {
    /// Frames in the WAL after the writer thread's last commit (set by the WAL hook,
    /// which SQLite calls on the committing thread).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
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

/// Checkpoints off the commit path: a thread with its own connection runs a PASSIVE
/// checkpoint whenever the writer reports the WAL past the threshold.
pub(crate) struct Checkpointer {
    pub(crate) threshold: u32,
    pub(crate) wake: std::sync::mpsc::SyncSender<()>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

/// The checkpointer thread's loop; returns when the writer drops its end.
pub(crate) fn checkpoint_loop(conn: Connection, wake: Receiver<()>, stats: Arc<StatsInner>) {
    while wake.recv().is_ok() {
        if conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .is_ok()
        {
            stats.checkpoints.fetch_add(1, Relaxed);
        }
    }
}

pub(crate) enum Msg {
    Write(Box<dyn Job>),
    Close(oneshot::Sender<()>),
}

/// Settings of the write path.
#[derive(Clone, Debug)]
pub(crate) struct WriterConfig {
    pub(crate) group_commit: bool,
    pub(crate) max_batch: usize,
    pub(crate) max_wait: Duration,
    pub(crate) retry: RetryPolicy,
}

/// The writer thread's loop. Returns when the handle closes or every sender is gone.
pub(crate) fn run(
    conn: Connection,
    rx: Receiver<Msg>,
    cfg: WriterConfig,
    stats: Arc<StatsInner>,
    checkpointer: Option<Checkpointer>,
) {
    if checkpointer.is_some() {
        conn.wal_hook(Some(record_wal_pages));
    }
    let w = Writer {
        conn,
        cfg,
        stats,
        checkpointer,
    };
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let first = match rx.recv() {
            Ok(Msg::Write(job)) => job,
            Ok(Msg::Close(ack)) => {
                closing = Some(ack);
                break;
            }
            Err(_) => break,
        };
        let mut batch = vec![first];
        {
            let until = Instant::now() + w.cfg.max_wait;
            while batch.len() < w.cfg.max_batch {
                let next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) if w.cfg.group_commit && !w.cfg.max_wait.is_zero() => {
                        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                            .ok()
                    }
                    Err(_) => None,
                };
                match next {
                    Some(Msg::Write(job)) => batch.push(job),
                    Some(Msg::Close(ack)) => {
                        closing = Some(ack);
                        break;
                    }
                    None => break,
                }
            }
        }
        w.stats.dequeued(batch.len());
        w.execute(batch);
        w.after_run();
    }
    let Writer {
        conn, checkpointer, ..
    } = w;
    if let Some(c) = checkpointer {
        drop(c.wake);
        let _ = c.thread.join();
    }
    // Checkpoint so the WAL does not outlive the handle; a failure here loses nothing.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    drop(conn);
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

struct Writer {
    conn: Connection,
    cfg: WriterConfig,
    stats: Arc<StatsInner>,
    checkpointer: Option<Checkpointer>,
}

/// How a transaction attempt ended.
enum Tx {
    Committed,
    /// The body asked for a rollback (its write failed); nothing was committed.
    RolledBack,
    /// BEGIN or COMMIT met a busy/locked error: the whole transaction may run again.
    Busy(Error),
    /// COMMIT failed for another reason (for example a deferred constraint).
    CommitFailed(Error),
}

impl Writer {
    /// Commits a drained run of queued writes: as one group, or (group commit off, or a
    /// lone write) each in its own transaction. Replies go out after the whole run, back
    /// to back, so waking the callers' tasks stays off the path between two commits.
    fn execute(&self, batch: Vec<Box<dyn Job>>) {
        if self.cfg.group_commit && batch.len() > 1 {
            self.group(batch);
        } else {
            self.one_by_one(batch);
        }
    }

    fn one_by_one(&self, batch: Vec<Box<dyn Job>>) {
        let done: Vec<_> = batch.into_iter().map(|job| self.single(job)).collect();
        for (job, outcome) in done {
            self.finish(job, outcome);
        }
    }

    /// Sleeps per the retry policy after a busy error; `false` when it gives up.
    fn backoff(&self, schedule: &mut Schedule<'_>, e: &Error) -> bool {
        let code = e.busy_code();
        if let Some(c) = code {
            self.stats.busy(c);
        }
        match schedule.on_error(code, Instant::now) {
            Some(delay) => {
                self.stats.retries.fetch_add(1, Relaxed);
                std::thread::sleep(delay);
                true
            }
            None => false,
        }
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::new(
            &self.cfg.retry,
            "luca_core::Db::write",
            std::panic::Location::caller(),
            None,
        )
        .started_at(Some(Instant::now()))
    }

    /// Runs one write in its own transaction, retrying the transaction on busy errors;
    /// returns the job with its outcome, to be answered by the caller.
    fn single(&self, mut job: Box<dyn Job>) -> (Box<dyn Job>, Result<()>) {
        let mut schedule = self.schedule();
        loop {
            let before = self.conn.total_changes();
            let mut outcome = Ok(());
            let tx = self.transaction(|conn, started| {
                self.stats.lock_wait.record(started - job.enqueued());
                outcome = job.run(conn);
                outcome.is_ok()
            });
            match tx {
                Tx::Committed => {
                    self.committed(1, before);
                    return (job, outcome);
                }
                Tx::RolledBack => return (job, outcome),
                Tx::Busy(e) if self.backoff(&mut schedule, &e) => continue,
                Tx::Busy(e) | Tx::CommitFailed(e) => return (job, Err(e)),
            }
        }
    }

    /// Runs a batch in one transaction, each write in its own savepoint.
    fn group(&self, mut batch: Vec<Box<dyn Job>>) {
        let mut schedule = self.schedule();
        loop {
            let before = self.conn.total_changes();
            let mut outcomes: Vec<Result<()>> = Vec::with_capacity(batch.len());
            let tx = self.transaction(|conn, started| {
                outcomes.clear();
                for job in batch.iter_mut() {
                    self.stats.lock_wait.record(started - job.enqueued());
                    let outcome = savepoint(conn, job.as_mut());
                    let ended = matches!(outcome, Err(Error::TransactionEnded));
                    outcomes.push(outcome);
                    if ended {
                        break;
                    }
                }
                true
            });
            match tx {
                Tx::CommitFailed(Error::TransactionEnded) | Tx::RolledBack => {
                    // A closure ran COMMIT or ROLLBACK itself: what the writes before it
                    // did is unknown, so none is acknowledged and none is re-run.
                    for job in batch {
                        self.finish(job, Err(Error::TransactionEnded));
                    }
                    return;
                }
                Tx::Committed => {
                    self.committed(batch.len(), before);
                    for (job, outcome) in batch.into_iter().zip(outcomes) {
                        self.finish(job, outcome);
                    }
                    return;
                }
                Tx::Busy(e) if self.backoff(&mut schedule, &e) => continue,
                Tx::Busy(e) => {
                    for job in batch {
                        self.finish(job, Err(clone_error(&e)));
                    }
                    return;
                }
                Tx::CommitFailed(_) => {
                    // One write broke the shared COMMIT (a deferred constraint, say). No
                    // caller has been answered; run each alone so only the culprit fails.
                    self.stats.commit_fallbacks.fetch_add(1, Relaxed);
                    self.one_by_one(batch);
                    return;
                }
            }
        }
    }

    /// `BEGIN IMMEDIATE`, `body` (returns whether to commit), then `COMMIT` or `ROLLBACK`.
    fn transaction(&self, body: impl FnOnce(&Connection, Instant) -> bool) -> Tx {
        if let Err(e) = exec(&self.conn, "BEGIN IMMEDIATE") {
            return Tx::Busy(e.into());
        }
        let started = Instant::now();
        let commit = body(&self.conn, started);
        if self.conn.is_autocommit() {
            // A closure ended our transaction itself; whatever it did is not ours to
            // acknowledge.
            return Tx::CommitFailed(Error::TransactionEnded);
        }
        if !commit {
            self.rollback();
            return Tx::RolledBack;
        }
        match exec(&self.conn, "COMMIT") {
            Ok(()) => Tx::Committed,
            Err(e) => {
                self.rollback();
                let e = Error::from(e);
                if e.busy_code().is_some() {
                    Tx::Busy(e)
                } else {
                    Tx::CommitFailed(e)
                }
            }
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn committed(&self, writes: usize, changes_before: u64) {
        self.stats.commits.fetch_add(1, Relaxed);
        self.stats.group_sizes.record_n(writes as u64);
        let changed = self.conn.total_changes().saturating_sub(changes_before);
        self.stats.rows_changed.fetch_add(changed, Relaxed);
    }

    /// After a run of writes was answered: past the threshold, wake the background
    /// checkpointer. Its PASSIVE checkpoints cannot let the WAL start over while writes
    /// keep arriving (new frames land behind them), so past four times the threshold the
    /// writer finishes the job itself, between two runs: most frames are already copied,
    /// and once every frame is, the next write starts the WAL from the beginning. The WAL
    /// stays bounded under sustained load.
    fn after_run(&self) {
        let Some(c) = &self.checkpointer else {
            return;
        };
        let pages = i64::from(WAL_PAGES.with(std::cell::Cell::get));
        let threshold = i64::from(c.threshold);
        if pages >= 4 * threshold {
            if self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .is_ok()
            {
                self.stats.inline_checkpoints.fetch_add(1, Relaxed);
            }
            WAL_PAGES.with(|p| p.set(0));
        } else if pages >= threshold {
            // At most one request pending; a full channel means one is on its way.
            let _ = c.wake.try_send(());
        }
    }

    fn finish(&self, job: Box<dyn Job>, outcome: Result<()>) {
        let counter = match &outcome {
            Ok(()) => &self.stats.writes_ok,
            Err(Error::Panicked { .. }) => {
                self.stats.panics.fetch_add(1, Relaxed);
                &self.stats.writes_failed
            }
            Err(_) => &self.stats.writes_failed,
        };
        counter.fetch_add(1, Relaxed);
        self.stats.write_latency.record(job.enqueued().elapsed());
        job.answer(outcome);
    }
}

/// Runs a transaction-control statement from the statement cache (parsed once).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs one write of a group inside `SAVEPOINT`; a failure rolls back that write only.
fn savepoint(conn: &Connection, job: &mut dyn Job) -> Result<()> {
    exec(conn, "SAVEPOINT luca_write")?;
    let outcome = job.run(conn);
    if conn.is_autocommit() {
        return Err(Error::TransactionEnded);
    }
    if outcome.is_err() {
        exec(conn, "ROLLBACK TO luca_write")?;
    }
    exec(conn, "RELEASE luca_write")?;
    outcome
}

/// Errors are not `Clone`; a group that gives up answers every caller with the same
/// SQLite failure rebuilt from its code and message.
fn clone_error(e: &Error) -> Error {
    match e.sqlite() {
        Some(rusqlite::Error::SqliteFailure(code, msg)) => {
            Error::Sqlite(rusqlite::Error::SqliteFailure(*code, msg.clone()))
        }
        _ => Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(e.to_string()),
        )),
    }
}
