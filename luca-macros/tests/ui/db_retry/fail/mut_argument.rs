use luca_core::db_retry;
use luca_core::rusqlite::Connection;

// Draining `rows` empties it: a retry would run with what the failed attempt left over.
#[db_retry]
fn import(conn: &Connection, mut rows: Vec<i64>) -> luca_core::Result<usize> {
    let mut n = 0;
    for v in rows.drain(..) {
        n += conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
    }
    Ok(n)
}

// Every `mut` binding is reported, inside patterns and on `self` too.
struct Counter(u32);

impl Counter {
    #[db_retry]
    fn bump(mut self, (mut a, b): (u32, u32)) -> luca_core::Result<u32> {
        self.0 += 1;
        a += b;
        Ok(self.0 + a)
    }
}

#[db_retry]
async fn import_async(mut rows: Vec<i64>) -> luca_core::Result<usize> {
    rows.clear();
    Ok(rows.len())
}

fn main() {}
