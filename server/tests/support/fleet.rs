//! `spawn_fleet()`: HAProxy in front of demo-app backends that Baton starts, each fleet on its
//! own ports and folder. Everything started here is killed when the fleet is dropped.
//!
//! Baton runs in this process by default; with `baton_process` it runs as a `baton serve`
//! subprocess that a test can SIGKILL and start again on the same configuration and database.
//! With `socket_proxy` Baton reaches HAProxy's runtime API through a proxy the test can silence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_server::auth::Role;
use baton_server::drivers::haproxy::{HaproxyDriver, HaproxyOptions};
use baton_server::drivers::{AdminState, LoadBalancer as _, ServerState, ServerStatus};
use serde_json::Value;

use super::baton::{
    BatonProcess, InProcess, ProcessOptions, authorized_client, create_token, settings,
};
use super::config::{
    Auth, Config, Health, Host as ConfigHost, LoadBalancer, Runtime, Server, Service,
};
use super::haproxy::{self, Checks, Haproxy};
use super::hosts::TestHosts;
use super::process::{RecordedBackends, free_port, free_ports, recorded_process};
use super::socket_proxy::SocketProxy;

/// Options for the fleet under test.
pub struct FleetOptions {
    pub backends: usize,
    /// `batch_size`; `None` leaves it out (one backend at a time).
    pub batch_size: Option<u32>,
    /// `canary`; `None` leaves it out (no canary).
    pub canary: Option<u32>,
    /// `approval` (`"start"`); `None` leaves it out (no approval).
    pub approval: Option<&'static str>,
    /// The backends HAProxy's configuration marks `backup` ("web3", say).
    pub backup_servers: &'static [&'static str],
    pub drain_timeout: Duration,
    pub start_timeout: Duration,
    /// Baton's own probe of a new version: how often, and how many passes make it healthy.
    pub health_interval: Duration,
    pub healthy_threshold: u32,
    /// Extra environment for every backend (`[service.runtime] env`), e.g. the demo app's
    /// `DEMO_START_DELAY_MS`.
    pub backend_env: &'static [(&'static str, &'static str)],
    /// Run Baton as a `baton serve` subprocess (see [`Fleet::kill_baton`]).
    pub baton_process: bool,
    /// Point Baton's `runtime_api` at a [`SocketProxy`] in front of HAProxy's admin socket.
    pub socket_proxy: bool,
    /// HAProxy's checks of the backends.
    pub checks: Checks,
    /// The `baton serve` subprocess's open-file limit (soft and hard), like `ulimit -n`.
    pub nofile_limit: Option<u64>,
    /// The `baton serve` subprocess's `RUST_LOG`; `None` inherits the test's.
    pub log_filter: Option<&'static str>,
    /// `[[load_balancer]]` `command_timeout`, `attempts` and `backoff`; `None` leaves them out
    /// (the driver's defaults).
    pub haproxy: Option<HaproxyOptions>,
    /// `[auth]`; `None` keeps Baton's defaults.
    pub auth: Option<Auth>,
    /// Run the backends on these test hosts (`backends` of them on each, over OpenSSH) instead
    /// of on this machine.
    pub hosts: Option<Arc<TestHosts>>,
    /// What runs each backend instead of the demo app itself (which it may start).
    pub backend_command: Option<&'static [&'static str]>,
    /// `[service.runtime] prepare`: run once per machine before a rollout drains anything.
    pub prepare: Option<&'static str>,
    /// Baton's database (Baton in this process only); `None`: a SQLite file in the fleet's folder.
    pub database_url: Option<String>,
    /// `[server]` (a PostgreSQL database, a replica's name and lease); `None` leaves it out
    /// (a SQLite file beside the configuration).
    pub server: Option<Server>,
    /// `[service.strategy] kind = "surge"` with this overlap, each backend with a surge
    /// address of its own (backends on this machine only); `None`: rolling.
    pub surge: Option<Duration>,
    /// `[service.soak]`: (duration, max_5xx); `None`: no watch.
    pub soak: Option<(Duration, u64)>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            batch_size: None,
            canary: None,
            approval: None,
            backup_servers: &[],
            drain_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(5),
            health_interval: Duration::from_millis(50),
            healthy_threshold: 2,
            backend_env: &[],
            baton_process: false,
            socket_proxy: false,
            checks: Checks::FAST,
            nofile_limit: None,
            log_filter: None,
            haproxy: None,
            auth: None,
            hosts: None,
            backend_command: None,
            prepare: None,
            database_url: None,
            server: None,
            surge: None,
            soak: None,
        }
    }
}

/// How Baton runs in this fleet.
enum BatonRun {
    InProcess(InProcess),
    Process(BatonProcess),
}

// Fields drop in the order declared: Baton stops before HAProxy, the backends Baton recorded
// are ended after both, and the folder holding their records goes last.
pub struct Fleet {
    /// Baton's address, `http://127.0.0.1:<port>`.
    pub baton: String,
    /// HAProxy's frontend, where users' requests go.
    pub frontend: String,
    pub client: reqwest::Client,
    /// The admin API token `client` sends.
    pub token: String,
    /// Baton's database, for a test or benchmark to read or arrange it directly.
    pub database_url: String,
    /// Between Baton and HAProxy's runtime API, when the options asked for it.
    pub proxy: Option<SocketProxy>,
    /// What `baton.toml` holds (another replica's file starts from it).
    pub config: Config,
    baton_run: BatonRun,
    haproxy: Haproxy,
    backends: RecordedBackends,
    /// The backends Baton started on the test hosts (their records are under each host's state
    /// folder); ended before the hosts are taken down.
    hosted: Vec<RecordedBackends>,
    pub hosts: Option<Arc<TestHosts>>,
    pub dir: tempfile::TempDir,
}

/// Where each backend of the fleet runs: its name, address, and test host (`None`: here).
fn placement(options: &FleetOptions) -> Vec<(String, SocketAddr, Option<String>)> {
    match &options.hosts {
        None => free_ports(options.backends)
            .into_iter()
            .enumerate()
            .map(|(i, port)| {
                (
                    format!("web{}", i + 1),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    None,
                )
            })
            .collect(),
        Some(hosts) => {
            let ports = free_ports(options.backends * hosts.hosts().len());
            hosts
                .hosts()
                .iter()
                .flat_map(|host| std::iter::repeat_n(host, options.backends))
                .zip(ports)
                .enumerate()
                .map(|(i, (host, port))| {
                    (
                        format!("web{}", i + 1),
                        SocketAddr::new(host.address, port),
                        Some(host.name.clone()),
                    )
                })
                .collect()
        }
    }
}

/// The service `web` (HAProxy backend `web`) with backends web1…webN at `placement`, run by the
/// demo app, on HAProxy's runtime API at `runtime_api`.
fn config(
    options: &FleetOptions,
    runtime_api: &str,
    placement: &[(String, SocketAddr, Option<String>)],
) -> Config {
    let mut load_balancer = LoadBalancer::haproxy("edge", runtime_api);
    if let Some(haproxy) = options.haproxy {
        load_balancer = load_balancer.options(haproxy);
    }
    let mut runtime = Runtime::process(
        options
            .backend_command
            .unwrap_or(&[env!("CARGO_BIN_EXE_baton-demo-app")])
            .iter()
            .copied(),
    )
    .stop_timeout(Duration::from_secs(5));
    if let Some(script) = options.prepare {
        runtime = runtime.prepare(script);
    }
    if options.hosts.is_some() {
        // On a host the backends listen where HAProxy reaches them, not on its loopback.
        runtime = runtime.env("DEMO_BIND", "0.0.0.0");
    }
    for (name, value) in options.backend_env {
        runtime = runtime.env(name, value);
    }
    let mut web = Service::new("web")
        .haproxy_backend("web")
        .health(
            Health::new()
                .interval(options.health_interval)
                .timeout(Duration::from_secs(1))
                .healthy_threshold(options.healthy_threshold)
                .start_timeout(options.start_timeout),
        )
        .drain_timeout(options.drain_timeout)
        .runtime(runtime);
    if let Some(size) = options.batch_size {
        web = web.batch_size(size);
    }
    if let Some(canary) = options.canary {
        web = web.canary(canary);
    }
    if let Some(when) = options.approval {
        web = web.approval(when);
    }
    if let Some((duration, max_5xx)) = options.soak {
        web = web.soak(duration, max_5xx);
    }
    if let Some(overlap) = options.surge {
        // The surge servers checked as haproxy.cfg checks the others.
        web = web.surge(overlap, options.checks.inter);
    }
    // Ports of their own: not one the backends' addresses already took.
    let surge_ports: Vec<u16> = match options.surge {
        Some(_) => free_ports(placement.len() * 2)
            .into_iter()
            .filter(|port| {
                !placement
                    .iter()
                    .any(|(_, address, _)| address.port() == *port)
            })
            .take(placement.len())
            .collect(),
        None => Vec::new(),
    };
    for (i, (name, address, host)) in placement.iter().enumerate() {
        web = match (host, surge_ports.get(i)) {
            (None, Some(surge_port)) => web.surge_backend(name, address.port(), *surge_port),
            (None, None) => web.backend(name, address.port()),
            (Some(host), _) => web.backend_on(name, *address, host),
        };
    }
    let mut config = Config::new().load_balancer(load_balancer).service(web);
    if let Some(server) = options.server.clone() {
        config = config.server(server);
    }
    for host in options.hosts.iter().flat_map(|hosts| hosts.hosts()) {
        let hosts = options.hosts.as_ref().expect("iterating them");
        config = config.host(ConfigHost {
            name: host.name.clone(),
            ssh: format!("{}@{}:{}", host.ssh_user, host.address, host.ssh_port),
            identity_file: hosts.identity_file().to_owned(),
            known_hosts: hosts.known_hosts().to_owned(),
            state_dir: host.state_dir.clone(),
        });
    }
    match options.auth.clone() {
        Some(auth) => config.auth(auth),
        None => config,
    }
}

pub async fn spawn_fleet(options: FleetOptions) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let placement = placement(&options);
    let haproxy = Haproxy::start(
        dir.path(),
        &haproxy::Backend {
            name: "web".into(),
            servers: placement
                .iter()
                .map(|(name, address, _)| (name.clone(), *address))
                .collect(),
            backups: options
                .backup_servers
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            checks: options.checks,
        },
    );
    let proxy = options
        .socket_proxy
        .then(|| SocketProxy::start(dir.path().join("proxy.sock"), haproxy.socket.clone()));
    let runtime_api = if options.socket_proxy {
        "unix:proxy.sock"
    } else {
        "unix:haproxy.sock"
    };
    let config = config(&options, runtime_api, &placement);
    let config_path = config.write(dir.path());
    let mut settings = settings(&config.toml(), dir.path(), &[]);
    if let Some(url) = &options.database_url {
        assert!(
            !options.baton_process,
            "database_url needs Baton in this process (baton_process: false)"
        );
        settings.server.database_url = url.clone();
    }
    let database_url = settings.server.database_url.clone();
    // Before Baton starts, as an operator runs `baton token create`.
    let token = create_token(&settings.server.database_url, "tests", Role::Admin).await;

    let (baton, baton_run) = if options.baton_process {
        let listen = format!("127.0.0.1:{}", free_port());
        let process = BatonProcess::start(
            &config_path,
            &listen,
            ProcessOptions {
                nofile: options.nofile_limit,
                log_filter: options.log_filter,
            },
        );
        (process.url(), BatonRun::Process(process))
    } else {
        let baton = InProcess::start(settings).await;
        (baton.address.clone(), BatonRun::InProcess(baton))
    };

    let fleet = Fleet {
        baton,
        frontend: haproxy.frontend(),
        client: authorized_client(&token),
        token,
        database_url,
        proxy,
        config,
        baton_run,
        haproxy,
        backends: RecordedBackends(dir.path().join("state")),
        hosted: options
            .hosts
            .iter()
            .flat_map(|hosts| hosts.hosts())
            .map(|host| RecordedBackends(host.state_dir.clone()))
            .collect(),
        hosts: options.hosts.clone(),
        dir,
    };
    fleet.wait_baton_alive().await;
    fleet.wait_all_up(placement.len()).await;
    fleet
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
                "the fleet did not come up: {:?}\nBaton's log:\n{}",
                self.get("/api/services").await,
                self.baton_log()
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

    /// What a `baton serve` subprocess wrote so far (nothing for Baton in this process).
    pub fn baton_log(&self) -> String {
        match &self.baton_run {
            BatonRun::InProcess(_) => String::new(),
            BatonRun::Process(process) => process.log(),
        }
    }

    fn process(&mut self, what: &str) -> &mut BatonProcess {
        match &mut self.baton_run {
            BatonRun::Process(process) => process,
            BatonRun::InProcess(_) => {
                panic!("{what} needs FleetOptions {{ baton_process: true, .. }}")
            }
        }
    }

    /// The `baton serve` subprocess's PID (to read its memory or descriptors from /proc).
    pub fn baton_pid(&self) -> u32 {
        match &self.baton_run {
            BatonRun::Process(process) => process.pid(),
            BatonRun::InProcess(_) => {
                panic!("baton_pid needs FleetOptions {{ baton_process: true, .. }}")
            }
        }
    }

    /// SIGKILLs the `baton serve` subprocess: no shutdown code of Baton's runs.
    pub fn kill_baton(&mut self) {
        self.process("kill_baton").kill();
    }

    /// Starts `baton serve` again on the same configuration, database, state and port, and
    /// waits until it answers.
    pub async fn restart_baton(&mut self) {
        self.process("restart_baton").restart();
        self.wait_baton_alive().await;
    }

    /// HAProxy's PID (to read its CPU time from /proc).
    pub fn haproxy_pid(&self) -> u32 {
        self.haproxy.pid()
    }

    /// A driver on HAProxy's own admin socket (never through the proxy), for the test to look
    /// at or arrange HAProxy itself.
    /// Restarts HAProxy on its haproxy.cfg (see [`Haproxy::restart`]).
    pub fn restart_haproxy(&mut self) {
        self.haproxy.restart();
    }

    pub fn haproxy(&self) -> HaproxyDriver {
        self.haproxy.driver()
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

    /// A client signed in with a new token of `role` (created as `baton token create` does).
    pub async fn client_as(&self, name: &str, role: Role) -> reqwest::Client {
        authorized_client(&create_token(&self.database_url, name, role).await)
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

    /// Waits until the rollout has finished (not queued, running or waiting for a person) and
    /// returns it with its steps.
    pub async fn finished(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let deployment = self.get(&format!("/api/deployments/{id}")).await.unwrap();
            // Waiting for an approval or a promotion is not an end either: one just given may
            // not have reached the worker yet.
            if !matches!(
                deployment["status"].as_str(),
                Some("queued" | "running" | "awaiting_approval" | "awaiting_promote")
            ) {
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

    /// The PID and version Baton recorded for a backend's process on whichever test host it
    /// runs (`<host state>/web/<backend>.json`).
    pub fn hosted_process(&self, backend: &str) -> Option<(i32, String)> {
        self.hosts
            .iter()
            .flat_map(|hosts| hosts.hosts())
            .find_map(|host| recorded_process(&host.state_dir, "web", backend))
    }

    /// The PID and version Baton recorded for a backend's process (`state/web/<backend>.json`).
    pub fn recorded_process(&self, backend: &str) -> Option<(i32, String)> {
        recorded_process(&self.state_dir(), "web", backend)
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

/// Samples how many servers of the `web` backend HAProxy reports UP, every 50 ms, straight from
/// its admin socket, until stopped (at most 60 s); returns each sample with its time since the
/// start. This is the capacity a user's requests have.
pub fn capacity_trace(
    fleet: &Fleet,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Duration, usize)>> {
    let haproxy = fleet.haproxy();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut trace = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            tick.tick().await;
            if let Ok(servers) = haproxy.servers("web").await {
                let up = servers.iter().filter(|s| s.is_up()).count();
                if std::env::var_os("TRACE_CAPACITY").is_some() {
                    let others: Vec<String> = servers
                        .iter()
                        .filter(|s| !s.is_up())
                        .map(|s| format!("{} {}", s.server, s.status))
                        .collect();
                    eprintln!("{:?} up={up} {others:?}", started.elapsed());
                }
                trace.push((started.elapsed(), up));
            }
        }
        trace
    })
}

/// The lowest UP count sampled, and the trace as "t=…ms up=…" where it changed (for messages
/// and the README's figures).
pub fn capacity_summary(trace: &[(Duration, usize)]) -> (usize, String) {
    let min = trace.iter().map(|(_, up)| *up).min().unwrap_or(0);
    let mut changes = vec![format!(
        "{} samples over {} ms",
        trace.len(),
        trace.last().map_or(0, |(at, _)| at.as_millis())
    )];
    let mut last = None;
    for (at, up) in trace {
        if last != Some(*up) {
            changes.push(format!("t={}ms up={up}", at.as_millis()));
            last = Some(*up);
        }
    }
    (min, changes.join(", "))
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

/// Every server UP on HAProxy itself (none left drained or in maint), and every backend on
/// `version` as Baton reports it.
pub async fn assert_all_serving(fleet: &Fleet, version: &str) {
    for server in fleet.haproxy_servers().await {
        assert_eq!(
            server.status,
            ServerState::Up { changing: None },
            "left out of rotation: {server:?}"
        );
    }
    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["version"], version, "{backend}");
    }
    for _ in 0..6 {
        let answer = fleet.through_haproxy().await.unwrap();
        assert!(answer.starts_with(&format!("{version} ")), "{answer}");
    }
}

/// No request through HAProxy failed, and the load generator did send some.
pub fn assert_no_failures(sent: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {sent} requests through HAProxy failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 20, "the load generator sent only {sent} requests");
}
