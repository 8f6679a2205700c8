#![doc = include_str!("../README.md")]

mod contention;
#[cfg(unix)]
pub mod crash;
mod http;
mod lock;
#[cfg(feature = "postgres")]
mod postgres;
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
#[cfg(feature = "postgres")]
pub use postgres::{PgStartError, TempPostgres};
pub use temp::{Sweep, TempDb};
pub use workloads::{Counter, InsertLedger, Learning, Lost, Workload};
