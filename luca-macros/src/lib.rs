//! Procedural macros of [luca](https://docs.rs/luca-core). Use them through `luca-core`,
//! which re-exports them and the runtime their expansions call: `use luca_core::db_retry;`.
//!
//! Each macro is split the same way: `attr` parses the arguments, `ast` gives a typed view
//! of the item, `valid` checks the rules, `expand` writes the code.

mod db_retry;

use proc_macro::TokenStream;

/// Retries a whole sync or async function when it fails with a SQLite busy/locked error.
///
/// See `luca_core::db_retry` for the documentation.
#[proc_macro_attribute]
pub fn db_retry(args: TokenStream, item: TokenStream) -> TokenStream {
    db_retry::expand(args.into(), item.into()).into()
}
