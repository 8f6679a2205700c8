use luca_core::db_retry;

trait Store {
    #[db_retry]
    fn count(&self) -> luca_core::Result<i64>;
}

fn main() {}
