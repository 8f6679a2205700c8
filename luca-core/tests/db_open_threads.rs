//! `Db::open` never opens a SQLite connection on the async worker that awaits it: every
//! open (the writer, the checkpointer, the readers) happens on the blocking pool.
//!
//! SQLite's auto-extension hook runs on the thread of every new connection; it records
//! which threads opened connections. Its own binary: the hook is process-wide.

#![allow(unsafe_code)] // registering SQLite's auto-extension is an FFI call

use std::ffi::{c_char, c_int};
use std::sync::Mutex;

use luca_core::Db;
use luca_core::rusqlite::{self, Connection, auto_extension, ffi};
use luca_testkit::TempDb;

static OPENED_ON: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());

fn record(_: Connection) -> rusqlite::Result<()> {
    OPENED_ON.lock().unwrap().push(std::thread::current().id());
    Ok(())
}

unsafe extern "C" fn record_raw(
    db: *mut ffi::sqlite3,
    err: *mut *mut c_char,
    _: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: called by SQLite with the new connection's handle; `record` neither opens
    // nor closes a connection, nor touches the list of auto-extensions.
    unsafe { auto_extension::init_auto_extension(db, err, record) }
}

#[test]
fn opening_a_db_keeps_every_connection_off_the_async_worker() {
    // SAFETY: `record_raw` follows the rules of `register_auto_extension` (see above).
    unsafe { auto_extension::register_auto_extension(record_raw) }.unwrap();
    let tmp = TempDb::new();
    let worker = std::thread::current().id();
    // A current-thread runtime: its only async worker is this thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Db::builder(tmp.path())
            .wal_autocheckpoint(100)
            .build()
            .await
            .unwrap();
        db.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap();
        db.close().await.unwrap();
    });
    let opened = OPENED_ON.lock().unwrap().clone();
    assert!(
        opened.len() >= 3,
        "writer, checkpointer and a reader were opened: {opened:?}"
    );
    assert!(
        !opened.contains(&worker),
        "a connection was opened on the async worker thread: {opened:?} (worker {worker:?})"
    );
}
