// `name()` clones the value, so it only exists when the field's type is `Clone`.
use luca_core::shared_state;

struct Socket;

#[shared_state]
struct State {
    socket: Socket,
}

fn main() {
    let state = State::new(Socket);
    state.with_socket(|_| ());
    let _socket = state.socket();
}
