//! Rules the struct must follow, each with a message that names the fix. An option that
//! breaks a rule is reported and dropped, so the rest still expands.

use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{PathArguments, Token, Type};

use super::ast::Input;
use super::attr::{Args, Errors, Kind};

/// Integer types with an atomic counterpart.
const INTEGERS: &[&str] = &[
    "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
];

/// Well-known types that are surely not integers.
const NOT_INTEGERS: &[&str] = &[
    "f32", "f64", "bool", "char", "str", "String", "u128", "i128", "Vec", "Option", "Box", "Arc",
    "Rc", "HashMap", "BTreeMap", "HashSet", "BTreeSet", "VecDeque", "Duration",
];

/// Traits `#[shared_state]` implements itself, or that its fields cannot support.
const GENERATED: &[(&str, &str)] = &[
    (
        "Debug",
        "`#[shared_state]` generates a `Debug` that never blocks; remove `Debug` from the derive",
    ),
    (
        "Default",
        "`#[shared_state]` generates `Default` when every field has one; remove `Default` from the derive",
    ),
    (
        "Clone",
        "a `#[shared_state]` struct cannot be cloned: each field is behind its own lock; remove `Clone` from the derive and share it with `Arc` or `#[shared_state(global)]`",
    ),
    (
        "PartialEq",
        "`PartialEq` cannot be derived for a `#[shared_state]` struct: each field is behind its own lock; compare snapshots taken with the accessors instead",
    ),
    (
        "Eq",
        "`Eq` cannot be derived for a `#[shared_state]` struct: each field is behind its own lock; compare snapshots taken with the accessors instead",
    ),
    (
        "PartialOrd",
        "`PartialOrd` cannot be derived for a `#[shared_state]` struct: each field is behind its own lock; compare snapshots taken with the accessors instead",
    ),
    (
        "Ord",
        "`Ord` cannot be derived for a `#[shared_state]` struct: each field is behind its own lock; compare snapshots taken with the accessors instead",
    ),
    (
        "Hash",
        "`Hash` cannot be derived for a `#[shared_state]` struct: each field is behind its own lock; hash a snapshot taken with the accessors instead",
    ),
    (
        "Copy",
        "a `#[shared_state]` struct cannot be `Copy`: each field is behind its own lock; remove `Copy` from the derive",
    ),
];

pub(crate) fn check(input: &mut Input, args: &mut Args, errors: &mut Errors) {
    for f in &mut input.fields {
        if f.kind == Kind::Counter
            && let Some(why) = not_an_integer(&f.ty)
        {
            errors.push(syn::Error::new_spanned(
                &f.ty,
                format!(
                    "`#[shared(counter)]` needs an integer field, {why}: one of `u64`, `usize`, `i64`, …; or remove `counter` (a plain field takes any type)"
                ),
            ));
            f.kind = Kind::Plain;
        }
    }
    if let Some(span) = args.global
        && let Some(param) = input.generics.params.first()
    {
        let mut e = syn::Error::new_spanned(
            param,
            "`#[shared_state(global)]` cannot be used on a generic struct: a `static` cannot depend on generic parameters; remove the parameters or `global`",
        );
        e.combine(syn::Error::new(span, "`global` requested here"));
        errors.push(e);
        args.global = None;
    }
    derives(input, errors);
    clashes(input, args, errors);
}

/// The methods generated for one field.
fn accessor_names(name: &str, kind: Kind) -> [String; 4] {
    match kind {
        Kind::Plain | Kind::ReadMostly => [
            name.to_owned(),
            format!("with_{name}"),
            format!("update_{name}"),
            format!("set_{name}"),
        ],
        Kind::Counter => [
            name.to_owned(),
            format!("add_{name}"),
            format!("incr_{name}"),
            format!("set_{name}"),
        ],
    }
}

/// Rejects fields whose accessors would have the name of another generated method (e.g.
/// a field `update`, or fields `x` and `with_x`): rustc would only say "duplicate
/// definitions".
fn clashes(input: &mut Input, args: &Args, errors: &mut Errors) {
    let mut taken: Vec<(String, String)> = vec![
        ("new".into(), "the constructor".into()),
        ("poison_count".into(), "the struct".into()),
    ];
    if input.fields.iter().any(|f| f.kind == Kind::Plain) {
        taken.push(("update".into(), "the multi-field update".into()));
    }
    if args.global.is_some() {
        taken.push(("global".into(), "`#[shared_state(global)]`".into()));
    }
    for f in &mut input.fields {
        let name = syn::ext::IdentExt::unraw(&f.ident).to_string();
        let names = accessor_names(&name, f.kind);
        if let Some((method, owner)) = names
            .iter()
            .find_map(|n| taken.iter().find(|(t, _)| t == n))
        {
            errors.push(syn::Error::new_spanned(
                &f.ident,
                format!(
                    "field `{name}` clashes with the method `{method}` generated for {owner}; rename the field"
                ),
            ));
            f.clashes = true;
            continue;
        }
        taken.extend(names.into_iter().map(|n| (n, format!("field `{name}`"))));
    }
}

/// Why `ty` is not accepted as a counter type: it must be written as one of the integer
/// types (a path ending in one, like `core::primitive::u64`, is fine). A type alias is
/// rejected too: the macro cannot see through it.
fn not_an_integer(ty: &Type) -> Option<String> {
    let shown = || {
        format!("`{}`", quote::ToTokens::to_token_stream(ty))
            .replace(" < ", "<")
            .replace(" >", ">")
            .replace("< ", "<")
    };
    match ty {
        Type::Paren(p) => not_an_integer(&p.elem),
        Type::Group(g) => not_an_integer(&g.elem),
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            let name = last.ident.to_string();
            if INTEGERS.contains(&name.as_str()) && last.arguments.is_empty() {
                None
            } else if NOT_INTEGERS.contains(&name.as_str())
                || !matches!(last.arguments, PathArguments::None)
            {
                Some(format!("not {}", shown()))
            } else {
                Some(format!(
                    "and the macro cannot tell whether {} is one (it cannot see through a type alias); write the integer type itself",
                    shown()
                ))
            }
        }
        _ => Some(format!("not {}", shown())),
    }
}

/// Rejects `#[derive(Debug | Default | Clone | Copy)]` and removes those names, keeping
/// the rest of the derive.
fn derives(input: &mut Input, errors: &mut Errors) {
    for attr in &mut input.attrs {
        if !attr.path().is_ident("derive") {
            continue;
        }
        let syn::Meta::List(list) = &attr.meta else {
            continue;
        };
        let Ok(paths) =
            Punctuated::<syn::Path, Token![,]>::parse_terminated.parse2(list.tokens.clone())
        else {
            continue;
        };
        let mut kept = Punctuated::<syn::Path, Token![,]>::new();
        for path in paths {
            let name = path.segments.last().map(|s| s.ident.to_string());
            match GENERATED.iter().find(|(n, _)| Some(*n) == name.as_deref()) {
                Some((_, msg)) => errors.push(syn::Error::new_spanned(&path, *msg)),
                None => kept.push(path),
            }
        }
        *attr = syn::parse_quote!(#[derive(#kept)]);
    }
    input.attrs.retain(|a| {
        !(a.path().is_ident("derive")
            && matches!(&a.meta, syn::Meta::List(l) if l.tokens.is_empty()))
    });
}
