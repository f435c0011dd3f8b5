//! The narrow interfaces Baton drives: a load balancer, a runtime and a health probe, with their
//! implementations, and in-memory fakes of all three (`fake.rs`) for tests on a paused clock.
//!
//! Invariant: only `haproxy.rs` knows the HAProxy runtime-API syntax; only `process.rs` and
//! `command.rs` start or signal processes on this machine, and only `agent.sh` (run by
//! `remote.rs` through a `shell::Shell`) on other hosts; only `health.rs` sends a backend HTTP
//! requests. The rollout engine sees these traits, never the IO.

pub mod command;
pub mod fake;
pub(crate) mod files;
pub mod haproxy;
mod health;
pub mod placed;
pub mod process;
pub mod remote;
pub mod shell;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{BackendAddr, BackendName, ServiceName, Slot, Version};

/// A load balancer's view of a server, parsed by its driver (shared with the UI, which shows it).
pub use app::model::{CheckResult, Health, MaintCause, ServerState};

/// What an operator set for a server: HAProxy's admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation.
    Ready,
    /// No new traffic; open sessions continue; health checks keep running.
    Drain,
    /// No traffic and no checks.
    Maint,
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        })
    }
}

/// One server of a backend as one load-balancer node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerStatus {
    /// Which node answered (the runtime-API address as configured).
    pub node: String,
    /// The HAProxy server name.
    pub server: String,
    /// Whether it routes traffic to the server, and whether that is settled (`show stat`'s
    /// `status` column).
    pub status: ServerState,
    /// The last health check's result (`check_status`); `None` in maint or without checks.
    pub check: Option<CheckResult>,
    /// Open sessions (`scur`).
    pub sessions: u64,
    /// HAProxy `backup` servers carry traffic only when no active server is up.
    pub backup: bool,
    /// The server's `fall` (`check_fall`); `None` when it has no health check.
    pub fall: Option<u32>,
    /// What the server has served, and how often its checks took it DOWN.
    pub counters: ServerCounters,
}

/// A server's running totals on one node since HAProxy started or the server was added: they
/// only grow, except across a reload, which starts them again at 0. The soak watch and the
/// traffic chart read their differences between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerCounters {
    /// HTTP requests sent to the server (`req_tot`).
    pub requests: u64,
    /// Its 5xx responses (`hrsp_5xx`).
    pub errors_5xx: u64,
    /// How many times its health check took it from UP to DOWN (`chkdown`).
    pub check_downs: u64,
}

impl ServerCounters {
    /// What was counted since `earlier`; a counter that went back (HAProxy reloaded) counts
    /// from 0 again.
    pub fn since(self, earlier: Self) -> Self {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        Self {
            requests: delta(self.requests, earlier.requests),
            errors_5xx: delta(self.errors_5xx, earlier.errors_5xx),
            check_downs: delta(self.check_downs, earlier.check_downs),
        }
    }
}

impl std::ops::Add for ServerCounters {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            requests: self.requests + other.requests,
            errors_5xx: self.errors_5xx + other.errors_5xx,
            check_downs: self.check_downs + other.check_downs,
        }
    }
}

impl ServerStatus {
    /// Whether this node sends traffic to the server and its last check is fresh and passing.
    ///
    /// Only the settled `Up`: right after leaving maint HAProxy shows `UP 1/2` (`Up` while
    /// `changing`) with the check result from before maint, even when nothing listens any more
    /// (measured on HAProxy 2.6). Without checks, being in rotation is all there is to know.
    pub fn is_up(&self) -> bool {
        match &self.status {
            ServerState::Up { changing: None } | ServerState::NoCheck => true,
            ServerState::Up { changing: Some(_) }
            | ServerState::Nolb { .. }
            | ServerState::Drain { .. }
            | ServerState::AgentDrain
            | ServerState::Maint { .. }
            | ServerState::Down { .. }
            | ServerState::AgentDown
            | ServerState::Other { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("HAProxy node {node} did not answer after {attempts} attempts: {reason}")]
    Unreachable {
        node: String,
        attempts: u32,
        reason: String,
    },
    #[error("HAProxy node {node} refused `{command}`: {reply}")]
    Refused {
        node: String,
        command: String,
        reply: String,
    },
    #[error("HAProxy node {node} has no server {backend}/{server}")]
    NoSuchServer {
        node: String,
        backend: String,
        server: String,
    },
    #[error("HAProxy node {node} answered something Baton cannot read: {reason}")]
    Protocol { node: String, reason: String },
    /// Not sent: this replica's leadership lapsed (see `fleet/leading.rs`).
    #[error("not sent to HAProxy: replica {replica} no longer leads (term {term})")]
    NotLeading { replica: String, term: i64 },
}

/// A load balancer of one or more nodes. Every method acts on, or reports from, every node.
///
/// All methods are cancellation-safe: a dropped call leaves at most some nodes changed, and
/// calling it again converges.
#[async_trait]
pub trait LoadBalancer: Send + Sync {
    /// Sets `backend/server`'s admin state on every node; returns once every node accepted it.
    async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), LbError>;
    /// Every server of `backend` on every node (one entry per node and server).
    async fn servers(&self, backend: &str) -> Result<Vec<ServerStatus>, LbError>;
    /// Closes the server's remaining sessions on every node; returns how many were open.
    async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<u64, LbError>;
    /// Adds `backend/server` at `address` on every node that lacks it, in maint, with its
    /// health check (every `inter`) and weight like `like`'s. Already there at `address` is
    /// success.
    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: BackendAddr,
        like: &str,
        inter: Duration,
    ) -> Result<(), LbError>;
    /// Puts `backend/server` in maint and removes it on every node. Already gone is success.
    async fn remove_server(&self, backend: &str, server: &str) -> Result<(), LbError>;
}

/// The backend a runtime acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub service: ServiceName,
    pub name: BackendName,
    pub address: BackendAddr,
    /// Which of the backend's addresses `address` is: during a surge two instances of one
    /// backend run at once, one on each, and a runtime keeps them apart by it.
    pub slot: Slot,
}

impl BackendSpec {
    /// The instance of `backend` on `slot`.
    pub fn of(
        service: &ServiceName,
        backend: &crate::settings::BackendSettings,
        slot: Slot,
    ) -> Self {
        Self {
            service: service.clone(),
            name: backend.name.clone(),
            address: backend.address_of(slot),
            slot,
        }
    }
}

/// What runs on a backend, as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendRun {
    Running {
        version: Version,
        pid: Option<u32>,
    },
    /// Not running; `exit` says how the last run ended, when known ("exit status 3").
    Stopped {
        exit: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start {backend}: {reason}")]
    Start { backend: String, reason: String },
    #[error("cannot stop {backend}: {reason}")]
    Stop { backend: String, reason: String },
    #[error("prepare for version {version} failed: {reason}")]
    Prepare { version: String, reason: String },
    #[error("{0}")]
    Other(String),
    /// Not done: this replica's leadership lapsed (see `fleet/leading.rs`).
    #[error("not done: replica {replica} no longer leads (term {term})")]
    NotLeading { replica: String, term: i64 },
}

/// Starts and stops a service's backends.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Runs once per rollout before any backend is touched (fetch an artifact, say).
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError>;
    /// Starts `version` on the backend. Idempotent: already running that version is success.
    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError>;
    /// Stops the backend: the configured signal, then SIGKILL after the stop timeout.
    /// Idempotent: already stopped is success.
    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError>;
    /// What runs there now.
    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError>;
    /// The last `lines` lines of the backend's log, oldest first; `None` when this runtime
    /// keeps no log for it (or none was written yet). Reading is not a side effect: a replica
    /// that does not lead may read too.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        let _ = (backend, lines);
        Ok(None)
    }
}

/// The end of a backend's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    /// Where the lines were read: a path, with the host when not on this machine.
    pub source: String,
    pub lines: Vec<String>,
}

/// The most lines of a log Baton reads back, for the rollout page and the API.
pub const LOG_TAIL_MAX: usize = 200;

/// Why one probe of a backend's health path did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The backend answered with a status other than 2xx.
    Status(reqwest::StatusCode),
    /// No whole answer within the probe's timeout.
    TimedOut,
    /// No answer at all (nothing listens, the connection was reset…): the client's words.
    Unanswered(String),
}

/// Baton's own check of a backend: one request to its health path.
///
/// A trait, not a bare HTTP client, so that the executor's tests answer probes from the fake
/// runtime on a paused clock (real sockets and a paused clock do not mix: tokio would jump
/// the clock to the probe's timeout while the kernel is still connecting).
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// One `GET http://<address><path>`, given `timeout` to answer. Cancellation-safe.
    async fn probe(
        &self,
        address: BackendAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), ProbeFailure>;
}
