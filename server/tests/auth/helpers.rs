//! One server per test: auth's own endpoints and a few stand-in routes registered through the
//! route policy, behind the real auth layer and security headers, over real HTTP on a free
//! port, with a real SQLite file. Logs of the whole test binary are captured for scanning.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::routing::{get, post};
use baton_server::auth::{self, Access, Auth, Guarded, Policy, Role};
use baton_server::settings::AuthConfig;
use baton_server::store::Store;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// Everything every test in this binary logged (at debug level and above).
pub fn logs() -> String {
    String::from_utf8_lossy(&capture().lock().unwrap()).into_owned()
}

fn capture() -> &'static Arc<Mutex<Vec<u8>>> {
    static CAPTURE: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Writer(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one log capture per binary");
        buffer
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stand-ins for Baton's routes, each with the access its real counterpart needs.
fn stand_in_routes() -> Guarded {
    Guarded::new()
        .get("/alive", Access::Public, || async { "ok" })
        .get("/api/services", Role::Viewer, || async { "[]" })
        .post(
            "/api/services/{service}/deployments",
            Role::Deployer,
            || async { axum::Json(serde_json::json!({ "id": 7, "status": "queued" })) },
        )
        .post(
            "/api/services/{service}/rollback",
            Role::Deployer,
            || async { "queued" },
        )
        .post("/api/deployments/{id}/{action}", Role::Deployer, || async {
            "requested"
        })
        .post(
            "/api/webhooks/deliveries/{id}/replay",
            Role::Admin,
            || async { "replayed" },
        )
        .post("/hooks/{service}", Access::Public, || async {
            "signature checked"
        })
        .page("/", Role::Viewer)
        .page("/deployments", Role::Viewer)
        .page("/audit", Role::Admin)
        .page("/login", Access::Public)
        .server_functions()
}

/// Routes someone else registers: the pages and server functions (as Leptos does, by path),
/// and one route that nobody gave a rule.
fn unguarded_routes() -> Router {
    let page = || async { axum::response::Html("<main>a page</main>") };
    let mut router = Router::new()
        .route("/", get(page))
        .route("/deployments", get(page))
        .route("/audit", get(page))
        .route("/login", get(page))
        .route("/api/forgotten", post(|| async { "should never run" }));
    for (path, _) in auth::SERVER_FUNCTIONS {
        router = router.route(path, post(|| async { "server function ran" }));
    }
    router
}

pub struct Server {
    pub url: String,
    pub store: Store,
    pub policy: Policy,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A server on the database file `db` (created if missing).
pub async fn spawn(db: &Path) -> Server {
    spawn_with(db, AuthConfig::default()).await
}

pub async fn spawn_with(db: &Path, config: AuthConfig) -> Server {
    capture();
    let store = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("the database opens");
    let auth = Auth::new(store.clone(), config);
    let (routes, policy) = stand_in_routes().merge(auth.routes()).into_parts();
    let router = routes
        .merge(unguarded_routes())
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such page") });
    let router = auth
        .protect(router, policy.clone())
        .layer(auth::security_headers())
        .layer(TraceLayer::new_for_http());
    serve(router, store, policy).await
}

/// Serves `router` (connect info on, as Baton must be served) until the server is dropped.
pub async fn serve(router: Router, store: Store, policy: Policy) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .expect("the server runs");
    });
    Server {
        url,
        store,
        policy,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        shutdown,
        task: Some(task),
    }
}

impl Server {
    /// Stops serving and closes the database, as a stopping Baton does.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the server task ends");
        }
        self.store.close().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The headers a browser on Baton's own pages sends with a cookie.
    pub fn browser(&self, cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            HeaderValue::from_str(&format!("{}={cookie}", auth::SESSION_COOKIE)).unwrap(),
        );
        headers.insert("origin", HeaderValue::from_str(&self.url).unwrap());
        headers
    }

    pub fn bearer(token: &str) -> HeaderMap {
        crate::support::baton::bearer(token)
    }

    /// Adds a user straight to the database, as `baton user add` does.
    pub async fn add_user(&self, name: &str, role: Role, password: &str) {
        auth::accounts::add_user(
            &self.store,
            &auth::Actor::cli(),
            None,
            name,
            role,
            auth::Password::new(password),
        )
        .await
        .expect("the user is added");
    }

    /// Creates a token straight in the database; returns the secret.
    pub async fn add_token(&self, name: &str, role: Role) -> String {
        let (_, token) =
            auth::accounts::create_token(&self.store, &auth::Actor::cli(), None, name, role)
                .await
                .expect("the token is created");
        token.expose().to_owned()
    }

    /// Signs in with JSON; returns the session cookie's value.
    pub async fn login(&self, name: &str, password: &str) -> String {
        let response = self
            .client
            .post(self.url("/auth/login"))
            .json(&serde_json::json!({ "name": name, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name} signs in");
        session_cookie(&response).expect("a session cookie is set")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The session cookie a response sets, if any.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    set_cookie(response).and_then(|header| {
        header
            .split(';')
            .next()
            .and_then(|pair| {
                pair.trim()
                    .strip_prefix(&format!("{}=", auth::SESSION_COOKIE))
            })
            .map(str::to_owned)
    })
}

pub fn set_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .map(|value| value.to_str().unwrap().to_owned())
}

pub async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    body["error"].as_str().expect("an error message").to_owned()
}
