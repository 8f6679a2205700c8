//! Throughput of `#[shared_state]` fields under 2 reading threads and 1 writing thread,
//! against the std lock a hand-written global would use.
//!
//! Cases (each side runs the same 3 threads doing the same logical work; the field read is
//! a `u64` in a small `Config`):
//!
//! - `read_mostly: with_config()` — readers call `state.with_config(|c| c.limit)`; the
//!   writer calls `set_config(…)` and then sleeps `WRITE_PAUSE` (100 µs), i.e. a few
//!   thousand writes a second. Baseline: readers take `RwLock<Config>::read()` and read the
//!   same field; the writer takes `write()`, stores a new `Config`, and sleeps as long.
//!   Measured: reads/s of both readers together. Target: ≥ 5×.
//! - `read_mostly: config()` — the same with `config()`, which returns an `Arc<Config>`:
//!   cloning it is an atomic increment (and the drop a decrement) on a reference count that
//!   both readers share, i.e. the same traffic as a `RwLock` read. Informative (no target).
//! - `read_mostly: with_config(), writer flat out` — the first case with a writer that never
//!   pauses. Informative (no target).
//! - `counter: incr` — the writer calls `incr_requests()`, the readers `requests()`, all
//!   flat out. Baseline: `Mutex<u64>` (`*m.lock() += 1` / `*m.lock()`). Measured:
//!   increments/s of the writer. Target: ≥ 3×.
//! - `counter: 3 threads incrementing` — all three threads increment. Informative.
//!
//! Method, per case: a warm-up window per side, then rounds of four windows in the order
//! baseline, shared, shared, baseline (ABBA, so a linear drift in machine speed hits both
//! sides alike). In each window the three threads start together behind a barrier, run
//! until the main thread raises a stop flag (after `WINDOW`), and each thread divides its
//! own operation count by its own elapsed time. A side's throughput for a round is the
//! mean of its two windows; `ratio` is the median over rounds of the round's
//! `shared / baseline`, which decides PASS/MISS (a slow spell of the shared machine hits
//! both sides of a round). Every loop is bounded: the stop flag is checked every 64
//! operations, the number of rounds is fixed. The whole run takes about 26 s and exits
//! non-zero when a case with a target misses it. As cross-checks the run prints each
//! side's writer ops/s (both sides must do comparable writing) and the ratio of ops per
//! second *on a CPU* (each counted thread's run time from `/proc/thread-self/schedstat`),
//! which on a machine shared with other work is less sensitive to how often the
//! scheduler lets the threads run.
//!
//! ```text
//! cargo run --release --example bench_shared_state
//! ```

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use luca_core::shared_state;
use luca_examples::stats::{median, paired_ratio};

/// Length of one measurement window.
const WINDOW: Duration = Duration::from_millis(150);
/// ABBA rounds per case.
const ROUNDS: usize = 8;
/// Pause of the read_mostly writer after each write (the first two rows): about ten
/// thousand writes a second at most, far more than a read-mostly value sees.
const WRITE_PAUSE: Duration = Duration::from_micros(100);
/// Operations between two checks of the stop flag.
const CHECK_EVERY: u64 = 64;

/// What readers read and the writer replaces.
#[derive(Clone, Debug, Default)]
struct Config {
    limit: u64,
    generation: u64,
}

#[shared_state]
#[derive(Default)]
struct State {
    #[shared(read_mostly)]
    config: Config,
    #[shared(counter)]
    requests: u64,
}

/// The hand-written equivalent: std locks.
#[derive(Default)]
struct Baseline {
    config: RwLock<Config>,
    requests: Mutex<u64>,
}

/// Which thread's operations a case counts.
#[derive(Clone, Copy, PartialEq)]
enum Counted {
    Readers,
    Writer,
    All,
}

/// The three threads' loops of one side of a case.
#[derive(Clone, Copy)]
struct Work<'a> {
    read: &'a (dyn Fn(u64) + Sync),
    write: &'a (dyn Fn(u64) + Sync),
    /// The writer sleeps this long after each write (`None`: it writes flat out).
    write_pause: Option<Duration>,
}

/// What one window measured: the counted ops/s, the same ops per second the counted
/// threads were actually on a CPU (from `/proc/thread-self/schedstat`; NaN where it is not
/// available), and the writer's ops/s as a cross-check that both sides did the same
/// writing.
#[derive(Clone, Copy)]
struct Rates {
    counted: f64,
    counted_per_cpu_s: f64,
    writes: f64,
}

/// Nanoseconds this thread has spent on a CPU (Linux), if known.
fn on_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Runs 2 readers and 1 writer for one window.
fn window(work: &Work<'_>, counted: Counted) -> Rates {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(4);
    thread::scope(|s| {
        // Threads 0 and 1 read, thread 2 writes.
        let loops = [
            (work.read, None),
            (work.read, None),
            (work.write, work.write_pause),
        ];
        let handles: Vec<_> = loops
            .into_iter()
            .map(|(f, pause)| {
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let cpu_start = on_cpu_ns();
                    let mut ops = 0u64;
                    match pause {
                        None => loop {
                            for _ in 0..CHECK_EVERY {
                                f(ops);
                                ops += 1;
                            }
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        },
                        Some(pause) => {
                            while !stop.load(Ordering::Relaxed) {
                                f(ops);
                                ops += 1;
                                thread::sleep(pause);
                            }
                        }
                    }
                    let wall = start.elapsed().as_secs_f64();
                    let cpu = match (cpu_start, on_cpu_ns()) {
                        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
                        _ => f64::NAN,
                    };
                    (ops as f64 / wall, ops as f64, cpu)
                })
            })
            .collect();
        barrier.wait();
        thread::sleep(WINDOW);
        stop.store(true, Ordering::Relaxed);
        let r: Vec<(f64, f64, f64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let which: &[usize] = match counted {
            Counted::Readers => &[0, 1],
            Counted::Writer => &[2],
            Counted::All => &[0, 1, 2],
        };
        let ops: f64 = which.iter().map(|&i| r[i].1).sum();
        let cpu: f64 = which.iter().map(|&i| r[i].2).sum();
        Rates {
            counted: which.iter().map(|&i| r[i].0).sum(),
            counted_per_cpu_s: ops / cpu,
            writes: r[2].0,
        }
    })
}

/// One case's measurements.
struct Row {
    case: &'static str,
    unit: &'static str,
    target: Option<f64>,
    baseline: Vec<f64>,
    shared: Vec<f64>,
    baseline_writes: Vec<f64>,
    shared_writes: Vec<f64>,
    /// Per round: shared / baseline of ops per on-CPU second.
    cpu_ratios: Vec<f64>,
}

impl Row {
    /// Median over rounds of the round's `shared / baseline`.
    fn ratio(&self) -> f64 {
        paired_ratio(&self.baseline, &self.shared)
    }

    fn verdict(&self) -> &'static str {
        match self.target {
            Some(t) if self.ratio() >= t => "PASS",
            Some(_) => "MISS",
            None => "info",
        }
    }
}

fn measure(
    case: &'static str,
    unit: &'static str,
    target: Option<f64>,
    counted: Counted,
    baseline: &Work<'_>,
    shared: &Work<'_>,
) -> Row {
    black_box(window(baseline, counted).counted);
    black_box(window(shared, counted).counted);
    let mut row = Row {
        case,
        unit,
        target,
        baseline: Vec::with_capacity(ROUNDS),
        shared: Vec::with_capacity(ROUNDS),
        baseline_writes: Vec::with_capacity(ROUNDS),
        shared_writes: Vec::with_capacity(ROUNDS),
        cpu_ratios: Vec::with_capacity(ROUNDS),
    };
    for _ in 0..ROUNDS {
        let a1 = window(baseline, counted);
        let b1 = window(shared, counted);
        let b2 = window(shared, counted);
        let a2 = window(baseline, counted);
        row.baseline.push((a1.counted + a2.counted) / 2.0);
        row.shared.push((b1.counted + b2.counted) / 2.0);
        row.baseline_writes.push((a1.writes + a2.writes) / 2.0);
        row.shared_writes.push((b1.writes + b2.writes) / 2.0);
        row.cpu_ratios.push(
            (b1.counted_per_cpu_s + b2.counted_per_cpu_s)
                / (a1.counted_per_cpu_s + a2.counted_per_cpu_s),
        );
    }
    row
}

fn main() -> ExitCode {
    let started = Instant::now();
    let state = State::default();
    let base = Baseline::default();

    // --- read_mostly vs RwLock ---------------------------------------------------------
    let rw_read = |_: u64| {
        black_box(base.config.read().unwrap().limit);
    };
    let rw_write = |i: u64| {
        *base.config.write().unwrap() = Config {
            limit: i,
            generation: i,
        };
    };
    let rm_read = |_: u64| {
        black_box(state.config().limit);
    };
    let rm_with = |_: u64| {
        black_box(state.with_config(|c| c.limit));
    };
    let rm_write = |i: u64| {
        black_box(state.set_config(Config {
            limit: i,
            generation: i,
        }));
    };
    let paced = Some(WRITE_PAUSE);
    let rw = Work {
        read: &rw_read,
        write: &rw_write,
        write_pause: paced,
    };
    let rw_flat_out = Work {
        write_pause: None,
        ..rw
    };

    // --- counter vs Mutex<u64> ---------------------------------------------------------
    let m_read = |_: u64| {
        black_box(*base.requests.lock().unwrap());
    };
    let m_incr = |_: u64| {
        *base.requests.lock().unwrap() += 1;
    };
    let c_read = |_: u64| {
        black_box(state.requests());
    };
    let c_incr = |_: u64| {
        black_box(state.incr_requests());
    };

    let rows = [
        measure(
            "read_mostly: with_config() vs RwLock::read",
            "reads/s",
            Some(5.0),
            Counted::Readers,
            &rw,
            &Work {
                read: &rm_with,
                write: &rm_write,
                write_pause: paced,
            },
        ),
        measure(
            "read_mostly: config() vs RwLock::read",
            "reads/s",
            None,
            Counted::Readers,
            &rw,
            &Work {
                read: &rm_read,
                write: &rm_write,
                write_pause: paced,
            },
        ),
        measure(
            "read_mostly: with_config(), writer flat out",
            "reads/s",
            None,
            Counted::Readers,
            &rw_flat_out,
            &Work {
                read: &rm_with,
                write: &rm_write,
                write_pause: None,
            },
        ),
        measure(
            "counter: incr vs Mutex<u64> += 1",
            "incr/s",
            Some(3.0),
            Counted::Writer,
            &Work {
                read: &m_read,
                write: &m_incr,
                write_pause: None,
            },
            &Work {
                read: &c_read,
                write: &c_incr,
                write_pause: None,
            },
        ),
        measure(
            "counter: 3 threads incrementing",
            "incr/s",
            None,
            Counted::All,
            &Work {
                read: &m_incr,
                write: &m_incr,
                write_pause: None,
            },
            &Work {
                read: &c_incr,
                write: &c_incr,
                write_pause: None,
            },
        ),
    ];

    println!("#[shared_state] throughput: 2 threads reading + 1 writing, shared field vs std lock");
    println!(
        "{} ABBA rounds of {} ms windows per case; throughput = median over rounds (millions of ops/s); ratio = median over rounds of (shared / std) within the round",
        ROUNDS,
        WINDOW.as_millis()
    );
    println!();
    println!(
        "| case                                        | unit    | std lock M/s | shared M/s |   ratio | target | verdict |"
    );
    println!(
        "|---------------------------------------------|---------|--------------|------------|---------|--------|---------|"
    );
    let mut missed = false;
    for row in &rows {
        let target = row
            .target
            .map(|t| format!(">= {t}x"))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {:<43} | {:<7} | {:>12.2} | {:>10.2} | {:>6.2}x | {:<6} | {:<7} |",
            row.case,
            row.unit,
            median(&row.baseline) / 1e6,
            median(&row.shared) / 1e6,
            row.ratio(),
            target,
            row.verdict()
        );
        missed |= row.verdict() == "MISS";
    }
    println!();
    println!(
        "cross-checks (not used for PASS/MISS): the writer thread's ops/s, std lock vs shared (medians over rounds);"
    );
    println!(
        "ratio of ops per second on a CPU (each counted thread's own run time from /proc/thread-self/schedstat):"
    );
    for row in &rows {
        println!(
            "  {:<43} writer {:>10.0} vs {:>10.0} | per on-CPU second ratio {:>6.2}x",
            row.case,
            median(&row.baseline_writes),
            median(&row.shared_writes),
            median(&row.cpu_ratios)
        );
    }
    println!();
    println!(
        "final values (sanity): config.generation = {}, requests = {}, Mutex<u64> = {}",
        state.config().generation,
        state.requests(),
        base.requests.lock().unwrap()
    );
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    if missed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
