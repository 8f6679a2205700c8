//! The success path of `#[db_retry]` allocates nothing: counted by a global allocator
//! in this test binary of its own.

// A counting `#[global_allocator]` needs `unsafe impl GlobalAlloc` (and unsafe calls into
// `System`); nothing else in this file is unsafe. Allowed here only, never in the crates.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use luca_core::db_retry;
use luca_core::retry::RetryEvent;
use luca_core::rusqlite::{self, Connection, Statement};
use luca_testkit::TempDb;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, so the
    // allocator can use it. Per thread, so tests running in parallel do not mix counts.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: during thread teardown the slot may be gone; those allocations are not
    // part of any measurement.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter update neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: as above; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and reallocations) made by this thread while `f` runs.
fn allocations_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    let after = ALLOCATIONS.with(Cell::get);
    (out, after - before)
}

#[test]
fn the_counter_counts() {
    let (v, n) = allocations_during(|| black_box(Vec::<u8>::with_capacity(1)));
    assert_eq!(n, 1);
    drop(v);
    let (s, n) = allocations_during(|| {
        let mut s = String::with_capacity(1);
        for _ in 0..100 {
            s.push('x');
        }
        black_box(s)
    });
    assert!(n >= 2, "growth reallocates: {n}");
    drop(s);
    let ((), n) = allocations_during(|| black_box(()));
    assert_eq!(n, 0);
}

// --- no-op functions --------------------------------------------------------------------

#[db_retry]
fn noop_default() -> rusqlite::Result<()> {
    Ok(())
}

fn hook(_: &RetryEvent) {}

#[db_retry(
    max_retries = 8,
    delay_ms = 3,
    max_delay_ms = 50,
    jitter = "decorrelated",
    deadline_ms = 1000,
    on_retry = hook
)]
fn noop_every_option(x: u64) -> luca_core::Result<u64> {
    Ok(x + 1)
}

#[db_retry(jitter = "equal")]
fn noop_boxed_error(x: &str) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    Ok(x.len())
}

#[test]
fn noop_success_path_allocates_nothing() {
    // Warm up: anything lazily initialised on first use is not the steady state.
    noop_default().unwrap();
    noop_every_option(1).unwrap();
    noop_boxed_error("x").unwrap();

    let ((), n) = allocations_during(|| {
        for _ in 0..10_000 {
            black_box(noop_default()).unwrap();
        }
    });
    assert_eq!(n, 0, "default policy");

    let (sum, n) = allocations_during(|| {
        let mut sum = 0u64;
        for i in 0..10_000u64 {
            sum += black_box(noop_every_option(black_box(i))).unwrap();
        }
        sum
    });
    assert_eq!(sum, (1..=10_000).sum::<u64>());
    assert_eq!(n, 0, "deadline, hook, decorrelated jitter");

    let ((), n) = allocations_during(|| {
        for _ in 0..10_000 {
            assert_eq!(black_box(noop_boxed_error(black_box("abc"))).unwrap(), 3);
        }
    });
    assert_eq!(n, 0, "boxed error type, success path");
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn async_noop(calls: &AtomicU32) -> rusqlite::Result<u32> {
    Ok(calls.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn async_success_path_allocates_nothing() {
    let calls = AtomicU32::new(0);
    let mut cx = Context::from_waker(Waker::noop());
    let ((), n) = allocations_during(|| {
        for i in 0..10_000u32 {
            let fut = pin!(async_noop(&calls));
            match fut.poll(&mut cx) {
                Poll::Ready(out) => assert_eq!(out.unwrap(), i),
                Poll::Pending => panic!("a successful attempt completes at once"),
            }
        }
    });
    assert_eq!(n, 0);
    assert_eq!(calls.load(Ordering::Relaxed), 10_000);
}

// --- a real statement: the attribute adds nothing to what the body allocates -------------
//
// The workspace builds rusqlite without its `cache` feature, so there is no
// `prepare_cached`: the prepared statement is kept by the caller and reused, which is the
// same steady state (one prepared statement, re-bound and re-stepped on every call).

/// Reads an integer and a text column: the `String` makes every call allocate once on the
/// Rust side, so the comparison below is between non-zero counts.
const SQL: &str = "SELECT v, name FROM t WHERE id = ?1";

#[db_retry(max_retries = 5, delay_ms = 1)]
fn read_with_retry(stmt: &mut Statement<'_>, id: i64) -> rusqlite::Result<(i64, String)> {
    stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn read_by_hand(stmt: &mut Statement<'_>, id: i64) -> rusqlite::Result<(i64, String)> {
    stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// The same, preparing the statement inside the function on every call.
#[db_retry(max_retries = 5, delay_ms = 1)]
fn prepare_and_read_with_retry(conn: &Connection, id: i64) -> rusqlite::Result<(i64, String)> {
    let mut stmt = conn.prepare(SQL)?;
    stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn prepare_and_read_by_hand(conn: &Connection, id: i64) -> rusqlite::Result<(i64, String)> {
    let mut stmt = conn.prepare(SQL)?;
    stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn open_table(db: &TempDb) -> Connection {
    let conn = luca_core::pragmas::open(db.path(), &luca_core::pragmas::Pragmas::new()).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, name TEXT NOT NULL);
         INSERT INTO t VALUES (1, 10, 'one'), (2, 20, 'two'), (3, 30, 'three');",
    )
    .unwrap();
    conn
}

const CALLS: i64 = 2_000;

/// Runs `with_retry` and `by_hand` `CALLS` times each, in bulk and then interleaved call
/// by call, and asserts they allocate exactly as often.
fn assert_same_allocations(
    mut with_retry: impl FnMut(i64) -> (i64, String),
    mut by_hand: impl FnMut(i64) -> (i64, String),
) {
    let mut with_retry = move |id| with_retry(id).0;
    let mut by_hand = move |id| by_hand(id).0;
    // Warm up both.
    for id in 1..=3 {
        assert_eq!(by_hand(id), id * 10);
        assert_eq!(with_retry(id), id * 10);
    }
    let (sum, hand) = allocations_during(|| (0..CALLS).map(|i| by_hand(i % 3 + 1)).sum::<i64>());
    let (sum_retry, retry) =
        allocations_during(|| (0..CALLS).map(|i| with_retry(i % 3 + 1)).sum::<i64>());
    assert_eq!(sum, sum_retry);
    assert_eq!(sum, (0..CALLS).map(|i| (i % 3 + 1) * 10).sum::<i64>());
    assert!(
        hand >= CALLS as u64,
        "each call allocates its String: {hand}"
    );
    assert_eq!(
        retry, hand,
        "allocations over {CALLS} calls: #[db_retry] {retry}, by hand {hand}"
    );
    // Interleaved, in the other order, so no warm-up effect can hide a difference.
    for i in 0..CALLS {
        let (_, a) = allocations_during(|| with_retry(i % 3 + 1));
        let (_, b) = allocations_during(|| by_hand(i % 3 + 1));
        assert_eq!(a, b, "call {i}: #[db_retry] {a}, by hand {b}");
    }
}

#[test]
fn reused_statement_allocates_the_same_with_and_without_the_attribute() {
    let db = TempDb::new();
    let conn = open_table(&db);
    let mut stmt = conn.prepare(SQL).unwrap();
    let stmt = std::cell::RefCell::new(&mut stmt);
    assert_same_allocations(
        |id| read_with_retry(&mut stmt.borrow_mut(), id).unwrap(),
        |id| read_by_hand(&mut stmt.borrow_mut(), id).unwrap(),
    );
}

#[test]
fn fresh_statement_allocates_the_same_with_and_without_the_attribute() {
    let db = TempDb::new();
    let conn = open_table(&db);
    assert_same_allocations(
        |id| prepare_and_read_with_retry(&conn, id).unwrap(),
        |id| prepare_and_read_by_hand(&conn, id).unwrap(),
    );
}
