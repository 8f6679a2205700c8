use luca_core::db_retry;
use luca_core::rusqlite::Connection;

#[db_retry]
fn insert(conn: &Connection) {
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
}

fn main() {}
