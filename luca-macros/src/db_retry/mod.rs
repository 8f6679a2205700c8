//! `#[db_retry]`: parse, validate, expand.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;

/// Entry point: never fails; errors become `compile_error!`s next to an expansion that
/// keeps the rest of the program checking.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let (args, arg_errors) = attr::parse(args);
    let func = match ast::Function::parse(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    if let Err(e) = valid::check(&func) {
        // Re-emit the item untouched so only this error shows, not a cascade.
        let mut out = e.to_compile_error();
        out.extend(item);
        return out;
    }
    let mut out = expand::expand(&func, &args);
    if let Some(e) = arg_errors {
        out.extend(e.to_compile_error());
    }
    out
}
