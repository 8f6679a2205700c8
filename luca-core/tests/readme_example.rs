//! The `#[shared_state]` example of the workspace README compiles and behaves as shown.

use std::collections::HashMap;

use luca_core::shared_state;

#[shared_state(global)] // `Default`, `Debug` and `new(…)` are generated
struct RunMetrics {
    #[shared(counter)]
    requests: u64,
    hosts: HashMap<String, u32>,
}

#[test]
fn readme_shared_state_example() {
    RunMetrics::global().incr_requests();
    RunMetrics::global().update_hosts(|h| *h.entry("example.org".into()).or_default() += 1);
    assert_eq!(RunMetrics::global().requests(), 1);
    assert_eq!(RunMetrics::global().hosts()["example.org"], 1);
}
