//! Security headers for every response, and the Content-Security-Policy that still lets the
//! Leptos client run.
//!
//! What the hydrated UI needs: Leptos 0.8's `HydrationScripts` emits an inline
//! `<script type="module">` that imports `/pkg/baton.js`, and out-of-order streaming adds inline
//! `<script>` chunks; leptos_axum gives each page render a random nonce and puts it on every one
//! of those scripts. So a page's policy allows scripts from 'self' plus that nonce (set by
//! [`super::provide_request_context`], which knows the nonce), and 'wasm-unsafe-eval' to
//! compile the wasm (not 'unsafe-eval'). Every other response gets the same policy without a
//! nonce, from [`security_headers`] (which never replaces a page's own). Styles: 'self' and
//! 'unsafe-inline', because components may set `style` attributes; CSS cannot run script, and
//! `img-src`/`connect-src` keep it from sending data elsewhere.

use axum::http::{HeaderName, HeaderValue, header};
use tower::layer::util::{Identity, Stack};
use tower_http::set_header::SetResponseHeaderLayer;

/// The Content-Security-Policy: with `nonce`, for a page whose inline scripts carry it.
pub fn content_security_policy(nonce: Option<&str>) -> String {
    let nonce = nonce
        .map(|nonce| format!(" 'nonce-{nonce}'"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'{nonce} 'wasm-unsafe-eval'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
         font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

/// The layers [`security_headers`] returns, outermost last.
pub type SecurityHeaders = Stack<
    SetResponseHeaderLayer<HeaderValue>,
    Stack<
        SetResponseHeaderLayer<HeaderValue>,
        Stack<
            SetResponseHeaderLayer<HeaderValue>,
            Stack<SetResponseHeaderLayer<HeaderValue>, Identity>,
        >,
    >,
>;

/// Content-Security-Policy (unless the response has its own, as pages do), `X-Content-Type-Options:
/// nosniff`, `X-Frame-Options: DENY` (with `frame-ancestors 'none'` in the policy, for
/// browsers that know only one of them) and `Referrer-Policy: same-origin` (a deployment's URL
/// never leaks to another site). Add with `Router::layer`.
pub fn security_headers() -> SecurityHeaders {
    let csp = HeaderValue::from_str(&content_security_policy(None))
        .expect("the policy is a valid header value");
    let layer =
        |name: HeaderName, value: HeaderValue| SetResponseHeaderLayer::overriding(name, value);
    tower::ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ))
        .layer(layer(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(layer(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(layer(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_lets_the_wasm_and_nonced_scripts_run_and_nothing_frame_it() {
        let page = content_security_policy(Some("abc123"));
        assert!(
            page.contains("script-src 'self' 'nonce-abc123' 'wasm-unsafe-eval';"),
            "{page}"
        );
        assert!(!page.contains("'unsafe-eval'"));
        assert!(page.contains("frame-ancestors 'none'"));
        let other = content_security_policy(None);
        assert!(
            other.contains("script-src 'self' 'wasm-unsafe-eval';"),
            "{other}"
        );
    }
}
