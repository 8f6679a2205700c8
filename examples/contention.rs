//! The main job: why luca exists, shown on an embedded SQLite file.
//!
//! Runs the four checks of the original Python project's concurrency suite, then compares
//! naive SQLite, the original's design (two ways), `#[db_retry]` over `local` connections, and `Db`
//! (group commit off and on) at 1, 16 and 64 writers on an insert and a read-modify-write
//! workload: throughput against the serial ceiling, latency percentiles, errors that reach
//! the caller, and writes lost. Exits non-zero if a check fails or a luca row escapes an
//! error or loses a write. The job itself lives in `luca_examples::contention`.
//!
//! ```text
//! cargo run --release --example contention
//! cargo run --release --example contention -- --writers 1,8,32 --ops 5000 --plot contention.svg
//! cargo run --release --example contention -- --json > contention.json
//! cargo run --release --example contention -- --help
//! ```

fn main() -> std::process::ExitCode {
    luca_examples::contention::main()
}
