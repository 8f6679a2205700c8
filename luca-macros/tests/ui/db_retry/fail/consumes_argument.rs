use luca_core::db_retry;

// The body moves `rows` out, so a second attempt would have nothing to run with.
#[db_retry]
fn store(rows: Vec<String>) -> luca_core::Result<usize> {
    let owned: Vec<String> = rows;
    Ok(owned.len())
}

fn main() {}
