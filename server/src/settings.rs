//! Baton's configuration: one TOML file, typed, with environment overrides for addresses and
//! secrets.
//!
//! Invariant: this is the only module that reads `std::env`. Unknown keys are errors, and every
//! error names the file, the key and what was expected.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod auth;
mod hosts;
mod notify;

use crate::domain::{
    BackendAddr, BackendName, Duration, HostName, LoadBalancerName, ServiceName, Slot,
    StrategyKind, Version,
};
use auth::RawAuth;
pub use auth::{AuthConfig, Https, PasswordChecks, Throttle};
use hosts::RawHost;
pub use hosts::{HostSettings, SshTarget};
use notify::RawNotify;
pub use notify::{NotifySettings, NotifyUrl};

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    /// `[auth]`: sessions, login throttling, and how Baton sees its own origin behind a proxy.
    pub auth: AuthConfig,
    pub load_balancers: Vec<LoadBalancerSettings>,
    /// `[[host]]`: the other machines backends run on.
    pub hosts: Vec<HostSettings>,
    pub services: Vec<ServiceSettings>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub database_url: String,
    /// Where the built web client (`pkg/`) lives.
    pub site_root: PathBuf,
    /// Where runtimes keep their records and backend logs (default: `state/` beside the file).
    pub state_dir: PathBuf,
    /// At most this many client connections are open at once; more wait in the kernel's
    /// accept queue, so a flood cannot take the file descriptors a rollout needs.
    pub max_connections: usize,
    /// This Baton's name among the replicas sharing a PostgreSQL database (`None`: its host
    /// name and PID).
    pub replica: Option<String>,
    /// How long the leader's lease lasts on a shared database: a leader that stops renewing it
    /// (killed, frozen, cut off) is replaced within this time.
    pub lease: std::time::Duration,
    /// Client addresses that may scrape `GET /metrics` without a token (`[server]
    /// metrics_allow`, CIDR blocks; empty by default: a viewer token is needed).
    pub metrics_allow: Vec<ipnet::IpNet>,
}

/// `[server] lease` when the file does not say.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(5);
/// The shortest `[server] lease`: it is renewed every third of itself, and a renewal that
/// waits on a slow database longer than that costs the leadership.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// `[server] max_connections` when the file does not say.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSettings {
    pub name: LoadBalancerName,
    pub kind: LoadBalancerKind,
    /// One runtime-API address per HAProxy node.
    pub runtime_api: Vec<RuntimeApiAddr>,
    /// How long one runtime-API command may take on one node (connect, send, whole answer).
    /// `None`: the driver's default (2s).
    #[serde(default)]
    pub command_timeout: Option<Duration>,
    /// How many times a command is tried on a node that cannot be reached or does not answer
    /// in time; at least 1. `None`: the driver's default (4).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// The wait before the first retry; it doubles for each further one. `None`: the driver's
    /// default (100ms).
    #[serde(default)]
    pub backoff: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerKind {
    Haproxy,
}

/// Where an HAProxy runtime API listens: `unix:/path/to/socket` or `tcp:host:port`. A relative
/// socket path is taken from the configuration file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RuntimeApiAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl TryFrom<String> for RuntimeApiAddr {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(Self::Unix(PathBuf::from(path))),
            Some(("tcp", addr))
                if addr
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok()) =>
            {
                Ok(Self::Tcp(addr.to_owned()))
            }
            _ => Err(format!(
                "invalid runtime API address {value:?}: expected \"unix:/path/to/socket\" or \
                 \"tcp:host:port\""
            )),
        }
    }
}

impl fmt::Display for RuntimeApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub name: ServiceName,
    pub load_balancer: LoadBalancerName,
    pub haproxy_backend: String,
    pub batch_size: u32,
    pub auto_rollback: bool,
    /// `canary`: how many backends go first and wait for a promotion; 0 for none. Always fewer
    /// than the service's backends.
    pub canary: u32,
    /// `approval`: when a rollout waits for another deployer's approval; `None`: never.
    pub approval: Option<Approval>,
    pub health: HealthSettings,
    pub drain: DrainSettings,
    /// `[service.strategy]`: how each backend is replaced.
    pub strategy: StrategySettings,
    /// `[service.soak]`: the watch after each batch is back in rotation; `None`: no watch.
    pub soak: Option<SoakSettings>,
    pub runtime: RuntimeSettings,
    pub backends: Vec<BackendSettings>,
    /// `[service.webhook]`: `None` when git pushes may not start rollouts of this service.
    pub webhook: Option<WebhookSettings>,
    /// Where this service's rollouts are told: its `[[service.notify]]`, then every global
    /// `[[notify]]`.
    pub notify: Vec<NotifySettings>,
}

/// `approval = "start"`: the point at which a service's rollouts wait for someone other than
/// their requester to approve them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// When the rollout's turn comes, before anything is touched.
    Start,
}

/// `[service.webhook]`: which pushes start a rollout, and the secret that proves a delivery came
/// from the git host.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The environment variable the secret was read from; operators see its name, never its value.
    pub secret_env: String,
    pub secret: WebhookSecret,
    /// Pushes to this branch (a name such as `main`, not `refs/heads/main`) deploy the pushed commit.
    pub branch: Option<String>,
    /// Tag pushes whose tag matches this pattern deploy the tag.
    pub tags: Option<TagPattern>,
    /// Only pushes from this repository deploy; `None` takes pushes from any repository the
    /// secret was given to.
    pub repository: Option<RepositoryName>,
}

/// A repository as its git host names it in a push: `owner/name` (GitHub, Gitea, Forgejo,
/// Bitbucket Cloud's `workspace/slug`), `group/subgroup/project` (GitLab), `PROJECT/slug`
/// (Bitbucket Data Center). Hosts treat these names case-insensitively, and so does
/// [`RepositoryName::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments: Vec<&str> = text.split('/').collect();
        let valid_segment = |segment: &&str| {
            !segment.is_empty()
                && *segment != "."
                && *segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
        };
        if segments.len() < 2 || !segments.iter().all(valid_segment) {
            return Err(format!(
                "invalid repository {text:?}: expected \"owner/name\" as the git host names it, such as \"acme/api\" \
                 (GitLab: \"group/subgroup/project\"; Bitbucket Data Center: \"PROJECT/repo\"), without the host or .git"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// Whether a push's repository (as the host sent it) is this one.
    pub fn matches(&self, pushed: &str) -> bool {
        self.0.eq_ignore_ascii_case(pushed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A webhook secret. Its `Debug` says only that there is one, and it has no `Display`, so it
/// cannot reach a log line or an error message by accident.
#[derive(Clone)]
pub struct WebhookSecret(std::sync::Arc<[u8]>);

impl WebhookSecret {
    pub fn new(value: impl AsRef<[u8]>) -> Self {
        Self(value.as_ref().into())
    }

    /// The secret's bytes, for computing or comparing a signature.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// A glob over tag names, such as `v*`: `*` matches any run of characters (`/` included), `?`
/// one character, `[0-9]` one of a set and `{a,b}` either alternative. The whole tag must match.
#[derive(Clone)]
pub struct TagPattern {
    text: String,
    matcher: globset::GlobMatcher,
}

impl TagPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("expected a tag pattern such as \"v*\"".into());
        }
        if text.starts_with("refs/") {
            return Err(format!(
                "invalid tag pattern {text:?}: expected a pattern over tag names such as \"v*\", without refs/tags/"
            ));
        }
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|error| {
                format!(
                    "invalid tag pattern {text:?}: {}; expected a glob such as \"v*\" or \"release-[0-9]*\"",
                    error.kind()
                )
            })?;
        Ok(Self {
            text: text.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Whether the tag (a name such as `v1.2.0`, not `refs/tags/v1.2.0`) matches.
    pub fn matches(&self, tag: &str) -> bool {
        self.matcher.is_match(tag)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagPattern({:?})", self.text)
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy_threshold: default_healthy_threshold(),
            start_timeout: default_start_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSettings {
    #[serde(default = "default_drain_timeout")]
    pub timeout: Duration,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            timeout: default_drain_timeout(),
        }
    }
}

/// `[service.strategy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySettings {
    #[serde(default)]
    pub kind: StrategyKind,
    /// How long the old process keeps running, drained, after its successor is UP (surge).
    #[serde(default = "default_overlap")]
    pub overlap: Duration,
    /// `inter` of the HAProxy server Baton adds for a surge: HAProxy 2.6 does not report a
    /// server's `inter`, so it cannot be copied from the server it replaces (rise, fall and
    /// weight are). Default 2s, HAProxy's own; without `timeout check` it is also the check's
    /// timeout.
    #[serde(default = "default_check_inter")]
    pub check_inter: Duration,
}

/// `[service.soak]`: once a batch is back in rotation and UP, Baton watches HAProxy's counters
/// of its servers for `duration` before the next batch (and before a rollout succeeds). A
/// backend that answers more than `max_5xx` 5xx responses, whose health check takes it DOWN,
/// or that leaves rotation fails the rollout, which then rolls back like any failed step.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoakSettings {
    pub duration: Duration,
    /// The 5xx responses one backend may answer during its watch; 0 (the default) allows none.
    #[serde(default)]
    pub max_5xx: u64,
    /// A share of the backend's requests (0.01: 1 %) that may be 5xx too: the watch allows
    /// whichever is larger, `max_5xx` or this share. `None`: `max_5xx` alone.
    pub max_5xx_ratio: Option<f64>,
}

impl SoakSettings {
    /// How many 5xx a backend that was sent `requests` may answer before the watch trips.
    pub fn allowed_5xx(&self, requests: u64) -> u64 {
        let share = self
            .max_5xx_ratio
            .map_or(0, |ratio| (ratio * requests as f64).floor() as u64);
        self.max_5xx.max(share)
    }
}

impl Default for StrategySettings {
    fn default() -> Self {
        Self {
            kind: StrategyKind::default(),
            overlap: default_overlap(),
            check_inter: default_check_inter(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub kind: RuntimeKind,
    pub initial_version: Version,
    pub stop_timeout: Duration,
    /// The backends' whole environment beside the `BATON_*` variables: [`INHERITED_ENV`] and
    /// the `pass_env` names with their values in Baton's environment, then `env` from the file.
    /// Nothing else of Baton's environment (its token, webhook secrets) reaches a backend.
    pub env: BTreeMap<String, String>,
    /// Only what the file asked for: the `pass_env` names with their values here, then `env`.
    /// Backends on other hosts get these, and the [`INHERITED_ENV`] names with the host's own
    /// values (this machine's `PATH` or `HOME` mean nothing there).
    pub explicit_env: BTreeMap<String, String>,
}

/// The variables every backend inherits from Baton when they are set: what a program needs
/// to find its tools, its home and its locale.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
];

#[derive(Debug, Clone)]
pub enum RuntimeKind {
    /// Baton starts the backend processes itself and re-adopts them after a restart.
    Process {
        command: Vec<String>,
        stop_signal: StopSignal,
        working_dir: Option<PathBuf>,
        /// A shell command run once on each machine of a rollout before any backend is drained
        /// (stage the version's artifact, say).
        prepare: Option<String>,
    },
    /// The user's shell commands prepare, start and stop the backends.
    Command {
        prepare: Option<String>,
        start: String,
        stop: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum StopSignal {
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    pub name: BackendName,
    pub address: BackendAddr,
    /// Where the next version starts in a surge rollout; the two addresses alternate.
    #[serde(default)]
    pub surge_address: Option<BackendAddr>,
    /// The `[[host]]` it runs on; `None`: this machine.
    #[serde(default)]
    pub host: Option<HostName>,
}

impl BackendSettings {
    /// The address of `slot`. A backend recorded on its surge address whose `surge_address` was
    /// since removed from the file can only be found at `address`.
    pub fn address_of(&self, slot: Slot) -> BackendAddr {
        match slot {
            Slot::Address => self.address,
            Slot::SurgeAddress => self.surge_address.unwrap_or(self.address),
        }
    }

    /// The HAProxy server of the instance on `slot`: the backend's name on `address` (the
    /// server haproxy.cfg declares), `<name>:surge` on `surge_address` (a dynamic server Baton
    /// adds; `:` cannot appear in a backend name, so the two never collide).
    pub fn haproxy_server(&self, slot: Slot) -> String {
        match slot {
            Slot::Address => self.name.as_str().to_owned(),
            Slot::SurgeAddress => format!("{}:surge", self.name.as_str()),
        }
    }
}

/// Values from the environment that override the file.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    /// `BATON_LISTEN`
    pub listen: Option<String>,
    /// `BATON_DATABASE_URL`
    pub database_url: Option<String>,
    /// `BATON_SITE_ROOT`
    pub site_root: Option<String>,
}

impl EnvOverrides {
    pub fn from_process_env() -> Self {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|value: &String| !value.is_empty())
        };
        Self {
            listen: var("BATON_LISTEN"),
            database_url: var("BATON_DATABASE_URL"),
            site_root: var("BATON_SITE_ROOT"),
        }
    }
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {}{message}", path.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Line and column, both from 1, where the parser could tell.
        location: Option<(usize, usize)>,
        key: Option<String>,
        message: String,
    },
}

impl Settings {
    /// Reads and validates the file at `path`, then applies `env`.
    pub fn load(path: &Path, env: &EnvOverrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Validates `text` as if it were read from `path` (which also anchors relative paths).
    /// Webhook secrets (`[service.webhook] secret_env`) and what backends inherit
    /// ([`INHERITED_ENV`], `[service.runtime] pass_env`) are read from the process environment.
    pub fn parse(text: &str, path: &Path, env: &EnvOverrides) -> Result<Self, ConfigError> {
        Self::parse_with_secrets(text, path, env, &|name| std::env::var(name).ok())
    }

    /// Like [`Settings::parse`], with the process environment looked up by `secret` for webhook
    /// secrets and backends' inherited variables (tests pass their own; nothing else in Baton
    /// reads the environment).
    pub fn parse_with_secrets(
        text: &str,
        path: &Path,
        env: &EnvOverrides,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let source = Source { text, path };
        let raw = source.deserialize()?;
        let config_dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let server = raw
            .server
            .validate(env, config_dir)
            .map_err(|(key, message)| source.invalid(format!("server.{key}"), message))?;
        let auth = raw
            .auth
            .validate()
            .map_err(|(key, message)| source.invalid(format!("auth.{key}"), message))?;
        let load_balancers = validate_load_balancers(raw.load_balancers, config_dir)
            .map_err(|(key, message)| source.invalid(format!("load_balancer{key}"), message))?;
        let hosts = hosts::validate_hosts(raw.hosts, config_dir)
            .map_err(|(key, message)| source.invalid(format!("host{key}"), message))?;
        let notify = validate_notify(&source, "notify", raw.notify, secret)?;
        let services = validate_services(
            &source,
            raw.services,
            &load_balancers,
            &hosts,
            &notify,
            secret,
        )?;
        Ok(Self {
            server,
            auth,
            load_balancers,
            hosts,
            services,
        })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSettings> {
        self.services
            .iter()
            .find(|service| service.name.as_str() == name)
    }

    /// The `[[host]]` named `name` (every backend's `host` names one: checked when parsed).
    pub fn host(&self, name: &HostName) -> Option<&HostSettings> {
        self.hosts.iter().find(|host| &host.name == name)
    }
}

/// The text of a configuration and the file it came from: what every error names.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    /// Reads the TOML into the file's shape; an error names the line, column and key.
    fn deserialize(&self) -> Result<RawSettings, ConfigError> {
        let syntax_error = |inner: toml::de::Error| ConfigError::Invalid {
            path: self.path.to_owned(),
            location: inner
                .span()
                .map(|span| line_and_column(self.text, span.start)),
            key: None,
            message: inner.message().trim_end().to_owned(),
        };
        let document = toml::Deserializer::parse(self.text).map_err(syntax_error)?;
        serde_path_to_error::deserialize(document).map_err(|error| {
            let key = error.path().to_string();
            let inner = error.into_inner();
            ConfigError::Invalid {
                path: self.path.to_owned(),
                location: inner
                    .span()
                    .map(|span| line_and_column(self.text, span.start)),
                key: (key != ".").then_some(key),
                message: inner.message().trim_end().to_owned(),
            }
        })
    }

    /// A value that parsed but cannot be used, at `key`.
    fn invalid(&self, key: String, message: String) -> ConfigError {
        self.invalid_at(key, None, message)
    }

    /// Like [`Source::invalid`], with where in the text the value is, when known.
    fn invalid_at(
        &self,
        key: String,
        span: Option<std::ops::Range<usize>>,
        message: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            location: span.map(|span| line_and_column(self.text, span.start)),
            key: Some(key),
            message,
        }
    }
}

impl RawServer {
    /// `[server]` with the environment's overrides; an error is `(key, message)`.
    fn validate(
        self,
        env: &EnvOverrides,
        config_dir: &Path,
    ) -> Result<ServerSettings, (String, String)> {
        let listen_text = env
            .listen
            .clone()
            .or(self.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|_| {
            (
                "listen".to_owned(),
                format!("invalid address {listen_text:?}: expected an IP address and port such as \"127.0.0.1:8080\""),
            )
        })?;
        let database_url = env
            .database_url
            .clone()
            .or(self.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", config_dir.join("baton.db").display()));
        let postgres =
            database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
        if !database_url.starts_with("sqlite:") && !postgres {
            // Only the scheme: the rest may hold a password.
            let scheme = database_url
                .split_once(':')
                .map_or(String::new(), |(scheme, _)| format!(" {scheme:?}"));
            return Err((
                "database_url".to_owned(),
                format!(
                    "unsupported database URL scheme{scheme}: expected \"sqlite://path/to/baton.db\", \
                     \"postgres://user:password@host:port/database\" or \"postgresql://…\""
                ),
            ));
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err((
                "max_connections".to_owned(),
                "0 connections would serve nobody: expected a number of at least 1 (default 4096)"
                    .into(),
            ));
        }
        let site_root = env
            .site_root
            .clone()
            .map(PathBuf::from)
            .or(self.site_root.map(|root| config_dir.join(root)))
            .unwrap_or_else(default_site_root);
        let lease = self.lease.map_or(DEFAULT_LEASE, Duration::get);
        if lease < MIN_LEASE {
            return Err((
                "lease".to_owned(),
                format!(
                    "a lease of {} is renewed too often to survive a slow database: expected at \
                     least 1s (default 5s)",
                    humantime::format_duration(lease)
                ),
            ));
        }
        if let Some(replica) = &self.replica
            && (replica.trim().is_empty()
                || replica.len() > 100
                || replica.chars().any(char::is_control))
        {
            return Err((
                "replica".to_owned(),
                format!(
                    "invalid replica name {replica:?}: expected 1 to 100 printable characters, \
                     such as \"baton-1\""
                ),
            ));
        }
        let metrics_allow = self
            .metrics_allow
            .iter()
            .map(|block| parse_address_block(block))
            .collect::<Result<_, _>>()
            .map_err(|message| ("metrics_allow".to_owned(), message))?;
        Ok(ServerSettings {
            listen,
            database_url,
            site_root,
            state_dir: config_dir.join(self.state_dir.unwrap_or_else(|| PathBuf::from("state"))),
            max_connections,
            replica: self.replica,
            lease,
            metrics_allow,
        })
    }
}

/// A CIDR block (`10.0.0.0/8`, `::1/128`), or one address standing for itself.
fn parse_address_block(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!(
                "invalid address block {text:?}: expected a CIDR block such as \"127.0.0.1/32\" \
                 or \"10.0.0.0/8\", or one IP address"
            )
        })
}

/// `[[load_balancer]]`s, with socket paths taken from the file's folder; an error is
/// `([index].key, message)`.
fn validate_load_balancers(
    mut load_balancers: Vec<LoadBalancerSettings>,
    config_dir: &Path,
) -> Result<Vec<LoadBalancerSettings>, (String, String)> {
    for lb in &mut load_balancers {
        for addr in &mut lb.runtime_api {
            if let RuntimeApiAddr::Unix(socket) = addr {
                *socket = config_dir.join(&*socket);
            }
        }
    }
    let mut lb_names = HashSet::new();
    for (index, lb) in load_balancers.iter().enumerate() {
        if !lb_names.insert(lb.name.clone()) {
            return Err((
                format!("[{index}].name"),
                format!(
                    "duplicate load balancer name {:?}: each must be unique",
                    lb.name.as_str()
                ),
            ));
        }
        if lb.runtime_api.is_empty() {
            return Err((
                format!("[{index}].runtime_api"),
                "expected at least one runtime API address, one per HAProxy node".into(),
            ));
        }
        if lb
            .command_timeout
            .is_some_and(|timeout| timeout.get().is_zero())
        {
            return Err((
                format!("[{index}].command_timeout"),
                "0s leaves HAProxy no time to answer: expected a duration such as \"2s\" (the default)".into(),
            ));
        }
        if lb.attempts == Some(0) {
            return Err((
                format!("[{index}].attempts"),
                "0 attempts would never send a command: expected 1 or more (default 4)".into(),
            ));
        }
    }
    Ok(load_balancers)
}

/// `[[service]]`s: unique names, each checked against the load balancers defined.
fn validate_services(
    source: &Source,
    raw: Vec<RawService>,
    load_balancers: &[LoadBalancerSettings],
    hosts: &[HostSettings],
    notify: &[NotifySettings],
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ServiceSettings>, ConfigError> {
    let mut service_names = HashSet::new();
    let mut services = Vec::with_capacity(raw.len());
    for (index, service) in raw.into_iter().enumerate() {
        if !service_names.insert(service.name.clone()) {
            return Err(source.invalid(
                format!("service[{index}].name"),
                format!(
                    "duplicate service name {:?}: each must be unique",
                    service.name.as_str()
                ),
            ));
        }
        let mut service = service.validate(source, index, load_balancers, hosts, secret)?;
        service.notify.extend(notify.iter().cloned());
        services.push(service);
    }
    Ok(services)
}

/// `[[notify]]` entries at `key` (`notify`, or `service[0].notify`), their URLs and secrets
/// read with `secret`.
fn validate_notify(
    source: &Source,
    key: &str,
    raw: Vec<RawNotify>,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<NotifySettings>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(index, entry)| {
            entry.validate(secret).map_err(|(below, span, message)| {
                source.invalid_at(format!("{key}[{index}]{below}"), span, message)
            })
        })
        .collect()
}

impl RawService {
    /// The service at `[[service]]` number `index`, its runtime and webhook resolved with
    /// `secret`.
    fn validate(
        self,
        source: &Source,
        index: usize,
        load_balancers: &[LoadBalancerSettings],
        hosts: &[HostSettings],
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServiceSettings, ConfigError> {
        let at = |key: &str| format!("service[{index}].{key}");
        if !load_balancers
            .iter()
            .any(|lb| lb.name == self.load_balancer)
        {
            return Err(source.invalid(
                at("load_balancer"),
                format!(
                    "no [[load_balancer]] is named {:?}: expected one of {}",
                    self.load_balancer.as_str(),
                    one_of(load_balancers.iter().map(|lb| lb.name.as_str()))
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(source.invalid(at("batch_size"), "expected at least 1".into()));
        }
        if self.canary > 0 && self.canary as usize >= self.backends.len() {
            return Err(source.invalid(
                at("canary"),
                format!(
                    "canary = {} leaves no backend to promote to: expected fewer than the service's {} backend(s)",
                    self.canary,
                    self.backends.len()
                ),
            ));
        }
        self.check_health()
            .map_err(|(key, message)| source.invalid(at(&format!("health.{key}")), message))?;
        self.check_backends(hosts)
            .map_err(|(key, message)| source.invalid(at(&key), message))?;
        self.check_surge()
            .map_err(|(key, message)| source.invalid(at(&key), message))?;
        if let Some(soak) = &self.soak {
            if soak.duration.get().is_zero() {
                return Err(source.invalid(
                    at("soak.duration"),
                    "a watch of 0s watches nothing: expected a duration such as \"30s\", or leave [service.soak] out".to_owned(),
                ));
            }
            if let Some(ratio) = soak.max_5xx_ratio
                && !(0.0..1.0).contains(&ratio)
            {
                return Err(source.invalid(
                    at("soak.max_5xx_ratio"),
                    format!("{ratio} is not a share of requests: expected a number from 0 up to (not including) 1, such as 0.01 for 1 %"),
                ));
            }
        }
        let runtime = self
            .runtime
            .validate(secret)
            .map_err(|(key, message)| source.invalid(at(&format!("runtime.{key}")), message))?;
        let webhook = self
            .webhook
            .map(|webhook| webhook.validate(self.name.as_str(), secret))
            .transpose()
            .map_err(|(key, span, message)| {
                source.invalid_at(at(&format!("webhook{key}")), span, message)
            })?;
        let notify = validate_notify(source, &at("notify"), self.notify, secret)?;
        Ok(ServiceSettings {
            haproxy_backend: self
                .haproxy_backend
                .unwrap_or_else(|| self.name.to_string()),
            name: self.name,
            load_balancer: self.load_balancer,
            batch_size: self.batch_size,
            auto_rollback: self.auto_rollback,
            canary: self.canary,
            approval: self.approval,
            health: self.health,
            drain: self.drain,
            strategy: self.strategy,
            soak: self.soak,
            runtime,
            backends: self.backends,
            webhook,
            notify,
        })
    }

    /// `[service.health]`; an error is `(key, message)`.
    fn check_health(&self) -> Result<(), (String, String)> {
        if self.health.healthy_threshold == 0 {
            return Err(("healthy_threshold".into(), "expected at least 1".into()));
        }
        if !self.health.path.starts_with('/') {
            return Err((
                "path".into(),
                format!(
                    "invalid path {:?}: expected it to start with '/'",
                    self.health.path
                ),
            ));
        }
        Ok(())
    }

    /// With `kind = "surge"`, every backend has a `surge_address` of its own, and runs on this
    /// machine; an error is `(key, message)`.
    fn check_surge(&self) -> Result<(), (String, String)> {
        if self.strategy.kind != StrategyKind::Surge {
            return Ok(());
        }
        let mut taken = HashSet::new();
        for backend in &self.backends {
            taken.insert(backend.address);
        }
        for (b, backend) in self.backends.iter().enumerate() {
            let Some(surge) = backend.surge_address else {
                return Err((
                    format!("backend[{b}].surge_address"),
                    format!(
                        "backend {:?} has no surge_address: expected one (such as \"127.0.0.1:{}\") since strategy.kind is \"surge\", where the next version starts beside the running one",
                        backend.name.as_str(),
                        backend.address.port().wrapping_add(100)
                    ),
                ));
            };
            if !taken.insert(surge) {
                return Err((
                    format!("backend[{b}].surge_address"),
                    format!(
                        "surge_address {surge} is already another address of this service: expected an address of its own, since both instances run at once"
                    ),
                ));
            }
            // The remote agent keeps one record per backend on its host, so it cannot run two
            // instances of one backend at once.
            if let Some(host) = &backend.host {
                return Err((
                    "strategy.kind".into(),
                    format!(
                        "backend {:?} runs on [[host]] {:?}, and surge is supported only for backends on this machine: expected kind = \"rolling\" for a service with backends on other hosts",
                        backend.name.as_str(),
                        host.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// At least one `[[service.backend]]`, each named once and on a defined host; an error is
    /// `(key, message)`.
    fn check_backends(&self, hosts: &[HostSettings]) -> Result<(), (String, String)> {
        if self.backends.is_empty() {
            return Err((
                "backend".into(),
                "expected at least one [[service.backend]]".into(),
            ));
        }
        let mut backend_names = HashSet::new();
        for (b, backend) in self.backends.iter().enumerate() {
            if !backend_names.insert(&backend.name) {
                return Err((
                    format!("backend[{b}].name"),
                    format!(
                        "duplicate backend name {:?}: each must be unique in its service",
                        backend.name.as_str()
                    ),
                ));
            }
            if let Some(host) = &backend.host
                && !hosts.iter().any(|h| &h.name == host)
            {
                return Err((
                    format!("backend[{b}].host"),
                    format!(
                        "no [[host]] is named {:?}: expected one of {} (or no `host` for this machine)",
                        host.as_str(),
                        match hosts.len() {
                            0 => "none (no [[host]] is defined)".to_owned(),
                            _ => hosts
                                .iter()
                                .map(|h| format!("{:?}", h.name.as_str()))
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The built client next to the binary: `target/release/baton` serves `target/site`.
fn default_site_root() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("site")))
        .unwrap_or_else(|| PathBuf::from("target/site"))
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

fn one_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|name| format!("{name:?}")).collect();
    if names.is_empty() {
        "none (no [[load_balancer]] is defined)".into()
    } else {
        names.join(", ")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default, rename = "load_balancer")]
    load_balancers: Vec<LoadBalancerSettings>,
    #[serde(default, rename = "host")]
    hosts: Vec<RawHost>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default)]
    notify: Vec<RawNotify>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    database_url: Option<String>,
    site_root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    max_connections: Option<usize>,
    replica: Option<String>,
    lease: Option<Duration>,
    #[serde(default)]
    metrics_allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: ServiceName,
    load_balancer: LoadBalancerName,
    haproxy_backend: Option<String>,
    #[serde(default = "default_batch_size")]
    batch_size: u32,
    #[serde(default = "default_true")]
    auto_rollback: bool,
    #[serde(default)]
    canary: u32,
    approval: Option<Approval>,
    #[serde(default)]
    health: HealthSettings,
    #[serde(default)]
    drain: DrainSettings,
    #[serde(default)]
    strategy: StrategySettings,
    soak: Option<SoakSettings>,
    runtime: RawRuntime,
    #[serde(default, rename = "backend")]
    backends: Vec<BackendSettings>,
    webhook: Option<RawWebhook>,
    #[serde(default)]
    notify: Vec<RawNotify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    secret_env: toml::Spanned<String>,
    branch: Option<toml::Spanned<String>>,
    tags: Option<toml::Spanned<String>>,
    repository: Option<toml::Spanned<String>>,
}

/// A key below `[service.webhook]` (empty for the table itself), where in the file, and why.
type WebhookProblem = (String, Option<std::ops::Range<usize>>, String);

impl RawWebhook {
    /// Checks the table and reads the secret from the variable `secret_env` names.
    fn validate(
        self,
        service: &str,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<WebhookSettings, WebhookProblem> {
        let span = |value: &toml::Spanned<String>| Some(value.span());
        let name = self.secret_env.get_ref();
        if !is_variable_name(name) {
            return Err((
                ".secret_env".into(),
                span(&self.secret_env),
                format!(
                    "invalid variable name {name:?}: expected the name of the environment variable that holds the secret, such as \"{}_WEBHOOK_SECRET\"",
                    service.to_ascii_uppercase().replace('-', "_")
                ),
            ));
        }
        let value = match secret(name) {
            Some(value) if !value.is_empty() => value,
            found => {
                let state = if found.is_some() {
                    "is empty"
                } else {
                    "is not set"
                };
                return Err((
                    ".secret_env".into(),
                    span(&self.secret_env),
                    format!(
                        "the environment variable {name} {state}: expected it to hold the webhook secret that the git host signs deliveries with (set it before starting Baton, or remove [service.webhook])"
                    ),
                ));
            }
        };
        let branch = match self.branch {
            Some(branch) => {
                let text = branch.get_ref();
                if text.is_empty()
                    || text.starts_with("refs/")
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err((
                        ".branch".into(),
                        span(&branch),
                        format!(
                            "invalid branch {text:?}: expected a branch name such as \"main\", without refs/heads/"
                        ),
                    ));
                }
                Some(text.clone())
            }
            None => None,
        };
        let tags = match self.tags {
            Some(tags) => Some(
                TagPattern::parse(tags.get_ref())
                    .map_err(|message| (".tags".to_owned(), span(&tags), message))?,
            ),
            None => None,
        };
        let repository = match self.repository {
            Some(repository) => Some(
                RepositoryName::parse(repository.get_ref())
                    .map_err(|message| (".repository".to_owned(), span(&repository), message))?,
            ),
            None => None,
        };
        if branch.is_none() && tags.is_none() {
            return Err((
                String::new(),
                None,
                "expected `branch`, `tags` or both: without them no push would deploy".into(),
            ));
        }
        Ok(WebhookSettings {
            secret_env: name.clone(),
            secret: WebhookSecret::new(value),
            branch,
            tags,
            repository,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    kind: RawRuntimeKind,
    initial_version: Version,
    #[serde(default = "default_stop_timeout")]
    stop_timeout: Duration,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Names of Baton's own environment variables that backends inherit, beyond INHERITED_ENV.
    #[serde(default)]
    pass_env: Vec<String>,
    // kind = "process"
    command: Option<Vec<String>>,
    stop_signal: Option<StopSignal>,
    working_dir: Option<PathBuf>,
    // both kinds
    prepare: Option<String>,
    // kind = "command"
    start: Option<String>,
    stop: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawRuntimeKind {
    Process,
    Command,
}

impl RawRuntime {
    /// Checks the keys that depend on `kind` and resolves the backends' environment with
    /// `lookup`; an error is `(key, message)`.
    fn validate(
        self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RuntimeSettings, (String, String)> {
        let misplaced = |key: &str, kind: &str| {
            (
                key.to_owned(),
                format!("`{key}` is not used with kind = \"{kind}\": remove it"),
            )
        };
        for name in self.env.keys() {
            if !is_variable_name(name) || name.starts_with("BATON_") {
                return Err((format!("env.{name}"), "expected a variable name of letters, digits and '_' that does not start with BATON_ (Baton sets those)".into()));
            }
        }
        let mut explicit_env = BTreeMap::new();
        for (i, name) in self.pass_env.iter().enumerate() {
            if !is_variable_name(name) || name.starts_with("BATON_") {
                return Err((
                    format!("pass_env[{i}]"),
                    format!(
                        "{name:?} is not a variable backends may inherit: expected a name of letters, digits and '_' that does not start with BATON_ (Baton sets those)"
                    ),
                ));
            }
            let value = lookup(name).ok_or_else(|| {
                (format!("pass_env[{i}]"), format!("the environment variable {name} is not set: expected Baton to be started with it, since backends are to inherit it (or remove it from pass_env)"))
            })?;
            explicit_env.insert(name.clone(), value);
        }
        explicit_env.extend(self.env);
        let mut env: BTreeMap<String, String> = INHERITED_ENV
            .iter()
            .filter_map(|name| lookup(name).map(|value| ((*name).to_owned(), value)))
            .collect();
        env.extend(explicit_env.clone());
        let kind = match self.kind {
            RawRuntimeKind::Process => {
                for (key, set) in [
                    ("start", self.start.is_some()),
                    ("stop", self.stop.is_some()),
                ] {
                    if set {
                        return Err(misplaced(key, "process"));
                    }
                }
                let command = self.command.filter(|command| !command.is_empty()).ok_or_else(|| {
                    ("command".to_owned(), "expected the program and its arguments, such as [\"python3\", \"app.py\"]".to_owned())
                })?;
                RuntimeKind::Process {
                    command,
                    stop_signal: self.stop_signal.unwrap_or(StopSignal::Term),
                    working_dir: self.working_dir,
                    prepare: self.prepare.filter(|script| !script.trim().is_empty()),
                }
            }
            RawRuntimeKind::Command => {
                for (key, set) in [
                    ("command", self.command.is_some()),
                    ("stop_signal", self.stop_signal.is_some()),
                    ("working_dir", self.working_dir.is_some()),
                ] {
                    if set {
                        return Err(misplaced(key, "command"));
                    }
                }
                let required = |value: Option<String>, key: &str| {
                    value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                        (
                            key.to_owned(),
                            format!("expected the shell command that runs `{key}` for one backend"),
                        )
                    })
                };
                RuntimeKind::Command {
                    prepare: self.prepare,
                    start: required(self.start, "start")?,
                    stop: required(self.stop, "stop")?,
                }
            }
        };
        Ok(RuntimeSettings {
            kind,
            initial_version: self.initial_version,
            stop_timeout: self.stop_timeout,
            env,
            explicit_env,
        })
    }
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn default_true() -> bool {
    true
}
fn default_batch_size() -> u32 {
    1
}
fn default_health_path() -> String {
    "/alive".into()
}
fn default_health_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_health_timeout() -> Duration {
    Duration::from_millis(2_000)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_start_timeout() -> Duration {
    Duration::from_millis(60_000)
}
fn default_overlap() -> Duration {
    Duration::from_millis(10_000)
}
fn default_check_inter() -> Duration {
    Duration::from_millis(2_000)
}
fn default_drain_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_stop_timeout() -> Duration {
    Duration::from_millis(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::model::{NotificationEvent, NotifyKind};

    const FULL: &str = r#"
[server]
listen = "127.0.0.1:9090"

[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:/run/haproxy/admin.sock", "tcp:127.0.0.1:9999"]

[[service]]
name = "api"
load_balancer = "edge"
haproxy_backend = "api_be"
batch_size = 2
auto_rollback = false

[service.health]
path = "/alive"
interval = "250ms"
timeout = "2s"
healthy_threshold = 3
start_timeout = "60s"

[service.drain]
timeout = "30s"

[service.runtime]
kind = "process"
command = ["python3", "app.py"]
initial_version = "v1"
stop_timeout = "10s"
env = { APP_MODE = "prod" }

[[service.backend]]
name = "s1"
address = "127.0.0.1:18001"

[[service.backend]]
name = "s2"
address = "127.0.0.1:18002"
"#;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(
            text,
            Path::new("/etc/baton/baton.toml"),
            &EnvOverrides::default(),
        )
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("the configuration should be refused")
            .to_string()
    }

    /// FULL with `[service.strategy]` and each backend's surge address (`None`: left out).
    fn surge_config(surge: [Option<&str>; 2]) -> String {
        let mut text = FULL.replace(
            "[service.drain]",
            "[service.strategy]\nkind = \"surge\"\noverlap = \"3s\"\n\n[service.drain]",
        );
        for (address, surge) in ["127.0.0.1:18001", "127.0.0.1:18002"].iter().zip(surge) {
            if let Some(surge) = surge {
                text = text.replace(
                    &format!("address = \"{address}\"\n"),
                    &format!("address = \"{address}\"\nsurge_address = \"{surge}\"\n"),
                );
            }
        }
        text
    }

    #[test]
    fn a_soak_watch_is_read_and_a_watch_of_nothing_or_a_share_past_1_is_refused() {
        let with = |soak: &str| {
            FULL.replace(
                "[service.drain]",
                &format!("[service.soak]\n{soak}\n\n[service.drain]"),
            )
        };
        let settings = parse(&with(
            "duration = \"30s\"\nmax_5xx = 3\nmax_5xx_ratio = 0.01",
        ))
        .unwrap();
        let soak = settings.services[0].soak.unwrap();
        assert_eq!(soak.duration.get(), std::time::Duration::from_secs(30));
        assert_eq!((soak.max_5xx, soak.max_5xx_ratio), (3, Some(0.01)));
        assert_eq!(soak.allowed_5xx(100), 3, "3 is more than 1 % of 100");
        assert_eq!(soak.allowed_5xx(1000), 10, "1 % of 1000 is more than 3");
        assert!(parse(FULL).unwrap().services[0].soak.is_none());

        let zero = error(&with("duration = \"0s\""));
        assert!(
            zero.contains("key `service[0].soak.duration`: a watch of 0s watches nothing"),
            "{zero}"
        );
        let share = error(&with("duration = \"5s\"\nmax_5xx_ratio = 1.5"));
        assert!(
            share.contains("key `service[0].soak.max_5xx_ratio`: 1.5 is not a share of requests"),
            "{share}"
        );
        let unknown = error(&with("duration = \"5s\"\nmax_errors = 1"));
        assert!(unknown.contains("max_errors"), "{unknown}");
    }

    #[test]
    fn a_surge_strategy_is_read_with_its_overlap_and_rolling_stays_the_default() {
        let settings = parse(&surge_config([
            Some("127.0.0.1:18101"),
            Some("127.0.0.1:18102"),
        ]))
        .unwrap();
        let api = &settings.services[0];
        assert_eq!(api.strategy.kind, StrategyKind::Surge);
        assert_eq!(
            api.strategy.overlap.get(),
            std::time::Duration::from_secs(3)
        );
        let s1 = &api.backends[0];
        assert_eq!(s1.address_of(Slot::SurgeAddress).port(), 18101);
        assert_eq!(s1.address_of(Slot::Address).port(), 18001);
        assert_eq!(s1.haproxy_server(Slot::Address), "s1");
        assert_eq!(s1.haproxy_server(Slot::SurgeAddress), "s1:surge");

        let rolling = parse(FULL).unwrap();
        assert_eq!(rolling.services[0].strategy.kind, StrategyKind::Rolling);
        assert_eq!(
            rolling.services[0].strategy.overlap.get(),
            std::time::Duration::from_secs(10)
        );
    }

    #[test]
    fn a_surge_without_a_surge_address_of_its_own_or_on_another_host_is_refused() {
        let missing = error(&surge_config([Some("127.0.0.1:18101"), None]));
        assert!(
            missing.contains(
                "key `service[0].backend[1].surge_address`: backend \"s2\" has no surge_address"
            ),
            "{missing}"
        );
        let shared = error(&surge_config([
            Some("127.0.0.1:18101"),
            Some("127.0.0.1:18001"),
        ]));
        assert!(
            shared.contains(
                "surge_address 127.0.0.1:18001 is already another address of this service"
            ),
            "{shared}"
        );
        let unknown = error(&FULL.replace(
            "[service.drain]",
            "[service.strategy]\nkind = \"blue_green\"\n\n[service.drain]",
        ));
        assert!(unknown.contains("blue_green"), "{unknown}");
        let remote = error(&format!(
            "{HOSTS}{}",
            surge_config([Some("127.0.0.1:18101"), Some("127.0.0.1:18102")])
                .replace("name = \"s2\"\n", "name = \"s2\"\nhost = \"app1\"\n")
        ));
        assert!(
            remote.contains("key `service[0].strategy.kind`: backend \"s2\" runs on [[host]] \"app1\", and surge is supported only for backends on this machine"),
            "{remote}"
        );
    }

    const HOSTS: &str = r#"
[[host]]
name = "app1"
ssh = "deploy@198.18.0.2:22"
identity_file = "keys/id_ed25519"
known_hosts = "keys/known_hosts"
state_dir = "/var/lib/baton"

[[host]]
name = "app2"
ssh = "198.18.0.6"
"#;

    #[test]
    fn hosts_are_read_and_backends_run_on_them() {
        let text = format!(
            "{HOSTS}{}",
            FULL.replace(
                "address = \"127.0.0.1:18002\"",
                "address = \"198.18.0.2:8080\"\nhost = \"app1\""
            )
            .replace(
                "env = { APP_MODE = \"prod\" }",
                "env = { APP_MODE = \"prod\" }\nprepare = \"fetch-release $BATON_VERSION\""
            )
        );
        let settings = parse(&text).unwrap();
        let app1 = &settings.hosts[0];
        assert_eq!(app1.ssh.to_string(), "deploy@198.18.0.2:22");
        assert_eq!(
            app1.identity_file.as_deref(),
            Some(Path::new("/etc/baton/keys/id_ed25519"))
        );
        assert_eq!(
            app1.known_hosts.as_deref(),
            Some(Path::new("/etc/baton/keys/known_hosts"))
        );
        assert_eq!(app1.state_dir, Path::new("/var/lib/baton"));
        let app2 = &settings.hosts[1];
        assert_eq!((app2.ssh.user.as_deref(), app2.ssh.port), (None, None));
        assert_eq!(app2.state_dir, Path::new(".baton"), "~/.baton by default");
        let api = &settings.services[0];
        assert_eq!(api.backends[0].host, None);
        assert_eq!(
            api.backends[1].host.as_ref().map(|h| h.as_str()),
            Some("app1")
        );
        let RuntimeKind::Process { prepare, .. } = &api.runtime.kind else {
            panic!("a process runtime");
        };
        assert_eq!(prepare.as_deref(), Some("fetch-release $BATON_VERSION"));
        assert_eq!(
            api.runtime.explicit_env,
            BTreeMap::from([("APP_MODE".to_owned(), "prod".to_owned())]),
            "a host gets the variables the file names, not this machine's PATH or HOME"
        );
    }

    #[test]
    fn a_backend_on_an_unknown_host_and_bad_hosts_are_refused_naming_the_key() {
        let unknown = format!(
            "{HOSTS}{}",
            FULL.replace(
                "address = \"127.0.0.1:18002\"",
                "address = \"198.18.0.2:8080\"\nhost = \"app9\""
            )
        );
        let message = error(&unknown);
        assert!(
            message.contains("key `service[0].backend[1].host`: no [[host]] is named \"app9\": expected one of \"app1\", \"app2\""),
            "{message}"
        );
        for (text, expected) in [
            (
                HOSTS.replace("deploy@198.18.0.2:22", "deploy@198.18.0.2:ssh"),
                "key `host[0].ssh`: invalid ssh target",
            ),
            (
                HOSTS.replace("\"app2\"", "\"app1\""),
                "key `host[1].name`: duplicate host name \"app1\"",
            ),
            (
                HOSTS.replace("/var/lib/baton", "~deploy/baton"),
                "key `host[0].state_dir`: invalid state directory",
            ),
            (
                HOSTS.replace("state_dir", "statedir"),
                "unknown field `statedir`",
            ),
        ] {
            let message = error(&text);
            assert!(
                message.contains(expected),
                "expected {expected:?}, got {message:?}"
            );
        }
    }

    #[test]
    fn reads_the_documented_example() {
        let settings = parse(FULL).unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(settings.server.database_url, "sqlite:///etc/baton/baton.db");
        assert_eq!(
            settings.load_balancers[0].runtime_api[0],
            RuntimeApiAddr::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            settings.load_balancers[0].runtime_api[1],
            RuntimeApiAddr::Tcp("127.0.0.1:9999".into())
        );
        let api = &settings.services[0];
        assert_eq!(api.haproxy_backend, "api_be");
        assert_eq!(api.batch_size, 2);
        assert!(!api.auto_rollback);
        assert_eq!(api.health.healthy_threshold, 3);
        assert_eq!(api.health.interval.get().as_millis(), 250);
        assert_eq!(api.runtime.initial_version.as_str(), "v1");
        assert_eq!(api.runtime.env["APP_MODE"], "prod");
        assert!(
            matches!(&api.runtime.kind, RuntimeKind::Process { command, stop_signal: StopSignal::Term, .. } if command[0] == "python3")
        );
        assert_eq!(api.backends[1].address.port(), 18002);
    }

    #[test]
    fn the_auth_table_sets_sessions_throttling_and_the_public_origin() {
        let settings = parse(
            r#"
[auth]
session_ttl = "8h"
https = "always"
trust_forwarded_for = true
public_origin = "HTTPS://Baton.Example.com/"
login_throttle = { per_name = 3, per_address = 10, window = "5m" }
streams_per_caller = 4
"#,
        )
        .unwrap();
        let auth = &settings.auth;
        assert_eq!(auth.session_ttl.as_secs(), 8 * 3600);
        assert_eq!(auth.streams_per_caller, 4);
        assert_eq!(auth.https, Https::Always);
        assert!(auth.trust_forwarded_for);
        assert_eq!(
            auth.public_origin.as_ref().map(|origin| origin.as_str()),
            Some("https://baton.example.com")
        );
        assert_eq!(
            auth.throttle,
            Throttle {
                per_name: 3,
                per_address: 10,
                window: std::time::Duration::from_secs(300)
            }
        );

        let defaults = parse("").unwrap().auth;
        assert_eq!(defaults.session_ttl.as_secs(), 12 * 3600);
        assert_eq!(defaults.https, Https::FromForwardedProto);
        assert_eq!(defaults.public_origin, None);
        assert_eq!(defaults.streams_per_caller, 16);

        for (table, key, reason) in [
            (
                "public_origin = \"baton.example.com\"",
                "auth.public_origin",
                "is not an origin",
            ),
            (
                "public_origin = \"https://x.example/baton\"",
                "auth.public_origin",
                "is not an origin",
            ),
            ("session_ttl = \"10s\"", "auth.session_ttl", "too short"),
            (
                "login_throttle = { per_name = 0 }",
                "auth.login_throttle.per_name",
                "refuse every login",
            ),
            (
                "streams_per_caller = 0",
                "auth.streams_per_caller",
                "refuse every live page",
            ),
            (
                "https = \"sometimes\"",
                "auth.https",
                "expected `forwarded-proto` or `always`",
            ),
            ("cookie_name = \"x\"", "auth", "unknown field `cookie_name`"),
        ] {
            let message = error(&format!("[auth]\n{table}\n"));
            assert!(
                message.contains(&format!("key `{key}")) && message.contains(reason),
                "{table}: {message}"
            );
        }
    }

    #[test]
    fn haproxy_timeouts_and_retries_are_optional_and_checked() {
        let settings = parse(FULL).unwrap();
        let edge = &settings.load_balancers[0];
        assert_eq!(
            (edge.command_timeout, edge.attempts, edge.backoff),
            (None, None, None),
            "unset: the driver's defaults"
        );
        let tuned = FULL.replace(
            "runtime_api = [",
            "command_timeout = \"500ms\"\nattempts = 2\nbackoff = \"50ms\"\nruntime_api = [",
        );
        let edge = &parse(&tuned).unwrap().load_balancers[0];
        assert_eq!(
            (edge.command_timeout, edge.attempts, edge.backoff),
            (
                Some(Duration::from_millis(500)),
                Some(2),
                Some(Duration::from_millis(50))
            )
        );

        for (line, key, reason) in [
            (
                "command_timeout = \"0s\"",
                "load_balancer[0].command_timeout",
                "0s leaves HAProxy no time to answer",
            ),
            (
                "command_timeout = \"soon\"",
                "load_balancer[0].command_timeout",
                "invalid duration \"soon\"",
            ),
            (
                "attempts = 0",
                "load_balancer[0].attempts",
                "0 attempts would never send a command: expected 1 or more",
            ),
            (
                "attempts = -1",
                "load_balancer[0].attempts",
                "invalid value: integer `-1`",
            ),
            (
                "backoff = 100",
                "load_balancer[0].backoff",
                "invalid type: integer `100`, expected a string",
            ),
        ] {
            let message =
                error(&FULL.replace("runtime_api = [", &format!("{line}\nruntime_api = [")));
            assert!(
                message.contains(&format!("key `{key}`: ")) && message.contains(reason),
                "{line}: {message}"
            );
        }
    }

    #[test]
    fn an_empty_file_is_a_fleet_of_nothing_on_defaults() {
        let settings = parse("").unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(settings.services.is_empty());
        assert_eq!(settings.server.lease, DEFAULT_LEASE);
        assert_eq!(settings.server.replica, None);
    }

    #[test]
    fn a_replica_has_a_name_and_a_lease_of_its_own_when_the_file_says() {
        let settings = parse("[server]\nreplica = \"baton-1\"\nlease = \"2s\"\n").unwrap();
        assert_eq!(settings.server.replica.as_deref(), Some("baton-1"));
        assert_eq!(settings.server.lease, std::time::Duration::from_secs(2));
    }

    #[test]
    fn metrics_scrapers_are_cidr_blocks_or_single_addresses() {
        assert!(parse("").unwrap().server.metrics_allow.is_empty());
        let settings =
            parse("[server]\nmetrics_allow = [\"10.1.0.0/16\", \"127.0.0.1\", \"::1\"]\n").unwrap();
        let allowed: Vec<String> = settings
            .server
            .metrics_allow
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allowed, ["10.1.0.0/16", "127.0.0.1/32", "::1/128"]);
        let error = parse("[server]\nmetrics_allow = [\"10.1.0.0/33\"]\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("key `server.metrics_allow`: invalid address block \"10.1.0.0/33\""),
            "{error}"
        );
    }

    #[test]
    fn a_postgres_database_url_is_taken_in_either_form_and_never_shown_with_its_password() {
        for url in [
            "postgres://baton:s3cret@db.internal:5432/baton",
            "postgresql://baton@db.internal/baton?sslmode=require",
        ] {
            let text = format!("[server]\ndatabase_url = \"{url}\"\n");
            assert_eq!(parse(&text).unwrap().server.database_url, url);
        }
        for url in [
            "mysql://baton:s3cret@db/baton",
            "baton:s3cret@db/baton",
            "s3cret",
        ] {
            let message = error(&format!("[server]\ndatabase_url = \"{url}\"\n"));
            assert!(
                message.contains("unsupported database URL scheme")
                    && message.contains("\"postgres://")
                    && message.contains("\"postgresql://"),
                "{message}"
            );
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = EnvOverrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some("sqlite://:memory:".into()),
            site_root: Some("/srv/site".into()),
        };
        let settings = Settings::parse(FULL, Path::new("baton.toml"), &env).unwrap();
        assert_eq!(settings.server.listen.port(), 0);
        assert_eq!(settings.server.database_url, "sqlite://:memory:");
        assert_eq!(settings.server.site_root, PathBuf::from("/srv/site"));
    }

    #[test]
    fn relative_paths_start_from_the_config_folder() {
        let settings =
            parse(&FULL.replace("unix:/run/haproxy/admin.sock", "unix:run/admin.sock")).unwrap();
        assert_eq!(
            settings.load_balancers[0].runtime_api[0],
            RuntimeApiAddr::Unix("/etc/baton/run/admin.sock".into())
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_file_line_and_key() {
        let message = error("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(
            message.starts_with("/etc/baton/baton.toml:3:1: "),
            "{message}"
        );
        assert!(message.contains("unknown field `listen_port`"), "{message}");
        assert!(message.contains("expected one of"), "{message}");
    }

    #[test]
    fn a_misspelt_key_deep_inside_a_service_names_its_path() {
        let message = error(&FULL.replace("healthy_threshold = 3", "healthy_treshold = 3"));
        assert!(
            message.contains("baton.toml:21:1: key `service[0].health.healthy_treshold`"),
            "{message}"
        );
        assert!(
            message.contains("unknown field `healthy_treshold`"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_value_names_key_and_expectation() {
        let message = error(&FULL.replace("interval = \"250ms\"", "interval = \"fast\""));
        assert!(
            message.contains("baton.toml:19:12: "),
            "line and column of the bad value: {message}"
        );
        assert!(
            message.contains("key `service[0].health.interval`"),
            "{message}"
        );
        assert!(
            message.contains("expected a number with a unit"),
            "{message}"
        );

        let message = error(&FULL.replace(
            "initial_version = \"v1\"",
            "initial_version = \"v1; reboot\"",
        ));
        assert!(
            message.contains("key `service[0].runtime.initial_version`"),
            "{message}"
        );
        assert!(message.contains("invalid version"), "{message}");

        let message = error(&FULL.replace("127.0.0.1:18002", "localhost"));
        assert!(
            message.contains("key `service[0].backend[1].address`"),
            "{message}"
        );

        let message = error(&FULL.replace("tcp:127.0.0.1:9999", "127.0.0.1:9999"));
        assert!(
            message.contains("key `load_balancer[0].runtime_api[1]`"),
            "{message}"
        );
        assert!(
            message.contains("expected \"unix:/path/to/socket\" or \"tcp:host:port\""),
            "{message}"
        );

        let message = error("[server]\nlisten = 8080\n");
        assert!(message.contains("key `server.listen`"), "{message}");
        assert!(
            message.contains("invalid type: integer `8080`, expected a string"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let message = error("[server\nlisten = 1");
        assert!(message.starts_with("/etc/baton/baton.toml:1:"), "{message}");
    }

    #[test]
    fn cross_references_are_checked() {
        let message = error(&FULL.replace("load_balancer = \"edge\"", "load_balancer = \"egde\""));
        assert!(
            message.contains("key `service[0].load_balancer`"),
            "{message}"
        );
        assert!(
            message.contains("no [[load_balancer]] is named \"egde\": expected one of \"edge\""),
            "{message}"
        );

        let message = error(&FULL.replace("name = \"s2\"", "name = \"s1\""));
        assert!(
            message.contains("key `service[0].backend[1].name`: duplicate backend name \"s1\""),
            "{message}"
        );

        let message = error(&FULL.replace("batch_size = 2", "batch_size = 0"));
        assert!(
            message.contains("key `service[0].batch_size`: expected at least 1"),
            "{message}"
        );

        let message =
            error(&FULL.replace("listen = \"127.0.0.1:9090\"", "listen = \"everywhere\""));
        assert!(
            message.contains("key `server.listen`: invalid address \"everywhere\""),
            "{message}"
        );
    }

    #[test]
    fn every_refusal_names_its_key_and_what_was_expected() {
        let second_lb = "[[load_balancer]]\nname = \"edge\"\nkind = \"haproxy\"\nruntime_api = [\"unix:b.sock\"]\n";
        let second_service = FULL
            .split("[[service]]")
            .nth(1)
            .map(|service| format!("{FULL}\n[[service]]{service}"))
            .unwrap();
        for (text, expected) in [
            (
                FULL.replace(
                    "listen = \"127.0.0.1:9090\"",
                    "database_url = \"mysql://baton:s3cret@db/baton\"",
                ),
                "key `server.database_url`: unsupported database URL scheme \"mysql\": expected \"sqlite://path/to/baton.db\", \"postgres://user:password@host:port/database\" or \"postgresql://…\"",
            ),
            (
                FULL.replace("listen = \"127.0.0.1:9090\"", "max_connections = 0"),
                "key `server.max_connections`: 0 connections would serve nobody",
            ),
            (
                FULL.replace("listen = \"127.0.0.1:9090\"", "lease = \"500ms\""),
                "key `server.lease`: a lease of 500ms is renewed too often to survive a slow database: expected at least 1s",
            ),
            (
                FULL.replace("listen = \"127.0.0.1:9090\"", "replica = \" \""),
                "key `server.replica`: invalid replica name \" \": expected 1 to 100 printable characters",
            ),
            (
                FULL.replace("[[service]]", &format!("{second_lb}\n[[service]]")),
                "key `load_balancer[1].name`: duplicate load balancer name \"edge\": each must be unique",
            ),
            (
                FULL.replace(
                    "runtime_api = [\"unix:/run/haproxy/admin.sock\", \"tcp:127.0.0.1:9999\"]",
                    "runtime_api = []",
                ),
                "key `load_balancer[0].runtime_api`: expected at least one runtime API address",
            ),
            (
                second_service,
                "key `service[1].name`: duplicate service name \"api\": each must be unique",
            ),
            (
                FULL.replace("healthy_threshold = 3", "healthy_threshold = 0"),
                "key `service[0].health.healthy_threshold`: expected at least 1",
            ),
            (
                FULL.replace("path = \"/alive\"", "path = \"alive\""),
                "key `service[0].health.path`: invalid path \"alive\": expected it to start with '/'",
            ),
            (
                FULL.split("[[service.backend]]").next().unwrap().to_owned(),
                "key `service[0].backend`: expected at least one [[service.backend]]",
            ),
        ] {
            let message = error(&text);
            assert!(
                message.starts_with("/etc/baton/baton.toml: ") && message.contains(expected),
                "expected {expected:?}, got {message:?}"
            );
        }
    }

    #[test]
    fn runtime_keys_must_fit_the_kind() {
        let message =
            error(&FULL.replace("command = [\"python3\", \"app.py\"]", "start = \"./run\""));
        assert!(
            message.contains("key `service[0].runtime.start`"),
            "{message}"
        );
        assert!(
            message.contains("not used with kind = \"process\""),
            "{message}"
        );

        let command_kind = FULL
            .replace("kind = \"process\"", "kind = \"command\"")
            .replace("command = [\"python3\", \"app.py\"]", "start = \"./start\"");
        let message = error(&command_kind);
        assert!(
            message.contains("key `service[0].runtime.stop`"),
            "{message}"
        );

        let message = error(&FULL.replace("APP_MODE", "BATON_VERSION"));
        assert!(
            message.contains("key `service[0].runtime.env.BATON_VERSION`"),
            "{message}"
        );

        let message = error(&FULL.replace(
            "env = { APP_MODE = \"prod\" }",
            "env = { APP_MODE = \"prod\" }\npass_env = [\"BATON_SURELY_UNSET_X\"]",
        ));
        assert!(
            message.contains("key `service[0].runtime.pass_env[0]`")
                && message.contains("does not start with BATON_"),
            "{message}"
        );
        let message = error(&FULL.replace(
            "env = { APP_MODE = \"prod\" }",
            "env = { APP_MODE = \"prod\" }\npass_env = [\"SURELY_UNSET_IN_BATON_TESTS\"]",
        ));
        assert!(
            message.contains("key `service[0].runtime.pass_env[0]`")
                && message.contains("SURELY_UNSET_IN_BATON_TESTS is not set"),
            "{message}"
        );

        let message = error(&FULL.replace("kind = \"process\"", "kind = \"docker\""));
        assert!(
            message.contains("key `service[0].runtime.kind`"),
            "{message}"
        );
        assert!(
            message.contains("unknown variant `docker`, expected `process` or `command`"),
            "{message}"
        );
    }

    const NOTIFY: &str = r#"
[[service.notify]]
kind = "webhook"
url_env = "API_HOOK_URL"
secret_env = "API_HOOK_KEY"
events = ["failed", "rolled_back", "soak_tripped"]

[[notify]]
kind = "slack"
url_env = "SLACK_URL"
"#;

    #[test]
    fn notifications_read_their_urls_from_the_named_variables_and_globals_reach_every_service() {
        let secrets = [
            ("API_HOOK_URL", "http://127.0.0.1:9/hook"),
            ("API_HOOK_KEY", "k3y"),
            (
                "SLACK_URL",
                "https://hooks.slack.com/services/T0/B0/s3cretpath",
            ),
        ];
        let settings = parse_with(&format!("{FULL}{NOTIFY}"), &secrets).unwrap();
        let notify = &settings.services[0].notify;
        assert_eq!(notify.len(), 2, "the service's own, then the global one");
        assert_eq!(notify[0].kind, NotifyKind::Webhook);
        assert_eq!(notify[0].url.expose().as_str(), "http://127.0.0.1:9/hook");
        assert_eq!(notify[0].secret.as_ref().unwrap().expose(), b"k3y");
        assert!(notify[0].wants(NotificationEvent::SoakTripped));
        assert!(!notify[0].wants(NotificationEvent::Started));
        assert_eq!(notify[1].kind, NotifyKind::Slack);
        assert_eq!(notify[1].url_env, "SLACK_URL");
        assert_eq!(
            notify[1].events,
            NotificationEvent::all(),
            "every event unless it says"
        );
        let printed = format!("{settings:?}");
        assert!(
            !printed.contains("s3cretpath") && !printed.contains("k3y"),
            "{printed}"
        );
    }

    #[test]
    fn a_notification_whose_variable_is_unset_is_an_error_naming_file_key_and_variable() {
        let message = parse_with(
            &format!("{FULL}{NOTIFY}"),
            &[
                ("API_HOOK_URL", "http://127.0.0.1:9/hook"),
                ("API_HOOK_KEY", "k"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.starts_with("/etc/baton/baton.toml:")
                && message.contains(
                    ": key `notify[0].url_env`: the environment variable SLACK_URL is not set"
                ),
            "{message}"
        );
        let message = parse_with(
            &format!("{FULL}{NOTIFY}"),
            &[
                ("API_HOOK_URL", "not a url"),
                ("API_HOOK_KEY", "k"),
                ("SLACK_URL", "https://x.test/"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("key `service[0].notify[0].url_env`: the environment variable API_HOOK_URL does not hold an http:// or https:// URL")
                && !message.contains("not a url"),
            "{message}"
        );
        let unsigned = NOTIFY.replace("secret_env = \"API_HOOK_KEY\"\n", "");
        let message = parse_with(
            &format!("{FULL}{unsigned}"),
            &[
                ("API_HOOK_URL", "http://127.0.0.1:9/"),
                ("SLACK_URL", "https://x.test/"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            message
                .contains("key `service[0].notify[0]`: a webhook notification needs `secret_env`"),
            "{message}"
        );
        let unknown = NOTIFY.replace("\"soak_tripped\"", "\"exploded\"");
        let message = parse_with(&format!("{FULL}{unknown}"), &secrets_all())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("service[0].notify[0].events")
                && message.contains("unknown variant `exploded`"),
            "{message}"
        );
    }

    fn secrets_all() -> [(&'static str, &'static str); 3] {
        [
            ("API_HOOK_URL", "http://127.0.0.1:9/"),
            ("API_HOOK_KEY", "k"),
            ("SLACK_URL", "https://x.test/"),
        ]
    }

    const WEBHOOK: &str = r#"
[service.webhook]
secret_env = "API_WEBHOOK_SECRET"
branch = "main"
tags = "v*"
"#;

    fn parse_with(text: &str, secrets: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let secrets: BTreeMap<String, String> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::parse_with_secrets(
            text,
            Path::new("/etc/baton/baton.toml"),
            &EnvOverrides::default(),
            &|name| secrets.get(name).cloned(),
        )
    }

    #[test]
    fn a_webhook_reads_its_secret_from_the_named_variable() {
        let text = format!("{FULL}{WEBHOOK}");
        let settings = parse_with(&text, &[("API_WEBHOOK_SECRET", "s3cret-value")]).unwrap();
        let webhook = settings.services[0].webhook.as_ref().unwrap();
        assert_eq!(webhook.secret_env, "API_WEBHOOK_SECRET");
        assert_eq!(webhook.secret.expose(), b"s3cret-value");
        assert_eq!(webhook.branch.as_deref(), Some("main"));
        let tags = webhook.tags.as_ref().unwrap();
        assert!(tags.matches("v1.2.0"));
        assert!(!tags.matches("release-1"));
        assert!(!tags.matches("xv1"), "the whole tag must match");
        // Neither the settings nor the webhook print the secret.
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cret-value"), "{printed}");
        assert!(printed.contains("WebhookSecret(<redacted>)"), "{printed}");
        // A service without the table takes no webhooks.
        assert!(parse(FULL).unwrap().services[0].webhook.is_none());
    }

    #[test]
    fn an_unset_secret_variable_is_an_error_naming_file_key_and_variable() {
        let text = format!("{FULL}{WEBHOOK}");
        let message = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(
            message
                .starts_with("/etc/baton/baton.toml:43:14: key `service[0].webhook.secret_env`: "),
            "{message}"
        );
        assert!(
            message.contains("the environment variable API_WEBHOOK_SECRET is not set"),
            "{message}"
        );
        let message = parse_with(&text, &[("API_WEBHOOK_SECRET", "")])
            .unwrap_err()
            .to_string();
        assert!(message.contains("API_WEBHOOK_SECRET is empty"), "{message}");
    }

    #[test]
    fn webhook_keys_are_checked() {
        let ok = [("API_WEBHOOK_SECRET", "x")];
        let error = |webhook: &str| {
            parse_with(&format!("{FULL}{webhook}"), &ok)
                .expect_err("the webhook table should be refused")
                .to_string()
        };
        let message = error(&WEBHOOK.replace("branch = \"main\"", "brnach = \"main\""));
        assert!(
            message.contains("key `service[0].webhook.brnach`: unknown field `brnach`"),
            "{message}"
        );
        let message = error(&WEBHOOK.replace("\"main\"", "\"refs/heads/main\""));
        assert!(
            message.contains("key `service[0].webhook.branch`"),
            "{message}"
        );
        assert!(message.contains("without refs/heads/"), "{message}");
        let message = error(&WEBHOOK.replace("\"v*\"", "\"v[0-9\""));
        assert!(
            message.contains("key `service[0].webhook.tags`"),
            "{message}"
        );
        assert!(
            message.contains("invalid tag pattern \"v[0-9\""),
            "{message}"
        );
        let message = error(&WEBHOOK.replace("API_WEBHOOK_SECRET", "api webhook"));
        assert!(
            message.contains("key `service[0].webhook.secret_env`: invalid variable name"),
            "{message}"
        );
        let message = error(
            &WEBHOOK
                .replace("branch = \"main\"\n", "")
                .replace("tags = \"v*\"\n", ""),
        );
        assert!(
            message.contains("key `service[0].webhook`: expected `branch`, `tags` or both"),
            "{message}"
        );
        let message = error("\n[service.webhook]\nbranch = \"main\"\n");
        assert!(message.contains("missing field `secret_env`"), "{message}");
    }

    #[test]
    fn a_webhook_may_name_the_one_repository_it_takes_pushes_from() {
        let ok = [("API_WEBHOOK_SECRET", "x")];
        let with = |repository: &str| {
            parse_with(
                &format!("{FULL}{WEBHOOK}repository = {repository:?}\n"),
                &ok,
            )
        };
        for accepted in [
            "acme/api",
            "Group/sub.group/my_project",
            "~ADMIN/hello-world",
        ] {
            let settings = with(accepted).unwrap_or_else(|e| panic!("{accepted}: {e}"));
            let webhook = settings.services[0].webhook.as_ref().unwrap();
            assert_eq!(webhook.repository.as_ref().unwrap().as_str(), accepted);
        }
        let acme = RepositoryName::parse("acme/api").unwrap();
        assert!(
            acme.matches("Acme/API"),
            "hosts name repositories case-insensitively"
        );
        assert!(!acme.matches("acme/api-fork"));
        assert!(
            parse_with(&format!("{FULL}{WEBHOOK}"), &ok)
                .unwrap()
                .services[0]
                .webhook
                .as_ref()
                .unwrap()
                .repository
                .is_none()
        );

        for refused in [
            "api",
            "acme/",
            "/api",
            "acme//api",
            "https://github.com/acme/api",
            "acme/api.git ",
            "acme/../api",
            "acme/a pi",
            "",
        ] {
            let message = with(refused)
                .expect_err(&format!("{refused:?} should be refused"))
                .to_string();
            assert!(
                message.starts_with(
                    "/etc/baton/baton.toml:46:14: key `service[0].webhook.repository`: "
                ),
                "{refused:?}: {message}"
            );
            assert!(
                message.contains(&format!(
                    "invalid repository {refused:?}: expected \"owner/name\""
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn canary_and_approval_are_read_and_a_canary_must_leave_backends_to_promote_to() {
        let with = |lines: &str| {
            FULL.replace(
                "auto_rollback = false",
                &format!("auto_rollback = false\n{lines}"),
            )
        };
        let service = &parse(&with("canary = 1\napproval = \"start\""))
            .unwrap()
            .services[0];
        assert_eq!(
            (service.canary, service.approval),
            (1, Some(Approval::Start))
        );
        let service = &parse(FULL).unwrap().services[0];
        assert_eq!((service.canary, service.approval), (0, None));

        let message = error(&with("canary = 2"));
        assert!(
            message.contains(
                "key `service[0].canary`: canary = 2 leaves no backend to promote to: expected fewer than the service's 2 backend(s)"
            ),
            "{message}"
        );
        let message = error(&with("approval = \"finish\""));
        assert!(message.contains("service[0].approval"), "{message}");
        assert!(
            message.contains("unknown variant `finish`, expected `start`"),
            "{message}"
        );
    }
}
