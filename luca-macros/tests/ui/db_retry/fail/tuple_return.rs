use luca_core::db_retry;

#[db_retry]
fn pair() -> (u32, u32) {
    (1, 2)
}

fn main() {}
