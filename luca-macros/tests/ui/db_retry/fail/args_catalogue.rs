// Every invalid argument of `#[db_retry(...)]`, one per function.
use luca_core::db_retry;
use luca_core::rusqlite::Result;

#[db_retry(max_tries = 3)]
fn unknown_key() -> Result<()> { Ok(()) }

#[db_retry(max_retries = 3, max_retries = 4)]
fn duplicate_key() -> Result<()> { Ok(()) }

#[db_retry(delay_ms = "100")]
fn string_for_integer() -> Result<()> { Ok(()) }

#[db_retry(max_retries = 2.5)]
fn float_for_integer() -> Result<()> { Ok(()) }

#[db_retry(delay_ms = -1)]
fn negative() -> Result<()> { Ok(()) }

#[db_retry(max_retries = 4294967296)]
fn overflowing_u32() -> Result<()> { Ok(()) }

#[db_retry(delay_ms = 18446744073709551616)]
fn overflowing_u64() -> Result<()> { Ok(()) }

#[db_retry(delay_ms = 500, max_delay_ms = 100)]
fn cap_below_delay() -> Result<()> { Ok(()) }

#[db_retry(jitter = "fulll")]
fn bad_jitter_name() -> Result<()> { Ok(()) }

#[db_retry(jitter = full)]
fn jitter_not_a_string() -> Result<()> { Ok(()) }

#[db_retry(deadline_ms = 0)]
fn zero_deadline() -> Result<()> { Ok(()) }

#[db_retry(max_retries)]
fn key_without_value() -> Result<()> { Ok(()) }

#[db_retry(5)]
fn bare_literal() -> Result<()> { Ok(()) }

#[db_retry(on_retry = "log")]
fn hook_not_a_path() -> Result<()> { Ok(()) }

#[db_retry(crate = luca_core)]
fn crate_not_a_string() -> Result<()> { Ok(()) }

#[db_retry(crate = "not a path")]
fn crate_not_a_path() -> Result<()> { Ok(()) }

#[db_retry(lock_not_available = "true")]
fn lock_not_available_a_string() -> Result<()> { Ok(()) }

#[db_retry(lock_not_available = 1)]
fn lock_not_available_an_integer() -> Result<()> { Ok(()) }

#[db_retry(lock_not_available)]
fn lock_not_available_without_value() -> Result<()> { Ok(()) }

fn main() {}
