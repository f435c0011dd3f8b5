//! The auth layer: finds the caller, applies the CSRF check, and enforces the route policy.
//!
//! Per request, in this order:
//! 1. The client's address goes into the extensions ([`ClientAddress`]).
//! 2. A request that matched no route (static files, the not-found page) goes on: public.
//! 3. The matched route's rule is looked up; a route without one is refused (403), a known path
//!    with another method gets 405.
//! 4. The caller is resolved from `Authorization: Bearer <token>` (which wins) or the session
//!    cookie. A bad token is refused with 401 even if a cookie is present, except on public
//!    routes, which then go on as anonymous.
//! 5. CSRF: an unsafe method (anything but GET, HEAD, OPTIONS) authenticated by the cookie must
//!    come from Baton's own origin (see [`check_same_origin`]). Bearer tokens are exempt: a
//!    browser never attaches them by itself.
//! 6. The rule's role is checked ([`refusal`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};

use super::Auth;
use super::error::{AuthError, PageRefusal};
use super::policy::{Access, Kind, Lookup, Policy, Rule, is_safe};
use super::principal::{ClientAddress, Credential, Principal, Role, Via};
use super::secret::SecretToken;
use crate::origin::Origin;
use crate::settings::{AuthConfig, Https};

/// The session cookie's name over plain HTTP.
pub const SESSION_COOKIE: &str = "baton_session";
/// The session cookie's name over HTTPS. Browsers accept a `__Host-` cookie only with
/// `Secure`, `Path=/` and no `Domain`, so no other site (a sibling subdomain) can set or
/// overwrite it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-baton_session";

/// The one session cookie Baton reads and sets on a request over HTTPS (`secure`) or not.
pub(super) fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// Put in a request's extensions by the auth layer when an anonymous client's address is in
/// the scrape allow-list, on a route that lets such clients in.
#[derive(Debug, Clone, Copy)]
struct AllowedScraper;

pub(super) struct LayerState {
    pub auth: Auth,
    pub policy: Policy,
}

pub(super) async fn authenticate(
    State(state): State<Arc<LayerState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let address = client_address(&request, &state.auth.inner.config);
    request.extensions_mut().insert(address.clone());
    // For the stream routes' `StreamPass`, which counts and watches the caller's streams.
    request.extensions_mut().insert(state.auth.clone());
    let Some(path) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
    else {
        return next.run(request).await;
    };
    let rule = match state.policy.lookup(request.method(), &path) {
        Lookup::Rule(rule) => rule.clone(),
        Lookup::OtherMethods(methods) => {
            return AuthError::MethodNotAllowed {
                method: request.method().to_string(),
                path,
                allowed: methods
                    .iter()
                    .map(|method| method.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into_response();
        }
        Lookup::Unknown => {
            return AuthError::NoRule {
                method: request.method().to_string(),
                path,
            }
            .into_response();
        }
    };
    let principal = match resolve(&state.auth, request.headers()).await {
        Ok(principal) => principal,
        Err(_) if rule.access == Access::Public => None,
        Err(error) => return error.into_response(),
    };
    if principal.is_none()
        && let Access::RoleOrScraper(_) = rule.access
        && state.auth.is_scraper(&address)
    {
        request.extensions_mut().insert(AllowedScraper);
    }
    if let Some(principal) = principal {
        if principal.via() == Via::Session
            && !is_safe(request.method())
            && let Err(reason) = check_same_origin(&request, &state.auth.inner.config)
        {
            tracing::warn!(
                user = %principal.name,
                method = %request.method(),
                path = %path,
                %reason,
                "refused a cross-origin request made with a session cookie"
            );
            return AuthError::CrossOrigin { reason }.into_response();
        }
        request.extensions_mut().insert(principal);
    }
    match refusal(&rule, &request) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

/// The answer that refuses the request, or `None` when the caller the layer found (in the
/// request's extensions) may use the route.
pub(super) fn refusal(rule: &Rule, request: &Request) -> Option<Response> {
    let needed = match rule.access {
        Access::Public => return None,
        Access::Role(needed) => needed,
        Access::RoleOrScraper(_) if request.extensions().get::<AllowedScraper>().is_some() => {
            return None;
        }
        Access::RoleOrScraper(needed) => needed,
    };
    let Some(principal) = request.extensions().get::<Principal>() else {
        return Some(match rule.kind {
            Kind::Page if is_safe(request.method()) => login_redirect(request),
            Kind::Page | Kind::Api => AuthError::SignInRequired.into_response(),
        });
    };
    if principal.role.allows(needed) {
        return None;
    }
    let what = match rule.kind {
        Kind::Page => format!("the page {}", request.uri().path()),
        Kind::Api => format!("{} {}", rule.method, rule.path),
    };
    let error = AuthError::Forbidden {
        what,
        needed,
        name: principal.name.clone(),
        role: principal.role,
    };
    Some(match rule.kind {
        Kind::Page => PageRefusal(error).into_response(),
        Kind::Api => error.into_response(),
    })
}

/// Finds the caller: a live API token in `Authorization: Bearer`, else a live session cookie.
async fn resolve(auth: &Auth, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.split_once(' '))
            .filter(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
            })
            .map(|(_, token)| SecretToken::from_client(token.trim()))
            .ok_or(AuthError::MalformedAuthorization)?;
        let row = auth
            .inner
            .store
            .use_token(&token.hash())
            .await?
            .ok_or(AuthError::InvalidToken)?;
        return Ok(Some(Principal {
            role: stored_role(&row.role)?,
            name: row.name,
            credential: Credential::Token {
                token: row.id,
                owner: row.created_by_user,
            },
        }));
    }
    let jar = CookieJar::from_headers(headers);
    let name = session_cookie_name(is_https(headers, &auth.inner.config));
    let Some(cookie) = jar.get(name) else {
        return Ok(None);
    };
    let id = SecretToken::from_client(cookie.value());
    match auth.inner.store.session_user(&id.hash()).await? {
        Some(session) => Ok(Some(Principal {
            role: stored_role(&session.role)?,
            name: session.name,
            credential: Credential::Session {
                session: session.session_id,
                user: session.user_id,
            },
        })),
        None => Ok(None),
    }
}

fn stored_role(text: &str) -> Result<Role, AuthError> {
    text.parse()
        .map_err(|error| AuthError::Internal(format!("the database holds a bad role: {error}")))
}

/// The CSRF check for an unsafe request authenticated by the session cookie: allowed when the
/// browser says `Sec-Fetch-Site: same-origin`, or (browsers without Fetch Metadata) when
/// `Origin` is Baton's own origin. Refused when neither header is there: every browser Baton
/// supports sends at least one, and a script with the cookie can use a token instead.
///
/// Why this and not a CSRF token: both headers are set by the browser and cannot be forged by a
/// page, they need no state and no change to every form and server function, and SameSite=Lax
/// already keeps the cookie off cross-site subrequests; this check covers same-site attackers
/// (another app on a sibling subdomain) and older browsers.
pub fn check_same_origin(request: &Request, config: &AuthConfig) -> Result<(), String> {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site.as_bytes().eq_ignore_ascii_case(b"same-origin") {
            Ok(())
        } else {
            Err(format!(
                "Sec-Fetch-Site is {:?}; expected same-origin",
                String::from_utf8_lossy(site.as_bytes())
            ))
        };
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Err(
            "the request has neither an Origin nor a Sec-Fetch-Site header; expected a browser \
             request from Baton's own pages (scripts should use an API token)"
                .into(),
        );
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
    let Some(own) = own_origin(request.headers(), request.uri(), config) else {
        return Err("the request names no valid Host, so its origin cannot be checked".into());
    };
    if Origin::parse(&origin).is_ok_and(|origin| origin == own) {
        Ok(())
    } else {
        Err(format!(
            "Origin {origin:?} is not this server's origin {:?}",
            own.as_str()
        ))
    }
}

/// The lenient check for the login form (no session yet): refused only when the browser says
/// the request is cross-origin. The CLI and scripts send neither header and go on.
pub(super) fn check_login_origin(request: &Request, config: &AuthConfig) -> Result<(), String> {
    let headers = request.headers();
    if headers.contains_key("sec-fetch-site") || headers.contains_key(header::ORIGIN) {
        check_same_origin(request, config)
    } else {
        Ok(())
    }
}

/// Baton's own origin as the browser sees it: `[auth] public_origin` when set, else the
/// request's `Host` (or its URI's authority) over HTTPS or not (see [`is_https`]). `None` when
/// the request names no host, or one that is not a host.
pub fn own_origin(headers: &HeaderMap, uri: &Uri, config: &AuthConfig) -> Option<Origin> {
    if let Some(origin) = &config.public_origin {
        return Some(origin.clone());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()))?;
    Origin::of_host(is_https(headers, config), host).ok()
}

/// Whether the client reached Baton over HTTPS: always, by configuration, or as a TLS-ending
/// proxy says in `X-Forwarded-Proto`. (A client faking the header only makes its own cookie
/// `Secure`.)
pub fn is_https(headers: &HeaderMap, config: &AuthConfig) -> bool {
    match config.https {
        Https::Always => true,
        Https::FromForwardedProto => headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")),
    }
}

fn client_address(request: &Request, config: &AuthConfig) -> ClientAddress {
    if config.trust_forwarded_for
        && let Some(forwarded) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .rsplit(',')
                    .map(str::trim)
                    .find(|part| !part.is_empty())
            })
    {
        return ClientAddress(forwarded.to_owned());
    }
    ClientAddress(
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string()),
    )
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Lax (sent on top-level
/// navigations from other sites, so a link to a Baton page works, but never on their
/// subrequests or form posts), for the whole site, and over HTTPS Secure and `__Host-` named.
pub(super) fn session_cookie(value: String, secure: bool, max_age_secs: i64) -> Cookie<'static> {
    Cookie::build((session_cookie_name(secure), value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build()
}

/// A cookie that makes the browser forget the session cookie named `name`.
pub(super) fn cleared_cookie(name: &'static str, secure: bool) -> Cookie<'static> {
    let mut cookie = session_cookie(String::new(), secure, 0);
    cookie.set_name(name);
    cookie
}

/// `303` to `/login?next=<this page>`.
fn login_redirect(request: &Request) -> Response {
    let next = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    Redirect::to(&format!("/login?{}", query(&[("next", next)]))).into_response()
}

pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

/// Where a login may send the browser afterwards: a path on this site, never another origin.
pub(super) fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next.starts_with("//")
                && !next.starts_with("/\\")
                && !next.chars().any(char::is_control) =>
        {
            next
        }
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method("POST").uri("/api/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn same_origin_accepts_fetch_metadata_or_a_matching_origin_only() {
        let config = AuthConfig::default();
        let ok = |headers: &[(&str, &str)]| check_same_origin(&request(headers), &config);
        assert!(ok(&[("sec-fetch-site", "same-origin")]).is_ok());
        assert!(
            ok(&[
                ("host", "baton.example:8080"),
                ("origin", "http://baton.example:8080")
            ])
            .is_ok()
        );
        assert!(
            ok(&[
                ("host", "baton.example"),
                ("origin", "http://baton.example:80")
            ])
            .is_ok()
        );
        assert!(
            ok(&[
                ("host", "baton.example"),
                ("x-forwarded-proto", "https"),
                ("origin", "https://baton.example")
            ])
            .is_ok()
        );
        let refused = ok(&[
            ("sec-fetch-site", "same-site"),
            ("origin", "http://baton.example"),
        ]);
        assert!(refused.unwrap_err().contains("expected same-origin"));
        let refused = ok(&[("host", "baton.example"), ("origin", "http://evil.example")]);
        assert!(refused.unwrap_err().contains("http://evil.example"));
        let refused = ok(&[
            ("host", "baton.example"),
            ("origin", "https://baton.example"),
        ]);
        assert!(refused.is_err(), "scheme must match");
        assert!(
            ok(&[("host", "baton.example")])
                .unwrap_err()
                .contains("neither an Origin")
        );
        // IPv6 hosts, and the configured public origin however the browser spells it.
        assert!(ok(&[("host", "[::1]:8080"), ("origin", "http://[::1]:8080")]).is_ok());
        let behind_proxy = AuthConfig {
            public_origin: Some(Origin::parse("https://baton.example.com").unwrap()),
            ..AuthConfig::default()
        };
        let public = |headers: &[(&str, &str)]| check_same_origin(&request(headers), &behind_proxy);
        assert!(
            public(&[
                ("host", "10.0.0.5:8080"),
                ("origin", "HTTPS://Baton.Example.com:443")
            ])
            .is_ok()
        );
        assert!(
            public(&[
                ("host", "10.0.0.5:8080"),
                ("origin", "http://10.0.0.5:8080")
            ])
            .is_err()
        );
        assert!(public(&[("host", "baton.example.com"), ("origin", "null")]).is_err());
        // The login form is only refused when a browser says it is cross-origin.
        assert!(check_login_origin(&request(&[("host", "baton.example")]), &config).is_ok());
        assert!(
            check_login_origin(&request(&[("sec-fetch-site", "cross-site")]), &config).is_err()
        );
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(
            safe_next(Some("/deployments?service=api")),
            "/deployments?service=api"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil.example",
            "deployments",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let mut config = AuthConfig::default();
        let request = request(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        assert_eq!(client_address(&request, &config).0, "unknown");
        config.trust_forwarded_for = true;
        assert_eq!(client_address(&request, &config).0, "10.0.0.2");
    }
}
