//! The machines backends run on besides Baton's own, reached over OpenSSH.
//!
//! Each `[[host]]` is one [`Host`]: a [`Shell`] whose programs run over one multiplexed OpenSSH
//! connection (the `openssh` crate: a `ssh -M` master per host, each command a new channel over
//! its control socket, so a step costs a round trip, not a handshake). OpenSSH itself makes the
//! connection, so the user's `~/.ssh/config` (`ProxyJump`, `User`, `IdentityFile`), agent and
//! known hosts work as they do for `ssh`. Host keys are always checked strictly: a key that is
//! missing or different is refused, with a message that says how to pin the right one.
//!
//! A host keeps what Baton last saw of it (reachable, the last error, when a command last
//! finished), which the fleet view shows and which wakes the fleet when a host comes back.
//! A connection that fails or stops answering is dropped, and the next command connects anew.
//!
//! Invariant: this is the only module that names `openssh`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::model::{HostView, Reachability};
use async_trait::async_trait;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::domain::HostName;
use crate::drivers::shell::{Shell, ShellError};
use crate::settings::HostSettings;

pub mod check;

/// How long OpenSSH may take to set up a connection (TCP, key exchange, login).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the master asks a silent server whether it is still there. OpenSSH gives up after
/// three unanswered asks (`ServerAliveCountMax`), so a cut host fails its commands within about
/// three times this.
const SERVER_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a master outlives its last command. The fleet's watcher runs a command on every idle
/// host more often than this, so while Baton runs its connections stay up; a master left behind
/// by a Baton that was killed ends by itself.
const CONTROL_PERSIST_SECS: usize = 30;
/// At most this many commands run on one host at once: OpenSSH's server allows ten sessions per
/// connection (`MaxSessions`), and a batch of 50 backends must not be refused by it.
const SESSIONS_PER_HOST: usize = 8;
/// How long a check that the connection itself still answers may take, after a command did not
/// finish in time.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What Baton last saw of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub reachability: Reachability,
    pub last_error: Option<String>,
    /// When a command last ran there to its end (Unix milliseconds).
    pub last_seen: Option<i64>,
}

/// One `[[host]]`: runs programs there over a reused OpenSSH connection.
pub struct Host {
    settings: HostSettings,
    /// Where the masters' control sockets live (on this machine, 0700).
    control_dir: PathBuf,
    /// The connection, made on first use and dropped when it fails.
    session: Mutex<Option<Arc<Session>>>,
    slots: Semaphore,
    state: watch::Sender<HostState>,
    /// How many commands ran here (tried, whether or not they got through).
    commands: AtomicU64,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.settings.name)
            .field("ssh", &self.settings.ssh.to_string())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host reached with `settings`; connects on first use. `control_dir` holds the
    /// connection's control socket: it must be private to Baton's user, this host's alone (a
    /// new connection removes what earlier ones left there), and short (a Unix socket path has
    /// at most 107 bytes).
    pub fn new(settings: HostSettings, control_dir: PathBuf) -> Self {
        Self {
            settings,
            control_dir,
            session: Mutex::new(None),
            slots: Semaphore::new(SESSIONS_PER_HOST),
            state: watch::Sender::new(HostState {
                reachability: Reachability::Unknown,
                last_error: None,
                last_seen: None,
            }),
            commands: AtomicU64::new(0),
        }
    }

    pub fn host_name(&self) -> &HostName {
        &self.settings.name
    }

    pub fn settings(&self) -> &HostSettings {
        &self.settings
    }

    /// What Baton last saw of the host; changes are sent as they happen.
    pub fn state(&self) -> watch::Receiver<HostState> {
        self.state.subscribe()
    }

    /// The host as the fleet view shows it.
    pub fn view(&self) -> HostView {
        let state = self.state.borrow().clone();
        HostView {
            name: self.settings.name.to_string(),
            ssh: self.settings.ssh.to_string(),
            reachable: state.reachability,
            last_error: state.last_error,
            last_seen: state.last_seen,
        }
    }

    /// Whether no command got through to the host for `interval` (or it is not known to be
    /// reachable at all).
    pub fn quiet_for(&self, interval: Duration) -> bool {
        let state = self.state.borrow();
        let now = unix_millis(SystemTime::now());
        state.reachability != Reachability::Reachable
            || state
                .last_seen
                .is_none_or(|seen| now.saturating_sub(seen) >= interval.as_millis() as i64)
    }

    /// How many commands were run on the host so far.
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Runs `true` there: whether the host can be reached now. Updates the host's state.
    pub async fn ping(&self) -> Result<(), ShellError> {
        self.run(&["true".to_owned()], CONNECT_TIMEOUT + CHECK_TIMEOUT)
            .await
            .map(drop)
    }

    /// Ends the connection (its master process too). Commands after this connect again.
    pub async fn disconnect(&self) {
        let session = self.session.lock().await.take();
        if let Some(session) = session.and_then(|session| Arc::try_unwrap(session).ok())
            && let Err(error) = session.close().await
        {
            tracing::debug!(host = %self.settings.name, %error, "closing the ssh connection");
        }
    }

    /// The connection, made now if there is none.
    async fn session(&self) -> Result<Arc<Session>, ShellError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = &*slot {
            return Ok(session.clone());
        }
        let session = Arc::new(self.connect().await?);
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn connect(&self) -> Result<Session, ShellError> {
        let settings = &self.settings;
        crate::drivers::files::create_private_dir(&self.control_dir).map_err(|error| {
            ShellError::Spawn {
                host: settings.name.to_string(),
                program: "ssh".into(),
                reason: format!(
                    "cannot create the control socket directory {}: {error}",
                    self.control_dir.display()
                ),
            }
        })?;
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(SERVER_ALIVE_INTERVAL)
            .control_directory(&self.control_dir)
            .clean_history_control_directory(true)
            .control_persist(ControlPersist::IdleFor(
                CONTROL_PERSIST_SECS.try_into().expect("not zero"),
            ));
        if let Some(user) = &settings.ssh.user {
            builder.user(user.clone());
        }
        if let Some(port) = settings.ssh.port {
            builder.port(port);
        }
        if let Some(identity) = &settings.identity_file {
            builder.keyfile(identity);
        }
        if let Some(known_hosts) = &settings.known_hosts {
            builder.user_known_hosts_file(known_hosts);
        }
        tracing::debug!(host = %settings.name, ssh = %settings.ssh, "connecting");
        builder
            .connect_mux(&settings.ssh.address)
            .await
            .map_err(|error| self.connect_error(&error))
    }

    /// What a failed connection means for the user: ssh's own last words, and for a host key
    /// that does not match (or is not pinned at all), how to pin the right one.
    fn connect_error(&self, error: &openssh::Error) -> ShellError {
        let host = self.settings.name.to_string();
        let said = ssh_words(error);
        if said.contains("Host key verification failed")
            || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || said.contains("host key is known for")
        {
            let ssh = &self.settings.ssh;
            let file = match &self.settings.known_hosts {
                Some(path) => path.display().to_string(),
                None => "~/.ssh/known_hosts".to_owned(),
            };
            let port = ssh.port.map(|p| format!("-p {p} ")).unwrap_or_default();
            return ShellError::HostKey {
                host,
                reason: format!(
                    "{said}. If the host was reinstalled or its key rotated, check the new key's \
                     fingerprint on the host itself (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), \
                     then pin it: `ssh-keygen -R {address} -f {file}` and \
                     `ssh-keyscan {port}{plain} >> {file}`",
                    address = if ssh.port.is_some_and(|p| p != 22) {
                        format!("'[{}]:{}'", ssh.address, ssh.port.unwrap_or(22))
                    } else {
                        ssh.address.clone()
                    },
                    plain = ssh.address,
                ),
            };
        }
        ShellError::Unreachable { host, reason: said }
    }

    /// Marks the host reachable or not, and sends the change to whoever watches.
    fn saw(&self, result: Result<(), &ShellError>) {
        let now = unix_millis(SystemTime::now());
        self.state.send_if_modified(|state| {
            let before = state.clone();
            match result {
                Ok(()) => {
                    state.reachability = Reachability::Reachable;
                    state.last_error = None;
                    state.last_seen = Some(now);
                }
                Err(error) => {
                    state.reachability = Reachability::Unreachable;
                    state.last_error = Some(error.to_string());
                }
            }
            if before.reachability != state.reachability {
                match state.reachability {
                    Reachability::Reachable => {
                        tracing::info!(host = %self.settings.name, "host reachable")
                    }
                    Reachability::Unreachable | Reachability::Unknown => {
                        tracing::warn!(host = %self.settings.name, error = ?state.last_error, "host unreachable")
                    }
                }
            }
            // `last_seen` moves with every command: only a change of reachability or error is
            // news to the watchers.
            before.reachability != state.reachability || before.last_error != state.last_error
        });
    }

    /// Forgets the connection if it is still `session` (a command found it broken).
    async fn drop_session(&self, session: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            *slot = None;
        }
    }

    async fn run_once(&self, argv: &[String], limit: Duration) -> Result<Output, ShellError> {
        let deadline = tokio::time::Instant::now() + limit;
        let host = self.settings.name.to_string();
        let program = argv[0].clone();
        let timed_out = || ShellError::TimedOut {
            host: host.clone(),
            program: program.clone(),
            after: limit,
        };
        let session = match tokio::time::timeout_at(deadline, self.session()).await {
            Ok(session) => session?,
            Err(_) => {
                return Err(ShellError::Unreachable {
                    host: host.clone(),
                    reason: format!("no connection within {}", humantime::format_duration(limit)),
                });
            }
        };
        let mut command = session.command(program.as_str());
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match tokio::time::timeout_at(deadline, command.output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => {
                self.drop_session(&session).await;
                Err(ShellError::Unreachable {
                    host,
                    reason: ssh_words(&error),
                })
            }
            Err(_) => {
                // Either the program is slow or the connection went silent: ask the master.
                match tokio::time::timeout(CHECK_TIMEOUT, session.check()).await {
                    Ok(Ok(())) => Err(timed_out()),
                    Ok(Err(error)) => {
                        self.drop_session(&session).await;
                        Err(ShellError::Unreachable {
                            host,
                            reason: ssh_words(&error),
                        })
                    }
                    Err(_) => {
                        self.drop_session(&session).await;
                        Err(ShellError::Unreachable {
                            host,
                            reason: format!(
                                "the connection did not answer within {}",
                                humantime::format_duration(limit + CHECK_TIMEOUT)
                            ),
                        })
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Shell for Host {
    fn name(&self) -> &str {
        self.settings.name.as_str()
    }

    async fn run(&self, argv: &[String], limit: Duration) -> Result<Output, ShellError> {
        assert!(!argv.is_empty(), "a program to run");
        let _slot = self.slots.acquire().await.expect("never closed");
        self.commands.fetch_add(1, Ordering::Relaxed);
        let began = std::time::Instant::now();
        let result = self.run_once(argv, limit).await;
        // One line per command, which the hosts benchmark counts.
        tracing::debug!(
            host = %self.settings.name,
            program = %argv[0],
            took = ?began.elapsed(),
            ok = result.is_ok(),
            "ssh command"
        );
        match &result {
            Ok(_) | Err(ShellError::TimedOut { .. } | ShellError::Spawn { .. }) => self.saw(Ok(())),
            Err(error) => self.saw(Err(error)),
        }
        result
    }
}

/// What ssh said about a failure, without the crate's own framing: the innermost error's text,
/// its last line when ssh printed several (the warning banner of a changed key, say).
fn ssh_words(error: &openssh::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(inner) = source.source() {
        source = inner;
    }
    let text = source.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("@@@"))
        .collect();
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return "the host's key is not the one pinned in known_hosts (REMOTE HOST IDENTIFICATION HAS CHANGED); Host key verification failed".into();
    }
    match lines.last() {
        Some(last) => last.trim_end_matches('.').to_owned(),
        None => error.to_string(),
    }
}

fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Every `[[host]]`, by name.
#[derive(Debug, Default, Clone)]
pub struct Hosts(Vec<Arc<Host>>);

impl Hosts {
    /// The hosts of `settings`, each with its control sockets in `<control_root>/<host>`
    /// (`serve` uses `<state_dir>/ssh`).
    pub fn new(settings: &[HostSettings], control_root: &Path) -> Self {
        Self(
            settings
                .iter()
                .map(|host| {
                    Arc::new(Host::new(
                        host.clone(),
                        control_root.join(host.name.as_str()),
                    ))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &HostName) -> Option<&Arc<Host>> {
        self.0.iter().find(|host| host.host_name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ends every connection; Baton does this when it stops.
    pub async fn disconnect_all(&self) {
        futures::future::join_all(self.0.iter().map(|host| host.disconnect())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SshTarget;

    fn host(ssh: &str, known_hosts: Option<&str>) -> Host {
        Host::new(
            HostSettings {
                name: HostName::parse("app1").unwrap(),
                ssh: SshTarget::parse(ssh).unwrap(),
                identity_file: None,
                known_hosts: known_hosts.map(PathBuf::from),
                state_dir: PathBuf::from(".baton"),
            },
            PathBuf::from("/nonexistent"),
        )
    }

    #[test]
    fn a_changed_host_key_says_how_to_pin_the_right_one() {
        let error = openssh::Error::Connect(std::io::Error::other(
            "@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@@\nHost key verification failed.",
        ));
        let message = host("deploy@198.18.0.2:2222", Some("/etc/baton/known_hosts"))
            .connect_error(&error)
            .to_string();
        assert!(
            message.starts_with("host app1's key is not the one Baton trusts: "),
            "{message}"
        );
        assert!(
            message.contains("ssh-keygen -R '[198.18.0.2]:2222' -f /etc/baton/known_hosts"),
            "{message}"
        );
        assert!(
            message.contains("ssh-keyscan -p 2222 198.18.0.2 >> /etc/baton/known_hosts"),
            "{message}"
        );

        let unknown = openssh::Error::Connect(std::io::Error::other(
            "No ED25519 host key is known for 198.18.0.2 and you have requested strict checking.\nHost key verification failed.",
        ));
        let message = host("198.18.0.2", None).connect_error(&unknown).to_string();
        assert!(message.contains("~/.ssh/known_hosts"), "{message}");
        assert!(message.contains("ssh-keyscan 198.18.0.2 >>"), "{message}");
    }

    #[test]
    fn an_unreachable_host_keeps_ssh_s_own_words() {
        let error = openssh::Error::Connect(std::io::Error::other(
            "ssh: connect to host 198.18.0.2 port 22: Connection timed out",
        ));
        assert_eq!(
            host("198.18.0.2", None).connect_error(&error).to_string(),
            "host app1 is unreachable: ssh: connect to host 198.18.0.2 port 22: Connection timed out"
        );
    }
}
