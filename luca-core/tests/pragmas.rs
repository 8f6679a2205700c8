//! `luca_core::pragmas`: `Error::NotWal` on databases that cannot be WAL, and
//! `Pragmas::with_foreign_keys`.

use std::path::Path;
use std::time::Duration;

use luca_core::Error;
use luca_core::pragmas::{self, Pragmas};
use luca_core::rusqlite::{Connection, OpenFlags, ffi};
use luca_testkit::TempDb;

fn journal_mode(conn: &Connection) -> String {
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

fn foreign_keys(conn: &Connection) -> bool {
    conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap()
}

/// The `mode` of an `Error::NotWal`, after checking that the error names `path`.
fn not_wal_mode(err: &Error, path: &Path) -> String {
    match err {
        Error::NotWal { path: p, mode } => {
            assert_eq!(p, path, "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("journal mode `{mode}`, not `wal`")),
                "the message names the mode: {err}"
            );
            mode.clone()
        }
        other => panic!("expected Error::NotWal, got {other:?}"),
    }
}

#[test]
fn an_in_memory_database_cannot_be_wal() {
    // `:memory:` is exactly the "cannot be WAL" case: SQLite keeps `memory` and says so
    // only through the mode it reads back.
    let conn = Connection::open_in_memory().unwrap();
    let err = pragmas::apply(&conn, &Pragmas::new()).unwrap_err();
    // rusqlite reports an in-memory database's file name as ""; the error names it.
    let mode = not_wal_mode(&err, Path::new(":memory:"));
    assert_eq!(mode, "memory");
    assert_eq!(journal_mode(&conn), "memory");
    assert!(err.extended_code().is_none(), "not a SQLite error: {err:?}");
}

#[test]
fn a_file_on_a_vfs_without_shared_memory_cannot_be_wal() {
    // The `unix-none` VFS has no locking and no shared-memory wal-index, so SQLite refuses
    // WAL and keeps the rollback journal.
    let db = TempDb::new();
    let conn = Connection::open_with_flags_and_vfs(
        db.path(),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        c"unix-none",
    )
    .unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    let err = pragmas::apply(&conn, &Pragmas::new()).unwrap_err();
    assert_eq!(not_wal_mode(&err, db.path()), "delete");
    assert_eq!(journal_mode(&conn), "delete", "the file stays out of WAL");
    // The same file on the default VFS can be WAL: the refusal is the VFS's.
    drop(conn);
    let conn = pragmas::open(db.path(), &Pragmas::new()).unwrap();
    assert_eq!(journal_mode(&conn), "wal");
}

#[test]
fn a_query_only_connection_to_a_rollback_journal_file_is_not_wal() {
    // A query-only connection must not switch the file's mode; it only checks it.
    let db = TempDb::new();
    Connection::open(db.path())
        .unwrap()
        .execute_batch("PRAGMA journal_mode = DELETE; CREATE TABLE t (x INTEGER);")
        .unwrap();
    let conn = Connection::open(db.path()).unwrap();
    let err = pragmas::apply(&conn, &Pragmas::new().with_query_only(true)).unwrap_err();
    assert_eq!(not_wal_mode(&err, db.path()), "delete");
    assert_eq!(journal_mode(&conn), "delete", "left as it was");

    // `open` reports the same thing, and a writable open then switches the file.
    let err = pragmas::open(db.path(), &Pragmas::new().with_query_only(true)).unwrap_err();
    assert_eq!(not_wal_mode(&err, db.path()), "delete");
    let conn = pragmas::open(db.path(), &Pragmas::new()).unwrap();
    assert_eq!(journal_mode(&conn), "wal");
    let conn = pragmas::open(db.path(), &Pragmas::new().with_query_only(true)).unwrap();
    assert_eq!(journal_mode(&conn), "wal");
}

fn parent_and_child(conn: &Connection) {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS child (
             id INTEGER PRIMARY KEY,
             parent INTEGER NOT NULL REFERENCES parent (id));",
    )
    .unwrap();
}

#[test]
fn foreign_keys_are_enforced_by_default() {
    let db = TempDb::new();
    let conn = pragmas::open(db.path(), &Pragmas::new()).unwrap();
    assert!(Pragmas::new().foreign_keys);
    assert!(foreign_keys(&conn));
    parent_and_child(&conn);
    let err = conn
        .execute("INSERT INTO child (id, parent) VALUES (1, 99)", [])
        .unwrap_err();
    assert_eq!(
        err.sqlite_error().map(|e| e.extended_code),
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
        "{err}"
    );
    let orphans: i64 = conn
        .query_row("SELECT count(*) FROM child", [], |r| r.get(0))
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn with_foreign_keys_false_turns_enforcement_off() {
    let db = TempDb::new();
    let pragmas = Pragmas::new().with_foreign_keys(false);
    assert!(!pragmas.foreign_keys);
    let conn = pragmas::open(db.path(), &pragmas).unwrap();
    assert!(!foreign_keys(&conn));
    parent_and_child(&conn);
    conn.execute("INSERT INTO child (id, parent) VALUES (1, 99)", [])
        .expect("an orphan row is accepted with foreign keys off");

    // And back on, through `apply` on the same connection.
    pragmas::apply(&conn, &pragmas.with_foreign_keys(true)).unwrap();
    assert!(foreign_keys(&conn));
    let err = conn
        .execute("INSERT INTO child (id, parent) VALUES (2, 98)", [])
        .unwrap_err();
    assert_eq!(
        err.sqlite_error().map(|e| e.extended_code),
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
        "{err}"
    );
}

#[test]
fn apply_sets_each_pragma_it_is_given() {
    let db = TempDb::new();
    let conn = Connection::open(db.path()).unwrap();
    let pragmas = Pragmas::new()
        .with_busy_timeout(Duration::from_millis(1234))
        .with_synchronous(pragmas::Synchronous::Full)
        .with_foreign_keys(false);
    pragmas::apply(&conn, &pragmas).unwrap();
    let busy: i64 = conn
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .unwrap();
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 1234);
    assert_eq!(synchronous, 2, "FULL");
    assert!(!foreign_keys(&conn));
    assert_eq!(journal_mode(&conn), "wal");
    // Not a query-only connection: it writes.
    conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
}
