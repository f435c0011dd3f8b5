//! Event fan-out: 1,000 browsers watching one rollout over Server-Sent Events.
//!
//! Starts a real HAProxy, three demo-app backends and `baton serve` (a subprocess, so its memory
//! can be read from /proc), rolls the service out to a slow-starting version, and while the
//! first backend starts, opens the subscribers on the rollout's event stream. Every event
//! persisted after the last subscriber connected is timed from its `at` (set when it is
//! written, in the same transaction as the change) to its arrival at each subscriber.
//!
//! Prints the figures and writes them to target/bench/fanout.txt.
//! Run: `scripts/dev bench fanout` (or `cargo bench -p server --bench fanout`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::Value;
use support::baton::bearer;
use support::config::Auth;
use support::fleet::{FleetOptions, spawn_fleet};

use support::bench::memory_mib;

#[path = "../tests/support/mod.rs"]
mod support;

const SUBSCRIBERS: usize = 1_000;
const BACKENDS: usize = 3;

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A process's resident memory (`VmRSS` or `VmHWM`) in MiB.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Follows one rollout's events until it ends; returns each event's delay in ms, for events
/// persisted at or after `since`.
async fn subscriber(
    client: reqwest::Client,
    url: String,
    since: tokio::sync::watch::Receiver<i64>,
) -> Vec<i64> {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut delays = Vec::new();
    while let Some(chunk) = body.next().await {
        let received = now_millis();
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            if event["at"].as_i64().unwrap() >= *since.borrow() {
                delays.push(received - event["at"].as_i64().unwrap());
            }
            let status = event["deployment"]["status"].as_str();
            if event["kind"] == "status" && !matches!(status, Some("queued" | "running" | "paused"))
            {
                return delays;
            }
        }
    }
    delays
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Every process it starts (HAProxy, Baton, the backends) is killed when `fleet` is dropped.
    let fleet = spawn_fleet(FleetOptions {
        backends: BACKENDS,
        start_timeout: Duration::from_secs(20),
        baton_process: true,
        log_filter: Some("warn"),
        // Every subscriber holds a stream on the benchmark's one token.
        auth: Some(Auth::new().streams_per_caller(SUBSCRIBERS as u32)),
        ..FleetOptions::default()
    })
    .await;
    let baton_pid = fleet.baton_pid();
    let base = fleet.baton.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(SUBSCRIBERS)
        .default_headers(bearer(&fleet.token))
        .build()
        .unwrap();

    let idle_rss = memory_mib(baton_pid, "VmRSS:");

    let queued: Value = client
        .post(format!("{base}/api/services/web/deployments"))
        .json(&serde_json::json!({ "version": "v2-slowstart" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = queued["id"].as_i64().unwrap();
    let url = format!("{base}/api/deployments/{id}/events");

    let open_files = || {
        std::fs::read_dir(format!("/proc/{baton_pid}/fd"))
            .map(|fds| fds.count())
            .unwrap_or(0)
    };
    let baseline = open_files();
    let (since_tx, since) = tokio::sync::watch::channel(i64::MAX);
    let connecting = Instant::now();
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| tokio::spawn(subscriber(client.clone(), url.clone(), since.clone())))
        .collect();
    // Connected once Baton holds that many streams open: count its sockets.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if open_files() >= baseline + SUBSCRIBERS {
            break;
        }
        assert!(Instant::now() < deadline, "subscribers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = connecting.elapsed();
    since_tx.send(now_millis()).unwrap();
    let connected_rss = memory_mib(baton_pid, "VmRSS:");

    let mut delays = Vec::new();
    let mut events_per_subscriber = Vec::new();
    for task in subscribers {
        let mine = task.await.unwrap();
        events_per_subscriber.push(mine.len());
        delays.extend(mine);
    }
    let peak_rss = memory_mib(baton_pid, "VmHWM:");
    let deployment = get(&client, &format!("{base}/api/deployments/{id}")).await;
    delays.sort_unstable();
    assert!(!delays.is_empty(), "no event was timed");
    let min_events = events_per_subscriber.iter().min().unwrap();
    let max_events = events_per_subscriber.iter().max().unwrap();

    let mut report = String::new();
    writeln!(report, "Event fan-out: {SUBSCRIBERS} SSE subscribers on one rollout ({BACKENDS} backends, status {})", deployment["status"]).unwrap();
    writeln!(
        report,
        "  subscribers connected in          {:>8.0} ms",
        connect_time.as_secs_f64() * 1000.0
    )
    .unwrap();
    writeln!(
        report,
        "  events timed per subscriber       {min_events} to {max_events}"
    )
    .unwrap();
    writeln!(
        report,
        "  deliveries timed                  {:>8}",
        delays.len()
    )
    .unwrap();
    writeln!(
        report,
        "  delay persisted -> received p50   {:>8} ms",
        percentile(&delays, 50.0)
    )
    .unwrap();
    writeln!(
        report,
        "  delay persisted -> received p99   {:>8} ms",
        percentile(&delays, 99.0)
    )
    .unwrap();
    writeln!(
        report,
        "  delay persisted -> received max   {:>8} ms",
        delays.last().unwrap()
    )
    .unwrap();
    writeln!(
        report,
        "  Baton memory (RSS) idle           {idle_rss:>8.1} MiB"
    )
    .unwrap();
    writeln!(
        report,
        "  Baton memory (RSS) with streams   {connected_rss:>8.1} MiB"
    )
    .unwrap();
    writeln!(
        report,
        "  Baton memory (peak RSS)           {peak_rss:>8.1} MiB"
    )
    .unwrap();
    writeln!(report, "  (delay = subscriber's clock at arrival - the event's `at`, written with the change; ms resolution; subscribers run on the same 2 cores as Baton)").unwrap();
    print!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fanout.txt"), report).unwrap();
    drop(fleet);
}
