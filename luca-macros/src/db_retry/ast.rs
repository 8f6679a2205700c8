//! A typed view of the annotated function: free fn, inherent or trait method.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Block, Signature, Stmt, Token, Visibility};

/// `attrs vis [default] sig { body }`, or `attrs sig;` for a trait method without a body.
pub(crate) struct Function {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) defaultness: Option<Token![default]>,
    pub(crate) sig: Signature,
    /// `None` for a trait method declared without a default body.
    pub(crate) body: Option<Body>,
}

/// The function body: inner attributes (`#![allow(…)]`) and statements.
pub(crate) struct Body {
    pub(crate) inner_attrs: Vec<Attribute>,
    pub(crate) stmts: Vec<Stmt>,
    /// The braces: where errors about the body as a whole point.
    pub(crate) span: proc_macro2::Span,
}

impl Function {
    pub(crate) fn parse(item: TokenStream) -> syn::Result<Function> {
        syn::parse2(item)
    }
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let defaultness: Option<Token![default]> = input.parse()?;
        // What follows must be a function signature; anything else is the wrong item.
        if input.fork().parse::<Signature>().is_err() {
            return Err(not_a_function(input));
        }
        let sig: Signature = input.parse()?;
        let body = if input.peek(Token![;]) {
            input.parse::<Token![;]>()?;
            None
        } else {
            let content;
            let brace = syn::braced!(content in input);
            Some(Body {
                inner_attrs: content.call(Attribute::parse_inner)?,
                stmts: content.call(Block::parse_within)?,
                span: brace.span.open(),
            })
        };
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the function"));
        }
        Ok(Function {
            attrs,
            vis,
            defaultness,
            sig,
            body,
        })
    }
}

fn not_a_function(input: ParseStream<'_>) -> syn::Error {
    let what = input
        .cursor()
        .ident()
        .map(|(i, _)| format!("; found `{i}`"))
        .unwrap_or_default();
    syn::Error::new(
        input.span(),
        format!(
            "`#[db_retry]` can only be applied to a function or method{what}; put it on the `fn` that runs the transaction"
        ),
    )
}
