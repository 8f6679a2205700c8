//! Pieces both attribute macros share.

use proc_macro2::TokenStream;
use syn::{Expr, ExprLit, Lit};

/// Collects every error instead of stopping at the first, so one compile shows them all.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// The collected errors, if any.
    pub(crate) fn into_error(self) -> Option<syn::Error> {
        self.0
    }

    /// The collected errors as `compile_error!` invocations (empty when there are none).
    pub(crate) fn into_compile_errors(self) -> TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }
}

/// `crate = "path"`: where generated code finds `luca_core` when it is re-exported under
/// another name.
pub(crate) fn crate_path(value: &Expr) -> syn::Result<syn::Path> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            "`crate` expects a string literal naming a path, e.g. `crate = \"::my_app::luca_core\"`",
        ));
    };
    s.parse_with(syn::Path::parse_mod_style).map_err(|_| {
        syn::Error::new_spanned(
            s,
            format!(
                "`crate = \"{}\"` is not a path; write it like `crate = \"::my_app::luca_core\"`",
                s.value()
            ),
        )
    })
}
