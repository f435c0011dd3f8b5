//! Who is signed in, as the UI sees it, and the admin's views of users, API tokens and the audit
//! log, with the server functions behind them.
//!
//! The caller is asked for once per page load ([`provide_caller`], at the top of the app) and
//! shared through context. Pages await it in the same `Suspend` as their own data, so the server
//! already renders a page without the buttons its caller may not press. Hiding them is a
//! courtesy: the server checks the role of every request regardless.
//!
//! The server provides an [`Accounts`] context ([`AccountSource`]) for the admin pages; the UI
//! never sees the database, a password hash or a token's hash.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fleet::current_user;
use crate::model::{Caller, NotificationAttempt, Role};

/// The page's one answer to `current_user`, shared by every component.
#[derive(Clone, Copy)]
struct CallerResource(Resource<Option<Caller>>);

/// Asks the server once who is signed in; call at the top of the app.
pub fn provide_caller() {
    // An error (Baton unreachable, an expired session) reads as "nobody": the UI then offers
    // less, never more, and the server refuses what is left if it must.
    let caller = Resource::new(|| (), |_| async { current_user().await.ok().flatten() });
    provide_context(CallerResource(caller));
}

/// The signed-in caller, to `.await` inside a `Suspend` (so the server waits for it) or to read
/// with `.get()` where a page already awaited it.
pub fn use_caller() -> Resource<Option<Caller>> {
    match use_context::<CallerResource>() {
        Some(CallerResource(caller)) => caller,
        None => Resource::new(|| (), |_| async { None }),
    }
}

/// Whether `caller` may do what `needed` allows.
pub fn allows(caller: Option<&Caller>, needed: Role) -> bool {
    caller.is_some_and(|caller| caller.role.allows(needed))
}

/// One line of the audit log. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    /// A user's name, a token's name, a webhook delivery, or `cli`.
    pub actor: String,
    /// `user`, `token`, `webhook` or `cli`.
    pub actor_kind: String,
    /// `login`, `login_failed`, `logout`, `deploy`, `pause`, `resume`, `abort`, `approve`,
    /// `approve_refused`, `promote`, `rollback`,
    /// `webhook_replay`, `user_create`, `user_delete`, `user_password`, `token_create`,
    /// `token_revoke`, …
    pub action: String,
    pub target: Option<String>,
    /// The client's address as Baton saw it; `None` for the command line.
    pub address: Option<String>,
    pub detail: Option<String>,
}

/// Which audit lines to show: empty filters match everything; `before` is an entry id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

/// One page of the audit log, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// A user who signs in to the web UI (never the password or its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
}

/// An API token (never the token or its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A token just created, with the secret itself: the only time anyone sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub token: TokenView,
    pub secret: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What the server provides to the admin pages' server functions, through Leptos context.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct Accounts(pub std::sync::Arc<dyn AccountSource>);

/// Users, tokens and the audit log, acting as the caller of the server function being served
/// (the server knows who that is and writes each change to the audit log with their name).
/// Errors are messages meant for the operator: what was wrong and what was expected, never a
/// secret.
#[cfg(feature = "ssr")]
#[async_trait::async_trait]
pub trait AccountSource: Send + Sync + 'static {
    async fn audit(&self, filter: AuditFilter) -> Result<AuditPage, String>;
    async fn users(&self) -> Result<Vec<UserView>, String>;
    async fn add_user(
        &self,
        name: String,
        role: Role,
        password: String,
    ) -> Result<UserView, String>;
    /// Deletes the user and ends their sessions; refuses to delete the last admin.
    async fn delete_user(&self, name: String) -> Result<(), String>;
    async fn tokens(&self) -> Result<Vec<TokenView>, String>;
    /// Refuses a role above the caller's own.
    async fn create_token(&self, name: String, role: Role) -> Result<NewToken, String>;
    async fn revoke_token(&self, id: i64) -> Result<(), String>;
    /// The newest attempts to send notifications (`[[notify]]`), newest first.
    async fn notifications(&self) -> Result<Vec<NotificationAttempt>, String>;
}

#[cfg(feature = "ssr")]
fn accounts() -> Result<std::sync::Arc<dyn AccountSource>, ServerFnError> {
    use_context::<Accounts>()
        .map(|Accounts(source)| source)
        .ok_or_else(|| ServerFnError::new("user management is not available on this server"))
}

/// One page of the audit log, newest first.
#[server(prefix = "/rpc", endpoint = "list_audit")]
pub async fn list_audit(filter: AuditFilter) -> Result<AuditPage, ServerFnError> {
    accounts()?.audit(filter).await.map_err(ServerFnError::new)
}

/// The newest notification attempts, newest first.
#[server(prefix = "/rpc", endpoint = "list_notifications")]
pub async fn list_notifications() -> Result<Vec<NotificationAttempt>, ServerFnError> {
    accounts()?
        .notifications()
        .await
        .map_err(ServerFnError::new)
}

/// Every user, by name.
#[server(prefix = "/rpc", endpoint = "list_users")]
pub async fn list_users() -> Result<Vec<UserView>, ServerFnError> {
    accounts()?.users().await.map_err(ServerFnError::new)
}

/// Adds a user who signs in with `password`.
#[server(prefix = "/rpc", endpoint = "add_user")]
pub async fn add_user(
    name: String,
    role: Role,
    password: String,
) -> Result<UserView, ServerFnError> {
    accounts()?
        .add_user(name, role, password)
        .await
        .map_err(ServerFnError::new)
}

/// Deletes a user and ends their sessions.
#[server(prefix = "/rpc", endpoint = "delete_user")]
pub async fn delete_user(name: String) -> Result<(), ServerFnError> {
    accounts()?
        .delete_user(name)
        .await
        .map_err(ServerFnError::new)
}

/// Every API token, revoked ones too.
#[server(prefix = "/rpc", endpoint = "list_tokens")]
pub async fn list_tokens() -> Result<Vec<TokenView>, ServerFnError> {
    accounts()?.tokens().await.map_err(ServerFnError::new)
}

/// Creates an API token; the answer holds the token itself, shown this once.
#[server(prefix = "/rpc", endpoint = "create_token")]
pub async fn create_token(name: String, role: Role) -> Result<NewToken, ServerFnError> {
    accounts()?
        .create_token(name, role)
        .await
        .map_err(ServerFnError::new)
}

/// Revokes an API token: it stops working at once.
#[server(prefix = "/rpc", endpoint = "revoke_token")]
pub async fn revoke_token(id: i64) -> Result<(), ServerFnError> {
    accounts()?
        .revoke_token(id)
        .await
        .map_err(ServerFnError::new)
}

/// Who is signed in, with their role, and the Sign out button: a plain form, so it works before
/// the wasm loads too.
#[component]
pub fn SignedIn(caller: Caller) -> impl IntoView {
    let role = caller.role.as_str();
    view! {
        <div class="signed-in" data-testid="signed-in">
            <span class="who">
                <span class="visually-hidden">"Signed in as "</span>
                <strong data-testid="caller-name">{caller.name.clone()}</strong>
                " "
                <span class=format!("role role-{role}") data-testid="caller-role">
                    {role}
                </span>
            </span>
            <form method="post" action="/auth/logout" class="sign-out">
                <button type="submit">"Sign out"</button>
            </form>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_they_include() {
        let caller = |role| Caller {
            name: "ada".into(),
            role,
        };
        assert!(!allows(None, Role::Viewer));
        assert!(allows(Some(&caller(Role::Viewer)), Role::Viewer));
        assert!(!allows(Some(&caller(Role::Viewer)), Role::Deployer));
        assert!(allows(Some(&caller(Role::Deployer)), Role::Deployer));
        assert!(!allows(Some(&caller(Role::Deployer)), Role::Admin));
        assert!(allows(Some(&caller(Role::Admin)), Role::Deployer));
    }

    #[test]
    fn a_new_token_never_prints_its_secret() {
        let token = NewToken {
            token: TokenView {
                id: 1,
                name: "ci".into(),
                role: Role::Deployer,
                created_by: "ada".into(),
                created_at: 0,
                last_used_at: None,
                revoked_at: None,
            },
            secret: "baton_s3cr3t".into(),
        };
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }
}
