#![doc = include_str!("../README.md")]

mod lock;
mod temp;

pub use lock::{SnapshotBreaker, WriteLock, force_busy, force_busy_snapshot};
pub use temp::TempDb;
