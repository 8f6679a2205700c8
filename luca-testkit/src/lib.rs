#![doc = include_str!("../README.md")]

#[cfg(unix)]
pub mod crash;
mod http;
mod lock;
pub mod process;
mod temp;

pub use http::{Gate, HttpStub, HttpStubBuilder, Reply, Route};
pub use lock::{SnapshotBreaker, WriteLock, force_busy, force_busy_snapshot};
pub use temp::TempDb;
