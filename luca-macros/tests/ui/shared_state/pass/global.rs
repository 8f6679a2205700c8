// `#[shared_state(global)]`: a lazy process-wide instance, every field built with its
// type's `Default`; the struct itself needs no `#[derive(Default)]` for it.
use std::collections::HashMap;

use luca_core::shared_state;

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
}

#[shared_state(global)]
#[derive(Debug)]
pub struct HostState {
    breakers: HashMap<String, Breaker>,
    #[shared(counter)]
    trips: u64,
    #[shared(read_mostly)]
    threshold: u32,
}

fn main() {
    let g: &'static HostState = HostState::global();
    g.update_breakers(|b| b.entry("h".into()).or_default().failures += 1);
    assert!(std::ptr::eq(g, HostState::global()));
    assert_eq!(g.incr_trips(), 1);
    assert_eq!(*g.threshold(), 0);
    println!("{g:?}");
}
