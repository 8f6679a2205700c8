//! Rules the annotated function must follow, each with a message that names the fix.

use syn::{ReturnType, Type};

use super::ast::Function;

pub(crate) fn check(f: &Function) -> syn::Result<()> {
    let sig = &f.sig;
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new_spanned(
            c,
            "`#[db_retry]` cannot be used on a `const fn`: retrying sleeps between attempts; remove `const`",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            "`#[db_retry]` cannot be used on a variadic function; remove the `...` argument",
        ));
    }
    if f.body.is_none() {
        return Err(syn::Error::new_spanned(
            sig,
            "`#[db_retry]` needs a function body; put it on the method's default body or on each impl of it",
        ));
    }
    match &sig.output {
        ReturnType::Default => Err(syn::Error::new_spanned(
            &sig.ident,
            format!(
                "`#[db_retry]` needs a function that returns `Result<T, E>`; add a return type, e.g. `fn {}(…) -> rusqlite::Result<()>`",
                sig.ident
            ),
        )),
        ReturnType::Type(_, ty) => match peel(ty) {
            Type::Path(_) | Type::Macro(_) => Ok(()),
            other => Err(syn::Error::new_spanned(
                other,
                format!(
                    "`#[db_retry]` needs a function that returns `Result<T, E>`, not `{}`; return `rusqlite::Result<T>`, `luca_core::Result<T>` or `Result<T, YourError>`",
                    quote::ToTokens::to_token_stream(other)
                ),
            )),
        },
    }
}

fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Paren(p) => peel(&p.elem),
        Type::Group(g) => peel(&g.elem),
        other => other,
    }
}
