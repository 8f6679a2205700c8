//! Parses `#[shared_state(…)]` on the struct and `#[shared(…)]` on its fields.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Meta, Token};

pub(crate) use crate::common::Errors;

/// Every argument `#[shared_state(…)]` accepts.
const STRUCT_KEYS: &[&str] = &["global", "crate"];
/// Every option `#[shared(…)]` accepts.
const FIELD_KEYS: &[&str] = &["counter", "read_mostly"];

/// The struct's arguments; defaults where an argument is absent or invalid.
pub(crate) struct Args {
    /// `global`: its span when present.
    pub(crate) global: Option<Span>,
    pub(crate) krate: syn::Path,
}

/// How a field is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Behind its own mutex.
    Plain,
    /// `#[shared(counter)]`: an atomic integer.
    Counter,
    /// `#[shared(read_mostly)]`: an `ArcSwap`.
    ReadMostly,
}

fn list(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    keys.join(", ")
}

fn path_name(path: &syn::Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}

/// Parses `#[shared_state(global, crate = "…")]`.
pub(crate) fn parse_args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args {
        global: None,
        krate: syn::parse_quote!(::luca_core),
    };
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(m) => m,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!(
                    "expected `#[shared_state]`, `#[shared_state(global)]` or `#[shared_state(crate = \"…\")]`: {e}"
                ),
            ));
            return args;
        }
    };
    let mut seen: Vec<(String, Span)> = Vec::new();
    for meta in metas {
        let key = path_name(meta.path());
        let span = syn::spanned::Spanned::span(meta.path());
        if !STRUCT_KEYS.contains(&key.as_str()) {
            errors.push(syn::Error::new_spanned(
                meta.path(),
                format!(
                    "unknown argument `{key}` of `#[shared_state]`; expected one of: {}",
                    list(STRUCT_KEYS)
                ),
            ));
            continue;
        }
        if duplicate(&key, span, &mut seen, "argument", errors) {
            continue;
        }
        match (key.as_str(), meta) {
            ("global", Meta::Path(_)) => args.global = Some(span),
            ("global", other) => errors.push(syn::Error::new_spanned(
                other,
                "`global` takes no value; write `#[shared_state(global)]`",
            )),
            ("crate", Meta::NameValue(nv)) => match crate::common::crate_path(&nv.value) {
                Ok(p) => args.krate = p,
                Err(e) => errors.push(e),
            },
            (_, other) => errors.push(syn::Error::new_spanned(
                other,
                "expected `crate = \"path\"`, e.g. `crate = \"::my_app::luca_core\"`",
            )),
        }
    }
    args
}

/// Records `key` as seen; reports it (pointing at both places) when it already was.
fn duplicate(
    key: &str,
    span: Span,
    seen: &mut Vec<(String, Span)>,
    what: &str,
    errors: &mut Errors,
) -> bool {
    if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
        let mut e = syn::Error::new(
            span,
            format!("duplicate {what} `{key}`; remove one of them"),
        );
        e.combine(syn::Error::new(*first, format!("`{key}` first set here")));
        errors.push(e);
        return true;
    }
    seen.push((key.to_owned(), span));
    false
}

/// Whether an attribute is one of ours (`#[shared(…)]`).
pub(crate) fn is_field_attr(attr: &syn::Attribute) -> bool {
    attr.path().is_ident("shared")
}

/// Parses every `#[shared(…)]` on one field. Returns the kind (plain when the options are
/// invalid).
pub(crate) fn parse_field(attrs: &[syn::Attribute], errors: &mut Errors) -> Kind {
    let mut seen: Vec<(String, Span)> = Vec::new();
    for attr in attrs.iter().filter(|a| is_field_attr(a)) {
        let metas = match &attr.meta {
            Meta::List(l) => {
                Punctuated::<Meta, Token![,]>::parse_terminated.parse2(l.tokens.clone())
            }
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "`#[shared]` needs an option: `#[shared(counter)]` or `#[shared(read_mostly)]`; remove it for a plain field",
                ));
                continue;
            }
        };
        let metas = match metas {
            Ok(m) => m,
            Err(e) => {
                errors.push(syn::Error::new(
                    e.span(),
                    format!("expected `#[shared(counter)]` or `#[shared(read_mostly)]`: {e}"),
                ));
                continue;
            }
        };
        for meta in metas {
            let key = path_name(meta.path());
            let span = syn::spanned::Spanned::span(meta.path());
            if !FIELD_KEYS.contains(&key.as_str()) {
                errors.push(syn::Error::new_spanned(
                    meta.path(),
                    format!(
                        "unknown option `{key}` of `#[shared]`; expected one of: {}",
                        list(FIELD_KEYS)
                    ),
                ));
                continue;
            }
            if !matches!(meta, Meta::Path(_)) {
                errors.push(syn::Error::new_spanned(
                    &meta,
                    format!("`{key}` takes no value; write `#[shared({key})]`"),
                ));
                continue;
            }
            duplicate(&key, span, &mut seen, "option", errors);
        }
    }
    let counter = seen.iter().find(|(k, _)| k == "counter");
    let read_mostly = seen.iter().find(|(k, _)| k == "read_mostly");
    match (counter, read_mostly) {
        (Some(_), Some((_, span))) => {
            errors.push(syn::Error::new(
                *span,
                "`counter` and `read_mostly` cannot be combined: a counter is already lock-free; keep one of them",
            ));
            Kind::Plain
        }
        (Some(_), None) => Kind::Counter,
        (None, Some(_)) => Kind::ReadMostly,
        (None, None) => Kind::Plain,
    }
}
