//! Baton under test, with an admin API token: in this process on port 0 (`spawn_app()`, one per
//! test with its own folder and database), or as a `baton serve` subprocess writing to a log file
//! that a test can SIGKILL and start again on the same configuration and database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use baton_server::auth::{Actor, Policy, Role, accounts};
use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
use baton_server::store::Store;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;

use super::config;
use super::postgres;
use super::process::KillOnDrop;

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is a header value"),
    );
    headers
}

/// A client that sends `token` on every request.
pub fn authorized_client(token: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(bearer(token))
        .build()
        .expect("a reqwest client")
}

/// Creates an API token straight in the database at `database_url` (creating the database if
/// need be), as `baton token create` does; returns the secret.
pub async fn create_token(database_url: &str, name: &str, role: Role) -> String {
    let store = Store::connect(database_url)
        .await
        .expect("the database opens");
    let (_, token) = accounts::create_token(&store, &Actor::cli(), None, name, role)
        .await
        .expect("the token is created");
    store.close().await;
    token.expose().to_owned()
}

/// Parses `config` as `dir/baton.toml` would be, listening on port 0 with the site in
/// `dir/site`; the environment variables holding webhook secrets are looked up in `secrets`
/// first (the tests never touch the process environment).
pub fn settings(config: &str, dir: &Path, secrets: &[(&str, &str)]) -> Settings {
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        site_root: Some(dir.join("site").display().to_string()),
        ..EnvOverrides::default()
    };
    Settings::parse_with_secrets(config, &dir.join("baton.toml"), &env, &|name| {
        secrets
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
            // Backends still inherit PATH and HOME from the test's environment.
            .or_else(|| std::env::var(name).ok())
    })
    .unwrap_or_else(|e| panic!("the test configuration is valid: {e}\n{config}"))
}

/// Baton running in this process until [`InProcess::stop`] or drop.
pub struct InProcess {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Every route of the application and the access it needs.
    pub policy: Policy,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Builds Baton on `settings` (bound to its port) and serves it on a tokio task.
    pub async fn start(settings: Settings) -> Self {
        let application = Application::build(settings).await.expect("Baton starts");
        let policy = application.policy().clone();
        let address = format!("http://{}", application.local_addr());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
        Self {
            address,
            policy,
            shutdown,
            server: Some(server),
        }
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

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One Baton per test, in this process, with its own folder, database and port.
pub struct TestApp {
    pub address: String,
    /// Sends an admin token.
    pub client: reqwest::Client,
    /// Sends no credentials.
    pub anonymous: reqwest::Client,
    /// Every route of the application and the access it needs.
    pub policy: Policy,
    database_url: String,
    baton: InProcess,
    /// Dropped last: the database and the backends' state live here.
    pub dir: tempfile::TempDir,
}

/// Baton on [`config::api_and_worker`].
pub async fn spawn_app() -> TestApp {
    spawn_app_tuned(|_| {}).await
}

/// Like [`spawn_app`], with `tune` applied to the parsed settings (for knobs the configuration
/// file does not have).
pub async fn spawn_app_tuned(tune: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(&config::api_and_worker().toml(), &[], tune).await
}

/// Like [`spawn_app`], on `config`, with the environment variables that hold webhook secrets
/// looked up in `secrets`.
pub async fn spawn_app_with(config: &str, secrets: &[(&str, &str)]) -> TestApp {
    spawn(config, secrets, |_| {}).await
}

/// Like [`spawn_app`], on a fresh database of the tests' PostgreSQL server (see
/// [`postgres`]) instead of a SQLite file.
pub async fn spawn_app_on_postgres() -> TestApp {
    spawn_app_with_on_postgres(&config::api_and_worker().toml(), &[]).await
}

/// Like [`spawn_app_with`], on a fresh database of the tests' PostgreSQL server.
pub async fn spawn_app_with_on_postgres(config: &str, secrets: &[(&str, &str)]) -> TestApp {
    let url = postgres::fresh_database();
    spawn(config, secrets, |settings| {
        settings.server.database_url = url
    })
    .await
}

async fn spawn(
    config: &str,
    secrets: &[(&str, &str)],
    tune: impl FnOnce(&mut Settings),
) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut settings = settings(config, dir.path(), secrets);
    tune(&mut settings);
    let database_url = settings.server.database_url.clone();
    assert!(
        database_url.contains(&dir.path().display().to_string())
            || database_url.starts_with("postgres://"),
        "the test's database is its own (a file in its folder, or a fresh PostgreSQL database): \
         {database_url}"
    );
    let baton = InProcess::start(settings).await;
    // The tests of access control make their own clients.
    let token = create_token(&database_url, "tests", Role::Admin).await;
    TestApp {
        address: baton.address.clone(),
        client: authorized_client(&token),
        anonymous: reqwest::Client::new(),
        policy: baton.policy.clone(),
        database_url,
        baton,
        dir,
    }
}

impl TestApp {
    /// A token with `role`, for tests of access control.
    pub async fn token(&self, name: &str, role: Role) -> String {
        create_token(&self.database_url, name, role).await
    }

    /// A second connection to the database, as the `baton` command opens from another process
    /// (its changes reach the server only through the database).
    pub async fn cli_store(&self) -> Store {
        Store::connect(&self.database_url).await.unwrap()
    }

    pub fn database_file(&self) -> PathBuf {
        self.dir.path().join("baton.db")
    }

    /// Everything the database holds, as bytes to search: SQLite's files (the database, its
    /// WAL and shared memory), or a dump of the PostgreSQL database (where `bytea` is in hex).
    pub fn stored_bytes(&self) -> Vec<u8> {
        if self.database_url.starts_with("postgres://") {
            return postgres::dump(&self.database_url);
        }
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("the test's folder") {
            let path = entry.expect("an entry of the test's folder").path();
            if path.to_string_lossy().contains("baton.db") {
                stored.extend(std::fs::read(&path).expect("a database file"));
            }
        }
        stored
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("Baton answers")
    }

    /// Adds a user through the API (as the admin `client`) and signs it in with JSON, as a
    /// browser would; returns the login's answer (its `set-cookie` holds the session).
    pub async fn add_user_and_log_in(
        &self,
        name: &str,
        role: Role,
        password: &str,
    ) -> reqwest::Response {
        let created = self
            .client
            .post(format!("{}/api/users", self.address))
            .json(&serde_json::json!({ "name": name, "role": role, "password": password }))
            .send()
            .await
            .expect("Baton answers");
        assert_eq!(created.status(), 201, "user {name} is created");
        self.anonymous
            .post(format!("{}/auth/login", self.address))
            .json(&serde_json::json!({ "name": name, "password": password }))
            .send()
            .await
            .expect("Baton answers")
    }

    /// Stops the server and waits for it, as a SIGTERM would.
    pub async fn stop(self) {
        self.baton.stop().await;
    }
}

/// How a `baton serve` subprocess runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessOptions {
    /// Its open-file limit (soft and hard), like `ulimit -n`.
    pub nofile: Option<u64>,
    /// `RUST_LOG`; `None` inherits the test's.
    pub log_filter: Option<&'static str>,
}

/// `baton serve --config <config>` on `listen`, its stdout and stderr appended to the log file
/// beside the configuration (`baton.log` for `baton.toml`); SIGKILLed when dropped.
pub struct BatonProcess {
    config: PathBuf,
    listen: String,
    options: ProcessOptions,
    /// `None` while killed.
    child: Option<KillOnDrop>,
}

impl BatonProcess {
    pub fn start(config: &Path, listen: &str, options: ProcessOptions) -> Self {
        let mut baton = Self {
            config: config.to_owned(),
            listen: listen.to_owned(),
            options,
            child: None,
        };
        baton.spawn();
        baton
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "Baton is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("baton.log can be opened");
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        if let Some(limit) = self.options.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        if let Some(filter) = self.options.log_filter {
            command.env("RUST_LOG", filter);
        }
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("BATON_LISTEN", &self.listen)
            .env_remove("BATON_DATABASE_URL")
            .env_remove("BATON_SITE_ROOT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("baton.log can be shared"))
            .stderr(log)
            .spawn()
            .expect("the baton binary starts");
        self.child = Some(KillOnDrop::new(child));
    }

    /// `http://<listen>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The running process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("Baton is running").id()
    }

    /// Beside the configuration, named after it: `baton.log` for `baton.toml`.
    pub fn log_file(&self) -> PathBuf {
        self.config.with_extension("log")
    }

    /// What it wrote so far, without the terminal colours (`tracing` writes them to files too).
    pub fn log(&self) -> String {
        without_colours(&std::fs::read_to_string(self.log_file()).unwrap_or_default())
    }

    /// SIGKILLs it: no shutdown code of Baton's runs.
    pub fn kill(&mut self) {
        self.child.take().expect("Baton is running").kill();
    }

    /// Starts it again on the same configuration, database, state and port.
    pub fn restart(&mut self) {
        self.spawn();
    }
}

/// `text` without its ANSI escape sequences (`ESC [ … final byte`).
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
