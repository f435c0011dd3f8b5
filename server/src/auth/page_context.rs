//! What pages and server functions learn from the auth layer, through Leptos context.

use axum::http::{HeaderValue, header, request::Parts};
use leptos::prelude::{provide_context, use_context};

use super::headers::content_security_policy;
use super::{ClientAddress, Principal};

/// Call from the Leptos additional-context closure (`leptos_routes_with_context`), for pages
/// and server functions alike:
/// - provides the request's [`Principal`] (if signed in) and [`ClientAddress`] as Leptos
///   context, where [`principal`] and [`client_address`] find them (also from the server
///   crate's `FleetSource` methods, which run inside the server function);
/// - on a page render, sets the Content-Security-Policy with the nonce leptos_axum put on this
///   page's inline scripts.
pub fn provide_request_context() {
    if let Some(parts) = use_context::<Parts>() {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            provide_context(principal.clone());
        }
        if let Some(address) = parts.extensions.get::<ClientAddress>() {
            provide_context(address.clone());
        }
    }
    if let Some(nonce) = leptos::nonce::use_nonce()
        && let Some(response) = use_context::<leptos_axum::ResponseOptions>()
        && let Ok(value) = HeaderValue::from_str(&content_security_policy(Some(&nonce)))
    {
        response.insert_header(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// The caller of the page or server function being served, if signed in.
pub fn principal() -> Option<Principal> {
    use_context::<Principal>()
}

/// The address of the client whose request is being served.
pub fn client_address() -> ClientAddress {
    use_context::<ClientAddress>().unwrap_or_else(|| ClientAddress("unknown".into()))
}
