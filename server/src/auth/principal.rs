//! Who is asking: roles, the authenticated [`Principal`], the actor an audit line names, and
//! the client's address.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::AuthError;

/// The role type is shared with the UI (which hides what a caller may not do).
pub use app::model::Role;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The session cookie set at login (a browser). Unsafe requests also pass the CSRF check.
    Session,
    /// `Authorization: Bearer <token>` (the CLI, CI, scripts).
    Token,
}

/// Exactly which session or token the caller proved itself with, so that a long request (an
/// event stream) can ask later whether it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The session with this row id, of the user with this id.
    Session { session: i64, user: i64 },
    /// The API token with this row id, and the user it belongs to (`None`: made with the
    /// `baton` command).
    Token { token: i64, owner: Option<i64> },
}

impl Credential {
    pub fn via(self) -> Via {
        match self {
            Credential::Session { .. } => Via::Session,
            Credential::Token { .. } => Via::Token,
        }
    }

    /// The user account behind the credential: the signed-in user, or the token's owner.
    pub fn user(self) -> Option<i64> {
        match self {
            Credential::Session { user, .. } => Some(user),
            Credential::Token { owner, .. } => owner,
        }
    }
}

/// The authenticated caller, put in the request's extensions by the auth layer (and in Leptos
/// context for pages and server functions). A user's name for a session, the token's name for
/// a token. Serialized (for `/api/me`) as `{"name", "role", "via"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    #[serde(rename = "via", serialize_with = "serialize_via")]
    #[schema(value_type = Via)]
    pub credential: Credential,
}

fn serialize_via<S: serde::Serializer>(
    credential: &Credential,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&credential.via(), serializer)
}

impl Principal {
    pub fn via(&self) -> Via {
        self.credential.via()
    }

    /// The actor an audit line names for this caller.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.name.clone(),
            kind: match self.via() {
                Via::Session => ActorKind::User,
                Via::Token => ActorKind::Token,
            },
            user: self.credential.user(),
        }
    }
}

/// Handlers behind a role take the caller as an argument; without one the request is refused
/// with 401 (which the layer has already done for every route with a role).
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AuthError::SignInRequired)
    }
}

/// What kind of actor an audit line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A person signed in with a password (or the name tried at a failed login).
    User,
    /// An API token, named by its name.
    Token,
    /// A git host's webhook delivery.
    Webhook,
    /// The `baton` command working directly on the database.
    Cli,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::Webhook => "webhook",
            ActorKind::Cli => "cli",
        }
    }
}

/// Who an audit line says acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub kind: ActorKind,
    /// The id of the user account acting (directly, or through a token that belongs to it):
    /// the API tokens it creates belong to that user and are revoked when it is deleted.
    pub user: Option<i64>,
}

impl Actor {
    /// The `baton` command on the server's own machine.
    pub fn cli() -> Self {
        Self {
            name: "cli".into(),
            kind: ActorKind::Cli,
            user: None,
        }
    }

    /// A webhook delivery, named as the delivery log names it (e.g. `github delivery 72d3…`).
    pub fn webhook(delivery: impl Into<String>) -> Self {
        Self {
            name: delivery.into(),
            kind: ActorKind::Webhook,
            user: None,
        }
    }

    /// A person (or the name tried at a failed login), with the user's id if known.
    pub fn user(name: impl Into<String>, user: Option<i64>) -> Self {
        Self {
            name: name.into(),
            kind: ActorKind::User,
            user,
        }
    }
}

/// The client's address as Baton saw it: the peer of the TCP connection, or (only with
/// `AuthConfig::trust_forwarded_for`) the last address a proxy added to `X-Forwarded-For`;
/// `unknown` when the server was not started with connect info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress(pub String);

impl ClientAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddress>()
            .cloned()
            .unwrap_or_else(|| ClientAddress("unknown".into())))
    }
}

/// Checks a user or token name: 1 to 64 characters, letters, digits, `.`, `_`, `@`, `-`,
/// starting with a letter or digit (so it reads well in the audit log and on the command line).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: expected 1 to 64 letters, digits, '.', '_', '@' or '-', \
             starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_privilege() {
        assert!(Role::Admin.allows(Role::Deployer));
        assert!(Role::Deployer.allows(Role::Deployer));
        assert!(!Role::Viewer.allows(Role::Deployer));
        assert!(!Role::Deployer.allows(Role::Admin));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("expected viewer, deployer or admin")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("user", "alice").is_ok());
        assert!(check_name("token", "ci.deploy-bot@prod_1").is_ok());
        for bad in ["", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            let error = check_name("user", bad).unwrap_err();
            assert!(error.contains("expected 1 to 64"), "{error}");
        }
    }
}
