use std::future::Future;
use std::pin::Pin;

use luca_core::db_retry;
use luca_core::rusqlite::{self, Connection};

// What `#[async_trait]` leaves of an `async fn` before `#[db_retry]` runs on it.
#[db_retry]
fn count<'a>(
    conn: &'a Connection,
) -> Pin<Box<dyn Future<Output = rusqlite::Result<i64>> + Send + 'a>> {
    let n = conn.query_row("SELECT 1", [], |r| r.get(0));
    Box::pin(async move { n })
}

fn main() {}
