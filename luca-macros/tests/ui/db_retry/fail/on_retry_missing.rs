use luca_core::db_retry;

#[db_retry(on_retry = no_such_hook)]
fn work() -> luca_core::Result<()> {
    Ok(())
}

fn main() {}
