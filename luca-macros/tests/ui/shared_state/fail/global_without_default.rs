use luca_core::shared_state;

struct Connection {
    fd: i32,
}

#[shared_state(global)]
struct Pool {
    idle: Vec<u8>,
    primary: Connection,
}

fn main() {}
