//! Rules the annotated function must follow, each with a message that names the fix.

use syn::{FnArg, Pat, ReturnType, Signature, Type};

use crate::common::Errors;

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
    mut_arguments(sig)?;
    match &sig.output {
        ReturnType::Default => Err(syn::Error::new_spanned(
            &sig.ident,
            format!(
                "`#[db_retry]` needs a function that returns `Result<T, E>`; add a return type, e.g. `fn {}(…) -> rusqlite::Result<()>`",
                sig.ident
            ),
        )),
        ReturnType::Type(_, ty) => match peel(ty) {
            Type::Path(p)
                if sig.asyncness.is_none()
                    && p.path.segments.last().is_some_and(|s| s.ident == "Pin") =>
            {
                Err(syn::Error::new_spanned(
                    ty,
                    "`#[db_retry]` needs an `async fn` or a function that returns `Result<T, E>`, not a boxed future; `#[async_trait]` turns `async fn` into this shape before `#[db_retry]` sees it: put `#[db_retry]` on an inherent or free `async fn` and call that from the trait method (or use a native `async fn` in the trait)",
                ))
            }
            Type::Path(p) if p.qself.is_none() && is_surely_not_result(&p.path) => {
                let text = type_text(ty);
                Err(syn::Error::new_spanned(
                    ty,
                    format!(
                        "`#[db_retry]` needs a function that returns `Result<T, E>`, not `{text}`; return `rusqlite::Result<{text}>`, `luca_core::Result<{text}>` or `Result<{text}, YourError>` and wrap the value in `Ok(…)`"
                    ),
                ))
            }
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

/// Rejects every `mut` by-value binding among the parameters: one attempt may change it,
/// and the next attempt would start from what the failed one left (a drained `Vec` makes
/// a retry that "succeeds" having done nothing).
fn mut_arguments(sig: &Signature) -> syn::Result<()> {
    let mut errors = Errors::default();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) if r.reference.is_none() => {
                if r.mutability.is_some() {
                    errors.push(syn::Error::new_spanned(
                        r,
                        "`#[db_retry]` runs the body again on a retry, so changes to `mut self` would carry over into the next attempt; take `&mut self`, or remove `mut` and clone inside the body (`let mut this = self.clone();`)",
                    ));
                }
            }
            FnArg::Receiver(_) => {}
            FnArg::Typed(t) => {
                let top = match &*t.pat {
                    Pat::Ident(i) => Some(&i.ident),
                    _ => None,
                };
                each_mut_binding(&t.pat, &mut |ident| {
                    let name = ident.ident.to_string();
                    let by_ref = match top {
                        Some(top) if *top == ident.ident => {
                            let ty = type_text(&t.ty);
                            format!("take it by reference (`{name}: &{ty}`)")
                        }
                        _ => "take it by reference".to_string(),
                    };
                    errors.push(syn::Error::new_spanned(
                        ident,
                        format!(
                            "`#[db_retry]` runs the body again on a retry, so changes to `mut {name}` would carry over into the next attempt; {by_ref}, or remove `mut` and clone it inside the body (`let mut {name} = {name}.clone();`)"
                        ),
                    ));
                });
            }
        }
    }
    match errors.into_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Calls `f` for each `mut name` binding (not `ref mut`) in a parameter pattern.
fn each_mut_binding(pat: &Pat, f: &mut impl FnMut(&syn::PatIdent)) {
    match pat {
        Pat::Ident(i) => {
            if i.mutability.is_some() && i.by_ref.is_none() {
                f(i);
            }
            if let Some((_, sub)) = &i.subpat {
                each_mut_binding(sub, f);
            }
        }
        Pat::Tuple(t) => t.elems.iter().for_each(|p| each_mut_binding(p, f)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| each_mut_binding(p, f)),
        Pat::Struct(s) => s.fields.iter().for_each(|fp| each_mut_binding(&fp.pat, f)),
        Pat::Slice(s) => s.elems.iter().for_each(|p| each_mut_binding(p, f)),
        Pat::Reference(r) => each_mut_binding(&r.pat, f),
        Pat::Paren(p) => each_mut_binding(&p.pat, f),
        Pat::Type(t) => each_mut_binding(&t.pat, f),
        Pat::Or(o) => o.cases.iter().for_each(|p| each_mut_binding(p, f)),
        _ => {}
    }
}

/// A type as the user would write it: `Vec<i64>`, not `Vec < i64 >`.
fn type_text(ty: &Type) -> String {
    let mut text = quote::ToTokens::to_token_stream(ty).to_string();
    for (from, to) in [
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        (" :: ", "::"),
    ] {
        text = text.replace(from, to);
    }
    text
}

/// A path whose last segment names a well-known type that is not a `Result`: a primitive,
/// `String`, `Option`, a collection or smart pointer. Anything else may be an alias of
/// `Result`, and is left to the type check.
fn is_surely_not_result(path: &syn::Path) -> bool {
    const NOT_RESULT: &[&str] = &[
        "bool",
        "char",
        "str",
        "i8",
        "i16",
        "i32",
        "i64",
        "i128",
        "isize",
        "u8",
        "u16",
        "u32",
        "u64",
        "u128",
        "usize",
        "f32",
        "f64",
        "String",
        "Option",
        "Vec",
        "VecDeque",
        "Box",
        "Rc",
        "Arc",
        "Cow",
        "HashMap",
        "BTreeMap",
        "HashSet",
        "BTreeSet",
        "Poll",
        "ControlFlow",
    ];
    path.segments
        .last()
        .is_some_and(|s| NOT_RESULT.contains(&s.ident.to_string().as_str()))
}
