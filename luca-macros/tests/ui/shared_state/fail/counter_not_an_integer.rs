// `counter` on types that are surely not integers: rejected by the macro.
use luca_core::shared_state;

#[shared_state]
struct Stats {
    #[shared(counter)]
    name: String,
    #[shared(counter)]
    ratio: f64,
    #[shared(counter)]
    pair: (u32, u32),
    #[shared(counter)]
    maybe: Option<u64>,
    #[shared(counter)]
    wide: u128,
}

fn main() {}
