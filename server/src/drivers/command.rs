//! The command runtime: the user's own shell commands prepare, start and stop backends.
//!
//! Invariant: values from outside (versions, names) reach the commands only as environment
//! variables (`BATON_VERSION`, `BATON_BACKEND`, `BATON_PORT`, `BATON_SERVICE`), never pasted into
//! the shell text, which comes from the configuration file alone.
//!
//! Each command runs in its own process group with its stderr appended to a log in the service's
//! state directory (`<backend>.log`, or `prepare.log`); stdout goes nowhere. A file rather than
//! a pipe because a `start` that puts a daemon in the background (`app &`) hands it the
//! command's stderr: with a pipe Baton would wait for the daemon to close it (it never does), or,
//! if Baton stopped reading, the daemon would die of SIGPIPE at its first message. Baton waits
//! for the shell alone and then reads the end of what the command wrote.
//!
//! A failed command is reported as `start exited with status 3: <last lines of stderr>`: never
//! the script (which may hold a literal password), and the values of the service's `env` and
//! `pass_env` variables masked as `***` in the lines. Those lines are what anyone who may see
//! the rollout reads; the whole stderr stays in the log, readable by Baton's user only.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use super::files;
use super::{BackendRun, BackendSpec, LogTail, Runtime, RuntimeError};
use crate::domain::Version;
use crate::settings::{INHERITED_ENV, RuntimeKind, ServiceSettings};

/// How much of the end of a failed command's stderr Baton reads back from its log.
pub(super) const STDERR_WINDOW: u64 = 64 * 1024;
/// How many of the last lines of stderr a failure reports…
const STDERR_LINES: usize = 10;
/// …and at most how many bytes of them.
const STDERR_BYTES: usize = 2000;
/// Shorter values are not masked: masking every "1" or "on" would garble the message and
/// hide nothing worth hiding.
const MASK_MIN_LEN: usize = 3;
/// What a masked value is replaced with.
const MASK: &str = "***";

/// Which of the configured commands runs; messages name it rather than quote its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Prepare,
    Start,
    Stop,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prepare => "prepare",
            Self::Start => "start",
            Self::Stop => "stop",
        })
    }
}

pub struct CommandRuntime {
    prepare: Option<String>,
    start: String,
    stop: String,
    env: BTreeMap<String, String>,
    /// The values of the variables `env` and `pass_env` set (at least [`MASK_MIN_LEN`] long),
    /// longest first so a value that contains another is masked whole.
    secrets: Vec<String>,
    service: String,
    /// Each command's time limit (the configured stop timeout, at least a minute for prepare).
    timeout: Duration,
    /// The commands' working directory, which also holds their logs.
    working_dir: PathBuf,
    /// What this Baton started, by backend instance (`<backend>` on its address,
    /// `<backend>@surge` on its surge address); a command runtime cannot see processes itself.
    started: Mutex<BTreeMap<String, Version>>,
}

/// The key of one instance of a backend in `started`: during a surge two run at once, and the
/// user's commands tell them apart by `BATON_PORT`.
fn instance_key(backend: &BackendSpec) -> String {
    match backend.slot {
        crate::domain::Slot::Address => backend.name.to_string(),
        crate::domain::Slot::SurgeAddress => format!("{}@surge", backend.name),
    }
}

impl CommandRuntime {
    /// # Panics
    /// If `service`'s runtime is not of kind `command` (settings guarantee which it is).
    pub fn new(service: &ServiceSettings, working_dir: PathBuf) -> Self {
        let RuntimeKind::Command {
            prepare,
            start,
            stop,
        } = &service.runtime.kind
        else {
            panic!("CommandRuntime needs a service with runtime kind = \"command\"");
        };
        // The environment is INHERITED_ENV's variables, then `pass_env`'s and `env`'s; what is
        // not one of the standard ones came from those two.
        let secrets = mask_order(
            service
                .runtime
                .env
                .iter()
                .filter(|(name, _)| !INHERITED_ENV.contains(&name.as_str()))
                .map(|(_, value)| value.clone()),
        );
        Self {
            prepare: prepare.clone(),
            start: start.clone(),
            stop: stop.clone(),
            env: service.runtime.env.clone(),
            secrets,
            service: service.name.to_string(),
            timeout: service.runtime.stop_timeout.get(),
            working_dir,
            started: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs a process runtime's `prepare` on this machine as the command runtime runs its own:
    /// the same environment, log (`prepare.log`), time limit and masked failure.
    pub fn for_prepare(service: &ServiceSettings, working_dir: PathBuf, prepare: String) -> Self {
        let mut runtime = Self::new(
            &ServiceSettings {
                runtime: crate::settings::RuntimeSettings {
                    kind: RuntimeKind::Command {
                        prepare: Some(prepare),
                        start: String::new(),
                        stop: String::new(),
                    },
                    ..service.runtime.clone()
                },
                ..service.clone()
            },
            working_dir,
        );
        runtime.start.clear();
        runtime
    }

    /// Runs `script` with `/bin/sh -c` in its own process group, its stderr appended to
    /// `<working_dir>/<log>.log`, and waits for the shell (not for what it left running) for
    /// at most `limit`; then kills the whole group. On failure, says how it ended and the last
    /// lines of its stderr, masked.
    ///
    /// Cancellation-safe: dropping the future kills the command's process group, as a timeout
    /// does.
    async fn run(
        &self,
        step: Step,
        script: &str,
        log: &str,
        env: &[(&str, String)],
        limit: Duration,
    ) -> Result<(), String> {
        files::create_private_dir(&self.working_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.working_dir.display()))?;
        let log_path = self.working_dir.join(format!("{log}.log"));
        let cannot_log = |error: io::Error| format!("cannot open {}: {error}", log_path.display());
        let mut stderr = files::open_log(&log_path).map_err(cannot_log)?;
        // Where each run begins, for a reader of the log; failing to write it is no reason not
        // to run.
        let _ = writeln!(
            stderr,
            "[baton] {step}{}",
            env.iter()
                .map(|(name, value)| format!(" {name}={value}"))
                .collect::<String>()
        );
        let from = stderr.metadata().map_err(cannot_log)?.len();

        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .current_dir(&self.working_dir)
            .env_clear()
            .envs(&self.env)
            .env("BATON_SERVICE", &self.service)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own group, whose id is the shell's PID: a timeout ends everything it started.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
        let mut group = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                // The shell is reaped; what it left in the background (a daemon) is the point.
                group.disarm();
                status.map_err(|e| format!("cannot wait for {step}: {e}"))?
            }
            Err(_) => {
                drop(group);
                let _ = child.wait().await;
                return Err(with_tail(
                    format!(
                        "{step} did not finish within {}; Baton killed it and everything in its \
                         process group",
                        humantime::format_duration(limit)
                    ),
                    self.stderr_tail(&log_path, from),
                ));
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(with_tail(
                format!("{step} {}", describe_exit(status)),
                self.stderr_tail(&log_path, from),
            ))
        }
    }

    /// The last lines the command wrote to its log from byte `from` on, masked; `None` when it
    /// wrote nothing (or the log cannot be read, which the log's own errors show).
    fn stderr_tail(&self, log_path: &Path, from: u64) -> Option<String> {
        let read = || -> io::Result<(Vec<u8>, bool)> {
            let mut file = File::open(log_path)?;
            let end = file.metadata()?.len();
            let start = from.max(end.saturating_sub(STDERR_WINDOW));
            file.seek(SeekFrom::Start(start))?;
            let mut bytes = Vec::new();
            file.take(end.saturating_sub(start))
                .read_to_end(&mut bytes)?;
            Ok((bytes, start > from))
        };
        match read() {
            Ok((bytes, cut)) => tail(&bytes, cut, &self.secrets),
            Err(error) => {
                tracing::warn!(log = %log_path.display(), %error, "cannot read a failed command's stderr back");
                None
            }
        }
    }

    fn backend_env(
        backend: &BackendSpec,
        version: Option<&Version>,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("BATON_BACKEND", backend.name.to_string()),
            ("BATON_PORT", backend.address.port().to_string()),
        ];
        if let Some(version) = version {
            env.push(("BATON_VERSION", version.to_string()));
        }
        env
    }
}

/// The values a failed command's stderr is masked with: none shorter than [`MASK_MIN_LEN`],
/// longest first so a value holding another is masked whole.
pub(super) fn mask_order(values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut secrets: Vec<String> = values
        .into_iter()
        .filter(|value| value.len() >= MASK_MIN_LEN)
        .collect();
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

/// One line of a log with every value in `secrets` (in [`mask_order`]) replaced by [`MASK`].
pub(super) fn mask_line(mut line: String, secrets: &[String]) -> String {
    for secret in secrets {
        if line.contains(secret.as_str()) {
            line = line.replace(secret.as_str(), MASK);
        }
    }
    line
}

/// Kills a command's process group when dropped while armed, so a command that timed out, or
/// whose step was cancelled, leaves nothing running.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // Until the shell is reaped its PID names this group and no other.
            let _ = signal::killpg(group, Signal::SIGKILL);
        }
    }
}

/// "exited with status 3", or "was killed by signal 9 (SIGKILL)".
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(number) = status.signal() {
        match Signal::try_from(number) {
            Ok(signal) => format!("was killed by signal {number} ({signal})"),
            Err(_) => format!("was killed by signal {number}"),
        }
    } else {
        format!("ended with {status}")
    }
}

pub(super) fn with_tail(head: String, tail: Option<String>) -> String {
    match tail {
        Some(tail) => format!("{head}: {tail}"),
        None => format!("{head}, with nothing on stderr"),
    }
}

/// The last [`STDERR_LINES`] lines (at most [`STDERR_BYTES`]) of `bytes`, with every secret
/// replaced by [`MASK`]; `None` if there is nothing but blanks. `cut` says `bytes` begins in
/// the middle of the output, perhaps inside a secret: that partial start is dropped first.
pub(super) fn tail(bytes: &[u8], cut: bool, secrets: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut text: &str = &text;
    if cut {
        // A secret cut in two at the window's start would escape the mask: drop as many bytes
        // as the longest secret has, then the rest of that line if another one follows.
        let mut at = secrets.first().map_or(0, String::len).min(text.len());
        while !text.is_char_boundary(at) {
            at += 1;
        }
        text = &text[at..];
        if let Some(newline) = text.find('\n')
            && !text[newline + 1..].trim().is_empty()
        {
            text = &text[newline + 1..];
        }
    }
    let mut masked = text.to_owned();
    for secret in secrets {
        masked = masked.replace(secret.as_str(), MASK);
    }
    let masked = masked.trim();
    if masked.is_empty() {
        return None;
    }
    let lines: Vec<&str> = masked.lines().collect();
    let last = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
    if last.len() <= STDERR_BYTES {
        return Some(last);
    }
    let mut at = last.len() - STDERR_BYTES;
    while !last.is_char_boundary(at) {
        at += 1;
    }
    Some(format!("…{}", &last[at..]))
}

#[async_trait]
impl Runtime for CommandRuntime {
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        let Some(script) = &self.prepare else {
            return Ok(());
        };
        self.run(
            Step::Prepare,
            script,
            "prepare",
            &[("BATON_VERSION", version.to_string())],
            self.timeout.max(Duration::from_secs(60)),
        )
        .await
        .map_err(|reason| RuntimeError::Prepare {
            version: version.to_string(),
            reason,
        })
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        self.run(
            Step::Start,
            &self.start,
            backend.name.as_str(),
            &Self::backend_env(backend, Some(version)),
            self.timeout,
        )
        .await
        .map_err(|reason| RuntimeError::Start {
            backend: backend.name.to_string(),
            reason,
        })?;
        self.started
            .lock()
            .expect("not poisoned")
            .insert(instance_key(backend), version.clone());
        Ok(())
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        let version = self
            .started
            .lock()
            .expect("not poisoned")
            .get(&instance_key(backend))
            .cloned();
        self.run(
            Step::Stop,
            &self.stop,
            backend.name.as_str(),
            &Self::backend_env(backend, version.as_ref()),
            self.timeout,
        )
        .await
        .map_err(|reason| RuntimeError::Stop {
            backend: backend.name.to_string(),
            reason,
        })?;
        self.started
            .lock()
            .expect("not poisoned")
            .remove(&instance_key(backend));
        Ok(())
    }

    /// A command runtime cannot see the processes: it reports what it last started, and
    /// otherwise assumes the backend runs (its health check tells the truth).
    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        let version = self
            .started
            .lock()
            .expect("not poisoned")
            .get(&instance_key(backend))
            .cloned();
        match version {
            Some(version) => Ok(BackendRun::Running { version, pid: None }),
            None => Err(RuntimeError::Other(
                "the command runtime does not know what runs on this backend".into(),
            )),
        }
    }

    /// The end of `<working_dir>/<backend>.log`: the start and stop commands' stderr, masked.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        let path = self
            .working_dir
            .join(format!("{}.log", backend.name.as_str()));
        let secrets = self.secrets.clone();
        files::local_tail(path, lines, move |line| mask_line(line, &secrets)).await
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::settings::{EnvOverrides, Settings};

    /// A configuration of one service `api` with one backend `s1` and this `[service.runtime]`
    /// body (after `kind = "command"`).
    fn config(runtime: &str) -> String {
        format!(
            r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:/x"]
[[service]]
name = "api"
load_balancer = "edge"
[service.runtime]
kind = "command"
initial_version = "v1"
{runtime}
[[service.backend]]
name = "s1"
address = "127.0.0.1:18001"
"#
        )
    }

    fn runtime(dir: &std::path::Path) -> CommandRuntime {
        let text = config(&format!(
            r#"prepare = 'echo "prepared $BATON_VERSION" >> {log}'
start = 'printf "%s\n" "start $BATON_BACKEND $BATON_PORT $BATON_VERSION" >> {log}'
stop = 'echo "stop $BATON_BACKEND" >> {log}; test "$BATON_BACKEND" != s2 || {{ echo nope >&2; exit 4; }}'"#,
            log = dir.join("log").display()
        ));
        let settings =
            Settings::parse(&text, &dir.join("baton.toml"), &EnvOverrides::default()).unwrap();
        CommandRuntime::new(&settings.services[0], dir.join("work"))
    }

    fn spec(name: &str) -> BackendSpec {
        BackendSpec {
            service: crate::domain::ServiceName::parse("api").unwrap(),
            name: crate::domain::BackendName::parse(name).unwrap(),
            address: crate::domain::BackendAddr::parse("127.0.0.1:18001").unwrap(),
            slot: crate::domain::Slot::Address,
        }
    }

    #[tokio::test]
    async fn both_instances_of_a_surge_are_told_apart_by_their_port_and_tracked_apart() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let home = spec("s1");
        let surge = BackendSpec {
            address: crate::domain::BackendAddr::parse("127.0.0.1:18101").unwrap(),
            slot: crate::domain::Slot::SurgeAddress,
            ..spec("s1")
        };
        let v = |v: &str| Version::parse(v).unwrap();
        runtime.start(&home, &v("v1")).await.unwrap();
        runtime.start(&surge, &v("v2")).await.unwrap();
        runtime.stop(&home).await.unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("log")).unwrap(),
            "start s1 18001 v1\nstart s1 18101 v2\nstop s1\n"
        );
        assert!(
            matches!(runtime.status(&surge).await, Ok(BackendRun::Running { version, .. }) if version == v("v2")),
            "retiring the old instance forgets only it"
        );
        assert!(runtime.status(&home).await.is_err());
    }

    #[tokio::test]
    async fn commands_see_values_only_through_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let version = Version::parse("v2.1").unwrap();
        runtime.prepare(&version).await.unwrap();
        runtime.start(&spec("s1"), &version).await.unwrap();
        assert!(
            matches!(runtime.status(&spec("s1")).await.unwrap(), BackendRun::Running { version: v, .. } if v.as_str() == "v2.1")
        );
        runtime.stop(&spec("s1")).await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "prepared v2.1\nstart s1 18001 v2.1\nstop s1\n");
    }

    #[tokio::test]
    async fn commands_get_only_the_environment_the_settings_give() {
        // Cargo sets this for every test process: it stands for whatever Baton's own
        // environment holds (its token, webhook secrets) that no backend should see.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let text = config(&format!(
            r#"start = 'env | sort > {out}'
stop = 'true'
pass_env = ["SHARED_CACHE"]
env = {{ APP_MODE = "prod" }}"#,
            out = out.display()
        ));
        let baton_env = |name: &str| match name {
            "PATH" => Some("/usr/bin:/bin".to_owned()),
            "SHARED_CACHE" => Some("/var/cache/x".to_owned()),
            "API_WEBHOOK_SECRET" => Some("hush".to_owned()),
            _ => None,
        };
        let settings = Settings::parse_with_secrets(
            &text,
            &dir.path().join("baton.toml"),
            &EnvOverrides::default(),
            &baton_env,
        )
        .unwrap();
        let runtime = CommandRuntime::new(&settings.services[0], dir.path().join("work"));
        runtime
            .start(&spec("s1"), &Version::parse("v2").unwrap())
            .await
            .unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        let names: Vec<&str> = env
            .lines()
            .filter_map(|line| line.split('=').next())
            .filter(|name| !["PWD", "SHLVL", "_"].contains(name))
            .collect();
        assert_eq!(
            names,
            [
                "APP_MODE",
                "BATON_BACKEND",
                "BATON_PORT",
                "BATON_SERVICE",
                "BATON_VERSION",
                "PATH",
                "SHARED_CACHE"
            ],
            "{env}"
        );
        assert!(env.contains("SHARED_CACHE=/var/cache/x\n"), "{env}");
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let error = runtime(dir.path())
            .stop(&spec("s2"))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(error, "cannot stop s2: stop exited with status 4: nope");
        // The whole stderr is kept in the backend's log, for Baton's user only.
        let log = dir.path().join("work").join("s2.log");
        assert!(fs::read_to_string(&log).unwrap().ends_with("\nnope\n"));
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&dir.path().join("work")), 0o700);
    }

    fn mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A runtime for `config(body)`, where the environment Baton was started with holds
    /// `SHARED_TOKEN` (for `pass_env`).
    fn runtime_for(dir: &std::path::Path, body: &str) -> CommandRuntime {
        let baton_env = |name: &str| match name {
            "PATH" => Some("/usr/bin:/bin".to_owned()),
            "SHARED_TOKEN" => Some("tok-from-batons-env".to_owned()),
            _ => None,
        };
        let settings = Settings::parse_with_secrets(
            &config(body),
            &dir.join("baton.toml"),
            &EnvOverrides::default(),
            &baton_env,
        )
        .unwrap();
        CommandRuntime::new(&settings.services[0], dir.join("work"))
    }

    /// Kills, on drop, the process whose PID a test command wrote to `path`.
    struct KillPidIn(std::path::PathBuf);

    impl Drop for KillPidIn {
        fn drop(&mut self) {
            if let Ok(text) = fs::read_to_string(&self.0)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// Whether `pid` is gone (or a zombie) within five seconds.
    async fn gone(pid: i32) -> bool {
        for _ in 0..250 {
            let state = fs::read_to_string(format!("/proc/{pid}/stat"));
            if state.is_err() || state.is_ok_and(|text| text.contains(") Z ")) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_failed_step_shows_neither_the_script_nor_the_secrets_it_printed() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime_for(
            dir.path(),
            r#"start = 'PGPASSWORD=Lit3ral-Passw0rd true; echo "connecting as $DB_USER:$DB_PASSWORD with $SHARED_TOKEN ($APP_MODE)" >&2; echo "giving up" >&2; exit 3'
stop = 'true'
pass_env = ["SHARED_TOKEN"]
env = { DB_USER = "app", DB_PASSWORD = "hunter2-db-secret", APP_MODE = "on" }"#,
        );
        let error = runtime
            .start(&spec("s1"), &Version::parse("v2").unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "cannot start s1: start exited with status 3: connecting as ***:*** with *** (on)\n\
             giving up"
        );
        // The log the rollout page shows is masked the same way.
        let tail = runtime.log_tail(&spec("s1"), 10).await.unwrap().unwrap();
        assert_eq!(
            tail.lines,
            [
                "[baton] start BATON_BACKEND=s1 BATON_PORT=18001 BATON_VERSION=v2",
                "connecting as ***:*** with *** (on)",
                "giving up"
            ]
        );
        assert!(tail.source.ends_with("/s1.log"), "{}", tail.source);
    }

    #[tokio::test]
    async fn a_start_that_leaves_a_daemon_behind_returns_when_the_shell_does() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("daemon.pid");
        let _cleanup = KillPidIn(pid_file.clone());
        let runtime = runtime_for(
            dir.path(),
            &format!(
                r#"start = 'sleep 60 & echo $! > {pid}; echo started >&2'
stop = 'kill "$(cat {pid})"'
stop_timeout = "20s""#,
                pid = pid_file.display()
            ),
        );
        let started = std::time::Instant::now();
        runtime
            .start(&spec("s1"), &Version::parse("v2").unwrap())
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "start waited {:?} for the daemon",
            started.elapsed()
        );
        // The daemon runs on (its stderr is the log, not a pipe that closed).
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            fs::metadata(format!("/proc/{pid}")).is_ok(),
            "the daemon {pid} did not survive its start"
        );
        runtime.stop(&spec("s1")).await.unwrap();
        assert!(gone(pid).await);
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let _cleanup = KillPidIn(pid_file.clone());
        let runtime = runtime_for(
            dir.path(),
            &format!(
                r#"start = 'sleep 60 & echo $! > {pid}; echo "waiting for $SHARED_TOKEN" >&2; wait'
stop = 'true'
pass_env = ["SHARED_TOKEN"]
stop_timeout = "1s""#,
                pid = pid_file.display()
            ),
        );
        let error = runtime
            .start(&spec("s1"), &Version::parse("v2").unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "cannot start s1: start did not finish within 1s; Baton killed it and everything \
             in its process group: waiting for ***"
        );
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(pid).await, "the command's child {pid} outlived it");
    }

    /// The peak of this process's resident memory, in KiB.
    fn peak_rss_kib() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_flood_on_stderr_is_neither_held_in_memory_nor_shown_whole() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime_for(
            dir.path(),
            r#"start = 'yes "a line of noise" | head -c 50000000 >&2; echo "the real reason" >&2; exit 1'
stop = 'true'"#,
        );
        let before = peak_rss_kib();
        let error = runtime
            .start(&spec("s1"), &Version::parse("v2").unwrap())
            .await
            .unwrap_err()
            .to_string();
        let grown = peak_rss_kib().saturating_sub(before);
        // Reading the 50 MB would take at least that much; other tests running meanwhile take
        // far less than this.
        assert!(grown < 32 * 1024, "peak memory grew by {grown} KiB");
        assert!(error.len() <= 200 + STDERR_BYTES, "{} bytes", error.len());
        assert_eq!(error.lines().count(), STDERR_LINES);
        assert!(
            error.starts_with("cannot start s1: start exited with status 1: a line of noise\n")
                && error.ends_with("\nthe real reason"),
            "{error}"
        );
    }

    #[test]
    fn a_tail_cut_inside_a_secret_shows_none_of_it() {
        let secrets = vec!["0123456789-secret".to_owned()];
        // The window begins four bytes into the secret.
        let bytes = b"456789-secret is the key\nthen: 0123456789-secret\n";
        assert_eq!(tail(bytes, true, &secrets).as_deref(), Some("then: ***"));
        // A single long line cut at its start keeps what follows the longest secret's length.
        let bytes = b"456789-secret and more of one long line";
        let shown = tail(bytes, true, &secrets).unwrap();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.ends_with("one long line"), "{shown}");
        assert_eq!(tail(b" \n\n", false, &secrets), None);
    }
}
