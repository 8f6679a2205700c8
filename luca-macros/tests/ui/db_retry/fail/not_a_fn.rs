use luca_core::db_retry;

#[db_retry]
struct Jobs {
    pending: u32,
}

fn main() {}
