// Visibility of the struct and of each field is kept: a field's accessors have the
// field's visibility, and `new` the narrowest of the fields' visibilities. Generated public
// items are documented (`missing_docs` is denied), and nothing warns when accessors go
// unused.
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

    /// Starts a run: `Run::new` is private (so is `secret`), this is the way in.
    pub fn start(secret: &str) -> Run {
        Run::new(Vec::new(), 0, secret.to_owned())
    }

    /// Totals: every field is at least `pub(crate)`, so `new` is `pub(crate)`.
    #[shared_state]
    pub struct Totals {
        /// Pages.
        pub pages: u64,
        pub(crate) bytes: u64,
    }
}

fn main() {
    let totals = state::Totals::new(1, 2);
    assert_eq!(totals.pages() + totals.bytes(), 3);
    let run = state::start("key");
    run.update_hosts(|h| h.push("example.org".into()));
    assert_eq!(run.incr_requests(), 1);
    assert_eq!(state::secret_len(&run), 3);
    let view: usize = run.update(|f: state::RunFields<'_>| f.hosts.len());
    assert_eq!(view, 1);
    assert_eq!(run.poison_count(), 0);
}
