//! The runtimes for backends on other hosts: Baton's agent script run through a [`Shell`].
//!
//! [`RemoteProcessRuntime`] gives a host's backends what `process.rs` gives this machine's, and
//! [`RemoteCommandRuntime`] what `command.rs` gives: the same records (in the same JSON, so
//! either runtime reads the other's), the same checks before a process is taken for the backend
//! or signalled, the same logs, the same masking of a failed command's stderr. The work is done
//! on the host by the agent (`agent.sh`, embedded in Baton and sent along with each call as
//! `sh -c <agent> baton-agent <op> <args...>`), so nothing has to be installed there beyond
//! POSIX sh, coreutils and util-linux.
//!
//! Each operation of a runtime (`start`, `stop`, `status`, `prepare`) is **one** [`Shell::run`]:
//! over ssh one round trip on an open connection, whatever the agent does on the host. Values
//! (names, versions, environment variables, the configured scripts) reach the agent as arguments
//! only, never pasted into shell text.
//!
//! The agent answers on stdout with the line `@baton-agent 1` (anything before it is a login
//! script's chatter, ignored), then `note` lines that Baton logs, then one result line and for
//! some operations raw bytes (see the head of `agent.sh`). A refusal is `error <why>`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::command::{self, mask_order};
use super::shell::{Shell, ShellError};
use super::{BackendRun, BackendSpec, LogTail, Runtime, RuntimeError};
use crate::domain::{BackendName, ServiceName, Version};
use crate::settings::StopSignal;

/// The agent, as written.
const AGENT: &str = include_str!("agent.sh");

/// The agent as it is sent with every call: without its comment lines and blank lines, which
/// are most of its bytes. (No string in the script spans a line that begins with `#`.)
fn agent_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        AGENT
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !line.is_empty() && !line.starts_with('#')
            })
            .flat_map(|line| [line, "\n"])
            .collect()
    })
}
/// The agent's first line; protocol version 1.
const GREETING: &[u8] = b"@baton-agent 1\n";
/// How long `status`, `check` and `tail` may take on the host (reading a few files in /proc).
const LOOK_LIMIT: Duration = Duration::from_secs(10);
/// How long `start` may take beyond stopping what an exited backend left behind.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long the agent waits for a group to vanish after SIGKILL (its `KILL_GRACE_CS`).
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Added to the time the agent may take on the host, for the round trip and the agent's own
/// start.
const MARGIN: Duration = Duration::from_secs(10);
/// The shortest time limit of a `prepare` script (as command.rs gives it).
const PREPARE_AT_LEAST: Duration = Duration::from_secs(60);
/// How many bytes of the agent's stderr an error quotes when its answer cannot be read.
const STDERR_QUOTE: usize = 400;

/// What the agent is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Status,
    Start,
    Stop,
    Run,
    Check,
    Tail,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Run => "run",
            Self::Check => "check",
            Self::Tail => "tail",
        }
    }
}

/// Why a call of the agent on a host gave no answer Baton can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The host could not be reached, or the agent not run to its end ("host app1 is
    /// unreachable: ...").
    #[error(transparent)]
    Shell(#[from] ShellError),
    /// The agent ran and refused, in its own words ("working directory /srv/x does not exist").
    #[error("on {host}: {message}")]
    Refused { host: String, message: String },
    /// What came back is not an answer of this agent: the host's `sh` failed, or something
    /// else answered. `detail` says what the host printed on stderr.
    #[error("on {host}: Baton's agent gave no answer it can read ({detail})")]
    NoAnswer { host: String, detail: String },
}

/// One answer of the agent: its result line, and the bytes after it.
#[derive(Debug)]
struct Answer {
    host: String,
    result: String,
    payload: Vec<u8>,
}

impl Answer {
    fn unexpected(&self, op: Op) -> AgentError {
        AgentError::NoAnswer {
            host: self.host.clone(),
            detail: format!("unexpected answer to {}: {:?}", op.word(), self.result),
        }
    }
}

/// Runs the agent's `op` once on `shell`, giving it `limit`. Cancellation-safe as far as Baton
/// goes; on the host the agent may run on to its end (every step of it is bounded there).
async fn call(
    shell: &dyn Shell,
    op: Op,
    args: Vec<String>,
    limit: Duration,
) -> Result<Answer, AgentError> {
    let mut argv: Vec<String> = ["sh", "-c", agent_text(), "baton-agent", op.word()]
        .into_iter()
        .map(String::from)
        .collect();
    argv.extend(args);
    let output = shell.run(&argv, limit).await?;
    read_answer(shell.name(), op, &output)
}

/// Finds the agent's answer in `output` (see the module documentation) and logs its notes.
fn read_answer(host: &str, op: Op, output: &Output) -> Result<Answer, AgentError> {
    let no_answer = |what: &str| AgentError::NoAnswer {
        host: host.to_owned(),
        detail: describe_output(what, output),
    };
    let stdout = &output.stdout;
    // The first greeting at the start of a line: what follows may quote a log, which may hold
    // anything, greetings included.
    let start = (0..stdout.len())
        .find(|&at| (at == 0 || stdout[at - 1] == b'\n') && stdout[at..].starts_with(GREETING))
        .map(|at| at + GREETING.len())
        .ok_or_else(|| no_answer("it never started"))?;
    let mut rest = &stdout[start..];
    loop {
        let Some(end) = rest.iter().position(|&byte| byte == b'\n') else {
            return Err(no_answer("it stopped before its result"));
        };
        let line = String::from_utf8_lossy(&rest[..end]);
        rest = &rest[end + 1..];
        if let Some(note) = line.strip_prefix("note ") {
            tracing::info!(host, op = op.word(), "{note}");
            continue;
        }
        if let Some(message) = line.strip_prefix("error ") {
            return Err(AgentError::Refused {
                host: host.to_owned(),
                message: message.to_owned(),
            });
        }
        return Ok(Answer {
            host: host.to_owned(),
            result: line.into_owned(),
            payload: rest.to_vec(),
        });
    }
}

/// "it never started: exit status 127, stderr: sh: not found".
fn describe_output(what: &str, output: &Output) -> String {
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{}", output.status),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() {
        return format!("{what}: {status}, nothing on stderr");
    }
    let mut at = stderr.len().saturating_sub(STDERR_QUOTE);
    while !stderr.is_char_boundary(at) {
        at += 1;
    }
    format!("{what}: {status}, stderr: {}", &stderr[at..])
}

/// A path on the host as the agent gets it. Paths come from the configuration file, which is
/// UTF-8.
fn host_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

fn signal_word(signal: StopSignal) -> &'static str {
    match signal {
        StopSignal::Term => "TERM",
        StopSignal::Int => "INT",
        StopSignal::Quit => "QUIT",
        StopSignal::Hup => "HUP",
        StopSignal::Usr1 => "USR1",
        StopSignal::Usr2 => "USR2",
    }
}

/// `NAME=VALUE` words for the agent; a name env(1) would read differently is refused rather than
/// passed on as some other variable.
fn env_words<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Vec<String>, String> {
    env.into_iter()
        .map(|(name, value)| {
            if name.is_empty() || name.contains('=') {
                Err(format!("environment variable name {name:?} is not valid"))
            } else {
                Ok(format!("{name}={value}"))
            }
        })
        .collect()
}

/// Serializes `start` and `stop` of each backend, as process.rs's `turn`.
#[derive(Default)]
struct Turns(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Turns {
    /// Waits for the backend's turn. Cancellation-safe.
    async fn take(&self, backend: &BackendSpec) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(backend.name.as_str().to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// One configured script for the agent's `run`.
struct Script<'a> {
    /// Which step it is, as messages and the log's marker line name it.
    step: &'a str,
    /// The log's name in the state directory (without `.log`).
    log: &'a str,
    text: &'a str,
    /// Its whole environment beyond the host's inherited variables, `BATON_*` last.
    env: Vec<(&'a str, &'a str)>,
    /// The variables the log's marker line shows (command.rs's `[baton] start BATON_...`).
    shown: Vec<(&'a str, &'a str)>,
    timeout: Duration,
}

/// Runs `script` on the host in its own process group with a clean environment, stderr
/// appended to its log, for at most its timeout (then its whole group is killed); on failure
/// says how it ended and the last lines of its stderr, masked with `secrets`.
async fn run_script(
    shell: &dyn Shell,
    state_dir: &Path,
    secrets: &[String],
    script: Script<'_>,
) -> Result<(), String> {
    let dir = host_path(state_dir);
    let marker: String = std::iter::once(script.step.to_owned())
        .chain(
            script
                .shown
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let mut args = vec![
        dir.clone(),
        script.log.to_owned(),
        marker,
        millis(script.timeout),
        dir,
        "--".to_owned(),
    ];
    args.extend(env_words(script.env)?);
    args.push("--".to_owned());
    args.push(script.text.to_owned());
    let answer = call(shell, Op::Run, args, script.timeout + MARGIN)
        .await
        .map_err(|error| error.to_string())?;
    let mut words = answer.result.split(' ');
    let (head, cut) = match (words.next(), words.next(), words.next()) {
        (Some("ok"), None, None) => return Ok(()),
        (Some("exit"), Some(status), Some(cut)) => {
            (format!("{} exited with status {status}", script.step), cut)
        }
        (Some("timeout"), Some(cut), None) => (
            format!(
                "{} did not finish within {}; Baton killed it and everything in its process \
                 group",
                script.step,
                humantime::format_duration(script.timeout)
            ),
            cut,
        ),
        _ => return Err(answer.unexpected(Op::Run).to_string()),
    };
    Err(command::with_tail(
        head,
        command::tail(&answer.payload, cut == "cut", secrets),
    ))
}

/// What a host says about itself, for `baton check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    /// The state directory as the host resolves it (created when missing), or why it cannot be
    /// created or written to.
    pub state_dir: Result<String, String>,
    /// The host's boot id, or why it cannot be read (then no process can be started there).
    pub boot_id: Result<String, String>,
    /// The tools the agent needs that the host lacks (`setsid`, `timeout`…).
    pub missing_tools: Vec<String>,
    /// Where the program asked about is on the login `PATH`, or why it is not found; `None`
    /// when no program was asked about.
    pub program: Option<Result<String, String>>,
}

impl HostCheck {
    /// What is wrong, one sentence each; empty when Baton can run backends there.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(why) = &self.state_dir {
            problems.push(why.clone());
        }
        if let Err(why) = &self.boot_id {
            problems.push(why.clone());
        }
        if !self.missing_tools.is_empty() {
            problems.push(format!(
                "missing tools: {} (coreutils, util-linux)",
                self.missing_tools.join(", ")
            ));
        }
        if let Some(Err(why)) = &self.program {
            problems.push(why.clone());
        }
        problems
    }
}

/// Asks the host whether `state_dir` can be created and written to, whether its boot id can be
/// read, whether it has the tools the agent needs, and where `program` is on its `PATH` (a
/// program with a `/` is taken relative to the login directory). One agent call. Creates
/// `state_dir` when missing.
pub async fn check(
    shell: &dyn Shell,
    state_dir: &Path,
    program: Option<&str>,
) -> Result<HostCheck, AgentError> {
    let mut args = vec![host_path(state_dir)];
    args.extend(program.map(str::to_owned));
    let answer = call(shell, Op::Check, args, LOOK_LIMIT).await?;
    if answer.result != "facts" {
        return Err(answer.unexpected(Op::Check));
    }
    let text = String::from_utf8_lossy(&answer.payload);
    let mut facts: HashMap<&str, Result<String, String>> = HashMap::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(name), Some(verdict)) = (words.next(), words.next()) else {
            continue;
        };
        let detail = words.next().unwrap_or("").to_owned();
        facts.insert(
            name,
            if verdict == "ok" {
                Ok(detail)
            } else {
                Err(detail)
            },
        );
    }
    let mut fact = |name: &str| {
        facts.remove(name).ok_or_else(|| AgentError::NoAnswer {
            host: answer.host.clone(),
            detail: format!("the check says nothing about {name}"),
        })
    };
    let state_dir = fact("state_dir")?;
    let boot_id = fact("boot_id")?;
    let missing_tools = match fact("tools")? {
        Ok(_) => Vec::new(),
        Err(missing) => missing.split_whitespace().map(str::to_owned).collect(),
    };
    let program = match program {
        Some(_) => Some(fact("program")?),
        None => None,
    };
    Ok(HostCheck {
        state_dir,
        boot_id,
        missing_tools,
        program,
    })
}

/// The last `lines` lines of `backend`'s log in `state_dir` on the host (empty when there is no
/// log). One agent call. The log is what the backend printed: show it only to those who may see
/// the backend's secrets.
pub async fn log_tail(
    shell: &dyn Shell,
    state_dir: &Path,
    backend: &BackendName,
    lines: usize,
) -> Result<String, AgentError> {
    let args = vec![
        host_path(state_dir),
        backend.as_str().to_owned(),
        lines.to_string(),
    ];
    let answer = call(shell, Op::Tail, args, LOOK_LIMIT).await?;
    if answer.result != "tail" {
        return Err(answer.unexpected(Op::Tail));
    }
    Ok(String::from_utf8_lossy(&answer.payload).into_owned())
}

/// Fails `prepare` when the host cannot run backends (or cannot be reached), naming why: what
/// a rollout learns before it touches any backend.
async fn check_for_prepare(shell: &dyn Shell, state_dir: &Path) -> Result<(), String> {
    let facts = check(shell, state_dir, None)
        .await
        .map_err(|error| error.to_string())?;
    let problems = facts.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("on {}: {}", shell.name(), problems.join("; ")))
    }
}

/// How one service's backends on a host are run by a [`RemoteProcessRuntime`].
#[derive(Debug, Clone)]
pub struct RemoteProcessConfig {
    /// The program and its arguments, executed directly (never through a shell). A bare name
    /// is looked up on the backend's `PATH`, a relative path from its working directory.
    pub command: Vec<String>,
    /// Only the explicitly configured variables (`env` and `pass_env`): the host's own values
    /// of `settings::INHERITED_ENV` are added there. `BATON_*` win over these.
    pub env: BTreeMap<String, String>,
    /// The backends' working directory on the host; the login directory when `None`.
    pub working_dir: Option<PathBuf>,
    /// The signal `stop` sends first.
    pub stop_signal: StopSignal,
    /// How long `stop` waits after `stop_signal` before it sends SIGKILL.
    pub stop_timeout: Duration,
    /// The service's state directory on the host (records and logs), relative to the login
    /// directory unless absolute. One per service.
    pub state_dir: PathBuf,
    /// A script `prepare` runs on the host (`sh -c`, in the state directory, with the same
    /// environment, `BATON_SERVICE` and `BATON_VERSION`), fetching an artifact, say.
    pub prepare: Option<String>,
    /// The service, for `prepare`'s `BATON_SERVICE` (backends learn it from their spec).
    pub service: ServiceName,
}

/// A [`Runtime`] that starts each backend as a detached process on a host, through the agent,
/// with process.rs's guarantees there: records, adoption after a Baton restart, boot ids,
/// process groups, leftovers, never signalling a process that failed the checks.
///
/// Invariants: each operation is one [`Shell::run`]; `start` and `stop` of one backend are
/// serialized; a record exists only for a process that was spawned (the agent writes it before
/// the backend is exec'd, so a start cut short started nothing or something recorded).
/// `status` cannot say how a backend ended (the host's init reaps it, not Baton).
pub struct RemoteProcessRuntime {
    shell: Arc<dyn Shell>,
    config: RemoteProcessConfig,
    /// The explicit variables' values, masked in a failed `prepare`'s stderr.
    secrets: Vec<String>,
    turns: Turns,
}

impl RemoteProcessRuntime {
    /// A runtime for one service on the host `shell` reaches. Does no IO.
    pub fn new(shell: Arc<dyn Shell>, config: RemoteProcessConfig) -> Self {
        let secrets = mask_order(config.env.values().cloned());
        Self {
            shell,
            config,
            secrets,
            turns: Turns::default(),
        }
    }

    fn base_args(&self, backend: &BackendSpec) -> Vec<String> {
        vec![
            host_path(&self.config.state_dir),
            backend.service.as_str().to_owned(),
            backend.name.as_str().to_owned(),
        ]
    }
}

#[async_trait]
impl Runtime for RemoteProcessRuntime {
    /// Runs the `prepare` script when there is one; otherwise checks the host can run backends
    /// (reachable, state directory writable, boot id, tools). One agent call.
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        let result = match &self.config.prepare {
            Some(text) => {
                let mut env: Vec<(&str, &str)> = self
                    .config
                    .env
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect();
                env.push(("BATON_SERVICE", self.config.service.as_str()));
                env.push(("BATON_VERSION", version.as_str()));
                let script = Script {
                    step: "prepare",
                    log: "prepare",
                    text,
                    env,
                    shown: vec![("BATON_VERSION", version.as_str())],
                    timeout: self.config.stop_timeout.max(PREPARE_AT_LEAST),
                };
                run_script(
                    self.shell.as_ref(),
                    &self.config.state_dir,
                    &self.secrets,
                    script,
                )
                .await
            }
            None => check_for_prepare(self.shell.as_ref(), &self.config.state_dir).await,
        };
        result.map_err(|reason| RuntimeError::Prepare {
            version: version.to_string(),
            reason,
        })
    }

    /// Starts `version` unless it already runs there (adopted); refuses while another version
    /// runs; stops what an exited backend left in its group first. Returns once the process is
    /// spawned and recorded. One agent call.
    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        let _turn = self.turns.take(backend).await;
        let start_error = |reason: String| RuntimeError::Start {
            backend: backend.name.to_string(),
            reason,
        };
        if self.config.command.is_empty() {
            return Err(start_error("the runtime's command is empty".into()));
        }
        let mut args = self.base_args(backend);
        args.extend([
            version.as_str().to_owned(),
            backend.address.port().to_string(),
            self.config
                .working_dir
                .as_deref()
                .map(host_path)
                .unwrap_or_default(),
            signal_word(self.config.stop_signal).to_owned(),
            millis(self.config.stop_timeout),
            "--".to_owned(),
        ]);
        args.extend(
            env_words(
                self.config
                    .env
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
            .map_err(start_error)?,
        );
        args.push("--".to_owned());
        args.extend(self.config.command.iter().cloned());
        let limit = START_LIMIT + self.config.stop_timeout + KILL_GRACE;
        let answer = call(self.shell.as_ref(), Op::Start, args, limit)
            .await
            .map_err(|error| start_error(error.to_string()))?;
        let words: Vec<&str> = answer.result.split(' ').collect();
        match words.as_slice() {
            ["started", pid] => tracing::info!(
                host = %answer.host,
                service = %backend.service,
                backend = %backend.name,
                %version,
                pid,
                "started backend process"
            ),
            ["running", _, pid] => {
                tracing::debug!(host = %answer.host, backend = %backend.name, %version, pid, "already running");
            }
            _ => return Err(start_error(answer.unexpected(Op::Start).to_string())),
        }
        Ok(())
    }

    /// Sends the stop signal to the backend's process group, SIGKILL after the stop timeout,
    /// and removes the record; what an exited backend left in its group is stopped the same
    /// way. Nothing recorded, or a record naming no process of the backend, is success without
    /// signalling anything. One agent call.
    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        let _turn = self.turns.take(backend).await;
        let stop_error = |reason: String| RuntimeError::Stop {
            backend: backend.name.to_string(),
            reason,
        };
        let mut args = self.base_args(backend);
        args.extend([
            signal_word(self.config.stop_signal).to_owned(),
            millis(self.config.stop_timeout),
        ]);
        let limit = self.config.stop_timeout + KILL_GRACE + MARGIN;
        let answer = call(self.shell.as_ref(), Op::Stop, args, limit)
            .await
            .map_err(|error| stop_error(error.to_string()))?;
        match answer.result.strip_prefix("stopped") {
            Some(how) => {
                tracing::info!(host = %answer.host, backend = %backend.name, how = how.trim(), "backend process stopped");
                Ok(())
            }
            None => Err(stop_error(answer.unexpected(Op::Stop).to_string())),
        }
    }

    /// Running (version and PID) while the recorded process is alive on the host and still
    /// the one Baton started; otherwise stopped, with no exit status (the host reaped it).
    /// Reads only. One agent call.
    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        let status_error = |error: AgentError| {
            RuntimeError::Other(format!(
                "cannot tell what runs on {}: {error}",
                backend.name
            ))
        };
        let answer = call(
            self.shell.as_ref(),
            Op::Status,
            self.base_args(backend),
            LOOK_LIMIT,
        )
        .await
        .map_err(status_error)?;
        let mut words = answer.result.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("running"), Some(version), Some(pid)) => {
                match (Version::parse(version), pid.parse()) {
                    (Ok(version), Ok(pid)) => Ok(BackendRun::Running {
                        version,
                        pid: Some(pid),
                    }),
                    _ => Err(status_error(answer.unexpected(Op::Status))),
                }
            }
            (Some("stopped"), first, rest) => {
                let why = [first, rest].into_iter().flatten().collect::<Vec<_>>();
                tracing::debug!(host = %answer.host, backend = %backend.name, why = why.join(" "), "backend is not running");
                Ok(BackendRun::Stopped { exit: None })
            }
            _ => Err(status_error(answer.unexpected(Op::Status))),
        }
    }

    /// The end of `<state_dir>/<backend>.log` on the host: what the backend printed.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        tail_on_host(
            self.shell.as_ref(),
            &self.config.state_dir,
            backend,
            lines,
            &[],
        )
        .await
    }
}

/// [`log_tail`] as a runtime answers it: `None` for an empty or missing log, each line masked
/// with `secrets`, the source naming the host.
async fn tail_on_host(
    shell: &dyn Shell,
    state_dir: &Path,
    backend: &BackendSpec,
    lines: usize,
    secrets: &[String],
) -> Result<Option<LogTail>, RuntimeError> {
    let text = log_tail(shell, state_dir, &backend.name, lines)
        .await
        .map_err(|error| {
            RuntimeError::Other(format!("cannot read {}'s log: {error}", backend.name))
        })?;
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(LogTail {
        source: format!(
            "{}/{}.log on host {}",
            host_path(state_dir),
            backend.name,
            shell.name()
        ),
        lines: text
            .lines()
            .map(|line| command::mask_line(line.to_owned(), secrets))
            .collect(),
    }))
}

/// How one service's backends on a host are run by a [`RemoteCommandRuntime`].
#[derive(Debug, Clone)]
pub struct RemoteCommandConfig {
    pub prepare: Option<String>,
    pub start: String,
    pub stop: String,
    /// Only the explicitly configured variables (`env` and `pass_env`); the host's own values
    /// of `settings::INHERITED_ENV` are added there.
    pub env: BTreeMap<String, String>,
    /// The values masked as `***` in a failed command's stderr (those of `env` and `pass_env`).
    pub secrets: Vec<String>,
    pub service: ServiceName,
    /// Each command's time limit (at least a minute for `prepare`).
    pub timeout: Duration,
    /// The service's state directory on the host: the commands' working directory and where
    /// their logs are.
    pub state_dir: PathBuf,
}

/// A [`Runtime`] that runs the user's commands on a host through the agent, as command.rs does
/// here: values only as `BATON_*` variables, each command in its own process group with its
/// stderr in a log, killed with its group at the timeout, a failure reported with the masked
/// end of its stderr. Like command.rs, `status` reports what this runtime started (no call).
/// Each `prepare`, `start` and `stop` is one [`Shell::run`].
pub struct RemoteCommandRuntime {
    shell: Arc<dyn Shell>,
    config: RemoteCommandConfig,
    /// `config.secrets` in masking order.
    secrets: Vec<String>,
    started: Mutex<BTreeMap<String, Version>>,
    turns: Turns,
}

impl RemoteCommandRuntime {
    /// A runtime for one service on the host `shell` reaches. Does no IO.
    pub fn new(shell: Arc<dyn Shell>, config: RemoteCommandConfig) -> Self {
        let secrets = mask_order(config.secrets.iter().cloned());
        Self {
            shell,
            config,
            secrets,
            started: Mutex::new(BTreeMap::new()),
            turns: Turns::default(),
        }
    }

    fn started(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Version>> {
        self.started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `text` as `step` with the configured environment, `BATON_SERVICE` and `shown`.
    async fn run(
        &self,
        step: &str,
        log: &str,
        text: &str,
        shown: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(), String> {
        let mut env: Vec<(&str, &str)> = self
            .config
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        env.push(("BATON_SERVICE", self.config.service.as_str()));
        env.extend(shown.iter().copied());
        let script = Script {
            step,
            log,
            text,
            env,
            shown: shown.to_vec(),
            timeout,
        };
        run_script(
            self.shell.as_ref(),
            &self.config.state_dir,
            &self.secrets,
            script,
        )
        .await
    }
}

#[async_trait]
impl Runtime for RemoteCommandRuntime {
    /// Runs `prepare` when configured; otherwise checks the host can run commands (reachable,
    /// state directory writable, tools). One agent call.
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        let result = match &self.config.prepare {
            Some(text) => {
                self.run(
                    "prepare",
                    "prepare",
                    text,
                    &[("BATON_VERSION", version.as_str())],
                    self.config.timeout.max(PREPARE_AT_LEAST),
                )
                .await
            }
            None => check_for_prepare(self.shell.as_ref(), &self.config.state_dir).await,
        };
        result.map_err(|reason| RuntimeError::Prepare {
            version: version.to_string(),
            reason,
        })
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        let _turn = self.turns.take(backend).await;
        let port = backend.address.port().to_string();
        let shown = [
            ("BATON_BACKEND", backend.name.as_str()),
            ("BATON_PORT", port.as_str()),
            ("BATON_VERSION", version.as_str()),
        ];
        self.run(
            "start",
            backend.name.as_str(),
            &self.config.start,
            &shown,
            self.config.timeout,
        )
        .await
        .map_err(|reason| RuntimeError::Start {
            backend: backend.name.to_string(),
            reason,
        })?;
        self.started()
            .insert(backend.name.to_string(), version.clone());
        Ok(())
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        let _turn = self.turns.take(backend).await;
        let version = self.started().get(backend.name.as_str()).cloned();
        let port = backend.address.port().to_string();
        let mut shown = vec![
            ("BATON_BACKEND", backend.name.as_str()),
            ("BATON_PORT", port.as_str()),
        ];
        if let Some(version) = &version {
            shown.push(("BATON_VERSION", version.as_str()));
        }
        self.run(
            "stop",
            backend.name.as_str(),
            &self.config.stop,
            &shown,
            self.config.timeout,
        )
        .await
        .map_err(|reason| RuntimeError::Stop {
            backend: backend.name.to_string(),
            reason,
        })?;
        self.started().remove(backend.name.as_str());
        Ok(())
    }

    /// What this runtime last started there (a command runtime cannot see the processes).
    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        match self.started().get(backend.name.as_str()).cloned() {
            Some(version) => Ok(BackendRun::Running { version, pid: None }),
            None => Err(RuntimeError::Other(
                "the command runtime does not know what runs on this backend".into(),
            )),
        }
    }

    /// The end of `<state_dir>/<backend>.log` on the host: the commands' stderr, masked.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        tail_on_host(
            self.shell.as_ref(),
            &self.config.state_dir,
            backend,
            lines,
            &self.secrets,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use nix::sys::signal::{self, Signal};
    use nix::unistd::Pid;

    use super::*;
    use crate::domain::BackendAddr;
    use crate::drivers::command::STDERR_WINDOW;
    use crate::drivers::files::ROTATE_LOG_AT;
    use crate::drivers::process::{ProcessConfig, ProcessRuntime};
    use crate::drivers::shell::LocalShell;
    use crate::settings::INHERITED_ENV;

    const PORT: u16 = 18437;

    /// The state (field 3) and start time (field 22) in `/proc/<pid>/stat`.
    fn stat(pid: u32) -> Option<(char, u64)> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
        Some((
            fields.first()?.chars().next()?,
            fields.get(19)?.parse().ok()?,
        ))
    }

    fn alive(pid: u32) -> bool {
        stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
    }

    /// Whether `pid` is gone (or a zombie) within five seconds.
    async fn gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills, on drop, every process group recorded in `<dir>/state` that is still the one
    /// recorded, the strays (by PID and start time), the processes whose PIDs test commands
    /// wrote to files, and the extra children, even when the test failed halfway.
    struct Cleanup {
        dir: tempfile::TempDir,
        strays: Vec<(u32, u64)>,
        pid_files: Vec<PathBuf>,
        extra: Vec<std::process::Child>,
    }

    impl Cleanup {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
                strays: Vec::new(),
                pid_files: Vec::new(),
                extra: Vec::new(),
            }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn state(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        /// Remembers `pid` (which must be running) to be killed on drop.
        fn stray(&mut self, pid: u32) {
            self.strays.push((pid, stat(pid).expect("running").1));
        }

        /// A file a test command writes a PID to, that PID to be killed on drop.
        fn pid_file(&mut self, name: &str) -> PathBuf {
            let path = self.path().join(name);
            self.pid_files.push(path.clone());
            path
        }
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Ok(entries) = fs::read_dir(self.state()) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|ext| ext == "json")
                        && let Ok(text) = fs::read_to_string(&path)
                        && let Ok(record) = serde_json::from_str::<serde_json::Value>(&text)
                        && let (Some(pid), Some(start)) =
                            (record["pid"].as_u64(), record["start_time"].as_u64())
                        && stat(pid as u32).is_some_and(|(_, started)| started == start)
                    {
                        let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
            }
            for &(pid, start) in &self.strays {
                if stat(pid).is_some_and(|(_, started)| started == start) {
                    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            for path in &self.pid_files {
                if let Ok(text) = fs::read_to_string(path)
                    && let Ok(pid) = text.trim().parse::<i32>()
                {
                    let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            for child in &mut self.extra {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Runs the agent with bash in POSIX mode: what `sh` is on RHEL hosts (dash on Debian's,
    /// which [`LocalShell`] runs here).
    #[derive(Debug)]
    struct PosixBash;

    #[async_trait]
    impl Shell for PosixBash {
        fn name(&self) -> &str {
            "bash"
        }

        async fn run(&self, argv: &[String], limit: Duration) -> Result<Output, ShellError> {
            assert_eq!(argv[0], "sh");
            let mut argv = argv.to_vec();
            argv.splice(0..1, ["bash".to_owned(), "--posix".to_owned()]);
            LocalShell.run(&argv, limit).await
        }
    }

    /// Counts the programs run through it (each one an ssh round trip on a real host).
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Counting {
        fn runs(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Shell for Counting {
        fn name(&self) -> &str {
            LocalShell.name()
        }

        async fn run(&self, argv: &[String], limit: Duration) -> Result<Output, ShellError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            LocalShell.run(argv, limit).await
        }
    }

    /// A host ssh cannot reach.
    #[derive(Debug)]
    struct Unreachable;

    const REFUSED: &str = "ssh: connect to host app1 port 22: Connection refused";

    #[async_trait]
    impl Shell for Unreachable {
        fn name(&self) -> &str {
            "app1"
        }

        async fn run(&self, _argv: &[String], _limit: Duration) -> Result<Output, ShellError> {
            Err(ShellError::Unreachable {
                host: "app1".into(),
                reason: REFUSED.into(),
            })
        }
    }

    fn config(cleanup: &Cleanup, command: &[&str]) -> RemoteProcessConfig {
        RemoteProcessConfig {
            command: command.iter().map(|word| word.to_string()).collect(),
            env: BTreeMap::new(),
            working_dir: None,
            stop_signal: StopSignal::Term,
            stop_timeout: Duration::from_secs(5),
            state_dir: cleanup.state(),
            prepare: None,
            service: ServiceName::parse("api").unwrap(),
        }
    }

    fn local(config: RemoteProcessConfig) -> RemoteProcessRuntime {
        RemoteProcessRuntime::new(Arc::new(LocalShell), config)
    }

    fn backend(name: &str) -> BackendSpec {
        BackendSpec {
            service: ServiceName::parse("api").unwrap(),
            name: BackendName::parse(name).unwrap(),
            address: BackendAddr::parse(&format!("127.0.0.1:{PORT}")).unwrap(),
            slot: crate::domain::Slot::Address,
        }
    }

    fn version(value: &str) -> Version {
        Version::parse(value).unwrap()
    }

    fn running_pid(run: BackendRun, expected: &Version) -> u32 {
        match run {
            BackendRun::Running {
                version,
                pid: Some(pid),
            } if version == *expected => pid,
            other => panic!("expected version {expected} running, got {other:?}"),
        }
    }

    /// Waits until `path` holds a whole line (a test backend's "I am ready").
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

    async fn wait_stopped(runtime: &RemoteProcessRuntime, backend: &BackendSpec) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime.status(backend).await.unwrap() != (BackendRun::Stopped { exit: None }) {
            assert!(Instant::now() < deadline, "{} never stopped", backend.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn boot_id() -> String {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The INHERITED_ENV names this test process has: what the agent, run by [`LocalShell`],
    /// finds in "the host's" environment.
    fn inherited_here() -> BTreeSet<String> {
        INHERITED_ENV
            .iter()
            .filter(|name| std::env::var_os(name).is_some())
            .map(|name| name.to_string())
            .collect()
    }

    async fn start_adopt_stop(shell: Arc<dyn Shell>) {
        let mut cleanup = Cleanup::new();
        let ready = cleanup.path().join("ready");
        // The backend forks a worker into its group and says which PIDs they have.
        let script = format!(
            "sleep 60 & echo \"$$ $!\" > {r}.tmp && mv {r}.tmp {r}; wait",
            r = ready.display()
        );
        let config = config(&cleanup, &["/bin/sh", "-c", &script]);
        let state = cleanup.state();
        let (b1, v1) = (backend("b1"), version("v1"));
        let first = RemoteProcessRuntime::new(shell.clone(), config.clone());
        first.start(&b1, &v1).await.unwrap();
        let pids: Vec<u32> = wait_for_file(&ready)
            .await
            .split_whitespace()
            .map(|pid| pid.parse().unwrap())
            .collect();
        let (leader, worker) = (pids[0], pids[1]);
        cleanup.stray(worker);
        assert_eq!(
            running_pid(first.status(&b1).await.unwrap(), &v1),
            leader,
            "the record names the backend itself (setsid did not fork another process)"
        );
        let record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(state.join("b1.json")).unwrap()).unwrap();
        assert_eq!(
            record,
            serde_json::json!({
                "pid": leader,
                "start_time": stat(leader).unwrap().1,
                "boot_id": boot_id(),
                "version": "v1",
            })
        );
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("b1.json")), 0o600);
        assert_eq!(mode(&state.join("b1.log")), 0o600);
        assert_eq!(
            fs::read_to_string(state.join("b1.log")).unwrap(),
            "[baton] starting version v1 of b1\n"
        );
        drop(first);

        // What a restarted Baton does.
        let second = RemoteProcessRuntime::new(shell, config);
        assert_eq!(running_pid(second.status(&b1).await.unwrap(), &v1), leader);
        second.start(&b1, &v1).await.unwrap();
        assert_eq!(
            running_pid(second.status(&b1).await.unwrap(), &v1),
            leader,
            "no second process"
        );
        let error = second
            .start(&b1, &version("v2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot start b1: on ")
                && error.ends_with(&format!(
                    "version v1 is still running there (pid {leader}); stop it first"
                )),
            "{error}"
        );

        second.stop(&b1).await.unwrap();
        assert!(gone(leader).await, "backend {leader} still alive");
        assert!(gone(worker).await, "its worker {worker} still alive");
        assert!(!state.join("b1.json").exists());
        assert_eq!(
            second.status(&b1).await.unwrap(),
            BackendRun::Stopped { exit: None }
        );
        second.stop(&b1).await.unwrap();
    }

    #[tokio::test]
    async fn a_backend_on_a_host_is_adopted_after_a_restart_and_stopped_with_its_group() {
        start_adopt_stop(Arc::new(LocalShell)).await;
    }

    #[tokio::test]
    async fn the_agent_does_the_same_under_bash_as_sh() {
        start_adopt_stop(Arc::new(PosixBash)).await;
    }

    #[tokio::test]
    async fn records_are_shared_with_the_local_process_runtime() {
        let cleanup = Cleanup::new();
        let remote = local(config(&cleanup, &["/bin/sleep", "60"]));
        let here = ProcessRuntime::new(ProcessConfig {
            command: vec!["/bin/sleep".into(), "60".into()],
            env: INHERITED_ENV
                .iter()
                .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
                .collect(),
            working_dir: None,
            stop_signal: StopSignal::Term,
            stop_timeout: Duration::from_secs(5),
            state_dir: cleanup.state(),
        });
        let (b1, b2, v1) = (backend("b1"), backend("b2"), version("v1"));

        here.start(&b1, &v1).await.unwrap();
        let pid = running_pid(here.status(&b1).await.unwrap(), &v1);
        assert_eq!(running_pid(remote.status(&b1).await.unwrap(), &v1), pid);
        remote.start(&b1, &v1).await.unwrap();
        assert_eq!(running_pid(remote.status(&b1).await.unwrap(), &v1), pid);
        remote.stop(&b1).await.unwrap();
        assert!(gone(pid).await);
        assert!(matches!(
            here.status(&b1).await.unwrap(),
            BackendRun::Stopped { .. }
        ));

        remote.start(&b2, &v1).await.unwrap();
        let pid = running_pid(remote.status(&b2).await.unwrap(), &v1);
        assert_eq!(running_pid(here.status(&b2).await.unwrap(), &v1), pid);
        here.stop(&b2).await.unwrap();
        assert!(gone(pid).await);
        assert_eq!(
            remote.status(&b2).await.unwrap(),
            BackendRun::Stopped { exit: None }
        );
    }

    #[tokio::test]
    async fn a_record_from_another_boot_or_naming_a_reused_pid_is_never_signalled() {
        let mut cleanup = Cleanup::new();
        // A live process with exactly the recorded PID (and start time): what can hold a
        // backend's old PID after a reboot, or after the backend died.
        let bystander = std::process::Command::new("/bin/sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = bystander.id();
        cleanup.extra.push(bystander);
        let start = stat(pid).unwrap().1;
        let state = cleanup.state();
        fs::create_dir_all(&state).unwrap();
        let records = [
            serde_json::json!({
                "pid": pid, "start_time": start,
                "boot_id": "5e1f6a52-0000-4000-8000-000000000000", "version": "v1",
            }),
            serde_json::json!({
                "pid": pid, "start_time": start + 12345, "boot_id": boot_id(), "version": "v1",
            }),
            // A Baton from before boot ids; the bystander lacks the run's BATON_* variables.
            serde_json::json!({"pid": pid, "start_time": start, "version": "v1"}),
        ];
        let runtime = local(config(&cleanup, &["/bin/sleep", "60"]));
        let b1 = backend("b1");
        for record in records {
            fs::write(state.join("b1.json"), record.to_string()).unwrap();
            assert_eq!(
                runtime.status(&b1).await.unwrap(),
                BackendRun::Stopped { exit: None },
                "{record}"
            );
            runtime.stop(&b1).await.unwrap();
            assert!(!state.join("b1.json").exists(), "{record}");

            // Nor is it taken for the running version: a new process starts.
            fs::write(state.join("b1.json"), record.to_string()).unwrap();
            runtime.start(&b1, &version("v1")).await.unwrap();
            let started = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
            assert_ne!(started, pid);
            runtime.stop(&b1).await.unwrap();
            assert!(
                cleanup.extra[0].try_wait().unwrap().is_none(),
                "the bystander was signalled ({record})"
            );
        }
    }

    #[tokio::test]
    async fn a_backend_recorded_without_a_boot_id_is_adopted_by_its_environment() {
        let cleanup = Cleanup::new();
        let config = config(&cleanup, &["/bin/sleep", "60"]);
        let b1 = backend("b1");
        local(config.clone())
            .start(&b1, &version("v1"))
            .await
            .unwrap();
        // Rewrite the record as a Baton from before boot ids wrote it.
        let path = cleanup.state().join("b1.json");
        let mut record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        record.as_object_mut().unwrap().remove("boot_id");
        fs::write(&path, record.to_string()).unwrap();

        let upgraded = local(config);
        let pid = running_pid(upgraded.status(&b1).await.unwrap(), &version("v1"));
        assert_eq!(u64::from(pid), record["pid"].as_u64().unwrap());
        upgraded.stop(&b1).await.unwrap();
        assert!(gone(pid).await);
    }

    #[tokio::test]
    async fn a_backend_ignoring_the_stop_signal_is_killed_after_the_stop_timeout() {
        let cleanup = Cleanup::new();
        let ready = cleanup.path().join("ready");
        let script = format!(
            "trap '' TERM; echo ready > {r}.tmp && mv {r}.tmp {r}; exec sleep 60",
            r = ready.display()
        );
        let mut config = config(&cleanup, &["/bin/sh", "-c", &script]);
        config.stop_timeout = Duration::from_millis(600);
        let runtime = local(config);
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
        assert!(gone(pid).await);
    }

    #[tokio::test]
    async fn a_backend_stopped_with_sigint_hears_it() {
        // A shell's background jobs have SIGINT ignored, and exec keeps that: a backend
        // started as one would sit out SIGINT until the SIGKILL.
        let cleanup = Cleanup::new();
        let mut config = config(&cleanup, &["/bin/sleep", "60"]);
        config.stop_signal = StopSignal::Int;
        config.stop_timeout = Duration::from_secs(5);
        let runtime = local(config);
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ignored = status
            .lines()
            .find_map(|line| line.strip_prefix("SigIgn:"))
            .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
            .unwrap();
        let int_and_quit = (1 << (Signal::SIGINT as u64 - 1)) | (1 << (Signal::SIGQUIT as u64 - 1));
        assert_eq!(
            ignored & int_and_quit,
            0,
            "the backend ignores SIGINT or SIGQUIT"
        );
        let started = Instant::now();
        runtime.stop(&b1).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(gone(pid).await);
    }

    #[tokio::test]
    async fn stop_ends_what_an_exited_backend_left_in_its_group() {
        let mut cleanup = Cleanup::new();
        let left = cleanup.path().join("left");
        // The backend forks a worker into its group, then exits at once.
        let script = format!(
            "sleep 60 & echo $! > {l}.tmp && mv {l}.tmp {l}",
            l = left.display()
        );
        let config = config(&cleanup, &["/bin/sh", "-c", &script]);
        let runtime = local(config.clone());
        let b1 = backend("b1");

        runtime.start(&b1, &version("v1")).await.unwrap();
        let worker: u32 = wait_for_file(&left).await.trim().parse().unwrap();
        cleanup.stray(worker);
        wait_stopped(&runtime, &b1).await;
        assert!(alive(worker));
        runtime.stop(&b1).await.unwrap();
        assert!(gone(worker).await, "worker {worker} still alive");
        assert!(!cleanup.state().join("b1.json").exists());

        // The same after a restart of Baton, when the next run is started instead.
        fs::remove_file(&left).unwrap();
        runtime.start(&b1, &version("v2")).await.unwrap();
        let worker: u32 = wait_for_file(&left).await.trim().parse().unwrap();
        cleanup.stray(worker);
        wait_stopped(&runtime, &b1).await;
        let restarted = local(config);
        fs::remove_file(&left).unwrap();
        restarted.start(&b1, &version("v3")).await.unwrap();
        assert!(
            gone(worker).await,
            "worker {worker} of the previous run still alive"
        );
        let worker: u32 = wait_for_file(&left).await.trim().parse().unwrap();
        cleanup.stray(worker);
        restarted.stop(&b1).await.unwrap();
        assert!(gone(worker).await, "worker {worker} still alive");
    }

    #[tokio::test]
    async fn a_backend_gets_the_hosts_inherited_variables_the_configured_ones_and_batons() {
        // Cargo sets this for every test process: it stands for whatever the login environment
        // holds that no backend should see.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let cleanup = Cleanup::new();
        let mut config = config(&cleanup, &["sleep", "60"]);
        let tricky = "it's \"prod\" $HOME `id` ;\nsecond line";
        config.env = BTreeMap::from([
            ("APP_MODE".to_owned(), tricky.to_owned()),
            ("HOME".to_owned(), "/srv/app".to_owned()),
        ]);
        let runtime = local(config);
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
        // The recorded process execs `env` and then the program: read its environment once it
        // is the program (in the middle of an exec, /proc shows none).
        let deadline = Instant::now() + Duration::from_secs(5);
        let environ = loop {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") && !environ.is_empty() {
                break environ;
            }
            assert!(Instant::now() < deadline, "pid {pid} never became `sleep`");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let env: BTreeMap<String, String> = environ
            .split(|&byte| byte == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (name, value) = entry.split_once('=').unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        runtime.stop(&b1).await.unwrap();

        let mut expected = inherited_here();
        expected.extend(
            [
                "APP_MODE",
                "HOME",
                "BATON_BACKEND",
                "BATON_PORT",
                "BATON_SERVICE",
                "BATON_VERSION",
            ]
            .map(String::from),
        );
        assert_eq!(env.keys().cloned().collect::<BTreeSet<_>>(), expected);
        assert_eq!(env["APP_MODE"], tricky);
        assert_eq!(env["HOME"], "/srv/app", "the configured value wins");
        assert_eq!(env["BATON_PORT"], PORT.to_string());
        assert_eq!(env["BATON_VERSION"], "v1");
        assert_eq!(env["BATON_BACKEND"], "b1");
        assert_eq!(env["BATON_SERVICE"], "api");
        if let Ok(path) = std::env::var("PATH") {
            assert_eq!(env["PATH"], path, "the host's own PATH");
        }
    }

    #[tokio::test]
    async fn a_missing_program_or_working_directory_is_a_start_error_with_the_reason() {
        let cleanup = Cleanup::new();
        let b1 = backend("b1");
        let error = local(config(&cleanup, &["baton-test-no-such-program", "--flag"]))
            .start(&b1, &version("v1"))
            .await
            .unwrap_err();
        match &error {
            RuntimeError::Start { backend, reason } => {
                assert_eq!(backend, "b1");
                assert!(
                    reason.contains("\"baton-test-no-such-program\" not found"),
                    "{reason}"
                );
            }
            other => panic!("expected a start error, got {other:?}"),
        }
        assert!(!cleanup.state().join("b1.json").exists());

        let mut missing_dir = config(&cleanup, &["/bin/sleep", "60"]);
        missing_dir.working_dir = Some(cleanup.path().join("missing"));
        let error = local(missing_dir)
            .start(&b1, &version("v1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("working directory") && error.contains("does not exist"),
            "{error}"
        );

        let error = local(config(&cleanup, &["/opt/a=b/app"]))
            .start(&b1, &version("v1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds a '='"), "{error}");
        assert!(!cleanup.state().join("b1.json").exists());

        // A relative program is found from the working directory.
        let work = cleanup.path().join("work");
        fs::create_dir_all(work.join("bin")).unwrap();
        fs::write(work.join("bin/app"), "#!/bin/sh\nexec sleep 60\n").unwrap();
        fs::set_permissions(work.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut relative = config(&cleanup, &["bin/app"]);
        relative.working_dir = Some(work);
        let runtime = local(relative);
        runtime.start(&b1, &version("v1")).await.unwrap();
        let pid = running_pid(runtime.status(&b1).await.unwrap(), &version("v1"));
        runtime.stop(&b1).await.unwrap();
        assert!(gone(pid).await);
    }

    #[tokio::test]
    async fn a_large_log_is_rotated_when_a_backend_starts() {
        let cleanup = Cleanup::new();
        let state = cleanup.state();
        fs::create_dir_all(&state).unwrap();
        let old = fs::File::create(state.join("b1.log")).unwrap();
        old.set_len(ROTATE_LOG_AT).unwrap();
        drop(old);
        let runtime = local(config(&cleanup, &["/bin/sleep", "60"]));
        let b1 = backend("b1");
        runtime.start(&b1, &version("v1")).await.unwrap();
        runtime.stop(&b1).await.unwrap();
        assert_eq!(
            fs::metadata(state.join("b1.log.1")).unwrap().len(),
            ROTATE_LOG_AT
        );
        assert_eq!(
            fs::read_to_string(state.join("b1.log")).unwrap(),
            "[baton] starting version v1 of b1\n"
        );
    }

    fn command_config(cleanup: &Cleanup, start: &str, stop: &str) -> RemoteCommandConfig {
        RemoteCommandConfig {
            prepare: None,
            start: start.to_owned(),
            stop: stop.to_owned(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            service: ServiceName::parse("api").unwrap(),
            timeout: Duration::from_secs(20),
            state_dir: cleanup.state(),
        }
    }

    fn commands(config: RemoteCommandConfig) -> RemoteCommandRuntime {
        RemoteCommandRuntime::new(Arc::new(LocalShell), config)
    }

    #[tokio::test]
    async fn commands_get_their_values_and_nothing_else_through_the_environment() {
        let cleanup = Cleanup::new();
        let out = cleanup.path().join("out");
        let env_dump = cleanup.path().join("env");
        let mut config = command_config(
            &cleanup,
            &format!(
                r#"echo "start $BATON_SERVICE $BATON_BACKEND $BATON_PORT $BATON_VERSION $APP_MODE" >> {out}; env | sort > {env}"#,
                out = out.display(),
                env = env_dump.display()
            ),
            &format!(
                r#"echo "stop $BATON_BACKEND $BATON_PORT $BATON_VERSION" >> {out}"#,
                out = out.display()
            ),
        );
        config.prepare = Some(format!(
            r#"echo "prepared $BATON_SERVICE $BATON_VERSION $APP_MODE" >> {out}"#,
            out = out.display()
        ));
        config.env = BTreeMap::from([("APP_MODE".to_owned(), "prod".to_owned())]);
        let runtime = commands(config);
        let (s1, v2) = (backend("s1"), version("v2.1"));
        runtime.prepare(&v2).await.unwrap();
        runtime.start(&s1, &v2).await.unwrap();
        assert_eq!(
            runtime.status(&s1).await.unwrap(),
            BackendRun::Running {
                version: v2.clone(),
                pid: None
            }
        );
        runtime.stop(&s1).await.unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("prepared api v2.1 prod\nstart api s1 {PORT} v2.1 prod\nstop s1 {PORT} v2.1\n")
        );
        assert!(runtime.status(&s1).await.is_err(), "stopped: unknown again");

        let env = fs::read_to_string(&env_dump).unwrap();
        let names: BTreeSet<String> = env
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name.to_owned()))
            .filter(|name| !["PWD", "SHLVL", "_"].contains(&name.as_str()))
            .collect();
        let mut expected = inherited_here();
        expected.extend(
            [
                "APP_MODE",
                "BATON_BACKEND",
                "BATON_PORT",
                "BATON_SERVICE",
                "BATON_VERSION",
            ]
            .map(String::from),
        );
        assert_eq!(names, expected, "{env}");
        let log = fs::read_to_string(cleanup.state().join("s1.log")).unwrap();
        assert!(
            log.starts_with(&format!(
                "[baton] start BATON_BACKEND=s1 BATON_PORT={PORT} BATON_VERSION=v2.1\n"
            )),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_its_stderr_masked() {
        let cleanup = Cleanup::new();
        let mut config = command_config(
            &cleanup,
            r#"echo "connecting as $DB_USER:$DB_PASSWORD" >&2; echo "giving up" >&2; exit 3"#,
            "true",
        );
        config.prepare = Some("echo nope >&2; exit 2".into());
        config.env = BTreeMap::from([
            ("DB_USER".to_owned(), "app".to_owned()),
            ("DB_PASSWORD".to_owned(), "hunter2-db-secret".to_owned()),
        ]);
        config.secrets = config.env.values().cloned().collect();
        let runtime = commands(config);
        let error = runtime
            .start(&backend("s1"), &version("v2"))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "cannot start s1: start exited with status 3: connecting as ***:***\ngiving up"
        );
        // The whole stderr stays in the log, for Baton's user only.
        let log = cleanup.state().join("s1.log");
        assert!(
            fs::read_to_string(&log)
                .unwrap()
                .ends_with("connecting as app:hunter2-db-secret\ngiving up\n")
        );
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&cleanup.state()), 0o700);
        assert!(runtime.status(&backend("s1")).await.is_err());

        let error = runtime
            .prepare(&version("v2"))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "prepare for version v2 failed: prepare exited with status 2: nope"
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_everything_it_started() {
        let mut cleanup = Cleanup::new();
        let pid_file = cleanup.pid_file("child.pid");
        let mut config = command_config(
            &cleanup,
            &format!(
                r#"sleep 60 & echo $! > {pid}; echo "waiting for $TOKEN" >&2; wait"#,
                pid = pid_file.display()
            ),
            "true",
        );
        config.env = BTreeMap::from([("TOKEN".to_owned(), "tok-from-the-env".to_owned())]);
        config.secrets = vec!["tok-from-the-env".into()];
        config.timeout = Duration::from_secs(1);
        let started = Instant::now();
        let error = commands(config)
            .start(&backend("s1"), &version("v2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            error,
            "cannot start s1: start did not finish within 1s; Baton killed it and everything \
             in its process group: waiting for ***"
        );
        let pid: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(pid).await, "the command's child {pid} outlived it");
    }

    #[tokio::test]
    async fn a_start_that_leaves_a_daemon_behind_returns_when_the_shell_does() {
        let mut cleanup = Cleanup::new();
        let pid_file = cleanup.pid_file("daemon.pid");
        let runtime = commands(command_config(
            &cleanup,
            &format!(
                "sleep 60 & echo $! > {pid}; echo started >&2",
                pid = pid_file.display()
            ),
            &format!(r#"kill "$(cat {pid})""#, pid = pid_file.display()),
        ));
        let started = Instant::now();
        runtime.start(&backend("s1"), &version("v2")).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "start waited {:?} for the daemon",
            started.elapsed()
        );
        let pid: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(pid), "the daemon {pid} did not survive its start");
        runtime.stop(&backend("s1")).await.unwrap();
        assert!(gone(pid).await);
    }

    #[tokio::test]
    async fn a_process_runtimes_prepare_runs_on_the_host_with_its_variables_and_fails_masked() {
        let cleanup = Cleanup::new();
        let mut config = config(&cleanup, &["/bin/sleep", "60"]);
        config.env = BTreeMap::from([("TOKEN".to_owned(), "s3cret-token".to_owned())]);
        config.prepare = Some(
            r#"echo "$BATON_SERVICE $BATON_VERSION $TOKEN" > staged; [ "$BATON_VERSION" != v3 ] || { echo "no artifact for v3 ($TOKEN)" >&2; exit 4; }"#.into(),
        );
        let runtime = local(config);
        runtime.prepare(&version("v2")).await.unwrap();
        assert_eq!(
            fs::read_to_string(cleanup.state().join("staged")).unwrap(),
            "api v2 s3cret-token\n",
            "run in the service's state directory, with its variables"
        );
        let error = runtime
            .prepare(&version("v3"))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "prepare for version v3 failed: prepare exited with status 4: no artifact for v3 (***)"
        );
    }

    #[tokio::test]
    async fn each_operation_is_one_run_of_the_agent() {
        let cleanup = Cleanup::new();
        let shell = Arc::new(Counting::default());
        let runtime =
            RemoteProcessRuntime::new(shell.clone(), config(&cleanup, &["/bin/sleep", "60"]));
        let (b1, v1) = (backend("b1"), version("v1"));
        let mut before = shell.runs();
        let mut one_more = |what: &str| {
            let now = shell.runs();
            assert_eq!(now - before, 1, "{what}");
            before = now;
        };
        runtime.prepare(&v1).await.unwrap();
        one_more("prepare");
        runtime.start(&b1, &v1).await.unwrap();
        one_more("start");
        runtime.status(&b1).await.unwrap();
        one_more("status");
        runtime.start(&b1, &v1).await.unwrap();
        one_more("start of what runs");
        runtime.stop(&b1).await.unwrap();
        one_more("stop");
        runtime.status(&b1).await.unwrap();
        one_more("status of a stopped backend");
        runtime.stop(&b1).await.unwrap();
        one_more("stop of a stopped backend");

        let mut config = command_config(&cleanup, "true", "true");
        config.prepare = Some("true".into());
        let runtime = RemoteCommandRuntime::new(shell.clone(), config);
        runtime.prepare(&v1).await.unwrap();
        one_more("command prepare");
        runtime.start(&b1, &v1).await.unwrap();
        one_more("command start");
        runtime.stop(&b1).await.unwrap();
        one_more("command stop");
    }

    #[tokio::test]
    async fn an_unreachable_host_is_the_operations_error_naming_it() {
        let dir = PathBuf::from("/var/lib/baton/api");
        let runtime = RemoteProcessRuntime::new(
            Arc::new(Unreachable),
            RemoteProcessConfig {
                command: vec!["/srv/app/bin/app".into()],
                env: BTreeMap::new(),
                working_dir: None,
                stop_signal: StopSignal::Term,
                stop_timeout: Duration::from_secs(5),
                state_dir: dir.clone(),
                prepare: None,
                service: ServiceName::parse("api").unwrap(),
            },
        );
        let (b1, v2) = (backend("b1"), version("v2"));
        let unreachable = format!("host app1 is unreachable: {REFUSED}");
        let error = |result: Result<_, RuntimeError>| result.unwrap_err().to_string();
        assert_eq!(
            error(runtime.start(&b1, &v2).await),
            format!("cannot start b1: {unreachable}")
        );
        assert_eq!(
            error(runtime.stop(&b1).await),
            format!("cannot stop b1: {unreachable}")
        );
        assert_eq!(
            error(runtime.status(&b1).await.map(drop)),
            format!("cannot tell what runs on b1: {unreachable}")
        );
        assert_eq!(
            error(runtime.prepare(&v2).await),
            format!("prepare for version v2 failed: {unreachable}")
        );

        let runtime = RemoteCommandRuntime::new(
            Arc::new(Unreachable),
            RemoteCommandConfig {
                prepare: Some("true".into()),
                start: "true".into(),
                stop: "true".into(),
                env: BTreeMap::new(),
                secrets: Vec::new(),
                service: ServiceName::parse("api").unwrap(),
                timeout: Duration::from_secs(5),
                state_dir: dir.clone(),
            },
        );
        assert_eq!(
            error(runtime.start(&b1, &v2).await),
            format!("cannot start b1: {unreachable}")
        );
        assert_eq!(
            error(runtime.prepare(&v2).await),
            format!("prepare for version v2 failed: {unreachable}")
        );
        assert!(matches!(
            check(&Unreachable, &dir, None).await,
            Err(AgentError::Shell(ShellError::Unreachable { .. }))
        ));
        assert!(matches!(
            log_tail(&Unreachable, &dir, &b1.name, 10).await,
            Err(AgentError::Shell(ShellError::Unreachable { .. }))
        ));
    }

    #[tokio::test]
    async fn a_host_check_reports_what_baton_needs_there() {
        let cleanup = Cleanup::new();
        let state = cleanup.state();
        let facts = check(&LocalShell, &state, Some("sleep")).await.unwrap();
        assert_eq!(facts.state_dir, Ok(state.display().to_string()));
        assert!(state.is_dir());
        assert_eq!(facts.boot_id, Ok(boot_id()));
        assert_eq!(facts.missing_tools, Vec::<String>::new());
        assert!(
            matches!(&facts.program, Some(Ok(path)) if path.ends_with("/sleep")),
            "{facts:?}"
        );
        assert_eq!(facts.problems(), Vec::<String>::new());

        let facts = check(
            &LocalShell,
            Path::new("/proc/baton-no-such/state"),
            Some("baton-test-no-such-program"),
        )
        .await
        .unwrap();
        let problems = facts.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("/proc/baton-no-such/state"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("baton-test-no-such-program"),
            "{problems:?}"
        );
    }

    #[tokio::test]
    async fn log_tail_reads_the_end_of_a_backends_log() {
        let cleanup = Cleanup::new();
        let state = cleanup.state();
        fs::create_dir_all(&state).unwrap();
        fs::write(state.join("b1.log"), "one\ntwo\nthree\n").unwrap();
        let b1 = BackendName::parse("b1").unwrap();
        assert_eq!(
            log_tail(&LocalShell, &state, &b1, 2).await.unwrap(),
            "two\nthree\n"
        );
        let b2 = BackendName::parse("b2").unwrap();
        assert_eq!(log_tail(&LocalShell, &state, &b2, 2).await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_runtime_on_a_host_reads_its_backends_log_masked_and_names_the_host() {
        let cleanup = Cleanup::new();
        let state = cleanup.state();
        fs::create_dir_all(&state).unwrap();
        fs::write(
            state.join("b1.log"),
            "booting\nrefused token s3cret-value\n",
        )
        .unwrap();
        let mut masked = command_config(&cleanup, "true", "true");
        masked.secrets = vec!["s3cret-value".into()];
        let tail = commands(masked)
            .log_tail(&backend("b1"), 200)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tail.lines, ["booting", "refused token ***"]);
        assert_eq!(
            tail.source,
            format!("{}/b1.log on host this machine", state.display())
        );
        // The process runtime shows what the backend printed as it is; no log is no tail.
        let processes = local(config(&cleanup, &["true"]));
        let tail = processes
            .log_tail(&backend("b1"), 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tail.lines, ["refused token s3cret-value"]);
        assert_eq!(processes.log_tail(&backend("b2"), 1).await.unwrap(), None);
    }

    fn output(stdout: &str, stderr: &str, code: i32) -> Output {
        Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_answer_is_what_follows_the_agents_greeting() {
        let answer = read_answer(
            "app1",
            Op::Status,
            &output(
                "Welcome to app1!\n@baton-agent 1\nnote looked\nrunning v1 42\n",
                "",
                0,
            ),
        )
        .unwrap();
        assert_eq!(answer.result, "running v1 42");
        // A log quoted after the result is payload, whatever it holds.
        let answer = read_answer(
            "app1",
            Op::Tail,
            &output("@baton-agent 1\ntail\n@baton-agent 1\nerror x\n", "", 0),
        )
        .unwrap();
        assert_eq!(answer.result, "tail");
        assert_eq!(answer.payload, b"@baton-agent 1\nerror x\n");

        let refused = read_answer(
            "app1",
            Op::Start,
            &output("@baton-agent 1\nerror no such thing\n", "", 1),
        )
        .unwrap_err();
        assert_eq!(refused.to_string(), "on app1: no such thing");
        let none = read_answer(
            "app1",
            Op::Status,
            &output("", "bash: sh: command not found\n", 127),
        )
        .unwrap_err();
        assert_eq!(
            none.to_string(),
            "on app1: Baton's agent gave no answer it can read (it never started: exit status \
             127, stderr: bash: sh: command not found)"
        );
    }

    #[test]
    fn the_agent_knows_what_baton_knows() {
        let line = AGENT
            .lines()
            .find(|line| line.starts_with("INHERITED="))
            .expect("the agent's INHERITED line");
        let names: Vec<&str> = line
            .trim_start_matches("INHERITED='")
            .trim_end_matches('\'')
            .split(' ')
            .collect();
        assert_eq!(names, INHERITED_ENV);
        assert!(AGENT.contains(&format!("\nROTATE_AT={ROTATE_LOG_AT}\n")));
        assert!(AGENT.contains(&format!("\nTAIL_WINDOW={STDERR_WINDOW}\n")));
        // What goes over the wire with every call is the code alone.
        assert!(
            agent_text().len() < AGENT.len() * 3 / 4,
            "{} bytes",
            agent_text().len()
        );
    }
}
