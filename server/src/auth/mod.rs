//! Who may do what: users with argon2id passwords, server-side sessions, API tokens, roles, the
//! route policy, CSRF protection, login throttling, security headers and the audit log.
//!
//! Choices, and why:
//! - **Roles** are ordered: viewer < deployer < admin ([`Role`]). Every route is registered with
//!   the role it needs through [`Guarded`]; the layer [`Auth::protect`] refuses a matched route
//!   that has no rule, so forgetting a role fails closed.
//! - **Sessions** are rows in SQLite (they survive restarts and can be revoked); the browser
//!   holds a random 256-bit id in the `baton_session` cookie and Baton stores only its SHA-256.
//!   The cookie is HttpOnly, `SameSite=Lax` (Strict would drop the cookie when someone follows a
//!   link to a deployment from chat or mail, and the CSRF check below already covers what Strict
//!   would add), `Secure` when the request came over HTTPS, `Path=/`; a session lasts
//!   [`AuthConfig::session_ttl`] (12 hours by default) and ends at logout or a password change.
//!   Over HTTPS the cookie is `__Host-baton_session`, and only that name is read there: the
//!   prefix makes browsers refuse the cookie from a sibling subdomain or without `Secure`, so
//!   another site under the same domain cannot plant a session of its choosing (accepting the
//!   plain name too would undo that).
//! - **API tokens** are `baton_` + 256 random bits, shown once, stored as SHA-256, checked on
//!   every request (revocation is immediate). A token belongs to the user who created it (or
//!   whose token created it); deleting that user revokes it. Tokens made with the `baton`
//!   command belong to no user.
//! - **Event streams** ([`StreamPass`]) end as soon as their session or token stops granting
//!   access, and each caller may hold [`AuthConfig::streams_per_caller`] at once.
//! - **Password checks** run at most two at once ([`PasswordChecks`](crate::settings::PasswordChecks)); more wait in a short line,
//!   beyond it a login gets 503 with `Retry-After` (argon2 takes 19 MiB per check).
//! - **CSRF**: unsafe requests authenticated by the cookie must carry `Sec-Fetch-Site:
//!   same-origin` or an `Origin` equal to Baton's own (see
//!   [`middleware::check_same_origin`]); no CSRF token.
//! - **Pages**: an anonymous GET of a page is redirected (303) to `/login?next=<the page>`;
//!   APIs and server functions answer 401 JSON.
//! - **Throttling**: a login is refused with 429 and `Retry-After` once its user name has 5
//!   failures, or its client address 20, within 15 minutes ([`Throttle`]); the right password
//!   is refused too while throttled. Each attempt is recorded *before* its password is checked
//!   (and forgotten if it succeeds), so attempts sent in parallel get no more checks than the
//!   limit. The failures are rows in SQLite, so a restart does not reset them. A success clears
//!   the failures of that user name (not of the address). Refused attempts are logged, not
//!   audited (an attacker could otherwise fill the audit log). Anyone can lock a user name out
//!   this way for 15 minutes; API tokens keep working meanwhile.

pub mod accounts;
mod error;
mod headers;
pub mod middleware;
mod page_context;
mod password_gate;
mod policy;
mod principal;
pub(crate) mod routes;
mod secret;
mod streams;

use std::sync::Arc;

use axum::Router;

pub use error::{AuthError, PageRefusal};
pub use headers::{SecurityHeaders, content_security_policy, security_headers};
pub use middleware::{SECURE_SESSION_COOKIE, SESSION_COOKIE, own_origin};
pub use page_context::{client_address, principal, provide_request_context};
pub use policy::{Access, Guarded, Kind, Lookup, Policy, Rule, is_safe};
pub use principal::{
    Actor, ActorKind, ClientAddress, Credential, Principal, Role, Via, check_name,
};
pub use secret::{
    HashError, Password, SecretToken, hash_password, verify_against_nobody, verify_password,
};
pub use streams::StreamPass;

use crate::settings::AuthConfig;
use crate::store::Store;
use crate::store::auth::{NewAudit, ThrottleLimits};

/// What each Leptos server function (`app/src`) needs, by path. The layer refuses a server
/// function missing here, and the `every_server_function_has_a_role` test fails until it is
/// added.
pub const SERVER_FUNCTIONS: &[(&str, Access)] = &[
    // Says who is signed in, or that nobody is: the UI asks it on every page, the login page too.
    ("/rpc/current_user", Access::Public),
    ("/rpc/list_services", Access::Role(Role::Viewer)),
    ("/rpc/fleet_status", Access::Role(Role::Viewer)),
    ("/rpc/list_deployments", Access::Role(Role::Viewer)),
    ("/rpc/get_deployment", Access::Role(Role::Viewer)),
    ("/rpc/get_traffic", Access::Role(Role::Viewer)),
    ("/rpc/deploy", Access::Role(Role::Deployer)),
    ("/rpc/control_deployment", Access::Role(Role::Deployer)),
    ("/rpc/rollback_service", Access::Role(Role::Deployer)),
    // Which replica answers and which one leads (the top bar).
    ("/rpc/replica_status", Access::Role(Role::Viewer)),
    // The setup shows the secret's variable name, never its value.
    ("/rpc/webhook_setup", Access::Role(Role::Viewer)),
    ("/rpc/list_deliveries", Access::Role(Role::Viewer)),
    ("/rpc/replay_delivery", Access::Role(Role::Admin)),
    // The admin pages: users, tokens and the audit log.
    ("/rpc/list_users", Access::Role(Role::Admin)),
    ("/rpc/add_user", Access::Role(Role::Admin)),
    ("/rpc/delete_user", Access::Role(Role::Admin)),
    ("/rpc/list_tokens", Access::Role(Role::Admin)),
    ("/rpc/create_token", Access::Role(Role::Admin)),
    ("/rpc/revoke_token", Access::Role(Role::Admin)),
    ("/rpc/list_audit", Access::Role(Role::Admin)),
    // The notification attempts, on the audit page.
    ("/rpc/list_notifications", Access::Role(Role::Admin)),
];

/// What [`SERVER_FUNCTIONS`] says the server function at `path` needs.
pub fn server_function_access(path: &str) -> Option<Access> {
    SERVER_FUNCTIONS
        .iter()
        .find(|(known, _)| *known == path)
        .map(|(_, access)| *access)
}

/// Auth's shared state; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: AuthConfig,
    password_gate: password_gate::PasswordGate,
    streams: streams::OpenStreams,
    /// Client addresses that may use [`Access::RoleOrScraper`] routes without signing in.
    scrapers: Vec<ipnet::IpNet>,
}

impl Auth {
    pub fn new(store: Store, config: AuthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                password_gate: password_gate::PasswordGate::new(config.password_checks),
                streams: Default::default(),
                config,
                scrapers: Vec::new(),
            }),
        }
    }

    /// Lets clients from `blocks` use [`Access::RoleOrScraper`] routes (`GET /metrics`)
    /// without signing in. The address is the one the throttle and the audit log see: with
    /// `trust_forwarded_for`, the proxy's `X-Forwarded-For`, so a proxy on an allowed address
    /// does not open the route to everyone behind it.
    ///
    /// # Panics
    /// If called once this `Auth` is shared (cloned): the list is set while building Baton.
    pub fn allowing_scrapers(mut self, blocks: Vec<ipnet::IpNet>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("the scrape allow-list is set before Auth is shared")
            .scrapers = blocks;
        self
    }

    /// Whether `address` is in the scrape allow-list. An IPv4 client of a dual-stack listener
    /// (`::ffff:127.0.0.1`) counts as its IPv4 address.
    pub fn is_scraper(&self, address: &ClientAddress) -> bool {
        let Ok(ip) = address.as_str().parse::<std::net::IpAddr>() else {
            return false;
        };
        let ip = ip.to_canonical();
        self.inner.scrapers.iter().any(|block| block.contains(&ip))
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Auth's own endpoints: `/auth/login`, `/auth/logout`, `/api/me`, `/api/users`,
    /// `/api/tokens`, `/api/audit`.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Guarded<S> {
        routes::routes().with_state(self.clone())
    }

    /// Puts the auth layer around `router` (which should include every route, so call it
    /// after the last `route`/`merge`/`fallback`): every matched request is checked against
    /// `policy`. Serve the router with `into_make_service_with_connect_info::<SocketAddr>()` so
    /// the throttle and the audit log see client addresses.
    pub fn protect<S: Clone + Send + Sync + 'static>(
        &self,
        router: Router<S>,
        policy: Policy,
    ) -> Router<S> {
        let state = Arc::new(middleware::LayerState {
            auth: self.clone(),
            policy,
        });
        router.layer(axum::middleware::from_fn_with_state(
            state,
            middleware::authenticate,
        ))
    }

    /// Appends to the audit log. A failure to write is logged, not returned: the action it
    /// records has already happened.
    pub async fn audit(&self, entry: Audit<'_>) {
        record(&self.inner.store, entry).await;
    }

    fn throttle_limits(&self) -> ThrottleLimits {
        let throttle = self.inner.config.throttle;
        ThrottleLimits {
            per_name: i64::from(throttle.per_name),
            per_address: i64::from(throttle.per_address),
            window_ms: throttle.window.as_millis() as i64,
        }
    }
}

/// One audit line: who did what to what, from where.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    pub actor: &'a Actor,
    /// `login`, `login_failed`, `logout`, `user_create`, `user_delete`, `user_password`,
    /// `token_create`, `token_revoke`, `deploy`, `pause`, `resume`, `abort`, `approve`,
    /// `approve_refused`, `promote`, `rollback`,
    /// `webhook_replay`, ...
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub address: Option<&'a ClientAddress>,
    pub detail: Option<&'a str>,
}

/// Appends to the audit log through `store` (for callers without an [`Auth`]: the CLI, the
/// API handlers through `AppState::store`). Failures are logged.
pub async fn record(store: &Store, entry: Audit<'_>) {
    let result = store
        .record_audit(&NewAudit {
            actor: &entry.actor.name,
            actor_kind: entry.actor.kind.as_str(),
            action: entry.action,
            target: entry.target,
            address: entry.address.map(ClientAddress::as_str),
            detail: entry.detail,
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, action = entry.action, actor = %entry.actor.name, "cannot write the audit log");
    }
}

/// Hashes a password off the async threads.
pub async fn hash_password_blocking(password: Password) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|error| AuthError::Internal(format!("password hashing panicked: {error}")))?
        .map_err(|error| AuthError::Internal(error.to_string()))
}
