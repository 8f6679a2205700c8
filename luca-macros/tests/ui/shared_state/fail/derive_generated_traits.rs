use luca_core::shared_state;

#[shared_state]
#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    a: u8,
}

fn main() {}
