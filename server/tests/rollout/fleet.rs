//! `spawn_fleet()`: HAProxy in front of three demo-app backends that Baton starts, each test on
//! its own ports and folder. Everything started here is killed when the fleet is dropped.
//!
//! Baton runs in this process by default; with `baton_process` it runs as a `baton serve`
//! subprocess that a test can SIGKILL and start again on the same configuration and database.
//! With `socket_proxy` Baton reaches HAProxy's runtime API through a proxy the test can silence.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_server::drivers::haproxy::{HaproxyDriver, HaproxyOptions};
use baton_server::drivers::{AdminState, LoadBalancer, ServerStatus};
use baton_server::settings::{EnvOverrides, RuntimeApiAddr, Settings};
use baton_server::startup::Application;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::socket_proxy::SocketProxy;

pub struct Fleet {
    pub baton: String,
    pub frontend: String,
    pub client: reqwest::Client,
    /// The admin API token `client` sends.
    pub token: String,
    pub dir: tempfile::TempDir,
    haproxy: Child,
    baton_run: BatonRun,
    /// Between Baton and HAProxy's runtime API, when the options asked for it.
    pub proxy: Option<SocketProxy>,
}

/// How Baton runs in this fleet.
enum BatonRun {
    InProcess(CancellationToken),
    /// `baton serve` listening on `listen`; `None` while killed.
    Process {
        child: Option<Child>,
        listen: String,
        nofile: Option<u64>,
    },
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for the fleet under test.
pub struct FleetOptions {
    pub backends: usize,
    pub drain_timeout: &'static str,
    pub start_timeout: &'static str,
    /// Extra environment for every backend (`[service.runtime] env`), e.g. the demo app's
    /// `DEMO_START_DELAY_MS`.
    pub backend_env: &'static [(&'static str, &'static str)],
    /// Run Baton as a `baton serve` subprocess (see [`Fleet::kill_baton`]).
    pub baton_process: bool,
    /// Point Baton's `runtime_api` at a [`SocketProxy`] in front of HAProxy's admin socket.
    pub socket_proxy: bool,
    /// HAProxy's `default-server` check settings for the backends.
    pub checks: &'static str,
    /// The `baton serve` subprocess's open-file limit (soft and hard), like `ulimit -n`.
    pub nofile_limit: Option<u64>,
    /// `[[load_balancer]]` `command_timeout`, `attempts` and `backoff`; `None` leaves them out
    /// (the driver's defaults).
    pub haproxy: Option<HaproxyOptions>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            drain_timeout: "10s",
            start_timeout: "5s",
            backend_env: &[],
            baton_process: false,
            socket_proxy: false,
            checks: "inter 100ms fastinter 50ms downinter 100ms rise 2 fall 2",
            nofile_limit: None,
            haproxy: None,
        }
    }
}

pub async fn spawn_fleet(options: FleetOptions) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let frontend_port = free_port();
    let ports: Vec<u16> = (0..options.backends).map(|_| free_port()).collect();
    let socket = dir.path().join("haproxy.sock");

    let servers: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("    server web{} 127.0.0.1:{port} check\n", i + 1))
        .collect();
    let haproxy_cfg = format!(
        "global\n    stats socket {socket} mode 600 level admin\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 0\n\
         frontend fe\n    bind 127.0.0.1:{frontend_port}\n    default_backend web\n\
         backend web\n    option httpchk GET /alive\n    default-server {checks}\n{servers}",
        socket = socket.display(),
        checks = options.checks
    );
    std::fs::write(dir.path().join("haproxy.cfg"), haproxy_cfg).unwrap();
    let haproxy = Command::new("/usr/sbin/haproxy")
        .args(["-db", "-f"])
        .arg(dir.path().join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("HAProxy starts (apt-get install haproxy)");

    let proxy = options
        .socket_proxy
        .then(|| SocketProxy::start(dir.path().join("proxy.sock"), socket.clone()));
    let runtime_api = if options.socket_proxy {
        "unix:proxy.sock"
    } else {
        "unix:haproxy.sock"
    };
    let backends: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "[[service.backend]]\nname = \"web{}\"\naddress = \"127.0.0.1:{port}\"\n",
                i + 1
            )
        })
        .collect();
    let haproxy_options = options
        .haproxy
        .map(|o| {
            format!(
                "command_timeout = \"{}ms\"\nattempts = {}\nbackoff = \"{}ms\"\n",
                o.command_timeout.as_millis(),
                o.attempts,
                o.backoff.as_millis()
            )
        })
        .unwrap_or_default();
    let env: Vec<String> = options
        .backend_env
        .iter()
        .map(|(key, value)| format!("{key} = \"{value}\""))
        .collect();
    let config = format!(
        r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["{runtime_api}"]
{haproxy_options}
[[service]]
name = "web"
load_balancer = "edge"
haproxy_backend = "web"
[service.health]
interval = "50ms"
timeout = "1s"
healthy_threshold = 2
start_timeout = "{start_timeout}"
[service.drain]
timeout = "{drain_timeout}"
[service.runtime]
kind = "process"
command = ["{app}"]
initial_version = "v1"
stop_timeout = "5s"
env = {{ {env} }}
{backends}"#,
        start_timeout = options.start_timeout,
        drain_timeout = options.drain_timeout,
        app = env!("CARGO_BIN_EXE_baton-demo-app"),
        env = env.join(", "),
    );
    let config_path = dir.path().join("baton.toml");
    std::fs::write(&config_path, &config).unwrap();

    let token = admin_token(&config, &config_path).await;
    let (baton, baton_run) = if options.baton_process {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = start_baton_process(&config_path, &listen, options.nofile_limit);
        (
            format!("http://{listen}"),
            BatonRun::Process {
                child: Some(child),
                listen,
                nofile: options.nofile_limit,
            },
        )
    } else {
        let env = EnvOverrides {
            listen: Some("127.0.0.1:0".into()),
            ..EnvOverrides::default()
        };
        let settings = Settings::parse(&config, &config_path, &env).unwrap();
        let application = Application::build(settings).await.unwrap();
        let baton = format!("http://{}", application.local_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(application.run_until_stopped(shutdown.clone()));
        (baton, BatonRun::InProcess(shutdown))
    };

    let fleet = Fleet {
        baton,
        frontend: format!("http://127.0.0.1:{frontend_port}"),
        client: authorized_client(&token),
        token,
        dir,
        haproxy,
        baton_run,
        proxy,
    };
    fleet.wait_baton_alive().await;
    fleet.wait_all_up(options.backends).await;
    fleet
}

/// Creates the database (as Baton would) with an admin API token for the tests' own calls.
async fn admin_token(config: &str, path: &Path) -> String {
    use baton_server::auth::{Actor, Role, accounts};
    let settings = Settings::parse(config, path, &EnvOverrides::default()).unwrap();
    let store = baton_server::store::Store::connect(&settings.server.database_url)
        .await
        .unwrap();
    let (_, token) = accounts::create_token(&store, &Actor::cli(), None, "tests", Role::Admin)
        .await
        .unwrap();
    store.close().await;
    token.expose().to_owned()
}

/// A client that sends `token` on every request.
fn authorized_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// `baton serve --config <config>` on `listen`, its output appended to `baton.log` beside the
/// configuration.
fn start_baton_process(config: &Path, listen: &str, nofile: Option<u64>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("baton.log"))
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    if let Some(limit) = nofile {
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
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("BATON_LISTEN", listen)
        .env_remove("BATON_DATABASE_URL")
        .env_remove("BATON_SITE_ROOT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the baton binary starts")
}

impl Fleet {
    /// Waits until HAProxy reports every backend UP (Baton brings them up at start).
    pub async fn wait_all_up(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(services) = self.get("/api/services").await {
                let up = services[0]["backends"]
                    .as_array()
                    .map(|backends| {
                        backends
                            .iter()
                            .filter(|b| b["load_balancer"][0]["status"] == "UP")
                            .count()
                    })
                    .unwrap_or(0);
                if up == count {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the fleet did not come up: {:?}",
                self.get("/api/services").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until Baton's `/alive` answers 200 (a subprocess needs a moment to start).
    pub async fn wait_baton_alive(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let alive = self
                .client
                .get(format!("{}/alive", self.baton))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if alive.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Baton did not answer /alive within 20 s; its log:\n{}",
                self.baton_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a `baton serve` subprocess wrote so far.
    pub fn baton_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baton.log")).unwrap_or_default()
    }

    /// SIGKILLs the `baton serve` subprocess: no shutdown code of Baton's runs.
    pub fn kill_baton(&mut self) {
        let BatonRun::Process { child, .. } = &mut self.baton_run else {
            panic!("kill_baton needs FleetOptions {{ baton_process: true, .. }}");
        };
        let mut child = child.take().expect("Baton is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts `baton serve` again on the same configuration, database, state and port, and
    /// waits until it answers.
    pub async fn restart_baton(&mut self) {
        let config = self.dir.path().join("baton.toml");
        let BatonRun::Process {
            child,
            listen,
            nofile,
        } = &mut self.baton_run
        else {
            panic!("restart_baton needs FleetOptions {{ baton_process: true, .. }}");
        };
        assert!(child.is_none(), "Baton is still running");
        *child = Some(start_baton_process(&config, listen, *nofile));
        self.wait_baton_alive().await;
    }

    /// A driver on HAProxy's own admin socket (never through the proxy), for the test to look
    /// at or arrange HAProxy itself.
    pub fn haproxy(&self) -> HaproxyDriver {
        HaproxyDriver::new(
            vec![RuntimeApiAddr::Unix(self.dir.path().join("haproxy.sock"))],
            HaproxyOptions::default(),
        )
    }

    /// `show stat` of the `web` backend, straight from HAProxy.
    pub async fn haproxy_servers(&self) -> Vec<ServerStatus> {
        self.haproxy().servers("web").await.unwrap()
    }

    /// Sets a server's admin state straight on HAProxy (to arrange a test, not as Baton would).
    pub async fn haproxy_set(&self, server: &str, state: AdminState) {
        self.haproxy()
            .set_state("web", server, state)
            .await
            .unwrap();
    }

    pub async fn get(&self, path: &str) -> Result<Value, reqwest::Error> {
        self.client
            .get(format!("{}{path}", self.baton))
            .send()
            .await?
            .json()
            .await
    }

    pub async fn deploy(&self, version: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/services/web/deployments", self.baton))
            .json(&serde_json::json!({ "version": version }))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits until the rollout has finished and returns it with its steps.
    pub async fn finished(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let deployment = self.get(&format!("/api/deployments/{id}")).await.unwrap();
            if !matches!(deployment["status"].as_str(), Some("queued" | "running")) {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} did not finish: {deployment:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 30 s) until rollout `id` satisfies `done`, and returns it.
    pub async fn wait_until(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let deployment = self.get(&format!("/api/deployments/{id}")).await.unwrap();
            if done(&deployment) {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} never reached {what}: {deployment:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until rollout `id` has a step matching `found` and returns the rollout.
    pub async fn wait_for_step(
        &self,
        id: i64,
        what: &str,
        found: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_until(id, what, |deployment| {
            deployment["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(&found))
        })
        .await
    }

    /// What each request through HAProxy is answered with: "v2 web1", say.
    pub async fn through_haproxy(&self) -> Result<String, String> {
        match self
            .client
            .get(&self.frontend)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                Ok(response.text().await.unwrap_or_default())
            }
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) => Err(error.to_string()),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The PID and version Baton recorded for a backend's process (`state/web/<backend>.json`).
    pub fn recorded_process(&self, backend: &str) -> Option<(i32, String)> {
        let path = self.state_dir().join("web").join(format!("{backend}.json"));
        let record: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some((
            record["pid"].as_i64()? as i32,
            record["version"].as_str()?.to_owned(),
        ))
    }
}

/// Whether a process with this PID exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

impl Drop for Fleet {
    fn drop(&mut self) {
        match &mut self.baton_run {
            BatonRun::InProcess(shutdown) => shutdown.cancel(),
            BatonRun::Process { child, .. } => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        kill_recorded_backends(&self.state_dir());
    }
}

/// The backends run detached from Baton (on purpose): end them by the PIDs Baton recorded.
pub fn kill_recorded_backends(state_dir: &Path) {
    let Ok(services) = std::fs::read_dir(state_dir) else {
        return;
    };
    for service in services.flatten() {
        let Ok(records) = std::fs::read_dir(service.path()) else {
            continue;
        };
        for record in records.flatten() {
            if record.path().extension().is_some_and(|ext| ext == "json") {
                let text = std::fs::read_to_string(record.path()).unwrap_or_default();
                if let Some(pid) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|r| r["pid"].as_i64())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(-(pid as i32)),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Sends requests through HAProxy one after the other until stopped (at most 60 s and 200,000
/// requests); returns (sent, failures), a failure being a non-2xx answer or a connection error.
pub fn load(fleet: &Fleet, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let client = reqwest::Client::new();
    let url = fleet.frontend.clone();
    tokio::spawn(async move {
        let (mut sent, mut failures) = (0, Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
            && sent < 200_000
        {
            sent += 1;
            match client
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => failures.push(format!("HTTP {}", response.status())),
                Err(error) => failures.push(error.to_string()),
            }
        }
        (sent, failures)
    })
}

/// The rollout's steps (forward, or those of the rollback) as "backend step outcome".
pub fn steps_of(deployment: &Value, rollback: bool) -> Vec<String> {
    deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["rollback"] == rollback)
        .map(|s| {
            format!(
                "{} {} {}",
                s["backend"].as_str().unwrap_or("-"),
                s["step"].as_str().unwrap(),
                s["outcome"].as_str().unwrap_or("running")
            )
        })
        .collect()
}
