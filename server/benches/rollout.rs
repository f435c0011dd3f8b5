//! The rollout benchmark: what a rollout costs in failed requests, latency and time.
//!
//! `cargo bench -p server --bench rollout` (or `scripts/dev bench rollout`) starts a real
//! HAProxy in front of 4 demo-app backends, runs `baton serve` on them as a subprocess, and rolls
//! the service out 5 times (v2 … v6) while a bounded load generator sends keep-alive requests
//! through HAProxy the whole time. It prints its figures and writes them to
//! `target/bench/rollout.txt`; the output says how each figure is computed. Targets: 0 failed
//! requests, orchestration overhead at most 50 ms per backend (median of the 5 rollouts).
//!
//! Every process it starts (HAProxy, Baton, the backends, the app-start probes) is killed by PID
//! when it ends, also when it fails. Network traffic stays on loopback; ports come from the OS.

use std::fmt::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_server::drivers::haproxy::HaproxyDriver;
use baton_server::drivers::{AdminState, CheckResult, LoadBalancer, ServerState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::fleet::{FleetOptions, spawn_fleet};
use support::haproxy::Checks;
use support::process::free_port;

use support::bench::{median, ms, run_and_write};

#[path = "../tests/support/mod.rs"]
mod support;

const BACKENDS: usize = 4;
const ROLLOUTS: usize = 5;

// HAProxy's check settings: the README's recommendation.
const INTER_MS: u64 = 200;
const FASTINTER_MS: u64 = 100;
const DOWNINTER_MS: u64 = 500;
const RISE: u32 = 2;
const FALL: u32 = 2;
const CHECKS: Checks = Checks {
    inter: Duration::from_millis(INTER_MS),
    fastinter: Duration::from_millis(FASTINTER_MS),
    downinter: Some(Duration::from_millis(DOWNINTER_MS)),
    rise: RISE,
    fall: FALL,
    timeout: Some(Duration::from_secs(1)),
    expect_status: Some(200),
};

// Baton's own probe of the new version.
const HEALTH_INTERVAL: Duration = Duration::from_millis(50);
const HEALTHY_THRESHOLD: u32 = 2;

/// Keep-alive connections of the load generator, each sending one request after the other.
const LOAD_CONNECTIONS: usize = 2;
/// Each connection sends at most one request per this long (about 1,000 requests/s in all), so
/// the load generator does not take the CPU that Baton, HAProxy and the backends need.
const LOAD_PACE: Duration = Duration::from_millis(2);
/// Bounds of the load generator for one rollout.
const LOAD_MAX_REQUESTS: usize = 200_000;
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);
/// Independent measurements of the demo app's start and stop.
const APP_SAMPLES: usize = 5;
/// Independent measurements of how long HAProxy takes to run a fresh check on a server that
/// leaves maint (spread between 0 and `inter`, so more samples than for the app).
const LB_SAMPLES: usize = 20;

fn main() -> ExitCode {
    run_and_write("rollout", run())
}

/// What one rollout measured.
struct RolloutFigures {
    version: String,
    status: String,
    requests: usize,
    failed: usize,
    failure_examples: Vec<String>,
    p50: Duration,
    p99: Duration,
    /// `finished_at - started_at` of the deployment, as Baton recorded it.
    wall_ms: i64,
    /// From the POST until the client saw it finished (polled every 10 ms): a cross-check.
    client_wall: Duration,
    /// Sum of the `wait_sessions` and `cut_sessions` steps.
    drain_ms: i64,
    /// Per step name, its durations (one per backend).
    steps: Vec<(String, Vec<i64>)>,
    /// Wall time not inside any step: bookkeeping between steps.
    between_steps_ms: i64,
}

/// What the work itself needs, measured outside Baton's rollouts.
struct Needs {
    /// The demo app: spawn until `/alive` answers 200 (median).
    app_start: Duration,
    /// The demo app: SIGTERM until it has exited (median); not subtracted (see the output).
    app_stop: Duration,
    /// HAProxy: `state drain` out of maint until a fresh check passed (mean, and the longest).
    lb_check: Duration,
    lb_check_max: Duration,
}

impl Needs {
    /// Orchestration overhead per backend, allowing `checks` per backend for HAProxy's check.
    fn overhead(&self, run: &RolloutFigures, checks: Duration) -> f64 {
        let needed = BACKENDS as f64 * (ms(self.app_start) + ms(checks)) + run.drain_ms as f64;
        (run.wall_ms as f64 - needed) / BACKENDS as f64
    }
}

/// What HAProxy's configuration demands by the rule: `rise x fastinter`.
const RULE_CHECKS: Duration = Duration::from_millis(RISE as u64 * FASTINTER_MS);

async fn run() -> Result<String, String> {
    let app = env!("CARGO_BIN_EXE_baton-demo-app");
    let (app_start, app_stop) = measure_app(app).await?;

    // `baton serve` as its own process, on a `web` service of batch size 1 (the default) with
    // stop and drain timeouts far above what the demo app needs. Every process it starts
    // (HAProxy, Baton, the backends) is killed when `fleet` is dropped, also on a panic.
    let fleet = spawn_fleet(FleetOptions {
        backends: BACKENDS,
        start_timeout: Duration::from_secs(20),
        health_interval: HEALTH_INTERVAL,
        healthy_threshold: HEALTHY_THRESHOLD,
        checks: CHECKS,
        baton_process: true,
        log_filter: Some("info"),
        ..FleetOptions::default()
    })
    .await;
    let lb = fleet.haproxy();
    let (lb_check, lb_check_max) = measure_lb_check(&lb).await?;
    let needs = Needs {
        app_start,
        app_stop,
        lb_check,
        lb_check_max,
    };

    let mut runs = Vec::new();
    for run in 0..ROLLOUTS {
        let version = format!("v{}", run + 2);
        let figures = rollout(&fleet.client, &fleet.baton, &fleet.frontend, &version).await?;
        eprintln!(
            "rollout {} to {version}: {} in {} ms, {} requests, {} failed, overhead {:.1} ms per backend",
            run + 1,
            figures.status,
            figures.wall_ms,
            figures.requests,
            figures.failed,
            needs.overhead(&figures, RULE_CHECKS)
        );
        runs.push(figures);
    }
    drop(fleet);
    Ok(report(&runs, &needs))
}

/// How long HAProxy takes, once a server leaves maint for drain, to run a fresh passing check
/// (the bare `DRAIN`, see drivers/haproxy.rs): what Baton's `lb_check` step waits for. Done by
/// hand on web1 before any rollout, polling `show stat` every millisecond; a pause of 100 ms in
/// maint stands for the stop and start, and a varying pause before it spreads the samples over
/// the check timer's phase.
async fn measure_lb_check(lb: &HaproxyDriver) -> Result<(Duration, Duration), String> {
    let web1_status = || async {
        let servers = lb.servers("web").await.map_err(|e| e.to_string())?;
        servers
            .into_iter()
            .find(|s| s.server == "web1")
            .ok_or_else(|| "HAProxy has no server web/web1".to_owned())
    };
    let set = |state| async move {
        lb.set_state("web", "web1", state)
            .await
            .map_err(|e| e.to_string())
    };
    let mut samples = Vec::new();
    for sample in 0..LB_SAMPLES as u64 {
        tokio::time::sleep(Duration::from_millis(sample * 37 % INTER_MS)).await;
        set(AdminState::Maint).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let began = Instant::now();
        set(AdminState::Drain).await?;
        loop {
            let status = web1_status().await?;
            if status.status == (ServerState::Drain { changing: None })
                && status.check == Some(CheckResult::Passed("L7OK".into()))
            {
                break;
            }
            if began.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "web1 did not pass a fresh HAProxy check within 10 s of leaving maint: {status:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(began.elapsed());
        set(AdminState::Ready).await?;
        while !web1_status().await?.is_up() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let max = samples.iter().max().copied().unwrap_or_default();
    Ok((mean, max))
}

/// The demo app's own start (spawn until `/alive` answers 200) and stop (SIGTERM until it has
/// exited), each the median of [`APP_SAMPLES`] runs outside Baton.
async fn measure_app(app: &str) -> Result<(Duration, Duration), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let (mut starts, mut stops) = (Vec::new(), Vec::new());
    for _ in 0..APP_SAMPLES {
        let port = free_port();
        let began = Instant::now();
        let mut child = Command::new(app)
            .env("BATON_PORT", port.to_string())
            .env("BATON_VERSION", "v1")
            .env("BATON_BACKEND", "probe")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {app}: {e}"))?;
        let url = format!("http://127.0.0.1:{port}/alive");
        let answered = loop {
            let alive = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if alive.is_ok_and(|response| response.status().is_success()) {
                break Ok(began.elapsed());
            }
            if began.elapsed() > Duration::from_secs(10) {
                break Err(format!("{app} did not answer {url} within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let stopping = Instant::now();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let _ = child.wait();
        stops.push(stopping.elapsed());
        starts.push(answered?);
    }
    Ok((median(&mut starts), median(&mut stops)))
}

/// One request's result: its latency, or why it failed.
type Sample = Result<Duration, String>;

/// One keep-alive connection sending requests until `stop` (bounded in count and time).
async fn load_connection(url: String, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("a reqwest client");
    let mut samples = Vec::new();
    let deadline = Instant::now() + ROLLOUT_DEADLINE;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed)
        && samples.len() < LOAD_MAX_REQUESTS
        && Instant::now() < deadline
    {
        tokio::time::sleep_until(next).await;
        next = tokio::time::Instant::now() + LOAD_PACE;
        let began = Instant::now();
        let result = match client
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => match response.bytes().await {
                Ok(_) => Ok(began.elapsed()),
                Err(error) => Err(format!("body: {error}")),
            },
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) => Err(error.to_string()),
        };
        samples.push(result);
    }
    samples
}

async fn rollout(
    client: &reqwest::Client,
    baton: &str,
    frontend: &str,
    version: &str,
) -> Result<RolloutFigures, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|_| tokio::spawn(load_connection(frontend.to_owned(), stop.clone())))
        .collect();
    // Let the load generator's connections open before the rollout begins.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let began = Instant::now();
    let response = client
        .post(format!("{baton}/api/services/web/deployments"))
        .json(&serde_json::json!({ "version": version }))
        .send()
        .await
        .map_err(|e| format!("POST deployments: {e}"))?;
    let status = response.status();
    let queued: Value = response.json().await.map_err(|e| e.to_string())?;
    let Some(id) = queued["id"].as_i64().filter(|_| status.as_u16() == 202) else {
        stop.store(true, Ordering::Relaxed);
        return Err(format!("expected 202 with an id, got {status}: {queued}"));
    };
    let deployment = loop {
        let deployment: Value = client
            .get(format!("{baton}/api/deployments/{id}"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(deployment["status"].as_str(), Some("queued" | "running")) {
            break deployment;
        }
        if began.elapsed() > ROLLOUT_DEADLINE {
            stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "rollout {id} did not finish within {ROLLOUT_DEADLINE:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client_wall = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for connection in load {
        samples.extend(connection.await.map_err(|e| e.to_string())?);
    }

    let status = deployment["status"].as_str().unwrap_or("?").to_owned();
    if status != "succeeded" {
        return Err(format!(
            "rollout to {version} ended {status}: {deployment:#}"
        ));
    }
    let mut latencies: Vec<Duration> = samples.iter().filter_map(|s| s.clone().ok()).collect();
    latencies.sort();
    let failures: Vec<String> = samples.into_iter().filter_map(Result::err).collect();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };

    let number = |value: &Value, key: &str| {
        value[key]
            .as_i64()
            .ok_or_else(|| format!("the rollout has no `{key}`: {value}"))
    };
    let wall_ms = number(&deployment, "finished_at")? - number(&deployment, "started_at")?;
    let mut steps: Vec<(String, Vec<i64>)> = Vec::new();
    let mut in_steps = 0;
    for step in deployment["steps"].as_array().into_iter().flatten() {
        let took = number(step, "finished_at")? - number(step, "started_at")?;
        in_steps += took;
        let name = step["step"].as_str().unwrap_or("?").to_owned();
        match steps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, durations)) => durations.push(took),
            None => steps.push((name, vec![took])),
        }
    }
    let drain_ms: i64 = steps
        .iter()
        .filter(|(name, _)| name == "wait_sessions" || name == "cut_sessions")
        .flat_map(|(_, durations)| durations)
        .sum();
    Ok(RolloutFigures {
        version: version.to_owned(),
        status,
        requests: latencies.len() + failures.len(),
        failed: failures.len(),
        failure_examples: failures.into_iter().take(3).collect(),
        p50: percentile(50),
        p99: percentile(99),
        wall_ms,
        client_wall,
        drain_ms,
        steps,
        between_steps_ms: wall_ms - in_steps,
    })
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(runs: &[RolloutFigures], needs: &Needs) -> String {
    let mut out = String::new();
    let haproxy = Command::new("/usr/sbin/haproxy")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "HAProxy (version unknown)".into());
    let _ = writeln!(
        out,
        "Rollout benchmark: {BACKENDS} backends behind a real HAProxy, {ROLLOUTS} rollouts (batch_size 1)\n\
         {haproxy}\n\
         HAProxy checks: option httpchk GET /alive; default-server inter {INTER_MS}ms fastinter {FASTINTER_MS}ms downinter {DOWNINTER_MS}ms rise {RISE} fall {FALL}\n\
         Baton: `baton serve` (release build) as its own process; health interval {HEALTH_INTERVAL:?}, healthy_threshold {HEALTHY_THRESHOLD}\n\
         Load: {LOAD_CONNECTIONS} keep-alive connections through HAProxy, each one request at a time, at most one per {LOAD_PACE:?}\n"
    );
    let _ = writeln!(
        out,
        "{:<4} {:<8} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>14} {:>14}",
        "run",
        "version",
        "requests",
        "failed",
        "p50 ms",
        "p99 ms",
        "wall ms",
        "drain ms",
        "overhead/b ms",
        "measured/b ms"
    );
    for (index, run) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<4} {:<8} {:>9} {:>7} {:>8.2} {:>8.2} {:>8} {:>9} {:>14.1} {:>14.1}",
            index + 1,
            run.version,
            run.requests,
            run.failed,
            ms(run.p50),
            ms(run.p99),
            run.wall_ms,
            run.drain_ms,
            needs.overhead(run, RULE_CHECKS),
            needs.overhead(run, needs.lb_check),
        );
        for example in &run.failure_examples {
            let _ = writeln!(out, "       failed: {example}");
        }
    }
    let requests: usize = runs.iter().map(|r| r.requests).sum();
    let failed: usize = runs.iter().map(|r| r.failed).sum();
    let overhead = median_f64(
        runs.iter()
            .map(|r| needs.overhead(r, RULE_CHECKS))
            .collect(),
    );
    let measured = median_f64(
        runs.iter()
            .map(|r| needs.overhead(r, needs.lb_check))
            .collect(),
    );
    let verdict = |value: f64| if value <= 50.0 { "met" } else { "NOT met" };
    let _ = writeln!(
        out,
        "\nIn all: {requests} requests, {failed} failed (target 0).\n\
         Median rollout wall time: {} ms; median p50 {:.2} ms, median p99 {:.2} ms.\n\
         Orchestration overhead per backend, median of {ROLLOUTS} (target at most 50 ms):\n\
         \x20 {overhead:.1} ms by the issue's rule (HAProxy's check allowed rise x fastinter = {} ms): {}\n\
         \x20 {measured:.1} ms with HAProxy's check time as measured ({:.1} ms): {}",
        median_f64(runs.iter().map(|r| r.wall_ms as f64).collect()),
        median_f64(runs.iter().map(|r| ms(r.p50)).collect()),
        median_f64(runs.iter().map(|r| ms(r.p99)).collect()),
        RULE_CHECKS.as_millis(),
        verdict(overhead),
        ms(needs.lb_check),
        verdict(measured),
    );

    let _ = writeln!(
        out,
        "\nWhere the time goes: each step's mean per backend, median over the {ROLLOUTS} rollouts, ms \
         (Baton's recorded step times, millisecond resolution):"
    );
    for (name, _) in &runs[0].steps {
        let per_run: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.steps.iter().find(|(n, _)| n == name))
            .map(|(_, d)| d.iter().sum::<i64>() as f64 / d.len() as f64)
            .collect();
        let _ = writeln!(out, "  {name:<15} {:>7.1}", median_f64(per_run));
    }
    let _ = writeln!(
        out,
        "  {:<15} {:>7.1}   (wall time outside every step: Baton's bookkeeping between steps)",
        "between steps",
        median_f64(
            runs.iter()
                .map(|r| r.between_steps_ms as f64 / BACKENDS as f64)
                .collect()
        )
    );
    let _ = writeln!(
        out,
        "  client-observed wall time (POST until seen finished, polled every 10 ms), median: {:.0} ms",
        median_f64(runs.iter().map(|r| ms(r.client_wall)).collect())
    );

    let _ = writeln!(
        out,
        "\nHow each figure is computed:\n\
         - requests: every request the load generator sent during the rollout (from just before the POST until the rollout was seen finished).\n\
         - failed: answers that were not 2xx, plus connection, timeout and body errors.\n\
         - p50/p99: latency of the successful requests, request sent until the whole body arrived.\n\
         - wall ms: the rollout's finished_at minus started_at as Baton recorded them (from the moment its worker took it).\n\
         - app start: the demo app started by hand {APP_SAMPLES} times outside Baton, spawn until GET /alive answered 200 \
           (polled every 1 ms), median: {:.1} ms.\n\
         - drain: the recorded wait_sessions (and cut_sessions, if any) steps, summed over the backends.\n\
         - HAProxy's check, by the issue's rule: rise x fastinter = {RISE} x {FASTINTER_MS} ms = {} ms per backend.\n\
         - HAProxy's check, measured: on web1 by hand before the rollouts, `set server state drain` out of maint until \
           `show stat` (polled every 1 ms) shows the bare DRAIN with L7OK, {LB_SAMPLES} samples: mean {:.1} ms, longest {:.1} ms. \
           HAProxy 2.6 runs that first check when the timer armed with `inter` fires, so it takes between 0 and inter; \
           fastinter and downinter do not shorten it, and with fall >= 2 one passing check is enough.\n\
         - overhead per backend = (wall - {BACKENDS} x app start - drain - {BACKENDS} x HAProxy's check) / {BACKENDS}, \
           with HAProxy's check by the rule (overhead/b) or as measured (measured/b). \
           It includes stopping the old version (the demo app, stopped by hand with SIGTERM, exits in {:.1} ms, median of {APP_SAMPLES}), \
           Baton's own health probe (healthy_threshold passes, {HEALTH_INTERVAL:?} apart), the runtime-API commands, \
           the polling granularity of Baton's waits, and its bookkeeping.",
        ms(needs.app_start),
        RULE_CHECKS.as_millis(),
        ms(needs.lb_check),
        ms(needs.lb_check_max),
        ms(needs.app_stop),
    );
    out
}
