//! Breaker + politeness check-and-record with 10 000 hosts and 64 threads (and, second, 64
//! tokio tasks): luca-http against one global `Mutex<HashMap>` holding the same per-host
//! state (the design of the original scraper's module-level dictionaries, here even given
//! the advantage of one table for both).
//!
//! One operation, on a host drawn at random from 10 000:
//!
//! - luca-http [`HostGate`] (the target): `gate.try_acquire(host)` → `permit.success()`
//!   (breaker check, politeness slot taken and start stamped, then the verdict recorded and
//!   the slot freed: what a fetcher does around a request, without the request);
//! - luca-http separate: `breaker.check(host)` → `polite.try_acquire(host)` →
//!   `permit.success()` → the slot dropped ([`HostBreaker`] and [`Politeness`] used
//!   together, each with its own table);
//! - baseline: lock, get or insert the host's entry, refuse if open, else take an
//!   in-flight slot (limit 8) and stamp the start; unlock; lock again, free the slot and
//!   reset the failures; unlock.
//!
//! Method: `THREADS` threads start together behind a barrier and each does `OPS` operations;
//! a side's throughput is all operations over the wall time. Rounds in the order baseline,
//! gate, separate, separate, gate, baseline (so a drift in machine speed hits every side
//! alike); a ratio is the median over rounds of `luca / baseline`; the target (≥ 3×) is
//! checked on the gate with threads. Then the same with `THREADS` tokio tasks on a
//! multi-thread runtime with one worker per core (each task yields every `YIELD_EVERY`
//! operations, as a crawler's task would await between requests); reported, not a target.
//! Memory: live heap bytes (a counting allocator) of each design with 10 000 hosts
//! tracked, and after the hosts have been idle past the TTL and a sweep ran. Every loop is
//! bounded.
//!
//! Clocks: examples build with the dev-dependencies, so tokio's `test-util` feature is on
//! here. In tokio (1.54 in the lock file) `tokio::time::Instant::now()` in a process
//! that never paused a clock is `std::time::Instant::now()` after one atomic load (no
//! runtime, no lock), so the luca side is not slowed by it. The baseline and the gate read
//! the clock once per operation, the separate design once in `check` and once in
//! `try_acquire`.
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

use luca_http::{BreakerConfig, HostBreaker, HostGate, PoliteConfig, Politeness};

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
const YIELD_EVERY: usize = 32;
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

fn gate_op(gate: &HostGate, host: &str) {
    if let Ok(permit) = gate.try_acquire(host) {
        permit.success();
    }
}

fn separate_op(breaker: &HostBreaker, polite: &Politeness, host: &str) {
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

type Op = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs `op` on `THREADS` threads, `OPS` times each; returns operations per second.
fn run_threads(hosts: &Arc<Vec<String>>, op: &Op) -> f64 {
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

/// Runs `op` in `THREADS` tokio tasks, `OPS` times each (yielding every `YIELD_EVERY`);
/// returns operations per second.
fn run_tasks(rt: &tokio::runtime::Runtime, hosts: &Arc<Vec<String>>, op: &Op) -> f64 {
    rt.block_on(async {
        let gate = Arc::new(tokio::sync::Barrier::new(THREADS + 1));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (hosts, op, gate) = (hosts.clone(), op.clone(), gate.clone());
                tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    gate.wait().await;
                    for i in 0..OPS {
                        op(&hosts[rng.usize(..HOSTS)]);
                        if i % YIELD_EVERY == YIELD_EVERY - 1 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        gate.wait().await;
        let start = Instant::now();
        for h in handles {
            h.await.expect("bench task");
        }
        (THREADS * OPS) as f64 / start.elapsed().as_secs_f64()
    })
}

fn kib(bytes: isize) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ABBA-style rounds of baseline, gate, separate; prints a table; returns the median
/// ratios (gate, separate) and the last round's per-op costs.
fn rounds(label: &str, run: &dyn Fn(&Op) -> f64, base: &Op, gate: &Op, sep: &Op) -> (f64, f64) {
    println!("{label}");
    println!(
        "{:>5} {:>15} {:>15} {:>15} {:>11} {:>11}",
        "round", "baseline ops/s", "gate ops/s", "separate ops/s", "gate ratio", "sep. ratio"
    );
    let (mut rg, mut rs) = (Vec::new(), Vec::new());
    let mut last = (0.0, 0.0, 0.0);
    for round in 1..=ROUNDS {
        let b1 = run(base);
        let g1 = run(gate);
        let s1 = run(sep);
        let s2 = run(sep);
        let g2 = run(gate);
        let b2 = run(base);
        let (b, g, s) = ((b1 + b2) / 2.0, (g1 + g2) / 2.0, (s1 + s2) / 2.0);
        rg.push(g / b);
        rs.push(s / b);
        last = (b, g, s);
        println!(
            "{round:>5} {b:>15.0} {g:>15.0} {s:>15.0} {:>10.2}x {:>10.2}x",
            g / b,
            s / b
        );
    }
    let (mg, ms) = (median(rg), median(rs));
    println!(
        "median ratio: gate {mg:.2}x, separate {ms:.2}x; per-op cost (wall time / all ops, last round): baseline {:.0} ns, gate {:.0} ns, separate {:.0} ns",
        1e9 / last.0,
        1e9 / last.1,
        1e9 / last.2
    );
    (mg, ms)
}

fn main() {
    let hosts: Arc<Vec<String>> =
        Arc::new((0..HOSTS).map(|i| format!("host-{i}.example")).collect());
    let live = || LIVE.load(Ordering::Relaxed);
    let run = |op: &Op| run_threads(&hosts, op);

    // Each design is built and warmed up (every host gets an entry) on its own, so its
    // live bytes can be told apart.
    let m = live();
    let gate = HostGate::new(
        BreakerConfig::default().idle_ttl(TTL),
        PoliteConfig::default().idle_ttl(TTL),
    );
    let gate_op: Op = {
        let g = gate.clone();
        Arc::new(move |h: &str| gate_op(&g, h))
    };
    run(&gate_op);
    let gate_loaded = live() - m;

    let m = live();
    let breaker = HostBreaker::new(BreakerConfig::default().idle_ttl(TTL));
    let polite = Politeness::new(PoliteConfig::default().idle_ttl(TTL));
    let sep_op: Op = {
        let (b, p) = (breaker.clone(), polite.clone());
        Arc::new(move |h: &str| separate_op(&b, &p, h))
    };
    run(&sep_op);
    let sep_loaded = live() - m;

    let m = live();
    let baseline: Arc<Baseline> = Arc::new(Mutex::new(HashMap::new()));
    let base_op: Op = {
        let t = baseline.clone();
        Arc::new(move |h: &str| baseline_op(&t, h))
    };
    run(&base_op);
    let base_loaded = live() - m;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("breaker + politeness check-and-record, {HOSTS} hosts, {OPS} ops each, {cores} cores");
    let (threads_gate, _) = rounds(
        &format!("{THREADS} threads"),
        &run,
        &base_op,
        &gate_op,
        &sep_op,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .build()
        .expect("tokio runtime");
    rounds(
        &format!(
            "{THREADS} tokio tasks on {cores} worker threads, a yield every {YIELD_EVERY} ops"
        ),
        &|op: &Op| run_tasks(&rt, &hosts, op),
        &base_op,
        &gate_op,
        &sep_op,
    );
    drop(rt);
    println!(
        "target (gate, threads): median {threads_gate:.2}x, target >= 3x: {}",
        if threads_gate >= 3.0 { "PASS" } else { "MISS" }
    );

    // Memory after the hosts went idle past the TTL and a sweep: each design's bytes are
    // what dropping it frees.
    let tracked = (
        gate.tracked_hosts(),
        breaker.tracked_hosts(),
        polite.tracked_hosts(),
    );
    std::thread::sleep(TTL + Duration::from_millis(50));
    gate.sweep();
    breaker.sweep();
    polite.sweep();
    let evicted = (
        gate.tracked_hosts(),
        breaker.tracked_hosts(),
        polite.tracked_hosts(),
    );
    drop((gate_op, sep_op, base_op));
    let gate_after = {
        let m = live();
        drop(gate);
        m - live()
    };
    let sep_after = {
        let m = live();
        drop((breaker, polite));
        m - live()
    };
    let base_after = {
        let m = live();
        drop(baseline);
        m - live()
    };
    println!(
        "memory with {HOSTS} hosts tracked: baseline {} (after idle: {}, never shrinks); gate {} ({} hosts); separate {} ({}/{} hosts)",
        kib(base_loaded),
        kib(base_after),
        kib(gate_loaded),
        tracked.0,
        kib(sep_loaded),
        tracked.1,
        tracked.2
    );
    println!(
        "memory after idle eviction: gate {} ({} hosts), separate {} ({}/{} hosts)",
        kib(gate_after),
        evicted.0,
        kib(sep_after),
        evicted.1,
        evicted.2
    );
    if threads_gate < 3.0 {
        std::process::exit(1);
    }
}
