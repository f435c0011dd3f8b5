//! `spawn_app()`: one running Baton per test, each with its own database and port.

use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
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
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("baton.toml");
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        database_url: None,
        site_root: Some(dir.path().join("site").display().to_string()),
    };
    let settings = Settings::parse(CONFIG, &path, &env).expect("the test configuration is valid");
    assert!(
        settings
            .server
            .database_url
            .contains(&dir.path().display().to_string())
    );
    let application = Application::build(settings).await.expect("Baton starts");
    let address = format!("http://{}", application.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        dir,
        shutdown,
        server: Some(server),
    }
}

impl TestApp {
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
    let settings =
        Settings::parse_with_secrets(config, &path, &env, &|name| secrets.get(name).cloned())
            .expect("the test configuration is valid");
    let application = Application::build(settings).await.expect("Baton starts");
    let address = format!("http://{}", application.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        dir,
        shutdown,
        server: Some(server),
    }
}
