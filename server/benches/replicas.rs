//! Two replicas on PostgreSQL: how fast an event committed on one reaches browsers on the other,
//! and what PostgreSQL costs a rollout next to SQLite.
//!
//! 1. Event delay across replicas: replicas A and B (`Application`s in this process) share a
//!    fresh database of the private test PostgreSQL; 200 SSE clients follow B's fleet stream
//!    (`/api/events`). The benchmark commits events one at a time, 20 ms apart, through A's
//!    own store (a pause request on a rollout of a service neither replica runs, so no worker
//!    adds events of its own), then as many through B's store. Each delivery is timed from the
//!    start of the commit's call to the event's arrival at the client, on one monotonic clock.
//!    So the figure includes the commit itself, then (across replicas) PostgreSQL's
//!    notification, B's read of the new events and the fan-out; the same-replica figure is the
//!    baseline without the notification.
//! 2. Store writes: one event-writing transaction (a pause request), one after the other, on a
//!    SQLite file and on PostgreSQL.
//! 3. Rollout overhead: the fleet of `benches/rollout.rs` (a real HAProxy and 4 demo-app
//!    backends, one at a time) rolled out 3 times with Baton on SQLite, then on PostgreSQL, no
//!    load. "Between steps" is the rollout's wall time minus the time in its steps: Baton's
//!    own bookkeeping, where the database shows.
//!
//! The PostgreSQL is the tests' private one (`tests/support/postgres.rs`), on this machine, with
//! fsync and synchronous commits off: the figures leave out a disk flush per commit.
//!
//! Takeover time (leader killed → first step by the new leader) needs the lease and is measured
//! with it, not here.
//!
//! Everything stays on loopback and in bounds (counts and deadlines below); every process and
//! database it starts is gone when it ends, also when it fails. Prints the figures and writes
//! them to target/bench/replicas.txt. Run: `cargo bench -p server --bench replicas`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::model::{ControlAction, Trigger};
use baton_server::auth::Role;
use baton_server::fleet::Fleet;
use baton_server::startup::Application;
use baton_server::store::{NewDeployment, Store};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use support::baton::{bearer, create_token, settings};
use support::bench::{ms, run_and_write};
use support::config::{self, Auth};
use support::fleet::{FleetOptions, spawn_fleet};
use support::postgres;

#[path = "../tests/support/mod.rs"]
mod support;

/// Browsers on replica B.
const CLIENTS: usize = 200;
/// Events committed on each replica in turn.
const EVENTS: usize = 100;
/// Between two commits, so each event is timed on its own rather than queued behind another.
const PACE: Duration = Duration::from_millis(20);
/// How long the clients may take to connect, and to receive every event.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
const RECEIVE_DEADLINE: Duration = Duration::from_secs(60);
/// Transactions timed per database for the store-write figure.
const WRITES: usize = 200;
/// The rollout fleet, as in benches/rollout.rs.
const BACKENDS: usize = 4;
const ROLLOUTS: usize = 3;
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    run_and_write("replicas", run())
}

async fn run() -> Result<String, String> {
    let mut report = String::new();
    let across = event_delay().await?;
    let writes = store_writes().await?;
    let sqlite = rollouts(None).await?;
    let postgres = rollouts(Some(postgres::fresh_database())).await?;

    let w = |report: &mut String, line: String| writeln!(report, "{line}").unwrap();
    w(
        &mut report,
        format!(
            "Two replicas on PostgreSQL ({CLIENTS} SSE clients on replica B, {EVENTS} events committed on each replica, {} ms apart)",
            PACE.as_millis()
        ),
    );
    for (label, delays) in [
        ("committed on A, received on B", &across.across),
        ("committed on B, received on B", &across.same),
    ] {
        w(
            &mut report,
            format!(
                "  {label}: p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   ({} deliveries)",
                percentile(delays, 50.0),
                percentile(delays, 99.0),
                delays.last().copied().unwrap_or_default(),
                delays.len()
            ),
        );
    }
    w(
        &mut report,
        format!(
            "  clients connected in {:.0} ms; each received every event once, in id order",
            ms(across.connect)
        ),
    );
    w(
        &mut report,
        "  (delay = from the start of the commit's call to the client's receipt, one monotonic clock; replicas, clients and writer share this process's 2 threads)".into(),
    );
    w(
        &mut report,
        format!("Store writes: one event-writing transaction ({WRITES} in a row)"),
    );
    for (label, durations) in [("SQLite", &writes.0), ("PostgreSQL", &writes.1)] {
        w(
            &mut report,
            format!(
                "  {label:<10}  p50 {:>6.2} ms   p99 {:>6.2} ms",
                percentile(durations, 50.0),
                percentile(durations, 99.0)
            ),
        );
    }
    w(
        &mut report,
        "  (the tests' PostgreSQL runs with fsync and synchronous_commit off: a server that flushes each commit to disk adds that flush to every figure here)".into(),
    );
    w(
        &mut report,
        format!(
            "Rollout overhead: {BACKENDS} demo-app backends behind a real HAProxy, one at a time, {ROLLOUTS} rollouts per database, no load (median)"
        ),
    );
    for (label, runs) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        w(
            &mut report,
            format!(
                "  {label:<10}  rollout {:>6.0} ms   between steps {:>5.0} ms = {:>4.1} ms per backend",
                median(runs.iter().map(|run| run.wall_ms).collect()),
                median(runs.iter().map(|run| run.between_steps_ms).collect()),
                median(runs.iter().map(|run| run.between_steps_ms).collect()) / BACKENDS as f64
            ),
        );
    }
    let per_backend = |runs: &[RolloutRun]| {
        median(runs.iter().map(|run| run.between_steps_ms).collect()) / BACKENDS as f64
    };
    w(
        &mut report,
        format!(
            "  PostgreSQL - SQLite: {:+.1} ms per backend between steps",
            per_backend(&postgres) - per_backend(&sqlite)
        ),
    );
    w(
        &mut report,
        "Takeover (leader killed -> first step by the new leader): not measured here; it needs the lease".into(),
    );
    Ok(report)
}

/// A replica in this process on `database_url`, with its store in hand.
struct Replica {
    store: Store,
    address: String,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(database_url: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // Every client holds a stream on the benchmark's one token.
        let config = config::api_and_worker().auth(Auth::new().streams_per_caller(CLIENTS as u32));
        let mut settings = settings(&config.toml(), dir.path(), &[]);
        settings.server.database_url = database_url.to_owned();
        let store = Store::connect(database_url)
            .await
            .map_err(|e| e.to_string())?;
        let fleet = Arc::new(Fleet::from_settings(&settings, store.clone()));
        let application = Application::build_with_fleet(settings, store.clone(), fleet)
            .await
            .map_err(|e| e.to_string())?;
        let address = format!("http://{}", application.local_addr());
        let stop = CancellationToken::new();
        let server = tokio::spawn(application.run_until_stopped(stop.clone()));
        Ok(Self {
            store,
            address,
            stop,
            server: Some(server),
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Delays {
    /// Milliseconds, sorted.
    across: Vec<f64>,
    same: Vec<f64>,
    connect: Duration,
}

/// When each event's commit began, and on which replica.
type Origins = Arc<Mutex<HashMap<i64, (Instant, bool)>>>;

async fn event_delay() -> Result<Delays, String> {
    let database_url = postgres::fresh_database();
    let a = Replica::start(&database_url).await?;
    let b = Replica::start(&database_url).await?;
    let token = create_token(&database_url, "bench", Role::Admin).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .default_headers(bearer(&token))
        .build()
        .map_err(|e| e.to_string())?;

    // The last id the clients wait for, once known.
    let (last_tx, last) = watch::channel(i64::MAX);
    let (connected_tx, mut connected) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    let connecting = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(follow(
                client.clone(),
                format!("{}/api/events", b.address),
                connected_tx.clone(),
                last.clone(),
            ))
        })
        .collect();
    drop(connected_tx);
    for _ in 0..CLIENTS {
        tokio::time::timeout(CONNECT_DEADLINE, connected.recv())
            .await
            .map_err(|_| format!("{CLIENTS} clients did not connect within {CONNECT_DEADLINE:?}"))?
            .ok_or("a client failed to connect")?;
    }
    let connect = connecting.elapsed();

    let deployment = a
        .store
        .insert_deployment(&NewDeployment {
            service: "elsewhere",
            from_version: None,
            to_version: "v2",
            trigger: Trigger::Api,
            requested_by: Some("bench"),
            state: "{}",
        })
        .await
        .map_err(|e| e.to_string())?;
    let origins: Origins = Arc::default();
    let mut newest = 0;
    for (writer, on_a) in [(&a.store, true), (&b.store, false)] {
        for _ in 0..EVENTS {
            let began = Instant::now();
            writer
                .record_control(deployment, ControlAction::Pause, Some("bench"))
                .await
                .map_err(|e| e.to_string())?;
            newest = writer
                .last_event_id(deployment)
                .await
                .map_err(|e| e.to_string())?;
            origins.lock().unwrap().insert(newest, (began, on_a));
            tokio::time::sleep(PACE).await;
        }
    }
    last_tx.send(newest).map_err(|e| e.to_string())?;

    let origins = origins.lock().unwrap().clone();
    let mut across = Vec::new();
    let mut same = Vec::new();
    for client in clients {
        let received = client.await.map_err(|e| e.to_string())??;
        let ids: Vec<i64> = received.iter().map(|(id, _)| *id).collect();
        let expected: Vec<i64> = {
            let mut ids: Vec<i64> = origins.keys().copied().collect();
            ids.sort_unstable();
            ids
        };
        if ids
            .iter()
            .filter(|id| origins.contains_key(id))
            .copied()
            .collect::<Vec<_>>()
            != expected
        {
            return Err(format!(
                "a client did not receive every event once, in order: {ids:?}"
            ));
        }
        for (id, at) in received {
            if let Some((began, on_a)) = origins.get(&id) {
                let delay = ms(at.saturating_duration_since(*began));
                if *on_a {
                    across.push(delay);
                } else {
                    same.push(delay);
                }
            }
        }
    }
    across.sort_by(f64::total_cmp);
    same.sort_by(f64::total_cmp);
    a.stop().await;
    b.stop().await;
    Ok(Delays {
        across,
        same,
        connect,
    })
}

/// One browser on `url`: says when connected (the first event, the fleet's state, has come),
/// then notes each deployment event's id and arrival until the id `last` names has come.
async fn follow(
    client: reqwest::Client,
    url: String,
    connected: tokio::sync::mpsc::Sender<()>,
    mut last: watch::Receiver<i64>,
) -> Result<Vec<(i64, Instant)>, String> {
    let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("{url}: {}", response.status()));
    }
    let mut events = response.bytes_stream().eventsource();
    let mut received = Vec::new();
    let mut announced = false;
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE + RECEIVE_DEADLINE;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            changed = last.changed() => {
                if changed.is_err() {
                    return Err("the benchmark ended first".into());
                }
                // The last id may have come before the benchmark said which it is.
                if received.last().is_some_and(|(id, _)| *id >= *last.borrow()) {
                    return Ok(received);
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("a client had {} events at its deadline", received.len()));
            }
        };
        let at = Instant::now();
        let event = event
            .ok_or("the stream ended")?
            .map_err(|e| e.to_string())?;
        if !announced {
            announced = true;
            let _ = connected.send(()).await;
        }
        if event.event != "deployment" {
            continue;
        }
        let id: i64 = event.id.parse().map_err(|_| "an event without an id")?;
        received.push((id, at));
        if id >= *last.borrow() {
            return Ok(received);
        }
    }
}

/// How long one event-writing transaction takes on SQLite and on PostgreSQL, in ms, sorted.
async fn store_writes() -> Result<(Vec<f64>, Vec<f64>), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sqlite = format!("sqlite://{}", dir.path().join("baton.db").display());
    let mut figures = Vec::new();
    for url in [sqlite, postgres::fresh_database()] {
        let store = Store::connect(&url).await.map_err(|e| e.to_string())?;
        let id = store
            .insert_deployment(&NewDeployment {
                service: "api",
                from_version: None,
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "{}",
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut durations = Vec::new();
        for _ in 0..WRITES {
            let began = Instant::now();
            store
                .record_control(id, ControlAction::Pause, None)
                .await
                .map_err(|e| e.to_string())?;
            durations.push(ms(began.elapsed()));
        }
        durations.sort_by(f64::total_cmp);
        figures.push(durations);
        store.close().await;
    }
    let postgres = figures.pop().unwrap_or_default();
    let sqlite = figures.pop().unwrap_or_default();
    Ok((sqlite, postgres))
}

struct RolloutRun {
    wall_ms: f64,
    between_steps_ms: f64,
}

/// Rolls the fleet out [`ROLLOUTS`] times with Baton on `database_url` (`None`: SQLite).
async fn rollouts(database_url: Option<String>) -> Result<Vec<RolloutRun>, String> {
    // Every process it starts (HAProxy, the backends) is killed when `fleet` is dropped.
    let fleet = spawn_fleet(FleetOptions {
        backends: BACKENDS,
        start_timeout: Duration::from_secs(20),
        database_url,
        ..FleetOptions::default()
    })
    .await;
    let mut runs = Vec::new();
    for run in 0..ROLLOUTS {
        let version = format!("v{}", run + 2);
        let queued: Value = fleet
            .client
            .post(format!("{}/api/services/web/deployments", fleet.baton))
            .json(&serde_json::json!({ "version": version }))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let id = queued["id"]
            .as_i64()
            .ok_or_else(|| format!("no rollout was queued: {queued}"))?;
        let began = Instant::now();
        let deployment = loop {
            let deployment: Value = fleet
                .client
                .get(format!("{}/api/deployments/{id}", fleet.baton))
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
                return Err(format!(
                    "rollout {id} did not end within {ROLLOUT_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if deployment["status"] != "succeeded" {
            return Err(format!(
                "rollout to {version} did not succeed: {deployment:#}"
            ));
        }
        let number = |value: &Value, key: &str| {
            value[key]
                .as_i64()
                .ok_or_else(|| format!("the rollout has no `{key}`: {value}"))
        };
        let wall = number(&deployment, "finished_at")? - number(&deployment, "started_at")?;
        let mut in_steps = 0;
        for step in deployment["steps"].as_array().into_iter().flatten() {
            in_steps += number(step, "finished_at")? - number(step, "started_at")?;
        }
        runs.push(RolloutRun {
            wall_ms: wall as f64,
            between_steps_ms: (wall - in_steps) as f64,
        });
    }
    drop(fleet);
    Ok(runs)
}

/// The `p`th percentile of sorted `values` (0 when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}
