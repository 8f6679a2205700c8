#![doc = include_str!("../README.md")]

pub mod breaker;
pub mod client;
pub mod fetcher;
pub mod gate;
pub mod metrics;
pub mod polite;
pub mod retry_queue;
mod shard;

pub use breaker::{BreakerConfig, HostBreaker, Open, Permit};
pub use client::{ClientConfig, ClientError, InsecureTls, client, configure, insecure_client};
pub use fetcher::{Backoff, FetchOutcome, Fetched, Fetcher, FetcherConfig, Retry};
pub use gate::{GatePermit, HostGate, Refused};
pub use metrics::{MetricsSnapshot, RunMetrics};
pub use polite::{PoliteConfig, Politeness, Slot};
pub use retry_queue::{RetryQueue, RetryQueueError, Scheduled};

/// The `reqwest` the clients are built with, so callers name its types (`Client`,
/// `Response`, `Url`) at the same version without a dependency of their own.
pub use reqwest;
