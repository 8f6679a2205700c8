// The data cannot be reached without the lock: from outside the module the stored field
// is private, and there is no accessor that returns a guard or a reference.
mod state {
    use luca_core::shared_state;

    #[shared_state]
    pub struct State {
        pub hosts: Vec<String>,
    }
}

fn main() {
    let s = state::State::new(Vec::new());
    s.hosts.lock();
}
