//! The process runtime: Baton starts backends as detached processes and re-adopts them.
//!
//! Each backend's process is started in its own session (and so its own process group), with
//! stdin closed and stdout and stderr appended to `<state_dir>/<backend>.log`, so restarting or
//! killing Baton never stops a backend. What runs where is recorded in
//! `<state_dir>/<backend>.json` as `{pid, start_time, version}`; a process is the backend's only
//! while `/proc/<pid>/stat` exists, is not a zombie, and shows the recorded start time, which
//! protects against PID reuse: Baton never signals a process that merely inherited a stale PID.
//!
//! A runtime that spawned a process also keeps its exit status, so `status` can say *how* a
//! backend that crashed right away ended. After a Baton restart the processes are re-adopted
//! from their records: they show as running and can be stopped, but their exit status is not
//! known (Baton is no longer their parent).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{BackendRun, BackendSpec, Runtime, RuntimeError};
use crate::domain::Version;
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
/// A backend's log at least this large when a new run starts is moved to `<backend>.log.1`
/// (replacing the one before), so deploys and restarts keep at most two logs per backend.
const ROTATE_LOG_AT: u64 = 16 * 1024 * 1024;

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
/// Invariants: a record exists only for a process that was spawned successfully; a process is
/// signalled only after its PID's start time was checked against the record; `start` and `stop`
/// of one runtime are serialized, so two concurrent calls never race on the same record.
/// Two runtimes must not share a `state_dir` at the same time (one after the other is the point).
pub struct ProcessRuntime {
    config: ProcessConfig,
    /// Serializes `start` and `stop`.
    lock: tokio::sync::Mutex<()>,
    /// The children this runtime spawned, by backend name: their PID and exit status (`None`
    /// while running). Filled by one reaper task per child, which also keeps zombies away.
    children: Arc<Mutex<HashMap<String, Child>>>,
}

#[derive(Clone)]
struct Child {
    pid: u32,
    exit: watch::Receiver<Option<String>>,
}

/// The record in `<state_dir>/<backend>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
    start_time: u64,
    version: Version,
}

impl ProcessRuntime {
    /// A runtime for one service. Does no IO: the state directory is created by the first
    /// `start`, and records left by an earlier Baton are read when a backend is asked about.
    pub fn new(config: ProcessConfig) -> Self {
        Self {
            config,
            lock: tokio::sync::Mutex::new(()),
            children: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn record_path(&self, backend: &BackendSpec) -> PathBuf {
        // Backend names are `[A-Za-z0-9][A-Za-z0-9._-]*` (domain.rs), so they are safe file names.
        self.config
            .state_dir
            .join(format!("{}.json", backend.name.as_str()))
    }

    fn log_path(&self, backend: &BackendSpec) -> PathBuf {
        self.config
            .state_dir
            .join(format!("{}.log", backend.name.as_str()))
    }

    fn read_record(&self, backend: &BackendSpec) -> Result<Option<Record>, RuntimeError> {
        read_record(&self.record_path(backend))
    }

    /// The record, if the process it names is still the one Baton started.
    fn live_record(&self, backend: &BackendSpec) -> Result<Option<Record>, RuntimeError> {
        Ok(self.read_record(backend)?.filter(is_ours))
    }

    fn child(&self, backend: &BackendSpec) -> Option<Child> {
        lock(&self.children).get(backend.name.as_str()).cloned()
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
        if let Some(dir) = &config.working_dir
            && !dir.is_dir()
        {
            return Err(start_error(format!(
                "working directory {} does not exist or is not a directory",
                dir.display()
            )));
        }
        fs::create_dir_all(&config.state_dir).map_err(|error| {
            start_error(format!(
                "cannot create state directory {}: {error}",
                config.state_dir.display()
            ))
        })?;
        let log_path = self.log_path(backend);
        rotate_log(&log_path, ROTATE_LOG_AT).map_err(|error| {
            start_error(format!("cannot rotate log {}: {error}", log_path.display()))
        })?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| {
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
        lock(&self.children).insert(
            backend.name.as_str().to_owned(),
            Child { pid, exit: exit_rx },
        );
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
    /// version still runs on the backend: stop it first. Cancellation-safe: the spawn and the
    /// record write happen without an await point in between.
    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        let _guard = self.lock.lock().await;
        if let Some(record) = self.live_record(backend)? {
            if record.version == *version {
                tracing::debug!(backend = %backend.name, %version, pid = record.pid, "already running");
                return Ok(());
            }
            return Err(RuntimeError::Start {
                backend: backend.name.to_string(),
                reason: format!(
                    "version {} is still running there (pid {}); stop it first",
                    record.version, record.pid
                ),
            });
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
    /// timeout for the process to end, then sends SIGKILL; removes the record.
    ///
    /// Already stopped (no record, or a record whose PID is no longer the process Baton
    /// started) is success, and then nothing is signalled. Cancellation-safe: the record stays
    /// until the process is gone, so calling `stop` again picks up where it left off.
    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        let _guard = self.lock.lock().await;
        let stop_error = |reason: String| RuntimeError::Stop {
            backend: backend.name.to_string(),
            reason,
        };
        let record_path = self.record_path(backend);
        let Some(record) = self.read_record(backend)? else {
            return Ok(());
        };
        if !is_ours(&record) {
            tracing::info!(
                backend = %backend.name,
                pid = record.pid,
                "backend process already gone; removing its record"
            );
            remove_record(&record_path).map_err(stop_error)?;
            return Ok(());
        }

        let signal = to_signal(self.config.stop_signal);
        tracing::info!(backend = %backend.name, pid = record.pid, %signal, "stopping backend process");
        send(&record, signal)
            .map_err(|error| stop_error(format!("cannot send {signal}: {error}")))?;
        let child = self.child(backend).filter(|child| child.pid == record.pid);
        if !wait_gone(&record, child.clone(), self.config.stop_timeout).await {
            tracing::warn!(
                backend = %backend.name,
                pid = record.pid,
                timeout = ?self.config.stop_timeout,
                "backend process ignored {signal}; sending SIGKILL"
            );
            send(&record, Signal::SIGKILL)
                .map_err(|error| stop_error(format!("cannot send SIGKILL: {error}")))?;
            if !wait_gone(&record, child, KILL_GRACE).await {
                return Err(stop_error(format!(
                    "pid {} is still there {KILL_GRACE:?} after SIGKILL",
                    record.pid
                )));
            }
        }
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
            Some(record) if is_ours(&record) => Ok(BackendRun::Running {
                version: record.version,
                pid: Some(record.pid),
            }),
            Some(record) => Ok(BackendRun::Stopped {
                exit: self.exit_of(backend, record.pid).await,
            }),
            None => {
                // Stopped by `stop` (record removed): the exit status, if we were its parent.
                let exit = self
                    .child(backend)
                    .and_then(|child| child.exit.borrow().clone());
                Ok(BackendRun::Stopped { exit })
            }
        }
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

/// Signals the record's process group (the backend and its children), or the process alone if
/// it left the group Baton gave it. The caller has just checked that the process is ours.
fn send(record: &Record, signal: Signal) -> Result<(), Errno> {
    let pid = Pid::from_raw(record.pid as i32);
    match signal::killpg(pid, signal) {
        Ok(()) => Ok(()),
        Err(Errno::ESRCH) => match signal::kill(pid, signal) {
            // Gone in between: that is what we wanted.
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    }
}

/// Waits until the record's process is gone (or a zombie, or its PID reused); false on timeout.
/// `child`, when the process is a child of this runtime, wakes the wait the moment it is reaped;
/// otherwise `/proc` is polled every [`POLL_INTERVAL`].
async fn wait_gone(record: &Record, child: Option<Child>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut exit = child.map(|child| child.exit);
    loop {
        if !is_ours(record) {
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
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`. The second field (the command name in parentheses) may itself
/// contain spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 is the state; field 22 the start time, 19 fields later.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Whether the record's PID is alive, not a zombie, and started when the record says.
fn is_ours(record: &Record) -> bool {
    stat(record.pid).is_some_and(|stat| {
        stat.start_time == record.start_time && !matches!(stat.state, 'Z' | 'X' | 'x')
    })
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
    let mut file = File::create(&temporary)?;
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

/// Moves the log at `path` to `path.1` if it holds `limit` bytes or more.
fn rotate_log(path: &Path, limit: u64) -> std::io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() >= limit => {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            fs::rename(path, old)
        }
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BackendAddr, BackendName, ServiceName};

    /// Kills, on drop, every process recorded in `<dir>/state` (the state directory `config`
    /// uses) that is still ours, and the extra children, even when the test failed halfway.
    struct Cleanup {
        dir: tempfile::TempDir,
        extra: Vec<std::process::Child>,
    }

    impl Cleanup {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
                extra: Vec::new(),
            }
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
                        && let Ok(Some(record)) = read_record(&path)
                        && is_ours(&record)
                    {
                        let _ = send(&record, Signal::SIGKILL);
                    }
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

    fn backend(name: &str) -> BackendSpec {
        BackendSpec {
            service: ServiceName::parse("api").unwrap(),
            name: BackendName::parse(name).unwrap(),
            address: BackendAddr::parse("127.0.0.1:18431").unwrap(),
        }
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
        fs::write(&log, vec![b'x'; ROTATE_LOG_AT as usize]).unwrap();
        let runtime = ProcessRuntime::new(config);
        let b1 = backend("b1");

        runtime.start(&b1, &version("v2")).await.unwrap();
        runtime.stop(&b1).await.unwrap();
        assert_eq!(
            fs::metadata(state_dir.join("b1.log.1")).unwrap().len(),
            ROTATE_LOG_AT,
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
        assert_eq!(parsed.start_time, 22);
        assert_eq!(parse_stat("12 (x) R 1 2"), None);
        let own = stat(std::process::id()).unwrap();
        assert!(own.start_time > 0);
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

        runtime.stop(&b1).await.unwrap();
        let log = fs::read_to_string(state_dir.join("b1.log")).unwrap();
        assert!(
            log.contains("to stdout\n") && log.contains("to stderr\n"),
            "{log}"
        );
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
        assert!(!is_ours(&Record {
            pid,
            start_time: 0,
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
