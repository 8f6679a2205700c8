//! Code generation: the struct is re-emitted with each field rewritten into its storage
//! (`Locked`, `Counter` or `ReadMostly` from `luca_core::__private`), followed by the
//! accessors, `new`, `update` over a `…Fields<'_>` view, `Default`, a non-blocking
//! `Debug` and, with `global`, `global()`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, Visibility};

use super::ast::{Field, Input};
use super::attr::{Args, Kind};

pub(crate) fn expand(input: &Input, args: &Args) -> TokenStream {
    let Input {
        attrs,
        vis,
        ident,
        generics,
        fields,
        ..
    } = input;
    let krate = &args.krate;
    let p = quote!(#krate::__private);
    let (impl_g, ty_g, where_clause) = generics.split_for_impl();
    let type_name = ident.unraw().to_string();

    let storage = fields.iter().map(|f| {
        let Field { attrs, ident, .. } = f;
        let st = storage_type(&p, f);
        let doc = format!(
            "`{}`, {}; reached only through the generated accessors.",
            ident.unraw(),
            match f.kind {
                Kind::Plain => "behind its own lock",
                Kind::Counter => "an atomic counter",
                Kind::ReadMostly => "a lock-free read-mostly value",
            }
        );
        quote!(#[doc = #doc] #(#attrs)* #ident: #st)
    });

    let accessors = fields
        .iter()
        .filter(|f| !f.clashes)
        .map(|f| accessors(&p, &type_name, f));

    // `new(…)`: every field, in declaration order, with the narrowest visibility of them.
    let new_vis = new_visibility(vis, fields);
    let params = fields.iter().map(|f| {
        let Field {
            cfgs, ident, ty, ..
        } = f;
        quote!(#(#cfgs)* #ident: #ty)
    });
    let inits = fields.iter().map(|f| {
        let Field { cfgs, ident, .. } = f;
        let ctor = ctor(&p, f);
        quote!(#(#cfgs)* #ident: #ctor(#ident))
    });
    let new_doc = format!(
        "Builds a `{type_name}` from a value for every field, in declaration order.\n\nIts visibility is the narrowest of the fields' visibilities: code that may not name a field may not set it either."
    );

    let plain: Vec<&Field> = fields.iter().filter(|f| f.kind == Kind::Plain).collect();
    let poison_terms = plain.iter().map(|f| {
        let Field { cfgs, ident, .. } = f;
        quote!(#(#cfgs)* { __luca_n += self.#ident.poison_count(); })
    });
    let lock_order = (!plain.is_empty()).then(|| {
        quote! {
            /// The key of this struct in the lock-order check.
            #[doc(hidden)]
            #[inline(always)]
            #[allow(dead_code)]
            fn __luca_lock_order() -> &'static #p::LockOrder {
                static __LUCA_LOCK_ORDER: #p::LockOrder = #p::LockOrder::new();
                &__LUCA_LOCK_ORDER
            }
        }
    });

    let (view, update) = view_and_update(input, &p, &type_name, &plain);

    let default = input.default.then(|| {
        let (impl_g, where_clause) = bounded(generics, fields, quote!(::core::default::Default));
        let inits = fields.iter().map(|f| {
            let Field {
                cfgs, ident, ty, ..
            } = f;
            let ctor = ctor(&p, f);
            let value = quote_spanned!(ty.span()=> <#ty as ::core::default::Default>::default());
            quote!(#(#cfgs)* #ident: #ctor(#value))
        });
        quote! {
            impl #impl_g ::core::default::Default for #ident #ty_g #where_clause {
                fn default() -> Self {
                    Self { #(#inits,)* }
                }
            }
        }
    });

    let debug = input.debug.then(|| {
        let (impl_g, where_clause) = bounded(generics, fields, quote!(::core::fmt::Debug));
        let lines = fields.iter().map(|f| {
            let Field {
                cfgs, ident, ty, ..
            } = f;
            let name = ident.unraw().to_string();
            // Spanned at the field's type: a type without `Debug` is reported there.
            let line = match f.kind {
                Kind::Plain => {
                    let p = respan(p.clone(), ty.span());
                    quote_spanned!(ty.span()=> __luca_d.field(#name, &#p::DebugLocked(&self.#ident));)
                }
                _ => quote_spanned!(ty.span()=> __luca_d.field(#name, &self.#ident);),
            };
            quote!(#(#cfgs)* #line)
        });
        quote! {
            impl #impl_g ::core::fmt::Debug for #ident #ty_g #where_clause {
                /// Never blocks: a field whose lock is held right now prints as `<locked>`.
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    let mut __luca_d = f.debug_struct(#type_name);
                    #(#lines)*
                    __luca_d.finish()
                }
            }
        }
    });

    let global = args.global.map(|span| {
        let init = fields.iter().map(|f| {
            let Field { cfgs, ident, ty, .. } = f;
            let ctor = ctor(&p, f);
            let value = quote_spanned!(ty.span()=> <#ty as #p::GlobalField>::global_default());
            quote!(#(#cfgs)* #ident: #ctor(#value))
        });
        let doc = format!(
            "The process-wide `{type_name}`: built on first use, exactly once, even when many threads ask at the same time, with every field set to its type's `Default`."
        );
        let fn_ident = Ident::new("global", span);
        quote! {
            impl #ident {
                #[doc = #doc]
                #[allow(dead_code)]
                #vis fn #fn_ident() -> &'static Self {
                    static __LUCA_GLOBAL: #p::Global<#ident> = #p::Global::new();
                    __LUCA_GLOBAL.get_or_init(|| Self { #(#init,)* })
                }
            }
        }
    });

    quote! {
        #(#attrs)*
        #vis struct #ident #generics #where_clause {
            #(#storage,)*
        }

        impl #impl_g #ident #ty_g #where_clause {
            #[doc = #new_doc]
            #[allow(dead_code, clippy::too_many_arguments, clippy::new_without_default)]
            #[inline]
            #new_vis fn new(#(#params),*) -> Self {
                Self { #(#inits,)* }
            }

            /// How many times a closure panicked while holding the lock of one of this
            /// value's fields, leaving it poisoned; each time the value was recovered as the
            /// closure left it and the field stayed usable.
            #[allow(dead_code)]
            #vis fn poison_count(&self) -> u64 {
                #[allow(unused_mut)]
                let mut __luca_n = 0;
                #(#poison_terms)*
                __luca_n
            }

            #lock_order

            #update

            #(#accessors)*
        }

        #view

        #default

        #debug

        #global
    }
}

/// The impl generics and where clause of a generated `Default` or `Debug`: the struct's,
/// plus `Field: bound` for each field whose type names a type or const parameter (so
/// `Cache<K, V>` is `Debug` exactly when its fields are, whatever `K` and `V` are). Fields
/// of a concrete type need no bound: the impl's body checks them where they are declared,
/// and so does it for a field under `#[cfg]`, whose type may not exist when the `cfg` is
/// off.
fn bounded(
    generics: &syn::Generics,
    fields: &[Field],
    bound: TokenStream,
) -> (TokenStream, TokenStream) {
    let mut g = generics.clone();
    let params: Vec<String> = generics
        .params
        .iter()
        .filter_map(|p| match p {
            syn::GenericParam::Type(t) => Some(t.ident.to_string()),
            syn::GenericParam::Const(c) => Some(c.ident.to_string()),
            syn::GenericParam::Lifetime(_) => None,
        })
        .collect();
    let where_clause = g.make_where_clause();
    for f in fields {
        if f.cfgs.is_empty() && names_any(f.ty.to_token_stream(), &params) {
            let ty = &f.ty;
            where_clause
                .predicates
                .push(syn::parse_quote_spanned!(ty.span()=> #ty: #bound));
        }
    }
    let (impl_g, _, where_clause) = g.split_for_impl();
    (impl_g.to_token_stream(), where_clause.to_token_stream())
}

/// `tokens` with every span set to `span`, so that an error in an expression built from
/// them points at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            if let proc_macro2::TokenTree::Group(g) = &t {
                let mut inner = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                inner.set_span(span);
                t = proc_macro2::TokenTree::Group(inner);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
}

/// Whether `tokens` contain one of the identifiers `names`.
fn names_any(tokens: TokenStream, names: &[String]) -> bool {
    tokens.into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => names.iter().any(|n| i == n),
        proc_macro2::TokenTree::Group(g) => names_any(g.stream(), names),
        _ => false,
    })
}

/// How far a visibility reaches, for finding the narrowest of several.
#[derive(PartialEq)]
enum Reach {
    Private,
    /// `pub(in path)`, with the path as written.
    In(String),
    Super,
    Crate,
    Public,
}

fn reach(vis: &Visibility) -> Reach {
    match vis {
        Visibility::Public(_) => Reach::Public,
        Visibility::Inherited => Reach::Private,
        Visibility::Restricted(r) => {
            let path = r.path.to_token_stream().to_string();
            match path.as_str() {
                "crate" => Reach::Crate,
                "self" => Reach::Private,
                "super" => Reach::Super,
                _ => Reach::In(path),
            }
        }
    }
}

/// The visibility of `new`: the narrowest of the fields' (the struct's when it has none).
/// Two visibilities that cannot be compared (`pub(super)` and `pub(in path)`, or two
/// different paths) give a private `new`.
fn new_visibility(struct_vis: &Visibility, fields: &[Field]) -> Visibility {
    let mut narrowest: Option<(&Visibility, Reach)> = None;
    for f in fields {
        let r = reach(&f.vis);
        narrowest = Some(match narrowest {
            None => (&f.vis, r),
            Some((v, n)) => {
                let keep_old = match (&n, &r) {
                    _ if n == r => true,
                    (Reach::Private, _) | (_, Reach::Public) => true,
                    (_, Reach::Private) | (Reach::Public, _) => false,
                    (Reach::In(_) | Reach::Super, Reach::Crate) => true,
                    (Reach::Crate, Reach::In(_) | Reach::Super) => false,
                    // `pub(super)` against `pub(in path)`, or two different paths.
                    _ => return Visibility::Inherited,
                };
                if keep_old { (v, n) } else { (&f.vis, r) }
            }
        });
    }
    narrowest.map_or_else(|| struct_vis.clone(), |(v, _)| v.clone())
}

fn storage_type(p: &TokenStream, f: &Field) -> TokenStream {
    let ty = &f.ty;
    match f.kind {
        Kind::Plain => quote!(#p::Locked<#ty>),
        Kind::Counter => quote_spanned!(ty.span()=> #p::Counter<#ty>),
        Kind::ReadMostly => quote!(#p::ReadMostly<#ty>),
    }
}

fn ctor(p: &TokenStream, f: &Field) -> TokenStream {
    match f.kind {
        Kind::Plain => quote!(#p::Locked::new),
        Kind::Counter => quote!(#p::Counter::new),
        Kind::ReadMostly => quote!(#p::ReadMostly::new),
    }
}

/// `#[doc = summary]`, then the field's own doc comments after a blank line.
fn docs(summary: String, field_docs: &[Attribute]) -> TokenStream {
    if field_docs.is_empty() {
        quote!(#[doc = #summary])
    } else {
        quote!(#[doc = #summary] #[doc = ""] #(#field_docs)*)
    }
}

fn accessors(p: &TokenStream, type_name: &str, f: &Field) -> TokenStream {
    let Field {
        docs: field_docs,
        cfgs,
        vis,
        ident,
        ty,
        index,
        ..
    } = f;
    let name = ident.unraw().to_string();
    let span = ident.span();
    let with = format_ident!("with_{}", name, span = span);
    let update = format_ident!("update_{}", name, span = span);
    let set = format_ident!("set_{}", name, span = span);
    let add = format_ident!("add_{}", name, span = span);
    let incr = format_ident!("incr_{}", name, span = span);
    let r = Ident::new("__LucaR", Span::mixed_site());
    let site = quote!(&#p::Site { ty: #type_name, field: #name, index: #index });
    let order = quote!(Self::__luca_lock_order());
    // `track_caller` on the accessors that can panic (re-entrancy, lock order), so the
    // panic names the user's line; the field's `cfg`s on every accessor.
    let attrs = quote!(#(#cfgs)* #[inline] #[allow(dead_code)]);
    let panicking = quote!(#(#cfgs)* #[inline] #[track_caller] #[allow(dead_code)]);
    let static_bound = quote_spanned!(ty.span()=> for<'__luca> #ty: 'static,);
    let clone_bound = quote_spanned!(ty.span()=> for<'__luca> #ty: ::core::clone::Clone,);
    match f.kind {
        Kind::Plain => {
            let d_get = docs(
                format!(
                    "Returns a clone of `{name}`, taken under its lock. Available when the field's type is `Clone`."
                ),
                field_docs,
            );
            let d_with = docs(
                format!(
                    "Runs `f` on `{name}` under its lock and returns what `f` returns.\n\n`f` is a plain closure, so the lock can never be held across an `.await`. Inside `f`, only the plain fields declared after `{name}` may be locked (the lock order that keeps nested accessors free of deadlocks); calling an accessor of `{name}` itself, or of a plain field declared before it (of this or another value of the struct), panics at once. A panic in `f` leaves the value as `f` left it, and the lock usable."
                ),
                field_docs,
            );
            let d_update = docs(
                format!(
                    "Runs `f` on `{name}` under its lock, with write access, and returns what `f` returns.\n\n`f` is a plain closure, so the lock can never be held across an `.await`. Inside `f`, only the plain fields declared after `{name}` may be locked (the lock order that keeps nested accessors free of deadlocks); calling an accessor of `{name}` itself, or of a plain field declared before it (of this or another value of the struct), panics at once. A panic in `f` leaves the value as `f` left it, and the lock usable."
                ),
                field_docs,
            );
            let d_set = docs(
                format!("Replaces `{name}` under its lock and returns the previous value."),
                field_docs,
            );
            quote! {
                #d_get
                #panicking
                #vis fn #ident(&self) -> #ty
                where
                    #clone_bound
                {
                    ::core::clone::Clone::clone(&*self.#ident.lock(#site, #order))
                }

                #d_with
                #panicking
                #vis fn #with<#r>(&self, f: impl ::core::ops::FnOnce(&#ty) -> #r) -> #r {
                    f(&*self.#ident.lock(#site, #order))
                }

                #d_update
                #panicking
                #vis fn #update<#r>(&self, f: impl ::core::ops::FnOnce(&mut #ty) -> #r) -> #r {
                    f(&mut *self.#ident.lock(#site, #order))
                }

                #d_set
                #panicking
                #vis fn #set(&self, value: #ty) -> #ty {
                    ::core::mem::replace(&mut *self.#ident.lock(#site, #order), value)
                }
            }
        }
        Kind::Counter => {
            let d_get = docs(
                format!("Current value of the counter `{name}` (lock-free)."),
                field_docs,
            );
            let d_add = docs(
                format!(
                    "Adds `n` to `{name}` atomically (wrapping on overflow) and returns the new value."
                ),
                field_docs,
            );
            let d_incr = docs(
                format!(
                    "Adds one to `{name}` atomically (wrapping on overflow) and returns the new value."
                ),
                field_docs,
            );
            let d_set = docs(
                format!("Stores `value` in `{name}` atomically and returns the previous value."),
                field_docs,
            );
            quote! {
                #d_get
                #attrs
                #vis fn #ident(&self) -> #ty {
                    self.#ident.get()
                }

                #d_add
                #attrs
                #vis fn #add(&self, n: #ty) -> #ty {
                    self.#ident.add(n)
                }

                #d_incr
                #attrs
                #vis fn #incr(&self) -> #ty {
                    self.#ident.incr()
                }

                #d_set
                #attrs
                #vis fn #set(&self, value: #ty) -> #ty {
                    self.#ident.set(value)
                }
            }
        }
        Kind::ReadMostly => {
            let d_get = docs(
                format!("A snapshot of `{name}`: lock-free, never waits for a writer."),
                field_docs,
            );
            let d_with = docs(
                format!(
                    "Runs `f` on the current `{name}` without locking (and without touching a reference count) and returns what `f` returns."
                ),
                field_docs,
            );
            let d_set = docs(
                format!(
                    "Replaces `{name}`; readers see the old or the new value, never a mix. Returns the previous value."
                ),
                field_docs,
            );
            let d_update = docs(
                format!(
                    "Read-copy-update of `{name}`: `f` computes the new value from the current one, which is installed unless another writer changed `{name}` meanwhile; then `f` runs again on the newer value. **`f` may run more than once**, so keep it free of side effects. Writing `{name}` from inside `f` panics (the update would retry forever). Returns the value installed."
                ),
                field_docs,
            );
            quote! {
                #d_get
                #attrs
                #vis fn #ident(&self) -> ::std::sync::Arc<#ty> {
                    self.#ident.load_full()
                }

                #d_with
                #attrs
                #vis fn #with<#r>(&self, f: impl ::core::ops::FnOnce(&#ty) -> #r) -> #r
                where
                    #static_bound
                {
                    self.#ident.with(f)
                }

                #d_set
                #panicking
                #vis fn #set(&self, value: #ty) -> ::std::sync::Arc<#ty> {
                    self.#ident.store(value, #site)
                }

                #d_update
                #panicking
                #vis fn #update(&self, f: impl ::core::ops::FnMut(&#ty) -> #ty) -> ::std::sync::Arc<#ty> {
                    self.#ident.rcu(f, #site)
                }
            }
        }
    }
}

/// The `…Fields<'_>` view of every plain field and the `update` method that hands it out
/// with all their locks held. Nothing when there is no plain field.
fn view_and_update(
    input: &Input,
    p: &TokenStream,
    type_name: &str,
    plain: &[&Field],
) -> (TokenStream, TokenStream) {
    if plain.is_empty() {
        return (TokenStream::new(), TokenStream::new());
    }
    let Input {
        vis,
        ident,
        generics,
        ..
    } = input;
    let view = format_ident!("{}Fields", ident.unraw(), span = ident.span());
    let lt: syn::Lifetime = syn::parse_quote!('__luca);
    let mut view_generics = generics.clone();
    view_generics.params.insert(
        0,
        syn::GenericParam::Lifetime(syn::LifetimeParam::new(lt.clone())),
    );
    let (_, ty_g, where_clause) = generics.split_for_impl();
    let has_params = !generics.params.is_empty();
    let marker_field = has_params.then(|| {
        quote! {
            #[doc(hidden)]
            __luca_marker: ::core::marker::PhantomData<&#lt #ident #ty_g>,
        }
    });
    let marker_init = has_params.then(|| quote!(__luca_marker: ::core::marker::PhantomData,));
    let members = plain.iter().map(|f| {
        let Field {
            docs: field_docs,
            cfgs,
            vis,
            ident,
            ty,
            ..
        } = f;
        let d = docs(format!("`{}`, locked.", ident.unraw()), field_docs);
        quote!(#(#cfgs)* #d #vis #ident: &#lt mut #ty)
    });
    let view_doc = format!(
        "Every lock-guarded field of [`{type_name}`] at once, handed to [`{type_name}::update`] with all their locks held. Counters and read-mostly fields are lock-free and are not part of it: use their own accessors."
    );
    let view_def = quote! {
        #[doc = #view_doc]
        #[allow(dead_code)]
        #vis struct #view #view_generics #where_clause {
            #(#members,)*
            #marker_field
        }
    };
    let guards: Vec<Ident> = plain
        .iter()
        .map(|f| format_ident!("__luca_{}", f.ident.unraw(), span = Span::mixed_site()))
        .collect();
    let locks = plain.iter().zip(&guards).map(|(f, g)| {
        let Field {
            cfgs, ident, index, ..
        } = f;
        let name = ident.unraw().to_string();
        quote! {
            #(#cfgs)*
            let mut #g = self.#ident.lock(
                &#p::Site { ty: #type_name, field: #name, index: #index },
                Self::__luca_lock_order(),
            );
        }
    });
    let inits = plain.iter().zip(&guards).map(|(f, g)| {
        let Field { cfgs, ident, .. } = f;
        quote!(#(#cfgs)* #ident: &mut *#g,)
    });
    let r = Ident::new("__LucaR", Span::mixed_site());
    let update_doc = format!(
        "Runs `f` with every lock-guarded field of this `{type_name}` locked at once, so it sees and leaves a consistent state; returns what `f` returns.\n\nLocks are taken in declaration order, the lock order every nested accessor call must follow, so two `update`s can never deadlock each other. Calling a field's accessor from inside `f` panics (its lock is already held): use the view instead. So does nesting the `update` (or a plain field's accessor) of another `{type_name}` inside `f`."
    );
    let ty_params = generics.params.iter().map(|g| match g {
        syn::GenericParam::Lifetime(l) => {
            let l = &l.lifetime;
            quote!(#l)
        }
        syn::GenericParam::Type(t) => {
            let t = &t.ident;
            quote!(#t)
        }
        syn::GenericParam::Const(c) => {
            let c = &c.ident;
            quote!(#c)
        }
    });
    let update = quote! {
        #[doc = #update_doc]
        #[allow(dead_code)]
        #[track_caller]
        #vis fn update<#r>(&self, f: impl ::core::ops::FnOnce(#view<'_, #(#ty_params,)*>) -> #r) -> #r {
            #(#locks)*
            f(#view { #(#inits)* #marker_init })
        }
    };
    (view_def, update)
}
