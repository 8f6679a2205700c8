use luca_core::shared_state;

#[shared_state]
struct Nothing;

fn main() {}
