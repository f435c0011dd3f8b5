//! Baton's own HTTP endpoints (beside the pages): health, and later the JSON API.

use axum::extract::State;
use axum::http::StatusCode;

use crate::auth::{Access, Guarded};
use crate::state::AppState;

pub fn routes() -> Guarded<AppState> {
    Guarded::new().get("/alive", Access::Public, alive)
}

/// 200 while the database answers, 503 otherwise, so Baton itself can sit behind a balancer.
async fn alive(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(error) => {
            tracing::error!(%error, "health check: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}
