//! A sync of the database file through SQLite's own file handle: the one place of
//! luca-core that goes below rusqlite's safe API.
//!
//! In WAL mode SQLite syncs the database file only when a checkpoint copies the WAL to its
//! end. Beside constant commits the background checkpointer's PASSIVE passes never get
//! there (the WAL grows while they copy), so every page they copy stays dirty in the page
//! cache until the writer's reset (the checkpoint that lets the WAL start over), whose sync
//! then writes all of them back while every queued write waits: 3–5 ms on the development
//! machine, under 1 ms when each background pass is followed by a sync of its own (see
//! BENCHMARKS.md, issue 13).
//!
//! It must be SQLite's handle: a file descriptor of our own on the same file would drop the
//! process's POSIX locks on it when closed (SQLite keeps its descriptors open for that
//! reason), and no SQL statement syncs the database file alone.

#![allow(unsafe_code)]

use rusqlite::{Connection, ffi};

/// Syncs `conn`'s main database file with `SQLITE_SYNC_NORMAL`, the flag SQLite's own
/// checkpoints use for it when `PRAGMA fullfsync` is off (luca never turns it on): the
/// VFS's `fsync`, or `fdatasync` where SQLite is built to use it. The error is SQLite's
/// result code.
pub(crate) fn sync_main_file(conn: &Connection) -> Result<(), std::ffi::c_int> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn.handle()` is the open connection's `sqlite3*`; `&Connection` is not
    // `Sync`, so no other thread uses the connection during the call. For
    // `SQLITE_FCNTL_FILE_POINTER` SQLite writes a `sqlite3_file*` to the pointer given,
    // which points at `file`, a live local of that type.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    if file.is_null() {
        return Err(ffi::SQLITE_MISUSE);
    }
    // SAFETY: `file` is the connection's open main-database file, valid while the
    // connection is open (it is borrowed for this whole function) and used by no other
    // thread (see above). An open file's `pMethods` is set by the VFS for the file's
    // life; it is checked for null anyway.
    let sync = unsafe {
        let methods = (*file).pMethods;
        if methods.is_null() {
            return Err(ffi::SQLITE_MISUSE);
        }
        (*methods).xSync
    };
    let Some(sync) = sync else {
        return Err(ffi::SQLITE_MISUSE);
    };
    // SAFETY: the file's own `xSync`, called with that file and a valid flag on the
    // connection's thread, as SQLite itself calls it.
    let rc = unsafe { sync(file, ffi::SQLITE_SYNC_NORMAL) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}
