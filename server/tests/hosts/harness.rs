//! The test hosts themselves, which every test of backends on other hosts stands on: ssh
//! reaches each host with the harness's key and `known_hosts`, a cut host stops answering until
//! it is restored while the others answer on, a wrong host key is refused, and nothing is left
//! behind. Each runs on network namespaces (as root) and on loopback addresses.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::hosts::TestHosts;
use crate::support::process::{KillOnDrop, free_ports, process_alive};

/// Runs each body once on hosts in network namespaces (`namespaces::…`, which falls back to
/// loopback where namespaces cannot be made) and once on loopback addresses (`loopback::…`).
macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {
        mod namespaces {
            $( #[test] fn $test() { super::$test(super::TestHosts::start) } )*
        }
        mod loopback {
            $( #[test] fn $test() { super::$test(super::TestHosts::start_on_loopback) } )*
        }
    };
}

in_both_modes!(
    ssh_reaches_every_host_with_the_identity_and_known_hosts,
    the_toml_blocks_reach_every_host,
    a_cut_host_stops_answering_until_restored,
    a_wrong_host_key_is_refused,
    drop_leaves_no_namespace_veth_or_process,
);

type Start = fn(usize) -> TestHosts;

fn ssh_reaches_every_host_with_the_identity_and_known_hosts(start: Start) {
    let hosts = start(2);
    for (index, host) in hosts.hosts().iter().enumerate() {
        let output = ssh(
            hosts.identity_file(),
            hosts.known_hosts(),
            &host.ssh_user,
            host.address,
            host.ssh_port,
        )
        .arg("echo $SSH_CONNECTION")
        .output()
        .expect("ssh runs");
        assert!(
            output.status.success(),
            "ssh to {}: {}",
            host.name,
            stderr(&output)
        );
        // "client_ip client_port server_ip server_port": the session is on the host's address.
        let connection = String::from_utf8_lossy(&output.stdout);
        let server: Vec<&str> = connection.split_whitespace().skip(2).collect();
        assert_eq!(
            server,
            [host.address.to_string(), host.ssh_port.to_string()],
            "{} answered ssh on another address",
            host.name
        );

        let route = hosts.exec(index, &format!("ip route get {}", host.address));
        assert!(
            String::from_utf8_lossy(&route.stdout).starts_with(&format!("local {} ", host.address)),
            "{}'s own address is not local on it: {}{}",
            host.name,
            String::from_utf8_lossy(&route.stdout),
            stderr(&route)
        );
    }
    if hosts.namespaced() {
        let other = hosts.hosts()[1].address;
        let route = hosts.exec(0, &format!("ip route get {other}"));
        assert!(
            !route.status.success(),
            "app1 has a route to app2 ({other}), but hosts only reach the root namespace: {}",
            String::from_utf8_lossy(&route.stdout)
        );
    }
}

fn the_toml_blocks_reach_every_host(start: Start) {
    let hosts = start(2);
    let text = hosts.toml();
    let config: toml::Table = toml::from_str(&text).expect("the [[host]] blocks are TOML");
    let blocks = config["host"]
        .as_array()
        .expect("[[host]] is an array of tables");
    assert_eq!(blocks.len(), 2, "{text}");
    for (block, host) in blocks.iter().zip(hosts.hosts()) {
        let field = |key: &str| {
            block[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} in {text}"))
        };
        assert_eq!(field("name"), host.name);
        assert_eq!(PathBuf::from(field("state_dir")), host.state_dir);
        assert!(
            host.state_dir.is_dir(),
            "{} is not a folder",
            host.state_dir.display()
        );
        let (user, address) = field("ssh")
            .split_once('@')
            .expect("ssh = \"user@addr:port\"");
        let (address, port) = address.rsplit_once(':').expect("ssh = \"user@addr:port\"");
        let output = ssh(
            Path::new(field("identity_file")),
            Path::new(field("known_hosts")),
            user,
            address,
            port.parse().expect("a port number"),
        )
        .arg("true")
        .output()
        .expect("ssh runs");
        assert!(
            output.status.success(),
            "ssh as {} says: {}\n{text}",
            field("ssh"),
            stderr(&output)
        );
    }
}

fn a_cut_host_stops_answering_until_restored(start: Start) {
    let hosts = start(2);
    // The same port on both hosts, as backends on separate machines would have.
    let port = free_ports(1)[0];
    let _servers: Vec<KillOnDrop> = (0..2)
        .map(|index| serve_http(&hosts, index, port))
        .collect();
    let [app1, app2] = [0, 1].map(|index| hosts.hosts()[index].address);
    for address in [app1, app2] {
        wait_until(
            || answers(address, port),
            &format!("{address}:{port} answers"),
        );
    }

    hosts.cut(0);
    let cut_at = Instant::now();
    assert!(!answers(app1, port), "app1 answers HTTP while cut");
    // Bounded, not timed: the request gives up after its own timeout, later on a loaded machine.
    assert!(
        cut_at.elapsed() < Duration::from_secs(10),
        "a request to the cut app1 took {:?} to fail",
        cut_at.elapsed()
    );
    if hosts.namespaced() {
        let connect =
            TcpStream::connect_timeout(&SocketAddr::new(app1, port), Duration::from_secs(2));
        assert!(
            connect.is_err(),
            "a TCP connection to the cut app1 was made"
        );
    }
    let ssh_to_cut = hosts.ssh(0).arg("true").output().expect("ssh runs");
    assert!(!ssh_to_cut.status.success(), "ssh reaches the cut app1");
    assert!(
        answers(app2, port),
        "app2 stops answering HTTP when app1 is cut"
    );
    let ssh_to_other = hosts.ssh(1).arg("true").output().expect("ssh runs");
    assert!(
        ssh_to_other.status.success(),
        "ssh to app2 while app1 is cut: {}",
        stderr(&ssh_to_other)
    );

    hosts.restore(0);
    wait_until(
        || answers(app1, port),
        "app1 answers HTTP again after restore",
    );
    let ssh_again = hosts.ssh(0).arg("true").output().expect("ssh runs");
    assert!(
        ssh_again.status.success(),
        "ssh to the restored app1: {}",
        stderr(&ssh_again)
    );
}

fn a_wrong_host_key_is_refused(start: Start) {
    let hosts = start(1);
    let host = &hosts.hosts()[0];
    let wrong = hosts.wrong_known_hosts();
    let output = ssh(
        hosts.identity_file(),
        &wrong,
        &host.ssh_user,
        host.address,
        host.ssh_port,
    )
    .arg("true")
    .output()
    .expect("ssh runs");
    let said = stderr(&output);
    assert!(!output.status.success(), "ssh accepted a wrong host key");
    assert!(
        said.contains("Host key verification failed")
            || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "ssh failed for another reason than the host key: {said}"
    );
}

fn drop_leaves_no_namespace_veth_or_process(start: Start) {
    let hosts = start(2);
    let namespaces: Vec<String> = hosts
        .hosts()
        .iter()
        .filter_map(|h| h.netns().map(Into::into))
        .collect();
    let veths: Vec<String> = hosts
        .hosts()
        .iter()
        .filter_map(|h| h.veth().map(Into::into))
        .collect();
    assert_eq!(namespaces.len(), if hosts.namespaced() { 2 } else { 0 });
    let mut pids: Vec<i32> = hosts
        .hosts()
        .iter()
        .map(|host| host.sshd_pid().expect("sshd runs") as i32)
        .collect();
    // Left running on app1 by a command and by an ssh session, as backends would be.
    let background = "sleep 600 </dev/null >/dev/null 2>&1 & echo $!";
    pids.push(pid_from(hosts.exec(0, background)));
    pids.push(pid_from(
        hosts.ssh(0).arg(background).output().expect("ssh runs"),
    ));
    let folder = hosts.identity_file().parent().expect("a folder").to_owned();
    let routes: Vec<String> = hosts
        .hosts()
        .iter()
        .map(|host| subnet_of(host.address))
        .collect();
    // A cut host is taken down as well as one that answers.
    hosts.cut(1);

    drop(hosts);

    let listed = ip(&["netns", "list"]);
    for namespace in &namespaces {
        assert!(
            !listed.contains(namespace.as_str()),
            "{namespace} is left: {listed}"
        );
    }
    for veth in &veths {
        let show = Command::new("ip")
            .args(["link", "show", "dev", veth])
            .output()
            .expect("ip runs");
        assert!(!show.status.success(), "{veth} is left");
    }
    for pid in pids {
        assert!(!process_alive(pid), "process {pid} still runs");
    }
    let unreachable = ip(&["-4", "route", "show", "type", "unreachable"]);
    for subnet in routes {
        assert!(
            !unreachable.contains(&subnet),
            "a route to {subnet} is left: {unreachable}"
        );
    }
    assert!(!folder.exists(), "{} is left", folder.display());
}

#[test]
fn start_removes_what_a_killed_run_left_in_namespaces() {
    start_removes_what_a_killed_run_left("namespaces");
}

#[test]
fn start_removes_what_a_killed_run_left_on_loopback() {
    start_removes_what_a_killed_run_left("loopback");
}

/// Runs [`killed_run`] in a child test process, SIGKILLs it once its host is up (so none of
/// its drops run), and starts a host of its own, which must sweep all the killed run left.
fn start_removes_what_a_killed_run_left(mode: &str) {
    let mut run = KillOnDrop::new(
        Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", "harness::killed_run", "--nocapture"])
            .env(KILLED_RUN, mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test binary starts again"),
    );
    let stdout = run.child().stdout.take().expect("a piped stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let left = loop {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .expect("the killed run reports its host within 30 s");
        if let Some(left) = line.strip_prefix("left: ") {
            break left.to_owned();
        }
    };
    run.kill();
    // "<netns or -> <veth or -> <folder> <pid> <pid> …"
    let words: Vec<&str> = left.split_whitespace().collect();
    let [namespace, veth, folder, pids @ ..] = &words[..] else {
        panic!("the killed run reported {left:?}");
    };

    let hosts = TestHosts::start(1);

    if *namespace != "-" {
        assert!(
            !ip(&["netns", "list"]).contains(namespace),
            "{namespace} is left"
        );
        assert!(
            ip(&["link", "show", "dev", veth]).is_empty(),
            "{veth} is left"
        );
    }
    for pid in pids {
        let pid = pid.parse().expect("a PID");
        wait_until(|| !process_alive(pid), &format!("process {pid} is killed"));
    }
    assert!(!Path::new(folder).exists(), "{folder} is left");
    drop(hosts);
}

/// Names the mode of [`killed_run`]; without it, that test does nothing.
const KILLED_RUN: &str = "BATON_KILLED_RUN";

/// Not a test of its own: the run that [`start_removes_what_a_killed_run_left`] kills. It
/// starts a host, leaves a process on it by `exec` and one by ssh, prints all it made, and
/// waits (at most a minute) to be killed.
#[test]
fn killed_run() {
    let Ok(mode) = std::env::var(KILLED_RUN) else {
        return;
    };
    let hosts = match mode.as_str() {
        "loopback" => TestHosts::start_on_loopback(1),
        _ => TestHosts::start(1),
    };
    let host = &hosts.hosts()[0];
    let background = "sleep 600 </dev/null >/dev/null 2>&1 & echo $!";
    let by_exec = pid_from(hosts.exec(0, background));
    let by_ssh = pid_from(hosts.ssh(0).arg(background).output().expect("ssh runs"));
    println!(
        "left: {} {} {} {} {by_exec} {by_ssh}",
        host.netns().unwrap_or("-"),
        host.veth().unwrap_or("-"),
        hosts.identity_file().parent().expect("a folder").display(),
        host.sshd_pid().expect("sshd runs"),
    );
    std::thread::sleep(Duration::from_secs(60));
}

/// `ssh … user@address` with nothing but this identity and `known_hosts` (strict).
fn ssh(
    identity: &Path,
    known_hosts: &Path,
    user: &str,
    address: impl Display,
    port: u16,
) -> Command {
    let mut command = Command::new("ssh");
    command
        .args(["-F", "/dev/null", "-i"])
        .arg(identity)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=3",
        ])
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@{address}"))
        .stdin(Stdio::null());
    command
}

/// A tiny HTTP server on host `index` at its address and `port`, answering `ok` to anything.
/// Perl, because Debian always has it (perl-base is essential); SIGPIPE is ignored so that a
/// client gone during a cut does not end it.
fn serve_http(hosts: &TestHosts, index: usize, port: u16) -> KillOnDrop {
    const SERVER: &str = r#"
        use IO::Socket::INET;
        $SIG{PIPE} = "IGNORE";
        my $server = IO::Socket::INET->new(
            LocalAddr => $ARGV[0], LocalPort => $ARGV[1], Listen => 64, ReuseAddr => 1,
        ) or die "cannot listen on $ARGV[0]:$ARGV[1]: $@";
        while (my $client = $server->accept) {
            my $request = <$client>;
            print $client "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
            close $client;
        }
    "#;
    let address = hosts.hosts()[index].address.to_string();
    KillOnDrop::new(
        hosts
            .command(index, "perl")
            .args(["-e", SERVER, &address, &port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("perl starts"),
    )
}

/// Whether `GET /` at `address:port` is answered 200 within 2 s to connect and 2 s to answer.
fn answers(address: IpAddr, port: u16) -> bool {
    let timeout = Duration::from_secs(2);
    let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::new(address, port), timeout)
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut answer = String::new();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.0 200")
}

/// Polls `condition` until it holds, for at most 10 s.
fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The PID a command printed.
fn pid_from(output: Output) -> i32 {
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a PID: {text:?} ({})", stderr(&output)))
}

/// `198.18.0.0/24` for `198.18.0.2`.
fn subnet_of(address: IpAddr) -> String {
    let text = address.to_string();
    let (network, _) = text.rsplit_once('.').expect("an IPv4 address");
    format!("{network}.0/24")
}

/// `ip args`'s output; empty where `ip` cannot run (on loopback, nothing is asked of it).
fn ip(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}
