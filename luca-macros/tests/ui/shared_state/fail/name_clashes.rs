// A field whose accessors would have the name of another generated method.
use luca_core::shared_state;

#[shared_state]
struct Reserved {
    update: u8,
    other: u8,
}

#[shared_state]
struct Constructor {
    #[shared(counter)]
    new: u64,
}

#[shared_state]
struct Prefixed {
    hosts: Vec<String>,
    with_hosts: u8,
}

#[shared_state(global)]
struct Global {
    #[shared(counter)]
    global: u64,
}

fn main() {}
