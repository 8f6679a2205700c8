//! What the sharded per-host tables of [`HostBreaker`](crate::HostBreaker) and
//! [`Politeness`](crate::Politeness) share: one keyed hash per host gives both the shard
//! and the bucket, and each shard's lock sits on cache lines of its own.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A shard's lock on its own cache lines, so that two threads working on neighbouring
/// shards do not invalidate each other's lines.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// The hash of a host key: shard and bucket both come from it. Keyed (randomly seeded),
/// since hosts come from crawled pages.
pub(crate) fn host_hash(hasher: &foldhash::fast::RandomState, host: &str) -> u64 {
    use std::hash::BuildHasher;
    hasher.hash_one(host)
}

/// The shard of a hash: bits 32.. (the table uses the low bits for the bucket and the top
/// seven as tags).
pub(crate) fn shard_index(hash: u64, shards: usize) -> usize {
    ((hash >> 32) as usize) % shards
}

/// Locks a shard; a panic while it was held does not brick the table (every update keeps
/// the entries consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `now + d`, or about 30 years ahead when that would overflow the clock (settings such as
/// `Duration::MAX` mean "never" and must not panic).
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// A breaker's state change, as an `info` event under the target `luca_http::breaker`
/// (rare: a trip, a probe's verdict, a probe past its deadline). `open_for` is how long the
/// host stays open from now (for a change to open).
pub(crate) fn log_transition(
    host: &str,
    from: &'static str,
    to: &'static str,
    failures: u32,
    open_for: Option<std::time::Duration>,
) {
    tracing::info!(
        target: "luca_http::breaker",
        host,
        from,
        to,
        failures,
        open_for_ms = open_for.map(|d| d.as_millis() as u64),
        "breaker {from} -> {to}"
    );
}
