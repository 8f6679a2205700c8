use luca_core::db_retry;

struct Counter {
    n: u32,
}

impl Counter {
    // Every attempt needs `self` again, so no attempt can hand out a `&mut` borrow of it
    // (shared `&` borrows are fine). Return an owned value instead.
    #[db_retry]
    fn slot(&mut self) -> luca_core::Result<&mut u32> {
        Ok(&mut self.n)
    }
}

fn main() {}
