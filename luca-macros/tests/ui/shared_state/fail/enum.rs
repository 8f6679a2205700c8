use luca_core::shared_state;

#[shared_state]
enum Mode {
    Idle,
    Busy { jobs: u32 },
}

fn main() {}
