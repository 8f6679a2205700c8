#![doc = include_str!("../README.md")]

mod contention;
#[cfg(unix)]
pub mod crash;
mod http;
mod lock;
pub mod process;
mod temp;

pub use contention::{ContentionReport, Latencies, MAX_SAMPLES, extended_code, sqlite_code_name};
pub use http::{Gate, HttpStub, HttpStubBuilder, Reply, Route};
pub use lock::{SnapshotBreaker, WriteLock, force_busy, force_busy_snapshot};
pub use temp::TempDb;
