use luca_core::db_retry;

#[db_retry]
const fn answer() -> Result<u32, luca_core::Error> {
    Ok(42)
}

fn main() {}
