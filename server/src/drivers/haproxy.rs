//! The HAProxy driver: the runtime API over unix or TCP sockets, on every node.
//!
//! This is the only file that knows the runtime-API syntax, and the only code that reads
//! HAProxy's status words: `show stat`'s `status` and `check_status` become a [`ServerState`]
//! and a [`CheckResult`] here, and everything else matches their variants. Every command uses
//! one short connection: connect, write `"<command>\n"`, read until HAProxy closes (it does so
//! after each answer unless the client asked for interactive mode), all under a per-command
//! timeout.
//!
//! # What HAProxy 2.6 (Debian 2.6.12) reports, measured by the tests below
//!
//! `show stat <backend> 4 -1` answers CSV: a `# pxname,svname,…` header and one row per server.
//! The `status` and `check_status` columns, for `inter 100ms fastinter 50ms rise 2 fall 2`:
//!
//! | situation                                          | `status`    | `check_status`      |
//! |----------------------------------------------------|-------------|---------------------|
//! | ready, checks pass                                 | `UP`        | `L7OK`              |
//! | ready, backend not listening                       | `DOWN`      | `L4CON`             |
//! | drain, checks pass                                 | `DRAIN`     | `L7OK`              |
//! | drain, checks fail                                 | `DOWN`      | `L4CON` (or `L7STS`)|
//! | maint                                              | `MAINT`     | empty (→ `None`)    |
//! | just left maint for drain, before the first check  | `DRAIN 1/2` | the *stale* result from before maint |
//! | just left maint for ready, before the first check  | `UP 1/2`    | the *stale* result from before maint |
//! | a check is running right now                       | unchanged   | `* L7OK` (prefix; this driver strips it) |
//!
//! Leaving maint resets the check health to `rise` ("start OK but check immediately"), so
//! `state ready` puts a server in rotation (`UP 1/2`: HAProxy routes to it, though
//! `ServerStatus::is_up` does not count it) before any check against the new process has run,
//! even when nothing listens there: the 503 trap. The first check (up to `inter` later, see
//! below) then turns it `DOWN`. Likewise `state drain`
//! out of maint shows `DRAIN 1/2` with the old `L7OK`. Only the bare `DRAIN` (no `n/m`
//! suffix: health climbed to `rise + fall - 1`, which takes at least one *fresh* passing check
//! when `fall >= 2`) together with `L7OK` proves the new process answers its checks. With
//! `fall 1` even the bare `DRAIN` can be stale.
//!
//! That first fresh check does not run at once: it runs when the check timer armed with `inter`
//! fires, so anywhere from 0 to `inter` after the server leaves maint (measured: `inter 200ms`
//! gives a mean of about 100 ms; `fastinter` and `downinter` do not shorten it). One passing
//! check is enough, because leaving maint starts the health at `rise`. So `inter`, not
//! `rise × fastinter`, is what waiting for HAProxy's check costs a rollout per backend.
//!
//! `maint` and `drain` do not cut open sessions; `shutdown sessions server` does.
//!
//! Servers added at runtime (`add server`, for a surge), measured the same way: the backend's
//! balance algorithm must allow them (roundrobin, the default, does); the new server starts in
//! `MAINT` with its checks off until `enable health`; `default-server` is **not** applied to it
//! (`show stat` shows `check_fall` 3, HAProxy's default, beside servers declared with `fall 2`),
//! while the backend's `option httpchk` and `timeout check` are; the answer is `New server
//! registered.`, or `Already exists a server with the same name in backend.`. `del server`
//! answers `Only servers in maintenance mode can be deleted.` unless the server is in maint,
//! then `Server deleted.`, then `No such server.`; a server declared in haproxy.cfg can be
//! deleted too. `:` is allowed in server names, and never in Baton's backend names.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinSet;

use super::{
    AdminState, CheckResult, Health, LbError, LoadBalancer, MaintCause, ServerCounters,
    ServerState, ServerStatus,
};
use crate::domain::BackendAddr;
use crate::settings::RuntimeApiAddr;

/// The largest answer read from the runtime API; a longer one is a protocol error.
const MAX_REPLY: u64 = 16 * 1024 * 1024;

/// How the driver talks to each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaproxyOptions {
    /// Limit for one command: connect, write, and read the whole answer. Default 2 s.
    pub command_timeout: Duration,
    /// Tries per command when the node cannot be reached or does not answer in time
    /// (at least 1 is made). Default 4.
    pub attempts: u32,
    /// Delay before the first retry; it doubles for each further retry. Default 100 ms.
    pub backoff: Duration,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(2),
            attempts: 4,
            backoff: Duration::from_millis(100),
        }
    }
}

/// A [`LoadBalancer`] made of HAProxy nodes reached through their runtime API (`stats socket`
/// with `level admin`). Every method acts on all nodes in parallel.
#[derive(Debug, Clone)]
pub struct HaproxyDriver {
    nodes: Vec<RuntimeApiAddr>,
    options: HaproxyOptions,
}

impl HaproxyDriver {
    /// A driver for these runtime-API addresses. Nothing is contacted until a method is called.
    pub fn new(nodes: Vec<RuntimeApiAddr>, options: HaproxyOptions) -> Self {
        Self { nodes, options }
    }

    /// The runtime-API addresses, in the order given to [`HaproxyDriver::new`].
    pub fn nodes(&self) -> &[RuntimeApiAddr] {
        &self.nodes
    }

    /// Runs `per_node` on every node concurrently and returns the results in node order, or
    /// the first node's error (in node order) once every node has finished. Dropping the
    /// returned future aborts the calls still running.
    async fn on_every_node<T, F, Fut>(&self, per_node: F) -> Result<Vec<T>, LbError>
    where
        F: Fn(Node) -> Fut,
        Fut: Future<Output = Result<T, LbError>> + Send + 'static,
        T: Send + 'static,
    {
        let mut tasks = JoinSet::new();
        for (index, addr) in self.nodes.iter().enumerate() {
            let node = Node {
                name: addr.to_string(),
                addr: addr.clone(),
                options: self.options,
            };
            let call = per_node(node);
            tasks.spawn(async move { (index, call.await) });
        }
        let mut slots: Vec<Option<Result<T, LbError>>> = self.nodes.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, result)) => slots[index] = Some(result),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => panic!("HAProxy node task cancelled: {error}"),
            }
        }
        slots
            .into_iter()
            .map(|slot| slot.expect("every node task reports"))
            .collect()
    }

    /// Refuses names HAProxy could not have (it allows letters, digits, `-`, `_`, `.`, `:`),
    /// which also keeps spaces, `;` and newlines from splicing extra commands into the CLI.
    fn check_names(&self, backend: &str, server: &str) -> Result<(), LbError> {
        if valid_name(backend) && (server == "*" || valid_name(server)) {
            return Ok(());
        }
        Err(LbError::NoSuchServer {
            node: self
                .nodes
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            backend: backend.to_owned(),
            server: server.to_owned(),
        })
    }
}

#[async_trait]
impl LoadBalancer for HaproxyDriver {
    /// `set server <backend>/<server> state ready|drain|maint` on every node.
    ///
    /// Cancellation-safe: the command is idempotent, so a dropped call leaves some nodes
    /// changed and a repeated call converges. Mind the table in the module docs: `ready`
    /// counts as up at once, before any check has passed.
    async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), LbError> {
        self.check_names(backend, server)?;
        let command = format!("set server {backend}/{server} state {state}");
        let (backend, server) = (backend.to_owned(), server.to_owned());
        self.on_every_node(|node| {
            let (command, backend, server) = (command.clone(), backend.clone(), server.clone());
            async move {
                let reply = node.run(&command).await?;
                expect_empty(&node, &command, &reply, &backend, &server)
            }
        })
        .await?;
        Ok(())
    }

    /// `show stat <backend> 4 -1` on every node, one entry per node and server, in node order
    /// then HAProxy's server order, with `status` and `check` parsed (a check in progress reads
    /// as its last result). A node without that backend gives `NoSuchServer` with server `*`.
    ///
    /// Cancellation-safe: it only reads.
    async fn servers(&self, backend: &str) -> Result<Vec<ServerStatus>, LbError> {
        self.check_names(backend, "*")?;
        let backend = backend.to_owned();
        let per_node = self
            .on_every_node(|node| {
                let backend = backend.clone();
                async move { node.servers(&backend).await }
            })
            .await?;
        Ok(per_node.into_iter().flatten().collect())
    }

    /// Reads the server's `scur` on every node, then `shutdown sessions server
    /// <backend>/<server>`; returns the sum of what was open. Sessions opened between the two
    /// commands are closed too but not counted (a drained server gets none).
    ///
    /// Cancellation-safe: closing sessions again closes nothing more.
    async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<u64, LbError> {
        self.check_names(backend, server)?;
        let (backend, server) = (backend.to_owned(), server.to_owned());
        let counts = self
            .on_every_node(|node| {
                let (backend, server) = (backend.clone(), server.clone());
                async move {
                    let open = node
                        .servers(&backend)
                        .await?
                        .into_iter()
                        .find(|status| status.server == server)
                        .ok_or_else(|| node.no_such(&backend, &server))?
                        .sessions;
                    let command = format!("shutdown sessions server {backend}/{server}");
                    let reply = node.run(&command).await?;
                    expect_empty(&node, &command, &reply, &backend, &server)?;
                    Ok(open)
                }
            })
            .await?;
        Ok(counts.into_iter().sum())
    }

    /// `add server <backend>/<server> <address> check inter … rise … fall … weight …`, then
    /// `enable health`, on every node where it is missing. The health-check settings are
    /// `like`'s as `show stat` reports them (a dynamic server does not inherit `default-server`
    /// in HAProxy 2.6) with `inter` given, since `show stat` does not report it. The new server
    /// is in maint. A node where the server already is, at `address`, is left as it is.
    ///
    /// Cancellation-safe: a repeated call finds the server there and converges.
    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: BackendAddr,
        like: &str,
        inter: Duration,
    ) -> Result<(), LbError> {
        self.check_names(backend, server)?;
        self.check_names(backend, like)?;
        let (backend, server, like) = (backend.to_owned(), server.to_owned(), like.to_owned());
        self.on_every_node(|node| {
            let (backend, server, like) = (backend.clone(), server.clone(), like.clone());
            async move {
                node.add_server(&backend, &server, address, &like, inter)
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// `set server <backend>/<server> state maint` then `del server <backend>/<server>` on
    /// every node; a node without the server has nothing to do. HAProxy refuses to delete a
    /// server that still has connections (`Refused`); calling again later converges.
    ///
    /// Cancellation-safe: both commands are idempotent.
    async fn remove_server(&self, backend: &str, server: &str) -> Result<(), LbError> {
        self.check_names(backend, server)?;
        let (backend, server) = (backend.to_owned(), server.to_owned());
        self.on_every_node(|node| {
            let (backend, server) = (backend.clone(), server.clone());
            async move {
                let command = format!("set server {backend}/{server} state maint");
                let reply = node.run(&command).await?;
                match expect_empty(&node, &command, &reply, &backend, &server) {
                    Ok(()) => {}
                    Err(LbError::NoSuchServer { .. }) => return Ok(()),
                    Err(error) => return Err(error),
                }
                let command = format!("del server {backend}/{server}");
                let reply = node.run(&command).await?;
                match reply.trim() {
                    "Server deleted." | "No such server." => Ok(()),
                    other => Err(LbError::Refused {
                        node: node.name.clone(),
                        command,
                        reply: other.to_owned(),
                    }),
                }
            }
        })
        .await?;
        Ok(())
    }
}

/// One node as a task sees it.
struct Node {
    name: String,
    addr: RuntimeApiAddr,
    options: HaproxyOptions,
}

impl Node {
    /// Runs one command, retrying unreachable/silent nodes with exponential backoff.
    /// Every command this driver sends is idempotent, so retrying after a timeout that may
    /// have hit a command already applied is safe.
    async fn run(&self, command: &str) -> Result<String, LbError> {
        let attempts = self.options.attempts.max(1);
        let mut delay = self.options.backoff;
        let mut attempt = 1;
        loop {
            tracing::debug!(node = %self.name, command, attempt, "HAProxy runtime API command");
            match tokio::time::timeout(self.options.command_timeout, self.exchange(command)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(Failure::Protocol(reason))) => {
                    return Err(LbError::Protocol {
                        node: self.name.clone(),
                        reason,
                    });
                }
                outcome => {
                    let reason = match outcome {
                        Ok(Err(Failure::Retry(reason))) => reason,
                        _ => format!("no answer within {:?}", self.options.command_timeout),
                    };
                    tracing::debug!(node = %self.name, command, attempt, %reason, "HAProxy node unreachable");
                    if attempt >= attempts {
                        return Err(LbError::Unreachable {
                            node: self.name.clone(),
                            attempts,
                            reason,
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    /// Connect, send, read to EOF. No timeout here; `run` adds it.
    async fn exchange(&self, command: &str) -> Result<String, Failure> {
        match &self.addr {
            RuntimeApiAddr::Unix(path) => {
                let stream = connect_unix(path).await?;
                converse(stream, command).await
            }
            RuntimeApiAddr::Tcp(addr) => {
                let stream = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| Failure::Retry(format!("cannot connect: {e}")))?;
                converse(stream, command).await
            }
        }
    }

    /// `show stat <backend> 4 -1` on this node, parsed.
    async fn servers(&self, backend: &str) -> Result<Vec<ServerStatus>, LbError> {
        let command = format!("show stat {backend} 4 -1");
        let reply = self.run(&command).await?;
        if reply.trim() == "No such proxy." {
            return Err(self.no_such(backend, "*"));
        }
        parse_show_stat(&self.name, backend, &reply).map_err(|reason| LbError::Protocol {
            node: self.name.clone(),
            reason,
        })
    }

    /// [`HaproxyDriver::add_server`] on this node.
    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: BackendAddr,
        like: &str,
        inter: Duration,
    ) -> Result<(), LbError> {
        let rows = self.server_lines(backend).await?;
        if self.already_there(&rows, backend, server, address)? {
            return Ok(());
        }
        let like = rows
            .iter()
            .find(|row| row.server == like)
            .ok_or_else(|| self.no_such(backend, like))?;
        let mut command = format!("add server {backend}/{server} {address}");
        if let Some((rise, fall)) = like.checks {
            command.push_str(&format!(
                " check inter {}ms rise {rise} fall {fall}",
                inter.as_millis().max(1)
            ));
        }
        command.push_str(&format!(" weight {}", like.weight));
        if like.backup {
            command.push_str(" backup");
        }
        let reply = self.run(&command).await?;
        match reply.trim() {
            "New server registered." => {}
            // Added meanwhile (by a retry of this command whose answer was lost, or another
            // runtime-API client of this node): fine if at the same address.
            "Already exists a server with the same name in backend."
                if self.already_there(
                    &self.server_lines(backend).await?,
                    backend,
                    server,
                    address,
                )? => {}
            other => {
                return Err(LbError::Refused {
                    node: self.name.clone(),
                    command,
                    reply: other.to_owned(),
                });
            }
        }
        if like.checks.is_some() {
            let command = format!("enable health {backend}/{server}");
            let reply = self.run(&command).await?;
            expect_empty(self, &command, &reply, backend, server)?;
        }
        Ok(())
    }

    /// `show stat` of `backend` on this node, for [`Node::add_server`].
    async fn server_lines(&self, backend: &str) -> Result<Vec<ServerLine>, LbError> {
        let reply = self.run(&format!("show stat {backend} 4 -1")).await?;
        if reply.trim() == "No such proxy." {
            return Err(self.no_such(backend, "*"));
        }
        parse_server_lines(backend, &reply).map_err(|reason| LbError::Protocol {
            node: self.name.clone(),
            reason,
        })
    }

    /// Whether `server` is among `rows` at `address`; at another address it is an error.
    fn already_there(
        &self,
        rows: &[ServerLine],
        backend: &str,
        server: &str,
        address: BackendAddr,
    ) -> Result<bool, LbError> {
        match rows.iter().find(|row| row.server == server) {
            None => Ok(false),
            Some(there) if there.addr == address.to_string() => Ok(true),
            Some(there) => Err(LbError::Refused {
                node: self.name.clone(),
                command: format!("add server {backend}/{server} {address}"),
                reply: format!(
                    "a server {backend}/{server} already exists at {}: expected it at {address} or absent",
                    there.addr
                ),
            }),
        }
    }

    fn no_such(&self, backend: &str, server: &str) -> LbError {
        LbError::NoSuchServer {
            node: self.name.clone(),
            backend: backend.to_owned(),
            server: server.to_owned(),
        }
    }
}

/// Why one exchange failed.
enum Failure {
    /// Nothing usable came back; try again.
    Retry(String),
    /// An answer came back that cannot be used; retrying will not help.
    Protocol(String),
}

async fn connect_unix(path: &Path) -> Result<UnixStream, Failure> {
    UnixStream::connect(path)
        .await
        .map_err(|e| Failure::Retry(format!("cannot connect: {e}")))
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> Result<String, Failure> {
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(|e| Failure::Retry(format!("cannot send the command: {e}")))?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_REPLY + 1)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| Failure::Retry(format!("cannot read the answer: {e}")))?;
    if reply.is_empty() {
        // HAProxy ends every answer with an empty line, so zero bytes means the connection
        // was closed before the command was handled (a reload, say).
        return Err(Failure::Retry("connection closed without an answer".into()));
    }
    if reply.len() as u64 > MAX_REPLY {
        return Err(Failure::Protocol(format!(
            "answer longer than {MAX_REPLY} bytes"
        )));
    }
    String::from_utf8(reply).map_err(|_| Failure::Protocol("answer is not UTF-8".into()))
}

/// For commands that answer nothing (an empty line) on success.
fn expect_empty(
    node: &Node,
    command: &str,
    reply: &str,
    backend: &str,
    server: &str,
) -> Result<(), LbError> {
    match reply.trim() {
        "" => Ok(()),
        "No such server." | "No such backend." => Err(node.no_such(backend, server)),
        other => Err(LbError::Refused {
            node: node.name.clone(),
            command: command.to_owned(),
            reply: other.to_owned(),
        }),
    }
}

/// HAProxy's rule for proxy and server names (`invalid_char`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Parses `show stat` CSV by header names. Keeps only the server rows of `backend`.
///
/// How to read the result (HAProxy 2.6, see the module docs for the full table): a drained
/// server whose checks pass is `Drain` with a passed check ("DRAIN", "L7OK"); a drained server
/// whose checks fail is `Down` ("L4CON", "L7STS", …); maint is `Maint` with no check result.
/// Right after leaving maint the state is still `changing` ("DRAIN 1/2", "UP 1/2") and the check
/// result is the one from before maint, so wait for the settled `Drain` with a passed check,
/// then `ready`, then the settled `Up`.
fn parse_show_stat(node: &str, backend: &str, reply: &str) -> Result<Vec<ServerStatus>, String> {
    let mut lines = reply.lines();
    let header = lines.next().unwrap_or_default();
    let Some(header) = header.strip_prefix("# ") else {
        return Err(format!(
            "expected a `# pxname,…` CSV header, got {:?}",
            excerpt(reply)
        ));
    };
    let names = split_csv(header)?;
    let column = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("the CSV header has no `{name}` column"))
    };
    let (pxname, svname, scur, status, check_status, bck) = (
        column("pxname")?,
        column("svname")?,
        column("scur")?,
        column("status")?,
        column("check_status")?,
        column("bck")?,
    );
    // Optional: a server without `check` leaves it empty.
    let check_fall = names.iter().position(|n| n == "check_fall");
    // Optional too: a TCP backend has no HTTP counters.
    let (req_tot, hrsp_5xx, chkdown) = (
        names.iter().position(|n| n == "req_tot"),
        names.iter().position(|n| n == "hrsp_5xx"),
        names.iter().position(|n| n == "chkdown"),
    );
    let needed = [pxname, svname, scur, status, check_status, bck]
        .into_iter()
        .chain(check_fall)
        .chain(req_tot)
        .chain(hrsp_5xx)
        .chain(chkdown)
        .max()
        .unwrap_or(0);
    let mut servers = Vec::new();
    for (number, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = split_csv(line)?;
        if row.len() <= needed {
            return Err(format!(
                "CSV row {} has {} fields: {:?}",
                number + 2,
                row.len(),
                excerpt(line)
            ));
        }
        if row[pxname] != backend || row[svname] == "FRONTEND" || row[svname] == "BACKEND" {
            continue;
        }
        let sessions = row[scur]
            .parse::<u64>()
            .map_err(|_| format!("`scur` of {} is {:?}, not a number", row[svname], row[scur]))?;
        let backup = match &*row[bck] {
            "1" => true,
            "0" | "" => false,
            other => return Err(format!("`bck` of {} is {other:?}", row[svname])),
        };
        let fall = match check_fall.map(|i| &*row[i]) {
            None | Some("") => None,
            Some(value) => Some(value.parse::<u32>().map_err(|_| {
                format!("`check_fall` of {} is {value:?}, not a number", row[svname])
            })?),
        };
        let counter = |column: Option<usize>, name: &str| match column.map(|i| &*row[i]) {
            None | Some("") => Ok(0),
            Some(value) => value
                .parse::<u64>()
                .map_err(|_| format!("`{name}` of {} is {value:?}, not a number", row[svname])),
        };
        let counters = ServerCounters {
            requests: counter(req_tot, "req_tot")?,
            errors_5xx: counter(hrsp_5xx, "hrsp_5xx")?,
            check_downs: counter(chkdown, "chkdown")?,
        };
        servers.push(ServerStatus {
            node: node.to_owned(),
            server: row[svname].to_string(),
            status: parse_status(&row[status]),
            check: parse_check(&row[check_status]),
            sessions,
            backup,
            fall,
            counters,
        });
    }
    Ok(servers)
}

/// What [`Node::add_server`] copies from a server: its `show stat` columns `addr`,
/// `check_rise`/`check_fall` (empty without checks), `uweight` and `bck`.
struct ServerLine {
    server: String,
    addr: String,
    checks: Option<(u32, u32)>,
    weight: u32,
    backup: bool,
}

/// `show stat` CSV, read for the columns of [`ServerLine`], for the servers of `backend`.
fn parse_server_lines(backend: &str, reply: &str) -> Result<Vec<ServerLine>, String> {
    let mut lines = reply.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .strip_prefix("# ")
        .ok_or_else(|| {
            format!(
                "expected a `# pxname,…` CSV header, got {:?}",
                excerpt(reply)
            )
        })?;
    let names = split_csv(header)?;
    let column = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("the CSV header has no `{name}` column"))
    };
    let columns = [
        column("pxname")?,
        column("svname")?,
        column("addr")?,
        column("check_rise")?,
        column("check_fall")?,
        column("uweight")?,
        column("bck")?,
    ];
    let [pxname, svname, addr, rise, fall, weight, bck] = columns;
    let needed = columns.into_iter().max().unwrap_or(0);
    let mut servers = Vec::new();
    for line in lines.filter(|line| !line.trim().is_empty()) {
        let row = split_csv(line)?;
        if row.len() <= needed {
            return Err(format!(
                "CSV row has {} fields: {:?}",
                row.len(),
                excerpt(line)
            ));
        }
        if row[pxname] != backend || row[svname] == "FRONTEND" || row[svname] == "BACKEND" {
            continue;
        }
        let number = |i: usize| {
            row[i].parse::<u32>().map_err(|_| {
                format!(
                    "`{}` of {} is {:?}, not a number",
                    names[i], row[svname], row[i]
                )
            })
        };
        servers.push(ServerLine {
            server: row[svname].to_string(),
            addr: row[addr].to_string(),
            checks: match (&*row[rise], &*row[fall]) {
                ("", _) | (_, "") => None,
                _ => Some((number(rise)?, number(fall)?)),
            },
            weight: number(weight)?,
            backup: &*row[bck] == "1",
        });
    }
    Ok(servers)
}

/// Reads a server's `status` column. The words are HAProxy 2.6's (`stats_fill_sv_line`):
/// `MAINT`, `MAINT (resolution)` or `MAINT (via <backend>/<server>)` when in maintenance, else
/// `UP`, `NOLB`, `DRAIN` or `DOWN`, with `n/m` while the check health is between two states
/// (`UP 1/2` right after maint), `DRAIN (agent)` and `DOWN (agent)` when an agent check decides,
/// and `no check` for a server in rotation without checks. A word not among them is kept as
/// `Other`, which counts as neither up nor drained.
fn parse_status(word: &str) -> ServerState {
    match word {
        "UP" => ServerState::Up { changing: None },
        "no check" => ServerState::NoCheck,
        "NOLB" => ServerState::Nolb { changing: None },
        "DRAIN" => ServerState::Drain { changing: None },
        "DRAIN (agent)" => ServerState::AgentDrain,
        "MAINT" => ServerState::Maint {
            cause: MaintCause::Admin,
        },
        "MAINT (resolution)" => ServerState::Maint {
            cause: MaintCause::Resolution,
        },
        "DOWN" => ServerState::Down { changing: None },
        "DOWN (agent)" => ServerState::AgentDown,
        other => parse_changing(other)
            .or_else(|| {
                let tracked = other.strip_prefix("MAINT (via ")?.strip_suffix(')')?;
                Some(ServerState::Maint {
                    cause: MaintCause::Via(tracked.to_owned()),
                })
            })
            .unwrap_or_else(|| ServerState::Other {
                word: other.to_owned(),
            }),
    }
}

/// `UP n/m`, `NOLB n/m`, `DRAIN n/m`, `DOWN n/m`.
fn parse_changing(word: &str) -> Option<ServerState> {
    let (state, health) = word.split_once(' ')?;
    let (current, of) = health.split_once('/')?;
    let changing = Some(Health {
        current: current.parse().ok()?,
        of: of.parse().ok()?,
    });
    match state {
        "UP" => Some(ServerState::Up { changing }),
        "NOLB" => Some(ServerState::Nolb { changing }),
        "DRAIN" => Some(ServerState::Drain { changing }),
        "DOWN" => Some(ServerState::Down { changing }),
        _ => None,
    }
}

/// Reads `check_status`: empty in maint or without checks, `* ` before it while a check runs.
/// `L4OK`, `L6OK`, `L7OK`, `L7OKC` (the check passed, with `disable-on-404` applying) and
/// `PROCOK` (an external check) are passes; everything else (`L4CON`, `L7STS`, `L4TOUT`, `INI`
/// before the first check…) is not.
fn parse_check(column: &str) -> Option<CheckResult> {
    let code = column.trim_start_matches("* ").trim();
    match code {
        "" => None,
        "L4OK" | "L6OK" | "L7OK" | "L7OKC" | "PROCOK" => Some(CheckResult::Passed(code.to_owned())),
        _ => Some(CheckResult::Failed(code.to_owned())),
    }
}

/// Splits one CSV line; HAProxy quotes fields holding `,` or `"` and doubles inner quotes.
///
/// Fields borrow from the line: an answer for 500 servers has some 65,000 fields, of which
/// Baton keeps seven per row, and it is read every 10 ms while a rollout waits.
fn split_csv(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    if !line.contains('"') {
        return Ok(line.split(',').map(Cow::Borrowed).collect());
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, ',') => fields.push(Cow::Owned(std::mem::take(&mut field))),
            (false, '"') if field.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!(
            "unterminated quote in CSV line {:?}",
            excerpt(line)
        ));
    }
    fields.push(Cow::Owned(field));
    Ok(fields)
}

fn excerpt(text: &str) -> String {
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    //! These run the real `/usr/sbin/haproxy` (Debian 2.6) against in-process HTTP backends.

    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use tokio::net::TcpListener;
    use tokio::process::{Child, Command};
    use tokio::task::JoinHandle;

    use super::*;

    const HAPROXY: &str = "/usr/sbin/haproxy";

    /// A tiny HTTP server that answers its own name; `GET /slow/<ms>` answers after `<ms>`,
    /// `GET /fail` answers 500.
    struct TestBackend {
        name: String,
        port: u16,
        hits: Arc<AtomicUsize>,
        accept: JoinHandle<()>,
    }

    impl TestBackend {
        async fn start(name: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let hits = Arc::new(AtomicUsize::new(0));
            let (body, counter) = (name.to_owned(), hits.clone());
            let accept = tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (body, counter) = (body.clone(), counter.clone());
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let request = String::from_utf8_lossy(&request).into_owned();
                        let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        if path != "/alive" {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Some(ms) = path.strip_prefix("/slow/") {
                            let ms: u64 = ms.parse().unwrap_or(10_000);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let status = if path == "/fail" {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Self {
                name: name.to_owned(),
                port,
                hits,
                accept,
            }
        }

        /// Stops listening: new connections (and health checks) are refused.
        fn stop_listening(&self) {
            self.accept.abort();
        }
    }

    impl Drop for TestBackend {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    /// One server line of the test backend `app`.
    struct ServerLine {
        name: &'static str,
        port: u16,
        backup: bool,
    }

    /// A running HAProxy with an admin unix socket and an admin TCP socket.
    struct Haproxy {
        child: Child,
        /// Holds the socket, config and log until HAProxy is gone.
        _dir: tempfile::TempDir,
        socket: PathBuf,
        tcp_api: String,
        frontend: String,
    }

    impl Drop for Haproxy {
        fn drop(&mut self) {
            let _ = self.child.start_kill();
        }
    }

    async fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    impl Haproxy {
        async fn start(servers: &[ServerLine]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("admin.sock");
            let tcp_api = format!("127.0.0.1:{}", free_port().await);
            let frontend = format!("127.0.0.1:{}", free_port().await);
            let mut cfg = format!(
                "global\n\
                 \x20 stats socket {socket} mode 600 level admin\n\
                 \x20 stats socket {tcp_api} level admin\n\
                 defaults\n\
                 \x20 mode http\n\
                 \x20 timeout connect 1s\n\
                 \x20 timeout client 30s\n\
                 \x20 timeout server 30s\n\
                 frontend fe\n\
                 \x20 bind {frontend}\n\
                 \x20 default_backend app\n\
                 backend app\n\
                 \x20 balance roundrobin\n\
                 \x20 option httpchk GET /alive\n\
                 \x20 default-server inter 100ms fastinter 50ms rise 2 fall 2\n",
                socket = socket.display()
            );
            for server in servers {
                let backup = if server.backup { " backup" } else { "" };
                cfg.push_str(&format!(
                    "  server {} 127.0.0.1:{} check{backup}\n",
                    server.name, server.port
                ));
            }
            let cfg_path = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
            let child = Command::new(HAPROXY)
                .arg("-f")
                .arg(&cfg_path)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start haproxy");
            let haproxy = Self {
                child,
                _dir: dir,
                socket,
                tcp_api,
                frontend,
            };
            let driver = haproxy.driver();
            eventually("the runtime API answers", || async {
                driver.servers("app").await.is_ok()
            })
            .await;
            haproxy
        }

        fn unix_node(&self) -> RuntimeApiAddr {
            RuntimeApiAddr::Unix(self.socket.clone())
        }

        fn tcp_node(&self) -> RuntimeApiAddr {
            RuntimeApiAddr::Tcp(self.tcp_api.clone())
        }

        fn driver(&self) -> HaproxyDriver {
            HaproxyDriver::new(vec![self.unix_node()], quick())
        }
    }

    fn quick() -> HaproxyOptions {
        HaproxyOptions {
            command_timeout: Duration::from_millis(500),
            attempts: 3,
            backoff: Duration::from_millis(10),
        }
    }

    /// Polls `condition` every 20 ms for up to 10 s.
    async fn eventually<F, Fut>(what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status_of(driver: &HaproxyDriver, server: &str) -> ServerStatus {
        let all = driver.servers("app").await.unwrap();
        all.into_iter()
            .find(|s| s.server == server)
            .unwrap_or_else(|| panic!("no {server}"))
    }

    /// Waits until every listed server shows exactly `status` with check `check`.
    async fn wait_for(driver: &HaproxyDriver, servers: &[&str], status: &str, check: Option<&str>) {
        eventually(&format!("{servers:?} show {status} {check:?}"), || async {
            let all = driver.servers("app").await.unwrap();
            servers.iter().all(|name| {
                all.iter().filter(|s| s.server == *name).all(|s| {
                    s.status.to_string() == status
                        && s.check.as_ref().map(CheckResult::code) == check
                }) && all.iter().any(|s| s.server == *name)
            })
        })
        .await;
    }

    /// One `GET path` through the frontend; the body (the backend's name), or what came back.
    async fn get(frontend: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(frontend).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_owned(),
            _ => reply,
        }
    }

    /// Which backend answered each of `n` requests.
    async fn spread(frontend: &str, n: usize) -> Vec<String> {
        let mut answers = Vec::new();
        for _ in 0..n {
            answers.push(get(frontend, "/").await);
        }
        answers
    }

    async fn three_backends() -> (TestBackend, TestBackend, TestBackend) {
        (
            TestBackend::start("s1").await,
            TestBackend::start("s2").await,
            TestBackend::start("b1").await,
        )
    }

    fn lines(s1: &TestBackend, s2: &TestBackend, b1: &TestBackend) -> Vec<ServerLine> {
        vec![
            ServerLine {
                name: "s1",
                port: s1.port,
                backup: false,
            },
            ServerLine {
                name: "s2",
                port: s2.port,
                backup: false,
            },
            ServerLine {
                name: "b1",
                port: b1.port,
                backup: true,
            },
        ]
    }

    #[tokio::test]
    async fn a_server_added_at_runtime_copies_the_checks_serves_once_ready_and_is_removed() {
        let (s1, s2, b1) = three_backends().await;
        let surge = TestBackend::start("s1:surge").await;
        let haproxy = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        // Two runtime-API sockets of one HAProxy: the calls through both race, as a retried
        // command whose answer was lost does.
        let driver = HaproxyDriver::new(vec![haproxy.unix_node(), haproxy.tcp_node()], quick());
        let address = BackendAddr::parse(&format!("127.0.0.1:{}", surge.port)).unwrap();
        let add =
            || driver.add_server("app", "s1:surge", address, "s1", Duration::from_millis(100));
        add().await.unwrap();
        add().await.unwrap(); // already there at that address: nothing to do
        let added = status_of(&driver, "s1:surge").await;
        assert_eq!(added.status.to_string(), "MAINT", "added in maint");
        assert_eq!(
            added.fall,
            Some(2),
            "fall copied from s1 (default-server is not applied)"
        );
        assert!(!added.backup);

        // Drained, its check passes without traffic; ready, it serves.
        driver
            .set_state("app", "s1:surge", AdminState::Drain)
            .await
            .unwrap();
        wait_for(&driver, &["s1:surge"], "DRAIN", Some("L7OK")).await;
        driver
            .set_state("app", "s1:surge", AdminState::Ready)
            .await
            .unwrap();
        wait_for(&driver, &["s1:surge"], "UP", Some("L7OK")).await;
        eventually("s1:surge answers through the frontend", || async {
            spread(&haproxy.frontend, 6)
                .await
                .iter()
                .any(|b| b == "s1:surge")
        })
        .await;

        // Elsewhere is refused: a server of that name serves something else.
        let elsewhere = BackendAddr::parse(&format!("127.0.0.1:{}", s2.port)).unwrap();
        let refused = driver
            .add_server(
                "app",
                "s1:surge",
                elsewhere,
                "s1",
                Duration::from_millis(100),
            )
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("already exists at 127.0.0.1:"),
            "{refused}"
        );

        // The server from haproxy.cfg can go too, and removing twice is no error.
        driver.remove_server("app", "s1").await.unwrap();
        driver.remove_server("app", "s1").await.unwrap();
        let names: Vec<String> = driver
            .servers("app")
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.server)
            .collect();
        assert!(!names.iter().any(|n| n == "s1"), "{names:?}");
        for answer in spread(&haproxy.frontend, 6).await {
            assert_ne!(answer, "s1", "a removed server gets no traffic");
        }
        // A backup is added as a backup.
        driver
            .add_server("app", "b1:surge", address, "b1", Duration::from_millis(100))
            .await
            .unwrap();
        assert!(status_of(&driver, "b1:surge").await.backup);
    }

    #[test]
    fn parses_show_stat_by_header_names() {
        let reply = "# svname,pxname,bck,status,check_status,scur,check_desc,check_fall,req_tot,hrsp_5xx,chkdown,\n\
                     FRONTEND,app,,OPEN,,0,,,9,1,,\n\
                     s1,app,0,UP,* L7OK,3,\"a, \"\"quoted\"\" desc\",2,120,4,1,\n\
                     b1,app,1,MAINT,,0,,,,,,\n\
                     BACKEND,app,0,UP,,3,,,120,4,,\n\
                     x1,other,0,UP,L7OK,0,,1,7,0,0,\n\n";
        let servers = parse_show_stat("unix:/s", "app", reply).unwrap();
        assert_eq!(
            servers,
            vec![
                ServerStatus {
                    node: "unix:/s".into(),
                    server: "s1".into(),
                    status: ServerState::Up { changing: None },
                    check: Some(CheckResult::Passed("L7OK".into())),
                    sessions: 3,
                    backup: false,
                    fall: Some(2),
                    counters: ServerCounters {
                        requests: 120,
                        errors_5xx: 4,
                        check_downs: 1,
                    },
                },
                ServerStatus {
                    node: "unix:/s".into(),
                    server: "b1".into(),
                    status: ServerState::Maint {
                        cause: MaintCause::Admin,
                    },
                    check: None,
                    sessions: 0,
                    backup: true,
                    fall: None,
                    counters: ServerCounters::default(),
                },
            ]
        );
    }

    #[test]
    fn every_status_word_is_read_into_its_state_and_shown_as_haproxy_wrote_it() {
        let changing = |current, of| Some(Health { current, of });
        for (word, state) in [
            ("UP", ServerState::Up { changing: None }),
            // Just out of maint (with the stale check result), or checks started failing.
            (
                "UP 1/2",
                ServerState::Up {
                    changing: changing(1, 2),
                },
            ),
            (
                "UP 2/3",
                ServerState::Up {
                    changing: changing(2, 3),
                },
            ),
            ("no check", ServerState::NoCheck),
            ("NOLB", ServerState::Nolb { changing: None }),
            (
                "NOLB 1/2",
                ServerState::Nolb {
                    changing: changing(1, 2),
                },
            ),
            ("DRAIN", ServerState::Drain { changing: None }),
            (
                "DRAIN 1/2",
                ServerState::Drain {
                    changing: changing(1, 2),
                },
            ),
            ("DRAIN (agent)", ServerState::AgentDrain),
            (
                "MAINT",
                ServerState::Maint {
                    cause: MaintCause::Admin,
                },
            ),
            (
                "MAINT (resolution)",
                ServerState::Maint {
                    cause: MaintCause::Resolution,
                },
            ),
            (
                "MAINT (via app/s2)",
                ServerState::Maint {
                    cause: MaintCause::Via("app/s2".into()),
                },
            ),
            ("DOWN", ServerState::Down { changing: None }),
            // Checks have started passing again.
            (
                "DOWN 1/2",
                ServerState::Down {
                    changing: changing(1, 2),
                },
            ),
            ("DOWN (agent)", ServerState::AgentDown),
        ] {
            let parsed = parse_status(word);
            assert_eq!(parsed, state, "{word}");
            assert_eq!(parsed.to_string(), word, "shown as HAProxy wrote it");
        }
        // A word from a HAProxy this driver does not know is kept, and is never up.
        for word in ["UP 1/x", "STARTING", "DRAIN 1/2/3", "up", ""] {
            let parsed = parse_status(word);
            assert_eq!(parsed, ServerState::Other { word: word.into() }, "{word:?}");
            assert_eq!(parsed.to_string(), word);
            assert!(!parsed.in_rotation());
        }
    }

    #[test]
    fn only_a_settled_up_or_an_unchecked_server_is_up() {
        let server = |status: &str| ServerStatus {
            node: "n".into(),
            server: "s1".into(),
            status: parse_status(status),
            check: parse_check("L7OK"),
            sessions: 0,
            backup: false,
            fall: Some(2),
            counters: ServerCounters::default(),
        };
        for word in ["UP", "no check"] {
            assert!(server(word).is_up(), "{word}");
        }
        for word in [
            "UP 1/2",
            "NOLB",
            "DRAIN",
            "DRAIN 1/2",
            "DRAIN (agent)",
            "MAINT",
            "MAINT (via app/s2)",
            "DOWN",
            "DOWN 1/2",
            "DOWN (agent)",
            "STARTING",
        ] {
            assert!(!server(word).is_up(), "{word}");
        }
    }

    #[test]
    fn check_results_pass_only_on_an_ok_code() {
        for code in ["L4OK", "L6OK", "L7OK", "L7OKC", "PROCOK", "* L7OK"] {
            let check = parse_check(code).unwrap();
            assert!(check.passed(), "{code}");
            assert_eq!(check.code(), code.trim_start_matches("* "));
        }
        for code in [
            "L4CON", "L4TOUT", "L6TOUT", "L6RSP", "L7TOUT", "L7RSP", "L7STS", "SOCKERR", "INI",
            "UNK", "PROCERR", "* L4CON",
        ] {
            assert!(!parse_check(code).unwrap().passed(), "{code}");
        }
        assert_eq!(parse_check(""), None, "maint, or no check configured");
    }

    #[test]
    fn malformed_show_stat_is_an_error() {
        assert!(parse_show_stat("n", "app", "Unknown command\n").is_err());
        assert!(parse_show_stat("n", "app", "# pxname,svname,status\napp,s1,UP\n").is_err());
        let short = "# pxname,svname,scur,status,check_status,bck\napp,s1,0\n";
        assert!(parse_show_stat("n", "app", short).is_err());
        let bad_scur = "# pxname,svname,scur,status,check_status,bck\napp,s1,x,UP,L7OK,0\n";
        assert!(parse_show_stat("n", "app", bad_scur).is_err());
        assert!(split_csv("a,\"b").is_err());
    }

    /// Test 1: every server is listed, UP once checks pass, `backup` only on the backup.
    #[tokio::test]
    async fn servers_lists_every_server_up_with_backup_flag() {
        let (s1, s2, b1) = three_backends().await;
        let haproxy = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        let driver = haproxy.driver();
        wait_for(&driver, &["s1", "s2", "b1"], "UP", Some("L7OK")).await;

        let servers = driver.servers("app").await.unwrap();
        let names: Vec<_> = servers.iter().map(|s| s.server.as_str()).collect();
        assert_eq!(names, ["s1", "s2", "b1"]);
        let node = format!("unix:{}", haproxy.socket.display());
        for server in &servers {
            assert_eq!(server.node, node);
            assert_eq!(server.status, ServerState::Up { changing: None });
            assert!(server.is_up());
            assert_eq!(server.check, Some(CheckResult::Passed("L7OK".into())));
            assert_eq!(server.sessions, 0);
            assert_eq!(server.backup, server.server == "b1", "{server:?}");
        }

        // The counters the soak watch and the traffic chart read: every request and every 5xx
        // to the two active servers (the backup takes none while they are UP).
        let before = driver.servers("app").await.unwrap();
        spread(&haproxy.frontend, 6).await;
        for _ in 0..2 {
            get(&haproxy.frontend, "/fail").await;
        }
        let after = driver.servers("app").await.unwrap();
        let served = |server: &str| {
            let of = |list: &[ServerStatus]| {
                list.iter()
                    .find(|s| s.server == server)
                    .map(|s| s.counters)
                    .unwrap()
            };
            of(&after).since(of(&before))
        };
        let (s1, s2) = (served("s1"), served("s2"));
        assert_eq!(s1.requests + s2.requests, 8, "{s1:?} {s2:?}");
        assert_eq!(s1.errors_5xx + s2.errors_5xx, 2, "{s1:?} {s2:?}");
        assert_eq!(s1.check_downs + s2.check_downs, 0, "{s1:?} {s2:?}");
        assert_eq!(served("b1"), ServerCounters::default());
    }

    /// Test 2: drain takes a server out of rotation at once (checks keep passing), maint shows
    /// MAINT without a check result, ready brings it back.
    #[tokio::test]
    async fn drain_maint_ready_route_traffic() {
        let (s1, s2, b1) = three_backends().await;
        let haproxy = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        let driver = haproxy.driver();
        wait_for(&driver, &["s1", "s2", "b1"], "UP", Some("L7OK")).await;
        let answers = spread(&haproxy.frontend, 20).await;
        assert!(
            answers.iter().any(|a| a == "s1"),
            "s1 takes traffic when UP: {answers:?}"
        );
        assert!(
            answers.iter().all(|a| a == "s1" || a == "s2"),
            "{answers:?}"
        );

        driver
            .set_state("app", "s1", AdminState::Drain)
            .await
            .unwrap();
        let s1_status = status_of(&driver, "s1").await;
        assert_eq!(s1_status.status, ServerState::Drain { changing: None });
        assert_eq!(s1_status.check, Some(CheckResult::Passed("L7OK".into())));
        assert!(!s1_status.is_up());
        let before = s1.hits.load(Ordering::SeqCst);
        let answers = spread(&haproxy.frontend, 20).await;
        assert!(
            answers.iter().all(|a| a == "s2"),
            "drained s1 got traffic: {answers:?}"
        );
        assert_eq!(s1.hits.load(Ordering::SeqCst), before);

        driver
            .set_state("app", "s1", AdminState::Maint)
            .await
            .unwrap();
        let s1_status = status_of(&driver, "s1").await;
        assert_eq!(
            (s1_status.status, s1_status.check),
            (
                ServerState::Maint {
                    cause: MaintCause::Admin
                },
                None
            )
        );

        driver
            .set_state("app", "s1", AdminState::Ready)
            .await
            .unwrap();
        wait_for(&driver, &["s1"], "UP", Some("L7OK")).await;
        let answers = spread(&haproxy.frontend, 20).await;
        assert!(
            answers.iter().any(|a| a == "s1"),
            "s1 back in rotation: {answers:?}"
        );
        assert!(!answers.iter().any(|a| a == &b1.name), "{answers:?}");
    }

    /// Test 3: what the rollout engine waits on, step by step, and the 503 trap.
    #[tokio::test]
    async fn maint_drain_ready_sequence_and_the_503_trap() {
        let (s1, s2, b1) = three_backends().await;
        let dead_port = free_port().await;
        let mut servers = lines(&s1, &s2, &b1);
        servers.push(ServerLine {
            name: "s3",
            port: dead_port,
            backup: false,
        });
        let haproxy = Haproxy::start(&servers).await;
        let driver = haproxy.driver();
        wait_for(&driver, &["s1", "s2", "b1"], "UP", Some("L7OK")).await;
        wait_for(&driver, &["s3"], "DOWN", Some("L4CON")).await;

        // maint: no checks, no check result.
        driver
            .set_state("app", "s1", AdminState::Maint)
            .await
            .unwrap();
        let st = status_of(&driver, "s1").await;
        assert_eq!(
            (st.status, st.check),
            (
                ServerState::Maint {
                    cause: MaintCause::Admin
                },
                None
            )
        );

        // maint -> drain: at first "DRAIN 1/2" with the stale pre-maint "L7OK" (or, if the
        // first check already ran, the bare "DRAIN"); never in rotation.
        driver
            .set_state("app", "s1", AdminState::Drain)
            .await
            .unwrap();
        let st = status_of(&driver, "s1").await;
        assert!(
            matches!(
                st.status,
                ServerState::Drain {
                    changing: None | Some(Health { current: 1, of: 2 })
                }
            ),
            "{st:?}"
        );
        assert_eq!(st.check, Some(CheckResult::Passed("L7OK".into())));
        assert!(!st.is_up());
        // A fresh passing check turns it into the bare "DRAIN" + "L7OK".
        wait_for(&driver, &["s1"], "DRAIN", Some("L7OK")).await;
        let answers = spread(&haproxy.frontend, 10).await;
        assert!(answers.iter().all(|a| a == "s2"), "{answers:?}");

        // drain -> ready with full health: the bare "UP" at once.
        driver
            .set_state("app", "s1", AdminState::Ready)
            .await
            .unwrap();
        let st = status_of(&driver, "s1").await;
        assert_eq!(
            (st.status, st.check),
            (
                ServerState::Up { changing: None },
                Some(CheckResult::Passed("L7OK".into()))
            )
        );

        // The trap, as in a rollout: maint, the old process stops, nothing listens yet,
        // ready. HAProxy shows "UP 1/2" with the old "L7OK" before any check ran, and
        // HAProxy routes to it; requests routed there now get 503s. Only the next check turns
        // it DOWN.
        driver
            .set_state("app", "s1", AdminState::Maint)
            .await
            .unwrap();
        s1.stop_listening();
        driver
            .set_state("app", "s1", AdminState::Ready)
            .await
            .unwrap();
        let st = status_of(&driver, "s1").await;
        // Unless the machine is so loaded that the next check already ran (then: DOWN).
        assert!(
            matches!(
                (&st.status, st.check.as_ref()),
                (
                    ServerState::Up {
                        changing: Some(Health { current: 1, of: 2 })
                    },
                    Some(CheckResult::Passed(code))
                ) if code == "L7OK"
            ) || matches!(
                (&st.status, st.check.as_ref()),
                (ServerState::Down { .. }, Some(CheckResult::Failed(code))) if code == "L4CON"
            ),
            "{st:?}"
        );
        assert!(
            !st.is_up(),
            "the trap state (UP 1/2, stale L7OK, nothing listening) must not count as up"
        );
        wait_for(&driver, &["s1"], "DOWN", Some("L4CON")).await;

        // Same for a server that never passed a check at all.
        driver
            .set_state("app", "s3", AdminState::Maint)
            .await
            .unwrap();
        driver
            .set_state("app", "s3", AdminState::Ready)
            .await
            .unwrap();
        let st = status_of(&driver, "s3").await;
        // On a loaded machine the next check may already have run: then it says DOWN.
        assert!(
            matches!(
                (&st.status, st.check.as_ref()),
                (
                    ServerState::Up {
                        changing: Some(Health { current: 1, of: 2 })
                    } | ServerState::Down { .. },
                    Some(CheckResult::Failed(code))
                ) if code == "L4CON"
            ),
            "{st:?}"
        );
        assert!(!st.is_up());
        wait_for(&driver, &["s3"], "DOWN", Some("L4CON")).await;

        // And drain with failing checks is "DOWN", not "DRAIN".
        driver
            .set_state("app", "s1", AdminState::Drain)
            .await
            .unwrap();
        wait_for(&driver, &["s1"], "DOWN", Some("L4CON")).await;
    }

    /// Test 4: drain and maint leave a slow request alone; `shutdown_sessions` counts and cuts.
    #[tokio::test]
    async fn shutdown_sessions_cuts_a_drained_slow_request() {
        let (s1, s2, b1) = three_backends().await;
        let haproxy = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        let driver = haproxy.driver();
        wait_for(&driver, &["s1", "s2", "b1"], "UP", Some("L7OK")).await;

        // Route the slow request to s1 by draining s2 for a moment.
        driver
            .set_state("app", "s2", AdminState::Drain)
            .await
            .unwrap();
        let frontend = haproxy.frontend.clone();
        let started = Instant::now();
        let slow = tokio::spawn(async move { get(&frontend, "/slow/8000").await });
        eventually("s1 holds the slow session", || async {
            status_of(&driver, "s1").await.sessions == 1
        })
        .await;
        driver
            .set_state("app", "s2", AdminState::Ready)
            .await
            .unwrap();

        driver
            .set_state("app", "s1", AdminState::Drain)
            .await
            .unwrap();
        let st = status_of(&driver, "s1").await;
        assert_eq!(
            (st.status, st.sessions),
            (ServerState::Drain { changing: None }, 1)
        );
        driver
            .set_state("app", "s1", AdminState::Maint)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = status_of(&driver, "s1").await;
        assert_eq!(
            (st.status, st.sessions),
            (
                ServerState::Maint {
                    cause: MaintCause::Admin
                },
                1
            ),
            "maint keeps sessions"
        );
        assert!(!slow.is_finished());

        assert_eq!(driver.shutdown_sessions("app", "s1").await.unwrap(), 1);
        let answer = tokio::time::timeout(Duration::from_secs(3), slow)
            .await
            .unwrap()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_ne!(answer, "s1", "the cut request must not complete");
        eventually("s1 has no sessions", || async {
            status_of(&driver, "s1").await.sessions == 0
        })
        .await;
        assert_eq!(driver.shutdown_sessions("app", "s1").await.unwrap(), 0);
    }

    /// Test 5a: unknown names give `NoSuchServer`, naming the node.
    #[tokio::test]
    async fn unknown_server_or_backend_is_no_such_server() {
        let (s1, s2, b1) = three_backends().await;
        let haproxy = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        let driver = haproxy.driver();
        let node = format!("unix:{}", haproxy.socket.display());
        let no_such = |result: Result<(), LbError>, backend: &str, server: &str| match result {
            Err(LbError::NoSuchServer {
                node: n,
                backend: b,
                server: s,
            }) => {
                assert_eq!(
                    (n.as_str(), b.as_str(), s.as_str()),
                    (node.as_str(), backend, server)
                )
            }
            other => panic!("expected NoSuchServer for {backend}/{server}, got {other:?}"),
        };
        no_such(
            driver.set_state("app", "nope", AdminState::Drain).await,
            "app",
            "nope",
        );
        no_such(
            driver.set_state("nope", "s1", AdminState::Drain).await,
            "nope",
            "s1",
        );
        no_such(driver.servers("nope").await.map(drop), "nope", "*");
        no_such(
            driver.shutdown_sessions("app", "nope").await.map(drop),
            "app",
            "nope",
        );
        // Not a name HAProxy allows; never sent (it would splice a second command).
        no_such(
            driver
                .set_state("app", "s1;shutdown", AdminState::Maint)
                .await,
            "app",
            "s1;shutdown",
        );
        assert!(matches!(
            status_of(&driver, "s1").await.status,
            ServerState::Up { .. }
        ));
    }

    /// Test 5b: nothing listening, or a listener that never answers → `Unreachable` after the
    /// configured attempts, with backoff between them.
    #[tokio::test]
    async fn unreachable_node_after_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let options = HaproxyOptions {
            command_timeout: Duration::from_millis(100),
            attempts: 3,
            backoff: Duration::from_millis(20),
        };
        let missing = RuntimeApiAddr::Unix(dir.path().join("nothing.sock"));
        let closed = RuntimeApiAddr::Tcp(format!("127.0.0.1:{}", free_port().await));
        for addr in [missing, closed] {
            let driver = HaproxyDriver::new(vec![addr.clone()], options);
            let started = Instant::now();
            match driver.set_state("app", "s1", AdminState::Drain).await {
                Err(LbError::Unreachable { node, attempts, .. }) => {
                    assert_eq!((node, attempts), (addr.to_string(), 3));
                }
                other => panic!("expected Unreachable, got {other:?}"),
            }
            // Backoff 20 ms then 40 ms.
            assert!(
                started.elapsed() >= Duration::from_millis(60),
                "{:?}",
                started.elapsed()
            );
        }

        // Accepts but never answers: each attempt times out.
        let silent_path = dir.path().join("silent.sock");
        let silent = tokio::net::UnixListener::bind(&silent_path).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                open.push(stream);
            }
        });
        let addr = RuntimeApiAddr::Unix(silent_path);
        let driver = HaproxyDriver::new(vec![addr.clone()], options);
        let started = Instant::now();
        match driver.servers("app").await {
            Err(LbError::Unreachable {
                node,
                attempts,
                reason,
            }) => {
                assert_eq!((node, attempts), (addr.to_string(), 3));
                assert!(reason.contains("no answer"), "{reason}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert!(
            started.elapsed() >= Duration::from_millis(360),
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }

    /// Test 6: two HAProxy processes, one reached over unix, one over TCP.
    #[tokio::test]
    async fn two_nodes_get_every_change_and_report_separately() {
        let (s1, s2, b1) = three_backends().await;
        let first = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        let second = Haproxy::start(&lines(&s1, &s2, &b1)).await;
        let driver = HaproxyDriver::new(vec![first.unix_node(), second.tcp_node()], quick());
        let nodes = [first.unix_node().to_string(), second.tcp_node().to_string()];
        assert!(nodes[1].starts_with("tcp:127.0.0.1:"));
        wait_for(&driver, &["s1", "s2", "b1"], "UP", Some("L7OK")).await;

        driver
            .set_state("app", "s1", AdminState::Drain)
            .await
            .unwrap();
        let all = driver.servers("app").await.unwrap();
        assert_eq!(all.len(), 6);
        for (index, node) in nodes.iter().enumerate() {
            let on_node: Vec<_> = all[index * 3..index * 3 + 3].iter().collect();
            assert!(on_node.iter().all(|s| &s.node == node), "{all:?}");
            let s1_status = on_node.iter().find(|s| s.server == "s1").unwrap();
            assert_eq!(
                s1_status.status,
                ServerState::Drain { changing: None },
                "{node}"
            );
            let s2_status = on_node.iter().find(|s| s.server == "s2").unwrap();
            assert_eq!(
                s2_status.status,
                ServerState::Up { changing: None },
                "{node}"
            );
        }
        // Each process on its own agrees.
        for haproxy in [&first, &second] {
            assert_eq!(
                status_of(&haproxy.driver(), "s1").await.status,
                ServerState::Drain { changing: None }
            );
        }
        let answers = spread(&second.frontend, 10).await;
        assert!(answers.iter().all(|a| a == "s2"), "{answers:?}");

        driver
            .set_state("app", "s1", AdminState::Ready)
            .await
            .unwrap();
        wait_for(&driver, &["s1"], "UP", Some("L7OK")).await;
        assert_eq!(driver.shutdown_sessions("app", "s1").await.unwrap(), 0);

        // One node gone: the error names it.
        let mut second = second;
        second.child.kill().await.unwrap();
        match driver.set_state("app", "s1", AdminState::Drain).await {
            Err(LbError::Unreachable { node, .. }) => assert_eq!(node, nodes[1]),
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert_eq!(
            status_of(&first.driver(), "s1").await.status,
            ServerState::Drain { changing: None }
        );
    }
}
