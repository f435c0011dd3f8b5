//! The takeover benchmark: how long a rollout stands still when its leading replica dies.
//!
//! `cargo bench -p server --bench takeover` (or `scripts/dev bench takeover`) starts two
//! `baton serve` replicas on one private PostgreSQL in front of a real HAProxy and three demo-app
//! backends, with the default lease (5 s). ROUNDS times it starts a rollout, SIGKILLs the leading
//! replica while the rollout waits for web1's new version, and measures from the kill to the
//! first step the other replica begins (its steps' `started_at`, on the same machine's clock).
//! It prints the figures and writes them to `target/bench/takeover.txt`.
//!
//! Every process it starts is killed when it ends, also when it fails; traffic stays on
//! loopback.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::bench::run_and_write;
use support::fleet::FleetOptions;
use support::postgres;
use support::replicas::spawn_replicas;

#[path = "../tests/support/mod.rs"]
mod support;

const ROUNDS: usize = 3;
/// Baton's default `[server] lease`.
const LEASE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    run_and_write("takeover", run())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn run() -> Result<String, String> {
    let mut takeovers = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // A fresh pair each round: the killed replica does not come back.
        let mut replicas = spawn_replicas(
            &postgres::fresh_database(),
            LEASE,
            FleetOptions {
                // Each start takes 1.5 s, so the rollout is surely in web1's health wait.
                backend_env: &[("DEMO_START_DELAY_MS", "1500")],
                ..FleetOptions::default()
            },
        )
        .await;
        let (status, queued) = replicas.fleet.deploy("v2").await;
        if status != 202 {
            return Err(format!("deploy: HTTP {status}: {queued}"));
        }
        let id = queued["id"].as_i64().ok_or("no rollout id")?;
        replicas
            .fleet
            .wait_for_step(id, "web1 wait_healthy", |s| {
                s["backend"] == "web1" && s["step"] == "wait_healthy" && s["outcome"].is_null()
            })
            .await;
        replicas.fleet.kill_baton();
        let killed_at = now_ms();
        let deadline = Instant::now() + LEASE * 4;
        let first_after = loop {
            let deployment = replicas
                .fleet
                .get(&format!("/api/deployments/{id}"))
                .await
                .map_err(|e| e.to_string())?;
            let first = deployment["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|step: &Value| step["started_at"].as_i64())
                .filter(|at| *at >= killed_at)
                .min();
            if let Some(first) = first {
                break first;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no step began within {:?} of the kill (round {})",
                    LEASE * 4,
                    round + 1
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = first_after - killed_at;
        eprintln!(
            "round {}: the rollout moved again {took} ms after the kill",
            round + 1
        );
        takeovers.push(took);
        replicas.fleet.finished(id).await;
    }
    takeovers.sort_unstable();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Takeover: 2 baton serve replicas on one PostgreSQL, lease {} s (the default), {ROUNDS} rounds",
        LEASE.as_secs()
    );
    let _ = writeln!(
        out,
        "leader SIGKILLed mid-rollout -> first step begun by the other replica: min {} ms, median {} ms, max {} ms",
        takeovers[0],
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1]
    );
    let _ = writeln!(
        out,
        "(at most a lease: the killed leader renewed every third of it, and the follower asks as often)"
    );
    Ok(out)
}
