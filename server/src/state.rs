//! What every handler can reach: the one state the router carries, built by `startup`.
//!
//! It lives apart from `startup` so that handlers (`api`, `http`, `webhooks`) depend on this
//! small type and not on the module that builds the router out of them.

use std::sync::Arc;

use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::replica::Leadership;
use crate::settings::Settings;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub fleet: Arc<Fleet>,
    /// This replica's name and role (which one leads).
    pub leadership: Leadership,
    pub leptos_options: LeptosOptions,
    /// Cancelled when Baton begins to stop: live streams end then, so they do not hold the
    /// graceful shutdown open.
    pub stopping: CancellationToken,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}
