#![doc = include_str!("../README.md")]

pub mod breaker;
pub mod client;
pub mod metrics;
pub mod polite;
pub mod retry_queue;
pub use retry_queue::{RetryQueue, RetryQueueError, Scheduled};
