//! `#[shared_state]`: parse, validate, expand.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;

/// Entry point: never fails. Errors become `compile_error!`s next to an expansion that
/// keeps the rest of the program checking: a struct whose options are wrong still expands
/// with those options left out, so the user sees one error, not a cascade.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = attr::Errors::default();
    let mut args = attr::parse_args(args, &mut errors);
    let mut input = match ast::Input::parse(item.clone(), &mut errors) {
        Ok(input) => input,
        Err(fallback) => {
            let mut out = errors.into_compile_errors();
            out.extend(fallback);
            return out;
        }
    };
    valid::check(&mut input, &mut args, &mut errors);
    let mut out = expand::expand(&input, &args);
    out.extend(errors.into_compile_errors());
    out
}
