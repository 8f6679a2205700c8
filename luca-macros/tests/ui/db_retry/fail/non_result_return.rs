use luca_core::db_retry;
use luca_core::rusqlite::Connection;

#[db_retry]
fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap_or(0)
}

fn main() {}
