//! The JSON API: services, rollouts, and the errors they answer with.
//!
//! Invariant: this is the one place that maps errors to HTTP status codes. A 500's body says
//! nothing internal; the log says all.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fleet::DeployError;
use crate::startup::AppState;
use crate::store::{DeploymentRow, StepRow, StoreError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/services", get(list_services))
        .route(
            "/api/services/{service}/deployments",
            post(create_deployment),
        )
        .route("/api/deployments", get(list_deployments))
        .route("/api/deployments/{id}", get(get_deployment))
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "database error while answering the API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the server log has the details",
        )
    }
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        match error {
            DeployError::UnknownService(_) => Self::new(StatusCode::NOT_FOUND, error.to_string()),
            DeployError::InvalidVersion(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
            DeployError::Store(error) => error.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(
            rejection.status(),
            format!(
                "{}; expected a JSON body such as {{\"version\": \"v2\"}}",
                rejection.body_text()
            ),
        )
    }
}

async fn list_services(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.fleet.view().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    version: String,
}

async fn create_deployment(
    State(state): State<AppState>,
    Path(service): Path<String>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let queued = state
        .fleet
        .request(&service, &request.version, "api", None)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

#[derive(Deserialize)]
struct ListQuery {
    service: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

async fn list_deployments(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let rows = state
        .store
        .deployments(query.service.as_deref(), limit, query.before)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|row| DeploymentView::new(row, Vec::new()))
            .collect::<Vec<_>>(),
    ))
}

async fn get_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid deployment id {id:?}: expected a number"),
        )
    })?;
    let row = state.store.deployment(id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no deployment has id {id}"))
    })?;
    let steps = state.store.steps(id).await?;
    Ok(Json(DeploymentView::new(row, steps)))
}

#[derive(Serialize)]
pub struct DeploymentView {
    pub id: i64,
    pub service: String,
    pub status: String,
    pub from_version: Option<String>,
    pub to_version: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Every step in the order it ran, each with its backend (none for `prepare`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
}

#[derive(Serialize)]
pub struct StepView {
    pub backend: Option<String>,
    pub step: String,
    pub rollback: bool,
    pub version: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

impl DeploymentView {
    fn new(row: DeploymentRow, steps: Vec<StepRow>) -> Self {
        Self {
            id: row.id,
            service: row.service,
            status: row.status,
            from_version: row.from_version,
            to_version: row.to_version,
            trigger: row.trigger,
            requested_by: row.requested_by,
            reason: row.reason,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            steps: steps
                .into_iter()
                .map(|step| StepView {
                    backend: step.backend,
                    step: step.step,
                    rollback: step.rollback,
                    version: step.version,
                    started_at: step.started_at,
                    finished_at: step.finished_at,
                    outcome: step.outcome,
                    detail: step.detail,
                })
                .collect(),
        }
    }
}
