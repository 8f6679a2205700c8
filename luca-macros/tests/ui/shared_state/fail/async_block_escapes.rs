// Returning an `async` block from an accessor closure cannot smuggle the locked value out:
// the borrow ends when the closure returns.
use luca_core::shared_state;

#[shared_state]
struct State {
    hosts: Vec<String>,
}

async fn crawl(state: &State) -> usize {
    let pending = state.with_hosts(|hosts| async move { hosts.len() });
    pending.await
}

fn main() {
    let _ = crawl;
}
