use luca_core::db_retry;

fn log_retry(attempt: u32) {
    println!("retry {attempt}");
}

#[db_retry(on_retry = log_retry)]
fn work() -> luca_core::Result<()> {
    Ok(())
}

fn main() {}
