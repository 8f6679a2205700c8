#![doc = include_str!("../README.md")]

mod http;
mod lock;
#[cfg(feature = "postgres")]
mod postgres;
mod temp;

pub use http::{Gate, HttpStub, HttpStubBuilder, Reply, Route};
pub use lock::{SnapshotBreaker, WriteLock, force_busy, force_busy_snapshot};
#[cfg(feature = "postgres")]
pub use postgres::{PgStartError, TempPostgres};
pub use temp::TempDb;
