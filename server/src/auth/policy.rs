//! The route policy: every route is registered with the access it needs, and a route that was
//! not is refused.
//!
//! [`Guarded`] wraps an axum `Router`: `.get(path, Role::Viewer, handler)` adds the route *and*
//! records `(GET, path, viewer)` in its [`Policy`], and gives the route a `route_layer` that
//! checks the caller. The auth layer (`Auth::protect`) looks every matched request up in the
//! policy by method and matched path, so it fails closed twice over:
//! - a route added to the router some other way (a plain `Router::route`) has no rule: the
//!   layer answers 403 for everyone and logs an error;
//! - a guarded route served without the auth layer finds no caller: 401 for everyone but
//!   public routes.
//!
//! Routes that others register (Leptos pages and server functions) are *declared*
//! ([`Guarded::declare`], [`Guarded::page`], [`Guarded::server_functions`]) so the layer knows
//! them too. Requests that match no route (static files, the not-found page) are public.

use std::collections::BTreeMap;
use std::fmt;

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};

use super::principal::Role;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: `/alive`, the login page and endpoints, webhooks (which check a signature).
    Public,
    /// A signed-in caller with at least this role.
    Role(Role),
    /// A signed-in caller with at least this role, or an anonymous client whose address is in
    /// the scrape allow-list (`[server] metrics_allow`): `GET /metrics`, for a Prometheus that
    /// holds no token.
    RoleOrScraper(Role),
}

impl Access {
    /// The role a signed-in caller needs; `None` for public routes.
    pub fn role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::Role(role) | Access::RoleOrScraper(role) => Some(role),
        }
    }
}

impl From<Role> for Access {
    fn from(role: Role) -> Self {
        Access::Role(role)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Role(role) => role.fmt(f),
            Access::RoleOrScraper(role) => write!(f, "{role} or an allow-listed address"),
        }
    }
}

/// What an anonymous or under-privileged caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JSON: 401 or 403 with `{"error": ...}`.
    Api,
    /// A page: an anonymous GET is redirected to `/login?next=<the page>`; a signed-in caller
    /// without the role gets a short 403 page.
    Page,
}

/// One route and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub method: Method,
    /// The route's pattern as registered (`/api/deployments/{id}`), as `MatchedPath` gives it.
    pub path: String,
    pub access: Access,
    pub kind: Kind,
}

impl Rule {
    /// The pattern with every `{param}` (and `{*rest}`) replaced by `1`: a concrete path that
    /// the route matches, for tests that call every route.
    pub fn example_path(&self) -> String {
        let mut out = String::with_capacity(self.path.len());
        let mut rest = self.path.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            match rest[start..].find('}') {
                Some(end) => {
                    out.push('1');
                    rest = &rest[start + end + 1..];
                }
                None => {
                    rest = &rest[start..];
                    break;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Whether the method changes something (the CSRF check applies, and tests expect viewers
    /// to be refused on every such route that needs more than viewer).
    pub fn is_mutating(&self) -> bool {
        !is_safe(&self.method)
    }
}

/// GET, HEAD and OPTIONS change nothing; everything else may.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Every known route with what it needs, keyed by path then method.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: BTreeMap<String, BTreeMap<String, Rule>>,
}

/// What the policy says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    Rule(&'a Rule),
    /// The path is known, not with this method: the methods it has.
    OtherMethods(Vec<Method>),
    /// No rule names the path.
    Unknown,
}

impl Policy {
    /// Adds a rule.
    ///
    /// # Panics
    /// If the same method and path was already declared with other access: two registrations
    /// disagreeing is a bug to find at start, not a question to settle at run time.
    pub fn insert(&mut self, rule: Rule) {
        let methods = self.rules.entry(rule.path.clone()).or_default();
        match methods.get(rule.method.as_str()) {
            Some(existing) if existing != &rule => panic!(
                "conflicting access rules for {} {}: {} ({:?}) and {} ({:?})",
                rule.method, rule.path, existing.access, existing.kind, rule.access, rule.kind
            ),
            _ => {
                methods.insert(rule.method.to_string(), rule);
            }
        }
    }

    /// The rule for `method` on the matched route pattern `path`; HEAD uses GET's rule.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Some(methods) = self.rules.get(path) else {
            return Lookup::Unknown;
        };
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        match methods.get(method.as_str()) {
            Some(rule) => Lookup::Rule(rule),
            None => {
                Lookup::OtherMethods(methods.values().map(|rule| rule.method.clone()).collect())
            }
        }
    }

    /// Every rule, by path then method.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values().flat_map(|methods| methods.values())
    }

    pub fn merge(&mut self, other: Policy) {
        for rule in other
            .rules
            .into_values()
            .flat_map(|methods| methods.into_values())
        {
            self.insert(rule);
        }
    }
}

/// A router whose every route carries the access it needs. See the module documentation.
pub struct Guarded<S = ()> {
    router: Router<S>,
    policy: Policy,
}

impl<S: Clone + Send + Sync + 'static> Default for Guarded<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Guarded<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            policy: Policy::default(),
        }
    }

    pub fn get<H, T>(self, path: &str, access: impl Into<Access>, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(
            Method::GET,
            path,
            access.into(),
            on(MethodFilter::GET, handler),
        )
    }

    pub fn post<H, T>(self, path: &str, access: impl Into<Access>, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(
            Method::POST,
            path,
            access.into(),
            on(MethodFilter::POST, handler),
        )
    }

    pub fn put<H, T>(self, path: &str, access: impl Into<Access>, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(
            Method::PUT,
            path,
            access.into(),
            on(MethodFilter::PUT, handler),
        )
    }

    pub fn patch<H, T>(self, path: &str, access: impl Into<Access>, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(
            Method::PATCH,
            path,
            access.into(),
            on(MethodFilter::PATCH, handler),
        )
    }

    pub fn delete<H, T>(self, path: &str, access: impl Into<Access>, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(
            Method::DELETE,
            path,
            access.into(),
            on(MethodFilter::DELETE, handler),
        )
    }

    /// Records a route that something else registers (a Leptos page or server function), so
    /// the auth layer lets it through with `access` instead of refusing it.
    pub fn declare(
        mut self,
        method: Method,
        path: &str,
        access: impl Into<Access>,
        kind: Kind,
    ) -> Self {
        self.policy.insert(Rule {
            method,
            path: path.to_owned(),
            access: access.into(),
            kind,
        });
        self
    }

    /// Declares a Leptos page (GET) at `path`.
    pub fn page(self, path: &str, access: impl Into<Access>) -> Self {
        self.declare(Method::GET, path, access, Kind::Page)
    }

    /// Declares every Leptos server function linked into this binary with the access
    /// [`super::SERVER_FUNCTIONS`] gives it. One missing from that table is not declared, so the
    /// layer refuses it (and the `every_server_function_has_a_role` test fails).
    pub fn server_functions(mut self) -> Self {
        for (path, method) in leptos::server_fn::axum::server_fn_paths() {
            match super::server_function_access(path) {
                Some(access) => {
                    self = self.declare(method, path, access, Kind::Api);
                }
                None => tracing::error!(
                    path,
                    "server function without a role in auth::SERVER_FUNCTIONS: it will be refused"
                ),
            }
        }
        self
    }

    pub fn merge(mut self, other: Guarded<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.policy.merge(other.policy);
        self
    }

    /// Gives the routes their state, keeping the rules: `Guarded<S2>` can merge into a router
    /// with any other state.
    pub fn with_state<S2>(self, state: S) -> Guarded<S2> {
        Guarded {
            router: self.router.with_state(state),
            policy: self.policy,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The router to serve (behind `Auth::protect`) and the rules the layer checks.
    pub fn into_parts(self) -> (Router<S>, Policy) {
        (self.router, self.policy)
    }

    fn add(mut self, method: Method, path: &str, access: Access, route: MethodRouter<S>) -> Self {
        let rule = Rule {
            method,
            path: path.to_owned(),
            access,
            kind: Kind::Api,
        };
        self.policy.insert(rule.clone());
        let rule = std::sync::Arc::new(rule);
        let route = route.route_layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let rule = rule.clone();
                async move { check_route(&rule, request, next).await }
            },
        ));
        self.router = self.router.route(path, route);
        self
    }
}

/// The route's own check, behind the auth layer's: the caller the layer found must have the
/// role. Without the layer there is never a caller, so every non-public route refuses.
async fn check_route(rule: &Rule, request: Request, next: Next) -> Response {
    match super::middleware::refusal(rule, &request) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Method, path: &str, access: Access) -> Rule {
        Rule {
            method,
            path: path.into(),
            access,
            kind: Kind::Api,
        }
    }

    #[test]
    fn example_paths_fill_every_parameter() {
        let r = rule(
            Method::POST,
            "/api/deployments/{id}/{action}",
            Access::Public,
        );
        assert_eq!(r.example_path(), "/api/deployments/1/1");
        assert_eq!(
            rule(Method::GET, "/hooks/{*rest}", Access::Public).example_path(),
            "/hooks/1"
        );
        assert_eq!(rule(Method::GET, "/", Access::Public).example_path(), "/");
    }

    #[test]
    fn lookup_knows_methods_paths_and_head() {
        let mut policy = Policy::default();
        policy.insert(rule(Method::GET, "/api/users", Role::Admin.into()));
        policy.insert(rule(Method::POST, "/api/users", Role::Admin.into()));
        assert!(matches!(
            policy.lookup(&Method::HEAD, "/api/users"),
            Lookup::Rule(r) if r.method == Method::GET
        ));
        assert_eq!(
            policy.lookup(&Method::DELETE, "/api/users"),
            Lookup::OtherMethods(vec![Method::GET, Method::POST])
        );
        assert_eq!(policy.lookup(&Method::GET, "/api/other"), Lookup::Unknown);
    }

    #[test]
    #[should_panic(expected = "conflicting access rules for GET /x")]
    fn conflicting_rules_panic_at_start() {
        let mut policy = Policy::default();
        policy.insert(rule(Method::GET, "/x", Role::Viewer.into()));
        policy.insert(rule(Method::GET, "/x", Access::Public));
    }
}
