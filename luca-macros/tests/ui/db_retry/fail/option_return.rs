use luca_core::db_retry;

#[db_retry]
fn maybe() -> Option<u32> {
    Some(1)
}

fn main() {}
