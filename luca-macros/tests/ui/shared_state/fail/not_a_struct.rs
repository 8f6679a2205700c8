use luca_core::shared_state;

#[shared_state]
fn state() {}

fn main() {}
