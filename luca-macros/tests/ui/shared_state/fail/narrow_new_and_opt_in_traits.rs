// A `pub` struct with a private field does not widen its API: its `new` is private (it
// would set the private field), and `Debug` / `Default` exist only when derived.
mod state {
    use luca_core::shared_state;

    #[shared_state]
    pub struct Session {
        pub user: String,
        token: String,
    }

    pub fn open() -> Session {
        Session::new(String::new(), String::new())
    }
}

fn main() {
    let _ = state::Session::new(String::from("u"), String::from("t"));
    let s = state::open();
    println!("{s:?}");
    let _ = state::Session::default();
}
