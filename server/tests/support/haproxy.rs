//! A real HAProxy for a test: one HTTP frontend on a free loopback port, one backend of N
//! servers with `option httpchk GET /alive`, `retries 0` (so a request sent to a stopped server
//! fails, as a user would see it, instead of being retried elsewhere), and an admin-level
//! runtime socket. Killed by PID when dropped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_server::drivers::haproxy::{HaproxyDriver, HaproxyOptions};
use baton_server::settings::RuntimeApiAddr;

use super::process::{KillOnDrop, free_port};

/// HAProxy's health checks of the servers (`default-server …`, `timeout check`,
/// `http-check expect`).
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    pub inter: Duration,
    pub fastinter: Duration,
    /// `None` leaves `downinter` out (HAProxy then uses `inter`).
    pub downinter: Option<Duration>,
    pub rise: u32,
    pub fall: u32,
    /// `timeout check`; `None` leaves HAProxy's default.
    pub timeout: Option<Duration>,
    /// `http-check expect status`; `None` accepts any 2xx or 3xx.
    pub expect_status: Option<u16>,
}

impl Checks {
    /// Checks fast enough that a test waits little for HAProxy to see a change.
    pub const FAST: Self = Self {
        inter: Duration::from_millis(100),
        fastinter: Duration::from_millis(50),
        downinter: Some(Duration::from_millis(100)),
        rise: 2,
        fall: 2,
        timeout: None,
        expect_status: None,
    };
}

/// The `default-server` line's settings: `inter 100ms fastinter 50ms downinter 100ms rise 2 fall 2`.
impl fmt::Display for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inter {}ms fastinter {}ms",
            self.inter.as_millis(),
            self.fastinter.as_millis()
        )?;
        if let Some(downinter) = self.downinter {
            write!(f, " downinter {}ms", downinter.as_millis())?;
        }
        write!(f, " rise {} fall {}", self.rise, self.fall)
    }
}

/// The backend HAProxy balances: its name and its servers' `(name, address)` (on 127.0.0.1, or
/// on test hosts' addresses in 198.18.0.0/15).
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub servers: Vec<(String, std::net::SocketAddr)>,
    /// The servers written with `backup`: HAProxy sends them traffic only when no other is UP.
    pub backups: Vec<String>,
    pub checks: Checks,
}

pub struct Haproxy {
    pub frontend_port: u16,
    /// The admin-level runtime socket, `haproxy.sock` in the folder.
    pub socket: PathBuf,
    cfg: PathBuf,
    process: KillOnDrop,
}

impl Haproxy {
    /// Writes `dir/haproxy.cfg` and runs `/usr/sbin/haproxy -db` on it. HAProxy is up when this
    /// returns only in the sense that it was started: a test waits for what it needs (servers
    /// UP, say) through Baton or [`Haproxy::driver`].
    pub fn start(dir: &Path, backend: &Backend) -> Self {
        let frontend_port = free_port();
        let socket = dir.join("haproxy.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, render(&socket, frontend_port, backend))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", cfg.display()));
        Self {
            frontend_port,
            socket,
            process: run(&cfg),
            cfg,
        }
    }

    /// Stops HAProxy (SIGKILL) and starts it again on the same haproxy.cfg, ports and socket:
    /// what it knew only at runtime (servers added with `add server`, admin states) is gone.
    pub fn restart(&mut self) {
        let old = std::mem::replace(&mut self.process, run(&self.cfg));
        old.kill();
    }

    /// Where users' requests go: `http://127.0.0.1:<frontend port>`.
    pub fn frontend(&self) -> String {
        format!("http://127.0.0.1:{}", self.frontend_port)
    }

    /// The HAProxy process's PID.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// A driver on the admin socket, for a test to look at or arrange HAProxy itself.
    pub fn driver(&self) -> HaproxyDriver {
        HaproxyDriver::new(
            vec![RuntimeApiAddr::Unix(self.socket.clone())],
            HaproxyOptions::default(),
        )
    }
}

fn run(cfg: &Path) -> KillOnDrop {
    let child = Command::new("/usr/sbin/haproxy")
        .args(["-db", "-f"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("HAProxy starts (apt-get install haproxy)");
    KillOnDrop::new(child)
}

fn render(socket: &Path, frontend_port: u16, backend: &Backend) -> String {
    let mut cfg = format!(
        "global\n    stats socket {socket} mode 600 level admin\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n",
        socket = socket.display()
    );
    if let Some(timeout) = backend.checks.timeout {
        cfg += &format!("    timeout check {}ms\n", timeout.as_millis());
    }
    cfg += &format!(
        "    retries 0\n\
         frontend fe\n    bind 127.0.0.1:{frontend_port}\n    default_backend {name}\n\
         backend {name}\n    option httpchk GET /alive\n",
        name = backend.name
    );
    if let Some(status) = backend.checks.expect_status {
        cfg += &format!("    http-check expect status {status}\n");
    }
    cfg += &format!("    default-server {}\n", backend.checks);
    for (server, address) in &backend.servers {
        let backup = if backend.backups.contains(server) {
            " backup"
        } else {
            ""
        };
        cfg += &format!("    server {server} {address} check{backup}\n");
    }
    cfg
}
