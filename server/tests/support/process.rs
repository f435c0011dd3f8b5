//! Processes the tests start, and the backends Baton starts for them: each ends by PID when the
//! value that owns it is dropped, whether the test passed or panicked.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;

use serde_json::Value;

/// A loopback TCP port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("the OS has a free loopback port")
}

/// The ports `baton demo` always uses: HAProxy's frontend and the three backends.
pub const DEMO_PORTS: [u16; 4] = [8000, 18081, 18082, 18083];

/// `count` different loopback ports nobody listens on right now, for backends. They are taken
/// below the kernel's ephemeral range (`ip_local_port_range`): a backend that stops and starts
/// again must find its port free, and a port of that range may meanwhile become the source port
/// of an outgoing connection (HAProxy's checks of 500 servers open 2,500 a second). All are held
/// while they are picked, so none repeats.
pub fn free_ports(count: usize) -> Vec<u16> {
    // Below 10,000 are well-known and registered services.
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOW).max(1);
    // Start somewhere else each time, so that test binaries running at once seldom meet.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos())
        ^ std::process::id();
    let held: Vec<TcpListener> = (0..span)
        .filter_map(|i| {
            let port = u16::try_from(LOW + (seed.wrapping_add(i)) % span).ok()?;
            // The demo's fixed ports stay free for the test of `baton demo`.
            if DEMO_PORTS.contains(&port) {
                return None;
            }
            TcpListener::bind(("127.0.0.1", port)).ok()
        })
        .take(count)
        .collect();
    assert_eq!(
        held.len(),
        count,
        "fewer than {count} free loopback ports below {ephemeral}"
    );
    held.iter()
        .map(|listener| listener.local_addr().expect("a bound address").port())
        .collect()
}

/// A child process that is SIGKILLed and reaped when dropped.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.child_ref().id()
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is owned until dropped")
    }

    fn child_ref(&self) -> &Child {
        self.0.as_ref().expect("the child is owned until dropped")
    }

    /// SIGKILLs the process now and waits for it: no shutdown code of its own runs.
    pub fn kill(mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().expect("the process can be killed");
            child.wait().expect("the process is reaped");
        }
    }

    /// Gives the process back to a test that ends it itself (to see how it exits).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("the child is owned until dropped")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The backends Baton started below `state_dir`: they run detached from Baton (on purpose, so
/// that a restarted Baton adopts them), so they are ended when this is dropped.
pub struct RecordedBackends(pub PathBuf);

impl Drop for RecordedBackends {
    fn drop(&mut self) {
        kill_recorded_backends(&self.0);
    }
}

/// SIGKILLs the process group of every backend whose PID Baton recorded below `state_dir`
/// (`<service>/<backend>.json`).
pub fn kill_recorded_backends(state_dir: &Path) {
    let Ok(services) = std::fs::read_dir(state_dir) else {
        return;
    };
    for service in services.flatten() {
        let Ok(records) = std::fs::read_dir(service.path()) else {
            continue;
        };
        for record in records.flatten() {
            if record.path().extension().is_some_and(|ext| ext == "json") {
                let text = std::fs::read_to_string(record.path()).unwrap_or_default();
                if let Some(pid) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|r| r["pid"].as_i64())
                {
                    // Each backend leads its own process group (Baton calls setsid).
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(-(pid as i32)),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// The PID and version Baton recorded for a backend's process
/// (`<state_dir>/<service>/<backend>.json`).
pub fn recorded_process(state_dir: &Path, service: &str, backend: &str) -> Option<(i32, String)> {
    let path = state_dir.join(service).join(format!("{backend}.json"));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some((
        record["pid"].as_i64()? as i32,
        record["version"].as_str()?.to_owned(),
    ))
}

/// Whether a process with this PID exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
