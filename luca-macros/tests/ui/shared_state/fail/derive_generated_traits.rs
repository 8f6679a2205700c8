// `Debug` and `Default` in the derive are taken by the macro (it generates them); the
// derives a struct of locks cannot have are rejected, each with its reason.
use luca_core::shared_state;

#[shared_state]
#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    a: u8,
}

fn main() {}
