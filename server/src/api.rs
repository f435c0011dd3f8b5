//! The JSON API: services, rollouts, the webhook delivery log and the notification attempts. Handlers return typed errors;
//! `http_error.rs` decides the status and body each one gets.

use std::convert::Infallible;

use app::model::{ControlAction, DeploymentFilter, ErrorBody, RolloutStatus};
use app::webhooks::DeliveryPage;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use crate::auth::{self, Audit, ClientAddress, Guarded, Principal, Role};
use crate::drivers::LOG_TAIL_MAX;
use crate::fleet::{DeployError, DeployRequest, Snapshot, Trigger};
use crate::http_error::{ApiError, RequestError};
use crate::live;
use crate::metrics::EventStream;
use crate::state::AppState;
use crate::webhooks;

pub fn routes() -> Guarded<AppState> {
    Guarded::new()
        .get("/api/services", Role::Viewer, list_services)
        .post(
            "/api/services/{service}/deployments",
            Role::Deployer,
            create_deployment,
        )
        .post("/api/services/{service}/rollback", Role::Deployer, rollback)
        .get(
            "/api/services/{service}/backends/{backend}/log",
            Role::Deployer,
            backend_log,
        )
        .get("/api/deployments", Role::Viewer, list_deployments)
        .get("/api/deployments/{id}", Role::Viewer, get_deployment)
        .get(
            "/api/deployments/{id}/traffic",
            Role::Viewer,
            deployment_traffic,
        )
        .get(
            "/api/deployments/{id}/events",
            Role::Viewer,
            deployment_events,
        )
        .post("/api/deployments/{id}/{action}", Role::Deployer, control)
        .get("/api/events", Role::Viewer, fleet_events)
        .get(
            "/api/services/{service}/deliveries",
            Role::Viewer,
            list_deliveries,
        )
        .post("/api/deliveries/{id}/replay", Role::Admin, replay_delivery)
        .get("/api/notifications", Role::Admin, list_notifications)
}

/// The newest attempts to send notifications (Slack, signed webhooks), newest first; admins
/// only.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications",
    responses(
        (status = 200, description = "The newest attempts, newest first", body = Vec<app::model::NotificationAttempt>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    ))]
async fn list_notifications(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        state
            .store
            .notification_attempts(crate::notify::ATTEMPTS_SHOWN)
            .await?,
    ))
}

/// Appends a mutation to the audit log.
pub async fn audit(
    state: &AppState,
    principal: &Principal,
    address: &ClientAddress,
    action: &str,
    target: &str,
    detail: Option<&str>,
) {
    auth::record(
        &state.store,
        Audit {
            actor: &principal.actor(),
            action,
            target: Some(target),
            address: Some(address),
            detail,
        },
    )
    .await;
}

/// Every service with its backends, as the load balancer and Baton see them now.
#[utoipa::path(get, path = "/api/services", tag = "services",
    responses(
        (status = 200, description = "Every service", body = Vec<app::model::ServiceStatus>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    ))]
async fn list_services(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.fleet.status().await?))
}

/// Who may claim to have started a rollout through the API.
#[derive(Deserialize, Default, Clone, Copy, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum ApiTrigger {
    #[default]
    Api,
    Cli,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    version: String,
    /// `cli` when the `baton` command asks; `api` otherwise.
    #[serde(default)]
    trigger: ApiTrigger,
}

/// Queues a rollout of the service to a version (rollouts of one service run one at a time).
#[utoipa::path(post, path = "/api/services/{service}/deployments", tag = "rollouts",
    params(("service" = String, Path, description = "The service's name")),
    request_body = DeployBody,
    responses(
        (status = 202, description = "Queued", body = crate::fleet::Queued),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 409, description = "The version cannot be deployed now", body = ErrorBody),
    ))]
async fn create_deployment(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(service): Path<String>,
    body: Result<Json<DeployBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body.map_err(|rejection| RequestError::Json {
        rejection,
        example: r#"{"version": "v2"}"#,
    })?;
    let queued = state
        .fleet
        .request(DeployRequest {
            service: &service,
            version: &body.version,
            trigger: match body.trigger {
                ApiTrigger::Api => Trigger::Api,
                ApiTrigger::Cli => Trigger::Cli,
            },
            requested_by: Some(&principal.name),
            requester_user: principal.credential.user(),
            coalesce: false,
        })
        .await?;
    let detail = format!(
        "version {}, rollout {}{}",
        body.version,
        queued.id,
        queued.audit_note()
    );
    audit(
        &state,
        &principal,
        &address,
        "deploy",
        &service,
        Some(&detail),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

/// Queues a rollout back to the service's last good version.
#[utoipa::path(post, path = "/api/services/{service}/rollback", tag = "rollouts",
    params(("service" = String, Path, description = "The service's name")),
    responses(
        (status = 202, description = "Queued", body = crate::fleet::Queued),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 409, description = "Nothing to roll back to", body = ErrorBody),
    ))]
async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(service): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let queued = state
        .fleet
        .rollback(&service, Some(&principal.name), principal.credential.user())
        .await?;
    let detail = format!("rollout {}", queued.id);
    audit(
        &state,
        &principal,
        &address,
        "rollback",
        &service,
        Some(&detail),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this service's rollouts.
    service: Option<String>,
    /// Only rollouts with this status (`queued`, `running`, `succeeded`, ...).
    status: Option<String>,
    /// At most this many (default and largest: the store's page).
    limit: Option<u32>,
    /// Only older rollouts than this id (the next page).
    before: Option<i64>,
    /// Only newer rollouts than this id (the previous page).
    after: Option<i64>,
}

/// The rollout history, newest first, a page at a time.
#[utoipa::path(get, path = "/api/deployments", tag = "rollouts",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = app::model::DeploymentPage),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    ))]
async fn list_deployments(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|rejection| RequestError::Query {
        rejection: rejection.body_text(),
        expected: "?service=NAME&status=STATUS&limit=N&before=ID (or &after=ID)",
    })?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<RolloutStatus>)
        .transpose()
        .map_err(RequestError::UnknownWord)?;
    let page = state
        .fleet
        .deployments(&DeploymentFilter {
            service: query.service,
            status,
            before: query.before,
            after: query.after,
            limit: query.limit,
        })
        .await?;
    Ok(Json(page))
}

fn parse_id(id: &str) -> Result<i64, RequestError> {
    id.parse().map_err(|_| RequestError::Id {
        what: "deployment",
        text: id.to_owned(),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
struct LogQuery {
    /// How many of the last lines, 1 to 200 (200 when left out).
    lines: Option<usize>,
}

/// A backend's log as it reads now.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct BackendLog {
    service: String,
    backend: String,
    /// Where the lines were read; `null` when the runtime keeps no log for the backend.
    source: Option<String>,
    lines: Vec<String>,
}

/// The last lines of a backend's log (`?lines=N`, 1 to 200, 200 by default): what it printed
/// under the process runtime, the commands' stderr under the command runtime. For deployers
/// and admins only: a log may hold what the application should not show everyone.
#[utoipa::path(get, path = "/api/services/{service}/backends/{backend}/log", tag = "services",
    params(
        ("service" = String, Path, description = "The service's name"),
        ("backend" = String, Path, description = "The backend's name"),
        LogQuery,
    ),
    responses(
        (status = 200, description = "The end of the backend's log now", body = BackendLog),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such service or backend", body = ErrorBody),
        (status = 502, description = "The backend's host did not answer", body = ErrorBody),
    ))]
async fn backend_log(
    State(state): State<AppState>,
    Path((service, backend)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    const EXPECTED: &str = "?lines=N with N from 1 to 200";
    let Query(query) = query.map_err(|rejection| RequestError::Query {
        rejection: rejection.body_text(),
        expected: EXPECTED,
    })?;
    let lines = query.lines.unwrap_or(LOG_TAIL_MAX);
    if !(1..=LOG_TAIL_MAX).contains(&lines) {
        return Err(RequestError::Query {
            rejection: format!("lines={lines} is out of range"),
            expected: EXPECTED,
        }
        .into());
    }
    let tail = state.fleet.backend_log(&service, &backend, lines).await?;
    let (source, lines) = match tail {
        Some(tail) => (Some(tail.source), tail.lines),
        None => (None, Vec::new()),
    };
    Ok(Json(BackendLog {
        service,
        backend,
        source,
        lines,
    }))
}

/// One rollout with its steps.
#[utoipa::path(get, path = "/api/deployments/{id}", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout's id")),
    responses(
        (status = 200, description = "The rollout", body = app::model::DeploymentDetail),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
    ))]
async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let detail = state
        .fleet
        .deployment(id)
        .await?
        .ok_or(DeployError::UnknownDeployment(id))?;
    Ok(Json(detail.seen_by(Some(principal.role))))
}

/// What each backend served while a rollout ran (requests and 5xx responses, per sample and
/// per second), from HAProxy's counters as Baton sampled them: about every second, every ten
/// seconds after the first ten minutes. Kept with the history.
#[utoipa::path(get, path = "/api/deployments/{id}/traffic", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout's id")),
    responses(
        (status = 200, description = "One series per backend", body = app::model::RolloutTraffic),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
    ))]
async fn deployment_traffic(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let traffic = state
        .fleet
        .traffic(id)
        .await?
        .ok_or(DeployError::UnknownDeployment(id))?;
    Ok(Json(traffic))
}

/// Asks a rollout to pause, resume or abort; it takes effect between steps.
#[utoipa::path(post, path = "/api/deployments/{id}/{action}", tag = "rollouts",
    params(
        ("id" = i64, Path, description = "The rollout's id"),
        ("action" = ControlAction, Path, description = "pause, resume or abort"),
    ),
    responses(
        (status = 202, description = "Asked", body = ControlRequested),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such rollout or action", body = ErrorBody),
        (status = 409, description = "The rollout cannot do that now", body = ErrorBody),
    ))]
async fn control(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path((id, action)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let action = match action.as_str() {
        "pause" => ControlAction::Pause,
        "resume" => ControlAction::Resume,
        "abort" => ControlAction::Abort,
        "approve" => ControlAction::Approve,
        "promote" => ControlAction::Promote,
        other => return Err(RequestError::UnknownAction(other.to_owned()).into()),
    };
    let target = format!("rollout {id}");
    let asked = state
        .fleet
        .control(
            id,
            action,
            Some(&principal.name),
            principal.credential.user(),
        )
        .await;
    if let Err(refusal @ DeployError::SelfApproval { .. }) = &asked {
        let reason = refusal.to_string();
        audit(
            &state,
            &principal,
            &address,
            "approve_refused",
            &target,
            Some(&reason),
        )
        .await;
    }
    asked?;
    audit(&state, &principal, &address, action.as_str(), &target, None).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(ControlRequested {
            id,
            requested: action,
        }),
    ))
}

/// A pause, resume or abort accepted for a rollout.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ControlRequested {
    id: i64,
    requested: ControlAction,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Start after this event id (a page that already shows events up to it). The
    /// `Last-Event-ID` header of a reconnecting browser wins over it.
    after: Option<i64>,
}

/// The event id to continue after: `Last-Event-ID`, else `?after=`, else `default`.
fn resume_point(
    headers: &HeaderMap,
    query: &StreamQuery,
    default: i64,
) -> Result<i64, RequestError> {
    match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .ok_or(RequestError::LastEventId),
        None => Ok(query.after.unwrap_or(default)),
    }
}

/// One rollout's events as Server-Sent Events (`event: status`, `step`, `control`,
/// `takeover`, each with its id): everything after `Last-Event-ID` (or `after`), then live.
#[utoipa::path(get, path = "/api/deployments/{id}/events", tag = "streams",
    params(("id" = i64, Path, description = "The rollout's id"), StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
    ))]
async fn deployment_events(
    State(state): State<AppState>,
    pass: auth::StreamPass,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .deployment(id)
        .await?
        .ok_or(DeployError::UnknownDeployment(id))?;
    let after = resume_point(&headers, &query, 0)?;
    let events = live::events(state.store.clone(), Some(id), after).await?;
    let stream = pass
        .follow(events.map(|event| Ok::<_, Infallible>(live::deployment_sse(&event))))
        .take_until(state.stopping.clone().cancelled_owned());
    let stream = state
        .fleet
        .metrics()
        .counted(EventStream::Deployment, stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Every rollout's events and `event: fleet` snapshots of every service as Server-Sent Events.
#[utoipa::path(get, path = "/api/events", tag = "streams",
    params(StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    ))]
async fn fleet_events(
    State(state): State<AppState>,
    pass: auth::StreamPass,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // A first connection starts from now: the fleet snapshot says where things are.
    let now = state.store.latest_event_id().await?;
    let after = resume_point(&headers, &query, now)?;
    let changes = state.fleet.snapshots();
    let now = Snapshot::new(state.fleet.status().await?);
    let events = live::events(state.store.clone(), None, after).await?;
    let stream = pass
        .follow(live::fleet_stream(now, events, changes))
        .take_until(state.stopping.clone().cancelled_owned());
    let stream = state.fleet.metrics().counted(EventStream::Fleet, stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// Only older deliveries than this id (the next page).
    before: Option<i64>,
    /// At most this many.
    limit: Option<u32>,
}

/// The service's webhook delivery log, newest first.
#[utoipa::path(get, path = "/api/services/{service}/deliveries", tag = "webhooks",
    params(("service" = String, Path, description = "The service's name"), DeliveriesQuery),
    responses(
        (status = 200, description = "One page", body = DeliveryPage),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
    ))]
async fn list_deliveries(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| RequestError::Query {
        rejection: rejection.body_text(),
        expected: "?before=ID&limit=N",
    })?;
    Ok(Json(
        webhooks::delivery_page(&state, &service, query.before, query.limit).await?,
    ))
}

/// Processes a verified delivery's body again (admins; audited).
#[utoipa::path(post, path = "/api/deliveries/{id}/replay", tag = "webhooks",
    params(("id" = i64, Path, description = "The delivery's id in the log")),
    responses(
        (status = 200, description = "What the replay decided", body = app::webhooks::DeliveryOutcome),
        (status = 202, description = "The replay queued a rollout", body = app::webhooks::DeliveryOutcome),
        (status = 400, description = "The request is malformed: the error says what was expected", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "The delivery cannot be replayed", body = ErrorBody),
    ))]
async fn replay_delivery(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id.parse::<i64>().map_err(|_| RequestError::Id {
        what: "delivery",
        text: id,
    })?;
    let outcome = webhooks::replay_by(&state, id, &principal.actor(), &address).await?;
    Ok(webhooks::response(outcome))
}
