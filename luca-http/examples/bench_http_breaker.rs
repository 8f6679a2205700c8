//! Breaker + politeness check-and-record with 10 000 hosts and 64 threads: luca-http's
//! sharded [`HostBreaker`] and [`Politeness`] against one global `Mutex<HashMap>` holding
//! the same per-host state (the design of the original scraper's module-level dictionaries,
//! here even given the advantage of one table for both).
//!
//! One operation, on a host drawn at random from 10 000:
//!
//! - luca-http: `breaker.check(host)` → `polite.try_acquire(host)` → `permit.success()` →
//!   the slot dropped (what a fetcher does around a request, without the request);
//! - baseline: lock, get or insert the host's entry, refuse if open, else take an
//!   in-flight slot (limit 8) and stamp the start; unlock; lock again, free the slot and
//!   reset the failures; unlock.
//!
//! Method: `THREADS` threads start together behind a barrier and each does `OPS` operations;
//! a side's throughput is all operations over the wall time. Rounds in the order baseline,
//! luca, luca, baseline (ABBA, so a drift in machine speed hits both sides alike); the
//! ratio is the median over rounds of `luca / baseline` (target ≥ 3×). Memory: live heap
//! bytes (a counting allocator) before the tables exist, with 10 000 hosts tracked, and
//! after the hosts have been idle past the TTL and a sweep ran. Every loop is bounded.
//!
//! Clocks: examples build with the dev-dependencies, so tokio's `test-util` feature is on
//! here. In tokio (1.54 in the lock file) `tokio::time::Instant::now()` in a process
//! that never paused a clock is `std::time::Instant::now()` after one atomic load (no
//! runtime, no lock), so the luca side is not slowed by it; the baseline reads the same
//! `std` clock once per operation, the luca side once in `check` and once in `try_acquire`.
//!
//! ```text
//! cargo run --release -p luca-http --example bench_http_breaker
//! ```

#![allow(unsafe_code)] // the counting allocator only

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use luca_http::{BreakerConfig, HostBreaker, PoliteConfig, Politeness};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout as given.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HOSTS: usize = 10_000;
const THREADS: usize = 64;
const OPS: usize = 50_000;
const ROUNDS: usize = 3;
const TTL: Duration = Duration::from_millis(300);

#[derive(Default)]
struct BaselineEntry {
    failures: u32,
    open_until: Option<Instant>,
    in_flight: u32,
    last_start: Option<Instant>,
}

type Baseline = Mutex<HashMap<String, BaselineEntry>>;

fn baseline_op(table: &Baseline, host: &str) {
    let now = Instant::now();
    let admitted = {
        let mut m = table.lock().unwrap_or_else(|e| e.into_inner());
        let e = match m.get_mut(host) {
            Some(e) => e,
            None => m.entry(host.to_owned()).or_default(),
        };
        if e.open_until.is_some_and(|u| u > now) || e.in_flight >= 8 {
            false
        } else {
            e.in_flight += 1;
            e.last_start = Some(now);
            true
        }
    };
    if admitted {
        let mut m = table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(host) {
            e.in_flight -= 1;
            e.failures = 0;
        }
    }
}

fn luca_op(breaker: &HostBreaker, polite: &Politeness, host: &str) {
    if let Ok(permit) = breaker.check(host) {
        match polite.try_acquire(host) {
            Some(slot) => {
                permit.success();
                drop(slot);
            }
            None => drop(permit),
        }
    }
}

/// Runs `op` on `THREADS` threads, `OPS` times each; returns operations per second.
fn run(hosts: &Arc<Vec<String>>, op: Arc<dyn Fn(&str) + Send + Sync>) -> f64 {
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (hosts, op, barrier) = (hosts.clone(), op.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64);
                barrier.wait();
                for _ in 0..OPS {
                    op(&hosts[rng.usize(..HOSTS)]);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    (THREADS * OPS) as f64 / start.elapsed().as_secs_f64()
}

fn kib(bytes: isize) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn main() {
    let hosts: Arc<Vec<String>> =
        Arc::new((0..HOSTS).map(|i| format!("host-{i}.example")).collect());
    let before = LIVE.load(Ordering::Relaxed);
    let breaker = HostBreaker::new(BreakerConfig::default().idle_ttl(TTL));
    let polite = Politeness::new(PoliteConfig::default().idle_ttl(TTL));
    let baseline: Arc<Baseline> = Arc::new(Mutex::new(HashMap::new()));

    let luca: Arc<dyn Fn(&str) + Send + Sync> = {
        let (b, p) = (breaker.clone(), polite.clone());
        Arc::new(move |h: &str| luca_op(&b, &p, h))
    };
    let base: Arc<dyn Fn(&str) + Send + Sync> = {
        let t = baseline.clone();
        Arc::new(move |h: &str| baseline_op(&t, h))
    };

    // Warm-up: every host gets an entry on both sides.
    run(&hosts, base.clone());
    run(&hosts, luca.clone());

    println!(
        "breaker + politeness check-and-record, {HOSTS} hosts, {THREADS} threads x {OPS} ops, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>5} {:>16} {:>16} {:>7}",
        "round", "baseline ops/s", "luca ops/s", "ratio"
    );
    let mut ratios = Vec::new();
    let mut last = (0.0, 0.0);
    for round in 1..=ROUNDS {
        let b1 = run(&hosts, base.clone());
        let l1 = run(&hosts, luca.clone());
        let l2 = run(&hosts, luca.clone());
        let b2 = run(&hosts, base.clone());
        let (b, l) = ((b1 + b2) / 2.0, (l1 + l2) / 2.0);
        ratios.push(l / b);
        last = (b, l);
        println!("{round:>5} {b:>16.0} {l:>16.0} {:>6.2}x", l / b);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "median ratio {median:.2}x (target >= 3x): {}",
        if median >= 3.0 { "PASS" } else { "MISS" }
    );
    println!(
        "per-op cost (wall time / all ops, last round): baseline {:.0} ns, luca {:.0} ns",
        1e9 / last.0,
        1e9 / last.1
    );

    // Memory: the baseline's table is dropped first so only luca's tables are counted.
    drop(base);
    let baseline_bytes = {
        let before_drop = LIVE.load(Ordering::Relaxed);
        drop(baseline);
        before_drop - LIVE.load(Ordering::Relaxed)
    };
    let loaded = LIVE.load(Ordering::Relaxed) - before;
    let tracked = (breaker.tracked_hosts(), polite.tracked_hosts());
    std::thread::sleep(TTL + Duration::from_millis(50));
    breaker.sweep();
    polite.sweep();
    let after = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "memory: baseline table {} (never shrinks); luca tables {} with {}/{} hosts tracked, {} after idle eviction ({}/{} tracked)",
        kib(baseline_bytes),
        kib(loaded),
        tracked.0,
        tracked.1,
        kib(after),
        breaker.tracked_hosts(),
        polite.tracked_hosts()
    );
    drop(luca);
    if median < 3.0 {
        std::process::exit(1);
    }
}
