//! A typed builder of `baton.toml`, so that tests say which services, backends and timeouts
//! they need instead of pasting TOML. It is serialized with the `toml` crate (quoting and
//! escaping included); a test that is about parsing TOML passes its own text instead.
//!
//! ```ignore
//! let config = Config::edge().service(
//!     Service::new("api")
//!         .runtime(Runtime::command())
//!         .backend("s1", 18001)
//!         .webhook(Webhook::new("API_WEBHOOK_SECRET").branch("master")),
//! );
//! spawn_app_with(&config.toml(), &[("API_WEBHOOK_SECRET", "s3cret")]).await;
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_server::drivers::haproxy::HaproxyOptions;
use serde::Serialize;

/// The whole file: `[server]`, `[[load_balancer]]`s, `[[service]]`s and `[auth]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<Server>,
    #[serde(rename = "load_balancer", skip_serializing_if = "Vec::is_empty")]
    load_balancers: Vec<LoadBalancer>,
    #[serde(rename = "host", skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<Host>,
    #[serde(rename = "service", skip_serializing_if = "Vec::is_empty")]
    services: Vec<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<Auth>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notify: Vec<Notify>,
}

impl Config {
    /// No load balancer and no service yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The load balancer every test names: HAProxy `edge` on `haproxy.sock` beside the file
    /// (nothing listens there unless the test starts HAProxy).
    pub fn edge() -> Self {
        Self::new().load_balancer(LoadBalancer::haproxy("edge", "unix:haproxy.sock"))
    }

    pub fn load_balancer(mut self, load_balancer: LoadBalancer) -> Self {
        self.load_balancers.push(load_balancer);
        self
    }

    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    pub fn host(mut self, host: Host) -> Self {
        self.hosts.push(host);
        self
    }

    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    pub fn server(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }

    /// A global `[[notify]]`: every service's rollouts.
    pub fn notify(mut self, notify: Notify) -> Self {
        self.notify.push(notify);
        self
    }

    /// Writes the file as `dir/<name>` (several replicas' files side by side, sharing the
    /// state beside them) and returns its path.
    pub fn write_as(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.toml())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// The file's text.
    pub fn toml(&self) -> String {
        toml::to_string(self).expect("a test configuration serializes to TOML")
    }

    /// Writes the file as `dir/baton.toml` and returns its path (Baton keeps its database and
    /// state beside it).
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_as(dir, "baton.toml")
    }
}

/// Most API tests' configuration: `api` with backends s1 and s2 (127.0.0.1:18001 and 18002) and
/// `worker` with w1 (18011), whose processes are never started (`true`).
pub fn api_and_worker() -> Config {
    Config::edge()
        .service(
            Service::new("api")
                .runtime(Runtime::idle())
                .backend("s1", 18001)
                .backend("s2", 18002),
        )
        .service(
            Service::new("worker")
                .runtime(Runtime::idle())
                .backend("w1", 18011),
        )
}

/// One service `web` with one backend, web1 (127.0.0.1:18001), never started: for tests of
/// accounts and pages, which need a configuration but no fleet.
pub fn one_web_service() -> Config {
    Config::edge().service(
        Service::new("web")
            .runtime(Runtime::idle())
            .backend("web1", 18001),
    )
}

/// A `[[load_balancer]]`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadBalancer {
    name: String,
    kind: &'static str,
    runtime_api: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff: Option<String>,
}

impl LoadBalancer {
    /// HAProxy driven over the runtime API at `runtime_api` (`unix:haproxy.sock`, or
    /// `tcp:127.0.0.1:9999`).
    pub fn haproxy(name: &str, runtime_api: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: "haproxy",
            runtime_api: vec![runtime_api.to_owned()],
            command_timeout: None,
            attempts: None,
            backoff: None,
        }
    }

    /// `command_timeout`, `attempts` and `backoff`, which the driver defaults when absent.
    pub fn options(mut self, options: HaproxyOptions) -> Self {
        self.command_timeout = Some(human(options.command_timeout));
        self.attempts = Some(options.attempts);
        self.backoff = Some(human(options.backoff));
        self
    }
}

/// A `[[service]]`, on the load balancer `edge` unless told otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    name: String,
    load_balancer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    haproxy_backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_rollback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain: Option<Drain>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soak: Option<Soak>,
    runtime: Runtime,
    #[serde(rename = "backend", skip_serializing_if = "Vec::is_empty")]
    backends: Vec<Backend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<Webhook>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notify: Vec<Notify>,
}

impl Service {
    /// A service on `edge` whose runtime is [`Runtime::idle`] until [`Service::runtime`].
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            load_balancer: "edge".to_owned(),
            haproxy_backend: None,
            batch_size: None,
            auto_rollback: None,
            canary: None,
            approval: None,
            health: None,
            drain: None,
            strategy: None,
            soak: None,
            runtime: Runtime::idle(),
            backends: Vec::new(),
            webhook: None,
            notify: Vec::new(),
        }
    }

    pub fn load_balancer(mut self, name: &str) -> Self {
        self.load_balancer = name.to_owned();
        self
    }

    /// The HAProxy backend's name, when it is not the service's.
    pub fn haproxy_backend(mut self, name: &str) -> Self {
        self.haproxy_backend = Some(name.to_owned());
        self
    }

    pub fn batch_size(mut self, size: u32) -> Self {
        self.batch_size = Some(size);
        self
    }

    pub fn auto_rollback(mut self, on: bool) -> Self {
        self.auto_rollback = Some(on);
        self
    }

    /// `canary`: how many backends go first and wait for a promotion.
    pub fn canary(mut self, backends: u32) -> Self {
        self.canary = Some(backends);
        self
    }

    /// `approval`: when rollouts wait for another deployer's approval (`"start"`).
    pub fn approval(mut self, when: &str) -> Self {
        self.approval = Some(when.to_owned());
        self
    }

    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// `[service.drain] timeout`.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain = Some(Drain {
            timeout: human(timeout),
        });
        self
    }

    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// `[service.strategy] kind = "surge"` with `overlap`; give each backend a surge address
    /// ([`Service::surge_backend`]).
    /// HAProxy checks the server Baton adds every `check_inter`.
    pub fn surge(mut self, overlap: Duration, check_inter: Duration) -> Self {
        self.strategy = Some(Strategy {
            kind: "surge".to_owned(),
            overlap: human(overlap),
            check_inter: human(check_inter),
        });
        self
    }

    /// `[service.soak]`: each batch watched for `duration`, tripping past `max_5xx`.
    pub fn soak(mut self, duration: Duration, max_5xx: u64) -> Self {
        self.soak = Some(Soak {
            duration: human(duration),
            max_5xx,
        });
        self
    }

    /// A backend on `127.0.0.1:<port>` whose next version starts on `127.0.0.1:<surge_port>`.
    pub fn surge_backend(mut self, name: &str, port: u16, surge_port: u16) -> Self {
        self.backends.push(Backend {
            name: name.to_owned(),
            address: format!("127.0.0.1:{port}"),
            surge_address: Some(format!("127.0.0.1:{surge_port}")),
            host: None,
        });
        self
    }

    /// A backend listening on `127.0.0.1:<port>` (tests send traffic to loopback only).
    pub fn backend(mut self, name: &str, port: u16) -> Self {
        self.backends.push(Backend {
            name: name.to_owned(),
            address: format!("127.0.0.1:{port}"),
            surge_address: None,
            host: None,
        });
        self
    }

    pub fn webhook(mut self, webhook: Webhook) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// A `[[service.notify]]`: this service's rollouts only.
    pub fn notify(mut self, notify: Notify) -> Self {
        self.notify.push(notify);
        self
    }

    /// A backend at `address` on the `[[host]]` named `host`.
    pub fn backend_on(mut self, name: &str, address: std::net::SocketAddr, host: &str) -> Self {
        self.backends.push(Backend {
            name: name.to_owned(),
            address: address.to_string(),
            surge_address: None,
            host: Some(host.to_owned()),
        });
        self
    }
}

/// `[[host]]`: a machine Baton reaches over OpenSSH.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    /// `user@address:port`.
    pub ssh: String,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
    pub state_dir: PathBuf,
}

/// `[service.health]`; what is not set keeps Baton's default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_timeout: Option<String>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(human(interval));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(human(timeout));
        self
    }

    pub fn healthy_threshold(mut self, passes: u32) -> Self {
        self.healthy_threshold = Some(passes);
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = Some(human(timeout));
        self
    }
}

#[derive(Debug, Clone, Serialize)]
struct Drain {
    timeout: String,
}

/// `[service.soak]`.
#[derive(Debug, Clone, Serialize)]
struct Soak {
    duration: String,
    max_5xx: u64,
}

/// `[service.strategy]`.
#[derive(Debug, Clone, Serialize)]
struct Strategy {
    kind: String,
    overlap: String,
    check_inter: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum RuntimeKind {
    Process,
    Command,
}

/// `[service.runtime]`, with `initial_version = "v1"` unless told otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    kind: RuntimeKind,
    initial_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_timeout: Option<String>,
    // kind = "process"
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    // kind = "command"
    #[serde(skip_serializing_if = "Option::is_none")]
    prepare: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
}

impl Runtime {
    /// `kind = "process"` running `command` (the program, then its arguments).
    pub fn process<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        Self {
            kind: RuntimeKind::Process,
            initial_version: "v1".to_owned(),
            stop_timeout: None,
            command: Some(command.into_iter().map(Into::into).collect()),
            prepare: None,
            start: None,
            stop: None,
            env: BTreeMap::new(),
        }
    }

    /// A process runtime whose command is `true`: for tests that never start a backend.
    pub fn idle() -> Self {
        Self::process(["true"])
    }

    /// `kind = "command"` whose `start` and `stop` are `true` (do nothing) until set.
    pub fn command() -> Self {
        Self {
            kind: RuntimeKind::Command,
            initial_version: "v1".to_owned(),
            stop_timeout: None,
            command: None,
            prepare: None,
            start: Some("true".to_owned()),
            stop: Some("true".to_owned()),
            env: BTreeMap::new(),
        }
    }

    pub fn initial_version(mut self, version: &str) -> Self {
        self.initial_version = version.to_owned();
        self
    }

    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = Some(human(timeout));
        self
    }

    /// One more variable of the backends' environment (`[service.runtime] env`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The shell command run once per machine before a rollout drains anything.
    pub fn prepare(mut self, script: &str) -> Self {
        self.prepare = Some(script.to_owned());
        self
    }

    pub fn start(mut self, script: &str) -> Self {
        self.start = Some(script.to_owned());
        self
    }

    pub fn stop(mut self, script: &str) -> Self {
        self.stop = Some(script.to_owned());
        self
    }
}

#[derive(Debug, Clone, Serialize)]
struct Backend {
    name: String,
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    surge_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

/// `[service.webhook]`: the variable holding the secret, and which pushes deploy.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    secret_env: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<String>,
}

impl Webhook {
    pub fn new(secret_env: &str) -> Self {
        Self {
            secret_env: secret_env.to_owned(),
            branch: None,
            tags: None,
            repository: None,
        }
    }

    pub fn branch(mut self, branch: &str) -> Self {
        self.branch = Some(branch.to_owned());
        self
    }

    pub fn tags(mut self, pattern: &str) -> Self {
        self.tags = Some(pattern.to_owned());
        self
    }

    pub fn repository(mut self, owner_and_name: &str) -> Self {
        self.repository = Some(owner_and_name.to_owned());
        self
    }
}

/// `[[notify]]` or `[[service.notify]]`: the variables named hold the URL and a webhook's key.
#[derive(Debug, Clone, Serialize)]
pub struct Notify {
    kind: &'static str,
    url_env: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<String>>,
}

impl Notify {
    /// A generic webhook, signed with the key in `secret_env`; every event.
    pub fn webhook(url_env: &str, secret_env: &str) -> Self {
        Self {
            kind: "webhook",
            url_env: url_env.to_owned(),
            secret_env: Some(secret_env.to_owned()),
            events: None,
        }
    }

    /// Slack's incoming webhook; every event.
    pub fn slack(url_env: &str) -> Self {
        Self {
            kind: "slack",
            url_env: url_env.to_owned(),
            secret_env: None,
            events: None,
        }
    }

    pub fn events(mut self, events: &[&str]) -> Self {
        self.events = Some(events.iter().map(|e| (*e).to_owned()).collect());
        self
    }
}

/// `[server]`'s keys a test of replicas sets; what is not set keeps Baton's default (the
/// listening address comes from `BATON_LISTEN`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "human_opt")]
    pub lease: Option<Duration>,
}

fn human_opt<S: serde::Serializer>(duration: &Option<Duration>, to: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => to.serialize_str(&human(*duration)),
        None => to.serialize_none(),
    }
}

/// `[auth]`; what is not set keeps Baton's default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Auth {
    #[serde(skip_serializing_if = "Option::is_none")]
    public_origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    streams_per_caller: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login_throttle: Option<Throttle>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Throttle {
    #[serde(skip_serializing_if = "Option::is_none")]
    per_name: Option<u32>,
}

impl Auth {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn public_origin(mut self, origin: &str) -> Self {
        self.public_origin = Some(origin.to_owned());
        self
    }

    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = Some(human(ttl));
        self
    }

    /// `login_throttle.per_name`: failed logins allowed per user name.
    pub fn login_throttle_per_name(mut self, failures: u32) -> Self {
        self.login_throttle = Some(Throttle {
            per_name: Some(failures),
        });
        self
    }

    pub fn streams_per_caller(mut self, streams: u32) -> Self {
        self.streams_per_caller = Some(streams);
        self
    }
}

/// A duration as configuration files write it ("50ms", "2h"), which Baton reads back exactly.
fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use baton_server::settings::{EnvOverrides, Settings};

    use super::*;

    fn parse(config: &Config) -> Settings {
        let dir = Path::new("/srv/baton");
        Settings::parse(
            &config.toml(),
            &dir.join("baton.toml"),
            &EnvOverrides::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", config.toml()))
    }

    #[test]
    fn the_builder_writes_what_baton_reads_back() {
        let config = Config::new()
            .load_balancer(LoadBalancer::haproxy("edge", "unix:proxy.sock").options(
                HaproxyOptions {
                    command_timeout: Duration::from_millis(500),
                    attempts: 3,
                    backoff: Duration::from_millis(100),
                },
            ))
            .service(
                Service::new("web")
                    .haproxy_backend("be_web")
                    .batch_size(2)
                    .auto_rollback(false)
                    .health(
                        Health::new()
                            .interval(Duration::from_millis(50))
                            .start_timeout(Duration::from_millis(1500)),
                    )
                    .drain_timeout(Duration::from_secs(1))
                    .runtime(
                        Runtime::process(["/bin/app", "--port"])
                            .initial_version("v7")
                            .env("GREETING", "a \"quoted\" value"),
                    )
                    .backend("web1", 18001)
                    .backend("web2", 18002),
            )
            .auth(Auth::new().session_ttl(Duration::from_secs(7200)));
        let settings = parse(&config);

        let lb = &settings.load_balancers[0];
        assert_eq!(
            lb.command_timeout.unwrap().get(),
            Duration::from_millis(500)
        );
        assert_eq!(lb.attempts, Some(3));
        assert_eq!(lb.backoff.unwrap().get(), Duration::from_millis(100));
        let web = &settings.services[0];
        assert_eq!(web.haproxy_backend, "be_web");
        assert_eq!((web.batch_size, web.auto_rollback), (2, false));
        assert_eq!(web.health.interval.get(), Duration::from_millis(50));
        assert_eq!(web.health.start_timeout.get(), Duration::from_millis(1500));
        assert_eq!(web.drain.timeout.get(), Duration::from_secs(1));
        assert_eq!(web.runtime.initial_version.to_string(), "v7");
        assert_eq!(web.runtime.env["GREETING"], "a \"quoted\" value");
        let backends: Vec<String> = web
            .backends
            .iter()
            .map(|b| format!("{} {}", b.name, b.address))
            .collect();
        assert_eq!(backends, ["web1 127.0.0.1:18001", "web2 127.0.0.1:18002"]);
        assert_eq!(settings.auth.session_ttl, Duration::from_secs(7200));
    }

    #[test]
    fn the_presets_are_valid_configurations() {
        let services = |config: &Config| -> Vec<String> {
            parse(config)
                .services
                .iter()
                .map(|s| s.name.to_string())
                .collect()
        };
        assert_eq!(services(&api_and_worker()), ["api", "worker"]);
        assert_eq!(services(&one_web_service()), ["web"]);
    }
}
