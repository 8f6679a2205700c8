//! `#[shared_state]`: every accessor kind, exact counts under real threads and tokio tasks,
//! poisoning recovery, re-entrancy detection, `global()`.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use luca_core::shared_state;

/// A type that is neither `Clone` nor `Debug` nor `Default`.
struct Opaque(u32);

#[derive(Clone, Debug, Default, PartialEq)]
struct Config {
    limit: u32,
    name: String,
}

#[shared_state]
#[derive(Debug, Default)]
struct State {
    hosts: HashMap<String, u32>,
    log: Vec<u64>,
    #[shared(counter)]
    requests: u64,
    #[shared(counter)]
    balance: i32,
    #[shared(counter)]
    small: u8,
    #[shared(read_mostly)]
    config: Config,
}

fn state() -> State {
    State::new(HashMap::new(), Vec::new(), 0, 0, 0, Config::default())
}

/// Runs `f` on its own thread and fails the test if it does not finish in time (a deadlock
/// must fail the test, not hang it).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what}: did not finish within 30 s (deadlock?)"))
}

// --- plain fields ----------------------------------------------------------------------

#[test]
fn plain_field_accessors() {
    let s = state();
    assert!(s.hosts().is_empty());
    let n = s.update_hosts(|h| {
        h.insert("a".into(), 1);
        h.insert("b".into(), 2);
        h.len()
    });
    assert_eq!(n, 2);
    assert_eq!(s.with_hosts(|h| h["b"]), 2);
    let snapshot = s.hosts();
    s.update_hosts(|h| h.clear());
    assert_eq!(snapshot.len(), 2, "a snapshot is a copy");
    let old = s.set_log(vec![1, 2, 3]);
    assert!(old.is_empty());
    assert_eq!(s.set_log(vec![]), vec![1, 2, 3]);
    assert_eq!(s.poison_count(), 0);
}

#[shared_state]
struct NotClone {
    value: Opaque,
    #[shared(counter)]
    hits: usize,
}

#[test]
fn non_clone_fields_have_every_accessor_but_the_snapshot() {
    let s = NotClone::new(Opaque(1), 0);
    assert_eq!(s.with_value(|v| v.0), 1);
    s.update_value(|v| v.0 += 1);
    assert_eq!(s.set_value(Opaque(10)).0, 2);
    assert_eq!(s.with_value(|v| v.0), 10);
    assert_eq!(s.incr_hits(), 1);
}

// --- counters --------------------------------------------------------------------------

#[test]
fn counter_accessors_return_the_new_value() {
    let s = state();
    assert_eq!(s.requests(), 0);
    assert_eq!(s.incr_requests(), 1);
    assert_eq!(s.add_requests(41), 42);
    assert_eq!(s.requests(), 42);
    assert_eq!(s.set_requests(7), 42);
    assert_eq!(s.requests(), 7);
    assert_eq!(s.add_balance(-5), -5);
    assert_eq!(s.incr_balance(), -4);
    assert_eq!(s.add_small(255), 255);
    assert_eq!(s.incr_small(), 0, "counters wrap on overflow");
}

// --- read-mostly fields ----------------------------------------------------------------

#[test]
fn read_mostly_accessors() {
    let s = state();
    let before: Arc<Config> = s.config();
    assert_eq!(*before, Config::default());
    let old = s.set_config(Config {
        limit: 3,
        name: "x".into(),
    });
    assert_eq!(*old, Config::default());
    assert_eq!(*before, Config::default(), "an old snapshot stays valid");
    assert_eq!(s.config().limit, 3);
    let installed = s.update_config(|c| Config {
        limit: c.limit + 1,
        ..c.clone()
    });
    assert_eq!(installed.limit, 4);
    assert_eq!(
        s.with_config(|c| (c.limit, c.name.clone())),
        (4, "x".into())
    );
}

#[test]
fn read_mostly_update_loses_nothing_under_contention() {
    let s = Arc::new(state());
    let threads = 4;
    let per_thread = 2_000;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    s.update_config(|c| Config {
                        limit: c.limit + 1,
                        ..c.clone()
                    });
                }
            })
        })
        .collect();
    bounded("contended read-copy-updates", move || {
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(s.config().limit, (threads * per_thread) as u32);
}

#[test]
fn read_mostly_update_reruns_the_closure_once_per_conflict() {
    const UPDATES: u32 = 10;
    /// The update whose first run meets a write from another thread.
    const CONFLICTED: u32 = 3;
    let s = Arc::new(state());
    let runs = AtomicU32::new(0);
    for i in 0..UPDATES {
        let mut first_run = true;
        let installed = s.update_config(|c| {
            runs.fetch_add(1, Ordering::Relaxed);
            if i == CONFLICTED && first_run {
                first_run = false;
                // Another writer installs a value between this run's read and its
                // compare-and-swap; joining the thread is the event that it did.
                let other = Arc::clone(&s);
                thread::spawn(move || {
                    other.set_config(Config {
                        limit: 1_000,
                        name: "other".into(),
                    });
                })
                .join()
                .unwrap();
            }
            Config {
                limit: c.limit + 1,
                ..c.clone()
            }
        });
        let expected = if i < CONFLICTED {
            i + 1
        } else {
            1_000 + i - CONFLICTED + 1
        };
        assert_eq!(installed.limit, expected, "update {i} installed");
    }
    assert_eq!(
        runs.load(Ordering::Relaxed),
        UPDATES + 1,
        "exactly one re-run, for the one conflict"
    );
    let last = s.config();
    assert_eq!(last.limit, 1_000 + UPDATES - CONFLICTED);
    assert_eq!(
        last.name, "other",
        "the re-run started from the other writer's value"
    );
}

// --- new, Default, Debug ---------------------------------------------------------------

#[test]
fn default_and_debug() {
    let s = State::default();
    assert_eq!(s.requests(), 0);
    s.update_hosts(|h| {
        h.insert("h".into(), 1);
    });
    s.add_requests(3);
    let shown = format!("{s:?}");
    assert_eq!(
        shown,
        r#"State { hosts: {"h": 1}, log: [], requests: 3, balance: 0, small: 0, config: Config { limit: 0, name: "" } }"#
    );
}

#[test]
fn debug_never_blocks_on_a_held_lock() {
    let s = state();
    // On this thread, inside the closure: the lock is held, so `Debug` must not wait.
    let inside = s.with_hosts(|_| format!("{s:?}"));
    assert!(inside.contains("hosts: <locked>"), "{inside}");
    assert!(inside.contains("log: []"), "{inside}");
    // From another thread while this one holds the lock.
    let s = Arc::new(s);
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let s = Arc::clone(&s);
        thread::spawn(move || {
            s.update_log(|_| {
                held_tx.send(()).unwrap();
                release_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            })
        })
    };
    held_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let s2 = Arc::clone(&s);
    let shown = bounded("debug while locked", move || format!("{s2:?}"));
    assert!(shown.contains("log: <locked>"), "{shown}");
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(format!("{s:?}").contains("log: []"));
}

// --- multi-field update ----------------------------------------------------------------

#[shared_state]
struct Accounts {
    a: i64,
    b: i64,
    #[shared(counter)]
    transfers: u64,
}

#[test]
fn update_sees_and_leaves_a_consistent_state() {
    let s = Arc::new(Accounts::new(1_000, 1_000, 0));
    let threads = 4;
    let rounds = 20_000;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for i in 0..rounds {
                    if (i + t) % 3 == 0 {
                        let total = s.update(|f| *f.a + *f.b);
                        assert_eq!(total, 2_000, "update saw a half-done transfer");
                    } else {
                        let amount = if t % 2 == 0 { 1 } else { -1 };
                        s.update(|f| {
                            *f.a -= amount;
                            *f.b += amount;
                        });
                        s.incr_transfers();
                    }
                }
            })
        })
        .collect();
    bounded("concurrent updates", move || {
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(s.update(|f| *f.a + *f.b), 2_000);
    let expected: u64 = (0..threads)
        .map(|t| (0..rounds).filter(|i| (i + t) % 3 != 0).count() as u64)
        .sum();
    assert_eq!(s.transfers(), expected);
}

// --- 8 threads × 100 000 mixed updates -------------------------------------------------

#[test]
fn eight_threads_of_mixed_updates_leave_exact_counts() {
    const THREADS: usize = 8;
    const OPS: usize = 100_000;
    let s = Arc::new(state());
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let mut last_seen = 0;
                for i in 0..OPS {
                    match i % 5 {
                        0 => {
                            s.update_hosts(|h| {
                                *h.entry(format!("host{}", i % 7)).or_insert(0) += 1
                            });
                        }
                        1 => {
                            s.incr_requests();
                        }
                        2 => {
                            s.add_balance(if t % 2 == 0 { 2 } else { -1 });
                        }
                        3 => {
                            s.update_log(|l| l.push(t as u64));
                        }
                        _ => {
                            if i % 100 == 4 {
                                s.update_config(|c| Config {
                                    limit: c.limit + 1,
                                    ..c.clone()
                                });
                            } else {
                                // Each thread reads a value at least as new as the last
                                // one it read (writes only ever add one).
                                let now = s.config().limit;
                                assert!(now >= last_seen, "went back from {last_seen} to {now}");
                                last_seen = now;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    bounded("8 × 100 000 updates", move || {
        for h in handles {
            h.join().unwrap();
        }
    });
    let per = |rem: usize| (0..OPS).filter(|i| i % 5 == rem).count();
    assert_eq!(
        s.with_hosts(|h| h.values().map(|v| *v as usize).sum::<usize>()),
        THREADS * per(0)
    );
    assert_eq!(s.requests() as usize, THREADS * per(1));
    let (even, odd) = (THREADS.div_ceil(2) as i64, (THREADS / 2) as i64);
    assert_eq!(
        s.balance() as i64,
        even * per(2) as i64 * 2 - odd * per(2) as i64
    );
    let log = s.log();
    assert_eq!(log.len(), THREADS * per(3));
    for t in 0..THREADS as u64 {
        assert_eq!(log.iter().filter(|x| **x == t).count(), per(3));
    }
    assert_eq!(
        s.config().limit as usize,
        THREADS * (0..OPS).filter(|i| i % 100 == 4).count()
    );
    assert_eq!(s.poison_count(), 0);
}

// --- tokio tasks -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokio_tasks_update_across_await_points() {
    const TASKS: usize = 32;
    const STEPS: usize = 200;
    let s = Arc::new(state());
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..STEPS {
                    // Read under the lock, await without it, write back under it.
                    let seen = s.with_hosts(|h| h.get("k").copied().unwrap_or(0));
                    tokio::task::yield_now().await;
                    s.update_hosts(|h| *h.entry("k".into()).or_insert(0) += 1);
                    s.incr_requests();
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_micros(50)).await;
                    }
                    s.update_log(|l| l.push(t as u64));
                    // This task's own `i` earlier increments were all visible to its read.
                    assert!(seen >= i as u32, "task {t} step {i} saw {seen}");
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("tasks finished in time");
    assert_eq!(s.with_hosts(|h| h["k"]) as usize, TASKS * STEPS);
    assert_eq!(s.requests() as usize, TASKS * STEPS);
    assert_eq!(s.log().len(), TASKS * STEPS);
}

// --- poisoning -------------------------------------------------------------------------

#[test]
fn a_panicking_closure_does_not_brick_the_field() {
    let s = Arc::new(state());
    let s2 = Arc::clone(&s);
    let joined = thread::spawn(move || {
        s2.update_log(|l| {
            l.push(1);
            panic!("boom inside the closure");
        })
    })
    .join();
    assert!(joined.is_err(), "the closure's panic reaches its caller");
    assert_eq!(s.poison_count(), 0, "counted when the lock is next taken");
    assert_eq!(s.log(), vec![1], "the value is kept as the closure left it");
    assert_eq!(s.poison_count(), 1);
    s.update_log(|l| l.push(2));
    assert_eq!(s.log(), vec![1, 2]);
    assert_eq!(s.poison_count(), 1, "one panic, one recovery");
    // A second panic, caught on this thread.
    let r = catch_unwind(AssertUnwindSafe(|| s.with_hosts(|_| panic!("again"))));
    assert!(r.is_err());
    assert!(s.hosts().is_empty());
    assert_eq!(s.poison_count(), 2);
    assert!(format!("{s:?}").contains("log: [1, 2]"));
}

// --- re-entrancy -----------------------------------------------------------------------

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs `f` (which re-enters a lock) on its own thread; returns its panic message.
fn reentrancy_panic(f: impl FnOnce(&State) + Send + 'static) -> String {
    let s = Arc::new(state());
    let s2 = Arc::clone(&s);
    let msg = bounded("re-entrant call", move || {
        catch_unwind(AssertUnwindSafe(|| f(&s2)))
            .map(|_| String::from("no panic"))
            .unwrap_or_else(panic_message)
    });
    // The field is usable afterwards.
    s.update_hosts(|h| {
        h.insert("after".into(), 1);
    });
    s.update_log(|l| l.push(1));
    assert_eq!(s.hosts().len(), 1);
    msg
}

#[test]
fn reentering_a_field_from_its_own_closure_panics_naming_it() {
    let msg = reentrancy_panic(|s| {
        s.with_hosts(|_| s.hosts());
    });
    assert!(msg.contains("re-entrant use of `State::hosts`"), "{msg}");
    let msg = reentrancy_panic(|s| {
        s.update_log(|_| {
            s.set_log(Vec::new());
        });
    });
    assert!(msg.contains("`State::log`"), "{msg}");
    let msg = reentrancy_panic(|s| {
        s.update_config(|c| {
            s.set_config(c.clone());
            c.clone()
        });
    });
    assert!(msg.contains("re-entrant write to `State::config`"), "{msg}");
}

#[test]
fn reentering_from_a_multi_field_update_panics_naming_the_field() {
    let s = Arc::new(Accounts::new(1, 2, 0));
    let s2 = Arc::clone(&s);
    let msg = bounded("re-entrant update", move || {
        catch_unwind(AssertUnwindSafe(|| s2.update(|_| s2.b())))
            .map(|_| String::from("no panic"))
            .unwrap_or_else(panic_message)
    });
    assert!(msg.contains("re-entrant use of `Accounts::b`"), "{msg}");
    assert_eq!(s.update(|f| (*f.a, *f.b)), (1, 2));
    assert_eq!(
        s.poison_count(),
        2,
        "both held locks were poisoned and recovered"
    );
}

#[test]
fn nesting_different_fields_is_allowed() {
    let s = state();
    let n = s.with_hosts(|_| {
        s.update_log(|l| {
            l.push(5);
            s.incr_requests();
            s.config().limit + l.len() as u32
        })
    });
    assert_eq!(n, 1);
    // Reading a read-mostly field inside its own update is fine (only writes livelock).
    s.update_config(|c| Config {
        limit: s.config().limit + c.limit + 1,
        ..c.clone()
    });
    assert_eq!(s.config().limit, 1);
}

// --- lock order ------------------------------------------------------------------------

/// Runs `f` on this thread and returns its panic message ("no panic" when it returned).
fn panic_of(f: impl FnOnce()) -> String {
    catch_unwind(AssertUnwindSafe(f))
        .map(|()| String::from("no panic"))
        .unwrap_or_else(panic_message)
}

#[test]
fn nesting_against_declaration_order_panics_at_once_naming_both_fields() {
    let s = state();
    // `hosts` is declared before `log`: taking `hosts` while `log` is held is refused,
    // on one thread, with nothing contended.
    let msg = panic_of(|| {
        s.with_log(|_| s.hosts());
    });
    assert_eq!(
        msg,
        "lock order: `State::log` is held while `State::hosts` is locked; nest accessors in \
         declaration order (`hosts` before `log`) or use `update(|fields| …)`"
    );
    // Every accessor of a plain field takes part, and so does `update`.
    let msg = panic_of(|| {
        s.update_log(|_| {
            s.set_hosts(HashMap::new());
        })
    });
    assert!(
        msg.starts_with("lock order: `State::log` is held while `State::hosts`"),
        "{msg}"
    );
    let msg = panic_of(|| {
        s.with_log(|_| s.update(|f| f.hosts.len()));
    });
    assert!(
        msg.starts_with("lock order: `State::log` is held while `State::hosts`"),
        "{msg}"
    );

    // Nothing is left locked and the thread's record is intact: in-order nesting works,
    // out-of-order nesting is still refused, and the lock the panics unwound through
    // was recovered from poisoning (three panics, three recoveries).
    let n = s.with_hosts(|h| s.update_log(|l| h.len() + l.len()));
    assert_eq!(n, 0);
    assert_eq!(s.poison_count(), 3);
    let msg = panic_of(|| {
        s.with_log(|_| s.with_hosts(|_| ()));
    });
    assert!(msg.starts_with("lock order:"), "{msg}");
    s.update(|f| {
        f.hosts.insert("h".into(), 1);
        f.log.push(1);
    });
    assert_eq!((s.hosts().len(), s.log()), (1, vec![1]));
}

#[shared_state]
struct Ordered {
    #[shared(counter)]
    hits: u64,
    #[shared(read_mostly)]
    mode: u8,
    first: u32,
    second: u32,
}

#[test]
fn lock_free_fields_take_no_part_in_the_lock_order() {
    let s = Ordered::new(0, 0, 1, 2);
    // `hits` and `mode` are declared before `second` but hold no lock.
    let n = s.with_second(|second| {
        s.incr_hits();
        s.set_mode(3);
        s.update_mode(|m| m + 1);
        *second + s.with_mode(|m| u32::from(*m)) + s.hits() as u32
    });
    assert_eq!(n, 2 + 4 + 1);
    // Inside a read-mostly update, every plain field may be locked.
    s.update_mode(|m| {
        let v = s.with_first(|x| s.second() + *x);
        m + v as u8
    });
    assert_eq!(*s.mode(), 7);
    // Plain fields still follow the order.
    let msg = panic_of(|| {
        s.with_second(|_| s.first());
    });
    assert!(
        msg.contains("`Ordered::second` is held while `Ordered::first` is locked"),
        "{msg}"
    );
}

#[test]
fn the_lock_order_is_per_struct_type_across_values() {
    let (a, b) = (state(), state());
    // In declaration order across two values: allowed.
    assert_eq!(a.with_hosts(|_| b.update_log(|l| l.len())), 0);
    // Against it, even though the values differ: refused.
    let msg = panic_of(|| {
        a.with_log(|_| b.hosts());
    });
    assert!(
        msg.contains("`State::log` is held while `State::hosts` is locked"),
        "{msg}"
    );
    // The same field of two values has no order between them: refused.
    let msg = panic_of(|| {
        a.with_log(|_| b.log());
    });
    assert!(
        msg.starts_with(
            "lock order: `State::log` of another `State` is held while `State::log` is locked"
        ),
        "{msg}"
    );
    let msg = panic_of(|| {
        a.update(|_| b.update(|_| ()));
    });
    assert!(
        msg.contains("`State::log` is held while `State::hosts` is locked"),
        "{msg}"
    );
    // Two different struct types are not ordered against each other.
    let acc = Accounts::new(1, 2, 0);
    assert_eq!(a.with_log(|_| acc.update(|f| *f.a + *f.b)), 3);
    assert_eq!(acc.with_b(|b| a.with_hosts(|h| *b as usize + h.len())), 2);
    assert_eq!(a.with_log(|_| b.with_config(|c| c.limit)), 0);
}

#[test]
fn opposite_nesting_on_two_threads_fails_instead_of_deadlocking() {
    let s = Arc::new(state());
    let (a_holds_hosts, b_may_start) = mpsc::channel::<()>();
    let (b_holds_log, a_may_nest) = mpsc::channel::<()>();
    let b = {
        let s = Arc::clone(&s);
        thread::spawn(move || {
            b_may_start.recv_timeout(Duration::from_secs(30)).unwrap();
            panic_of(|| {
                s.with_log(|_| {
                    b_holds_log.send(()).unwrap();
                    // Against the order: without the rule this waits for `hosts`, which
                    // thread A holds while it waits for `log`.
                    s.hosts();
                });
            })
        })
    };
    let s2 = Arc::clone(&s);
    let a_result = bounded("opposite nesting", move || {
        s2.with_hosts(|_| {
            a_holds_hosts.send(()).unwrap();
            a_may_nest.recv_timeout(Duration::from_secs(30)).unwrap();
            s2.update_log(|l| {
                l.push(7);
                l.len()
            })
        })
    });
    assert_eq!(a_result, 1);
    let msg = b.join().unwrap();
    assert!(
        msg.starts_with("lock order: `State::log` is held while `State::hosts`"),
        "{msg}"
    );
}

// --- panic locations -------------------------------------------------------------------

thread_local! {
    /// Where the last panic on this thread happened, while capturing is on.
    static CAPTURED: std::cell::RefCell<Option<Option<(String, u32)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, which must panic, and returns the file and line the panic reports. A
/// process-wide hook (installed once) records the location for threads that asked for it
/// and hands every other panic to the hook it replaced.
fn panic_location(f: impl FnOnce()) -> (String, u32) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURED.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        *slot = info.location().map(|l| (l.file().to_owned(), l.line()));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(None));
    let result = catch_unwind(AssertUnwindSafe(f));
    let location = CAPTURED.with(|c| c.borrow_mut().take()).flatten();
    assert!(result.is_err(), "`f` did not panic");
    location.expect("the panic had a location")
}

#[test]
fn accessor_panics_point_at_the_callers_line() {
    let s = state();
    let here = file!().to_owned();
    // Each closure records the line of the call below it, which is where it panics.
    let line = std::cell::Cell::new(0);
    let at = panic_location(|| {
        s.with_hosts(|_| {
            line.set(line!() + 1);
            s.hosts()
        });
    });
    assert_eq!(at, (here.clone(), line.get()), "re-entrant getter");
    let at = panic_location(|| {
        s.update_log(|_| {
            line.set(line!() + 1);
            s.set_log(Vec::new())
        });
    });
    assert_eq!(at, (here.clone(), line.get()), "re-entrant setter");
    let at = panic_location(|| {
        s.with_log(|_| {
            line.set(line!() + 1);
            s.update(|_| ())
        })
    });
    assert_eq!(
        at,
        (here.clone(), line.get()),
        "lock order, multi-field update"
    );
    let at = panic_location(|| {
        s.with_log(|_| {
            line.set(line!() + 1);
            s.with_hosts(|_| ())
        })
    });
    assert_eq!(at, (here.clone(), line.get()), "lock order, `with_`");
    let at = panic_location(|| {
        s.update_config(|c| {
            line.set(line!() + 1);
            s.set_config(c.clone());
            c.clone()
        });
    });
    assert_eq!(
        at,
        (here.clone(), line.get()),
        "read-mostly write inside its update"
    );
    let at = panic_location(|| {
        s.update_config(|c| {
            line.set(line!() + 1);
            s.update_config(|c| c.clone());
            c.clone()
        });
    });
    assert_eq!(
        at,
        (here, line.get()),
        "read-mostly update inside its update"
    );
}

// --- global ----------------------------------------------------------------------------

#[shared_state(global)]
struct Registry {
    names: Vec<String>,
    #[shared(counter)]
    hits: u64,
}

#[test]
fn global_is_one_lazy_instance_even_under_a_race() {
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let g = Registry::global();
                g.incr_hits();
                g.update_names(|n| n.push(format!("t{i}")));
                std::ptr::from_ref(g).addr()
            })
        })
        .collect();
    let addrs: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(addrs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(Registry::global().hits(), 8);
    assert_eq!(Registry::global().names().len(), 8);
}

// --- generics --------------------------------------------------------------------------

#[shared_state]
#[derive(Debug, Default)]
struct Cache<K: std::hash::Hash + Eq, V>
where
    V: Send,
{
    entries: HashMap<K, V>,
    #[shared(read_mostly)]
    label: String,
}

#[test]
fn generic_structs() {
    let c: Cache<u8, Opaque> = Cache::new(HashMap::new(), "c".into());
    c.update_entries(|e| e.insert(1, Opaque(9)));
    assert_eq!(c.with_entries(|e| e[&1].0), 9);
    assert_eq!(c.update(|f| f.entries.len()), 1);
    let d: Cache<String, u32> = Cache::default();
    d.update_entries(|e| e.insert("x".into(), 1));
    assert_eq!(d.entries()["x"], 1);
    assert_eq!(
        format!("{d:?}"),
        r#"Cache { entries: {"x": 1}, label: "" }"#
    );
    // Every instantiation of a generic struct shares one lock order.
    let msg = panic_of(|| {
        c.with_entries(|_| d.with_entries(|_| ()));
    });
    assert!(
        msg.starts_with("lock order: `Cache::entries` of another `Cache` is held"),
        "{msg}"
    );
}

// --- read-mostly per-thread cache --------------------------------------------------------

#[test]
fn with_sees_a_write_made_on_another_thread_at_once() {
    let s = Arc::new(state());
    let (to_reader, reader_rx) = mpsc::channel::<u32>();
    let (to_main, main_rx) = mpsc::channel::<u32>();
    let reader = {
        let s = Arc::clone(&s);
        thread::spawn(move || {
            // Each round: read (filling this thread's cache), report, wait for a write.
            for _ in 0..50 {
                to_main.send(s.with_config(|c| c.limit)).unwrap();
                if reader_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                    return;
                }
            }
        })
    };
    for round in 0..50u32 {
        let seen = main_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(seen, round, "the reader saw a stale value");
        s.set_config(Config {
            limit: round + 1,
            name: String::new(),
        });
        to_reader.send(round).unwrap();
    }
    reader.join().unwrap();
}

#[test]
fn with_is_right_for_more_fields_than_the_cache_holds() {
    let states: Vec<State> = (0..40).map(|_| state()).collect();
    for round in 0..3u32 {
        for (i, s) in states.iter().enumerate() {
            s.set_config(Config {
                limit: i as u32 * 10 + round,
                name: String::new(),
            });
        }
        for (i, s) in states.iter().enumerate() {
            assert_eq!(s.with_config(|c| c.limit), i as u32 * 10 + round);
            assert_eq!(s.with_config(|c| c.limit), i as u32 * 10 + round);
        }
    }
    // Nested reads of different fields inside a read.
    let total: u32 = states[1].with_config(|a| states[2].with_config(|b| a.limit + b.limit));
    assert_eq!(total, 12 + 22);
}
