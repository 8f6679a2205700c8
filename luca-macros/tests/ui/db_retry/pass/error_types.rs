// Every kind of error type `#[db_retry]` accepts without a hand-written impl, and one with.
use luca_core::db_retry;
use luca_core::retry::{BusyCode, Retryable};
use luca_core::rusqlite;

/// An application error whose `source()` holds the `rusqlite::Error`.
#[derive(Debug)]
struct AppError(rusqlite::Error);

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("app error")
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Not an `Error` at all, but `Retryable`.
struct Classified(Option<BusyCode>);

impl Retryable for Classified {
    fn busy_code(&self) -> Option<BusyCode> {
        self.0
    }
}

type MyResult<T> = Result<T, AppError>;

#[db_retry]
fn rusqlite_result() -> rusqlite::Result<()> { Ok(()) }

#[db_retry]
fn luca_result() -> luca_core::Result<()> { Ok(()) }

#[db_retry]
fn source_chain() -> Result<(), AppError> { Ok(()) }

#[db_retry]
fn alias() -> MyResult<u8> { Ok(1) }

#[db_retry]
fn own_impl() -> Result<(), Classified> { Ok(()) }

#[db_retry]
fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> { Ok(()) }

#[db_retry]
fn boxed_local() -> Result<(), Box<dyn std::error::Error>> { Ok(()) }

#[db_retry]
fn io_error() -> std::io::Result<()> { Ok(()) }

#[db_retry]
fn generic_retryable<E: Retryable>(e: fn() -> Option<E>) -> Result<(), E> {
    match e() { Some(e) => Err(e), None => Ok(()) }
}

#[db_retry]
fn generic_error<E: std::error::Error + 'static>(e: fn() -> Option<E>) -> Result<(), E> {
    match e() { Some(e) => Err(e), None => Ok(()) }
}

fn main() {
    rusqlite_result().unwrap();
    luca_result().unwrap();
    source_chain().unwrap();
    assert_eq!(alias().unwrap(), 1);
    assert!(own_impl().is_ok());
    boxed().unwrap();
    boxed_local().unwrap();
    io_error().unwrap();
    assert!(generic_retryable::<Classified>(|| None).is_ok());
    assert!(generic_error::<std::io::Error>(|| None).is_ok());
}
