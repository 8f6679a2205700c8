//! Code generation: the signature is re-emitted token for token; the body becomes an
//! in-place retry loop in which one attempt is the whole original body.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{ReturnType, Type};

use super::ast::Function;
use super::attr::Args;

pub(crate) fn expand(f: &Function, args: &Args) -> TokenStream {
    let Function {
        attrs,
        vis,
        defaultness,
        sig,
        body,
    } = f;
    let body = body.as_ref().expect("valid::check requires a body");
    let krate = &args.krate;
    let ReturnType::Type(_, ret) = &sig.output else {
        unreachable!("valid::check requires a return type")
    };
    let ret_span = ret_span(ret);

    // Generated names carry the `__luca_` prefix and mixed-site hygiene, so they can never
    // shadow or be shadowed by the user's names.
    let result = quote::format_ident!("__luca_result", span = Span::mixed_site());
    let schedule = quote::format_ident!("__luca_schedule", span = Span::mixed_site());
    let error = quote::format_ident!("__luca_error", span = Span::mixed_site());
    let delay = quote::format_ident!("__luca_delay", span = Span::mixed_site());

    let policy = policy(args);
    let hook = match &args.on_retry {
        Some(p) => {
            let hook_ty = quote_spanned!(p.span_of() => #krate::__private::RetryHook);
            quote!(::core::option::Option::Some::<#hook_ty>(#p))
        }
        None => quote!(::core::option::Option::None),
    };
    let name = sig.ident.to_string();

    // Annotate the attempt with the return type, and add tracing's never-taken return
    // edge, so `?` in the body infers the declared error type (the classification is
    // chosen by that type). An `impl Trait` cannot be written in a `let`: it becomes `_`,
    // inferred from the body, which keeps the rest of the type (the error) known.
    let ret_in_let = impl_trait_as_infer(ret);
    let annotation = quote!(: #ret_in_let);
    let fake_return = quote! {
        #[allow(
            unknown_lints, unreachable_code, clippy::diverging_sub_expression,
            clippy::empty_loop, clippy::let_unit_value, clippy::let_with_type_underscore,
            clippy::needless_return, clippy::unreachable
        )]
        if false {
            let __luca_never: #ret_in_let = loop {};
            return __luca_never;
        }
    };
    let stmts = &body.stmts;
    let inner_attrs = &body.inner_attrs;

    let attempt_fn = quote::format_ident!("__luca_attempt", span = Span::mixed_site());
    let again = quote::format_ident!("__luca_again", span = Span::mixed_site());
    let classify_fn = quote::format_ident!("__luca_classify", span = Span::mixed_site());
    let code = quote::format_ident!("__luca_code", span = Span::mixed_site());
    let started = quote::format_ident!("__luca_started", span = Span::mixed_site());
    let r = quote::format_ident!("__luca_r", span = Span::mixed_site());
    let p = quote!(#krate::__private);

    // Classifies one attempt's result. The autoref-specialised call picks `Retryable`,
    // then the `source()` walk, then a fallback that fails to compile with `Retryable`'s
    // diagnostic; spans point at the error type.
    //
    // A return type that is not a `Result` (through an alias the syntactic check cannot
    // see) fails `DbResult` here: the argument is located at the return type, so that is
    // where the error points.
    let ret_whole = ret.span_of();
    let r_at_ret =
        quote::format_ident!("__luca_r", span = Span::mixed_site().located_at(ret_whole));
    let result_at_ret = quote::format_ident!(
        "__luca_result",
        span = Span::mixed_site().located_at(ret_whole)
    );
    let err_of = quote_spanned!(ret_whole => #p::DbResult::__luca_err(#r_at_ret));
    let busy_code = quote_spanned! {ret_span=>
        #p::IntoBusyCode::__luca_code((&&#p::Wrap(#error)).__luca_busy_code())
    };
    let classify_closure = quote! {
        |#r| match #err_of {
            ::core::option::Option::None => #p::Outcome::Ok,
            ::core::option::Option::Some(#error) => {
                #[allow(unused_imports)]
                use #p::{ViaFallback as _, ViaRetryable as _, ViaSource as _};
                match #busy_code {
                    ::core::option::Option::Some(#code) => #p::Outcome::Busy(#code),
                    ::core::option::Option::None => #p::Outcome::Fatal,
                }
            }
        }
    };
    let classifier = quote!(#p::classifier(&#result, #classify_closure));
    let function = quote!(::core::concat!(::core::module_path!(), "::", #name));
    let location = quote!(#p::Location::caller());
    let read_start = |now: TokenStream| match args.deadline_ms {
        Some(_) => quote!(::core::option::Option::Some(#now())),
        None => quote!(::core::option::Option::None),
    };

    let body = if sig.asyncness.is_some() {
        // One attempt is an `async` block awaited in place; the loop stays in the
        // function (the body is never duplicated) and the schedule is built only after a
        // busy error.
        //
        // The block must not hold a shared borrow of a by-value parameter: `&T` is `Send`
        // only when `T: Sync`, so a `Send + !Sync` parameter (a channel receiver, a
        // `Cell`, a `Connection` behind `&mut`) would make the future `!Send` where the
        // function without the attribute is `Send`. Each parameter is rebound `mut` and
        // borrowed uniquely in the block, so the block captures `&mut T`, which is `Send`
        // when `T` is.
        let (rebind, unique) = unique_captures(sig);
        let start = read_start(quote!(#p::now_async));
        quote! {
            #rebind
            let #started = #start;
            let mut #schedule: ::core::option::Option<#p::Schedule<'static>> = ::core::option::Option::None;
            loop {
                let #result #annotation = async { #unique #fake_return #(#stmts)* }.await;
                let #classify_fn = #classifier;
                match #classify_fn(&#result) {
                    #p::Outcome::Busy(#code) => {
                        let #schedule = #schedule.get_or_insert_with(|| {
                            #p::Schedule::new(&__LUCA_POLICY, #function, #location, #hook)
                                .started_at(#started)
                        });
                        if let ::core::option::Option::Some(#delay) =
                            #schedule.on_error(::core::option::Option::Some(#code), #p::now_async)
                        {
                            ::core::mem::drop(#result);
                            #p::sleep_async(#delay).await;
                            continue;
                        }
                        #schedule.finish(false);
                        return #result;
                    }
                    __luca_outcome => {
                        if let ::core::option::Option::Some(#schedule) = &#schedule {
                            #schedule.finish(__luca_outcome == #p::Outcome::Ok);
                        }
                        return #result;
                    }
                }
            }
        }
    } else {
        // The first attempt runs inline and returns at once on success; every error goes
        // to the out-of-line `retry_sync_after_error`, so the success path compiles to the
        // hand-written function. The attempt closure is `move`: arguments live in it (no
        // stack spills on the success path), and since it must be `FnMut` to run again, a
        // body that consumes an argument is rejected at compile time.
        let start = read_start(quote!(#p::now_sync));
        // Spanned at the body's brace, so that a body that moves an argument out (a
        // closure that is only `FnOnce`) is reported at the body and the moved argument,
        // not at the attribute.
        let closure = quote_spanned!(body.span=> move || { #fake_return #(#stmts)* });
        quote! {
            let #started = #start;
            #[allow(unused_mut)]
            let mut #attempt_fn = #closure;
            let #result #annotation = #attempt_fn();
            // Success leaves through a fresh `Ok`, written straight into the caller's
            // return slot; any error goes to the out-of-line retry path.
            match #p::DbResult::__luca_into(#result_at_ret) {
                ::core::result::Result::Ok(__luca_ok) => #p::DbResult::__luca_ok(__luca_ok),
                ::core::result::Result::Err(#error) => {
                    // Moved out only here, so the closure stays in registers on the
                    // success path. The cast is where a body that consumes an argument
                    // (a closure that is only `FnOnce`) is rejected.
                    let mut #again = #attempt_fn;
                    #p::retry_sync_after_error(
                        #error,
                        &__LUCA_POLICY, #function, #location, #hook, #started,
                        &mut #again as &mut dyn ::core::ops::FnMut() -> _,
                        #classify_closure,
                    )
                }
            }
        }
    };

    quote! {
        #(#attrs)*
        #vis #defaultness #sig {
            #(#inner_attrs)*
            const __LUCA_POLICY: #p::RetryPolicy = #policy;
            #body
        }
    }
}

fn policy(args: &Args) -> TokenStream {
    let krate = &args.krate;
    let max_retries = args.max_retries;
    let delay_ms = args.delay_ms;
    let opt = |v: Option<u64>| match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    let max_delay_ms = opt(args.max_delay_ms);
    let deadline_ms = opt(args.deadline_ms);
    let jitter = match args.jitter {
        "none" => quote!(None),
        "equal" => quote!(Equal),
        "decorrelated" => quote!(Decorrelated),
        _ => quote!(Full),
    };
    let lock_not_available = args
        .lock_not_available
        .map(|b| quote!(.with_lock_not_available(#b)));
    quote! {
        #krate::__private::policy(
            #max_retries, #delay_ms, #max_delay_ms,
            #krate::__private::Jitter::#jitter, #deadline_ms,
        )#lock_not_available
    }
}

/// The span of the error type in `Result<T, E>` when it is written out, else of the
/// whole return type: type errors about the error point there.
fn ret_span(ret: &Type) -> Span {
    if let Type::Path(p) = ret
        && let Some(last) = p.path.segments.last()
        && let syn::PathArguments::AngleBracketed(a) = &last.arguments
        && a.args.len() == 2
        && let Some(syn::GenericArgument::Type(e)) = a.args.last()
    {
        return e.span_of();
    }
    ret.span_of()
}

trait SpanOf {
    fn span_of(&self) -> Span;
}

impl<T: ToTokens> SpanOf for T {
    fn span_of(&self) -> Span {
        syn::spanned::Spanned::span(self)
    }
}

/// The type with every `impl Trait` replaced by `_`, so it can annotate a `let`.
fn impl_trait_as_infer(ty: &Type) -> Type {
    let mut ty = ty.clone();
    replace_impl_trait(&mut ty);
    ty
}

fn replace_impl_trait(ty: &mut Type) {
    match ty {
        Type::ImplTrait(t) => {
            let underscore_token = syn::Token![_](syn::spanned::Spanned::span(t));
            *ty = Type::Infer(syn::TypeInfer { underscore_token });
        }
        Type::Path(p) => {
            if let Some(q) = &mut p.qself {
                replace_impl_trait(&mut q.ty);
            }
            for segment in &mut p.path.segments {
                if let syn::PathArguments::AngleBracketed(a) = &mut segment.arguments {
                    for arg in &mut a.args {
                        if let syn::GenericArgument::Type(t) = arg {
                            replace_impl_trait(t);
                        }
                    }
                }
            }
        }
        Type::Reference(r) => replace_impl_trait(&mut r.elem),
        Type::Paren(p) => replace_impl_trait(&mut p.elem),
        Type::Group(g) => replace_impl_trait(&mut g.elem),
        Type::Array(a) => replace_impl_trait(&mut a.elem),
        Type::Slice(s) => replace_impl_trait(&mut s.elem),
        Type::Ptr(p) => replace_impl_trait(&mut p.elem),
        Type::Tuple(t) => t.elems.iter_mut().for_each(replace_impl_trait),
        _ => {}
    }
}

/// For an `async fn`: statements that rebind each by-value parameter binding as `mut`
/// (before the loop), and statements that borrow each uniquely (first in the attempt's
/// `async` block), so the block captures `&mut T` instead of `&T`. A `&mut self`
/// receiver is reborrowed uniquely; `self` by value and `&self` are left as they are.
fn unique_captures(sig: &syn::Signature) -> (TokenStream, TokenStream) {
    let mut rebind = TokenStream::new();
    let mut unique = TokenStream::new();
    for arg in &sig.inputs {
        match arg {
            syn::FnArg::Receiver(r) => {
                let mutable_ref = match &*r.ty {
                    Type::Reference(t) => t.mutability.is_some(),
                    _ => false,
                };
                if mutable_ref {
                    let this = &r.self_token;
                    unique.extend(quote!(let _ = &mut *#this;));
                }
            }
            syn::FnArg::Typed(t) => {
                let mut names = Vec::new();
                bindings(&t.pat, &mut names);
                for name in names {
                    rebind.extend(quote! {
                        #[allow(unused_mut, clippy::redundant_locals)]
                        let mut #name = #name;
                    });
                    unique.extend(quote!(let _ = &mut #name;));
                }
            }
        }
    }
    (rebind, unique)
}

/// The by-value identifiers a parameter pattern binds (not `ref` ones).
fn bindings<'a>(pat: &'a syn::Pat, out: &mut Vec<&'a syn::Ident>) {
    use syn::Pat;
    match pat {
        Pat::Ident(i) => {
            if i.by_ref.is_none() {
                out.push(&i.ident);
            }
            if let Some((_, sub)) = &i.subpat {
                bindings(sub, out);
            }
        }
        Pat::Tuple(t) => t.elems.iter().for_each(|p| bindings(p, out)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| bindings(p, out)),
        Pat::Struct(s) => s.fields.iter().for_each(|fp| bindings(&fp.pat, out)),
        Pat::Slice(s) => s.elems.iter().for_each(|p| bindings(p, out)),
        Pat::Reference(r) => bindings(&r.pat, out),
        Pat::Paren(p) => bindings(&p.pat, out),
        Pat::Type(t) => bindings(&t.pat, out),
        _ => {}
    }
}
