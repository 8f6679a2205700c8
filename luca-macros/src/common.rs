//! Pieces both attribute macros share.

use syn::{Expr, ExprLit, Lit};

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
