use luca_core::db_retry;

// Neither `Retryable` nor `std::error::Error`: nothing says whether it is a busy error.
#[derive(Debug)]
struct PlainError;

#[db_retry]
fn work() -> Result<(), PlainError> {
    Err(PlainError)
}

fn main() {}
