use luca_core::shared_state;

#[shared_state]
struct Hosts(Vec<String>, #[shared(counter)] u64);

fn main() {}
