use luca_core::shared_state;

#[shared_state]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
