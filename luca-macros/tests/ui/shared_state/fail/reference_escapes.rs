// No reference to the locked value outlives the lock.
use luca_core::shared_state;

#[shared_state]
struct State {
    hosts: Vec<String>,
}

fn main() {
    let state = State::new(Vec::new());
    let hosts: &Vec<String> = state.with_hosts(|hosts| hosts);
    let view = state.update(|fields| fields);
    println!("{hosts:?} {}", view.hosts.len());
}
