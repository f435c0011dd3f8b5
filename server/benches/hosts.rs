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
    let (hosted, commands) = {
        let fleet = spawn_fleet(options(Some(hosts.clone()))).await;
        let before = ssh_commands(&fleet);
        let runs = rollouts(&fleet).await?;
        let commands = (ssh_commands(&fleet) - before) as f64 / (ROLLOUTS * BACKENDS) as f64;
        (runs, commands)
    };
    drop(hosts);
    Ok(report(&local, &hosted, commands, namespaced))
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

fn report(local: &[PerBackend], hosted: &[PerBackend], commands: f64, namespaced: bool) -> String {
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
    out
}
