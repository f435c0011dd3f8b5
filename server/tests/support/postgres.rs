//! A private PostgreSQL server for tests: one per test process, started on first use, with a
//! fresh database per test ([`fresh_database`]).
//!
//! The server is Debian's `postgresql` package run by hand: `initdb` into a temporary folder
//! `<temp>/baton-postgres-<pid>-…` (trust authentication for its superuser `baton`, `fsync`
//! off), then `postgres` itself listening on a free port of 127.0.0.1 and on a socket in that
//! folder, never the system's cluster or systemd. It speaks TLS too, with a certificate for
//! 127.0.0.1 signed by a CA of its own that `openssl` makes at start ([`TestPostgres::tls_url`]);
//! plain connections are still accepted. PostgreSQL refuses to run as root, so as root
//! both run as the package's `postgres` user (the folder is given to it); as anyone else they
//! run as the test's user.
//!
//! The server goes away with the process in every case: at a normal exit an `atexit` handler
//! stops it and removes the folder (also when tests failed, since a panicking test does not
//! end the process); if the process is killed, `postgres` gets SIGQUIT from the kernel
//! (`PR_SET_PDEATHSIG`) and the next start on the machine removes folders whose process is
//! gone. It never signals a process it cannot show is its own.
//!
//! Shared by the store's unit tests (`server/src/store/testing.rs` includes this file by path)
//! and the integration tests (`support::postgres`), so it uses only std, nix and tempfile.
//! A test that cannot get its server panics saying why: there is no silent skip.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Where Debian's `postgresql-<major>` packages put their programs.
const DEBIAN_LIBDIR: &str = "/usr/lib/postgresql";

/// The start of the temporary folder's name: `baton-postgres-<pid>-…`.
const FOLDER_PREFIX: &str = "baton-postgres-";

/// The superuser `initdb` creates; every test database belongs to it.
pub const SUPERUSER: &str = "baton";

/// How long `postgres` may take to accept connections (it takes well under a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `postgres` logs once it accepts connections (its messages are in English: `--locale=C`).
const READY: &str = "database system is ready to accept connections";

static SERVER: OnceLock<Result<TestPostgres, String>> = OnceLock::new();

/// Names this process's databases apart.
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// This process's PostgreSQL server.
pub struct TestPostgres {
    /// Where the server's programs are, e.g. `/usr/lib/postgresql/15/bin`.
    bin: PathBuf,
    /// `<temp>/baton-postgres-<pid>-…`: `data/` (the cluster), the unix socket and `postgres.log`.
    dir: PathBuf,
    port: u16,
    pid: Pid,
}

/// The URL of a new, empty database on this process's server, for one test. Panics, saying
/// why, when the server cannot be started or the database cannot be made.
pub fn fresh_database() -> String {
    let server = server();
    let name = format!(
        "baton_test_{}",
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    server
        .create_database(&name)
        .unwrap_or_else(|why| panic!("the tests' PostgreSQL cannot make a database: {why}"));
    server.url(&name)
}

/// [`fresh_database`] over TLS ([`TestPostgres::tls_url`]).
pub fn fresh_tls_database() -> String {
    let plain = fresh_database();
    let name = plain.rsplit('/').next().unwrap_or_default();
    server().tls_url(name)
}

/// This process's server, started on first use. Panics, saying why, when it cannot start.
pub fn server() -> &'static TestPostgres {
    match SERVER.get_or_init(TestPostgres::start_shared) {
        Ok(server) => server,
        Err(why) => panic!("the tests' PostgreSQL server cannot start: {why}"),
    }
}

/// Everything the database at `url` (one of [`fresh_database`]'s) holds, as `pg_dump` writes
/// it. Panics, saying why, when it cannot.
pub fn dump(url: &str) -> Vec<u8> {
    let database = url.rsplit('/').next().unwrap_or_default();
    server()
        .dump(database)
        .unwrap_or_else(|why| panic!("the tests' PostgreSQL cannot dump {database}: {why}"))
}

impl TestPostgres {
    /// `postgres://baton@127.0.0.1:<port>/<database>`: over TCP, as Baton is configured.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// [`TestPostgres::url`] over TLS, the server's certificate checked against the server's
    /// own CA (`sslmode=verify-full&sslrootcert=<folder>/ca.crt`).
    pub fn tls_url(&self, database: &str) -> String {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            self.url(database),
            self.dir.join("ca.crt").display()
        )
    }

    /// A CA that did not sign the server's certificate, as a PEM file path.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `CREATE DATABASE <name>`, with the package's `createdb`.
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        let output = Command::new(self.bin.join("createdb"))
            .args(["--host=127.0.0.1", &format!("--port={}", self.port)])
            .args([&format!("--username={SUPERUSER}"), name])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run createdb: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "createdb {name} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// `pg_dump` of one database: its schema and every row.
    pub fn dump(&self, database: &str) -> Result<Vec<u8>, String> {
        let output = Command::new(self.bin.join("pg_dump"))
            .args(["--host=127.0.0.1", &format!("--port={}", self.port)])
            .args([&format!("--username={SUPERUSER}"), database])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run pg_dump: {error}"))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(format!(
                "pg_dump {database} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// The process's shared server: stopped and removed at exit.
    fn start_shared() -> Result<Self, String> {
        let server = Self::start()?;
        // SAFETY: registers a plain function; `atexit` has no other precondition.
        let registered = unsafe { nix::libc::atexit(stop_at_exit) };
        if registered != 0 {
            server.stop();
            return Err("cannot register the stop at exit".into());
        }
        Ok(server)
    }

    fn start() -> Result<Self, String> {
        sweep_leftovers();
        let bin = find_bin()?;
        let owner = owner()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{FOLDER_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|error| format!("cannot make a temporary folder: {error}"))?
            .keep();
        let started = Self::start_in(&bin, &dir, owner);
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        started
    }

    fn start_in(bin: &Path, dir: &Path, owner: Option<Owner>) -> Result<Self, String> {
        if let Some(owner) = owner {
            std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid))
                .map_err(|error| format!("cannot give {} to postgres: {error}", dir.display()))?;
        }
        make_certificates(dir, owner)?;
        let data = dir.join("data");
        let output = as_owner(Command::new(bin.join("initdb")), owner)
            .arg("--pgdata")
            .arg(&data)
            .args([&format!("--username={SUPERUSER}"), "--auth=trust"])
            .args([
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run initdb: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        // The free port may be taken between finding it and postgres binding it: try another.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            match start_postgres(bin, dir, port, owner) {
                Ok(pid) => {
                    return Ok(Self {
                        bin: bin.to_owned(),
                        dir: dir.to_owned(),
                        port,
                        pid,
                    });
                }
                Err(Start::PortTaken(log)) => last_error = log,
                Err(Start::Failed(why)) => return Err(why),
            }
        }
        Err(format!("no free port after 5 tries: {last_error}"))
    }

    /// Stops the server (immediate shutdown: the data is thrown away) and removes its folder.
    fn stop(&self) {
        halt(self.pid, Signal::SIGQUIT);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to the server `pid` (a child of this process) and waits for it to end: up to
/// 10 s, then it is killed.
fn halt(pid: Pid, signal: Signal) {
    {
        let _ = kill(pid, signal);
        // The server is this process's child: gone once reaped, here or by its log reader.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    break;
                }
                _ => break,
            }
        }
    }
}

extern "C" fn stop_at_exit() {
    if let Some(Ok(server)) = SERVER.get() {
        server.stop();
    }
}

/// The user the server runs as, when the test runs as root.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

fn owner() -> Result<Option<Owner>, String> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0);
    if !root {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|error| format!("cannot run `id`: {error}"))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                "PostgreSQL refuses to run as root and there is no `postgres` user to run it as \
                 (Debian's postgresql package makes one: scripts/dev setup installs it)"
                    .to_owned()
            })
    };
    Ok(Some(Owner {
        uid: id("-u")?,
        gid: id("-g")?,
    }))
}

/// `command` run as `owner` (when the test runs as root).
fn as_owner(mut command: Command, owner: Option<Owner>) -> Command {
    if let Some(owner) = owner {
        // Not `runuser`: it would stay between this process and postgres, and the kernel's
        // parent-death signal would reach it instead of the server.
        command.uid(owner.uid).gid(owner.gid);
    }
    command
}

/// The programs of the newest PostgreSQL Debian installed.
fn find_bin() -> Result<PathBuf, String> {
    let newest = std::fs::read_dir(DEBIAN_LIBDIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .max();
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "no PostgreSQL server in {DEBIAN_LIBDIR}/<version>/bin: install Debian's postgresql \
             package (scripts/dev setup does)"
        )
    })
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free loopback port: {error}"))
}

/// With `openssl`: `ca.crt` (a CA of this server's own), `server.crt` and `server.key` (for
/// 127.0.0.1, signed by it, the key readable by the server's user alone), and `other-ca.crt`,
/// a CA that signed nothing here.
fn make_certificates(dir: &Path, owner: Option<Owner>) -> Result<(), String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run openssl (Debian's openssl package): {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    };
    for (name, subject) in [("ca", "/CN=Baton test CA"), ("other-ca", "/CN=Another CA")] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ])?;
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|error| format!("cannot write server.ext: {error}"))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    // PostgreSQL refuses a key that others can read.
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|error| format!("cannot restrict {}: {error}", key.display()))?;
    if let Some(owner) = owner {
        for file in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(file), Some(owner.uid), Some(owner.gid))
                .map_err(|error| format!("cannot give {file} to postgres: {error}"))?;
        }
    }
    Ok(())
}

enum Start {
    PortTaken(String),
    Failed(String),
}

/// What the thread that owns `postgres` reports.
enum Report {
    Spawned(Pid),
    Ready,
    /// Its log ended (it exited) before it was ready: the log's tail.
    Exited(String),
}

/// Starts `postgres` on `port` and waits until it accepts connections; returns its PID.
///
/// It is spawned by a thread that then copies its log into `postgres.log` until it exits, so
/// the thread lives exactly as long as the server: the parent-death signal fires when the
/// thread that spawned a process ends, not the process.
fn start_postgres(bin: &Path, dir: &Path, port: u16, owner: Option<Owner>) -> Result<Pid, Start> {
    let mut command = as_owner(Command::new(bin.join("postgres")), owner);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        // Nothing here outlives the process: durability only costs time.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .args(["-c", "synchronous_commit=off", "-c", "max_connections=300"])
        .args(["-c", "ssl=on", "-c"])
        .arg(format!(
            "ssl_cert_file={}",
            dir.join("server.crt").display()
        ))
        .arg("-c")
        .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; it runs after the uid change (which would clear it).
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).map_err(std::io::Error::from)
        });
    }
    let log_path = dir.join("postgres.log");
    let (report, reports) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    let _ = report.send(Report::Exited(format!("cannot run postgres: {error}")));
                    return;
                }
            };
            let _ = report.send(Report::Spawned(Pid::from_raw(child.id() as i32)));
            let mut log = std::fs::File::create(&log_path).ok();
            let mut tail = Vec::new();
            let mut ready = false;
            let stderr = child.stderr.take().expect("stderr is piped");
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(log) = &mut log {
                    let _ = writeln!(log, "{line}");
                }
                if !ready {
                    if line.contains(READY) {
                        ready = true;
                        let _ = report.send(Report::Ready);
                    } else {
                        tail.push(line);
                    }
                }
            }
            let _ = child.wait();
            if !ready {
                let _ = report.send(Report::Exited(tail.join("\n")));
            }
        })
        .map_err(|error| Start::Failed(format!("cannot start a thread: {error}")))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pid = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match reports.recv_timeout(left) {
            Ok(Report::Spawned(spawned)) => pid = Some(spawned),
            Ok(Report::Ready) => return pid.ok_or(Start::Failed("no PID".into())),
            Ok(Report::Exited(log)) if log.contains("Address already in use") => {
                return Err(Start::PortTaken(log));
            }
            Ok(Report::Exited(log)) => {
                return Err(Start::Failed(format!("postgres exited: {log}")));
            }
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                return Err(Start::Failed(format!(
                    "postgres did not accept connections within {START_TIMEOUT:?} (its log: {})",
                    dir.join("postgres.log").display()
                )));
            }
        }
    }
}

/// Removes the folders of test processes that are gone (killed before their exit handler ran),
/// first killing a server still running in one.
fn sweep_leftovers() {
    let temp = std::env::temp_dir();
    for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some((pid, _)) = name
            .strip_prefix(FOLDER_PREFIX)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let folder = entry.path();
        // postmaster.pid's first line is the server's PID; it is ours if it runs on our folder.
        let server = std::fs::read_to_string(folder.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok());
        if let Some(server) = server {
            let cmdline = std::fs::read(format!("/proc/{server}/cmdline")).unwrap_or_default();
            let data = folder.join("data");
            if String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy()) {
                let _ = kill(Pid::from_raw(server), Signal::SIGKILL);
            }
        }
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => eprintln!("cannot remove {}: {error}", folder.display()),
        }
    }
}

/// A PostgreSQL server of one test's own, which the test may stop and start again (a database
/// that goes away and comes back), where the process's shared server ([`server`]) must stay up
/// for the other tests. Same folder layout, user and clean-up as the shared one; stopped and
/// removed when dropped.
pub struct OwnPostgres {
    server: TestPostgres,
    owner: Option<Owner>,
    /// Whether `postgres` runs now.
    running: bool,
}

impl OwnPostgres {
    /// Starts a server; panics, saying why, when it cannot.
    pub fn start() -> Self {
        let owner = owner().unwrap_or_else(|why| panic!("no PostgreSQL for the test: {why}"));
        let server = TestPostgres::start()
            .unwrap_or_else(|why| panic!("the test's own PostgreSQL cannot start: {why}"));
        Self {
            server,
            owner,
            running: true,
        }
    }

    /// The URL of a new, empty database on this server.
    pub fn fresh_database(&self) -> String {
        let name = format!(
            "baton_own_{}",
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        self.server.create_database(&name).unwrap_or_else(|why| {
            panic!("the test's own PostgreSQL cannot make a database: {why}")
        });
        self.server.url(&name)
    }

    /// Stops the server as `pg_ctl stop` does by default (fast shutdown: clients are
    /// disconnected, the data is kept), and waits until it has exited.
    pub fn stop(&mut self) {
        halt(self.server.pid, Signal::SIGINT);
        self.running = false;
    }

    /// Starts the stopped server again, on the same port and data; panics, saying why, when it
    /// cannot.
    pub fn start_again(&mut self) {
        assert!(!self.running, "start_again: the server is running");
        match start_postgres(
            &self.server.bin,
            &self.server.dir,
            self.server.port,
            self.owner,
        ) {
            Ok(pid) => {
                self.server.pid = pid;
                self.running = true;
            }
            Err(Start::PortTaken(log) | Start::Failed(log)) => {
                panic!("the test's own PostgreSQL cannot start again: {log}")
            }
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running {
            halt(self.server.pid, Signal::SIGQUIT);
        }
        let _ = std::fs::remove_dir_all(&self.server.dir);
    }
}
