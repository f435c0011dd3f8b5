//! Auth's HTTP endpoints: login and logout, the caller, users, tokens and the audit log.
//!
//! `POST /auth/login` takes a form (`name`, `password`, optional `next`) or JSON (`{"name",
//! "password"}`). A form gets redirects, so a plain HTML form works without the wasm client:
//! 303 to `next` on success, else 303 to
//! `/login?error=invalid|throttled|busy|refused[&retry_after=S]&next=...`. JSON gets statuses:
//! 200 `{"name","role","expires_at"}`, 401 wrong name or password, 429 with `Retry-After` while
//! throttled, 503 with `Retry-After` while too many passwords are being checked at once. Either
//! way a success sets the session cookie. Request bodies with secrets are never echoed in errors.

use app::model::ErrorBody;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;
use serde_json::json;

use super::accounts::{self, TokenRef};
use super::error::AuthError;
use super::middleware::{
    SECURE_SESSION_COOKIE, SESSION_COOKIE, check_login_origin, cleared_cookie, is_https, query,
    safe_next, session_cookie, session_cookie_name,
};
use super::password_gate::{Busy, RETRY_AFTER_SECS};
use super::policy::{Access, Guarded};
use super::principal::{Actor, ClientAddress, Principal, Role};
use super::secret::{Password, SecretToken, verify_against_nobody, verify_password};
use super::{Audit, Auth};
use crate::store::auth::{AuditQuery, AuditRow, LoginAttempt, TokenRow, UserRow};
use crate::store::now_millis;

pub(super) fn routes() -> Guarded<Auth> {
    Guarded::new()
        .post("/auth/login", Access::Public, login)
        .post("/auth/logout", Access::Public, logout)
        .get("/api/me", Role::Viewer, me)
        .get("/api/users", Role::Admin, list_users)
        .post("/api/users", Role::Admin, create_user)
        .delete("/api/users/{name}", Role::Admin, delete_user)
        .get("/api/tokens", Role::Admin, list_tokens)
        .post("/api/tokens", Role::Admin, create_token)
        .delete("/api/tokens/{id}", Role::Admin, revoke_token)
        .get("/api/audit", Role::Admin, list_audit)
}

/// The most characters of a tried user name that Baton records (real names are at most 64).
const MAX_RECORDED_NAME: usize = 64;

#[derive(Deserialize)]
struct LoginBody {
    #[serde(alias = "username")]
    name: String,
    password: Password,
    next: Option<String>,
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"))
}

async fn login(State(auth): State<Auth>, address: ClientAddress, request: Request) -> Response {
    let form = is_form(request.headers());
    let secure = is_https(request.headers(), auth.config());
    let refused = |error: AuthError, next: Option<&str>| -> Response {
        if !form {
            return error.into_response();
        }
        let reason = match &error {
            AuthError::WrongCredentials => "invalid",
            AuthError::Throttled { .. } => "throttled",
            AuthError::Busy { .. } => "busy",
            _ => "refused",
        };
        let mut pairs = vec![("error", reason.to_owned())];
        if let AuthError::Throttled { retry_after_secs } | AuthError::Busy { retry_after_secs } =
            &error
        {
            pairs.push(("retry_after", retry_after_secs.to_string()));
        }
        if let Some(next) = next {
            pairs.push(("next", safe_next(Some(next)).to_owned()));
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Redirect::to(&format!("/login?{}", query(&pairs))).into_response()
    };
    if let Err(reason) = check_login_origin(&request, auth.config()) {
        tracing::warn!(%address, %reason, "refused a cross-origin login");
        return refused(AuthError::CrossOrigin { reason }, None);
    }
    let body = if form {
        Form::<LoginBody>::from_request(request, &())
            .await
            .map(|Form(body)| body)
            .ok()
    } else {
        Json::<LoginBody>::from_request(request, &())
            .await
            .map(|Json(body)| body)
            .ok()
    };
    let Some(body) = body else {
        return refused(
            AuthError::Invalid(
                "expected a JSON body {\"name\": \"...\", \"password\": \"...\"} or a form with \
                 the fields name and password"
                    .into(),
            ),
            None,
        );
    };
    match attempt(&auth, &body, &address).await {
        Ok(session) => {
            let jar = CookieJar::new().add(session_cookie(
                session.id.expose().to_owned(),
                secure,
                auth.config().session_ttl.as_secs() as i64,
            ));
            if form {
                let next = safe_next(body.next.as_deref());
                (jar, Redirect::to(next)).into_response()
            } else {
                (
                    jar,
                    Json(json!({
                        "name": session.name,
                        "role": session.role,
                        "expires_at": session.expires_at,
                    })),
                )
                    .into_response()
            }
        }
        Err(error) => refused(error, body.next.as_deref()),
    }
}

struct NewSession {
    id: SecretToken,
    name: String,
    role: Role,
    expires_at: i64,
}

async fn attempt(
    auth: &Auth,
    body: &LoginBody,
    address: &ClientAddress,
) -> Result<NewSession, AuthError> {
    let store = auth.store();
    let name: String = body.name.chars().take(MAX_RECORDED_NAME).collect();
    let limits = auth.throttle_limits();
    let attempt = match store.begin_login(&name, address.as_str(), limits).await? {
        LoginAttempt::Go { id } => id,
        LoginAttempt::Throttled { wait_ms } => {
            tracing::warn!(user = %name, %address, "login refused: too many failed logins");
            return Err(AuthError::Throttled {
                retry_after_secs: (wait_ms.max(0) as u64).div_ceil(1000),
            });
        }
    };
    let credentials = store.credentials(&name).await?;
    let password = body.password.clone();
    let stored = credentials.clone();
    let check = auth.inner.password_gate.check(move || match &stored {
        Some(stored) => verify_password(&password, &stored.password_hash),
        None => {
            verify_against_nobody(&password);
            false
        }
    });
    let matches = match check.await {
        Ok(checked) => checked
            .map_err(|error| AuthError::Internal(format!("password check panicked: {error}")))?,
        Err(Busy) => {
            // The password was never checked, so this attempt is no failure.
            store.login_abandoned(attempt).await?;
            tracing::warn!(user = %name, %address, "login refused: too many password checks running or waiting");
            return Err(AuthError::Busy {
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
    };
    let actor = Actor::user(name.clone(), credentials.as_ref().map(|user| user.id));
    let exists = credentials.is_some();
    // On failure the attempt's row stays: it is the failure the throttle counts.
    let Some(user) = credentials.filter(|_| matches) else {
        let detail = if exists {
            "wrong password"
        } else {
            "no such user"
        };
        auth.audit(Audit {
            actor: &actor,
            action: "login_failed",
            target: None,
            address: Some(address),
            detail: Some(detail),
        })
        .await;
        tracing::warn!(user = %name, %address, "login failed: wrong user name or password");
        return Err(AuthError::WrongCredentials);
    };
    store.login_succeeded(attempt, &name).await?;
    let role: Role = user
        .role
        .parse()
        .map_err(|error| AuthError::Internal(format!("the database holds a bad role: {error}")))?;
    let id = SecretToken::generate_session_id();
    let expires_at = now_millis() + auth.config().session_ttl.as_millis() as i64;
    store
        .create_session(user.id, &id.hash(), Some(address.as_str()), expires_at)
        .await?;
    auth.audit(Audit {
        actor: &actor,
        action: "login",
        target: None,
        address: Some(address),
        detail: None,
    })
    .await;
    tracing::info!(user = %name, %address, "signed in");
    Ok(NewSession {
        id,
        name: user.name,
        role,
        expires_at,
    })
}

/// Ends the session the cookie names (if any) and clears the cookie. Over HTTPS a plain-named
/// cookie left from before Baton was behind HTTPS is ended and cleared too. The layer has
/// already applied the CSRF check to a cookie-authenticated request.
async fn logout(
    State(auth): State<Auth>,
    address: ClientAddress,
    headers: HeaderMap,
    mut jar: CookieJar,
) -> Response {
    let secure = is_https(&headers, auth.config());
    let names: &[&'static str] = if secure {
        &[SECURE_SESSION_COOKIE, SESSION_COOKIE]
    } else {
        &[SESSION_COOKIE]
    };
    for name in names {
        let Some(cookie) = jar.get(name) else {
            continue;
        };
        let hash = SecretToken::from_client(cookie.value()).hash();
        let store = auth.store();
        let user = match store.session_user(&hash).await {
            Ok(user) => user,
            Err(error) => return AuthError::from(error).into_response(),
        };
        if let Err(error) = store.revoke_session(&hash).await {
            return AuthError::from(error).into_response();
        }
        if let Some(user) = user {
            auth.audit(Audit {
                actor: &Actor::user(user.name.clone(), Some(user.user_id)),
                action: "logout",
                target: None,
                address: Some(&address),
                detail: None,
            })
            .await;
            tracing::info!(user = %user.name, %address, "signed out");
        }
        if *name != session_cookie_name(secure) {
            jar = jar.add(cleared_cookie(name, secure));
        }
    }
    let jar = jar.add(cleared_cookie(session_cookie_name(secure), secure));
    if is_form(&headers) {
        (jar, Redirect::to("/login")).into_response()
    } else {
        (jar, StatusCode::NO_CONTENT).into_response()
    }
}

/// Who the caller is: name, role, and whether by session or token.
#[utoipa::path(get, path = "/api/me", tag = "accounts",
    responses(
        (status = 200, description = "The caller", body = Principal),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    ))]
async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

/// Every user account (never a password hash).
#[utoipa::path(get, path = "/api/users", tag = "accounts",
    responses(
        (status = 200, description = "Every user", body = Vec<UserRow>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    ))]
async fn list_users(State(auth): State<Auth>) -> Result<Response, AuthError> {
    Ok(Json(auth.store().users().await?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    name: String,
    /// `viewer`, `deployer` or `admin`.
    role: String,
    #[schema(value_type = String, format = Password)]
    password: Password,
}

/// Adds a user (audited).
#[utoipa::path(post, path = "/api/users", tag = "accounts",
    request_body = NewUserBody,
    responses(
        (status = 201, description = "Added", body = UserRow),
        (status = 400, description = "The body is malformed or the name or password is refused", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
async fn create_user(
    State(auth): State<Auth>,
    principal: Principal,
    address: ClientAddress,
    body: Result<Json<NewUserBody>, JsonRejection>,
) -> Result<Response, AuthError> {
    // The body holds a password: say what was expected, never what was sent.
    let Json(body) = body.map_err(|_| {
        AuthError::Invalid(
            "expected a JSON body {\"name\": \"...\", \"role\": \"viewer|deployer|admin\", \
             \"password\": \"...\"}"
                .into(),
        )
    })?;
    let role: Role = body.role.parse().map_err(AuthError::Invalid)?;
    let user = accounts::add_user(
        auth.store(),
        &principal.actor(),
        Some(&address),
        &body.name,
        role,
        body.password,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// Deletes a user, ending their sessions and revoking their tokens (audited).
#[utoipa::path(delete, path = "/api/users/{name}", tag = "accounts",
    params(("name" = String, Path, description = "The user's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
async fn delete_user(
    State(auth): State<Auth>,
    principal: Principal,
    address: ClientAddress,
    Path(name): Path<String>,
) -> Result<Response, AuthError> {
    accounts::delete_user(auth.store(), &principal.actor(), Some(&address), &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every API token's record (never the token itself), live ones first.
#[utoipa::path(get, path = "/api/tokens", tag = "accounts",
    responses(
        (status = 200, description = "Every token", body = Vec<TokenRow>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    ))]
async fn list_tokens(State(auth): State<Auth>) -> Result<Response, AuthError> {
    Ok(Json(auth.store().tokens().await?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    name: String,
    role: String,
}

/// A new API token, with a role no higher than the caller's: the secret is in this answer
/// only (audited).
#[utoipa::path(post, path = "/api/tokens", tag = "accounts",
    request_body = NewTokenBody,
    responses(
        (status = 201, description = "Created", body = NewToken),
        (status = 400, description = "The body is malformed or the name is refused", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
async fn create_token(
    State(auth): State<Auth>,
    principal: Principal,
    address: ClientAddress,
    body: Result<Json<NewTokenBody>, JsonRejection>,
) -> Result<Response, AuthError> {
    let Json(body) = body.map_err(|rejection| {
        AuthError::Invalid(format!(
            "{}; expected a JSON body {{\"name\": \"ci\", \"role\": \"deployer\"}}",
            rejection.body_text()
        ))
    })?;
    let role: Role = body.role.parse().map_err(AuthError::Invalid)?;
    if !principal.role.allows(role) {
        return Err(AuthError::Forbidden {
            what: format!("creating a token with the {role} role"),
            needed: role,
            name: principal.name,
            role: principal.role,
        });
    }
    let (row, token) = accounts::create_token(
        auth.store(),
        &principal.actor(),
        Some(&address),
        &body.name,
        role,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id: row.id,
            name: row.name,
            role: row.role,
            created_by: row.created_by,
            created_at: row.created_at,
            token: token.expose().to_owned(),
        }),
    )
        .into_response())
}

/// A created token: its record and, this once, the secret.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct NewToken {
    id: i64,
    name: String,
    role: String,
    created_by: String,
    created_at: i64,
    /// The only time the token is shown: Baton keeps its SHA-256 alone.
    token: String,
}

/// Revokes a token at once (audited).
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "accounts",
    params(("id" = i64, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "The id is no number", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
    ))]
async fn revoke_token(
    State(auth): State<Auth>,
    principal: Principal,
    address: ClientAddress,
    Path(id): Path<String>,
) -> Result<Response, AuthError> {
    let id: i64 = id
        .parse()
        .map_err(|_| AuthError::Invalid(format!("invalid token id {id:?}: expected a number")))?;
    accounts::revoke_token(
        auth.store(),
        &principal.actor(),
        Some(&address),
        &TokenRef::Id(id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Only lines by this actor.
    actor: Option<String>,
    /// Only lines of this action (`deploy`, `login_failed`, ...).
    action: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Only older lines than this id (the next page).
    before: Option<i64>,
}

/// One page of the audit log, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct AuditPage {
    entries: Vec<AuditRow>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    next_before: Option<i64>,
}

/// The default and largest page of the audit log.
const AUDIT_PAGE: u32 = 100;
const AUDIT_MAX_PAGE: u32 = 1000;

/// The audit log: who did what, to what, from where.
#[utoipa::path(get, path = "/api/audit", tag = "accounts",
    params(AuditParams),
    responses(
        (status = 200, description = "One page", body = AuditPage),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    ))]
async fn list_audit(
    State(auth): State<Auth>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, AuthError> {
    let Query(params) = params.map_err(|rejection| {
        AuthError::Invalid(format!(
            "{}; expected ?actor=NAME&action=ACTION&limit=N&before=ID",
            rejection.body_text()
        ))
    })?;
    let limit = params.limit.unwrap_or(AUDIT_PAGE);
    if limit == 0 || limit > AUDIT_MAX_PAGE {
        return Err(AuthError::Invalid(format!(
            "invalid limit {limit}: expected 1 to {AUDIT_MAX_PAGE}"
        )));
    }
    let empty_is_none = |value: Option<String>| value.filter(|value| !value.is_empty());
    let actor = empty_is_none(params.actor);
    let action = empty_is_none(params.action);
    let entries = auth
        .store()
        .audit(&AuditQuery {
            actor: actor.as_deref(),
            action: action.as_deref(),
            before: params.before,
            limit: i64::from(limit),
        })
        .await?;
    let next_before = (entries.len() == limit as usize)
        .then(|| entries.last().map(|entry| entry.id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before,
    })
    .into_response())
}
