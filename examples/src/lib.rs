//! luca's runnable programs. This library is empty; the programs are the package's
//! examples, run from the workspace root:
//!
//! - `cargo run --release --example contention` — the main job: the concurrency checks on
//!   an embedded SQLite file (exits non-zero if one fails);
//! - `cargo run --release --example bench_db_retry` — `#[db_retry]` success-path overhead
//!   against hand-written functions (see `BENCHMARKS.md`).
