//! Code generation: the signature is re-emitted token for token; the body becomes an
//! in-place retry loop in which one attempt is the whole original body.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::visit::Visit;
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

    // Where the return type can be written in a `let` (no `impl Trait` in it), annotate
    // the attempt and add tracing's never-taken return edge so `?` in the body infers the
    // declared error type.
    let nameable = !contains_impl_trait(ret);
    let annotation = nameable.then(|| quote!(: #ret));
    let fake_return = nameable.then(|| {
        quote! {
            #[allow(
                unknown_lints, unreachable_code, clippy::diverging_sub_expression,
                clippy::empty_loop, clippy::let_unit_value, clippy::let_with_type_underscore,
                clippy::needless_return, clippy::unreachable
            )]
            if false {
                let __luca_never: #ret = loop {};
                return __luca_never;
            }
        }
    });
    let stmts = &body.stmts;
    let inner_attrs = &body.inner_attrs;

    let (attempt, now, sleep) = if sig.asyncness.is_some() {
        (
            quote!(async { #fake_return #(#stmts)* }.await),
            quote!(#krate::__private::now_async),
            quote!(#krate::__private::sleep_async(#delay).await),
        )
    } else {
        (
            quote!((|| { #fake_return #(#stmts)* })()),
            quote!(#krate::__private::now_sync),
            quote!(#krate::__private::sleep_sync(#delay)),
        )
    };

    let failed = quote::format_ident!("__luca_failed", span = Span::mixed_site());
    let err_of = quote_spanned!(ret_span => #krate::__private::DbResult::__luca_err(&#result));
    let classify = quote_spanned! {ret_span=>
        #krate::__private::IntoBusyCode::__luca_code(
            (&&#krate::__private::Wrap(#error)).__luca_busy_code()
        )
    };

    quote! {
        #(#attrs)*
        #vis #defaultness #sig {
            #(#inner_attrs)*
            const __LUCA_POLICY: #krate::__private::RetryPolicy = #policy;
            let mut #schedule = #krate::__private::Schedule::new(
                &__LUCA_POLICY,
                ::core::concat!(::core::module_path!(), "::", #name),
                #krate::__private::Location::caller(),
                #hook,
            );
            #schedule.start(#now);
            loop {
                #[allow(clippy::redundant_closure_call)]
                let #result #annotation = #attempt;
                let #failed = #err_of;
                if let ::core::option::Option::Some(#error) = #failed {
                    #[allow(unused_imports)]
                    use #krate::__private::{ViaFallback as _, ViaRetryable as _, ViaSource as _};
                    if let ::core::option::Option::Some(#delay) = #schedule.on_error(#classify, #now) {
                        #sleep;
                        continue;
                    }
                }
                #schedule.finish(#failed.is_none());
                return #result;
            }
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
    quote! {
        #krate::__private::policy(
            #max_retries, #delay_ms, #max_delay_ms,
            #krate::__private::Jitter::#jitter, #deadline_ms,
        )
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

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    finder.visit_type(ty);
    finder.0
}
