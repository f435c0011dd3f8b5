//! The JSON API: services, rollouts, the webhook delivery log and the notification attempts. Handlers return typed errors;
//! `http_error.rs` decides the status and body each one gets.

use std::convert::Infallible;

use app::model::{ControlAction, DeploymentFilter, RolloutStatus};
use app::webhooks::DeliveryPage;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Audit, ClientAddress, Guarded, Principal, Role};
use crate::fleet::{DeployError, DeployRequest, Snapshot, Trigger};
use crate::http_error::{ApiError, RequestError};
use crate::live;
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
        .get("/api/deployments", Role::Viewer, list_deployments)
        .get("/api/deployments/{id}", Role::Viewer, get_deployment)
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

async fn list_services(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.fleet.status().await?))
}

/// Who may claim to have started a rollout through the API.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ApiTrigger {
    #[default]
    Api,
    Cli,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    version: String,
    /// `cli` when the `baton` command asks; `api` otherwise.
    #[serde(default)]
    trigger: ApiTrigger,
}

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
            coalesce: false,
        })
        .await?;
    let detail = format!("version {}, rollout {}", body.version, queued.id);
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

async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(service): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let queued = state
        .fleet
        .rollback(&service, Some(&principal.name))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    service: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    before: Option<i64>,
    after: Option<i64>,
}

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

async fn get_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let detail = state
        .fleet
        .deployment(id)
        .await?
        .ok_or(DeployError::UnknownDeployment(id))?;
    Ok(Json(detail))
}

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
        other => return Err(RequestError::UnknownAction(other.to_owned()).into()),
    };
    state
        .fleet
        .control(id, action, Some(&principal.name))
        .await?;
    let target = format!("rollout {id}");
    audit(&state, &principal, &address, action.as_str(), &target, None).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "requested": action.as_str() })),
    ))
}

#[derive(Deserialize)]
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

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
