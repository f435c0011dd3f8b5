//! The scale benchmark: one service of 500 demo-app backends behind one HAProxy backend.
//!
//! `cargo bench -p server --bench scale` (or `scripts/dev bench scale`) starts a real HAProxy
//! whose backend `web` has 500 servers (the README's check settings), runs `baton serve`
//! (release build) as its own process, which starts the 500 demo-app backends, and rolls the
//! service out once with `batch_size = 50`. Its database already holds 50 finished rollouts of
//! the service, as after a while in use. Baton reaches HAProxy's runtime API through a small
//! counting proxy in this process, so every command Baton sends and every byte HAProxy answers
//! is counted. It prints its figures and writes them to `target/bench/scale.txt`:
//!
//! - rollout wall time and orchestration overhead per batch (the output gives the formula);
//! - Baton's CPU (from `/proc/<pid>/stat`) at rest and during the rollout, its peak RSS;
//! - HAProxy polling: runtime-API commands and bytes per second, and HAProxy's own CPU;
//! - `GET /api/services` and the fleet page (`GET /`) latency, and the size of the page, of the
//!   API answer and of the fleet snapshot the live stream sends a browser.
//!
//! HAProxy, Baton and the backends are started through the tests' support module
//! (`server/tests/support`), which kills every process by PID when the fleet is dropped, also
//! when the benchmark fails; the app-start probes are killed here. Network traffic stays on
//! loopback; ports come from the OS. Every loop is bounded.

use std::fmt::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use app::model::{RolloutStatus, Trigger};
use baton_server::domain::{BackendName, Version};
use baton_server::rollout::engine::{Rollout, Target};
use baton_server::store::{NewDeployment, Store};
use futures::StreamExt;
use serde_json::Value;
use support::fleet::{FleetOptions, spawn_fleet};
use support::haproxy::Checks;
use support::process::{KillOnDrop, free_port};
use support::socket_proxy::Forwarded;

use support::bench::{median, memory_mib, ms, run_and_write};

#[path = "../tests/support/mod.rs"]
mod support;

const BACKENDS: usize = 500;
const BATCH_SIZE: usize = 50;
const BATCHES: usize = BACKENDS.div_ceil(BATCH_SIZE);

// HAProxy's check settings: the README's recommendation.
const INTER_MS: u64 = 200;
const CHECKS: Checks = Checks {
    inter: Duration::from_millis(INTER_MS),
    fastinter: Duration::from_millis(100),
    downinter: Some(Duration::from_millis(500)),
    rise: 2,
    fall: 2,
    timeout: Some(Duration::from_secs(1)),
    expect_status: Some(200),
};

// Baton's own probe of the new version.
const HEALTH_INTERVAL_MS: u64 = 50;
const HEALTHY_THRESHOLD: u32 = 2;

/// Finished rollouts in the database before Baton starts, as after a while in use.
const HISTORY: usize = 50;
/// How long Baton is watched while nothing happens (its CPU at rest).
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// `GET /api/services` calls timed, one after the other.
const API_CALLS: usize = 50;
/// `GET /` (the fleet page) calls timed, one after the other.
const PAGE_CALLS: usize = 20;
/// The demo app started by hand, for the overhead formula.
const APP_SAMPLES: usize = 5;
/// Bound of the rollout's wait.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    run_and_write("scale", run())
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32, ticks_per_second: f64) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); `fields[0]` is field 3 (state).
    let ticks = |index: usize| -> Result<f64, String> {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat}"))
    };
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) / ticks_per_second,
    ))
}

/// The kernel's clock ticks per second for `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS:`, `VmHWM:`), as MiB.
/// Everything the process read so far (`rchar` of `/proc/<pid>/io`: sockets, files, `/proc`).
fn bytes_read(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("rchar:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU used by a process over a window, as a share of one core.
struct CpuWindow {
    pid: u32,
    ticks: f64,
    cpu: Duration,
    began: Instant,
}

impl CpuWindow {
    fn start(pid: u32, ticks: f64) -> Result<Self, String> {
        Ok(Self {
            pid,
            ticks,
            cpu: cpu_time(pid, ticks)?,
            began: Instant::now(),
        })
    }

    /// (CPU seconds used, share of one core in percent).
    fn end(&self) -> Result<(f64, f64), String> {
        let used = cpu_time(self.pid, self.ticks)?.saturating_sub(self.cpu);
        let wall = self.began.elapsed();
        Ok((
            used.as_secs_f64(),
            100.0 * used.as_secs_f64() / wall.as_secs_f64(),
        ))
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Writes [`HISTORY`] finished rollouts of the service into Baton's database, each with its
/// saved engine state of [`BACKENDS`] targets: a Baton that has been in use for a while. Done
/// while Baton idles with its fleet up (its worker looks at the queue only when woken).
async fn seed_history(database_url: &str, backends: &[String]) -> Result<(), String> {
    let store = Store::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    let version = |text: &str| Version::parse(text).map_err(|e| e.to_string());
    let mut from = version("v0.0")?;
    for past in 1..=HISTORY {
        let to = version(&format!("v0.{past}"))?;
        let targets = backends
            .iter()
            .map(|name| {
                Ok(Target {
                    name: BackendName::parse(name).map_err(|e| e.to_string())?,
                    previous: from.clone(),
                    slot: Default::default(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let state = serde_json::to_string(&Rollout::new(to.clone(), targets, BATCH_SIZE, true))
            .map_err(|e| e.to_string())?;
        let id = store
            .insert_deployment(&NewDeployment {
                service: "web",
                from_version: Some(from.as_str()),
                to_version: to.as_str(),
                trigger: Trigger::Api,
                requested_by: Some("bench"),
                state: &state,
            })
            .await
            .map_err(|e| e.to_string())?;
        store
            .save_state(id, RolloutStatus::Succeeded, &state, None)
            .await
            .map_err(|e| e.to_string())?;
        from = to;
    }
    store.close().await;
    Ok(())
}

/// The demo app's own start (spawn until `/alive` answers 200), median of [`APP_SAMPLES`]
/// runs outside Baton.
async fn measure_app_start(app: &str) -> Result<Duration, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let mut starts = Vec::new();
    for _ in 0..APP_SAMPLES {
        let port = free_port();
        let began = Instant::now();
        let child = Command::new(app)
            .env("BATON_PORT", port.to_string())
            .env("BATON_VERSION", "v1")
            .env("BATON_BACKEND", "probe")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {app}: {e}"))?;
        let child = KillOnDrop::new(child);
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
        drop(child);
        starts.push(answered?);
    }
    Ok(median(&mut starts))
}

/// Times `calls` GETs of `url`, one after the other, until the whole body arrived; returns the
/// sorted latencies and the last body.
async fn time_gets(
    client: &reqwest::Client,
    url: &str,
    calls: usize,
) -> Result<(Vec<Duration>, bytes::Bytes), String> {
    let mut latencies = Vec::with_capacity(calls);
    let mut body = bytes::Bytes::new();
    for _ in 0..calls {
        let began = Instant::now();
        let response = client
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        latencies.push(began.elapsed());
        if !status.is_success() {
            return Err(format!(
                "GET {url} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
    }
    latencies.sort();
    Ok((latencies, body))
}

/// What one subscriber of the fleet-wide stream (`GET /api/events`, what the fleet page
/// follows) received.
#[derive(Default, Debug)]
struct StreamFigures {
    snapshots: u64,
    snapshot_bytes: u64,
    first_snapshot_bytes: u64,
    events: u64,
    event_bytes: u64,
}

/// Follows `/api/events` until `stop` fires (or the rollout deadline passes).
async fn follow_fleet(
    client: reqwest::Client,
    url: String,
    stop: tokio_util::sync::CancellationToken,
) -> Result<StreamFigures, String> {
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut figures = StreamFigures::default();
    let deadline = tokio::time::Instant::now() + ROLLOUT_DEADLINE;
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = stop.cancelled() => return Ok(figures),
            _ = tokio::time::sleep_until(deadline) => return Ok(figures),
        };
        let Some(chunk) = chunk else {
            return Ok(figures);
        };
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.map_err(|e| format!("{url}: {e}"))?,
        ));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: usize = block
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|data| data.trim_start().len())
                .sum();
            if block.lines().any(|line| line == "event: fleet") {
                if figures.snapshots == 0 {
                    figures.first_snapshot_bytes = data as u64;
                }
                figures.snapshots += 1;
                figures.snapshot_bytes += data as u64;
            } else if block.lines().any(|line| line == "event: deployment") {
                figures.events += 1;
                figures.event_bytes += data as u64;
            }
        }
    }
}

/// What the rollout measured.
struct RolloutFigures {
    status: String,
    /// `finished_at - started_at` of the deployment, as Baton recorded it.
    wall_ms: i64,
    /// From the POST until the client saw it finished (polled every 100 ms).
    client_wall: Duration,
    /// Per step, in order: (name, mean over the batches of the step's own work, mean span).
    steps: Vec<(String, f64, f64)>,
    /// Wall time outside every step's own work: step rows, state saves, events.
    bookkeeping_ms: i64,
    drain_ms: i64,
    step_rows: usize,
}

/// One step of one batch, from its step rows (ms since the epoch).
struct StepSpan {
    step: String,
    batch: usize,
    last_begun: i64,
    first_ended: i64,
    first_begun: i64,
    last_ended: i64,
}

impl StepSpan {
    /// The step itself: from its last row begun to its first ended.
    fn work(&self) -> i64 {
        (self.first_ended - self.last_begun).max(0)
    }
}

/// Reads the finished rollout's steps. For each step of each batch, its *work* is from the last
/// of its rows beginning to the first of them ending (Baton writes a row per backend before and
/// after the step, one after the other, so what lies outside that is bookkeeping), its *span*
/// from the first beginning to the last ending.
fn rollout_figures(deployment: &Value, backends: &[String]) -> Result<RolloutFigures, String> {
    let number = |value: &Value, key: &str| {
        value[key]
            .as_i64()
            .ok_or_else(|| format!("the rollout has no `{key}`: {value}"))
    };
    let wall_ms = number(deployment, "finished_at")? - number(deployment, "started_at")?;
    let mut order: Vec<String> = Vec::new();
    let mut spans: Vec<StepSpan> = Vec::new();
    let rows = deployment["steps"]
        .as_array()
        .ok_or_else(|| format!("the rollout has no steps: {deployment}"))?;
    for row in rows {
        let name = row["step"].as_str().unwrap_or("?").to_owned();
        let batch = row["backend"]
            .as_str()
            .and_then(|b| backends.iter().position(|name| name == b))
            .map_or(0, |index| index / BATCH_SIZE);
        let (started, finished) = (number(row, "started_at")?, number(row, "finished_at")?);
        if !order.contains(&name) {
            order.push(name.clone());
        }
        match spans
            .iter_mut()
            .find(|span| span.step == name && span.batch == batch)
        {
            Some(span) => {
                span.last_begun = span.last_begun.max(started);
                span.first_ended = span.first_ended.min(finished);
                span.first_begun = span.first_begun.min(started);
                span.last_ended = span.last_ended.max(finished);
            }
            None => spans.push(StepSpan {
                step: name,
                batch,
                last_begun: started,
                first_ended: finished,
                first_begun: started,
                last_ended: finished,
            }),
        }
    }
    let total_work: i64 = spans.iter().map(StepSpan::work).sum();
    let steps = order
        .iter()
        .map(|name| {
            let of_step: Vec<&StepSpan> = spans.iter().filter(|s| s.step == *name).collect();
            let count = of_step.len().max(1) as f64;
            let mean_work = of_step.iter().map(|s| s.work() as f64).sum::<f64>() / count;
            let mean_span = of_step
                .iter()
                .map(|s| (s.last_ended - s.first_begun) as f64)
                .sum::<f64>()
                / count;
            (name.clone(), mean_work, mean_span)
        })
        .collect();
    let drain_ms = spans
        .iter()
        .filter(|s| s.step == "wait_sessions" || s.step == "cut_sessions")
        .map(StepSpan::work)
        .sum();
    Ok(RolloutFigures {
        status: deployment["status"].as_str().unwrap_or("?").to_owned(),
        wall_ms,
        client_wall: Duration::ZERO,
        steps,
        bookkeeping_ms: wall_ms - total_work,
        drain_ms,
        step_rows: rows.len(),
    })
}

/// Everything the report prints.
struct Figures {
    haproxy_version: String,
    load_before: String,
    load_after: String,
    fleet_up: Duration,
    app_start: Duration,
    idle_baton: (f64, f64),
    idle_haproxy: (f64, f64),
    idle_counts: Forwarded,
    idle_window: Duration,
    idle_rss: f64,
    api: Vec<Duration>,
    api_bytes: usize,
    page: Vec<Duration>,
    page_bytes: usize,
    rollout: RolloutFigures,
    rollout_baton: (f64, f64),
    rollout_haproxy: (f64, f64),
    rollout_counts: Forwarded,
    rollout_rchar: u64,
    stream: StreamFigures,
    peak_rss: f64,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn run() -> Result<String, String> {
    let app = env!("CARGO_BIN_EXE_baton-demo-app");
    let load_before = load_average();
    let ticks = ticks_per_second();
    let app_start = measure_app_start(app).await?;

    let began = Instant::now();
    let fleet = spawn_fleet(FleetOptions {
        backends: BACKENDS,
        batch_size: Some(BATCH_SIZE as u32),
        start_timeout: Duration::from_secs(60),
        health_interval: Duration::from_millis(HEALTH_INTERVAL_MS),
        healthy_threshold: HEALTHY_THRESHOLD,
        baton_process: true,
        socket_proxy: true,
        checks: CHECKS,
        log_filter: Some("warn"),
        ..FleetOptions::default()
    })
    .await;
    let fleet_up = began.elapsed();
    eprintln!("scale bench: {BACKENDS} backends UP after {fleet_up:.1?}");
    let names: Vec<String> = (1..=BACKENDS).map(|i| format!("web{i}")).collect();
    seed_history(&fleet.database_url, &names).await?;
    let (baton, client) = (fleet.baton.clone(), fleet.client.clone());
    let (baton_pid, haproxy_pid) = (fleet.baton_pid(), fleet.haproxy_pid());
    let proxy = fleet
        .proxy
        .as_ref()
        .ok_or("the fleet has no socket proxy")?;

    // At rest: nobody watches, nothing rolls out; Baton refreshes its snapshot every second.
    let idle_counts_before = proxy.forwarded();
    let idle_baton = CpuWindow::start(baton_pid, ticks)?;
    let idle_haproxy = CpuWindow::start(haproxy_pid, ticks)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_window = idle_baton.began.elapsed();
    let (idle_baton, idle_haproxy) = (idle_baton.end()?, idle_haproxy.end()?);
    let idle_counts = proxy.forwarded().since(&idle_counts_before);
    let idle_rss = memory_mib(baton_pid, "VmRSS:");
    eprintln!(
        "scale bench: at rest Baton {:.1}% of a core, HAProxy {:.1}%",
        idle_baton.1, idle_haproxy.1
    );

    let (api, api_body) = time_gets(&client, &format!("{baton}/api/services"), API_CALLS).await?;
    let (page, page_body) = time_gets(&client, &format!("{baton}/"), PAGE_CALLS).await?;
    let html = String::from_utf8_lossy(&page_body);
    if !html.contains("data-backend=\"web500\"") {
        return Err(format!(
            "the fleet page does not show backend web500: {}",
            &html[..html.len().min(400)]
        ));
    }
    eprintln!(
        "scale bench: GET /api/services p50 {:.1} ms, GET / p50 {:.1} ms",
        ms(percentile(&api, 50)),
        ms(percentile(&page, 50))
    );

    // The rollout, watched by one browser's worth of live stream.
    let stop_stream = tokio_util::sync::CancellationToken::new();
    let stream = tokio::spawn(follow_fleet(
        client.clone(),
        format!("{baton}/api/events"),
        stop_stream.clone(),
    ));
    let rollout_counts_before = proxy.forwarded();
    let rchar_before = bytes_read(baton_pid);
    let rollout_baton = CpuWindow::start(baton_pid, ticks)?;
    let rollout_haproxy = CpuWindow::start(haproxy_pid, ticks)?;
    let began = Instant::now();
    let response = client
        .post(format!("{baton}/api/services/web/deployments"))
        .json(&serde_json::json!({ "version": "v2" }))
        .send()
        .await
        .map_err(|e| format!("POST deployments: {e}"))?;
    let status = response.status();
    let queued: Value = response.json().await.map_err(|e| e.to_string())?;
    let Some(id) = queued["id"].as_i64().filter(|_| status.as_u16() == 202) else {
        return Err(format!("expected 202 with an id, got {status}: {queued}"));
    };
    loop {
        let page: Value = client
            .get(format!("{baton}/api/deployments?service=web&limit=1"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let newest = &page["deployments"][0];
        if newest["id"].as_i64() == Some(id)
            && !matches!(newest["status"].as_str(), Some("queued" | "running"))
        {
            break;
        }
        if began.elapsed() > ROLLOUT_DEADLINE {
            return Err(format!(
                "rollout {id} did not finish within {ROLLOUT_DEADLINE:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client_wall = began.elapsed();
    let (rollout_baton, rollout_haproxy) = (rollout_baton.end()?, rollout_haproxy.end()?);
    let rollout_counts = proxy.forwarded().since(&rollout_counts_before);
    let rollout_rchar = bytes_read(baton_pid).saturating_sub(rchar_before);
    stop_stream.cancel();
    let stream = stream.await.map_err(|e| e.to_string())??;
    let peak_rss = memory_mib(baton_pid, "VmHWM:");

    let deployment: Value = client
        .get(format!("{baton}/api/deployments/{id}"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let mut rollout = rollout_figures(&deployment, &names)?;
    rollout.client_wall = client_wall;
    if rollout.status != "succeeded" {
        return Err(format!(
            "the rollout ended {}: {}",
            rollout.status, deployment["reason"]
        ));
    }
    eprintln!(
        "scale bench: rollout succeeded in {} ms; Baton {:.1}% of a core",
        rollout.wall_ms, rollout_baton.1
    );
    let load_after = load_average();
    drop(fleet);

    Ok(report(&Figures {
        haproxy_version: Command::new("/usr/sbin/haproxy")
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "HAProxy (version unknown)".into()),
        load_before,
        load_after,
        fleet_up,
        app_start,
        idle_baton,
        idle_haproxy,
        idle_counts,
        idle_window,
        idle_rss,
        api_bytes: api_body.len(),
        api,
        page_bytes: page_body.len(),
        page,
        rollout,
        rollout_baton,
        rollout_haproxy,
        rollout_counts,
        rollout_rchar,
        stream,
        peak_rss,
    }))
}

fn report(f: &Figures) -> String {
    let mut out = String::new();
    let rollout = &f.rollout;
    let wall = Duration::from_millis(rollout.wall_ms.max(0) as u64);
    let per_second = |count: u64, window: Duration| count as f64 / window.as_secs_f64();
    let needed_per_batch = ms(f.app_start) + INTER_MS as f64;
    let overhead_per_batch =
        (rollout.wall_ms as f64 - rollout.drain_ms as f64 - BATCHES as f64 * needed_per_batch)
            / BATCHES as f64;
    let configured_wait = u64::from(HEALTHY_THRESHOLD - 1) * HEALTH_INTERVAL_MS;
    let kib = |bytes: u64| bytes as f64 / 1024.0;
    let _ = writeln!(
        out,
        "Scale benchmark: one service of {BACKENDS} demo-app backends behind one HAProxy backend, batch_size {BATCH_SIZE} ({BATCHES} batches)\n\
         {}\n\
         HAProxy checks: option httpchk GET /alive; default-server {CHECKS}\n\
         Baton: `baton serve` (release build) as its own process; health interval {HEALTH_INTERVAL_MS}ms, healthy_threshold {HEALTHY_THRESHOLD}; {HISTORY} earlier rollouts in its history; no client traffic through HAProxy\n\
         Load average (1, 5, 15 min) before: {}, after: {}\n",
        f.haproxy_version, f.load_before, f.load_after
    );
    let _ = writeln!(
        out,
        "Fleet start: Baton started {BACKENDS} backends and HAProxy reported all UP after {:.1} s\n",
        f.fleet_up.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Rollout to v2: {}, wall time {} ms ({:.0} ms per batch); seen finished by the client after {:.0} ms; {} step rows\n\
         Orchestration overhead per batch: {overhead_per_batch:.0} ms\n\
         \x20 = (wall {} ms - drain {} ms - {BATCHES} x (app start {:.1} ms + HAProxy's check, at most inter = {INTER_MS} ms)) / {BATCHES}\n\
         \x20 it includes Baton's own health probe ((healthy_threshold - 1) x interval = {configured_wait} ms of configured waiting per batch),\n\
         \x20 starting and stopping 50 processes at once on 2 cores, the runtime-API commands, polling granularity, and the bookkeeping below\n",
        rollout.status,
        rollout.wall_ms,
        rollout.wall_ms as f64 / BATCHES as f64,
        ms(rollout.client_wall),
        rollout.step_rows,
        rollout.wall_ms,
        rollout.drain_ms,
        ms(f.app_start),
    );
    let _ = writeln!(
        out,
        "Where the time goes, per batch (mean over {BATCHES} batches), ms:\n  {:<15} {:>8} {:>8}",
        "step", "work", "span"
    );
    for (name, work, span) in &rollout.steps {
        let _ = writeln!(out, "  {name:<15} {work:>8.1} {span:>8.1}");
    }
    let _ = writeln!(
        out,
        "  {:<15} {:>8.1}          (wall time outside every step's work: step rows, state saves, events)\n\
         \x20 work = last of the batch's rows for the step begun to first ended (the step itself);\n\
         \x20 span = first begun to last ended (adds writing the {BATCH_SIZE} step rows before and after)\n",
        "bookkeeping",
        rollout.bookkeeping_ms as f64 / BATCHES as f64,
    );
    let _ = writeln!(
        out,
        "Baton CPU (utime + stime from /proc/<pid>/stat, share of one core):\n\
         \x20 at rest ({:.0} s): {:.1}%   during the rollout ({:.1} s): {:.1}% ({:.1} s of CPU)\n\
         Baton memory: RSS at rest {:.1} MiB, peak (VmHWM) {:.1} MiB (goal under 64 MiB)\n",
        f.idle_window.as_secs_f64(),
        f.idle_baton.1,
        ms(f.rollout.client_wall) / 1000.0,
        f.rollout_baton.1,
        f.rollout_baton.0,
        f.idle_rss,
        f.peak_rss,
    );
    let window = f.rollout.client_wall;
    let c = &f.rollout_counts;
    let verbs: Vec<String> = c
        .commands
        .iter()
        .map(|(verb, count)| format!("{count} {verb}"))
        .collect();
    let _ = writeln!(
        out,
        "HAProxy runtime API (counted by a proxy between Baton and the socket):\n\
         \x20 at rest:     {:>7.1} commands/s, {:>8.1} KiB/s read by Baton\n\
         \x20 rollout:     {:>7.1} commands/s, {:>8.1} KiB/s read by Baton ({} commands: {}; {:.1} MiB answers)\n\
         \x20 mean answer to a show stat during the rollout: {:.1} KiB\n\
         \x20 everything Baton read during the rollout (rchar: sockets, SQLite, /proc): {:.1} MiB ({:.1} MiB/s)\n\
         HAProxy CPU: at rest {:.1}% of a core (health checks of {BACKENDS} servers), during the rollout {:.1}%\n",
        per_second(f.idle_counts.total_commands(), f.idle_window),
        kib(f.idle_counts.answer_bytes) / f.idle_window.as_secs_f64(),
        per_second(c.total_commands(), window),
        kib(c.answer_bytes) / window.as_secs_f64(),
        c.total_commands(),
        verbs.join(", "),
        kib(c.answer_bytes) / 1024.0,
        kib(c.answer_bytes) / c.count("show stat").max(1) as f64,
        kib(f.rollout_rchar) / 1024.0,
        kib(f.rollout_rchar) / 1024.0 / window.as_secs_f64(),
        f.idle_haproxy.1,
        f.rollout_haproxy.1,
    );
    let _ = writeln!(
        out,
        "GET /api/services at rest ({API_CALLS} calls, one after the other): p50 {:.1} ms, p99 {:.1} ms, {:.1} KiB\n\
         GET / (the fleet page, server-rendered; {PAGE_CALLS} calls): p50 {:.1} ms, p99 {:.1} ms, {:.1} KiB of HTML (goal under 100 ms)\n\
         Fleet live stream (GET /api/events, one subscriber during the rollout): first snapshot {:.1} KiB; \
         {} snapshots ({:.1}/s, {:.1} KiB/s) and {} rollout events ({:.1} KiB/s) while it ran\n",
        ms(percentile(&f.api, 50)),
        ms(percentile(&f.api, 99)),
        kib(f.api_bytes as u64),
        ms(percentile(&f.page, 50)),
        ms(percentile(&f.page, 99)),
        kib(f.page_bytes as u64),
        kib(f.stream.first_snapshot_bytes),
        f.stream.snapshots,
        per_second(f.stream.snapshots, window),
        kib(f.stream.snapshot_bytes) / window.as_secs_f64(),
        f.stream.events,
        kib(f.stream.event_bytes) / window.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "How each figure is computed:\n\
         - wall: the rollout's finished_at minus started_at as Baton recorded them ({:.1} s).\n\
         - app start: the demo app started by hand {APP_SAMPLES} times outside Baton, spawn until GET /alive answered (polled every 1 ms), median.\n\
         - HAProxy's check: the first check after a server leaves maint runs 0 to inter later; a batch waits for the slowest of its {BATCH_SIZE}, so about inter.\n\
         - CPU: the delta of utime + stime over the window divided by the window's wall time (100% = one core of 2).\n\
         - latencies: request sent until the whole body arrived, from this process on the same 2 cores.",
        wall.as_secs_f64()
    );
    out
}
