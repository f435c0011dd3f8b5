//! Building and running Baton's HTTP server: routes, layers, and the lifecycle around them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use app::fleet::{Fleet, FleetSource};
use app::model::{BackendSummary, ServiceSummary};
use axum::Router;
use axum::extract::FromRef;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::http;
use crate::settings::Settings;
use crate::store::Store;

/// The largest request body Baton reads (API calls and webhooks are small).
const BODY_LIMIT: usize = 1024 * 1024;
/// How long a request may take before Baton answers 408 (streams are not cut: this covers the
/// wait for the response head only).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub leptos_options: LeptosOptions,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

/// A bound, ready-to-run Baton.
pub struct Application {
    listener: TcpListener,
    router: Router,
    store: Store,
}

impl Application {
    /// Opens the database, applies migrations and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::connect(&settings.server.database_url).await?;
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .map_err(|error| {
                anyhow::anyhow!("cannot listen on {}: {error}", settings.server.listen)
            })?;
        let address = listener.local_addr()?;
        let leptos_options = LeptosOptions::builder()
            .output_name("baton")
            .site_root(settings.server.site_root.to_string_lossy().into_owned())
            .site_pkg_dir("pkg")
            .site_addr(address)
            .build();
        let state = AppState {
            settings: Arc::new(settings),
            store: store.clone(),
            leptos_options,
        };
        Ok(Self {
            listener,
            router: router(state),
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        self.store.close().await;
        result
    }
}

fn router(state: AppState) -> Router {
    let routes = generate_route_list(app::App);
    let fleet = Fleet(Arc::new(ConfigFleet(state.settings.clone())));
    let leptos_options = state.leptos_options.clone();
    let shell_options = leptos_options.clone();

    Router::new()
        .merge(http::routes())
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(fleet.clone()),
            move || app::shell(shell_options.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(
            app::shell,
        ))
        .with_state(state)
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
}

/// Answers the UI's questions about the fleet from the configuration.
struct ConfigFleet(Arc<Settings>);

impl FleetSource for ConfigFleet {
    fn services(&self) -> Vec<ServiceSummary> {
        self.0
            .services
            .iter()
            .map(|service| ServiceSummary {
                name: service.name.to_string(),
                load_balancer: service.load_balancer.to_string(),
                haproxy_backend: service.haproxy_backend.clone(),
                backends: service
                    .backends
                    .iter()
                    .map(|backend| BackendSummary {
                        name: backend.name.to_string(),
                        address: backend.address.to_string(),
                    })
                    .collect(),
            })
            .collect()
    }
}
