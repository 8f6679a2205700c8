// Doc comments on the struct and its fields are kept; a field's docs are carried to its
// accessors (and to its member of the `…Fields` view), so `missing_docs` stays quiet.
#![deny(missing_docs)]
//! Docs.

use luca_core::shared_state;

/// Settings of the run.
#[shared_state]
#[derive(Default)]
pub struct Settings {
    /// How many requests may run at once.
    ///
    /// Raised by the operator at run time.
    #[shared(read_mostly)]
    pub concurrency: usize,
    /// Hosts never to contact.
    pub blocked: Vec<String>,
    /// Pages fetched.
    #[shared(counter)]
    pub pages: u32,
}

fn main() {
    let s = Settings::default();
    s.set_concurrency(8);
    s.update_blocked(|b| b.push("bad.example".into()));
    s.add_pages(2);
    assert_eq!(*s.concurrency(), 8);
}
