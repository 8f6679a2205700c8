// `counter` on a type alias: the macro cannot see through it, so it asks for the integer
// type written out (even when the alias names one).
use luca_core::shared_state;

type Ratio = f64;
type Count = u64;

#[shared_state]
struct Stats {
    #[shared(counter)]
    ratio: Ratio,
    #[shared(counter)]
    count: Count,
}

fn main() {}
