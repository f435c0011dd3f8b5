//! `baton demo`: Ctrl-C ends the demo fleet it started (HAProxy and the three backends), while
//! `baton serve` leaves backends running for the next Baton to adopt (tested in resilience.rs).
//!
//! The demo's ports are fixed (HAProxy on 8000, backends on 18081–18083), so this is the one
//! test that needs them free.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::process::{
    DEMO_PORTS, kill_recorded_backends, process_alive, recorded_process,
};

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Ends whatever the demo left if the test fails half-way.
struct Cleanup {
    group: i32,
    state: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.group), Signal::SIGKILL);
        kill_recorded_backends(&self.state);
    }
}

#[test]
fn ctrl_c_on_the_demo_ends_haproxy_and_the_demo_backends() {
    for port in DEMO_PORTS {
        assert!(
            !listening(port),
            "port {port} is taken: the demo test needs 8000 and 18081-18083 free"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .env("BATON_LISTEN", "127.0.0.1:0")
        .env_remove("BATON_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, like a job in a terminal: Ctrl-C signals the whole group.
        .process_group(0)
        .spawn()
        .expect("the baton binary starts");
    let group = demo.id() as i32;
    let state = dir.path().join("state");
    let _cleanup = Cleanup {
        group,
        state: state.clone(),
    };
    let mut output = BufReader::new(demo.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("Baton is serving on") {
        line.clear();
        assert!(
            output.read_line(&mut line).unwrap() > 0,
            "the demo ended early"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let pids: Vec<Option<i32>> = ["web1", "web2", "web3"]
            .iter()
            .map(|backend| recorded_process(&state, "web", backend).map(|(pid, _)| pid))
            .collect();
        if pids.iter().all(Option::is_some) && DEMO_PORTS.iter().all(|port| listening(*port)) {
            break pids.into_iter().flatten().collect::<Vec<i32>>();
        }
        assert!(
            Instant::now() < deadline,
            "the demo fleet did not come up within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(pids.iter().all(|pid| process_alive(*pid)));

    kill(Pid::from_raw(-group), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while demo.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the demo did not end within 20 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &pids {
        assert!(
            !process_alive(*pid),
            "backend process {pid} outlived the demo"
        );
    }
    for port in DEMO_PORTS {
        assert!(!listening(port), "something still listens on {port}");
    }
}
