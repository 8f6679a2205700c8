#![doc = include_str!("../README.md")]

mod contention;
mod http;
mod lock;
mod temp;

pub use contention::{ContentionReport, Latencies, MAX_SAMPLES, extended_code, sqlite_code_name};
pub use http::{Gate, HttpStub, HttpStubBuilder, Reply, Route};
pub use lock::{SnapshotBreaker, WriteLock, force_busy, force_busy_snapshot};
pub use temp::TempDb;
