//! Parses `#[db_retry(key = value, …)]`.

use crate::common::Errors;
use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprUnary, Lit, Meta, Token, UnOp};

/// Every argument the attribute accepts, in the order the docs list them.
const KEYS: &[&str] = &[
    "max_retries",
    "delay_ms",
    "max_delay_ms",
    "jitter",
    "deadline_ms",
    "lock_not_available",
    "on_retry",
    "crate",
];

/// The jitter names `jitter = "…"` accepts.
const JITTERS: &[&str] = &["full", "equal", "decorrelated", "none"];

/// The parsed arguments; defaults where an argument is absent or invalid.
pub(crate) struct Args {
    pub(crate) max_retries: u32,
    pub(crate) delay_ms: u64,
    pub(crate) max_delay_ms: Option<u64>,
    pub(crate) jitter: &'static str,
    pub(crate) deadline_ms: Option<u64>,
    /// `Some` when written out: the expansion then sets it on the policy.
    pub(crate) lock_not_available: Option<bool>,
    pub(crate) on_retry: Option<syn::Path>,
    pub(crate) krate: syn::Path,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            max_retries: 5,
            delay_ms: 100,
            max_delay_ms: None,
            jitter: "full",
            deadline_ms: None,
            lock_not_available: None,
            on_retry: None,
            krate: syn::parse_quote!(::luca_core),
        }
    }
}

/// Parses the attribute's arguments. Always returns usable arguments (defaults for the
/// bad ones) so the function still expands, plus every error found.
pub(crate) fn parse(tokens: TokenStream) -> (Args, Option<syn::Error>) {
    let mut args = Args::default();
    let mut errors = Errors::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(m) => m,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!(
                    "expected `key = value` arguments, e.g. `#[db_retry(max_retries = 5, delay_ms = 100)]`: {e}"
                ),
            ));
            return (args, errors.into_error());
        }
    };
    let mut seen: Vec<(String, Span)> = Vec::new();
    let mut max_delay_span = None;
    for meta in metas {
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            other => {
                let name = path_name(other.path());
                let hint = if KEYS.contains(&name.as_str()) {
                    format!("write `{name} = …`")
                } else {
                    expected_keys()
                };
                errors.push(syn::Error::new_spanned(
                    other,
                    format!("expected `key = value`; {hint}"),
                ));
                continue;
            }
        };
        let key = path_name(&nv.path);
        if !KEYS.contains(&key.as_str()) {
            errors.push(syn::Error::new_spanned(
                &nv.path,
                format!("unknown argument `{key}`; {}", expected_keys()),
            ));
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            let mut e = syn::Error::new_spanned(
                &nv.path,
                format!("duplicate argument `{key}`; remove one of them"),
            );
            e.combine(syn::Error::new(*first, format!("`{key}` first set here")));
            errors.push(e);
            continue;
        }
        seen.push((key.clone(), nv.path.span()));
        let value = &nv.value;
        let result = match key.as_str() {
            "max_retries" => int::<u32>(&key, value).map(|v| args.max_retries = v),
            "delay_ms" => int::<u64>(&key, value).map(|v| args.delay_ms = v),
            "max_delay_ms" => int::<u64>(&key, value).map(|v| {
                args.max_delay_ms = Some(v);
                max_delay_span = Some(value.span());
            }),
            "deadline_ms" => int::<u64>(&key, value).and_then(|v| {
                if v == 0 {
                    Err(syn::Error::new_spanned(
                        value,
                        "`deadline_ms` must be at least 1; remove it to retry without a deadline",
                    ))
                } else {
                    args.deadline_ms = Some(v);
                    Ok(())
                }
            }),
            "jitter" => jitter(value).map(|j| args.jitter = j),
            "lock_not_available" => boolean(&key, value).map(|b| args.lock_not_available = Some(b)),
            "on_retry" => hook(value).map(|p| args.on_retry = Some(p)),
            "crate" => crate::common::crate_path(value).map(|p| args.krate = p),
            _ => unreachable!("every key in KEYS is handled"),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if let (Some(max), Some(span)) = (args.max_delay_ms, max_delay_span)
        && max < args.delay_ms
    {
        errors.push(syn::Error::new(
            span,
            format!(
                "`max_delay_ms` ({max}) is less than `delay_ms` ({}); the cap must be at least the base delay",
                args.delay_ms
            ),
        ));
        args.max_delay_ms = None;
    }
    (args, errors.into_error())
}

fn expected_keys() -> String {
    let list: Vec<String> = KEYS.iter().map(|k| format!("`{k}`")).collect();
    format!("expected one of: {}", list.join(", "))
}

fn path_name(path: &syn::Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}

/// An unsigned integer literal that fits in `T`.
fn int<T>(key: &str, value: &Expr) -> syn::Result<T>
where
    T: std::str::FromStr + std::fmt::Display + Bounded,
    T::Err: std::fmt::Display,
{
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) if lit.base10_digits().starts_with('-') => Err(negative(key, value, T::MAX)),
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => lit.base10_parse::<T>().map_err(|_| {
            syn::Error::new_spanned(
                lit,
                format!(
                    "`{key}` must be an integer from 0 to {}; `{}` does not fit",
                    T::MAX,
                    lit.base10_digits()
                ),
            )
        }),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(negative(key, value, T::MAX)),
        _ => Err(syn::Error::new_spanned(
            value,
            format!(
                "`{key}` expects an integer literal, e.g. `{key} = {}`",
                example(key)
            ),
        )),
    }
}

fn negative(key: &str, value: &Expr, max: u64) -> syn::Error {
    syn::Error::new_spanned(
        value,
        format!("`{key}` cannot be negative; expected an integer from 0 to {max}"),
    )
}

fn example(key: &str) -> &'static str {
    match key {
        "max_retries" => "5",
        "delay_ms" => "100",
        "max_delay_ms" => "5000",
        _ => "30000",
    }
}

/// Largest value of an integer type, for messages.
trait Bounded {
    const MAX: u64;
}

impl Bounded for u32 {
    const MAX: u64 = u32::MAX as u64;
}

impl Bounded for u64 {
    const MAX: u64 = u64::MAX;
}

fn string(value: &Expr) -> Option<&syn::LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        _ => None,
    }
}

/// A `true` or `false` literal.
fn boolean(key: &str, value: &Expr) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` expects `true` or `false`, e.g. `{key} = true`"),
        )),
    }
}

fn jitter(value: &Expr) -> syn::Result<&'static str> {
    let names: Vec<String> = JITTERS.iter().map(|j| format!("`\"{j}\"`")).collect();
    let Some(s) = string(value) else {
        return Err(syn::Error::new_spanned(
            value,
            format!(
                "`jitter` expects a string literal: one of {}",
                names.join(", ")
            ),
        ));
    };
    let v = s.value();
    JITTERS.iter().copied().find(|j| *j == v).ok_or_else(|| {
        syn::Error::new_spanned(
            s,
            format!(
                "unknown jitter `{v}`; expected one of: {}",
                names.join(", ")
            ),
        )
    })
}

fn hook(value: &Expr) -> syn::Result<syn::Path> {
    match value {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Ok(p.path.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            "`on_retry` expects the path of a function `fn(&luca_core::retry::RetryEvent)`, e.g. `on_retry = log_retry`",
        )),
    }
}
