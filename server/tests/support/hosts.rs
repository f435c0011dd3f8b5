//! Test hosts for backends on other machines: one real OpenSSH server (`/usr/sbin/sshd`) per
//! host, each in a network namespace of its own, which Baton and HAProxy in the test's (root)
//! namespace reach over a veth pair.
//!
//! Layout, for host `n` of a run with process id `P` (as root):
//!
//! ```text
//!   root namespace                          namespace baton-tP-N (N: this process's count)
//!   btPhN  198.18.s.1/24  <-- veth -->  btPhNp  198.18.s.2/24   sshd on 198.18.s.2:22
//!   unreachable 198.18.s.0/24 metric 19818  (only used while btPhN is down, see `cut`)
//! ```
//!
//! Each host gets a /24 (`s` is the first free one of 198.18.0.0/15, picked under an flock on
//! `/tmp/baton-test-hosts.lock` so parallel tests and test binaries never share one). A host
//! reaches the root namespace at its gateway (`.1`) only: it has no default route. Everything
//! else lives in a temporary folder: the client key (`id_ed25519`, authorized on every host),
//! `known_hosts`, and per host its `sshd_config`, host key, `sshd.log` and `state/` (Baton's
//! records "on the host"; the folder is shared with the root namespace, as a test needs).
//!
//! Where namespaces cannot be made (not root, or `ip netns add` fails), every host is an sshd on
//! a loopback address of its own (`127.18.<run>.<n>`) on a free port instead, and the host's
//! processes are its sshd listener with all its descendants (per-connection sshds, sessions),
//! and every process whose environment holds the host's `BATON_TEST_HOST` mark: each session
//! gets it (sshd's `SetEnv`), so do commands run through [`TestHosts::exec`] or
//! [`TestHosts::command`], and so it survives a backend's daemonizing. (sshd's own processes
//! need the tree: its `setproctitle` overwrites their environment.) A cut there is SIGSTOP of
//! all of them, so that ssh and the host's backends both stop answering (new connections wait
//! in the kernel's backlog), and a restore is SIGCONT.
//!
//! Dropping [`TestHosts`] kills every process inside its namespaces (or with its mark), removes
//! the namespaces, veths and routes, and the folder, also when the test panicked. It never
//! signals a process it cannot show is its own. A run killed before its drop leaves namespaces
//! named `baton-t<pid>-*` behind; the next [`TestHosts::start`] on the machine removes those whose
//! process is gone.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

/// Names this process's namespaces and veths apart from each other (tests run on threads).
static NEXT_NUMBER: AtomicUsize = AtomicUsize::new(0);

/// Held while namespaces, veths and subnets are made, swept or removed.
const LOCK_FILE: &str = "/tmp/baton-test-hosts.lock";

/// Marks the `unreachable` routes this harness adds, so a sweep removes only its own.
const CUT_ROUTE_METRIC: u32 = 19818;

/// The start of the temporary folder's name: `baton-hosts-<pid>-…`.
const FOLDER_PREFIX: &str = "baton-hosts-";

/// The environment variable that marks a host's processes; its value is the host's folder.
const MARK: &str = "BATON_TEST_HOST";

/// How long an sshd may take to accept its first login.
const SSHD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The hosts of one test, and everything they need. Dropping it removes them all.
pub struct TestHosts {
    namespaced: bool,
    identity_file: PathBuf,
    known_hosts: PathBuf,
    hosts: Vec<TestHost>,
    /// Dropped last, after every process that used it is gone.
    dir: tempfile::TempDir,
}

/// One host: an sshd that the test's user may log in to with [`TestHosts::identity_file`].
pub struct TestHost {
    /// `app1`, `app2`, …
    pub name: String,
    /// Where sshd listens, and where the host's backends listen: `198.18.s.2`, or
    /// `127.18.r.n` without namespaces.
    pub address: IpAddr,
    /// 22 in a namespace; a free port on the loopback address otherwise.
    pub ssh_port: u16,
    /// The user running the test (root in CI), who may log in.
    pub ssh_user: String,
    /// Baton's records and logs "on the host": `<folder>/<name>/state`.
    pub state_dir: PathBuf,
    network: Network,
    /// `<folder>/<name>`: the value of the host's [`MARK`].
    dir: PathBuf,
    sshd: Option<Child>,
}

/// How a host is separated from the root namespace.
enum Network {
    Namespace(Namespace),
    Loopback,
}

/// A host's namespace and the veth pair that joins it to the root namespace.
struct Namespace {
    name: String,
    /// The root side, which `cut` takes down.
    veth: String,
    /// The host side, inside the namespace.
    peer: String,
    subnet: Subnet,
}

/// One /24 of 198.18.0.0/15: 512 of them, numbered from 198.18.0.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Subnet(u16);

impl Subnet {
    const COUNT: u16 = 512;

    fn of(address: Ipv4Addr) -> Option<Self> {
        let [a, b, c, _] = address.octets();
        (a == 198 && (b == 18 || b == 19)).then(|| Self(u16::from(b - 18) * 256 + u16::from(c)))
    }

    fn address(self, last: u8) -> Ipv4Addr {
        let [high, low] = self.0.to_be_bytes();
        Ipv4Addr::new(198, 18 + high, low, last)
    }

    /// The root namespace's side.
    fn gateway(self) -> Ipv4Addr {
        self.address(1)
    }

    /// The host's side.
    fn host(self) -> Ipv4Addr {
        self.address(2)
    }

    fn cidr(self) -> String {
        format!("{}/24", self.address(0))
    }
}

impl TestHosts {
    /// `count` hosts, in network namespaces where this process may make them, else on loopback
    /// addresses. Panics, with the sshd log's tail, if a host does not come up.
    pub fn start(count: usize) -> TestHosts {
        match namespaces_usable() {
            Ok(()) => Self::start_with(count, true),
            Err(why) => {
                eprintln!("test hosts on loopback addresses, not namespaces: {why}");
                Self::start_with(count, false)
            }
        }
    }

    /// `count` hosts on loopback addresses even where namespaces could be made, so that the
    /// fallback is tested on machines that run as root.
    pub fn start_on_loopback(count: usize) -> TestHosts {
        Self::start_with(count, false)
    }

    fn start_with(count: usize, namespaced: bool) -> TestHosts {
        assert!(count <= 254, "at most 254 test hosts, not {count}");
        sweep_loopback_leftovers();
        // The PID in the name tells a later run whether this one is still alive.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{FOLDER_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("a temporary folder");
        let identity_file = dir.path().join("id_ed25519");
        keygen(&identity_file);
        let mut hosts = TestHosts {
            namespaced,
            known_hosts: dir.path().join("known_hosts"),
            identity_file,
            hosts: Vec::with_capacity(count),
            dir,
        };
        if is_root() {
            // sshd's privilege separation needs it; Debian makes it only when its service runs.
            match std::fs::create_dir("/run/sshd") {
                Ok(()) => std::fs::set_permissions("/run/sshd", PermissionsExt::from_mode(0o755))
                    .expect("/run/sshd can be made 0755"),
                Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
                Err(error) => panic!("sshd needs /run/sshd, which cannot be made: {error}"),
            }
        }
        if namespaced {
            let _lock = NetworkLock::acquire().unwrap_or_else(|error| panic!("{error}"));
            sweep_leftovers();
            let subnets = free_subnets(count);
            for (index, subnet) in subnets.into_iter().enumerate() {
                hosts.add_namespaced(index, subnet);
            }
        } else {
            let run = (std::process::id() as usize + NEXT_NUMBER.fetch_add(1, Ordering::Relaxed))
                % 254
                + 1;
            for index in 0..count {
                hosts.add_on_loopback(index, run as u8);
            }
        }
        hosts.write_authorized_keys_and_known_hosts();
        for index in 0..count {
            hosts.spawn_sshd(index);
        }
        for index in 0..count {
            hosts.wait_for_sshd(index);
        }
        hosts
    }

    /// The hosts in order: index 0 is `app1`.
    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }

    /// The client's ed25519 private key (0600), authorized on every host.
    pub fn identity_file(&self) -> &Path {
        &self.identity_file
    }

    /// Every host's key, in the form `ssh` looks it up: `addr key` on port 22,
    /// `[addr]:port key` on any other.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Whether the hosts are in network namespaces (else on loopback addresses).
    pub fn namespaced(&self) -> bool {
        self.namespaced
    }

    /// Makes host `index` unreachable. In a namespace its veth goes down (root side): the route
    /// to it goes with it, so a new connection fails at once ("No route to host", from the
    /// `unreachable` route that keeps the packets off the default route) and open connections
    /// get nothing through until [`TestHosts::restore`]; its processes keep running. On
    /// loopback, every process of the host is stopped (see the module's comment).
    pub fn cut(&self, index: usize) {
        let host = &self.hosts[index];
        match &host.network {
            Network::Namespace(namespace) => ip(&["link", "set", &namespace.veth, "down"])
                .unwrap_or_else(|error| panic!("{error}")),
            Network::Loopback => host.stop_processes(),
        }
    }

    /// Makes host `index` reachable again after [`TestHosts::cut`].
    pub fn restore(&self, index: usize) {
        let host = &self.hosts[index];
        match &host.network {
            Network::Namespace(namespace) => ip(&["link", "set", &namespace.veth, "up"])
                .unwrap_or_else(|error| panic!("{error}")),
            Network::Loopback => {
                for pid in host.processes() {
                    let _ = kill(pid, Signal::SIGCONT);
                }
            }
        }
    }

    /// Runs `sh -c script` on host `index` (inside its namespace, or here on loopback) and
    /// waits for it. A process it leaves in the background must not hold its stdout or stderr
    /// (`cmd >file 2>&1 &`), or this waits for that process too; it is killed with the host.
    pub fn exec(&self, index: usize, script: &str) -> Output {
        self.command(index, "sh")
            .args(["-c", script])
            .output()
            .unwrap_or_else(|error| panic!("cannot run sh on {}: {error}", self.hosts[index].name))
    }

    /// A command that runs `program` on host `index`, for a process the test keeps running
    /// (held in a `KillOnDrop`, say): its PID is the program's own, since `ip netns exec` execs
    /// it. It is killed with the host in any case.
    pub fn command(&self, index: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let host = &self.hosts[index];
        let mut command = match &host.network {
            Network::Namespace(namespace) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &namespace.name])
                    .arg(program);
                command
            }
            Network::Loopback => Command::new(program),
        };
        command.env(MARK, &host.dir);
        command
    }

    /// `ssh` to host `index` as its user, with the identity and `known_hosts` (strict), no
    /// agent, no user or system configuration, and a 3 s connect timeout; the caller adds the
    /// remote command.
    pub fn ssh(&self, index: usize) -> Command {
        let host = &self.hosts[index];
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-i"])
            .arg(&self.identity_file)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=3",
            ])
            .args(["-p", &host.ssh_port.to_string()])
            .arg(format!("{}@{}", host.ssh_user, host.address));
        command
    }

    /// The `[[host]]` blocks of Baton's configuration, one per host:
    ///
    /// ```toml
    /// [[host]]
    /// name = "app1"
    /// ssh = "root@198.18.0.2:22"
    /// identity_file = "/tmp/baton-hosts-…/id_ed25519"
    /// known_hosts = "/tmp/baton-hosts-…/known_hosts"
    /// state_dir = "/tmp/baton-hosts-…/app1/state"
    /// ```
    pub fn toml(&self) -> String {
        #[derive(Serialize)]
        struct Blocks<'a> {
            host: Vec<Block<'a>>,
        }
        #[derive(Serialize)]
        struct Block<'a> {
            name: &'a str,
            ssh: String,
            identity_file: &'a Path,
            known_hosts: &'a Path,
            state_dir: &'a Path,
        }
        let blocks = Blocks {
            host: self
                .hosts
                .iter()
                .map(|host| Block {
                    name: &host.name,
                    ssh: format!("{}@{}:{}", host.ssh_user, host.address, host.ssh_port),
                    identity_file: &self.identity_file,
                    known_hosts: &self.known_hosts,
                    state_dir: &host.state_dir,
                })
                .collect(),
        };
        toml::to_string(&blocks).expect("the [[host]] blocks serialize to TOML")
    }

    /// A `known_hosts` file that pins one other key for every host, as after a host was
    /// replaced or an impostor answers at its address.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let impostor = self.dir.path().join("impostor_key");
        if !impostor.exists() {
            keygen(&impostor);
        }
        let path = self.dir.path().join("wrong_known_hosts");
        std::fs::write(&path, self.known_hosts_lines(|_| public_key(&impostor)))
            .expect("the wrong known_hosts can be written");
        path
    }

    fn add_namespaced(&mut self, index: usize, subnet: Subnet) {
        let number = NEXT_NUMBER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let veth = veth_name(pid, number);
        let namespace = Namespace {
            name: format!("baton-t{pid}-{number}"),
            peer: format!("{veth}p"),
            veth,
            subnet,
        };
        // Registered before it exists, so that a failure below still tears down what was made.
        self.push_host(
            index,
            IpAddr::V4(subnet.host()),
            22,
            Network::Namespace(namespace),
        );
        let Network::Namespace(namespace) = &self.hosts[index].network else {
            unreachable!("the host was just added with a namespace");
        };
        let (name, veth, peer) = (&namespace.name, &namespace.veth, &namespace.peer);
        let gateway = format!("{}/24", subnet.gateway());
        let host = format!("{}/24", subnet.host());
        let cidr = subnet.cidr();
        let metric = CUT_ROUTE_METRIC.to_string();
        let steps: [&[&str]; 8] = [
            &["netns", "add", name],
            // Made with its peer already inside, so deleting either end removes both.
            &[
                "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", name,
            ],
            &["addr", "add", &gateway, "dev", veth],
            &["link", "set", veth, "up"],
            &["-n", name, "addr", "add", &host, "dev", peer],
            &["-n", name, "link", "set", peer, "up"],
            &["-n", name, "link", "set", "lo", "up"],
            // While the veth is down this answers "No route to host" here, rather than the
            // packets leaving the machine by its default route.
            &["route", "replace", "unreachable", &cidr, "metric", &metric],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|error| panic!("cannot make test host {index}: {error}"));
        }
    }

    fn add_on_loopback(&mut self, index: usize, run: u8) {
        let address = IpAddr::V4(Ipv4Addr::new(127, 18, run, index as u8 + 1));
        let port = TcpListener::bind((address, 0))
            .and_then(|listener| listener.local_addr())
            .map(|local| local.port())
            .unwrap_or_else(|error| panic!("no free port on {address}: {error}"));
        self.push_host(index, address, port, Network::Loopback);
    }

    fn push_host(&mut self, index: usize, address: IpAddr, ssh_port: u16, network: Network) {
        let name = format!("app{}", index + 1);
        let dir = self.dir.path().join(&name);
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).expect("the host's folder can be made");
        keygen(&dir.join("ssh_host_ed25519_key"));
        self.hosts.push(TestHost {
            name,
            address,
            ssh_port,
            ssh_user: current_user(),
            state_dir,
            network,
            dir,
            sshd: None,
        });
    }

    fn write_authorized_keys_and_known_hosts(&self) {
        let authorized_keys = self.dir.path().join("authorized_keys");
        std::fs::write(&authorized_keys, public_key(&self.identity_file) + "\n")
            .expect("authorized_keys can be written");
        let lines =
            self.known_hosts_lines(|host| public_key(&host.dir.join("ssh_host_ed25519_key")));
        std::fs::write(&self.known_hosts, lines).expect("known_hosts can be written");
    }

    /// One `known_hosts` line per host, with the key `key_of` gives it.
    fn known_hosts_lines(&self, key_of: impl Fn(&TestHost) -> String) -> String {
        self.hosts
            .iter()
            .map(|host| {
                // ssh looks up port 22 by the bare address, any other port as `[addr]:port`.
                let pattern = match host.ssh_port {
                    22 => host.address.to_string(),
                    port => format!("[{}]:{port}", host.address),
                };
                format!("{pattern} {}\n", key_of(host))
            })
            .collect()
    }

    fn spawn_sshd(&mut self, index: usize) {
        let config = self.sshd_config(index);
        let host = &self.hosts[index];
        let config_path = host.dir.join("sshd_config");
        std::fs::write(&config_path, config).expect("sshd_config can be written");
        let log = File::create(host.log()).expect("sshd.log can be made");
        let child = self
            .command(index, "/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start /usr/sbin/sshd: {error}"));
        self.hosts[index].sshd = Some(child);
    }

    fn sshd_config(&self, index: usize) -> String {
        let host = &self.hosts[index];
        let dir = &host.dir;
        format!(
            "ListenAddress {address}:{port}\n\
             HostKey {host_key}\n\
             PidFile {pid_file}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             MaxSessions 64\n\
             MaxStartups 100:30:200\n\
             LogLevel VERBOSE\n\
             PrintMotd no\n\
             Subsystem sftp internal-sftp\n\
             SetEnv {MARK}={dir}\n",
            address = host.address,
            port = host.ssh_port,
            host_key = dir.join("ssh_host_ed25519_key").display(),
            pid_file = dir.join("sshd.pid").display(),
            authorized_keys = self.dir.path().join("authorized_keys").display(),
            dir = dir.display(),
        )
    }

    /// Waits until the host's sshd lets the test's user in with the identity and `known_hosts`,
    /// which also proves both right.
    fn wait_for_sshd(&mut self, index: usize) {
        let deadline = Instant::now() + SSHD_START_TIMEOUT;
        loop {
            let output = self
                .ssh(index)
                .arg("true")
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|error| panic!("cannot run ssh (openssh-client): {error}"));
            if output.status.success() {
                return;
            }
            let host = &mut self.hosts[index];
            let exited = host
                .sshd
                .as_mut()
                .and_then(|sshd| sshd.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let what = match exited {
                    Some(status) => format!("sshd exited ({status})"),
                    None => format!("sshd let nobody in within {SSHD_START_TIMEOUT:?}"),
                };
                panic!(
                    "test host {} ({}:{}): {what}; ssh said: {}\nsshd.log ends:\n{}",
                    host.name,
                    host.address,
                    host.ssh_port,
                    String::from_utf8_lossy(&output.stderr).trim(),
                    log_tail(&host.log()),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl TestHost {
    /// The PID of the host's sshd listener.
    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(Child::id)
    }

    /// The host's network namespace, when it has one.
    pub fn netns(&self) -> Option<&str> {
        match &self.network {
            Network::Namespace(namespace) => Some(&namespace.name),
            Network::Loopback => None,
        }
    }

    /// The root side of the host's veth pair, when it has one.
    pub fn veth(&self) -> Option<&str> {
        match &self.network {
            Network::Namespace(namespace) => Some(&namespace.veth),
            Network::Loopback => None,
        }
    }

    /// The processes of a host on loopback: its sshd listener, all their descendants, and
    /// every process with its mark.
    fn processes(&self) -> Vec<Pid> {
        let table = process_table();
        let mark = format!("{MARK}={}", self.dir.display()).into_bytes();
        let mut host: BTreeSet<i32> = table
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| has_variable(*pid, &mark))
            .collect();
        host.extend(self.sshd_pid().map(|pid| pid as i32));
        let host = with_descendants(&table, host);
        let me = std::process::id() as i32;
        host.into_iter()
            // A zombie is gone but for its parent's wait; it cannot be stopped or killed.
            .filter(|pid| {
                *pid != me && process_state(Pid::from_raw(*pid)).is_some_and(|s| s != 'Z')
            })
            .map(Pid::from_raw)
            .collect()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// SIGSTOPs every process of a host on loopback, again until none is left running: the
    /// listener first, so that no new connection forks while the others stop.
    fn stop_processes(&self) {
        if let Some(pid) = self.sshd_pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
        }
        for _ in 0..50 {
            let running: Vec<Pid> = self
                .processes()
                .into_iter()
                .filter(|pid| process_state(*pid).is_some_and(|state| state != 'T'))
                .collect();
            if running.is_empty() {
                return;
            }
            for pid in running {
                let _ = kill(pid, Signal::SIGSTOP);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the processes of test host {} do not stop", self.name);
    }

    /// Kills every process of the host and removes its network. Never panics: it runs in drop.
    fn tear_down(&mut self) {
        match &self.network {
            Network::Namespace(namespace) => {
                kill_namespace_processes(&namespace.name);
                let _ = ip(&["link", "del", &namespace.veth]);
                let _ = ip(&["netns", "del", &namespace.name]);
                let metric = CUT_ROUTE_METRIC.to_string();
                let cidr = namespace.subnet.cidr();
                let _ = ip(&["route", "del", "unreachable", &cidr, "metric", &metric]);
            }
            Network::Loopback => {
                for _ in 0..50 {
                    let pids = self.processes();
                    if pids.is_empty() {
                        break;
                    }
                    for pid in pids {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        // Without the lock rather than not at all, should the lock file have gone.
        let _lock = self.namespaced.then(NetworkLock::acquire);
        for host in &mut self.hosts {
            host.tear_down();
        }
    }
}

/// An exclusive flock on [`LOCK_FILE`], released when dropped (the file is closed).
struct NetworkLock {
    _file: File,
}

impl NetworkLock {
    fn acquire() -> Result<Self, String> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(|error| format!("cannot open {LOCK_FILE}: {error}"))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|error| format!("cannot lock {LOCK_FILE}: {error}"))?;
        Ok(Self { _file: file })
    }
}

/// Why namespaces cannot be made here, if they cannot.
fn namespaces_usable() -> Result<(), String> {
    if !is_root() {
        return Err("not root".into());
    }
    let probe = format!(
        "baton-t{}-{}",
        std::process::id(),
        NEXT_NUMBER.fetch_add(1, Ordering::Relaxed)
    );
    ip(&["netns", "add", &probe])?;
    ip(&["netns", "del", &probe])
}

/// Whether this process runs as root: `/proc/self` belongs to the effective user.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0)
}

fn current_user() -> String {
    let output = Command::new("id")
        .arg("-un")
        .output()
        .expect("`id -un` names the current user");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The root veth of namespace number `number` of process `pid`: at most 15 characters with its
/// peer's `p`, as Linux requires.
fn veth_name(pid: u32, number: usize) -> String {
    format!("bt{}h{number}", pid % 100_000)
}

/// Runs `ip args`; the error says what failed and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run `ip`: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `ip args`'s output; empty if it failed.
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// `count` subnets that no address of the root namespace is in. Called under the lock.
fn free_subnets(count: usize) -> Vec<Subnet> {
    let used = used_subnets();
    let free: Vec<Subnet> = (0..Subnet::COUNT)
        .map(Subnet)
        .filter(|subnet| !used.contains(subnet))
        .take(count)
        .collect();
    assert_eq!(
        free.len(),
        count,
        "fewer than {count} free /24s in 198.18.0.0/15 for test hosts"
    );
    free
}

/// The subnets of 198.18.0.0/15 that an address of the root namespace is in (a cut host's
/// veth keeps its address while down).
fn used_subnets() -> BTreeSet<Subnet> {
    ip_output(&["-4", "-o", "addr", "show"])
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "inet")?;
            let (address, _) = words.next()?.split_once('/')?;
            Subnet::of(address.parse().ok()?)
        })
        .collect()
}

/// Removes what runs killed before their drop left: namespaces `baton-t<pid>-*` whose process
/// is gone, with everything inside and their veths, and this harness's `unreachable` routes to
/// subnets no longer in use. Called under the lock, so no live run is half made.
fn sweep_leftovers() {
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some((pid, number)) = name
            .strip_prefix("baton-t")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, number)| Some((pid.parse::<u32>().ok()?, number.parse().ok()?)))
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_namespace_processes(name);
        let _ = ip(&["link", "del", &veth_name(pid, number)]);
        let _ = ip(&["netns", "del", name]);
    }
    let used = used_subnets();
    let metric = CUT_ROUTE_METRIC.to_string();
    for line in ip_output(&["-4", "route", "show", "type", "unreachable"]).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, cidr, "metric", route_metric, ..] = words[..] else {
            continue;
        };
        let subnet = cidr
            .strip_suffix("/24")
            .and_then(|address| Subnet::of(address.parse().ok()?));
        if route_metric == metric && subnet.is_some_and(|subnet| !used.contains(&subnet)) {
            let _ = ip(&["route", "del", "unreachable", cidr, "metric", &metric]);
        }
    }
}

/// Removes what runs on loopback killed before their drop left, from runs whose process is
/// gone: their sshd listeners (told by the `-f <folder>/…` in their title, since sshd overwrites
/// its environment) with all their descendants, the processes with their mark, and their
/// folders.
fn sweep_loopback_leftovers() {
    let of_dead_run = |pid: i32| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let marked = environ.split(|byte| *byte == 0).any(|var| {
            std::str::from_utf8(var)
                .ok()
                .and_then(|var| var.strip_prefix(MARK)?.strip_prefix('='))
                .is_some_and(|host_dir| dead_run_folder(Path::new(host_dir)).is_some())
        });
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let listener = cmdline.contains("/usr/sbin/sshd")
            && cmdline
                .split(['\0', ' '])
                .any(|word| dead_run_folder(Path::new(word)).is_some());
        marked || listener
    };
    let table = process_table();
    let left = table
        .iter()
        .map(|(pid, _)| *pid)
        .filter(|pid| of_dead_run(*pid));
    for pid in with_descendants(&table, left.collect()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(folder) = dead_run_folder(&entry.path()) {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// The folder `<temp>/baton-hosts-<pid>-…` that `path` is or is in, if process `pid` is gone.
fn dead_run_folder(path: &Path) -> Option<PathBuf> {
    let temp = std::env::temp_dir();
    let name = path.strip_prefix(&temp).ok()?.iter().next()?.to_str()?;
    let (pid, _) = name.strip_prefix(FOLDER_PREFIX)?.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then(|| temp.join(name))
}

/// `pids` and all their descendants in `table`.
fn with_descendants(table: &[(i32, i32)], mut pids: BTreeSet<i32>) -> BTreeSet<i32> {
    // Parents come before their children only by chance: grow the set until it holds.
    loop {
        let before = pids.len();
        let children: Vec<i32> = table
            .iter()
            .filter(|(_, parent)| pids.contains(parent))
            .map(|(pid, _)| *pid)
            .collect();
        pids.extend(children);
        if pids.len() == before {
            return pids;
        }
    }
}

/// SIGKILLs every process in namespace `name` (all started for a test host), until none is
/// left or 5 s have passed.
fn kill_namespace_processes(name: &str) {
    let me = std::process::id().to_string();
    for _ in 0..50 {
        let pids: Vec<Pid> = ip_output(&["netns", "pids", name])
            .split_whitespace()
            .filter(|pid| *pid != me)
            .filter_map(|pid| pid.parse().ok().map(Pid::from_raw))
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every process's PID and its parent's, from `/proc/<pid>/stat`.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
            let (_, rest) = stat.rsplit_once(") ")?;
            let parent = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect()
}

/// Whether `variable` (`NAME=value`) is in the environment process `pid` started with. Others'
/// environments cannot be read, so their processes never have it.
fn has_variable(pid: i32, variable: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(|var| var == variable))
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T` stopped, `Z`…), if the process exists.
fn process_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// `ssh-keygen -t ed25519` without a passphrase: `path` (0600) and `path.pub`.
fn keygen(path: &Path) {
    let output = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run ssh-keygen (openssh-client): {error}"));
    assert!(
        output.status.success(),
        "ssh-keygen cannot make {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `ssh-ed25519 AAAA…` from the key's `.pub` file, without its comment.
fn public_key(private_key: &Path) -> String {
    let path = format!("{}.pub", private_key.display());
    let text = std::fs::read_to_string(path).expect("ssh-keygen wrote the public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last lines of a log, for a panic message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
