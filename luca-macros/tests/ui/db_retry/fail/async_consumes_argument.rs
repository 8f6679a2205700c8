use luca_core::db_retry;

#[db_retry]
async fn store(rows: Vec<String>) -> luca_core::Result<usize> {
    let owned: Vec<String> = rows;
    Ok(owned.len())
}

fn main() {}
