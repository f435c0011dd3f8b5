//! Baton's own HTTP endpoints (beside the pages and the JSON API): health, and which replica
//! answers.
//!
//! `/alive` and `/ready` are public, for a load balancer in front of several replicas: `/ready`
//! says whether this replica can serve (its database answers) and, when it can, which replica
//! leads; `/api/replica` says the same to a signed-in viewer. `/metrics` is for Prometheus: a
//! viewer's token, or an address in `[server] metrics_allow`.

use std::time::Duration;

use app::model::ReplicaView;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::auth::{Access, Guarded, Role};
use crate::http_error::{DatabaseUnavailable, NotReady, Unready};
use crate::state::AppState;

/// How long `/ready` waits for the database. Less than a balancer's usual check timeout, so a
/// database that hangs is reported as such rather than as a replica that does not answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> Guarded<AppState> {
    Guarded::new()
        .get("/alive", Access::Public, alive)
        .get("/ready", Access::Public, ready)
        .get("/api/replica", Role::Viewer, replica)
        .get("/metrics", Access::RoleOrScraper(Role::Viewer), metrics)
}

/// The metrics in the OpenMetrics text format, the backend gauges from the fleet's latest
/// snapshot (refreshed every second while Baton runs).
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.fleet.snapshots().borrow().clone();
    let text = state.fleet.metrics().render(&snapshot.services);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

/// 200 while the database answers, 503 otherwise, so Baton itself can sit behind a balancer.
async fn alive(State(state): State<AppState>) -> Result<&'static str, DatabaseUnavailable> {
    state.store.ping().await.map_err(DatabaseUnavailable)?;
    Ok("ok\n")
}

/// 200 with this replica's view (its name, its role, which replica leads and since when) when
/// the database answers within [`READY_TIMEOUT`]; 503 saying why otherwise.
async fn ready(State(state): State<AppState>) -> Result<Json<ReplicaView>, Box<Unready>> {
    let why = match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => return Ok(Json(state.leadership.view())),
        Ok(Err(error)) => NotReady::Database(error),
        Err(_) => NotReady::DatabaseSilent(READY_TIMEOUT),
    };
    Err(Box::new(Unready {
        why,
        replica: state.leadership.view(),
    }))
}

/// This replica's view: which one answers, and which one leads.
#[utoipa::path(get, path = "/api/replica", tag = "replicas",
    responses(
        (status = 200, description = "This replica's view", body = ReplicaView),
        (status = 401, description = "No valid token or session", body = app::model::ErrorBody),
    ))]
async fn replica(State(state): State<AppState>) -> Json<ReplicaView> {
    Json(state.leadership.view())
}
