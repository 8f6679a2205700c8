// `#[derive(Debug, Default)]` on a `#[shared_state]` struct asks the macro for them; a
// field whose type lacks the trait is reported at that field.
use luca_core::shared_state;

struct Connection {
    fd: i32,
}

#[shared_state]
#[derive(Debug, Default)]
struct Pool {
    idle: Vec<u8>,
    primary: Connection,
}

fn main() {}
