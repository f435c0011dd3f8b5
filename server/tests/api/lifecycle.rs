//! `baton serve` as a process: it stops on SIGTERM whatever became of its output.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::config::api_and_worker;
use crate::support::process::KillOnDrop;

/// `baton serve` on a free port with stdout and stderr into one pipe; returns the child, the
/// pipe's read end, and Baton's address (read from its output). Killed if the test fails first.
fn serve(dir: &std::path::Path, log: &str) -> (KillOnDrop, BufReader<std::io::PipeReader>, String) {
    let config = api_and_worker().write(dir);
    let (reader, writer) = std::io::pipe().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BATON_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", log)
        .env_remove("BATON_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .map(KillOnDrop::new)
        .expect("the baton binary starts");
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    let address = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "Baton ended before serving"
        );
        if let Some(address) = line.trim().strip_prefix("Baton is serving on ") {
            break address.to_owned();
        }
    };
    (child, reader, address)
}

/// Sends SIGTERM and waits up to 15 s for the exit; fails the test otherwise (and the drop of
/// `child` SIGKILLs it).
fn terminate(mut child: KillOnDrop, what: &str) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.child().try_wait().unwrap() {
            assert!(status.success(), "{what}: Baton exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: Baton did not stop within 15 s of SIGTERM");
}

/// Sends up to `count` requests, for at most 20 s: with its output stuck, a Baton that waits
/// for its log would stop answering.
async fn requests(address: &str, count: usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let send = async {
        for _ in 0..count {
            // Anonymous: each is refused, and each is logged at debug level.
            let _ = client.get(format!("{address}/api/services")).send().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), send).await;
}

#[tokio::test]
async fn serve_stops_on_sigterm_after_the_reader_of_its_output_went_away() {
    let dir = tempfile::tempdir().unwrap();
    let (child, reader, address) = serve(dir.path(), "info");
    // `baton serve 2>&1 | head -5`: head has read its lines and exited.
    drop(reader);
    requests(&address, 20).await;
    terminate(child, "output into a closed pipe");
}

#[tokio::test]
async fn serve_stops_on_sigterm_while_its_output_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (child, reader, address) = serve(dir.path(), "debug");
    // A log collector that hangs: the pipe stays open and fills up (64 KiB on Linux).
    requests(&address, 400).await;
    let answered = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{address}/alive"))
        .send()
        .await;
    assert!(
        answered.is_ok_and(|answer| answer.status() == 200),
        "Baton still answers with its output stuck"
    );
    terminate(child, "output into a full pipe");
    drop(reader);
}
