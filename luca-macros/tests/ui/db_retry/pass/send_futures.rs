// An `async fn`'s future stays `Send` under `#[db_retry]` whenever it is `Send` without
// it: by-value parameters that are `Send` but not `Sync` (a channel receiver, a `Cell`),
// `&mut` parameters and `&mut self` over a `Connection` (which is `Send`, not `Sync`).
use std::cell::Cell;
use std::sync::mpsc::Receiver;

use luca_core::db_retry;
use luca_core::rusqlite::{self, Connection};

fn assert_send<T: Send>(_: &T) {}

#[db_retry]
async fn drain(rx: Receiver<i64>, seen: Cell<u32>) -> luca_core::Result<i64> {
    seen.set(seen.get() + 1);
    let mut sum = 0;
    while let Ok(v) = rx.try_recv() {
        sum += v;
    }
    std::future::ready(()).await;
    Ok(sum)
}

#[db_retry]
async fn through_mut(conn: &mut Connection, (a, b): (Cell<i64>, i64)) -> rusqlite::Result<i64> {
    std::future::ready(()).await;
    conn.query_row("SELECT ?1 + ?2", [a.get(), b], |r| r.get(0))
}

struct Repo {
    conn: Connection,
}

impl Repo {
    #[db_retry]
    async fn count(&mut self) -> rusqlite::Result<i64> {
        std::future::ready(()).await;
        self.conn.query_row("SELECT 1", [], |r| r.get(0))
    }
}

// A native `async fn` in a trait takes the attribute like any method.
trait Counts {
    async fn total(&mut self) -> rusqlite::Result<i64>;
}

impl Counts for Repo {
    #[db_retry]
    async fn total(&mut self) -> rusqlite::Result<i64> {
        std::future::ready(()).await;
        self.conn.query_row("SELECT 2", [], |r| r.get(0))
    }
}

fn main() {
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(1).unwrap();
    assert_send(&drain(rx, Cell::new(0)));
    let mut conn = Connection::open_in_memory().unwrap();
    assert_send(&through_mut(&mut conn, (Cell::new(1), 2)));
    let mut repo = Repo {
        conn: Connection::open_in_memory().unwrap(),
    };
    assert_send(&repo.count());
    assert_send(&repo.total());
}
