//! `Db` against hostile closures and settings: SQLite's own rollbacks, transaction control
//! and managed PRAGMAs inside closures, blocking calls from the wrong place, panics in
//! `Drop`, a connection stuck in a transaction, a full queue, extreme settings, readers
//! that try to write. In every case each caller's answer must match the file, and
//! nothing may hang. Real files, tasks and threads.

use std::sync::mpsc;
use std::time::Duration;

use luca_core::rusqlite::{self, Connection};
use luca_core::{Db, Error};
use luca_testkit::TempDb;

const T: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER NOT NULL);
    CREATE TRIGGER IF NOT EXISTS no_negatives BEFORE INSERT ON t WHEN NEW.v < 0
    BEGIN SELECT RAISE(ROLLBACK, 'negative v refused by trigger'); END;
    INSERT OR IGNORE INTO t (k, v) VALUES ('taken', 0);";

async fn open(
    tmp: &TempDb,
    builder: impl FnOnce(luca_core::DbBuilder) -> luca_core::DbBuilder,
) -> Db {
    let db = builder(crate::mode(Db::builder(tmp.path())))
        .build()
        .await
        .unwrap();
    db.write(|c| Ok(c.execute_batch(SCHEMA)?)).await.unwrap();
    db
}

/// Keys in the file (the setup row excluded), read by a connection of the test's own.
fn keys(path: &std::path::Path) -> Vec<String> {
    let c = Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT k FROM t WHERE k <> 'taken' ORDER BY k")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn insert(c: &Connection, k: &str, v: i64) -> rusqlite::Result<usize> {
    c.execute(
        "INSERT INTO t (k, v) VALUES (?1, ?2)",
        rusqlite::params![k, v],
    )
}

/// Holds the writer thread inside a write until the returned sender fires, so that the
/// writes queued meanwhile form one group.
async fn hold_writer(db: &Db) -> (mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, wait) = mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let db = db.clone();
    let task = tokio::spawn(async move {
        db.write(move |_| {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let _ = wait.lock().unwrap().recv_timeout(T);
            Ok(())
        })
        .await
        .unwrap();
    });
    tokio::time::timeout(T, started_rx)
        .await
        .expect("the writer picked up the holding write")
        .unwrap();
    (release, task)
}

/// Waits (bounded) until `n` writes are queued behind a held writer.
async fn wait_for_queue(db: &Db, n: usize) {
    let deadline = tokio::time::Instant::now() + T;
    while db.stats().queue_depth != n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(db.stats().queue_depth, n, "writes did not reach the queue");
}

type Answer = tokio::task::JoinHandle<luca_core::Result<()>>;
type Write = Box<dyn FnMut(&Connection) -> luca_core::Result<()> + Send>;

/// Queues writes one by one behind a held writer (so they form one group, in order),
/// releases the writer, and returns the answers in queue order.
async fn group_of(db: &Db, writes: Vec<Write>) -> Vec<luca_core::Result<()>> {
    let (release, holder) = hold_writer(db).await;
    let mut answers: Vec<Answer> = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        let db2 = db.clone();
        answers.push(tokio::spawn(async move { db2.write(w).await }));
        wait_for_queue(db, i + 1).await;
    }
    release.send(()).unwrap();
    holder.await.unwrap();
    let mut out = Vec::new();
    for a in answers {
        out.push(tokio::time::timeout(T, a).await.expect("answered").unwrap());
    }
    out
}

fn boxed(f: impl FnMut(&Connection) -> luca_core::Result<()> + Send + 'static) -> Write {
    Box::new(f)
}

/// An error a closure returns on purpose.
fn test_error(reason: &str) -> Error {
    Error::from(rusqlite::Error::InvalidParameterName(reason.to_owned()))
}

fn sqlite_message(e: &Error) -> String {
    match e.sqlite() {
        Some(rusqlite::Error::SqliteFailure(_, Some(m))) => m.clone(),
        other => panic!("not a SQLite failure with a message: {other:?} ({e})"),
    }
}

// ---------------------------------------------------------------- SQLite's own rollbacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raise_rollback_fails_its_writer_alone_and_the_group_commits() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let lock_waits_before = db.stats().lock_wait_ns.count;
    let answers = group_of(
        &db,
        vec![
            boxed(|c| Ok(insert(c, "a", 1).map(drop)?)),
            boxed(|c| {
                insert(c, "b", 2)?;
                insert(c, "culprit", -1)?;
                Ok(())
            }),
            boxed(|c| Ok(insert(c, "c", 3).map(drop)?)),
        ],
    )
    .await;
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert!(answers[2].is_ok(), "{:?}", answers[2]);
    let err = answers[1].as_ref().unwrap_err();
    assert_eq!(sqlite_message(err), "negative v refused by trigger");
    assert_eq!(
        err.extended_code(),
        Some(rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER)
    );
    assert_eq!(
        keys(tmp.path()),
        ["a", "c"],
        "innocent writes committed, the culprit's not"
    );
    let stats = db.stats();
    assert_eq!(stats.sqlite_rollbacks, 1);
    assert_eq!(
        stats.writes_ok,
        1 + 1 + 2,
        "setup, holder and the two innocent writes"
    );
    assert_eq!(
        stats.rows_changed,
        2 + 1,
        "setup row and the two committed rows"
    );
    assert_eq!(
        stats.lock_wait_ns.count - lock_waits_before,
        1 + 3,
        "one lock wait per write (the holder and three), though `a` ran twice"
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn raise_rollback_in_a_lone_write_keeps_sqlites_message() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let err = db
        .write(|c| Ok(insert(c, "x", -5).map(drop)?))
        .await
        .unwrap_err();
    assert_eq!(sqlite_message(&err), "negative v refused by trigger");
    assert!(keys(tmp.path()).is_empty());
    db.write(|c| Ok(insert(c, "y", 1).map(drop)?))
        .await
        .unwrap();
    assert_eq!(keys(tmp.path()), ["y"]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_or_rollback_fails_its_writer_alone() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let answers = group_of(
        &db,
        vec![
            boxed(|c| Ok(insert(c, "a", 1).map(drop)?)),
            boxed(|c| {
                c.execute("INSERT OR ROLLBACK INTO t (k, v) VALUES ('taken', 9)", [])?;
                Ok(())
            }),
            boxed(|c| Ok(insert(c, "c", 3).map(drop)?)),
        ],
    )
    .await;
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    let err = answers[1].as_ref().unwrap_err();
    assert!(
        sqlite_message(err).contains("UNIQUE constraint failed"),
        "{err}"
    );
    assert_eq!(keys(tmp.path()), ["a", "c"]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_that_swallows_sqlites_rollback_and_writes_on_commits_nothing() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let answers = group_of(
        &db,
        vec![
            boxed(|c| Ok(insert(c, "a", 1).map(drop)?)),
            boxed(|c| {
                let _ = insert(c, "before", 1);
                let _ = insert(c, "culprit", -1);
                // The transaction is gone: in autocommit mode this would commit at once.
                let _ = insert(c, "after", 1);
                Ok(())
            }),
            boxed(|c| Ok(insert(c, "c", 3).map(drop)?)),
        ],
    )
    .await;
    assert!(
        matches!(answers[1], Err(Error::TransactionEnded)),
        "{:?}",
        answers[1]
    );
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    assert_eq!(
        keys(tmp.path()),
        ["a", "c"],
        "nothing of the culprit, not even `after`"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_fails_its_writer_and_answers_match_the_file() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let answers = group_of(
        &db,
        vec![
            boxed(|c| Ok(insert(c, "a", 1).map(drop)?)),
            boxed(|c| {
                insert(c, "big-before", 1)?;
                let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))?;
                let full = c.execute(
                    "INSERT INTO t (k, v) VALUES (hex(randomblob(400000)), 1)",
                    [],
                );
                c.execute_batch("PRAGMA max_page_count = 1073741823")?;
                full?;
                Ok(())
            }),
            boxed(|c| Ok(insert(c, "c", 3).map(drop)?)),
        ],
    )
    .await;
    let err = answers[1].as_ref().unwrap_err();
    assert_eq!(
        err.sqlite().and_then(rusqlite::Error::sqlite_error_code),
        Some(rusqlite::ErrorCode::DiskFull),
        "{err}"
    );
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    assert_eq!(keys(tmp.path()), ["a", "c"]);
    db.close().await.unwrap();
}

// ------------------------------------------------------ transaction control in closures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_inside_a_closure_is_refused_and_neighbours_commit() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let settings = |db: Db| async move {
        db.write(|c| {
            Ok((
                c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?,
                c.query_row("PRAGMA query_only", [], |r| r.get::<_, i64>(0))?,
            ))
        })
        .await
        .unwrap()
    };
    let (sync, query_only) = settings(db.clone()).await;
    assert!(sync >= 1 && query_only == 0, "NORMAL or more, writable");
    let refused: [(&'static str, &str); 11] = [
        ("COMMIT", "COMMIT"),
        ("END", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("ROLLBACK; BEGIN", "ROLLBACK"),
        ("BEGIN", "BEGIN"),
        ("RELEASE luca_write", "RELEASE luca_write"),
        ("ROLLBACK TO luca_write", "ROLLBACK TO luca_write"),
        ("SAVEPOINT mine", "SAVEPOINT mine"),
        ("PRAGMA synchronous = OFF", "PRAGMA synchronous = OFF"),
        ("PRAGMA query_only = 1", "PRAGMA query_only = 1"),
        (
            "PRAGMA journal_mode = DELETE",
            "PRAGMA journal_mode = DELETE",
        ),
    ];
    let mut writes = vec![];
    for (i, &(sql, _)) in refused.iter().enumerate() {
        let innocent = format!("ok{i:02}");
        writes.push(boxed(move |c| Ok(insert(c, &innocent, 1).map(drop)?)));
        // Half of them swallow SQLite's "not authorized" and return Ok anyway.
        let swallow = i % 2 == 1;
        let guilty = format!("bad{i:02}");
        writes.push(boxed(move |c| {
            insert(c, &guilty, 1)?;
            let r = c.execute_batch(sql);
            if !swallow {
                r?;
            }
            Ok(())
        }));
    }
    let answers = group_of(&db, writes).await;
    for (i, (sql, statement)) in refused.iter().enumerate() {
        assert!(answers[2 * i].is_ok(), "{sql}: {:?}", answers[2 * i]);
        match &answers[2 * i + 1] {
            Err(Error::Refused { statement: s, .. }) => assert_eq!(s, statement, "{sql}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
    let want: Vec<String> = (0..refused.len()).map(|i| format!("ok{i:02}")).collect();
    assert_eq!(keys(tmp.path()), want);
    assert_eq!(db.stats().refused, refused.len() as u64);
    // The write connection kept its settings.
    assert_eq!(settings(db.clone()).await, (sync, query_only));
    db.close().await.unwrap();
}

#[tokio::test]
async fn transaction_control_in_a_lone_write_is_refused() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b.group_commit(false)).await;
    let err = db
        .write(|c| {
            insert(c, "x", 1)?;
            let _ = c.execute_batch("COMMIT; INSERT INTO t (k, v) VALUES ('y', 1)");
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert!(keys(tmp.path()).is_empty());
    db.close().await.unwrap();
}

// ---------------------------------------------------------- blocking API, wrong places

#[tokio::test]
async fn blocking_calls_inside_async_code_complete_without_panicking() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    // On the only worker thread of a current-thread runtime.
    db.write_blocking(|c| Ok(insert(c, "blocking", 1).map(drop)?))
        .unwrap();
    assert_eq!(keys(tmp.path()), ["blocking"]);
    db.close_blocking().unwrap();
    assert!(matches!(
        db.write_blocking(|_| Ok(())),
        Err(Error::Closed { .. })
    ));
}

#[tokio::test]
async fn blocking_calls_from_a_write_closure_are_refused_not_deadlocked() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let inner = db.clone();
    let outcome = tokio::time::timeout(
        T,
        db.write(move |c| {
            insert(c, "outer", 1)?;
            let nested = inner.write_blocking(|c| Ok(insert(c, "nested", 1).map(drop)?));
            let close = inner.close_blocking();
            Ok((nested, close))
        }),
    )
    .await
    .expect("a nested blocking call must not hang the writer")
    .unwrap();
    assert!(
        matches!(outcome.0, Err(Error::Reentered { call: "Db::write" })),
        "{:?}",
        outcome.0
    );
    assert!(
        matches!(outcome.1, Err(Error::Reentered { call: "Db::close" })),
        "{:?}",
        outcome.1
    );
    assert_eq!(keys(tmp.path()), ["outer"]);
    db.close().await.unwrap();
}

// ------------------------------------------------------------ the writer must not die

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_of_duration_max_is_refused_and_the_limit_works() {
    let tmp = TempDb::new();
    open(&tmp, |b| b).await.close().await.unwrap();
    for d in [
        Duration::MAX,
        luca_core::DbBuilder::MAX_WAIT_LIMIT + Duration::from_nanos(1),
    ] {
        let err = crate::mode(Db::builder(tmp.path()))
            .max_wait(d)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidSetting {
                    setting: "max_wait",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // At the limit, a lone write waits for company, and the batch closes on its arrival.
    let db = crate::mode(Db::builder(tmp.path()))
        .max_wait(luca_core::DbBuilder::MAX_WAIT_LIMIT)
        .max_batch(2)
        .build()
        .await
        .unwrap();
    let first = {
        let db = db.clone();
        tokio::spawn(async move { db.write(|c| Ok(insert(c, "a", 1).map(drop)?)).await })
    };
    let second = db.write(|c| Ok(insert(c, "b", 1).map(drop)?));
    tokio::time::timeout(T, second).await.unwrap().unwrap();
    tokio::time::timeout(T, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(keys(tmp.path()), ["a", "b"]);
    assert_eq!(db.stats().group_sizes.max, 2);
    db.close().await.unwrap();
}

struct PanicsOnDrop(&'static str);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("{} panicked in Drop", self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_drop_of_captures_or_values_does_not_kill_the_writer() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    // Captures: dropped on the writer thread once the write is answered.
    let bomb = PanicsOnDrop("a capture");
    db.write(move |c| {
        let _ = &bomb;
        Ok(insert(c, "captures", 1).map(drop)?)
    })
    .await
    .unwrap();
    // A value whose caller is gone: dropped on the writer thread too.
    let (release, holder) = hold_writer(&db).await;
    let orphan = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|c| {
                insert(c, "orphan", 1)?;
                Ok(PanicsOnDrop("a value"))
            })
            .await
            .map(std::mem::forget)
        })
    };
    wait_for_queue(&db, 1).await;
    orphan.abort();
    assert!(orphan.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    holder.await.unwrap();
    // The writer lives on, and the writes it answered are in the file.
    db.write(|c| Ok(insert(c, "after", 1).map(drop)?))
        .await
        .unwrap();
    assert_eq!(keys(tmp.path()), ["after", "captures", "orphan"]);
    assert_eq!(
        db.stats().panics,
        2,
        "both panicking drops were contained and counted"
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_rollback_does_not_leave_the_writer_inside_a_transaction() {
    use luca_core::rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    // A hostile closure makes every later ROLLBACK on the write connection fail.
    let err = db
        .write(|c| {
            insert(c, "hostile", 1)?;
            c.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
                AuthAction::Transaction { .. } => Authorization::Deny,
                _ => Authorization::Allow,
            }))?;
            Err::<(), _>(test_error("roll me back"))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.sqlite(), Some(rusqlite::Error::InvalidParameterName(m)) if m == "roll me back"),
        "{err:?}"
    );
    db.write(|c| Ok(insert(c, "next", 1).map(drop)?))
        .await
        .unwrap();
    assert_eq!(keys(tmp.path()), ["next"]);
    assert_eq!(db.stats().reopens, 1);
    db.close().await.unwrap();
}

// ------------------------------------------------------- backpressure and cancellation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_writers_wait_and_a_dropped_waiter_never_runs() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b.max_queue(2)).await;
    let (release, holder) = hold_writer(&db).await; // takes one place
    let queued = {
        let db = db.clone();
        tokio::spawn(async move { db.write(|c| Ok(insert(c, "queued", 1).map(drop)?)).await })
    };
    wait_for_queue(&db, 1).await; // the second place
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move { db.write(|c| Ok(insert(c, "dropped", 1).map(drop)?)).await })
    };
    let deadline = tokio::time::Instant::now() + T;
    while db.stats().queue_full_waits == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        db.stats().queue_full_waits,
        1,
        "the third write waits for room"
    );
    assert_eq!(db.stats().queue_depth, 1, "and is not queued");
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // A blocking writer waits for room too, on its own thread.
    let blocking = {
        let db = db.clone();
        std::thread::spawn(move || db.write_blocking(|c| Ok(insert(c, "blocking", 1).map(drop)?)))
    };
    while db.stats().queue_full_waits < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(db.stats().queue_full_waits, 2);
    release.send(()).unwrap();
    holder.await.unwrap();
    queued.await.unwrap().unwrap();
    tokio::task::spawn_blocking(move || blocking.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        keys(tmp.path()),
        ["blocking", "queued"],
        "the dropped waiter never ran"
    );
    assert!(db.stats().max_queue_depth <= 2);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_writers_waiting_for_room_with_closed() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b.max_queue(1)).await;
    let (release, holder) = hold_writer(&db).await;
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move { db.write(|c| Ok(insert(c, "late", 1).map(drop)?)).await })
    };
    let deadline = tokio::time::Instant::now() + T;
    while db.stats().queue_full_waits == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let closing = {
        let db = db.clone();
        tokio::spawn(async move { db.close().await })
    };
    let late = tokio::time::timeout(T, waiting).await.unwrap().unwrap();
    assert!(matches!(late, Err(Error::Closed { .. })), "{late:?}");
    release.send(()).unwrap();
    holder.await.unwrap();
    closing.await.unwrap().unwrap();
    assert!(keys(tmp.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_group_commit_off_each_caller_is_answered_after_its_own_commit() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b.group_commit(false)).await;
    let (release, holder) = hold_writer(&db).await;
    let first = {
        let db = db.clone();
        tokio::spawn(async move { db.write(|c| Ok(insert(c, "first", 1).map(drop)?)).await })
    };
    wait_for_queue(&db, 1).await;
    // The second write runs only once the first caller has its answer.
    let (answered_tx, answered_rx) = mpsc::channel::<()>();
    let answered_rx = std::sync::Mutex::new(answered_rx);
    let second = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(move |c| {
                answered_rx.lock().unwrap().recv_timeout(T).map_err(|_| {
                    test_error("the first caller was not answered before the next write")
                })?;
                Ok(insert(c, "second", 1).map(drop)?)
            })
            .await
        })
    };
    wait_for_queue(&db, 2).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    tokio::time::timeout(T, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    answered_tx.send(()).unwrap();
    tokio::time::timeout(T, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(keys(tmp.path()), ["first", "second"]);
    db.close().await.unwrap();
}

// ------------------------------------------------------------------ readers cannot write

#[tokio::test]
async fn a_reader_cannot_write_even_after_turning_query_only_off() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b.max_readers(1)).await;
    let err = db
        .read(|c| {
            c.execute_batch("PRAGMA query_only = 0")?;
            insert(c, "sneaky", 1)?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.sqlite().and_then(rusqlite::Error::sqlite_error_code),
        Some(rusqlite::ErrorCode::ReadOnly),
        "{err}"
    );
    // The same pooled connection, handed out again, still cannot write.
    let again = db.read(|c| Ok(insert(c, "sneaky2", 1).map(drop)?)).await;
    assert!(again.is_err());
    assert!(keys(tmp.path()).is_empty());
    db.close().await.unwrap();
}

// ------------------------------------------------------------------------ smaller ones

#[tokio::test]
async fn a_busy_timeout_sqlite_cannot_take_is_a_typed_error() {
    let tmp = TempDb::new();
    for d in [Duration::MAX, Duration::from_millis(i32::MAX as u64 + 1)] {
        let err = crate::mode(Db::builder(tmp.path()))
            .busy_timeout(d)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidSetting {
                    setting: "busy_timeout",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let db = crate::mode(Db::builder(tmp.path()))
        .busy_timeout(Duration::from_millis(i32::MAX as u64))
        .build()
        .await
        .unwrap();
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_counts_committed_rows_only() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b).await;
    let before = db.stats().rows_changed;
    let answers = group_of(
        &db,
        vec![
            boxed(|c| Ok(insert(c, "a", 1).map(drop)?)),
            boxed(|c| {
                insert(c, "x1", 1)?;
                insert(c, "x2", 1)?;
                insert(c, "x3", 1)?;
                Err(test_error("rolled back"))
            }),
            boxed(|c| Ok(insert(c, "b", 1).map(drop)?)),
        ],
    )
    .await;
    assert!(answers[1].is_err());
    assert_eq!(keys(tmp.path()), ["a", "b"]);
    assert_eq!(db.stats().rows_changed - before, 2);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_the_writer_reach_the_global_metrics_and_lock_wait_counts_writes() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| {
        b.busy_timeout(Duration::ZERO).retry_policy(
            luca_core::retry::RetryPolicy::new()
                .with_max_retries(1000)
                .with_delay(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(5)),
        )
    })
    .await;
    let lock_waits_before = db.stats().lock_wait_ns.count;
    let metrics_before = luca_core::metrics().snapshot();
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    let write = {
        let db = db.clone();
        tokio::spawn(async move { db.write(|c| Ok(insert(c, "late", 1).map(drop)?)).await })
    };
    // Release the other connection's lock once the writer has retried a few times.
    let deadline = tokio::time::Instant::now() + T;
    while db.stats().retries < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(db.stats().retries >= 3);
    lock.release().unwrap();
    tokio::time::timeout(T, write)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let m = luca_core::metrics().snapshot().since(&metrics_before);
    assert!(m.calls_recovered >= 1, "{m:?}");
    assert!(m.attempts >= 4, "{m:?}");
    assert_eq!(
        db.stats().lock_wait_ns.count - lock_waits_before,
        1,
        "one write, one lock wait, however many attempts"
    );
    db.close().await.unwrap();
}

/// A write commits, a reader sees it (next to the setup row), and the handle closes.
async fn one_write_round_trips(db: &Db) {
    db.write(|c| Ok(insert(c, "one", 1).map(drop)?))
        .await
        .unwrap();
    let n: i64 = db
        .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(n, 2);
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_queue_bound_of_zero_still_lets_writes_through() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| b.max_queue(0).max_batch(0).max_readers(0)).await;
    one_write_round_trips(&db).await;
}

#[tokio::test]
async fn extreme_settings_work_without_panicking() {
    let tmp = TempDb::new();
    let db = open(&tmp, |b| {
        b.pool_wait_timeout(Some(Duration::MAX))
            .busy_timeout(Duration::ZERO)
            .wal_autocheckpoint(u32::MAX)
            .max_batch(usize::MAX)
            .max_queue(usize::MAX)
            .max_readers(luca_core::DbBuilder::MAX_READERS)
            .inline_limit(Duration::MAX)
            .retry_policy(
                luca_core::retry::RetryPolicy::new()
                    .with_delay(Duration::MAX)
                    .with_max_delay(Duration::MAX)
                    .with_max_retries(u32::MAX),
            )
    })
    .await;
    one_write_round_trips(&db).await;
}

#[tokio::test]
async fn more_readers_than_the_limit_is_a_typed_error() {
    let tmp = TempDb::new();
    let err = crate::mode(Db::builder(tmp.path()))
        .max_readers(usize::MAX)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidSetting {
                setting: "max_readers",
                ..
            }
        ),
        "{err:?}"
    );
}
