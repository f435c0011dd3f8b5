//! The process runtime: Baton starts backends as detached processes and re-adopts them.
//!
//! Each backend's process is started in its own session (and so its own process group, whose id
//! is the process's PID), with stdin closed and stdout and stderr appended to
//! `<state_dir>/<backend>.log` (`<backend>@surge.log` for the instance a surge rollout runs on
//! the backend's `surge_address`), so restarting or killing Baton never stops a backend. What runs
//! where is recorded in `<state_dir>/<backend>.json` as `{pid, start_time, boot_id, version}`.
//! The directory is created 0700 and the log and record 0600 (see `files.rs`).
//!
//! A recorded process is the backend's only while the record was written during this boot of the
//! machine (`/proc/sys/kernel/random/boot_id`) and `/proc/<pid>/stat` exists, is not a zombie,
//! and shows the recorded start time. A record without a boot id (from a Baton before them) is
//! trusted only if the process also carries the `BATON_*` variables of the recorded run, so an
//! upgrade adopts running backends instead of starting second copies on their ports. PIDs are handed out again after a reboot, often the same ones in the
//! same order, so a start time alone can match a stranger; with both checks Baton never signals
//! a process that merely inherited a stale PID.
//!
//! `stop` signals the whole process group, so what the backend started goes down with it. When
//! the backend itself has already exited but left processes in its group (a worker it forked, a
//! shell's background job), those are still stopped: the group outlives its leader, and Linux
//! does not hand the leader's PID to a new process while the group exists. Before signalling such
//! a leaderless group Baton checks that its members carry this backend's `BATON_SERVICE`,
//! `BATON_BACKEND` and `BATON_VERSION` in their environment, which a group some other program
//! made after the PID came free would not.
//!
//! A runtime that spawned a process also keeps its exit status, so `status` can say *how* a
//! backend that crashed right away ended. After a Baton restart the processes are re-adopted
//! from their records: they show as running and can be stopped, but their exit status is not
//! known (Baton is no longer their parent).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::files;
use super::{BackendRun, BackendSpec, LogTail, Runtime, RuntimeError};
use crate::domain::{Slot, Version};
use crate::settings::StopSignal;

/// How often `stop` looks whether the process is gone. A child of this runtime wakes `stop` as
/// soon as it is reaped; this bounds the wait for an adopted process (one a previous Baton
/// started), which only `/proc` can tell about. Reading one `/proc` file this often is cheap,
/// and every millisecond here is a millisecond of every backend's rollout.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long `stop` waits for the process to vanish after SIGKILL before it gives up.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long `status` and `stop` wait for the exit status of a child of ours that has already
/// exited (the reaper task collects it within milliseconds).
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);
/// Where Linux says which boot this is: a random UUID drawn at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// How one service's backends are run by a [`ProcessRuntime`].
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The program and its arguments, executed directly (never through a shell). Must not be
    /// empty. A bare program name is looked up on `PATH`.
    pub command: Vec<String>,
    /// The backends' whole environment: nothing of Baton's own is inherited beyond it. Then
    /// `BATON_VERSION`, `BATON_PORT`, `BATON_BACKEND` and `BATON_SERVICE` are set (they win
    /// over entries of the same name here).
    pub env: BTreeMap<String, String>,
    /// The backends' working directory; Baton's own when `None`.
    pub working_dir: Option<PathBuf>,
    /// The signal `stop` sends first.
    pub stop_signal: StopSignal,
    /// How long `stop` waits after `stop_signal` before it sends SIGKILL.
    pub stop_timeout: Duration,
    /// Where this service's records (`<backend>.json`) and logs (`<backend>.log`) live. Created
    /// when missing. One directory per service: backend names are only unique within a service.
    pub state_dir: PathBuf,
}

/// A [`Runtime`] that starts each backend as a detached local process and re-adopts the
/// processes a previous Baton started (see the module documentation).
///
/// Invariants: a record exists only for a process that was spawned successfully; a process or
/// group is signalled only after the record's boot id and the PID's start time (or, for a group
/// whose leader is gone, its members' environment) were checked; `start` and `stop` of one
/// backend are serialized, so two concurrent calls never race on the same record. Different
/// backends' calls run side by side: a batch of 50 stops in about the time of one.
/// Two runtimes must not share a `state_dir` at the same time (one after the other is the point).
pub struct ProcessRuntime {
    config: ProcessConfig,
    /// Serializes `start` and `stop` of each backend, by backend name.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The children this runtime spawned, by backend name: their PID and exit status (`None`
    /// while running). Filled by one reaper task per child, which also keeps zombies away.
    children: Arc<Mutex<HashMap<String, Child>>>,
}

#[derive(Clone)]
struct Child {
    pid: u32,
    exit: watch::Receiver<Option<String>>,
}

/// One boot of the machine, as `/proc/sys/kernel/random/boot_id` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct BootId(String);

impl BootId {
    /// This boot's id; `None` when `/proc` does not say (then Baton cannot start backends, and
    /// adopts none).
    fn current() -> Option<&'static BootId> {
        static CURRENT: OnceLock<Option<BootId>> = OnceLock::new();
        CURRENT
            .get_or_init(|| {
                let text = fs::read_to_string(BOOT_ID_PATH).ok()?;
                let id = text.trim();
                (!id.is_empty()).then(|| BootId(id.to_owned()))
            })
            .as_ref()
    }
}

/// The record in `<state_dir>/<backend>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The backend's PID, which is also its process group's id.
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
    start_time: u64,
    /// The boot `pid` and `start_time` belong to; missing in records of an older Baton.
    #[serde(default)]
    boot_id: Option<BootId>,
    version: Version,
}

/// What is left of the process a record names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Liveness {
    /// The recorded process runs.
    Running,
    /// The recorded process has exited, but these processes it left in its group still run.
    Leftovers(Vec<u32>),
    /// Nothing of the backend runs, or Baton cannot tell that it does; why.
    Gone(Gone),
}

/// Why a record names no process of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    NoBootId,
    OtherBoot,
    BootUnknown,
    PidReused,
    Exited,
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoBootId => {
                "the record has no boot id (an older Baton wrote it) and its PID is not a \
                 process Baton started for this backend"
            }
            Self::OtherBoot => "the record was written before the machine last booted",
            Self::BootUnknown => "this machine's boot id cannot be read from /proc",
            Self::PidReused => "its PID now belongs to a process that started at another time",
            Self::Exited => "the process has exited and left nothing in its process group",
        })
    }
}

/// What names one instance of a backend in records, logs and locks: the backend's name on its
/// `address`, `<name>@surge` on its `surge_address` (a surge runs both at once). Backend names
/// are `[A-Za-z0-9][A-Za-z0-9._-]*` (domain.rs), so both are safe file names and never collide.
fn instance_key(backend: &BackendSpec) -> String {
    match backend.slot {
        Slot::Address => backend.name.as_str().to_owned(),
        Slot::SurgeAddress => format!("{}@surge", backend.name.as_str()),
    }
}

impl ProcessRuntime {
    /// A runtime for one service. Does no IO: the state directory is created by the first
    /// `start`, and records left by an earlier Baton are read when a backend is asked about.
    pub fn new(config: ProcessConfig) -> Self {
        Self {
            config,
            locks: Mutex::new(HashMap::new()),
            children: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn record_path(&self, backend: &BackendSpec) -> PathBuf {
        self.config
            .state_dir
            .join(format!("{}.json", instance_key(backend)))
    }

    fn log_path(&self, backend: &BackendSpec) -> PathBuf {
        self.config
            .state_dir
            .join(format!("{}.log", instance_key(backend)))
    }

    /// Waits for the backend's turn to `start` or `stop`. Cancellation-safe.
    async fn turn(&self, backend: &BackendSpec) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = lock(&self.locks)
            .entry(instance_key(backend))
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn read_record(&self, backend: &BackendSpec) -> Result<Option<Record>, RuntimeError> {
        read_record(&self.record_path(backend))
    }

    fn child(&self, backend: &BackendSpec) -> Option<Child> {
        lock(&self.children).get(&instance_key(backend)).cloned()
    }

    /// The exit status of `pid` if it is a child of this runtime that has exited; waits briefly
    /// for the reaper task to collect it.
    async fn exit_of(&self, backend: &BackendSpec, pid: u32) -> Option<String> {
        let mut child = self.child(backend).filter(|child| child.pid == pid)?;
        let waited = tokio::time::timeout(EXIT_STATUS_WAIT, child.exit.wait_for(Option::is_some));
        match waited.await {
            Ok(Ok(exit)) => exit.clone(),
            _ => None,
        }
    }

    /// Sends the stop signal to the record's process group, waits up to the stop timeout for
    /// the process and its group to be gone, then sends SIGKILL. The caller has checked that the
    /// record is the backend's ([`Liveness::Running`] or [`Liveness::Leftovers`]).
    async fn terminate(&self, backend: &BackendSpec, record: &Record) -> Result<(), String> {
        let signal = to_signal(self.config.stop_signal);
        send(record, signal).map_err(|error| format!("cannot send {signal}: {error}"))?;
        let child = self.child(backend).filter(|child| child.pid == record.pid);
        if !wait_gone(record, child.clone(), self.config.stop_timeout).await {
            tracing::warn!(
                backend = %backend.name,
                pid = record.pid,
                timeout = ?self.config.stop_timeout,
                "backend process group ignored {signal}; sending SIGKILL"
            );
            send(record, Signal::SIGKILL)
                .map_err(|error| format!("cannot send SIGKILL: {error}"))?;
            if !wait_gone(record, child, KILL_GRACE).await {
                return Err(format!(
                    "process group {} is still there {KILL_GRACE:?} after SIGKILL",
                    record.pid
                ));
            }
        }
        Ok(())
    }

    /// Spawns the process and writes its record. Has no await point: a cancelled `start` either
    /// did not spawn, or spawned and recorded.
    fn spawn(&self, backend: &BackendSpec, version: &Version) -> Result<Record, RuntimeError> {
        let start_error = |reason: String| RuntimeError::Start {
            backend: backend.name.to_string(),
            reason,
        };
        let config = &self.config;
        let Some((program, args)) = config.command.split_first() else {
            return Err(start_error("the runtime's command is empty".into()));
        };
        let Some(boot_id) = BootId::current() else {
            return Err(start_error(format!(
                "cannot read {BOOT_ID_PATH}, which Baton needs to recognise its processes after \
                 a reboot"
            )));
        };
        if let Some(dir) = &config.working_dir
            && !dir.is_dir()
        {
            return Err(start_error(format!(
                "working directory {} does not exist or is not a directory",
                dir.display()
            )));
        }
        files::create_private_dir(&config.state_dir).map_err(|error| {
            start_error(format!(
                "cannot create state directory {}: {error}",
                config.state_dir.display()
            ))
        })?;
        let log_path = self.log_path(backend);
        let mut log = files::open_log(&log_path).map_err(|error| {
            start_error(format!("cannot open log {}: {error}", log_path.display()))
        })?;
        let stderr = log.try_clone().map_err(|error| {
            start_error(format!("cannot open log {}: {error}", log_path.display()))
        })?;
        // A marker line so a reader of the log sees where each run begins; failing to write it
        // is no reason not to start.
        let _ = writeln!(
            log,
            "[baton] starting version {version} of {}",
            backend.name
        );

        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(&config.env)
            .env("BATON_VERSION", version.as_str())
            .env("BATON_PORT", backend.address.port().to_string())
            .env("BATON_BACKEND", backend.name.as_str())
            .env("BATON_SERVICE", backend.service.as_str())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Baton must never take its backends down with it: not on exit, not on Ctrl-C.
            .kill_on_drop(false);
        if let Some(dir) = &config.working_dir {
            command.current_dir(dir);
        }
        // SAFETY: the closure runs in the forked child before exec and calls only setsid(2),
        // which is async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        let mut child = command.spawn().map_err(|error| {
            start_error(if error.kind() == io::ErrorKind::NotFound {
                format!("command {program:?} not found (no such file, or not on PATH): {error}")
            } else {
                format!("cannot run {program:?}: {error}")
            })
        })?;
        let Some(pid) = child.id() else {
            // Only possible once the child was reaped, which nothing did yet.
            return Err(start_error(
                "the process vanished while it was being started".into(),
            ));
        };

        // Read the start time before anything can reap the child: until it is reaped its PID
        // cannot be reused, so this is the start time of the process we just spawned.
        let Some(start_time) = stat(pid).map(|stat| stat.start_time) else {
            let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            return Err(start_error(format!(
                "cannot read /proc/{pid}/stat, which Baton needs to recognise its processes"
            )));
        };

        // The reaper: collects the exit status (so no zombie lingers) and publishes it.
        let (exit_tx, exit_rx) = watch::channel(None);
        lock(&self.children).insert(instance_key(backend), Child { pid, exit: exit_rx });
        let name = backend.name.to_string();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(error) => format!("exit status unknown: {error}"),
            };
            tracing::info!(backend = %name, pid, %exit, "backend process ended");
            exit_tx.send_replace(Some(exit));
        });

        let record = Record {
            pid,
            start_time,
            boot_id: Some(boot_id.clone()),
            version: version.clone(),
        };
        write_record(&self.record_path(backend), &record).map_err(|error| {
            // Without a record nobody could find the process again: take it back down.
            let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            start_error(format!("cannot write the record: {error}"))
        })?;
        Ok(record)
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    /// Nothing to prepare: the command is already on this machine.
    async fn prepare(&self, _version: &Version) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Starts `version` on the backend unless that version already runs there.
    ///
    /// Returns once the process is spawned and recorded; it does not wait for the backend to
    /// be healthy (a crash shows in `status`). Refuses to start a second process while another
    /// version still runs on the backend: stop it first. Processes an exited backend left in its
    /// group (which may hold its port) are stopped first, as `stop` would. Cancellation-safe:
    /// the spawn and the record write happen without an await point in between, and the
    /// record stays until the leftovers are gone.
    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        let _turn = self.turn(backend).await;
        let start_error = |reason: String| RuntimeError::Start {
            backend: backend.name.to_string(),
            reason,
        };
        if let Some(record) = self.read_record(backend)? {
            match liveness(&record, backend) {
                Liveness::Running if record.version == *version => {
                    tracing::debug!(backend = %backend.name, %version, pid = record.pid, "already running");
                    return Ok(());
                }
                Liveness::Running => {
                    return Err(start_error(format!(
                        "version {} is still running there (pid {}); stop it first",
                        record.version, record.pid
                    )));
                }
                Liveness::Leftovers(pids) => {
                    tracing::warn!(
                        backend = %backend.name,
                        pid = record.pid,
                        ?pids,
                        "the backend's previous process exited but left these in its group; \
                         stopping them before starting"
                    );
                    self.terminate(backend, &record)
                        .await
                        .map_err(start_error)?;
                }
                Liveness::Gone(why) => {
                    tracing::info!(
                        backend = %backend.name,
                        pid = record.pid,
                        %why,
                        "not adopting the recorded process"
                    );
                }
            }
        }
        let record = self.spawn(backend, version)?;
        tracing::info!(
            service = %backend.service,
            backend = %backend.name,
            %version,
            pid = record.pid,
            "started backend process"
        );
        Ok(())
    }

    /// Sends the configured stop signal to the backend's process group, waits up to the stop
    /// timeout for the process and everything in its group to end, then sends SIGKILL to the
    /// group; removes the record. A backend that already exited but left processes in its group
    /// has those stopped the same way.
    ///
    /// Already stopped (no record, or a record that names no process of the backend, see
    /// [`Liveness`]) is success, and then nothing is signalled. Cancellation-safe: the record
    /// stays until the group is gone, so calling `stop` again picks up where it left off.
    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        let _turn = self.turn(backend).await;
        let stop_error = |reason: String| RuntimeError::Stop {
            backend: backend.name.to_string(),
            reason,
        };
        let record_path = self.record_path(backend);
        let Some(record) = self.read_record(backend)? else {
            return Ok(());
        };
        match liveness(&record, backend) {
            Liveness::Gone(why) => {
                tracing::info!(
                    backend = %backend.name,
                    pid = record.pid,
                    %why,
                    "nothing of the backend runs; removing its record"
                );
                remove_record(&record_path).map_err(stop_error)?;
                return Ok(());
            }
            Liveness::Running => {
                tracing::info!(backend = %backend.name, pid = record.pid, signal = %to_signal(self.config.stop_signal), "stopping backend process");
            }
            Liveness::Leftovers(pids) => {
                tracing::info!(
                    backend = %backend.name,
                    pid = record.pid,
                    ?pids,
                    "the backend's process exited but left these in its group; stopping them"
                );
            }
        }
        self.terminate(backend, &record).await.map_err(stop_error)?;
        // If it is our child, let the reaper collect it before we say it is stopped.
        let exit = self.exit_of(backend, record.pid).await;
        remove_record(&record_path).map_err(stop_error)?;
        tracing::info!(backend = %backend.name, pid = record.pid, exit = ?exit, "backend process stopped");
        Ok(())
    }

    /// Running (with the recorded version and PID) while the recorded process is alive and
    /// still the one Baton started; otherwise stopped, with the exit status when this runtime
    /// spawned the process. Reads only; cancellation-safe.
    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        match self.read_record(backend)? {
            Some(record) => match liveness(&record, backend) {
                Liveness::Running => Ok(BackendRun::Running {
                    version: record.version,
                    pid: Some(record.pid),
                }),
                other => {
                    tracing::debug!(backend = %backend.name, pid = record.pid, liveness = ?other, "recorded process is not running");
                    Ok(BackendRun::Stopped {
                        exit: self.exit_of(backend, record.pid).await,
                    })
                }
            },
            None => {
                // Stopped by `stop` (record removed): the exit status, if we were its parent.
                let exit = self
                    .child(backend)
                    .and_then(|child| child.exit.borrow().clone());
                Ok(BackendRun::Stopped { exit })
            }
        }
    }

    /// The end of `<state_dir>/<backend>.log`: what the backend printed.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        files::local_tail(self.log_path(backend), lines, |line| line).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn to_signal(stop: StopSignal) -> Signal {
    match stop {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
    }
}

/// "exit status 3", or "killed by signal 9 (SIGKILL)".
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(number) = status.signal() {
        match Signal::try_from(number) {
            Ok(signal) => format!("killed by signal {number} ({signal})"),
            Err(_) => format!("killed by signal {number}"),
        }
    } else {
        status.to_string()
    }
}

/// Signals the record's process group (the backend, its children, and what it left behind),
/// or the process alone if it left the group Baton gave it. The caller has just checked that
/// the record is the backend's.
fn send(record: &Record, signal: Signal) -> Result<(), Errno> {
    let pid = Pid::from_raw(record.pid as i32);
    match signal::killpg(pid, signal) {
        Ok(()) => Ok(()),
        // No group: the process moved to another one, or everything is gone in between.
        Err(Errno::ESRCH) if leader_runs(record) => match signal::kill(pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(error) => Err(error),
        },
        Err(Errno::ESRCH) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Waits until the record's process is gone (or a zombie, or its PID reused) and nothing but
/// zombies is left in its process group; false on timeout. `child`, when the process is a
/// child of this runtime, wakes the wait the moment it is reaped; otherwise `/proc` is polled
/// every [`POLL_INTERVAL`].
async fn wait_gone(record: &Record, child: Option<Child>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut exit = child.map(|child| child.exit);
    loop {
        if !leader_runs(record) && !group_remains(record.pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        let exited = async {
            match exit.as_mut() {
                // Resolves once the reaper has published the exit status (or dropped its end).
                Some(exit) => drop(exit.wait_for(Option::is_some).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = exited => exit = None,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// What Baton needs from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    /// The process group id.
    pgrp: u32,
    start_time: u64,
}

impl Stat {
    /// A zombie, or dead: it will never run again.
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`. The second field (the command name in parentheses) may itself
/// contain spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 of stat(5), the state; field 5 is the group, field 22 the start.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether the record's PID is alive, not a zombie, and started when the record says. Says
/// nothing about the boot: see [`liveness`].
fn leader_runs(record: &Record) -> bool {
    stat(record.pid).is_some_and(|stat| stat.start_time == record.start_time && !stat.is_dead())
}

/// What is left of the backend process `record` names (see the module documentation).
fn liveness(record: &Record, backend: &BackendSpec) -> Liveness {
    match (&record.boot_id, BootId::current()) {
        (Some(recorded), Some(current)) if current == recorded => {}
        (Some(_), Some(_)) => return Liveness::Gone(Gone::OtherBoot),
        (Some(_), None) => return Liveness::Gone(Gone::BootUnknown),
        // A record of a Baton from before boot ids: its PID is the backend only if that process
        // started when recorded *and* carries the variables Baton gave this backend's run, which
        // whatever got the PID after a reboot does not. Upgrading Baton must not restart (and
        // clash with) backends that run.
        (None, _) => {
            if !(leader_runs(record) && carries_run_env(record.pid, record, backend)) {
                return Liveness::Gone(Gone::NoBootId);
            }
        }
    }
    match stat(record.pid) {
        Some(stat) if stat.start_time != record.start_time => Liveness::Gone(Gone::PidReused),
        Some(stat) if !stat.is_dead() => Liveness::Running,
        // Gone, or a zombie: its group may live on.
        _ => {
            let left: Vec<u32> = group_members(record.pid)
                .into_iter()
                .filter(|&pid| left_by(pid, record, backend))
                .collect();
            if left.is_empty() {
                Liveness::Gone(Gone::Exited)
            } else {
                Liveness::Leftovers(left)
            }
        }
    }
}

/// Whether `pid`, a member of the record's process group, was started by the recorded backend
/// (or its descendants): it started no earlier, and carries the variables Baton gave that run.
fn left_by(pid: u32, record: &Record, backend: &BackendSpec) -> bool {
    if stat(pid).is_none_or(|stat| stat.start_time < record.start_time) {
        return false;
    }
    carries_run_env(pid, record, backend)
}

/// Whether `pid` carries the variables Baton gave the recorded run of `backend`.
fn carries_run_env(pid: u32, record: &Record, backend: &BackendSpec) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = [
        format!("BATON_SERVICE={}", backend.service),
        format!("BATON_BACKEND={}", backend.name),
        format!("BATON_VERSION={}", record.version),
    ];
    wanted.iter().all(|entry| {
        environ
            .split(|&byte| byte == 0)
            .any(|have| have == entry.as_bytes())
    })
}

/// Whether process group `pgid` still has a member that is not a zombie.
fn group_remains(pgid: u32) -> bool {
    match signal::killpg(Pid::from_raw(pgid as i32), None) {
        Err(Errno::ESRCH) => false,
        // Someone is there, if only a zombie not yet reaped: look closer.
        _ => !group_members(pgid).is_empty(),
    }
}

/// The PIDs of the live (not zombie) processes in group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|stat| stat.pgrp == pgid && !stat.is_dead()))
        .collect()
}

fn read_record(path: &Path) -> Result<Option<Record>, RuntimeError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(RuntimeError::Other(format!(
                "cannot read {}: {error}",
                path.display()
            )));
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|error| {
        RuntimeError::Other(format!(
            "{} is not a record Baton wrote ({error}); remove it once the backend's process is \
             stopped",
            path.display()
        ))
    })
}

/// Writes the record to a temporary file and renames it into place, so a crash leaves either
/// the old record or the new one, never half of one.
fn write_record(path: &Path, record: &Record) -> io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("record");
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    let mut file = files::create_private_file(&temporary)?;
    file.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)
}

fn remove_record(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("cannot remove {}: {error}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BackendAddr, BackendName, ServiceName};

    /// Kills, on drop, every process group recorded in `<dir>/state` (the state directory
    /// `config` uses) that is still the backend's, the extra children, and the strays (processes
    /// a backend left behind, by PID and start time), even when the test failed halfway.
    struct Cleanup {
        dir: tempfile::TempDir,
        extra: Vec<std::process::Child>,
        strays: Vec<(u32, u64)>,
    }

    impl Cleanup {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
                extra: Vec::new(),
                strays: Vec::new(),
            }
        }

        /// Remembers `pid` (which must be running) to be killed on drop.
        fn stray(&mut self, pid: u32) {
            self.strays
                .push((pid, stat(pid).expect("running").start_time));
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Ok(entries) = fs::read_dir(self.dir.path().join("state")) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|ext| ext == "json")
                        && let Some(name) = path.file_stem().and_then(|stem| stem.to_str())
                        && let Ok(Some(record)) = read_record(&path)
                        && !matches!(liveness(&record, &backend(name)), Liveness::Gone(_))
                    {
                        let _ = send(&record, Signal::SIGKILL);
                    }
                }
            }
            for &(pid, start_time) in &self.strays {
                if stat(pid).is_some_and(|stat| stat.start_time == start_time) {
                    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            for child in &mut self.extra {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn config(dir: &Path, command: &[&str]) -> ProcessConfig {
        ProcessConfig {
            command: command.iter().map(|part| part.to_string()).collect(),
            env: crate::settings::INHERITED_ENV
                .iter()
                .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
                .collect(),
            working_dir: None,
            stop_signal: StopSignal::Term,
            stop_timeout: Duration::from_secs(5),
            state_dir: dir.join("state"),
        }
    }

    /// Backend `name` on 127.0.0.1:18431, or `<name>@surge` (as its record is named) on its
    /// surge address 127.0.0.1:18432.
    fn backend(name: &str) -> BackendSpec {
        let (name, slot, port) = match name.strip_suffix("@surge") {
            Some(name) => (name, Slot::SurgeAddress, 18432),
            None => (name, Slot::Address, 18431),
        };
        BackendSpec {
            service: ServiceName::parse("api").unwrap(),
            name: BackendName::parse(name).unwrap(),
            address: BackendAddr::parse(&format!("127.0.0.1:{port}")).unwrap(),
            slot,
        }
    }

    #[tokio::test]
    async fn both_instances_of_a_backend_run_at_once_each_on_its_address_and_stop_apart() {
        let cleanup = Cleanup::new();
        let dir = cleanup.path().to_owned();
        let script = format!(
            "echo $BATON_VERSION > {}/port-$BATON_PORT; exec sleep 30",
            dir.display()
        );
        let runtime = ProcessRuntime::new(config(&dir, &["sh", "-c", &script]));
        let (home, surge) = (backend("s1"), backend("s1@surge"));
        runtime.start(&home, &version("v1")).await.unwrap();
        runtime.start(&surge, &version("v2")).await.unwrap();
        assert_eq!(wait_for_file(&dir.join("port-18431")).await, "v1\n");
        assert_eq!(wait_for_file(&dir.join("port-18432")).await, "v2\n");
        let old = running_pid(runtime.status(&home).await.unwrap(), &version("v1"));
        let new = running_pid(runtime.status(&surge).await.unwrap(), &version("v2"));
        assert_ne!(
            old, new,
            "starting the surge instance left the old one running"
        );

        runtime.stop(&home).await.unwrap();
        wait_stopped(&runtime, &home).await;
        assert_eq!(
            running_pid(runtime.status(&surge).await.unwrap(), &version("v2")),
            new,
            "stopping the old instance left the new one running"
        );
        assert!(!dir.join("state/s1.json").exists());
        assert!(dir.join("state/s1@surge.json").exists());
        assert!(dir.join("state/s1@surge.log").exists());

        // A restarted Baton finds the instance by its record.
        let again = ProcessRuntime::new(config(&dir, &["sh", "-c", &script]));
        assert_eq!(
            running_pid(again.status(&surge).await.unwrap(), &version("v2")),
            new
        );
        again.stop(&surge).await.unwrap();
        assert!(!dir.join("state/s1@surge.json").exists());
    }

    fn version(value: &str) -> Version {
        Version::parse(value).unwrap()
    }

    /// Waits until `path` exists (a test backend's "I am ready" marker).
    async fn wait_for_file(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_stopped(runtime: &ProcessRuntime, backend: &BackendSpec) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match runtime.status(backend).await.unwrap() {
                BackendRun::Stopped { exit } => return exit,
                BackendRun::Running { .. } => {
                    assert!(Instant::now() < deadline, "{} never stopped", backend.name);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn running_pid(run: BackendRun, expected: &Version) -> u32 {
        match run {
            BackendRun::Running { version, pid } => {
                assert_eq!(&version, expected);
                pid.expect("a pid")
            }
            other => panic!("expected running, got {other:?}"),
        }
    }

    /// A python backend that writes `ready_line` to `<dir>/ready` once set up, then sleeps.
    fn python(setup: &str, ready_file: &Path) -> Vec<String> {
        let script = format!(
            "import os, signal, sys, time\n{setup}\n\
             open({ready:?} + '.tmp', 'w').write(READY + '\\n')\n\
             os.rename({ready:?} + '.tmp', {ready:?})\n\
             while True: time.sleep(0.05)\n",
            ready = ready_file.display().to_string(),
        );
        vec!["python3".into(), "-c".into(), script]
    }

    #[tokio::test]
    async fn a_large_log_is_set_aside_when_the_next_run_starts() {
        let cleanup = Cleanup::new();
        let config = config(cleanup.path(), &["/bin/sleep", "30"]);
        let state_dir = config.state_dir.clone();
        fs::create_dir_all(&state_dir).unwrap();
        let log = state_dir.join("b1.log");
        fs::write(&log, vec![b'x'; files::ROTATE_LOG_AT as usize]).unwrap();
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");

        runtime.start(&b1, &version("v2")).await.unwrap();
        runtime.stop(&b1).await.unwrap();
        assert_eq!(
            fs::metadata(state_dir.join("b1.log.1")).unwrap().len(),
            files::ROTATE_LOG_AT,
            "the old log, whole"
        );
        let fresh = fs::read_to_string(&log).unwrap();
        assert!(
            fresh.starts_with("[baton] starting version v2 of b1"),
            "{fresh}"
        );

        // A small log is appended to, not set aside.
        runtime.start(&b1, &version("v3")).await.unwrap();
        runtime.stop(&b1).await.unwrap();
        let both = fs::read_to_string(&log).unwrap();
        assert!(
            both.starts_with(&fresh) && both.contains("version v3"),
            "{both}"
        );
    }

    #[test]
    fn stat_is_parsed_after_the_last_parenthesis() {
        let fields: Vec<String> = (4..=52).map(|n| n.to_string()).collect();
        let text = format!("4242 (a (b) c) ) S {}\n", fields.join(" "));
        let parsed = parse_stat(&text).unwrap();
        assert_eq!(parsed.state, 'S');
        assert_eq!(parsed.pgrp, 5);
        assert_eq!(parsed.start_time, 22);
        assert_eq!(parse_stat("12 (x) R 1 2"), None);
        let own = stat(std::process::id()).unwrap();
        assert!(own.start_time > 0);
        assert_eq!(own.pgrp, nix::unistd::getpgrp().as_raw() as u32);
    }

    #[tokio::test]
    async fn start_runs_the_version_with_its_environment_detached() {
        let cleanup = Cleanup::new();
        let ready = cleanup.path().join("ready");
        let setup = "READY = ' '.join(f'{k}={os.environ.get(k)}' for k in \
                     ['BATON_VERSION', 'BATON_PORT', 'BATON_BACKEND', 'BATON_SERVICE', 'EXTRA', \
                     'CARGO_MANIFEST_DIR'])\n\
                     print('to stdout', flush=True)\nprint('to stderr', file=sys.stderr, flush=True)";
        let mut config = config(cleanup.path(), &[]);
        config.command = python(setup, &ready);
        config.env.insert("EXTRA".into(), "yes".into());
        config
            .env
            .insert("BATON_VERSION".into(), "overridden-by-baton".into());
        let state_dir = config.state_dir.clone();
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");
        let v1 = version("v1.2.3");

        runtime.start(&b1, &v1).await.unwrap();
        let env = wait_for_file(&ready).await;
        assert_eq!(
            env,
            "BATON_VERSION=v1.2.3 BATON_PORT=18431 BATON_BACKEND=b1 BATON_SERVICE=api EXTRA=yes \
             CARGO_MANIFEST_DIR=None\n",
            "only the configured environment: not Baton's own (cargo set CARGO_MANIFEST_DIR for it)"
        );
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &v1);

        // Its own session and process group: Ctrl-C on Baton, or Baton's death, never reach it.
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = text[text.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        assert_eq!(fields[2], pid.to_string(), "process group");
        assert_eq!(fields[3], pid.to_string(), "session");

        // Idempotent: the same version again is the same process.
        runtime.start(&b1, &v1).await.unwrap();
        assert_eq!(running_pid(runtime.status(&b1).await.unwrap(), &v1), pid);
        // Another version while this one runs is refused.
        let error = runtime.start(&b1, &version("v2")).await.unwrap_err();
        assert!(
            matches!(&error, RuntimeError::Start { reason, .. } if reason.contains("stop it first")),
            "{error}"
        );

        let record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(state_dir.join("b1.json")).unwrap()).unwrap();
        assert_eq!(record["pid"], pid);
        assert_eq!(record["version"], "v1.2.3");
        assert_eq!(record["start_time"], stat(pid).unwrap().start_time);
        assert_eq!(
            record["boot_id"].as_str(),
            Some(fs::read_to_string(BOOT_ID_PATH).unwrap().trim())
        );

        runtime.stop(&b1).await.unwrap();
        let log = fs::read_to_string(state_dir.join("b1.log")).unwrap();
        assert!(
            log.contains("to stdout\n") && log.contains("to stderr\n"),
            "{log}"
        );
        // The tail the rollout page shows is the same log's end.
        let tail = runtime.log_tail(&b1, 1).await.unwrap().unwrap();
        assert_eq!(tail.lines, [log.lines().last().unwrap()]);
        assert_eq!(tail.source, state_dir.join("b1.log").display().to_string());
        assert!(!state_dir.join("b1.json").exists());
        assert_eq!(
            runtime.status(&b1).await.unwrap(),
            BackendRun::Stopped {
                exit: Some("killed by signal 15 (SIGTERM)".into())
            }
        );
    }

    #[tokio::test]
    async fn stop_sends_the_configured_signal_and_waits_for_a_clean_exit() {
        let cleanup = Cleanup::new();
        let ready = cleanup.path().join("ready");
        let marker = cleanup.path().join("got-signal");
        let setup = format!(
            "READY = 'ready'\n\
             def bye(number, frame):\n    time.sleep(0.2)\n    open({marker:?}, 'w').write(str(number))\n    sys.exit(0)\n\
             signal.signal(signal.SIGUSR2, bye)",
            marker = marker.display().to_string()
        );
        let mut config = config(cleanup.path(), &[]);
        config.command = python(&setup, &ready);
        config.stop_signal = StopSignal::Usr2;
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        wait_for_file(&ready).await;

        let started = Instant::now();
        runtime.stop(&b1).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            fs::read_to_string(&marker).unwrap(),
            (Signal::SIGUSR2 as i32).to_string()
        );
        assert_eq!(
            runtime.status(&b1).await.unwrap(),
            BackendRun::Stopped {
                exit: Some("exit status 0".into())
            }
        );
        // Already stopped is success.
        runtime.stop(&b1).await.unwrap();
    }

    /// A rollout stops a whole batch at once: each backend waits only for its own process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backends_stop_side_by_side_not_one_after_the_other() {
        let cleanup = Cleanup::new();
        let ready = cleanup.path().join("ready");
        fs::create_dir(&ready).unwrap();
        let script = format!(
            "import os, signal, sys, time\n\
             def bye(number, frame):\n    time.sleep(0.5)\n    sys.exit(0)\n\
             signal.signal(signal.SIGTERM, bye)\n\
             marker = os.path.join({ready:?}, os.environ['BATON_BACKEND'])\n\
             open(marker + '.tmp', 'w').write('ready\\n')\n\
             os.rename(marker + '.tmp', marker)\n\
             while True: time.sleep(0.05)\n",
            ready = ready.display().to_string(),
        );
        let mut config = config(cleanup.path(), &[]);
        config.command = vec!["python3".into(), "-c".into(), script];
        let runtime = ProcessRuntime::new(config);
        let (b1, b2) = (backend("b1"), backend("b2"));
        runtime.start(&b1, &version("v1")).await.unwrap();
        runtime.start(&b2, &version("v1")).await.unwrap();
        wait_for_file(&ready.join("b1")).await;
        wait_for_file(&ready.join("b2")).await;

        let started = Instant::now();
        let (first, second) = tokio::join!(runtime.stop(&b1), runtime.stop(&b2));
        let took = started.elapsed();
        first.unwrap();
        second.unwrap();
        assert!(
            took < Duration::from_millis(900),
            "each takes 0.5 s to exit; both stopped after {took:?}"
        );
        for b in [&b1, &b2] {
            assert_eq!(
                runtime.status(b).await.unwrap(),
                BackendRun::Stopped {
                    exit: Some("exit status 0".into())
                }
            );
        }
    }

    #[tokio::test]
    async fn a_process_ignoring_the_stop_signal_is_killed_after_the_timeout() {
        let cleanup = Cleanup::new();
        let ready = cleanup.path().join("ready");
        let setup = "READY = 'ready'\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)";
        let mut config = config(cleanup.path(), &[]);
        config.command = python(setup, &ready);
        config.stop_timeout = Duration::from_millis(600);
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        wait_for_file(&ready).await;
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));

        let started = Instant::now();
        runtime.stop(&b1).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(600),
            "SIGKILL too early: {took:?}"
        );
        assert!(took < Duration::from_secs(4), "took {took:?}");
        assert!(stat(pid).is_none_or(|stat| stat.state == 'Z'));
        assert_eq!(
            runtime.status(&b1).await.unwrap(),
            BackendRun::Stopped {
                exit: Some("killed by signal 9 (SIGKILL)".into())
            }
        );
    }

    #[tokio::test]
    async fn a_fresh_runtime_readopts_running_backends_and_stops_them() {
        let cleanup = Cleanup::new();
        let config = config(cleanup.path(), &["/bin/sleep", "60"]);
        let b1 = backend("b1");
        let v7 = version("v7");
        let first = ProcessRuntime::new(config.clone());
        first.start(&b1, &v7).await.unwrap();
        let pid = running_pid(first.status(&b1).await.unwrap(), &v7);
        drop(first);

        // What a restarted Baton does.
        let second = ProcessRuntime::new(config);
        assert_eq!(running_pid(second.status(&b1).await.unwrap(), &v7), pid);
        second.start(&b1, &v7).await.unwrap();
        assert_eq!(
            running_pid(second.status(&b1).await.unwrap(), &v7),
            pid,
            "no second process"
        );
        second.stop(&b1).await.unwrap();
        assert!(!leader_runs(&Record {
            pid,
            start_time: 0,
            boot_id: BootId::current().cloned(),
            version: v7.clone()
        }));
        // Not our child: how it ended is unknown.
        assert_eq!(
            second.status(&b1).await.unwrap(),
            BackendRun::Stopped { exit: None }
        );
        let gone = wait_gone_pid(pid).await;
        assert!(gone, "pid {pid} still alive");
    }

    async fn wait_gone_pid(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if stat(pid).is_none_or(|stat| stat.state == 'Z') {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_stale_record_naming_someone_elses_process_is_never_signalled() {
        let mut cleanup = Cleanup::new();
        let bystander = std::process::Command::new("/bin/sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let bystander_pid = bystander.id();
        cleanup.extra.push(bystander);
        let config = config(cleanup.path(), &["/bin/sleep", "60"]);
        fs::create_dir_all(&config.state_dir).unwrap();
        let real = stat(bystander_pid).unwrap().start_time;
        // The same PID as the record, but a process that started at another time.
        for (name, pid) in [("b1", bystander_pid), ("b2", std::process::id())] {
            let record = Record {
                pid,
                start_time: real + 12345,
                boot_id: BootId::current().cloned(),
                version: version("v1"),
            };
            write_record(&config.state_dir.join(format!("{name}.json")), &record).unwrap();
        }
        let runtime = ProcessRuntime::new(config.clone());
        for name in ["b1", "b2"] {
            let b = backend(name);
            assert_eq!(
                runtime.status(&b).await.unwrap(),
                BackendRun::Stopped { exit: None }
            );
            runtime.stop(&b).await.unwrap();
            assert!(!config.state_dir.join(format!("{name}.json")).exists());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            cleanup.extra[0].try_wait().unwrap().is_none(),
            "the bystander was signalled"
        );

        // And `start` does not mistake it for a running backend.
        let other = Record {
            pid: bystander_pid,
            start_time: real + 1,
            boot_id: BootId::current().cloned(),
            version: version("v1"),
        };
        write_record(&config.state_dir.join("b1.json"), &other).unwrap();
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
        assert_ne!(pid, bystander_pid);
        runtime.stop(&b1).await.unwrap();
        assert!(
            cleanup.extra[0].try_wait().unwrap().is_none(),
            "the bystander was signalled"
        );
    }

    #[tokio::test]
    async fn a_record_from_another_boot_or_without_one_is_not_adopted() {
        let mut cleanup = Cleanup::new();
        // A live process with exactly the recorded PID and start time: after a reboot, whatever
        // got the old backend's PID can look like this.
        let lookalike = std::process::Command::new("/bin/sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let lookalike_pid = lookalike.id();
        cleanup.extra.push(lookalike);
        let start_time = stat(lookalike_pid).unwrap().start_time;
        let config = config(cleanup.path(), &["/bin/sleep", "60"]);
        fs::create_dir_all(&config.state_dir).unwrap();
        let records = [
            serde_json::json!({
                "pid": lookalike_pid,
                "start_time": start_time,
                "boot_id": "5e1f6a52-0000-4000-8000-000000000000",
                "version": "v1",
            }),
            // What a Baton from before boot ids wrote.
            serde_json::json!({"pid": lookalike_pid, "start_time": start_time, "version": "v1"}),
        ];
        let runtime = ProcessRuntime::new(config.clone());
        let b1 = backend("b1");
        for record in records {
            fs::write(config.state_dir.join("b1.json"), record.to_string()).unwrap();
            assert_eq!(
                runtime.status(&b1).await.unwrap(),
                BackendRun::Stopped { exit: None },
                "{record}"
            );
            // Started afresh, not taken for the running version.
            runtime.start(&b1, &version("v1")).await.unwrap();
            let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
            assert_ne!(pid, lookalike_pid);
            runtime.stop(&b1).await.unwrap();
            assert!(
                cleanup.extra[0].try_wait().unwrap().is_none(),
                "the lookalike was signalled"
            );
        }
    }

    #[tokio::test]
    async fn a_backend_recorded_by_a_baton_from_before_boot_ids_is_adopted_not_restarted() {
        let cleanup = Cleanup::new();
        let config = config(cleanup.path(), &["/bin/sleep", "60"]);
        let runtime = ProcessRuntime::new(config.clone());
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
        // Rewrite the record as an older Baton wrote it: no boot id.
        let path = config.state_dir.join("b1.json");
        let mut record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        record.as_object_mut().unwrap().remove("boot_id");
        fs::write(&path, record.to_string()).unwrap();

        let upgraded = ProcessRuntime::new(config);
        assert_eq!(
            running_pid(upgraded.status(&b1).await.unwrap(), &version("v1")),
            pid,
            "the running backend is adopted after an upgrade"
        );
        upgraded.stop(&b1).await.unwrap();
        assert!(stat(pid).is_none_or(|stat| stat.is_dead()));
    }

    #[tokio::test]
    async fn stop_ends_what_an_exited_backend_left_in_its_group() {
        let mut cleanup = Cleanup::new();
        let left = cleanup.path().join("left");
        // The backend forks a worker into its own group, then exits at once.
        let script = format!(
            "sleep 60 & echo $! > {left}.tmp && mv {left}.tmp {left}",
            left = left.display()
        );
        let config = config(cleanup.path(), &["/bin/sh", "-c", &script]);
        let state_dir = config.state_dir.clone();
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");

        runtime.start(&b1, &version("v1")).await.unwrap();
        let worker: u32 = wait_for_file(&left).await.trim().parse().unwrap();
        cleanup.stray(worker);
        assert_eq!(
            wait_stopped(&runtime, &b1).await,
            Some("exit status 0".into())
        );
        assert!(stat(worker).is_some_and(|stat| !stat.is_dead()));

        runtime.stop(&b1).await.unwrap();
        assert!(wait_gone_pid(worker).await, "worker {worker} still alive");
        assert!(!state_dir.join("b1.json").exists());

        // The same after a restart of Baton, and when the next run is started instead.
        fs::remove_file(&left).unwrap();
        runtime.start(&b1, &version("v2")).await.unwrap();
        let worker: u32 = wait_for_file(&left).await.trim().parse().unwrap();
        cleanup.stray(worker);
        wait_stopped(&runtime, &b1).await;
        let restarted = ProcessRuntime::new(runtime.config.clone());
        fs::remove_file(&left).unwrap();
        restarted.start(&b1, &version("v3")).await.unwrap();
        assert!(
            wait_gone_pid(worker).await,
            "worker {worker} of the previous run still alive"
        );
        let worker: u32 = wait_for_file(&left).await.trim().parse().unwrap();
        cleanup.stray(worker);
        restarted.stop(&b1).await.unwrap();
        assert!(wait_gone_pid(worker).await, "worker {worker} still alive");
    }

    #[tokio::test]
    async fn a_missing_command_is_a_start_error_with_the_reason() {
        let cleanup = Cleanup::new();
        let config = config(cleanup.path(), &["baton-test-no-such-program", "--flag"]);
        let state_dir = config.state_dir.clone();
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");
        let error = runtime.start(&b1, &version("v1")).await.unwrap_err();
        match &error {
            RuntimeError::Start { backend, reason } => {
                assert_eq!(backend, "b1");
                assert!(
                    reason.contains("baton-test-no-such-program") && reason.contains("not found"),
                    "{reason}"
                );
            }
            other => panic!("expected a start error, got {other:?}"),
        }
        assert!(!state_dir.join("b1.json").exists());
        assert_eq!(
            runtime.status(&b1).await.unwrap(),
            BackendRun::Stopped { exit: None }
        );

        let mut empty = ProcessRuntime::new(ProcessConfig {
            command: Vec::new(),
            ..runtime.config.clone()
        });
        assert!(matches!(
            empty.start(&b1, &version("v1")).await,
            Err(RuntimeError::Start { .. })
        ));
        empty.config.command = vec!["/bin/sleep".into(), "60".into()];
        empty.config.working_dir = Some(cleanup.path().join("missing"));
        let error = empty.start(&b1, &version("v1")).await.unwrap_err();
        assert!(error.to_string().contains("working directory"), "{error}");
    }

    #[tokio::test]
    async fn a_backend_that_exits_at_once_shows_its_exit_status() {
        let cleanup = Cleanup::new();
        let config = config(
            cleanup.path(),
            &[
                "python3",
                "-c",
                "import sys; print('boom', file=sys.stderr); sys.exit(3)",
            ],
        );
        let state_dir = config.state_dir.clone();
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        assert_eq!(
            wait_stopped(&runtime, &b1).await,
            Some("exit status 3".into())
        );
        assert!(
            fs::read_to_string(state_dir.join("b1.log"))
                .unwrap()
                .contains("boom\n")
        );
        // Stopping what already ended is success, and clears the record.
        runtime.stop(&b1).await.unwrap();
        assert!(!state_dir.join("b1.json").exists());
        // Starting again works (the stale exit does not stick).
        let runtime = ProcessRuntime::new(ProcessConfig {
            command: vec!["/bin/sleep".into(), "60".into()],
            ..runtime.config.clone()
        });
        runtime.start(&b1, &version("v2")).await.unwrap();
        running_pid(runtime.status(&b1).await.unwrap(), &version("v2"));
        runtime.stop(&b1).await.unwrap();
    }
}
