//! `luca_core::local::with_connection` never hands its cached connection on inside a
//! transaction: the outermost call rolls back what the closure left open (early `Err`,
//! panic, or `Ok` without `COMMIT`), nested calls leave the outer transaction alone, and
//! committed rows stay.
//!
//! Thread-local connections are per thread, and the harness may reuse threads, so every
//! test runs its part on a thread of its own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

use luca_core::local::{cleanup_connections, open_connections, with_connection};
use luca_core::pragmas::{self, Pragmas};
use luca_core::rusqlite::{self, Connection};
use luca_testkit::TempDb;

/// Runs `f` on a fresh thread (empty connection cache) and returns its result.
fn on_fresh_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the thread did not panic"))
}

/// Another connection to the file, whose busy handler gives up at once.
fn other_connection(path: &Path) -> Connection {
    pragmas::open(path, &Pragmas::new().with_busy_timeout(Duration::ZERO)).unwrap()
}

/// Whether another connection can take the write lock right now (busy_timeout 0).
fn write_lock_is_free(path: &Path) -> rusqlite::Result<()> {
    let other = other_connection(path);
    other.execute_batch("BEGIN IMMEDIATE")?;
    other.execute_batch("ROLLBACK")
}

fn create_table(path: &Path) {
    with_connection(path, |c| {
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")?;
        Ok(())
    })
    .unwrap();
}

/// The ids in `t`, read by a connection of its own (so only committed rows count).
fn committed_ids(path: &Path) -> Vec<i64> {
    let conn = other_connection(path);
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn extended(e: &luca_core::Error) -> Option<i32> {
    e.extended_code()
}

/// The cached connection is outside any transaction.
fn cached_is_autocommit(path: &Path) -> bool {
    with_connection(path, |c| Ok(c.is_autocommit())).unwrap()
}

#[test]
fn an_early_err_after_begin_is_rolled_back_and_frees_the_write_lock() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        with_connection(db.path(), |c| {
            c.execute("INSERT INTO t VALUES (1)", [])?;
            Ok(())
        })
        .unwrap();

        let err = with_connection(db.path(), |c| {
            c.execute_batch("BEGIN IMMEDIATE")?;
            c.execute("INSERT INTO t VALUES (2)", [])?;
            // Duplicate key: `?` returns between BEGIN and COMMIT.
            c.execute("INSERT INTO t VALUES (1)", [])?;
            c.execute_batch("COMMIT")?;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(
            extended(&err),
            Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
            "the closure's own error comes back: {err}"
        );

        write_lock_is_free(db.path())
            .expect("another connection takes the write lock after the failed call");
        assert!(cached_is_autocommit(db.path()));
        assert_eq!(committed_ids(db.path()), [1], "row 2 was rolled back");

        // The next call on the same (cached) connection can run a transaction of its own.
        with_connection(db.path(), |c| {
            c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (3); COMMIT;")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(committed_ids(db.path()), [1, 3]);
        assert_eq!(open_connections(), 1, "the same connection was kept");
        cleanup_connections();
    });
}

#[test]
fn a_panic_after_begin_is_rolled_back_and_the_panic_goes_on() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            with_connection(db.path(), |c| -> luca_core::Result<()> {
                c.execute_batch("BEGIN IMMEDIATE")?;
                c.execute("INSERT INTO t VALUES (1)", [])?;
                panic!("deliberate panic inside a transaction");
            })
        }));
        let payload = outcome.expect_err("the panic reaches the caller");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"deliberate panic inside a transaction")
        );

        write_lock_is_free(db.path())
            .expect("another connection takes the write lock after the panic");
        assert!(cached_is_autocommit(db.path()));
        assert_eq!(
            open_connections(),
            1,
            "the cached connection is still usable"
        );
        assert_eq!(committed_ids(db.path()), Vec::<i64>::new());

        with_connection(db.path(), |c| {
            c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT;")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(committed_ids(db.path()), [2]);
        cleanup_connections();
    });
}

#[test]
fn ok_without_commit_is_rolled_back_and_reported() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        let err = with_connection(db.path(), |c| {
            c.execute_batch("BEGIN IMMEDIATE")?;
            c.execute("INSERT INTO t VALUES (1)", [])?;
            Ok(42)
        })
        .unwrap_err();
        assert!(
            matches!(&err, luca_core::Error::TransactionLeftOpen { path } if path == db.path()),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("transaction open"),
            "the message says what happened: {err}"
        );
        write_lock_is_free(db.path()).expect("the write lock is free");
        assert_eq!(
            committed_ids(db.path()),
            Vec::<i64>::new(),
            "told Err, not in the file"
        );
        assert!(cached_is_autocommit(db.path()));
        cleanup_connections();
    });
}

#[test]
fn a_nested_call_leaves_the_outer_transaction_open() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        with_connection(db.path(), |outer| {
            outer.execute_batch("BEGIN IMMEDIATE")?;
            outer.execute("INSERT INTO t VALUES (1)", [])?;

            // A nested call that returns Ok inside the outer transaction.
            with_connection(db.path(), |inner| {
                inner.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(())
            })?;
            assert!(!outer.is_autocommit(), "Ok from a nested call: still open");

            // A nested call that fails.
            let nested_err = with_connection(db.path(), |inner| -> luca_core::Result<()> {
                inner.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            });
            assert!(nested_err.is_err());
            assert!(!outer.is_autocommit(), "Err from a nested call: still open");

            // A nested call that panics (caught inside the outer closure).
            let nested_panic = catch_unwind(AssertUnwindSafe(|| {
                with_connection(db.path(), |_| -> luca_core::Result<()> {
                    panic!("nested panic")
                })
            }));
            assert!(nested_panic.is_err());
            assert!(!outer.is_autocommit(), "a nested panic: still open");

            // Meanwhile the outer transaction really holds the write lock.
            let busy = write_lock_is_free(db.path()).unwrap_err();
            assert_eq!(
                busy.sqlite_error().map(|e| e.extended_code),
                Some(rusqlite::ffi::SQLITE_BUSY)
            );

            outer.execute("INSERT INTO t VALUES (3)", [])?;
            outer.execute_batch("COMMIT")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(committed_ids(db.path()), [1, 2, 3]);
        write_lock_is_free(db.path()).unwrap();
        cleanup_connections();
    });
}

#[test]
fn a_transaction_begun_in_a_nested_call_is_the_outer_calls_to_finish() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        // Begun by the nested call, committed by the outer one.
        with_connection(db.path(), |outer| {
            with_connection(db.path(), |inner| {
                inner.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")?;
                Ok(())
            })?;
            assert!(!outer.is_autocommit());
            outer.execute_batch("COMMIT")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(committed_ids(db.path()), [1]);

        // Begun by the nested call, abandoned by the outer one: rolled back at the end.
        let err = with_connection(db.path(), |_| -> luca_core::Result<()> {
            with_connection(db.path(), |inner| {
                inner.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);")?;
                Ok(())
            })?;
            Err(luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery))
        })
        .unwrap_err();
        assert!(matches!(
            err,
            luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery)
        ));
        write_lock_is_free(db.path()).unwrap();
        assert_eq!(committed_ids(db.path()), [1]);
        cleanup_connections();
    });
}

#[test]
fn committed_rows_stay_whatever_the_closure_returns_afterwards() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        // Committed, then an error: the commit stands.
        let err = with_connection(db.path(), |c| -> luca_core::Result<()> {
            c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1); COMMIT;")?;
            Err(luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery))
        })
        .unwrap_err();
        assert!(matches!(
            err,
            luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery)
        ));
        // Committed, then a panic: the commit stands.
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            with_connection(db.path(), |c| -> luca_core::Result<()> {
                c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT;")?;
                panic!("after the commit")
            })
        }));
        assert!(panicked.is_err());
        // Autocommit writes, no transaction at all.
        with_connection(db.path(), |c| {
            c.execute("INSERT INTO t VALUES (3)", [])?;
            Ok(())
        })
        .unwrap();
        assert_eq!(committed_ids(db.path()), [1, 2, 3]);
        // Still there after the connection is closed and the file reopened.
        assert_eq!(cleanup_connections(), 1);
        let reopened = with_connection(db.path(), |c| {
            Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?)
        })
        .unwrap();
        assert_eq!(reopened, 3);
        cleanup_connections();
    });
}

#[test]
fn each_connection_is_cleaned_up_by_its_own_outermost_call() {
    let a = TempDb::named("a.db");
    let b = TempDb::named("b.db");
    on_fresh_thread(|| {
        create_table(a.path());
        create_table(b.path());
        // Inside a's transaction, a call for b is b's outermost call: it cleans up b only.
        with_connection(a.path(), |ca| {
            ca.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")?;
            let err = with_connection(b.path(), |cb| -> luca_core::Result<()> {
                cb.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")?;
                Err(luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery))
            });
            assert!(err.is_err());
            write_lock_is_free(b.path()).expect("b's transaction was rolled back");
            assert!(!ca.is_autocommit(), "a's transaction is untouched");
            ca.execute_batch("COMMIT")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(committed_ids(a.path()), [1]);
        assert_eq!(committed_ids(b.path()), Vec::<i64>::new());
        assert_eq!(cleanup_connections(), 2);
    });
}

#[test]
fn a_connection_whose_rollback_fails_is_dropped_not_handed_on() {
    use luca_core::rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    let db = TempDb::new();
    on_fresh_thread(|| {
        create_table(db.path());
        let err = with_connection(db.path(), |c| {
            c.execute_batch("BEGIN IMMEDIATE")?;
            c.execute("INSERT INTO t VALUES (7)", [])?;
            // A hostile closure makes the ROLLBACK at the end of the call fail.
            c.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
                AuthAction::Transaction { .. } => Authorization::Deny,
                _ => Authorization::Allow,
            }))?;
            Err::<(), _>(luca_core::Error::from(
                rusqlite::Error::InvalidParameterName("give up".into()),
            ))
        })
        .unwrap_err();
        assert!(err.to_string().contains("give up"), "{err}");
        assert_eq!(open_connections(), 0, "the stuck connection left the cache");
        write_lock_is_free(db.path()).expect("closing it released the write lock");
        assert!(
            committed_ids(db.path()).is_empty(),
            "and rolled the insert back"
        );
        // The next call opens a fresh connection, outside any transaction.
        assert!(cached_is_autocommit(db.path()));
        cleanup_connections();
    });
}
