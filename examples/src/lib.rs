//! luca's runnable programs. The programs are the package's examples, run from the
//! workspace root:
//!
//! - `cargo run --release --example contention` — the main job: the concurrency checks on
//!   an embedded SQLite file (exits non-zero if one fails);
//! - `cargo run --release --example scraper` — a small crawler over an in-process loopback
//!   "web" of four hosts (healthy, flaky, rate-limiting, stalling): `luca_http::Fetcher`,
//!   the retry queue in a `Db`, leads stored by `#[db_retry]` functions;
//! - `cargo run --release --example learning_engine` — many tasks record which extraction
//!   patterns worked (read-modify-write upserts on a `Db`), then print the ranking and
//!   prove no update was lost;
//! - `cargo run --release --example bench_db_retry` — `#[db_retry]` success-path overhead
//!   against hand-written functions;
//! - `cargo run --release --example bench_shared_state` — `#[shared_state]` throughput
//!   against std locks (both described in `BENCHMARKS.md`).
//!
//! This library holds what the benchmarks share.

/// Statistics of benchmark rounds.
pub mod stats {
    /// The median (the mean of the middle two for an even count; NaN when empty).
    pub fn median(xs: &[f64]) -> f64 {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The median over rounds of `candidate[i] / baseline[i]`: both sides of a round run
    /// moments apart, so a slow spell of a shared machine cancels out of each ratio.
    pub fn paired_ratio(baseline: &[f64], candidate: &[f64]) -> f64 {
        let ratios: Vec<f64> = baseline.iter().zip(candidate).map(|(b, c)| c / b).collect();
        median(&ratios)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn median_and_paired_ratio() {
            assert!(median(&[]).is_nan());
            assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
            assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
            assert_eq!(paired_ratio(&[1.0, 2.0, 4.0], &[2.0, 2.0, 2.0]), 1.0);
        }
    }
}

pub mod contention;
