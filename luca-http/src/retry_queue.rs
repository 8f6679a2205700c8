//! [`RetryQueue`]: URLs to fetch again later, ordered by due time, deduplicated by URL,
//! bounded, safe to share between tasks, and optionally kept in a [`Db`] table so that a
//! crash or a restart loses none.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), luca_http::retry_queue::RetryQueueError> {
//! use std::time::Duration;
//! use luca_http::retry_queue::{RetryQueue, Scheduled};
//! use tokio::time::Instant;
//!
//! let queue = RetryQueue::new(10_000);
//! let now = Instant::now();
//! queue.schedule("https://example.org/b", now + Duration::from_secs(60)).await?;
//! queue.schedule("https://example.org/a", now + Duration::from_secs(30)).await?;
//! // Scheduled again, earlier: one entry, with the earlier due time.
//! let again = queue.schedule("https://example.org/b", now + Duration::from_secs(45)).await?;
//! assert!(matches!(again, Scheduled::Advanced { .. }));
//! assert_eq!(queue.len(), 2);
//!
//! // Nothing is due yet; wait (on tokio's clock) until something is.
//! assert!(queue.due(Instant::now()).await?.is_empty());
//! queue.wait_due().await;
//! assert_eq!(queue.due(Instant::now()).await?, ["https://example.org/a"]);
//! tokio::time::sleep(Duration::from_secs(15)).await;
//! assert_eq!(queue.due(Instant::now()).await?, ["https://example.org/b"]);
//! assert!(queue.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Ordering
//! Entries come out in due order; entries with the same due time come out in the order
//! they were scheduled (or moved earlier). Due times are [`tokio::time::Instant`]s, so the
//! queue follows tokio's clock and tests can run it on paused time.
//!
//! # Deduplication: the earlier due time wins
//! A URL is queued at most once. Scheduling a URL that is already queued keeps one entry
//! with the **earlier** of the two due times ([`Scheduled::Advanced`] when the new one is
//! earlier, [`Scheduled::Unchanged`] otherwise). A crawler wants a URL back as soon as any
//! of the reasons it was queued for allows. A server's `Retry-After` is a statement about
//! the host, not about one URL; it is enforced where hosts are tracked, by
//! [`HostBreaker`](crate::HostBreaker), which keeps the host closed until then whatever the
//! queue hands out.
//!
//! # Bound: a full queue refuses new URLs
//! The queue holds at most `max_len` URLs. When it is full, [`RetryQueue::schedule`] of a
//! URL that is not queued returns [`RetryQueueError::Full`], which gives the URL back;
//! nothing already queued is dropped, and nothing is dropped silently. Scheduling a URL
//! that is already queued still works when full (it does not grow the queue). A
//! persistent queue opened on a table holding more rows than `max_len` loads them all
//! and refuses new URLs until it has drained below the bound.
//!
//! # Attempt numbers
//! Each queued URL carries an attempt number: which retry of the URL this entry is for
//! (1 for the first retry), or 0 when it was scheduled without one.
//! [`RetryQueue::schedule_attempt`] records it, [`RetryQueue::attempt`] and
//! [`RetryQueue::attempts`] read it, and a persistent queue keeps it in its table, so it
//! survives a restart with the entry. Scheduling a URL that is already queued keeps the
//! larger of the two numbers. [`Fetcher`](crate::Fetcher) uses it to continue a URL's
//! backoff and its attempt limit where the previous run left off.
//!
//! # Concurrency
//! [`RetryQueue`] is a cheap `Clone + Send + Sync` handle; clones share one queue. Its
//! state sits behind one `std::sync::Mutex` that is only ever held for a few map
//! operations and never across an `.await`. Each queued entry is handed out by exactly one
//! call of [`RetryQueue::due`], however many tasks schedule and drain at once.
//!
//! # Persistence
//! [`RetryQueue::persistent`] keeps the queue in a table of a [`Db`] (default
//! [`DEFAULT_TABLE`]): it creates the table if missing and loads the rows already there,
//! so a restart picks up the retries of the previous run. Every change is written through
//! [`Db::write`] *before* it is applied in memory and before the call returns: a
//! `schedule` that returned `Ok` is committed in the file, so a crash loses no
//! acknowledged retry, and a `due` that returned URLs has deleted their rows. A call that
//! returns an error changes nothing, in memory or in the file.
//!
//! The API is the same for both kinds of queue (`schedule` and `due` are `async` and
//! return `Result` for both); an in-memory queue never waits and never fails except with
//! [`RetryQueueError::Full`]. In a persistent queue, changes are written one at a time,
//! in the order they are applied in memory (an async lock, not the state lock, keeps that
//! order), so the file always holds what the queue holds. The cost: each change of a
//! persistent queue is one [`Db::write`] and waits for the previous change's commit, so
//! its changes are not group-committed with each other (a `due` that takes many URLs is
//! one write). A call that changes nothing (a [`Scheduled::Unchanged`] that does not raise
//! the attempt number, an empty `due`) writes nothing.
//!
//! ## The table
//! One row per queued URL: `url TEXT PRIMARY KEY`, `due_unix_ms INTEGER` (below), `seq
//! INTEGER` (the scheduling order) and `attempt INTEGER NOT NULL DEFAULT 0` (see
//! [attempt numbers](#attempt-numbers)). A table made before the `attempt` column existed
//! (the first three columns only) is given it when a queue opens on it (`ALTER TABLE …
//! ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0`, in the same write that creates a
//! missing table), so its rows load with attempt 0.
//!
//! ## Due times in the file
//! The table stores each due time as wall-clock UNIX milliseconds (`due_unix_ms`). Each
//! queue takes one pair of readings when it is created, `(tokio::time::Instant::now(),
//! SystemTime::now())`, and maps between the two clocks with that one pair:
//! `due_unix_ms = unix_ms(system_anchor + (due − instant_anchor))` when writing and
//! `due = instant_anchor + (due_unix_ms − unix_ms(system_anchor))` when loading. The
//! mapping is monotonic, so the due order survives a restart exactly (entries that fall
//! into the same millisecond keep their scheduling order, which is stored as `seq`); a
//! loaded due time is precise to the millisecond, and a row due before the restart is due
//! at once. If the wall clock is stepped while a queue runs, the times it writes move by
//! that step.
//!
//! ## Cancellation
//! On an in-memory queue, `schedule` and `due` finish at their first poll, so dropping
//! them is harmless. On a persistent queue, a `schedule` or `due` future dropped while its
//! write is in flight leaves the queue as it was: the memory is not changed, and a
//! background write (on the current tokio runtime, still in order) puts the rows of the
//! URLs concerned back to what the memory holds. [`RetryQueue::wait_due`] only waits and
//! can be dropped at any time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use luca_core::Db;
use luca_core::rusqlite::{self, Connection};
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

/// The table a persistent queue uses unless told otherwise.
pub const DEFAULT_TABLE: &str = "luca_retry_queue";

/// The longest table name [`RetryQueue::persistent_in`] accepts.
pub const MAX_TABLE_NAME_LEN: usize = 64;

/// What [`RetryQueue::schedule`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// The URL was not queued; now it is, with the given due time.
    Added,
    /// The URL was queued with a later due time; it now has the new, earlier one.
    Advanced {
        /// The due time it had before.
        previous: Instant,
    },
    /// The URL was already queued with the same or an earlier due time, which it keeps.
    Unchanged {
        /// The due time it keeps.
        due: Instant,
    },
}

/// Why a [`RetryQueue`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetryQueueError {
    /// The queue already holds `max_len` URLs and `url` is not one of them, so it was not
    /// scheduled. Nothing queued was dropped; drain the queue or make it larger.
    #[error("the retry queue is full ({max_len} URLs); `{url}` was not scheduled")]
    Full {
        /// The URL that was refused, handed back.
        url: String,
        /// The queue's bound.
        max_len: usize,
    },

    /// The table name given to [`RetryQueue::persistent_in`] is not a plain SQL
    /// identifier.
    #[error("invalid retry queue table name `{name}`: {reason}")]
    InvalidTableName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The table exists but a row could not be read as a retry entry (for example a
    /// table of the same name made for something else).
    #[error("retry queue table `{table}` holds a row that is not a retry entry: {reason}")]
    BadRow {
        /// The table.
        table: String,
        /// What was wrong.
        reason: String,
    },

    /// The [`Db`] failed (closed, busy past its retry policy, I/O …). Nothing was
    /// changed, in memory or in the file.
    #[error(transparent)]
    Db(#[from] luca_core::Error),
}

/// URLs to fetch again later. See the [module documentation](self).
#[derive(Clone)]
pub struct RetryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    max_len: usize,
    state: Mutex<State>,
    /// Woken whenever an entry is added or moved earlier.
    changed: Notify,
    store: Option<Store>,
}

/// Order key: due time, then scheduling order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    due: Instant,
    seq: u64,
}

/// A queued URL: its place in the due order and its attempt number.
#[derive(Debug, Clone, Copy)]
struct Queued {
    key: Key,
    attempt: u32,
}

#[derive(Default)]
struct State {
    by_url: HashMap<String, Queued>,
    by_due: BTreeMap<Key, String>,
    next_seq: u64,
}

impl State {
    fn insert(&mut self, url: String, key: Key, attempt: u32) {
        if let Some(old) = self.by_url.insert(url.clone(), Queued { key, attempt }) {
            self.by_due.remove(&old.key);
        }
        self.by_due.insert(key, url);
    }

    /// What scheduling `url` at `due` with `attempt` (`None`: keep the stored one)
    /// would do, without doing it.
    fn plan(&self, url: &str, due: Instant, attempt: Option<u32>) -> Plan {
        match self.by_url.get(url) {
            Some(q) if q.key.due <= due => {
                let raised = attempt.filter(|&a| a > q.attempt);
                Plan::Keep(q.key.due, raised)
            }
            Some(q) => Plan::Advance(q.key.due, q.attempt.max(attempt.unwrap_or(0))),
            None => Plan::Add(attempt.unwrap_or(0)),
        }
    }

    /// The first `limit` entries due at `now`, in due order.
    fn peek_due(&self, now: Instant, limit: usize) -> Vec<(Key, String)> {
        self.by_due
            .iter()
            .take_while(|(key, _)| key.due <= now)
            .take(limit)
            .map(|(key, url)| (*key, url.clone()))
            .collect()
    }

    fn remove(&mut self, url: &str) -> Option<Key> {
        let q = self.by_url.remove(url)?;
        self.by_due.remove(&q.key);
        Some(q.key)
    }
}

/// What a schedule does: add the URL with an attempt number; move it earlier, with the
/// attempt number it then has; or keep its due time, raising its attempt number to the
/// given one (`Some`) or changing nothing (`None`).
#[derive(Debug, Clone, Copy)]
enum Plan {
    Add(u32),
    Advance(Instant, u32),
    Keep(Instant, Option<u32>),
}

struct Store {
    db: Db,
    table: String,
    /// Persistent changes are written one at a time, in the order they are applied.
    gate: Arc<tokio::sync::Mutex<()>>,
    clock: ClockMap,
}

/// One pair of clock readings, taken when the queue was created.
#[derive(Debug, Clone, Copy)]
struct ClockMap {
    instant: Instant,
    unix_ms: i64,
}

/// 30 years: far enough to be "never", near enough not to overflow an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

impl ClockMap {
    fn now() -> ClockMap {
        let instant = Instant::now();
        let unix_ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        ClockMap { instant, unix_ms }
    }

    fn to_unix_ms(self, due: Instant) -> i64 {
        if due >= self.instant {
            let ms = i64::try_from((due - self.instant).as_millis()).unwrap_or(i64::MAX);
            self.unix_ms.saturating_add(ms)
        } else {
            // Round towards the past, so the mapping stays monotonic.
            let back = self.instant - due;
            let ms = i64::try_from(back.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX);
            self.unix_ms.saturating_sub(ms)
        }
    }

    fn to_instant(self, unix_ms: i64) -> Instant {
        let diff = i128::from(unix_ms) - i128::from(self.unix_ms);
        let ms = |d: i128| Duration::from_millis(u64::try_from(d).unwrap_or(u64::MAX));
        if diff >= 0 {
            let ahead = ms(diff).min(FAR_FUTURE);
            self.instant.checked_add(ahead).unwrap_or(self.instant)
        } else {
            // Already due; as far back as the clock goes, so the order is kept.
            self.instant.checked_sub(ms(-diff)).unwrap_or(self.instant)
        }
    }
}

/// A row as written to the table.
#[derive(Debug, Clone)]
struct Row {
    url: String,
    /// `(due_unix_ms, seq, attempt)`; `None`: the URL is not queued; delete its row.
    entry: Option<(i64, u64, u32)>,
}

impl fmt::Debug for RetryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RetryQueue");
        d.field("max_len", &self.inner.max_len);
        // Never blocks: a held lock is reported as such.
        match self.inner.state.try_lock() {
            Ok(state) => d.field("len", &state.by_url.len()),
            Err(_) => d.field("len", &"<locked>"),
        };
        if let Some(store) = &self.inner.store {
            d.field("table", &store.table);
        }
        d.finish_non_exhaustive()
    }
}

fn validate_table(name: &str) -> Result<(), RetryQueueError> {
    let bad = |reason| {
        Err(RetryQueueError::InvalidTableName {
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return bad("it is empty; use letters, digits and `_`, e.g. `luca_retry_queue`");
    };
    if name.len() > MAX_TABLE_NAME_LEN {
        return bad("it is longer than 64 characters");
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return bad("it must start with an ASCII letter or `_`");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return bad("only ASCII letters, digits and `_` are allowed");
    }
    if name.len() >= 7 && name[..7].eq_ignore_ascii_case("sqlite_") {
        return bad("names starting with `sqlite_` are reserved by SQLite");
    }
    Ok(())
}

impl RetryQueue {
    /// An empty in-memory queue holding at most `max_len` URLs (`0` refuses every URL).
    pub fn new(max_len: usize) -> RetryQueue {
        RetryQueue::with_parts(max_len, State::default(), None)
    }

    /// A queue kept in the table [`DEFAULT_TABLE`] of `db`; see
    /// [`RetryQueue::persistent_in`].
    ///
    /// # Errors
    /// As [`RetryQueue::persistent_in`].
    pub async fn persistent(db: &Db, max_len: usize) -> Result<RetryQueue, RetryQueueError> {
        RetryQueue::persistent_in(db, DEFAULT_TABLE, max_len).await
    }

    /// A queue kept in the table `table` of `db`, holding at most `max_len` URLs: creates
    /// the table if it is missing and loads the rows it holds (all of them, even more
    /// than `max_len`), with their due order. Later changes are written through
    /// [`Db::write`]; see the [module documentation](self#persistence).
    ///
    /// Two queues must not share one table at the same time: each keeps its own copy in
    /// memory.
    ///
    /// # Errors
    /// [`RetryQueueError::InvalidTableName`] unless `table` is 1 to 64 ASCII letters,
    /// digits and `_`, starting with a letter or `_` and not with `sqlite_`;
    /// [`RetryQueueError::BadRow`] when the table holds a row that is not a retry entry;
    /// [`RetryQueueError::Db`] when the table cannot be created or read (for example a
    /// table of that name with other columns).
    pub async fn persistent_in(
        db: &Db,
        table: &str,
        max_len: usize,
    ) -> Result<RetryQueue, RetryQueueError> {
        validate_table(table)?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (\
             url TEXT PRIMARY KEY NOT NULL, \
             due_unix_ms INTEGER NOT NULL, \
             seq INTEGER NOT NULL, \
             attempt INTEGER NOT NULL DEFAULT 0)"
        );
        let migrate_table = table.to_owned();
        db.write(move |conn| {
            conn.execute_batch(&create)?;
            migrate(conn, &migrate_table)?;
            Ok(())
        })
        .await?;
        let select = format!("SELECT url, due_unix_ms, seq, attempt FROM \"{table}\"");
        let rows: Vec<(String, i64, i64, i64)> = db
            .read(move |conn| {
                let mut stmt = conn.prepare(&select)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        let clock = ClockMap::now();
        let mut state = State::default();
        for (url, due_ms, seq, attempt) in rows {
            let bad = |reason: String| {
                Err(RetryQueueError::BadRow {
                    table: table.to_owned(),
                    reason,
                })
            };
            let Ok(seq) = u64::try_from(seq) else {
                return bad(format!("`seq` of `{url}` is negative ({seq})"));
            };
            let Ok(attempt) = u32::try_from(attempt) else {
                return bad(format!(
                    "`attempt` of `{url}` is not in 0..=4294967295 ({attempt})"
                ));
            };
            state.next_seq = state.next_seq.max(seq.saturating_add(1));
            let key = Key {
                due: clock.to_instant(due_ms),
                seq,
            };
            state.insert(url, key, attempt);
        }
        tracing::debug!(table, loaded = state.by_url.len(), "retry queue loaded");
        let store = Store {
            db: db.clone(),
            table: table.to_owned(),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            clock,
        };
        Ok(RetryQueue::with_parts(max_len, state, Some(store)))
    }

    fn with_parts(max_len: usize, state: State, store: Option<Store>) -> RetryQueue {
        RetryQueue {
            inner: Arc::new(Inner {
                max_len,
                state: Mutex::new(state),
                changed: Notify::new(),
                store,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is made whole under the lock, so a poisoned lock holds a
        // consistent state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `url` to be handed out by [`RetryQueue::due`] once `due` has passed.
    ///
    /// A URL already queued keeps one entry with the earlier due time (see
    /// [deduplication](self#deduplication-the-earlier-due-time-wins)). On a persistent
    /// queue, `Ok` means the entry is committed in the file.
    ///
    /// # Errors
    /// [`RetryQueueError::Full`] when the queue holds `max_len` URLs and `url` is not one
    /// of them; [`RetryQueueError::Db`] when the write to the table failed (the queue is
    /// then unchanged).
    pub async fn schedule(
        &self,
        url: impl Into<String>,
        due: Instant,
    ) -> Result<Scheduled, RetryQueueError> {
        self.schedule_as(url.into(), due, None).await
    }

    /// [`RetryQueue::schedule`], recording that this retry is attempt number `attempt`
    /// of the URL (see [attempt numbers](self#attempt-numbers)). A URL already queued
    /// keeps the earlier due time as with `schedule`, and the larger of its stored and
    /// the given attempt number; a larger number is written even when the due time is
    /// kept ([`Scheduled::Unchanged`]).
    ///
    /// # Errors
    /// As [`RetryQueue::schedule`].
    pub async fn schedule_attempt(
        &self,
        url: impl Into<String>,
        due: Instant,
        attempt: u32,
    ) -> Result<Scheduled, RetryQueueError> {
        self.schedule_as(url.into(), due, Some(attempt)).await
    }

    async fn schedule_as(
        &self,
        url: String,
        due: Instant,
        attempt: Option<u32>,
    ) -> Result<Scheduled, RetryQueueError> {
        let Some(store) = &self.inner.store else {
            let mut state = self.state();
            let plan = self.check(&state, &url, due, attempt)?;
            let key = Key {
                due,
                seq: state.next_seq,
            };
            return Ok(self.apply_schedule(&mut state, url, key, plan));
        };
        // Every change of a persistent queue holds the gate from its plan until it is
        // applied in memory, so the plan stays valid and the file sees changes in order.
        let gate = Arc::clone(&store.gate).lock_owned().await;
        let (plan, key) = {
            let state = self.state();
            let plan = self.check(&state, &url, due, attempt)?;
            let key = match (plan, state.by_url.get(&url)) {
                // The due time is kept: so is the entry's place in the order.
                (Plan::Keep(..), Some(q)) => q.key,
                _ => Key {
                    due,
                    seq: state.next_seq,
                },
            };
            (plan, key)
        };
        let attempt = match plan {
            Plan::Keep(kept, None) => return Ok(Scheduled::Unchanged { due: kept }),
            Plan::Keep(_, Some(a)) | Plan::Advance(_, a) | Plan::Add(a) => a,
        };
        let row = Row {
            url: url.clone(),
            entry: Some((store.clock.to_unix_ms(key.due), key.seq, attempt)),
        };
        let mut restore = Restore::new(self, gate, vec![url.clone()]);
        let written = self.write_rows(store, vec![row]).await;
        restore.disarm();
        written?;
        let mut state = self.state();
        Ok(self.apply_schedule(&mut state, url, key, plan))
    }

    fn check(
        &self,
        state: &State,
        url: &str,
        due: Instant,
        attempt: Option<u32>,
    ) -> Result<Plan, RetryQueueError> {
        let plan = state.plan(url, due, attempt);
        if matches!(plan, Plan::Add(_)) && state.by_url.len() >= self.inner.max_len {
            return Err(RetryQueueError::Full {
                url: url.to_owned(),
                max_len: self.inner.max_len,
            });
        }
        Ok(plan)
    }

    fn apply_schedule(&self, state: &mut State, url: String, key: Key, plan: Plan) -> Scheduled {
        let (outcome, attempt) = match plan {
            Plan::Keep(kept, raised) => {
                if let (Some(a), Some(q)) = (raised, state.by_url.get_mut(&url)) {
                    q.attempt = a;
                }
                return Scheduled::Unchanged { due: kept };
            }
            Plan::Add(a) => (Scheduled::Added, a),
            Plan::Advance(previous, a) => (Scheduled::Advanced { previous }, a),
        };
        state.next_seq = state.next_seq.max(key.seq.saturating_add(1));
        state.insert(url, key, attempt);
        self.inner.changed.notify_waiters();
        outcome
    }

    /// Removes and returns every URL due at `now` (due time ≤ `now`), in due order.
    ///
    /// On a persistent queue, their rows are deleted before they are returned.
    ///
    /// # Errors
    /// [`RetryQueueError::Db`] when the delete failed; the URLs then stay queued.
    pub async fn due(&self, now: Instant) -> Result<Vec<String>, RetryQueueError> {
        self.due_up_to(now, usize::MAX).await
    }

    /// [`RetryQueue::due`], returning at most `limit` URLs (the earliest ones); the rest
    /// stay queued.
    ///
    /// # Errors
    /// As [`RetryQueue::due`].
    pub async fn due_up_to(
        &self,
        now: Instant,
        limit: usize,
    ) -> Result<Vec<String>, RetryQueueError> {
        let Some(store) = &self.inner.store else {
            let mut state = self.state();
            let taken = state.peek_due(now, limit);
            for (_, url) in &taken {
                state.remove(url);
            }
            return Ok(taken.into_iter().map(|(_, url)| url).collect());
        };
        let gate = Arc::clone(&store.gate).lock_owned().await;
        let taken = self.state().peek_due(now, limit);
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        let urls: Vec<String> = taken.into_iter().map(|(_, url)| url).collect();
        let rows = urls
            .iter()
            .map(|url| Row {
                url: url.clone(),
                entry: None,
            })
            .collect();
        let mut restore = Restore::new(self, gate, urls.clone());
        let written = self.write_rows(store, rows).await;
        restore.disarm();
        written?;
        let mut state = self.state();
        for url in &urls {
            state.remove(url);
        }
        Ok(urls)
    }

    /// Takes `url` out of the queue (for example because it was fetched by other means);
    /// returns whether it was queued.
    ///
    /// # Errors
    /// [`RetryQueueError::Db`] when the delete failed; the URL then stays queued.
    pub async fn remove(&self, url: &str) -> Result<bool, RetryQueueError> {
        let Some(store) = &self.inner.store else {
            return Ok(self.state().remove(url).is_some());
        };
        let gate = Arc::clone(&store.gate).lock_owned().await;
        if !self.state().by_url.contains_key(url) {
            return Ok(false);
        }
        let row = Row {
            url: url.to_owned(),
            entry: None,
        };
        let mut restore = Restore::new(self, gate, vec![url.to_owned()]);
        let written = self.write_rows(store, vec![row]).await;
        restore.disarm();
        written?;
        Ok(self.state().remove(url).is_some())
    }

    /// Waits (on tokio's clock) until at least one URL is due, then returns; call
    /// [`RetryQueue::due`] to take them. Waits for a first entry when the queue is empty,
    /// and wakes early when an earlier entry is scheduled meanwhile.
    ///
    /// Cancellation-safe: it takes nothing out of the queue. When several tasks wait,
    /// all of them wake, and [`RetryQueue::due`] hands each URL to one of them.
    pub async fn wait_due(&self) {
        loop {
            let mut changed = std::pin::pin!(self.inner.changed.notified());
            // Registered before the state is read, so no wake-up can slip in between.
            changed.as_mut().enable();
            match self.next_due() {
                Some(due) if due <= Instant::now() => return,
                // Woken by the due time (a timeout) or by a change: look again either way.
                Some(due) => drop(tokio::time::timeout_at(due, changed).await),
                None => changed.await,
            }
        }
    }

    /// The earliest due time queued, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.state().by_due.keys().next().map(|key| key.due)
    }

    /// The due time of `url`, if it is queued.
    pub fn due_time(&self, url: &str) -> Option<Instant> {
        self.state().by_url.get(url).map(|q| q.key.due)
    }

    /// The attempt number stored with `url`, if it is queued (0 when it was scheduled
    /// without one, with [`RetryQueue::schedule`]); see
    /// [attempt numbers](self#attempt-numbers).
    pub fn attempt(&self, url: &str) -> Option<u32> {
        self.state().by_url.get(url).map(|q| q.attempt)
    }

    /// Every queued URL whose attempt number is not 0, with that number, in due order (a
    /// snapshot; nothing is removed).
    pub fn attempts(&self) -> Vec<(String, u32)> {
        let state = self.state();
        state
            .by_due
            .values()
            .filter_map(|url| {
                let a = state.by_url.get(url)?.attempt;
                (a > 0).then(|| (url.clone(), a))
            })
            .collect()
    }

    /// Every queued URL with its due time, in due order (a snapshot; nothing is removed).
    pub fn entries(&self) -> Vec<(String, Instant)> {
        self.state()
            .by_due
            .iter()
            .map(|(key, url)| (url.clone(), key.due))
            .collect()
    }

    /// How many URLs are queued.
    pub fn len(&self) -> usize {
        self.state().by_url.len()
    }

    /// Whether no URL is queued.
    pub fn is_empty(&self) -> bool {
        self.state().by_url.is_empty()
    }

    /// The bound given when the queue was made.
    pub fn max_len(&self) -> usize {
        self.inner.max_len
    }

    /// The table this queue is kept in, for a persistent queue.
    pub fn table(&self) -> Option<&str> {
        self.inner.store.as_ref().map(|s| s.table.as_str())
    }

    /// Writes `rows` in one transaction: an entry is upserted, `None` deletes the row.
    async fn write_rows(&self, store: &Store, rows: Vec<Row>) -> Result<(), RetryQueueError> {
        let table = store.table.clone();
        store
            .db
            .write(move |conn| write_rows(conn, &table, &rows))
            .await?;
        Ok(())
    }
}

/// Adds the `attempt` column to a queue table made before it existed (url, due_unix_ms
/// and seq only), with the default 0. A table of another shape is left alone (reading it
/// then fails with a typed error).
fn migrate(conn: &Connection, table: &str) -> luca_core::Result<()> {
    let columns = conn
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let has = |c: &str| columns.iter().any(|n| n.eq_ignore_ascii_case(c));
    if has("url") && has("due_unix_ms") && has("seq") && !has("attempt") {
        conn.execute_batch(&format!(
            "ALTER TABLE \"{table}\" ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0"
        ))?;
        tracing::info!(table, "retry queue table: added the `attempt` column");
    }
    Ok(())
}

fn write_rows(conn: &Connection, table: &str, rows: &[Row]) -> luca_core::Result<()> {
    for row in rows {
        match row.entry {
            Some((due_ms, seq, attempt)) => {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                conn.prepare_cached(&format!(
                    "INSERT INTO \"{table}\" (url, due_unix_ms, seq, attempt) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (url) DO UPDATE SET \
                     due_unix_ms = excluded.due_unix_ms, seq = excluded.seq, \
                     attempt = excluded.attempt"
                ))?
                .execute(rusqlite::params![row.url, due_ms, seq, attempt])?;
            }
            None => {
                conn.prepare_cached(&format!("DELETE FROM \"{table}\" WHERE url = ?1"))?
                    .execute([&row.url])?;
            }
        }
    }
    Ok(())
}

/// Puts the rows of `urls` back to what the memory holds if the write in flight is
/// abandoned (its future dropped), still holding the gate so no later change overtakes it.
struct Restore {
    queue: Option<RetryQueue>,
    gate: Option<OwnedMutexGuard<()>>,
    urls: Vec<String>,
}

impl Restore {
    fn new(queue: &RetryQueue, gate: OwnedMutexGuard<()>, urls: Vec<String>) -> Restore {
        Restore {
            queue: Some(queue.clone()),
            gate: Some(gate),
            urls,
        }
    }

    /// The write finished (either way): nothing to restore; the gate is released when
    /// this is dropped, after the caller applied the change in memory.
    fn disarm(&mut self) {
        self.queue = None;
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let (Some(queue), Some(gate)) = (self.queue.take(), self.gate.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "a persistent retry queue write was abandoned outside a tokio runtime; \
                 its rows may differ from the queue until they change again"
            );
            return;
        };
        let urls = std::mem::take(&mut self.urls);
        runtime.spawn(async move {
            let _gate = gate;
            let Some(store) = &queue.inner.store else {
                return;
            };
            let rows: Vec<Row> = {
                let state = queue.state();
                urls.into_iter()
                    .map(|url| {
                        let entry = state.by_url.get(&url).map(|q| {
                            (store.clock.to_unix_ms(q.key.due), q.key.seq, q.attempt)
                        });
                        Row { url, entry }
                    })
                    .collect()
            };
            if let Err(e) = queue.write_rows(store, rows).await {
                tracing::warn!(error = %e, "could not restore retry queue rows after a dropped call");
            }
        });
    }
}
