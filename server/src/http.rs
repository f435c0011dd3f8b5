//! Baton's own HTTP endpoints (beside the pages and the JSON API): health.

use axum::extract::State;

use crate::auth::{Access, Guarded};
use crate::http_error::DatabaseUnavailable;
use crate::state::AppState;

pub fn routes() -> Guarded<AppState> {
    Guarded::new().get("/alive", Access::Public, alive)
}

/// 200 while the database answers, 503 otherwise, so Baton itself can sit behind a balancer.
async fn alive(State(state): State<AppState>) -> Result<&'static str, DatabaseUnavailable> {
    state.store.ping().await.map_err(DatabaseUnavailable)?;
    Ok("ok\n")
}
