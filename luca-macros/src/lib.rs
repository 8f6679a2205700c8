#![doc = include_str!("../README.md")]

// Each macro is split the same way: `attr` parses the arguments, `ast` gives a typed view
// of the item, `valid` checks the rules, `expand` writes the code.

mod common;
mod db_retry;
mod shared_state;

use proc_macro::TokenStream;

/// Retries a whole sync or async function when it fails with a SQLite busy/locked error.
///
/// See `luca_core::db_retry` for the documentation.
#[proc_macro_attribute]
pub fn db_retry(args: TokenStream, item: TokenStream) -> TokenStream {
    db_retry::expand(args.into(), item.into()).into()
}

/// Rewrites a struct so each field lives behind its own guard and is reached only through
/// generated closure accessors.
///
/// See `luca_core::shared_state` for the documentation.
#[proc_macro_attribute]
pub fn shared_state(args: TokenStream, item: TokenStream) -> TokenStream {
    shared_state::expand(args.into(), item.into()).into()
}
