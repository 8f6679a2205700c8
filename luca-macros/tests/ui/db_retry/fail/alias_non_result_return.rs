use luca_core::db_retry;

// An alias hides the type from the attribute; the type check still points at it.
type Count = i64;

#[db_retry]
fn count() -> Count {
    1
}

fn main() {}
