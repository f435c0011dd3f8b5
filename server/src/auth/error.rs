//! Why a request was refused, and the answer each refusal gets.
//!
//! This maps auth's own errors to statuses (the JSON body has the API's `{"error": "..."}`
//! shape); `api.rs` remains the place for everything else. No message here ever includes a
//! password or token: the variants carry no secret to print.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

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

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::SignInRequired
            | AuthError::InvalidToken
            | AuthError::MalformedAuthorization
            | AuthError::WrongCredentials => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. }
            | AuthError::CrossOrigin { .. }
            | AuthError::NoRule { .. } => StatusCode::FORBIDDEN,
            AuthError::Throttled { .. } | AuthError::TooManyStreams { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AuthError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AuthError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Conflict(_) => StatusCode::CONFLICT,
            AuthError::Store(_) | AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the caller is told: the message, except that a 500 says nothing internal.
    pub fn public_message(&self) -> String {
        match self {
            AuthError::Store(_) | AuthError::Internal(_) => {
                "internal error; the server log has the details".into()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            AuthError::Store(_) | AuthError::Internal(_) => {
                tracing::error!(error = %self, "auth failed on the server's side");
            }
            AuthError::NoRule { .. } => {
                tracing::error!(error = %self, "refused a request to a route without an access rule");
            }
            _ => {}
        }
        let mut response =
            (status, Json(json!({ "error": self.public_message() }))).into_response();
        let headers = response.headers_mut();
        match &self {
            AuthError::SignInRequired
            | AuthError::InvalidToken
            | AuthError::MalformedAuthorization => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"baton\""),
                );
            }
            AuthError::Throttled { retry_after_secs } | AuthError::Busy { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            AuthError::MethodNotAllowed { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(allowed) {
                    headers.insert(header::ALLOW, value);
                }
            }
            _ => {}
        }
        response
    }
}
