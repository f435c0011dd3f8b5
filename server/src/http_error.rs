//! Every error Baton answers over HTTP, and the status each one gets.
//!
//! Invariant: this is the one place that maps errors to HTTP statuses. Handlers return typed
//! errors ([`ApiError`] and what converts into it, [`AuthError`]); none picks an error status
//! itself. The one exception is the webhook protocol's answers, which are not errors of the API
//! but what git hosts act on (retry on 5xx) and what the delivery log records: their table is
//! `webhooks/answer.rs`.
//!
//! A 500's body says nothing internal; the log says all. Every error body is JSON
//! `{"error": "..."}` that says what was wrong and what was expected, except `/alive`'s plain text
//! (for load balancers) and the HTML page a signed-in browser gets for a page it may not see.

use app::model::{ErrorBody, UnknownWord};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{AuthError, PageRefusal};
use crate::fleet::{DeployError, LogError};
use crate::store::StoreError;
use crate::webhooks::ReplayError;

/// What a caller is told instead of an internal error's details.
const INTERNAL: &str = "internal error; the server log has the details";

/// The status of a request that took longer than the router's timeout.
pub const TIMED_OUT: StatusCode = StatusCode::REQUEST_TIMEOUT;

/// An error answer of the JSON API: `{"error": "..."}` with the status its cause maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What is wrong with the request itself, found before Baton looks anything up.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The query string does not fit the route's.
    #[error("{rejection}; expected {expected}")]
    Query {
        rejection: String,
        /// The query the route takes, such as `?before=ID&limit=N`.
        expected: &'static str,
    },
    /// The body is not the JSON the route takes.
    #[error("{}; expected a JSON body such as {example}", .rejection.body_text())]
    Json {
        rejection: JsonRejection,
        example: &'static str,
    },
    /// An id in the path is not a number.
    #[error("invalid {what} id {text:?}: expected a number")]
    Id { what: &'static str, text: String },
    #[error("Last-Event-ID must be an event id (a number)")]
    LastEventId,
    /// `/api/deployments/{id}/{action}` with an action that is not one.
    #[error("unknown action {0:?}: expected pause, resume, abort, approve or promote")]
    UnknownAction(String),
    /// A word in the query that is none of its vocabulary's (a rollout status, ...).
    #[error("{0}")]
    UnknownWord(UnknownWord),
}

impl ApiError {
    /// What the caller is told (the UI's server functions show it too). Internal errors are
    /// logged here and reported without detail.
    pub fn message(&self) -> String {
        self.answer().1
    }

    fn answer(&self) -> (StatusCode, String) {
        let status = match self {
            ApiError::Deploy(error) => match error {
                DeployError::UnknownService(_) | DeployError::UnknownDeployment(_) => {
                    StatusCode::NOT_FOUND
                }
                DeployError::InvalidVersion(_) => StatusCode::UNPROCESSABLE_ENTITY,
                DeployError::Conflict(_) | DeployError::NothingToRollBackTo(_) => {
                    StatusCode::CONFLICT
                }
                DeployError::SelfApproval { .. } => StatusCode::FORBIDDEN,
                DeployError::Store(error) => return internal(error),
            },
            ApiError::Auth(error) => return (auth_status(error), auth_message(error)),
            ApiError::Store(error) => return internal(error),
            ApiError::Replay(error) => match error {
                ReplayError::UnknownDelivery(_) => StatusCode::NOT_FOUND,
                ReplayError::NotReplayable(_) => StatusCode::CONFLICT,
                ReplayError::Store(error) => return internal(error),
            },
            ApiError::Log(error) => match error {
                LogError::UnknownService(_) | LogError::UnknownBackend { .. } => {
                    StatusCode::NOT_FOUND
                }
                // The runtime's host did not answer: a gateway's failure, not the caller's.
                LogError::Unreadable(_) => StatusCode::BAD_GATEWAY,
            },
            ApiError::Request(error) => match error {
                RequestError::Json { rejection, .. } => rejection.status(),
                RequestError::Query { .. }
                | RequestError::Id { .. }
                | RequestError::LastEventId
                | RequestError::UnknownWord(_) => StatusCode::BAD_REQUEST,
                RequestError::UnknownAction(_) => StatusCode::NOT_FOUND,
            },
        };
        (status, self.to_string())
    }
}

fn internal(error: &StoreError) -> (StatusCode, String) {
    tracing::error!(%error, "database error while answering the API");
    (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL.to_owned())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Auth(error) = self {
            return error.into_response();
        }
        let (status, message) = self.answer();
        (status, Json(ErrorBody { error: message })).into_response()
    }
}

fn auth_status(error: &AuthError) -> StatusCode {
    match error {
        AuthError::SignInRequired
        | AuthError::InvalidToken
        | AuthError::MalformedAuthorization
        | AuthError::WrongCredentials => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden { .. } | AuthError::CrossOrigin { .. } | AuthError::NoRule { .. } => {
            StatusCode::FORBIDDEN
        }
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
fn auth_message(error: &AuthError) -> String {
    match error {
        AuthError::Store(_) | AuthError::Internal(_) => INTERNAL.into(),
        other => other.to_string(),
    }
}

/// Auth's refusals, with the headers each status calls for: `WWW-Authenticate` on a 401 for a
/// missing or bad credential, `Retry-After` while throttled or busy, `Allow` on a 405.
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = auth_status(&self);
        match &self {
            AuthError::Store(_) | AuthError::Internal(_) => {
                tracing::error!(error = %self, "auth failed on the server's side");
            }
            AuthError::NoRule { .. } => {
                tracing::error!(error = %self, "refused a request to a route without an access rule");
            }
            _ => {}
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: auth_message(&self),
            }),
        )
            .into_response();
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

/// A page refused to a signed-in browser: a small HTML page with the reason.
impl IntoResponse for PageRefusal {
    fn into_response(self) -> Response {
        let message = escape_html(&self.0.to_string());
        let body = format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Forbidden · Baton</title></head>\
             <body><main><h1>Forbidden</h1><p>{message}</p><p><a href=\"/\">Back to Baton</a></p></main></body></html>"
        );
        (
            auth_status(&self.0),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response()
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/alive` when the database does not answer: 503 in plain text, so a balancer in front of
/// Baton takes it out of rotation.
#[derive(Debug)]
pub struct DatabaseUnavailable(pub StoreError);

impl IntoResponse for DatabaseUnavailable {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "health check: the database does not answer");
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

/// Why this replica cannot serve now (`/ready`'s 503).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the database does not answer")]
    Database(#[source] StoreError),
    #[error("the database did not answer within {}s", .0.as_secs())]
    DatabaseSilent(std::time::Duration),
}

/// `/ready`'s refusal: why, and the replica that refused.
#[derive(Debug)]
pub struct Unready {
    pub why: NotReady,
    pub replica: app::model::ReplicaView,
}

/// `/ready` when this replica cannot serve: 503 with `{"error": why, "replica": {...}}`, so a
/// balancer takes it out of rotation and a person sees which replica said so. The database's
/// own error is logged, not sent.
impl IntoResponse for Box<Unready> {
    fn into_response(self) -> Response {
        match &self.why {
            NotReady::Database(error) => {
                tracing::warn!(%error, "not ready: the database does not answer");
            }
            NotReady::DatabaseSilent(timeout) => {
                tracing::warn!(?timeout, "not ready: the database did not answer in time");
            }
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": self.why.to_string(), "replica": self.replica })),
        )
            .into_response()
    }
}

/// The body-limit layer answers a bare `413`; say what the limit (`limit` bytes) is, as JSON like
/// every error. A 413 that is already JSON (a webhook's answer) is left alone.
pub fn explain_too_large(response: Response, limit: usize) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE
        || response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"))
    {
        return response;
    }
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({
            "error": format!(
                "the request body is over the limit of {limit} bytes ({} MiB)",
                limit / (1024 * 1024)
            )
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn answered(error: impl Into<ApiError>) -> (u16, String) {
        let (status, message) = error.into().answer();
        (status.as_u16(), message)
    }

    fn database_error() -> StoreError {
        StoreError::Query(sqlx::Error::PoolClosed)
    }

    #[test]
    fn each_error_gets_its_status_and_says_why() {
        for (error, status, says) in [
            (
                ApiError::from(DeployError::UnknownService("web".into())),
                404,
                "no service is named \"web\"",
            ),
            (
                DeployError::UnknownDeployment(7).into(),
                404,
                "no deployment has id 7",
            ),
            (
                DeployError::Conflict("api is busy".into()).into(),
                409,
                "api is busy",
            ),
            (
                DeployError::NothingToRollBackTo("api".into()).into(),
                409,
                "api has no earlier successful version",
            ),
            (
                DeployError::SelfApproval {
                    id: 4,
                    requester: "ana".into(),
                }
                .into(),
                403,
                "rollout 4 was requested by ana: it needs the approval of another deployer or admin",
            ),
            (
                ReplayError::UnknownDelivery(3).into(),
                404,
                "no delivery has id 3",
            ),
            (
                ReplayError::NotReplayable("cannot replay delivery 3: no body".into()).into(),
                409,
                "no body",
            ),
            (
                RequestError::Id {
                    what: "deployment",
                    text: "x".into(),
                }
                .into(),
                400,
                "invalid deployment id \"x\": expected a number",
            ),
            (
                RequestError::LastEventId.into(),
                400,
                "Last-Event-ID must be",
            ),
            (
                RequestError::UnknownAction("stop".into()).into(),
                404,
                "expected pause, resume, abort, approve or promote",
            ),
            (
                RequestError::Query {
                    rejection: "unknown field `x`".into(),
                    expected: "?before=ID",
                }
                .into(),
                400,
                "unknown field `x`; expected ?before=ID",
            ),
            (
                AuthError::WrongCredentials.into(),
                401,
                "wrong user name or password",
            ),
            (
                AuthError::Forbidden {
                    what: "POST /api/users".into(),
                    needed: Role::Admin,
                    name: "ada".into(),
                    role: Role::Viewer,
                }
                .into(),
                403,
                "needs the admin role",
            ),
            (
                AuthError::Throttled {
                    retry_after_secs: 9,
                }
                .into(),
                429,
                "try again in 9 s",
            ),
            (
                AuthError::Busy {
                    retry_after_secs: 1,
                }
                .into(),
                503,
                "busy",
            ),
            (
                AuthError::Invalid("bad role".into()).into(),
                422,
                "bad role",
            ),
        ] {
            let (got, message) = answered(error);
            assert_eq!(got, status, "{message}");
            assert!(message.contains(says), "{message:?} lacks {says:?}");
        }
    }

    #[test]
    fn a_500_says_nothing_internal() {
        for error in [
            ApiError::from(database_error()),
            DeployError::Store(database_error()).into(),
            ReplayError::Store(database_error()).into(),
            AuthError::Store(database_error()).into(),
            AuthError::Internal("the database holds a bad role: root".into()).into(),
        ] {
            let (status, message) = answered(error);
            assert_eq!(status, 500);
            assert_eq!(message, INTERNAL);
        }
    }

    #[test]
    fn auth_refusals_carry_the_headers_their_status_calls_for() {
        let response = AuthError::SignInRequired.into_response();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"baton\""
        );
        let response = ApiError::from(AuthError::Throttled {
            retry_after_secs: 9,
        })
        .into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "9");
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_refused_page_is_html_with_the_reason_escaped() {
        let response = PageRefusal(AuthError::Forbidden {
            what: "the page /users?<x>".into(),
            needed: Role::Admin,
            name: "ada".into(),
            role: Role::Viewer,
        })
        .into_response();
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            body(response)
                .await
                .contains("the page /users?&lt;x&gt; needs the admin role")
        );
    }

    #[tokio::test]
    async fn only_a_bare_413_is_explained() {
        let bare = StatusCode::PAYLOAD_TOO_LARGE.into_response();
        let explained = explain_too_large(bare, 1024 * 1024);
        assert_eq!(explained.status(), 413);
        assert_eq!(
            body(explained).await,
            r#"{"error":"the request body is over the limit of 1048576 bytes (1 MiB)"}"#
        );
        let json = (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({ "verdict": "rejected" })),
        );
        let kept = explain_too_large(json.into_response(), 1024 * 1024);
        assert_eq!(body(kept).await, r#"{"verdict":"rejected"}"#);
        let ok = explain_too_large(StatusCode::OK.into_response(), 1);
        assert_eq!(ok.status(), 200);
    }
}
