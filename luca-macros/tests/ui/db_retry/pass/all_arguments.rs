// Every argument at once, and the `crate` override through a re-export.
mod deps {
    pub use luca_core as luca;
}

use luca_core::db_retry;
use luca_core::retry::RetryEvent;

fn log_retry(event: &RetryEvent) {
    eprintln!("{} attempt {} hit {}", event.function, event.attempt, event.code);
}

#[db_retry(
    max_retries = 7,
    delay_ms = 0,
    max_delay_ms = 250,
    jitter = "decorrelated",
    deadline_ms = 5_000,
    lock_not_available = true,
    on_retry = log_retry,
    crate = "crate::deps::luca",
)]
fn everything() -> luca_core::Result<u32> {
    Ok(7)
}

#[db_retry(jitter = "none")]
fn no_jitter() -> luca_core::Result<()> { Ok(()) }

#[db_retry(jitter = "equal", max_retries = 0)]
fn equal_no_retries() -> luca_core::Result<()> { Ok(()) }

#[db_retry()]
fn empty_parens() -> luca_core::Result<()> { Ok(()) }

#[db_retry(lock_not_available = false)]
fn lock_not_available_off() -> luca_core::Result<()> { Ok(()) }

fn main() {
    lock_not_available_off().unwrap();
    assert_eq!(everything().unwrap(), 7);
    no_jitter().unwrap();
    equal_no_retries().unwrap();
    empty_parens().unwrap();
}
