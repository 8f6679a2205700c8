#![doc = include_str!("../README.md")]

mod contention;
#[cfg(unix)]
pub mod crash;
mod http;
mod lock;
pub mod process;
mod temp;
mod workloads;

pub use contention::{
    Acked, BoxError, Contention, ContentionReport, Latencies, MAX_SAMPLES, Op, extended_code,
    sqlite_code_name,
};
pub use http::{Gate, HttpStub, HttpStubBuilder, Reply, Route};
pub use lock::{
    LongReader, SnapshotBreaker, UpgradeBusy, WriteLock, force_busy, force_busy_snapshot,
    force_busy_upgrade, wal_bytes,
};
pub use temp::{Sweep, TempDb};
pub use workloads::{Counter, InsertLedger, Learning, Lost, Workload};
