use luca_core::db_retry;

struct Repo;

#[db_retry]
impl Repo {
    fn count(&self) -> luca_core::Result<i64> {
        Ok(0)
    }
}

fn main() {}
