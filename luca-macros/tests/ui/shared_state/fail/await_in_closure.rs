// A lock can never be held across `.await`: the accessors take sync closures.
use luca_core::shared_state;

#[shared_state]
struct State {
    hosts: Vec<String>,
}

async fn fetch() -> String {
    String::new()
}

async fn crawl(state: &State) {
    state.update_hosts(|hosts| {
        hosts.push(fetch().await);
    });
}

fn main() {
    let _ = crawl;
}
