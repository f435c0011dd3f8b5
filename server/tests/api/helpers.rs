//! `spawn_app()`: one running Baton per test, each with its own database and port.

use baton_server::auth::{Actor, Policy, Role, accounts};
use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
use baton_server::store::Store;
use tokio_util::sync::CancellationToken;

pub const CONFIG: &str = r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "api"
load_balancer = "edge"
[service.runtime]
kind = "process"
command = ["true"]
initial_version = "v1"
[[service.backend]]
name = "s1"
address = "127.0.0.1:18001"
[[service.backend]]
name = "s2"
address = "127.0.0.1:18002"

[[service]]
name = "worker"
load_balancer = "edge"
[service.runtime]
kind = "process"
command = ["true"]
initial_version = "v1"
[[service.backend]]
name = "w1"
address = "127.0.0.1:18011"
"#;

pub struct TestApp {
    pub address: String,
    /// Sends an admin token.
    pub client: reqwest::Client,
    /// Sends no credentials.
    pub anonymous: reqwest::Client,
    /// Every route of the application and the access it needs.
    pub policy: Policy,
    database_url: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_tuned(|_| {}).await
}

/// Like [`spawn_app`], with `tune` applied to the parsed settings (for knobs the configuration
/// file does not have).
pub async fn spawn_app_tuned(tune: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("baton.toml");
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        database_url: None,
        site_root: Some(dir.path().join("site").display().to_string()),
    };
    let mut settings =
        Settings::parse(CONFIG, &path, &env).expect("the test configuration is valid");
    tune(&mut settings);
    assert!(
        settings
            .server
            .database_url
            .contains(&dir.path().display().to_string())
    );
    start(settings, dir).await
}

/// Starts Baton on `settings` with an admin API token that `client` sends on every request (the
/// tests of access control make their own clients).
async fn start(settings: Settings, dir: tempfile::TempDir) -> TestApp {
    let database_url = settings.server.database_url.clone();
    let application = Application::build(settings).await.expect("Baton starts");
    let policy = application.policy().clone();
    let store = Store::connect(&database_url).await.unwrap();
    let (_, token) = accounts::create_token(&store, &Actor::cli(), None, "tests", Role::Admin)
        .await
        .unwrap();
    store.close().await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.expose()).parse().unwrap(),
    );
    let address = format!("http://{}", application.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
        anonymous: reqwest::Client::new(),
        policy,
        database_url,
        dir,
        shutdown,
        server: Some(server),
    }
}

impl TestApp {
    /// A token with `role`, for tests of access control.
    pub async fn token(&self, name: &str, role: Role) -> String {
        let store = Store::connect(&self.database_url).await.unwrap();
        let (_, token) = accounts::create_token(&store, &Actor::cli(), None, name, role)
            .await
            .unwrap();
        store.close().await;
        token.expose().to_owned()
    }

    /// A second connection to the database, as the `baton` command opens from another process
    /// (its changes reach the server only through the database).
    pub async fn cli_store(&self) -> Store {
        Store::connect(&self.database_url).await.unwrap()
    }

    pub fn database_file(&self) -> std::path::PathBuf {
        self.dir.path().join("baton.db")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("Baton answers")
    }

    /// Stops the server and waits for it, as a SIGTERM would.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task ends")
                .expect("the server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Like [`spawn_app`], on `config`, with the environment variables that hold webhook secrets
/// looked up in `secrets` (the tests never touch the process environment).
pub async fn spawn_app_with(config: &str, secrets: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("baton.toml");
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        site_root: Some(dir.path().join("site").display().to_string()),
        ..EnvOverrides::default()
    };
    let secrets: std::collections::HashMap<String, String> = secrets
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let settings = Settings::parse_with_secrets(config, &path, &env, &|name| {
        // Backends still inherit PATH and HOME from the test's environment.
        secrets
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })
    .expect("the test configuration is valid");
    start(settings, dir).await
}
