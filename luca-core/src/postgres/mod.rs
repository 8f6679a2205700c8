//! PostgreSQL (feature `postgres`): the same retry discipline as for SQLite.
//!
//! [`#[db_retry]`](crate::db_retry), [`retry_sync`](crate::retry::retry_sync) and
//! [`retry_async`](crate::retry::retry_async) retry a `tokio_postgres::Error` whose
//! SQLSTATE is `40001` (serialization_failure) or `40P01` (deadlock_detected), and `55P03`
//! (lock_not_available) when the policy opts in, found directly or anywhere in a
//! `source()` chain, exactly as they retry SQLite's busy codes. Everything else is
//! returned at once, unchanged.
//!
//! [`PgDb`] gives PostgreSQL users what [`Db`](crate::Db) gives SQLite users: a pool
//! whose `write` runs an async closure in a SERIALIZABLE transaction and runs it again,
//! whole, after a serialization failure or deadlock.
//!
//! The driver crates are re-exported so that an application uses the versions luca was
//! built with: [`tokio_postgres`] and [`deadpool_postgres`].

mod db;

pub use db::{PgDb, PgDbBuilder, PgDbStats};
pub use deadpool_postgres;
pub use tokio_postgres;
