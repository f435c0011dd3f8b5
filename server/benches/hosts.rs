//! The hosts benchmark: what running backends on other hosts, over OpenSSH, costs a rollout.
//!
//! `cargo bench -p server --bench hosts` (or `scripts/dev bench hosts`) rolls out the same
//! service twice over: 4 demo-app backends on this machine, then 4 on two test hosts (2 each,
//! real sshd in network namespaces reached over veth pairs, or on loopback addresses when not
//! root), each behind a real HAProxy with `baton serve` as a subprocess, ROLLOUTS times each. It
//! prints, per backend: the rollout's time, the runtime steps (`stop`, `start`) and Baton's
//! health wait, on this machine and on hosts, their differences, and how many ssh commands a
//! rollout ran per backend (counted from Baton's log, one line per command). It writes the same
//! to `target/bench/hosts.txt`.
//!
//! Every process it starts is killed when it ends, also when it fails; the namespaces are
//! removed. Traffic stays on loopback and on the test's own veths (198.18.0.0/15).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bench::run_and_write;
use support::fleet::{Fleet, FleetOptions, spawn_fleet};
use support::hosts::TestHosts;

#[path = "../tests/support/mod.rs"]
mod support;

const BACKENDS: usize = 4;
const HOSTS: usize = 2;
const ROLLOUTS: usize = 5;

fn main() -> ExitCode {
    run_and_write("hosts", run())
}

/// What one rollout measured, in milliseconds per backend.
#[derive(Debug, Clone, Copy, Default)]
struct PerBackend {
    wall: f64,
    stop: f64,
    start: f64,
    wait_healthy: f64,
}

/// The median of each figure over the rollouts.
fn medians(runs: &[PerBackend]) -> PerBackend {
    let median = |pick: fn(&PerBackend) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    PerBackend {
        wall: median(|r| r.wall),
        stop: median(|r| r.stop),
        start: median(|r| r.start),
        wait_healthy: median(|r| r.wait_healthy),
    }
}

fn options(hosts: Option<Arc<TestHosts>>) -> FleetOptions {
    FleetOptions {
        backends: if hosts.is_some() {
            BACKENDS / HOSTS
        } else {
            BACKENDS
        },
        hosts,
        start_timeout: Duration::from_secs(20),
        baton_process: true,
        log_filter: Some("info,baton_server::hosts=debug"),
        ..FleetOptions::default()
    }
}

async fn run() -> Result<String, String> {
    let local = {
        let fleet = spawn_fleet(options(None)).await;
        rollouts(&fleet).await?
    };
    let hosts = Arc::new(TestHosts::start(HOSTS));
    let namespaced = hosts.namespaced();
    let round_trip = mux_round_trip(&hosts)?;
    let (hosted, commands) = {
        let fleet = spawn_fleet(options(Some(hosts.clone()))).await;
        let before = ssh_commands(&fleet);
        let runs = rollouts(&fleet).await?;
        let commands = (ssh_commands(&fleet) - before) as f64 / (ROLLOUTS * BACKENDS) as f64;
        (runs, commands)
    };
    drop(hosts);
    Ok(report(&local, &hosted, commands, namespaced, round_trip))
}

/// The median time of `true` over a multiplexed OpenSSH connection to the first host, with
/// `ssh` itself: what one command costs on this machine before Baton does anything. It is
/// mostly the login user's shell starting (sshd runs every command through it, and bash reads
/// `~/.bashrc` for commands sshd starts).
fn mux_round_trip(hosts: &TestHosts) -> Result<(Duration, Duration), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let control = dir.path().join("control");
    let host = &hosts.hosts()[0];
    let ssh = |extra: &[&str]| {
        let mut command = std::process::Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-i"])
            .arg(hosts.identity_file())
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                hosts.known_hosts().display()
            ))
            .args(["-p", &host.ssh_port.to_string(), "-S"])
            .arg(&control)
            .args(extra)
            .arg(format!("{}@{}", host.ssh_user, host.address));
        command
    };
    let started = ssh(&["-M", "-f", "-N"])
        .status()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    if !started.success() {
        return Err(format!("ssh could not open a master connection: {started}"));
    }
    let mut samples = Vec::new();
    for _ in 0..20 {
        let began = Instant::now();
        let ran = ssh(&[]).arg("true").status().map_err(|e| e.to_string())?;
        samples.push(began.elapsed());
        if !ran.success() {
            return Err(format!("`true` over the master failed: {ran}"));
        }
    }
    let _ = ssh(&["-O", "exit"]).output();
    samples.sort();
    let muxed = samples[samples.len() / 2];
    // The same without a master: a new connection (TCP, key exchange, login) each time.
    let mut samples = Vec::new();
    for _ in 0..10 {
        let began = Instant::now();
        let ran = hosts
            .ssh(0)
            .arg("true")
            .status()
            .map_err(|e| e.to_string())?;
        samples.push(began.elapsed());
        if !ran.success() {
            return Err(format!("`true` over a new connection failed: {ran}"));
        }
    }
    samples.sort();
    Ok((muxed, samples[samples.len() / 2]))
}

/// Lines Baton logged for an ssh command so far.
fn ssh_commands(fleet: &Fleet) -> usize {
    fleet
        .baton_log()
        .lines()
        .filter(|line| line.contains("ssh command"))
        .count()
}

async fn rollouts(fleet: &Fleet) -> Result<Vec<PerBackend>, String> {
    let mut runs = Vec::with_capacity(ROLLOUTS);
    for run in 0..ROLLOUTS {
        let version = format!("v{}", run + 2);
        let (status, queued) = fleet.deploy(&version).await;
        if status != 202 {
            return Err(format!("deploying {version}: HTTP {status}: {queued}"));
        }
        let id = queued["id"].as_i64().ok_or("no rollout id")?;
        let done = finished(fleet, id).await?;
        if done["status"] != "succeeded" {
            return Err(format!("rollout to {version} did not succeed: {done:#}"));
        }
        runs.push(per_backend(&done)?);
    }
    Ok(runs)
}

async fn finished(fleet: &Fleet, id: i64) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let deployment = fleet
            .get(&format!("/api/deployments/{id}"))
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(deployment["status"].as_str(), Some("queued" | "running")) {
            return Ok(deployment);
        }
        if Instant::now() > deadline {
            return Err(format!("rollout {id} did not finish in 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn per_backend(deployment: &Value) -> Result<PerBackend, String> {
    let number = |value: &Value, key: &str| {
        value[key]
            .as_i64()
            .ok_or_else(|| format!("no {key} in {value}"))
    };
    let mut figures = PerBackend {
        wall: (number(deployment, "finished_at")? - number(deployment, "started_at")?) as f64,
        ..PerBackend::default()
    };
    for step in deployment["steps"].as_array().into_iter().flatten() {
        let took = (number(step, "finished_at")? - number(step, "started_at")?) as f64;
        match step["step"].as_str() {
            Some("stop") => figures.stop += took,
            Some("start") => figures.start += took,
            Some("wait_healthy") => figures.wait_healthy += took,
            _ => {}
        }
    }
    let n = BACKENDS as f64;
    Ok(PerBackend {
        wall: figures.wall / n,
        stop: figures.stop / n,
        start: figures.start / n,
        wait_healthy: figures.wait_healthy / n,
    })
}

fn report(
    local: &[PerBackend],
    hosted: &[PerBackend],
    commands: f64,
    namespaced: bool,
    (round_trip, handshake): (Duration, Duration),
) -> String {
    let (l, h) = (medians(local), medians(hosted));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Backends on other hosts: {BACKENDS} demo-app backends, {ROLLOUTS} rollouts each, medians \
         per backend (ms)\nhosts: {HOSTS} sshd {}, one OpenSSH connection per host (native mux)\n",
        if namespaced {
            "in network namespaces over veth pairs"
        } else {
            "on loopback addresses"
        }
    );
    let _ = writeln!(
        out,
        "{:<28}{:>12}{:>12}{:>12}",
        "", "this machine", "on hosts", "difference"
    );
    for (name, pick) in [
        (
            "rollout, per backend",
            (|r: &PerBackend| r.wall) as fn(&PerBackend) -> f64,
        ),
        ("  stop step", |r| r.stop),
        ("  start step", |r| r.start),
        ("  wait_healthy step", |r| r.wait_healthy),
    ] {
        let _ = writeln!(
            out,
            "{name:<28}{:>12.1}{:>12.1}{:>+12.1}",
            pick(&l),
            pick(&h),
            pick(&h) - pick(&l)
        );
    }
    let _ = writeln!(
        out,
        "\nssh commands per backend and rollout: {commands:.2} (prepare's check per host, stop, \
         start, and a status only when a health probe fails)"
    );
    let _ = writeln!(
        out,
        "one `true` over a multiplexed ssh connection here, with ssh itself (median of 20): \
         {:.1} ms; most of it is the login user's shell starting (over a new connection each \
         time: {:.1} ms)",
        round_trip.as_secs_f64() * 1000.0,
        handshake.as_secs_f64() * 1000.0
    );
    out
}
