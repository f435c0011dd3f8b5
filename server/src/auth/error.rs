//! Why a request was refused. The answer each refusal gets (status, headers, a body that hides
//! internal errors) is decided in `http_error.rs`, with every other error's. No message here
//! ever includes a password or token: the variants carry no secret to print.

use super::principal::Role;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "sign-in required: send `Authorization: Bearer <token>` (an API token) or sign in at /login"
    )]
    SignInRequired,
    #[error(
        "the API token is not valid: it is unknown or has been revoked; expected `Authorization: Bearer <token>` with a live token"
    )]
    InvalidToken,
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    MalformedAuthorization,
    #[error("wrong user name or password")]
    WrongCredentials,
    #[error("{what} needs the {needed} role; {name} is a {role}")]
    Forbidden {
        what: String,
        needed: Role,
        name: String,
        role: Role,
    },
    #[error("cross-origin request refused: {reason}")]
    CrossOrigin { reason: String },
    #[error("too many failed logins; try again in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("Baton is busy checking other sign-ins' passwords; try again in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error(
        "{name} already has {limit} event streams open, the most one user or token may hold: close one (a browser tab showing Baton) first"
    )]
    TooManyStreams { name: String, limit: u32 },
    #[error(
        "no access rule covers {method} {path}: every route must be registered with the role it needs"
    )]
    NoRule { method: String, path: String },
    #[error("{method} is not allowed on {path}: expected {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A refusal a browser gets as a small HTML page (it asked for a page), where an API caller
/// gets JSON.
#[derive(Debug)]
pub struct PageRefusal(pub AuthError);
