//! A typed view of the annotated struct that keeps the original syn nodes for spans.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Attribute, Fields, Generics, Ident, Item, Type, Visibility};

use super::attr::{self, Errors, Kind};

/// `attrs vis struct ident<generics> where … { fields }`.
pub(crate) struct Input {
    /// The struct's attributes, doc comments included.
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    pub(crate) fields: Vec<Field>,
    /// `#[derive(Debug)]` was on the struct (consumed by `valid`): generate a `Debug`.
    pub(crate) debug: bool,
    /// `#[derive(Default)]` was on the struct (consumed by `valid`): generate `Default`.
    pub(crate) default: bool,
}

/// One named field.
pub(crate) struct Field {
    /// `///` comments, carried to the accessors.
    pub(crate) docs: Vec<Attribute>,
    /// Every other attribute except `#[shared(…)]`; kept on the stored field.
    pub(crate) attrs: Vec<Attribute>,
    /// The `#[cfg(…)]` attributes among `attrs`, carried to every item generated for the
    /// field, so that a field compiled out takes its accessors, `new` parameter, `Debug`
    /// line and view member with it.
    pub(crate) cfgs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    /// Position in the declaration, from 0: the field's place in the lock order.
    pub(crate) index: u32,
    pub(crate) kind: Kind,
    /// Set by `valid` when an accessor name of this field clashes with another generated
    /// method: the field then gets no accessors (the error explains why).
    pub(crate) clashes: bool,
}

impl Input {
    /// Parses the item. A struct with named fields is the only accepted shape; anything
    /// else yields the error plus a fallback (the item with `#[shared]` removed).
    pub(crate) fn parse(item: TokenStream, errors: &mut Errors) -> Result<Input, TokenStream> {
        let mut item: Item = match syn::parse2(item.clone()) {
            Ok(i) => i,
            Err(e) => {
                errors.push(e);
                return Err(item);
            }
        };
        let s = match &mut item {
            Item::Struct(s) => s,
            Item::Enum(e) => {
                errors.push(syn::Error::new_spanned(
                    e.enum_token,
                    "`#[shared_state]` only works on a struct with named fields, not an enum; wrap the enum in a field: `struct State { value: YourEnum }`",
                ));
                for v in &mut e.variants {
                    strip(&mut v.fields);
                }
                return Err(item.into_token_stream());
            }
            Item::Union(u) => {
                errors.push(syn::Error::new_spanned(
                    u.union_token,
                    "`#[shared_state]` only works on a struct with named fields, not a union; use a struct with named fields",
                ));
                return Err(item.into_token_stream());
            }
            other => {
                errors.push(syn::Error::new_spanned(
                    &*other,
                    "`#[shared_state]` only works on a struct with named fields; put it on `struct Name { field: Type, … }`",
                ));
                return Err(other.to_token_stream());
            }
        };
        let named = match &s.fields {
            Fields::Named(named) => named.clone(),
            Fields::Unnamed(_) => {
                errors.push(syn::Error::new_spanned(
                    &s.fields,
                    "`#[shared_state]` needs named fields, not a tuple struct; name each field: `struct State { hosts: Hosts }`",
                ));
                strip(&mut s.fields);
                return Err(item.into_token_stream());
            }
            Fields::Unit => {
                errors.push(syn::Error::new_spanned(
                    &s.ident,
                    "`#[shared_state]` needs named fields, not a unit struct; add the fields to share: `struct State { hosts: Hosts }`",
                ));
                return Err(item.into_token_stream());
            }
        };
        let fields = named
            .named
            .into_iter()
            .enumerate()
            .map(|(index, f)| {
                let kind = attr::parse_field(&f.attrs, errors);
                let (docs, attrs): (Vec<Attribute>, Vec<Attribute>) = f
                    .attrs
                    .into_iter()
                    .filter(|a| !attr::is_field_attr(a))
                    .partition(|a| a.path().is_ident("doc"));
                let cfgs = attrs
                    .iter()
                    .filter(|a| a.path().is_ident("cfg"))
                    .cloned()
                    .collect();
                Field {
                    docs,
                    attrs,
                    cfgs,
                    vis: f.vis,
                    ident: f.ident.expect("named fields have names"),
                    ty: f.ty,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    kind,
                    clashes: false,
                }
            })
            .collect();
        Ok(Input {
            attrs: s.attrs.clone(),
            vis: s.vis.clone(),
            ident: s.ident.clone(),
            generics: s.generics.clone(),
            fields,
            debug: false,
            default: false,
        })
    }
}

/// Removes `#[shared(…)]` from fields, so a rejected item does not add "unknown attribute"
/// errors to the one that matters.
fn strip(fields: &mut Fields) {
    for f in fields.iter_mut() {
        f.attrs.retain(|a| !attr::is_field_attr(a));
    }
}
