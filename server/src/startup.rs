//! Building and running Baton's HTTP server: routes, layers, and the lifecycle around them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use app::fleet::Fleet;
use axum::Router;
use axum::extract::ConnectInfo;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{self, Access, Auth, Policy, Role};
use crate::fleet::Fleet as ServiceFleet;
use crate::listener::{CappedListener, ClientAddr, connection_cap};
use crate::replica::{Leadership, LeaseTask};
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::{Backend, Store};
use crate::ui::UiFleet;
use crate::{api, http, http_error};

/// The largest request body Baton reads (API calls and webhooks are small).
const BODY_LIMIT: usize = 1024 * 1024;
/// How long a request may take before Baton answers 408 (streams are not cut: this covers the
/// wait for the response head only).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound, ready-to-run Baton.
pub struct Application {
    listener: TcpListener,
    router: Router,
    policy: Policy,
    store: Store,
    fleet: Arc<ServiceFleet>,
    /// Which replica leads; on a shared database, with the task that holds the lease.
    leadership: Leadership,
    lease: Option<LeaseTask>,
    stopping: CancellationToken,
    /// Stop every backend once serving has ended (the demo, which started them).
    stop_backends: bool,
    /// How many client connections are served at once.
    max_connections: usize,
}

/// How long shutdown waits for background tasks (a rollout finishing its step) to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Application {
    /// Opens the database, applies migrations and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::connect(&settings.server.database_url).await?;
        let fleet = Arc::new(ServiceFleet::from_settings(&settings, store.clone()));
        Self::build_with_fleet(settings, store, fleet).await
    }

    /// Like [`Application::build`], over a fleet the caller made (tests pass fake drivers).
    pub async fn build_with_fleet(
        settings: Settings,
        store: Store,
        fleet: Arc<ServiceFleet>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .map_err(|error| {
                anyhow::anyhow!("cannot listen on {}: {error}", settings.server.listen)
            })?;
        let address = listener.local_addr()?;
        let max_connections = connection_cap(settings.server.max_connections);
        let leptos_options = LeptosOptions::builder()
            .output_name("baton")
            .site_root(settings.server.site_root.to_string_lossy().into_owned())
            .site_pkg_dir("pkg")
            .site_addr(address)
            .build();
        let stopping = CancellationToken::new();
        // One Baton on SQLite leads alone; Batons sharing PostgreSQL lead by turns (a lease).
        let replica = settings
            .server
            .replica
            .clone()
            .unwrap_or_else(Leadership::default_name);
        let (leadership, lease) = match store.backend() {
            Backend::Sqlite => (Leadership::single(replica), None),
            Backend::Postgres => {
                let (leadership, mut lease) =
                    Leadership::leased(store.clone(), replica, settings.server.lease);
                lease.first_attempt().await;
                (leadership, Some(lease))
            }
        };
        let state = AppState {
            settings: Arc::new(settings),
            store: store.clone(),
            fleet: fleet.clone(),
            leadership: leadership.clone(),
            leptos_options,
            stopping: stopping.clone(),
        };
        let (router, policy) = router(state);
        Ok(Self {
            listener,
            router,
            policy,
            store,
            fleet,
            leadership,
            lease,
            stopping,
            stop_backends: false,
            max_connections,
        })
    }

    /// Stops every backend when Baton stops, after the rollout workers have. For `baton demo`,
    /// which owns its fleet; `baton serve` leaves backends running for the next Baton to adopt.
    pub fn stopping_backends_on_exit(mut self) -> Self {
        self.stop_backends = true;
        self
    }

    /// Every route and the access it needs.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs the rollout workers (while this replica leads) and serves until `shutdown` is
    /// cancelled, then lets requests in flight finish, waits (up to a grace period) for the
    /// workers to stop, and gives the lease up.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // The lease outlives the workers: it is given up only once they have stopped.
        let leasing = CancellationToken::new();
        let lease = self
            .lease
            .map(|lease| tokio::spawn(lease.run(leasing.clone())));
        let tasks = TaskTracker::new();
        // On PostgreSQL: the events other replicas commit, on this replica's live streams.
        tasks.spawn(self.store.clone().follow_other_replicas(shutdown.clone()));
        self.fleet.spawn(&tasks, &shutdown, &self.leadership);
        tasks.close();
        let stopping = self.stopping.clone();
        let stop_signal = shutdown.clone();
        let service = self
            .router
            .layer(axum::middleware::map_request(client_address))
            .into_make_service_with_connect_info::<ClientAddr>();
        let listener = CappedListener::new(self.listener, self.max_connections);
        let result = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                stop_signal.cancelled().await;
                stopping.cancel();
            })
            .await;
        shutdown.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within {SHUTDOWN_GRACE:?}");
        }
        leasing.cancel();
        if let Some(lease) = lease
            && let Err(error) = lease.await
        {
            tracing::warn!(%error, "the lease task ended badly");
        }
        if self.stop_backends {
            self.fleet.stop_backends().await;
        }
        self.fleet.hosts().disconnect_all().await;
        self.store.close().await;
        result
    }
}

/// Gives handlers the client's address as `ConnectInfo<SocketAddr>`, as axum's own listener would.
async fn client_address(mut request: axum::extract::Request) -> axum::extract::Request {
    if let Some(&ConnectInfo(ClientAddr(address))) = request.extensions().get() {
        request.extensions_mut().insert(ConnectInfo(address));
    }
    request
}

/// Every route with the access it needs (see `auth`): what the auth layer enforces, and what
/// tests enumerate to prove that no route is left open.
fn router(state: AppState) -> (Router, Policy) {
    let routes = generate_route_list(app::App);
    let auth = Auth::new(state.store.clone(), state.settings.auth.clone())
        .allowing_scrapers(state.settings.server.metrics_allow.clone());
    let metrics = state.fleet.metrics().clone();
    let openapi = crate::openapi::Published::default();
    let fleet = Fleet(Arc::new(UiFleet {
        settings: state.settings.clone(),
        fleet: state.fleet.clone(),
        store: state.store.clone(),
        leadership: state.leadership.clone(),
    }));
    let webhooks = app::webhooks::Webhooks(Arc::new(crate::ui::UiWebhooks(state.clone())));
    let accounts = app::auth::Accounts(Arc::new(crate::ui::UiAccounts {
        store: state.store.clone(),
    }));
    let leptos_options = state.leptos_options.clone();
    let shell_options = leptos_options.clone();

    let mut guarded = http::routes()
        .merge(api::routes())
        .merge(openapi.routes())
        .merge(crate::webhooks::routes())
        .merge(auth.routes())
        .server_functions();
    for page in &routes {
        guarded = guarded.page(page.path(), page_access(page.path()));
    }
    let (guarded, policy) = guarded.into_parts();
    openapi.publish(&policy);
    let router = guarded
        .leptos_routes_with_context(
            &state,
            routes,
            move || {
                provide_context(fleet.clone());
                provide_context(webhooks.clone());
                provide_context(accounts.clone());
                auth::provide_request_context();
            },
            move || app::shell(shell_options.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(
            app::shell,
        ))
        .with_state(state);
    let router = auth
        .protect(router, policy.clone())
        .layer(auth::security_headers())
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            http_error::TIMED_OUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::map_response(|response| async move {
            http_error::explain_too_large(response, BODY_LIMIT)
        }))
        .layer(CompressionLayer::new())
        // Outside every other layer, so its answers (408, 413, a panic's 500) are counted too.
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::count_requests,
        ))
        .layer(TraceLayer::new_for_http());
    (router, policy)
}

/// Who may see a page: the login page is public, the account and audit pages are for admins,
/// everything else for any signed-in viewer.
fn page_access(path: &str) -> Access {
    match path {
        "/login" => Access::Public,
        "/audit" | "/users" | "/tokens" => Role::Admin.into(),
        _ => Role::Viewer.into(),
    }
}
