//! Helpers shared by the `#[db_retry]` test binaries.

use std::time::Duration;

use luca_core::rusqlite::Connection;
use luca_testkit::TempDb;

/// A connection to `db` whose busy handler gives up at once (so a held lock surfaces as
/// `SQLITE_BUSY` to the retry loop), with the table `t (id, v)` in place.
pub(crate) fn open(db: &TempDb) -> Connection {
    let conn = luca_core::pragmas::open(
        db.path(),
        &luca_core::pragmas::Pragmas::new().with_busy_timeout(Duration::ZERO),
    )
    .unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .unwrap();
    conn
}
