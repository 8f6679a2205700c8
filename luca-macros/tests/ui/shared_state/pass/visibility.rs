// Visibility of the struct and of each field is kept: a field's accessors have the
// field's visibility. Generated public items are documented (`missing_docs` is denied),
// and nothing warns when accessors go unused.
#![deny(missing_docs, warnings)]
//! A crate using `#[shared_state]` with every kind of visibility.

/// State shared by the crawler.
pub mod state {
    use luca_core::shared_state;

    /// Per-run state.
    #[shared_state]
    pub struct Run {
        /// Hosts seen so far.
        pub hosts: Vec<String>,
        /// Requests sent.
        #[shared(counter)]
        pub(crate) requests: u64,
        #[shared(read_mostly)]
        secret: String,
    }

    /// Reads the private field from inside its module.
    pub fn secret_len(run: &Run) -> usize {
        run.with_secret(|s| s.len())
    }
}

fn main() {
    let run = state::Run::new(Vec::new(), 0, String::from("key"));
    run.update_hosts(|h| h.push("example.org".into()));
    assert_eq!(run.incr_requests(), 1);
    assert_eq!(state::secret_len(&run), 3);
    let view: usize = run.update(|f: state::RunFields<'_>| f.hosts.len());
    assert_eq!(view, 1);
    assert_eq!(run.poison_count(), 0);
}
