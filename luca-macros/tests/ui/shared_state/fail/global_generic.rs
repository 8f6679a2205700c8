use luca_core::shared_state;

#[shared_state(global)]
struct Registry<T> {
    items: Vec<T>,
}

fn main() {}
