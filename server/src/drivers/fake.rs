//! In-memory fakes of the driver traits, for tests on tokio's paused clock.
//!
//! [`FakeRuntime`] runs pretend processes that start, answer their health path, crash or hang
//! as a test scripts each version, and answers Baton's [`HealthProbe`] for them. [`FakeLb`] is
//! HAProxy as `haproxy.rs` measured it: admin states; a check every `inter` against the fake
//! processes, counted with `rise` and `fall` like HAProxy's health, so that leaving maint shows
//! the stale `UP 1/2` or `DRAIN 1/2` until the first fresh check; sessions that end by
//! themselves or are cut; and nodes that can be told to refuse commands, to go silent (failing
//! as `HaproxyDriver` does, after its attempts and backoff) or to hang. Both write every call,
//! with the time it was made, into one [`CallLog`].
//!
//! Invariant: nothing here opens a socket, starts a process or writes a file, and every wait is a
//! tokio timer, so on a paused clock a rollout of minutes is tested in milliseconds. Where the
//! fakes are simpler than HAProxy it is said beside the code (no `fastinter`; the first check
//! after maint comes exactly `inter` later, where HAProxy takes anywhere up to `inter`).

use std::collections::HashMap;
use std::fmt;
use std::future::pending;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};

use super::haproxy::HaproxyOptions;
use super::{
    AdminState, BackendRun, BackendSpec, CheckResult, Health, HealthProbe, LbError, LoadBalancer,
    LogTail, MaintCause, ProbeFailure, Runtime, RuntimeError, ServerCounters, ServerState,
    ServerStatus,
};
use crate::domain::{BackendAddr, Version};

/// One call to a fake, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Time since the log was made: virtual time on a paused clock.
    pub at: Duration,
    pub what: What,
}

/// What was asked of a fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    SetState {
        server: String,
        state: AdminState,
    },
    Servers,
    ShutdownSessions {
        server: String,
    },
    Prepare {
        version: String,
    },
    Start {
        backend: String,
        version: String,
    },
    Stop {
        backend: String,
    },
    Status {
        backend: String,
    },
    Probe {
        backend: String,
    },
    AddServer {
        server: String,
        address: BackendAddr,
    },
    RemoveServer {
        server: String,
    },
}

impl What {
    /// Whether the call is meant to change something (reports and probes are not).
    pub fn acts(&self) -> bool {
        match self {
            Self::SetState { .. }
            | Self::ShutdownSessions { .. }
            | Self::Prepare { .. }
            | Self::Start { .. }
            | Self::Stop { .. }
            | Self::AddServer { .. }
            | Self::RemoveServer { .. } => true,
            Self::Servers | Self::Status { .. } | Self::Probe { .. } => false,
        }
    }
}

/// Short and readable, for asserting whole sequences: `web1 drain`, `start web1 v2`.
impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetState { server, state } => write!(f, "{server} {state}"),
            Self::Servers => f.write_str("servers"),
            Self::ShutdownSessions { server } => write!(f, "{server} shutdown sessions"),
            Self::Prepare { version } => write!(f, "prepare {version}"),
            Self::Start { backend, version } => write!(f, "start {backend} {version}"),
            Self::Stop { backend } => write!(f, "stop {backend}"),
            Self::Status { backend } => write!(f, "status {backend}"),
            Self::Probe { backend } => write!(f, "probe {backend}"),
            Self::AddServer { server, address } => write!(f, "add server {server} {address}"),
            Self::RemoveServer { server } => write!(f, "del server {server}"),
        }
    }
}

/// Every call made to the fakes that share it, in order.
pub struct CallLog {
    epoch: Instant,
    calls: Mutex<Vec<Call>>,
    changed: Notify,
}

impl CallLog {
    /// A log whose times count from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            calls: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// Time since the log was made.
    pub fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn record(&self, what: What) {
        let at = self.elapsed();
        lock(&self.calls).push(Call { at, what });
        self.changed.notify_waiters();
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// How many calls were made besides reading the servers' state, which the traffic sampler
    /// does every second of a rollout, even while it waits paused.
    pub fn asked(&self) -> usize {
        lock(&self.calls)
            .iter()
            .filter(|call| call.what != What::Servers)
            .count()
    }

    /// The calls that act, as text (`web1 drain`, `stop web1`…).
    pub fn actions(&self) -> Vec<String> {
        self.timed_actions()
            .into_iter()
            .map(|(_, what)| what)
            .collect()
    }

    /// The calls that act, as text, with their times.
    pub fn timed_actions(&self) -> Vec<(Duration, String)> {
        lock(&self.calls)
            .iter()
            .filter(|call| call.what.acts())
            .map(|call| (call.at, call.what.to_string()))
            .collect()
    }

    /// When the first call shown as `action` was made, if it was.
    pub fn first(&self, action: &str) -> Option<Duration> {
        self.nth(action, 1)
    }

    /// When the `n`th call (from 1) shown as `action` was made, if it was.
    pub fn nth(&self, action: &str, n: usize) -> Option<Duration> {
        lock(&self.calls)
            .iter()
            .filter(|call| call.what.to_string() == action)
            .nth(n.checked_sub(1)?)
            .map(|call| call.at)
    }

    /// Waits until a call shown as `action` has been made, and returns when it was.
    pub async fn wait_for(&self, action: &str) -> Duration {
        self.wait_for_nth(action, 1).await
    }

    /// Waits until the `n`th call shown as `action` has been made, and returns when it was.
    /// Nothing but a new call ends the wait, so a test on a paused clock bounds it with a
    /// timeout (which then fires at once when nothing else is left to happen).
    pub async fn wait_for_nth(&self, action: &str, n: usize) -> Duration {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(at) = self.nth(action, n) {
                return at;
            }
            changed.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("a fake's lock")
}

/// How a version behaves when prepared and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Starts, and answers its health path (and HAProxy's check) from `after` on.
    Answers { after: Duration },
    /// `prepare` fails with this reason.
    PrepareFails(String),
    /// `start` fails with this reason and nothing runs.
    StartFails(String),
    /// Starts, never answers, and exits `after` the start with `exit` ("exit status 3").
    Crashes { after: Duration, exit: String },
    /// Starts and accepts connections but never answers: each probe runs into its timeout.
    NeverAnswers,
    /// `start` never returns.
    StartHangs,
}

/// What a request to a backend's process gets at some moment.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Answers,
    /// Nothing listens: the connection is refused.
    Refused,
    /// Accepted, never answered.
    Silent,
}

/// How the fakes name one instance of a backend: as its HAProxy server is named (`s1` on its
/// address, `s1:surge` on its surge address), so the fake HAProxy checks the right process.
fn instance(backend: &BackendSpec) -> String {
    match backend.slot {
        crate::domain::Slot::Address => backend.name.to_string(),
        crate::domain::Slot::SurgeAddress => format!("{}:surge", backend.name),
    }
}

/// A [`Runtime`] of pretend processes, and the [`HealthProbe`] that asks them.
pub struct FakeRuntime {
    log: Arc<CallLog>,
    state: Mutex<Processes>,
}

#[derive(Default)]
struct Processes {
    backends: HashMap<String, Backend>,
    versions: HashMap<String, Behaviour>,
    next_pid: u32,
    /// Backends whose host Baton cannot reach over ssh (their processes run on, and still
    /// answer HTTP), and when the cut begins.
    cut: HashMap<String, Cut>,
}

/// When a backend's host stops answering Baton's runtime calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// From now on.
    Now,
    /// Once its next stop has been carried out (the start after it fails).
    AfterStop,
}

struct Backend {
    address: BackendAddr,
    /// Every run, oldest first; the last is the current one.
    runs: Vec<Run>,
}

struct Run {
    version: Version,
    behaviour: Behaviour,
    started: Instant,
    stopped: Option<Instant>,
    pid: u32,
}

impl Run {
    /// When the process exits by itself, and how.
    fn exit(&self) -> Option<(Instant, &str)> {
        match &self.behaviour {
            Behaviour::Crashes { after, exit } => Some((self.started + *after, exit)),
            Behaviour::Answers { .. }
            | Behaviour::PrepareFails(_)
            | Behaviour::StartFails(_)
            | Behaviour::NeverAnswers
            | Behaviour::StartHangs => None,
        }
    }

    fn runs_at(&self, at: Instant) -> bool {
        self.started <= at
            && self.stopped.is_none_or(|stopped| at < stopped)
            && self.exit().is_none_or(|(exit, _)| at < exit)
    }

    fn reply_at(&self, at: Instant) -> Reply {
        if !self.runs_at(at) {
            return Reply::Refused;
        }
        match &self.behaviour {
            Behaviour::Answers { after } if at < self.started + *after => Reply::Refused,
            // A version whose prepare fails still runs if started without it.
            Behaviour::Answers { .. } | Behaviour::PrepareFails(_) => Reply::Answers,
            Behaviour::NeverAnswers => Reply::Silent,
            Behaviour::Crashes { .. } | Behaviour::StartFails(_) | Behaviour::StartHangs => {
                Reply::Refused
            }
        }
    }
}

impl Backend {
    /// The run that was current at `at`.
    fn run_at(&self, at: Instant) -> Option<&Run> {
        self.runs.iter().rev().find(|run| run.started <= at)
    }
}

impl FakeRuntime {
    /// No backend runs, and every version answers as soon as it starts until
    /// [`FakeRuntime::script`] says otherwise.
    pub fn new(log: Arc<CallLog>) -> Self {
        Self {
            log,
            state: Mutex::new(Processes {
                next_pid: 1000,
                ..Processes::default()
            }),
        }
    }

    pub fn log(&self) -> &Arc<CallLog> {
        &self.log
    }

    /// Arranges `backend` running `version` and answering, as if started before the test.
    pub fn running(&self, backend: &BackendSpec, version: &Version) {
        let mut state = lock(&self.state);
        let pid = state.pid();
        state
            .backends
            .entry(instance(backend))
            .or_insert_with(|| Backend {
                address: backend.address,
                runs: Vec::new(),
            })
            .runs
            .push(Run {
                version: version.clone(),
                behaviour: Behaviour::Answers {
                    after: Duration::ZERO,
                },
                started: Instant::now(),
                stopped: None,
                pid,
            });
    }

    /// Cuts `backend`'s host off (`Some`) or brings it back (`None`): while cut, every runtime
    /// call on the backend fails as an unreachable host's would.
    pub fn cut(&self, backend: &str, cut: Option<Cut>) {
        let mut state = lock(&self.state);
        match cut {
            Some(cut) => state.cut.insert(backend.to_owned(), cut),
            None => state.cut.remove(backend),
        };
    }

    /// The error of a call on a backend whose host is cut off, if it is.
    fn unreachable(&self, backend: &BackendSpec) -> Option<String> {
        (lock(&self.state).cut.get(backend.name.as_str()) == Some(&Cut::Now)).then(|| {
            format!(
                "host of {} is unreachable: Connection timed out",
                backend.name
            )
        })
    }

    /// How `version` behaves when it is next prepared or started.
    pub fn script(&self, version: &str, behaviour: Behaviour) {
        lock(&self.state)
            .versions
            .insert(version.to_owned(), behaviour);
    }

    /// The version `backend` runs now, if it runs.
    pub fn version_of(&self, backend: &str) -> Option<String> {
        let now = Instant::now();
        let state = lock(&self.state);
        let run = state.backends.get(backend)?.runs.last()?;
        run.runs_at(now).then(|| run.version.to_string())
    }

    /// What a request to `backend` got at `at` (HAProxy's checks ask this).
    fn reply(&self, backend: &str, at: Instant) -> Reply {
        lock(&self.state)
            .backends
            .get(backend)
            .and_then(|backend| backend.run_at(at))
            .map_or(Reply::Refused, |run| run.reply_at(at))
    }
}

impl Processes {
    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn behaviour(&self, version: &str) -> Behaviour {
        self.versions
            .get(version)
            .cloned()
            .unwrap_or(Behaviour::Answers {
                after: Duration::ZERO,
            })
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        self.log.record(What::Prepare {
            version: version.to_string(),
        });
        match lock(&self.state).behaviour(version.as_str()) {
            Behaviour::PrepareFails(reason) => Err(RuntimeError::Prepare {
                version: version.to_string(),
                reason,
            }),
            Behaviour::Answers { .. }
            | Behaviour::StartFails(_)
            | Behaviour::Crashes { .. }
            | Behaviour::NeverAnswers
            | Behaviour::StartHangs => Ok(()),
        }
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        self.log.record(What::Start {
            backend: instance(backend),
            version: version.to_string(),
        });
        if let Some(reason) = self.unreachable(backend) {
            return Err(RuntimeError::Start {
                backend: backend.name.to_string(),
                reason,
            });
        }
        let now = Instant::now();
        {
            let mut state = lock(&self.state);
            let behaviour = state.behaviour(version.as_str());
            let pid = state.pid();
            let entry = state
                .backends
                .entry(instance(backend))
                .or_insert_with(|| Backend {
                    address: backend.address,
                    runs: Vec::new(),
                });
            let current = entry.runs.last_mut().filter(|run| run.runs_at(now));
            if current.as_ref().is_some_and(|run| &run.version == version) {
                return Ok(());
            }
            match behaviour {
                Behaviour::StartFails(reason) => {
                    return Err(RuntimeError::Start {
                        backend: backend.name.to_string(),
                        reason,
                    });
                }
                Behaviour::StartHangs => {}
                behaviour @ (Behaviour::Answers { .. }
                | Behaviour::PrepareFails(_)
                | Behaviour::Crashes { .. }
                | Behaviour::NeverAnswers) => {
                    // Another version still running is replaced.
                    if let Some(current) = current {
                        current.stopped = Some(now);
                    }
                    entry.runs.push(Run {
                        version: version.clone(),
                        behaviour,
                        started: now,
                        stopped: None,
                        pid,
                    });
                    return Ok(());
                }
            }
        }
        pending().await
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        self.log.record(What::Stop {
            backend: instance(backend),
        });
        if let Some(reason) = self.unreachable(backend) {
            return Err(RuntimeError::Stop {
                backend: backend.name.to_string(),
                reason,
            });
        }
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(run) = state
            .backends
            .get_mut(&instance(backend))
            .and_then(|backend| backend.runs.last_mut())
            && run.stopped.is_none()
        {
            run.stopped = Some(now);
        }
        if let Some(cut) = state.cut.get_mut(backend.name.as_str()) {
            *cut = Cut::Now;
        }
        Ok(())
    }

    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        self.log.record(What::Status {
            backend: instance(backend),
        });
        if let Some(reason) = self.unreachable(backend) {
            return Err(RuntimeError::Other(reason));
        }
        let now = Instant::now();
        let state = lock(&self.state);
        let Some(run) = state
            .backends
            .get(&instance(backend))
            .and_then(|backend| backend.runs.last())
        else {
            return Ok(BackendRun::Stopped { exit: None });
        };
        if run.runs_at(now) {
            return Ok(BackendRun::Running {
                version: run.version.clone(),
                pid: Some(run.pid),
            });
        }
        // An exit before the stop is what the runtime last saw of the process.
        let exit = run
            .exit()
            .filter(|(at, _)| run.stopped.is_none_or(|stopped| *at < stopped))
            .map(|(_, exit)| exit.to_owned());
        Ok(BackendRun::Stopped { exit })
    }

    /// A log made from the backend's runs, as a process runtime's would read: each start, and
    /// each end so far (a crash with its exit, or a stop). Not a call the log records.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        if let Some(reason) = self.unreachable(backend) {
            return Err(RuntimeError::Other(reason));
        }
        let now = Instant::now();
        let state = lock(&self.state);
        let Some(runs) = state
            .backends
            .get(backend.name.as_str())
            .map(|backend| &backend.runs)
        else {
            return Ok(None);
        };
        let mut log = Vec::new();
        for run in runs {
            log.push(format!(
                "[fake] starting version {} (pid {})",
                run.version, run.pid
            ));
            let exit = run
                .exit()
                .filter(|(at, _)| *at <= now && run.stopped.is_none_or(|stopped| *at < stopped));
            if let Some((_, exit)) = exit {
                log.push(format!("[fake] {} ended: {exit}", run.version));
            } else if run.stopped.is_some() {
                log.push(format!("[fake] {} stopped", run.version));
            }
        }
        let kept = log.split_off(log.len().saturating_sub(lines));
        Ok(Some(LogTail {
            source: format!("{}.log (fake)", backend.name),
            lines: kept,
        }))
    }
}

#[async_trait]
impl HealthProbe for FakeRuntime {
    async fn probe(
        &self,
        address: BackendAddr,
        _path: &str,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let now = Instant::now();
        let (name, reply) = {
            let state = lock(&self.state);
            match state
                .backends
                .iter()
                .find(|(_, backend)| backend.address == address)
            {
                Some((name, backend)) => (
                    name.clone(),
                    backend
                        .run_at(now)
                        .map_or(Reply::Refused, |run| run.reply_at(now)),
                ),
                None => (address.to_string(), Reply::Refused),
            }
        };
        self.log.record(What::Probe { backend: name });
        match reply {
            Reply::Answers => Ok(()),
            Reply::Refused => Err(ProbeFailure::Unanswered("connection refused".into())),
            Reply::Silent => {
                sleep(timeout).await;
                Err(ProbeFailure::TimedOut)
            }
        }
    }
}

/// HAProxy's check settings for every server of a [`FakeLb`] (`default-server inter … rise …
/// fall …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    pub inter: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for Checks {
    /// What the tests' real HAProxy uses.
    fn default() -> Self {
        Self {
            inter: Duration::from_millis(100),
            rise: 2,
            fall: 2,
        }
    }
}

/// What an HAProxy node of a [`FakeLb`] has been told to do wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers every command with an error, so each call fails at once with `Refused`.
    Refuses,
    /// Accepts commands and never answers: each attempt runs into the driver's
    /// `command_timeout`, is tried again after its backoff, and the call fails `Unreachable`
    /// after its `attempts`, as `HaproxyDriver` does. An attempt begun after the fault is
    /// cleared is answered.
    Silent,
    /// The call never returns (not even the driver's timeout ends it): for tests of shutdown.
    Hangs,
}

/// HAProxy with one backend, on one or more nodes; its servers are checked against a
/// [`FakeRuntime`]'s processes.
pub struct FakeLb {
    log: Arc<CallLog>,
    runtime: Arc<FakeRuntime>,
    backend: String,
    options: HaproxyOptions,
    nodes: Mutex<Vec<Node>>,
    /// The servers haproxy.cfg declares, with their checks: what a reload starts from.
    configured: Vec<(String, Checks)>,
}

struct Node {
    name: String,
    fault: Option<Fault>,
    servers: Vec<Server>,
}

struct Server {
    name: String,
    admin: AdminState,
    /// `None`: the server has no health check (`no check`).
    checks: Option<Checks>,
    /// HAProxy's check health, from 0 to `rise + fall - 1`; UP from `rise` on.
    health: u32,
    /// The last check's result, kept through maint as HAProxy does.
    last_check: Option<&'static str>,
    next_check: Option<Instant>,
    /// Each open session's end; `None`: open until cut.
    sessions: Vec<Option<Instant>>,
    backup: bool,
    /// Whether HAProxy's checks reach the process at all.
    reachable: bool,
    /// What it served (as [`FakeLb::serve`] says) and how often its checks took it DOWN.
    counters: ServerCounters,
}

impl FakeLb {
    /// `backend` with `servers` (named like the service's backends) on each of `nodes`, every
    /// server ready, checked with `checks` and UP (with a passing last check: arrange the
    /// runtime's processes first, or the next check turns them DOWN). The driver's timeouts
    /// and retries are its defaults until [`FakeLb::with_options`].
    pub fn new(
        runtime: Arc<FakeRuntime>,
        backend: &str,
        nodes: &[&str],
        servers: &[&str],
        checks: Checks,
    ) -> Self {
        let configured: Vec<(String, Checks)> = servers
            .iter()
            .map(|server| ((*server).to_owned(), checks))
            .collect();
        let nodes = nodes
            .iter()
            .map(|node| Node {
                name: (*node).to_owned(),
                fault: None,
                servers: configured_servers(&configured),
            })
            .collect();
        Self {
            log: runtime.log().clone(),
            runtime,
            backend: backend.to_owned(),
            options: HaproxyOptions::default(),
            nodes: Mutex::new(nodes),
            configured,
        }
    }

    /// Reloads HAProxy on every node: the servers are haproxy.cfg's again, each ready and
    /// assumed UP until its checks say otherwise; servers added at runtime are forgotten, and
    /// every counter starts again at 0.
    pub fn reload(&self) {
        for node in lock(&self.nodes).iter_mut() {
            node.servers = configured_servers(&self.configured);
        }
    }

    /// The servers of `node` by name, in order.
    pub fn server_names(&self, node: &str) -> Vec<String> {
        lock(&self.nodes)
            .iter()
            .filter(|n| n.name == node)
            .flat_map(|n| n.servers.iter().map(|s| s.name.clone()))
            .collect()
    }

    /// Where its calls are recorded (the runtime's log, shared).
    pub fn log(&self) -> &Arc<CallLog> {
        &self.log
    }

    /// The timeouts and retries a silent node is failed with.
    pub fn with_options(mut self, options: HaproxyOptions) -> Self {
        self.options = options;
        self
    }

    fn each_server(&self, server: &str, change: impl Fn(&mut Server)) {
        for node in lock(&self.nodes).iter_mut() {
            for found in node.servers.iter_mut().filter(|s| s.name == server) {
                change(found);
            }
        }
    }

    /// Makes `server` a `backup` server on every node.
    pub fn set_backup(&self, server: &str) {
        self.each_server(server, |s| s.backup = true);
    }

    /// Gives `server` another `fall` on every node (HAProxy reports each server's own).
    pub fn set_fall(&self, server: &str, fall: u32) {
        self.each_server(server, |s| {
            if let Some(checks) = &mut s.checks {
                checks.fall = fall;
                s.health = s.health.min(checks.rise + fall - 1);
            }
        });
    }

    /// Whether HAProxy's checks of `server` reach its process (false: a firewall between
    /// HAProxy and the backend, say, while Baton's own probe still gets through).
    pub fn set_reachable(&self, server: &str, reachable: bool) {
        self.each_server(server, |s| s.reachable = reachable);
    }

    /// Tells `node` to misbehave from now on, or (`None`) to behave again.
    pub fn set_fault(&self, node: &str, fault: Option<Fault>) {
        for found in lock(&self.nodes).iter_mut().filter(|n| n.name == node) {
            found.fault = fault;
        }
    }

    /// Counts `requests` sent to `server` through `node`, `errors_5xx` of them answered with
    /// a 5xx (the fake carries no traffic: a test says what HAProxy would have counted).
    pub fn serve(&self, node: &str, server: &str, requests: u64, errors_5xx: u64) {
        for found in lock(&self.nodes).iter_mut().filter(|n| n.name == node) {
            for s in found.servers.iter_mut().filter(|s| s.name == server) {
                s.counters.requests += requests;
                s.counters.errors_5xx += errors_5xx;
            }
        }
    }

    /// Opens a session on `server` through `node` that ends by itself after `lasting` (`None`:
    /// only when cut).
    pub fn open_session(&self, node: &str, server: &str, lasting: Option<Duration>) {
        let end = lasting.map(|lasting| Instant::now() + lasting);
        for found in lock(&self.nodes).iter_mut().filter(|n| n.name == node) {
            for s in found.servers.iter_mut().filter(|s| s.name == server) {
                s.sessions.push(end);
            }
        }
    }

    /// What `node` reports for `server` now, without recording a call: for a test's asserts.
    pub fn status(&self, node: &str, server: &str) -> ServerStatus {
        let now = Instant::now();
        let mut nodes = lock(&self.nodes);
        let node = nodes
            .iter_mut()
            .find(|n| n.name == node)
            .expect("a node of the fake");
        let name = node.name.clone();
        let server = node
            .servers
            .iter_mut()
            .find(|s| s.name == server)
            .expect("a server of the fake");
        server.run_checks(now, &self.runtime);
        server.status(&name, now)
    }

    /// Runs `command` on every node at once, each as the driver would (with its timeouts and
    /// retries when the node is silent); the results in node order, or the first node's error.
    async fn on_every_node<T>(
        &self,
        command: &str,
        op: impl Fn(&mut Node, Instant) -> Result<T, LbError>,
    ) -> Result<Vec<T>, LbError> {
        let count = lock(&self.nodes).len();
        let calls = (0..count).map(|index| self.on_node(index, command, &op));
        join_all(calls).await.into_iter().collect()
    }

    async fn on_node<T>(
        &self,
        index: usize,
        command: &str,
        op: &impl Fn(&mut Node, Instant) -> Result<T, LbError>,
    ) -> Result<T, LbError> {
        let attempts = self.options.attempts.max(1);
        let mut delay = self.options.backoff;
        let mut attempt = 1;
        loop {
            let (name, fault) = {
                let mut nodes = lock(&self.nodes);
                let node = &mut nodes[index];
                if node.fault.is_none() {
                    let now = Instant::now();
                    for server in &mut node.servers {
                        server.run_checks(now, &self.runtime);
                    }
                    return op(node, now);
                }
                (node.name.clone(), node.fault)
            };
            match fault {
                None => unreachable!("handled above"),
                Some(Fault::Refuses) => {
                    return Err(LbError::Refused {
                        node: name,
                        command: command.to_owned(),
                        reply: "Permission denied.".into(),
                    });
                }
                Some(Fault::Hangs) => return pending().await,
                Some(Fault::Silent) => {
                    sleep(self.options.command_timeout).await;
                    if attempt >= attempts {
                        return Err(LbError::Unreachable {
                            node: name,
                            attempts,
                            reason: format!("no answer within {:?}", self.options.command_timeout),
                        });
                    }
                    sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    fn no_such(&self, node: &Node, backend: &str, server: &str) -> LbError {
        LbError::NoSuchServer {
            node: node.name.clone(),
            backend: backend.to_owned(),
            server: server.to_owned(),
        }
    }
}

/// haproxy.cfg's servers as HAProxy starts them: ready, UP with a passing last check (the next
/// check, `inter` from now, tells otherwise if nothing answers).
fn configured_servers(configured: &[(String, Checks)]) -> Vec<Server> {
    let now = Instant::now();
    configured
        .iter()
        .map(|(name, checks)| Server {
            name: name.clone(),
            admin: AdminState::Ready,
            checks: Some(*checks),
            health: checks.rise + checks.fall - 1,
            last_check: Some("L7OK"),
            next_check: Some(now + checks.inter),
            sessions: Vec::new(),
            backup: false,
            reachable: true,
            counters: ServerCounters::default(),
        })
        .collect()
}

impl Server {
    /// Runs the checks HAProxy would have run by `now`.
    fn run_checks(&mut self, now: Instant, runtime: &FakeRuntime) {
        let Some(checks) = self.checks else { return };
        while let Some(at) = self.next_check
            && at <= now
        {
            // HAProxy's `check_status` for each outcome of an HTTP check.
            let result = match (self.reachable, runtime.reply(&self.name, at)) {
                (false, _) => "L4TOUT",
                (true, Reply::Answers) => "L7OK",
                (true, Reply::Refused) => "L4CON",
                (true, Reply::Silent) => "L7TOUT",
            };
            self.last_check = Some(result);
            let max = checks.rise + checks.fall - 1;
            let was_up = self.health >= checks.rise;
            self.health = if result == "L7OK" {
                // As HAProxy: one step up, and full health once UP.
                match (self.health + 1).min(max) {
                    health if health >= checks.rise => max,
                    health => health,
                }
            } else if self.health > checks.rise {
                // As HAProxy: one step down while above `rise`, else DOWN at once.
                self.health - 1
            } else {
                0
            };
            if was_up && self.health < checks.rise {
                self.counters.check_downs += 1;
            }
            self.next_check = Some(at + checks.inter);
        }
    }

    fn set_admin(&mut self, state: AdminState, now: Instant) {
        if state == self.admin {
            return;
        }
        match (self.admin, state, self.checks) {
            // Leaving maint: health starts at `rise` ("UP 1/2") with the old result shown,
            // until the first check.
            (AdminState::Maint, _, Some(checks)) => {
                self.health = checks.rise;
                self.next_check = Some(now + checks.inter);
            }
            (_, AdminState::Maint, _) => self.next_check = None,
            // Between ready and drain only the admin state changes.
            _ => {}
        }
        self.admin = state;
    }

    fn open_sessions(&self, now: Instant) -> u64 {
        self.sessions
            .iter()
            .filter(|end| end.is_none_or(|end| now < end))
            .count() as u64
    }

    fn status(&self, node: &str, now: Instant) -> ServerStatus {
        let (status, check) = match (self.admin, self.checks) {
            (AdminState::Maint, _) => (
                ServerState::Maint {
                    cause: MaintCause::Admin,
                },
                None,
            ),
            (AdminState::Ready, None) => (ServerState::NoCheck, None),
            (AdminState::Drain, None) => (ServerState::Drain { changing: None }, None),
            (admin @ (AdminState::Ready | AdminState::Drain), Some(checks)) => {
                let max = checks.rise + checks.fall - 1;
                let status = if self.health < checks.rise {
                    ServerState::Down {
                        changing: (self.health > 0).then_some(Health {
                            current: self.health,
                            of: checks.rise,
                        }),
                    }
                } else {
                    let changing = (self.health < max).then_some(Health {
                        current: self.health - checks.rise + 1,
                        of: checks.fall,
                    });
                    if admin == AdminState::Ready {
                        ServerState::Up { changing }
                    } else {
                        ServerState::Drain { changing }
                    }
                };
                let check = self.last_check.map(|code| {
                    if code.ends_with("OK") {
                        CheckResult::Passed(code.to_owned())
                    } else {
                        CheckResult::Failed(code.to_owned())
                    }
                });
                (status, check)
            }
        };
        ServerStatus {
            node: node.to_owned(),
            server: self.name.clone(),
            status,
            check,
            sessions: self.open_sessions(now),
            backup: self.backup,
            fall: self.checks.map(|checks| checks.fall),
            counters: self.counters,
        }
    }
}

#[async_trait]
impl LoadBalancer for FakeLb {
    async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), LbError> {
        let what = What::SetState {
            server: server.to_owned(),
            state,
        };
        let command = what.to_string();
        self.log.record(what);
        self.on_every_node(&command, |node, now| {
            if backend != self.backend {
                return Err(self.no_such(node, backend, server));
            }
            let Some(found) = node.servers.iter_mut().find(|s| s.name == server) else {
                return Err(self.no_such(node, backend, server));
            };
            found.set_admin(state, now);
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn servers(&self, backend: &str) -> Result<Vec<ServerStatus>, LbError> {
        self.log.record(What::Servers);
        let per_node = self
            .on_every_node("servers", |node, now| {
                if backend != self.backend {
                    return Err(self.no_such(node, backend, "*"));
                }
                Ok(node
                    .servers
                    .iter()
                    .map(|server| server.status(&node.name, now))
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(per_node.into_iter().flatten().collect())
    }

    async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<u64, LbError> {
        let what = What::ShutdownSessions {
            server: server.to_owned(),
        };
        let command = what.to_string();
        self.log.record(what);
        let cut = self
            .on_every_node(&command, |node, now| {
                if backend != self.backend {
                    return Err(self.no_such(node, backend, server));
                }
                let Some(found) = node.servers.iter_mut().find(|s| s.name == server) else {
                    return Err(self.no_such(node, backend, server));
                };
                let open = found.open_sessions(now);
                found.sessions.clear();
                Ok(open)
            })
            .await?;
        Ok(cut.into_iter().sum())
    }

    /// Adds the server in maint with `like`'s checks, as HAProxy's `add server` does (the
    /// `inter` given replaces `like`'s). Already there is success.
    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: BackendAddr,
        like: &str,
        inter: Duration,
    ) -> Result<(), LbError> {
        let what = What::AddServer {
            server: server.to_owned(),
            address,
        };
        let command = what.to_string();
        self.log.record(what);
        self.on_every_node(&command, |node, _| {
            if backend != self.backend {
                return Err(self.no_such(node, backend, server));
            }
            if node.servers.iter().any(|s| s.name == server) {
                return Ok(());
            }
            let Some(like) = node.servers.iter().find(|s| s.name == like) else {
                return Err(self.no_such(node, backend, like));
            };
            let added = Server {
                name: server.to_owned(),
                admin: AdminState::Maint,
                checks: like.checks.map(|checks| Checks { inter, ..checks }),
                health: 0,
                last_check: None,
                next_check: None,
                sessions: Vec::new(),
                backup: like.backup,
                counters: ServerCounters::default(),
                reachable: true,
            };
            node.servers.push(added);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Removes the server; one with open sessions is refused, as HAProxy refuses it.
    async fn remove_server(&self, backend: &str, server: &str) -> Result<(), LbError> {
        let what = What::RemoveServer {
            server: server.to_owned(),
        };
        let command = what.to_string();
        self.log.record(what);
        self.on_every_node(&command, |node, now| {
            if backend != self.backend {
                return Err(self.no_such(node, backend, server));
            }
            let Some(index) = node.servers.iter().position(|s| s.name == server) else {
                return Ok(());
            };
            node.servers[index].set_admin(AdminState::Maint, now);
            if node.servers[index].open_sessions(now) > 0 {
                return Err(LbError::Refused {
                    node: node.name.clone(),
                    command: command.clone(),
                    reply: "Server still has connections attached to it, cannot remove it.".into(),
                });
            }
            node.servers.remove(index);
            Ok(())
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BackendName, ServiceName};
    use crate::drivers::haproxy::HaproxyDriver;
    use crate::settings::RuntimeApiAddr;

    fn spec(name: &str, port: u16) -> BackendSpec {
        BackendSpec {
            service: ServiceName::parse("web").unwrap(),
            name: BackendName::parse(name).unwrap(),
            address: BackendAddr::parse(&format!("127.0.0.1:{port}")).unwrap(),
            slot: crate::domain::Slot::Address,
        }
    }

    fn v(version: &str) -> Version {
        Version::parse(version).unwrap()
    }

    /// s1 and s2 running v1 behind one node, checked every 100 ms, rise 2, fall 2.
    fn haproxy() -> (Arc<FakeRuntime>, FakeLb) {
        let runtime = Arc::new(FakeRuntime::new(CallLog::new()));
        runtime.running(&spec("s1", 18001), &v("v1"));
        runtime.running(&spec("s2", 18002), &v("v1"));
        let lb = FakeLb::new(
            runtime.clone(),
            "app",
            &["n1"],
            &["s1", "s2"],
            Checks::default(),
        );
        (runtime, lb)
    }

    /// What the fake shows, in HAProxy's words (the model's `Display`), to compare with the
    /// table measured on HAProxy.
    fn shown(lb: &FakeLb, server: &str) -> (String, Option<String>) {
        let status = lb.status("n1", server);
        (
            status.status.to_string(),
            status.check.map(|check| check.to_string()),
        )
    }

    fn says(status: &str, check: Option<&str>) -> (String, Option<String>) {
        (status.to_owned(), check.map(str::to_owned))
    }

    /// The table at the top of `haproxy.rs`, measured on HAProxy 2.6, step by step as its test
    /// `maint_drain_ready_sequence_and_the_503_trap` walks it.
    #[tokio::test(start_paused = true)]
    async fn the_fake_shows_what_haproxy_was_measured_to_show() {
        let (runtime, lb) = haproxy();
        let inter = Checks::default().inter;
        assert_eq!(shown(&lb, "s1"), says("UP", Some("L7OK")));

        lb.set_state("app", "s1", AdminState::Drain).await.unwrap();
        assert_eq!(shown(&lb, "s1"), says("DRAIN", Some("L7OK")));

        lb.set_state("app", "s1", AdminState::Maint).await.unwrap();
        assert_eq!(shown(&lb, "s1"), says("MAINT", None));

        // Out of maint: the stale result, until the first check `inter` later.
        lb.set_state("app", "s1", AdminState::Drain).await.unwrap();
        assert_eq!(shown(&lb, "s1"), says("DRAIN 1/2", Some("L7OK")));
        sleep(inter).await;
        assert_eq!(shown(&lb, "s1"), says("DRAIN", Some("L7OK")));

        // Drain to ready with full health: UP at once.
        lb.set_state("app", "s1", AdminState::Ready).await.unwrap();
        assert_eq!(shown(&lb, "s1"), says("UP", Some("L7OK")));

        // The 503 trap: maint, the process stops, ready: "UP 1/2" with the old L7OK though
        // nothing listens, until the first check turns it DOWN.
        lb.set_state("app", "s1", AdminState::Maint).await.unwrap();
        runtime.stop(&spec("s1", 18001)).await.unwrap();
        lb.set_state("app", "s1", AdminState::Ready).await.unwrap();
        let trap = lb.status("n1", "s1");
        assert_eq!(shown(&lb, "s1"), says("UP 1/2", Some("L7OK")));
        assert!(!trap.is_up());
        sleep(inter).await;
        assert_eq!(shown(&lb, "s1"), says("DOWN", Some("L4CON")));

        // Drain with failing checks is DOWN, not DRAIN.
        lb.set_state("app", "s1", AdminState::Drain).await.unwrap();
        assert_eq!(shown(&lb, "s1"), says("DOWN", Some("L4CON")));

        // Back up: one passing check is not enough from DOWN (rise 2).
        runtime.start(&spec("s1", 18001), &v("v2")).await.unwrap();
        sleep(inter).await;
        assert_eq!(shown(&lb, "s1"), says("DOWN 1/2", Some("L7OK")));
        sleep(inter).await;
        assert_eq!(shown(&lb, "s1"), says("DRAIN", Some("L7OK")));

        // A failing check takes an UP server only one step down with fall 2 (stopped between
        // two of its checks).
        sleep(inter / 2).await;
        runtime.stop(&spec("s2", 18002)).await.unwrap();
        sleep(inter).await;
        assert_eq!(shown(&lb, "s2"), says("UP 1/2", Some("L4CON")));
        sleep(inter).await;
        assert_eq!(shown(&lb, "s2"), says("DOWN", Some("L4CON")));
    }

    /// A silent fake node fails exactly when `HaproxyDriver` does against a socket that
    /// accepts and never answers, so executor tests on the fake see the driver's timing.
    #[tokio::test(start_paused = true)]
    async fn a_silent_node_fails_like_the_driver_after_its_attempts_and_backoff() {
        let options = HaproxyOptions {
            command_timeout: Duration::from_millis(300),
            attempts: 3,
            backoff: Duration::from_millis(50),
        };
        // 3 × 300 ms, and 50 + 100 ms of backoff between them.
        let expected = Duration::from_millis(1050);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let driver = HaproxyDriver::new(vec![RuntimeApiAddr::Unix(path.clone())], options);
        let started = Instant::now();
        let real = driver.servers("app").await;
        let real_took = started.elapsed();
        held.abort();

        let (_, lb) = haproxy();
        let lb = lb.with_options(options);
        lb.set_fault("n1", Some(Fault::Silent));
        let started = Instant::now();
        let fake = lb.servers("app").await;
        let fake_took = started.elapsed();

        assert_eq!((real_took, fake_took), (expected, expected));
        match (real, fake) {
            (
                Err(LbError::Unreachable {
                    attempts: real_attempts,
                    reason: real_reason,
                    ..
                }),
                Err(LbError::Unreachable {
                    node,
                    attempts,
                    reason,
                }),
            ) => {
                assert_eq!(
                    (real_attempts, real_reason.as_str()),
                    (3, "no answer within 300ms")
                );
                assert_eq!((node.as_str(), attempts, reason), ("n1", 3, real_reason));
            }
            other => panic!("expected both Unreachable, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_told_to_refuse_fails_at_once_and_the_others_still_change() {
        let runtime = Arc::new(FakeRuntime::new(CallLog::new()));
        runtime.running(&spec("s1", 18001), &v("v1"));
        let lb = FakeLb::new(runtime, "app", &["n1", "n2"], &["s1"], Checks::default());
        lb.set_fault("n2", Some(Fault::Refuses));
        match lb.set_state("app", "s1", AdminState::Drain).await {
            Err(LbError::Refused { node, .. }) => assert_eq!(node, "n2"),
            other => panic!("expected Refused by n2, got {other:?}"),
        }
        assert_eq!(
            lb.status("n1", "s1").status,
            ServerState::Drain { changing: None }
        );
        assert_eq!(
            lb.status("n2", "s1").status,
            ServerState::Up { changing: None }
        );
        assert!(matches!(
            lb.servers("nope").await,
            Err(LbError::NoSuchServer { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_end_by_themselves_or_are_cut_and_counted() {
        let (_, lb) = haproxy();
        lb.open_session("n1", "s1", Some(Duration::from_secs(2)));
        lb.open_session("n1", "s1", None);
        assert_eq!(lb.status("n1", "s1").sessions, 2);
        lb.set_state("app", "s1", AdminState::Maint).await.unwrap();
        sleep(Duration::from_secs(2)).await;
        assert_eq!(lb.status("n1", "s1").sessions, 1, "maint does not cut them");
        assert_eq!(lb.shutdown_sessions("app", "s1").await.unwrap(), 1);
        assert_eq!(lb.status("n1", "s1").sessions, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_runtime_records_calls_and_runs_each_version_as_scripted() {
        let runtime = FakeRuntime::new(CallLog::new());
        let s1 = spec("s1", 18001);
        runtime.script("bad", Behaviour::StartFails("no such file".into()));
        runtime.script("broken", Behaviour::PrepareFails("fetch failed".into()));
        runtime.script(
            "crashy",
            Behaviour::Crashes {
                after: Duration::from_secs(1),
                exit: "exit status 3".into(),
            },
        );
        runtime.script(
            "slow",
            Behaviour::Answers {
                after: Duration::from_secs(1),
            },
        );

        assert!(runtime.prepare(&v("broken")).await.is_err());
        assert!(runtime.start(&s1, &v("bad")).await.is_err());
        assert_eq!(
            runtime.status(&s1).await.unwrap(),
            BackendRun::Stopped { exit: None }
        );

        runtime.start(&s1, &v("slow")).await.unwrap();
        assert_eq!(
            runtime
                .probe(s1.address, "/alive", Duration::from_secs(1))
                .await,
            Err(ProbeFailure::Unanswered("connection refused".into()))
        );
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runtime
                .probe(s1.address, "/alive", Duration::from_secs(1))
                .await,
            Ok(())
        );
        runtime.start(&s1, &v("slow")).await.unwrap();
        assert_eq!(
            runtime
                .probe(s1.address, "/alive", Duration::from_secs(1))
                .await,
            Ok(()),
            "starting it again is a no-op"
        );

        runtime.stop(&s1).await.unwrap();
        runtime.start(&s1, &v("crashy")).await.unwrap();
        assert!(matches!(
            runtime.status(&s1).await.unwrap(),
            BackendRun::Running { .. }
        ));
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runtime.status(&s1).await.unwrap(),
            BackendRun::Stopped {
                exit: Some("exit status 3".into())
            }
        );
        assert_eq!(
            runtime.log().actions(),
            [
                "prepare broken",
                "start s1 bad",
                "start s1 slow",
                "start s1 slow",
                "stop s1",
                "start s1 crashy"
            ]
        );
    }
}
