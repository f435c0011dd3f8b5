//! `baton-demo-app`: the small HTTP backend that Baton's demo fleet runs.
//!
//! It listens on `127.0.0.1:$BATON_PORT` (`BATON_PORT` required; `DEMO_BIND` sets another
//! address, such as `0.0.0.0` on a host HAProxy reaches over the network) and serves:
//! - `GET /alive`: 200 `ok` (the health check);
//! - `GET /`: 200 `"{version} {backend}\n"`, from `BATON_VERSION` and `BATON_BACKEND`;
//! - `GET /slow?ms=N`: the same answer after N milliseconds (a request in flight to drain).
//!
//! To show what Baton does when a rollout goes wrong, it can misbehave. Each switch is set
//! either by an environment variable or by deploying a version whose name contains a word:
//!
//! | environment              | version contains         | behaviour                                   |
//! |--------------------------|--------------------------|---------------------------------------------|
//! | `DEMO_CRASH=1`           | `crash`                  | exits with status 3 at start                |
//! | `DEMO_START_DELAY_MS=N`  | `slowstart`              | waits N ms (default 3000) before listening  |
//! | `DEMO_NEVER_HEALTHY=1`   | `unhealthy`              | `/alive` answers 503 forever                |
//! | `DEMO_SLOW_MS=N`         | `slow` (not `slowstart`) | every `/` takes N ms (default 500)          |
//! | `DEMO_FAIL_EVERY=N`      | `flaky`                  | every Nth `/` (default 3rd) answers 500     |
//!
//! So deploying `v2-crash` shows a failed start, `v3-unhealthy` a failed health check, and
//! `v4-flaky` a version that passes its health check and fails users (the soak watch's case).
//!
//! On SIGTERM or SIGINT it stops accepting connections, lets requests in flight finish, and
//! exits 0. It logs one line to stderr when it starts and when it stops.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use tokio::signal::unix::{SignalKind, signal};

const NAME: &str = "baton-demo-app";

#[derive(Debug)]
struct Demo {
    version: String,
    backend: String,
    never_healthy: bool,
    /// Delay of every `/` answer.
    slow: Option<Duration>,
    /// Every how many `/` answers one is a 500; `None`: none.
    fail_every: Option<u64>,
    /// `/` answers so far.
    answered: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{NAME}: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let port: u16 = match std::env::var("BATON_PORT") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("BATON_PORT={value:?} is not a port number"))?,
        Err(_) => return Err("BATON_PORT is not set: which port should I listen on?".into()),
    };
    let version = std::env::var("BATON_VERSION").unwrap_or_else(|_| "unversioned".into());
    let backend = std::env::var("BATON_BACKEND").unwrap_or_else(|_| "demo".into());
    let lower = version.to_ascii_lowercase();
    // `slowstart` must not also switch on `slow`.
    let without_slowstart = lower.replace("slowstart", "");

    if flag("DEMO_CRASH") || lower.contains("crash") {
        eprintln!("{NAME}: {backend} version {version} crashes on purpose (exit status 3)");
        std::process::exit(3);
    }
    let start_delay = millis("DEMO_START_DELAY_MS")?.or_else(|| {
        lower
            .contains("slowstart")
            .then_some(Duration::from_secs(3))
    });
    let slow = millis("DEMO_SLOW_MS")?.or_else(|| {
        without_slowstart
            .contains("slow")
            .then_some(Duration::from_millis(500))
    });
    let fail_every = match std::env::var("DEMO_FAIL_EVERY") {
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "DEMO_FAIL_EVERY={value:?} is not a positive number"
                ));
            }
        },
        Err(_) => lower.contains("flaky").then_some(3),
    };
    let demo = Arc::new(Demo {
        never_healthy: flag("DEMO_NEVER_HEALTHY") || lower.contains("unhealthy"),
        slow,
        fail_every,
        answered: AtomicU64::new(0),
        version,
        backend,
    });

    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut stop_requested = Box::pin(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    });

    if let Some(delay) = start_delay {
        eprintln!(
            "{NAME}: {} version {} waits {delay:?} before listening",
            demo.backend, demo.version
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            signal = &mut stop_requested => {
                eprintln!("{NAME}: {} version {} stopping on {signal} before it listened", demo.backend, demo.version);
                return Ok(());
            }
        }
    }

    let ip: IpAddr = match std::env::var("DEMO_BIND") {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("DEMO_BIND={value:?} is not an IP address"))?,
        Err(_) => Ipv4Addr::LOCALHOST.into(),
    };
    let address = SocketAddr::new(ip, port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    eprintln!(
        "{NAME}: {} version {} listening on http://{address} (never healthy: {}, slow: {:?}, a 500 every: {:?})",
        demo.backend, demo.version, demo.never_healthy, demo.slow, demo.fail_every
    );

    let app = Router::new()
        .route("/", get(root))
        .route("/alive", get(alive))
        .route("/slow", get(slow_answer))
        .with_state(demo.clone());
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let signal = stop_requested.await;
            eprintln!(
                "{NAME}: {} version {} got {signal}: finishing requests in flight",
                demo.backend, demo.version
            );
            let _ = signal_tx.send(signal);
        })
        .await
        .map_err(|error| format!("serving failed: {error}"))?;
    let signal = signal_rx.await.unwrap_or("a signal");
    eprintln!("{NAME}: stopped on {signal}");
    Ok(())
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| matches!(value.trim(), "1" | "true" | "yes"))
}

fn millis(name: &str) -> Result<Option<Duration>, String> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| format!("{name}={value:?} is not a number of milliseconds")),
        Err(_) => Ok(None),
    }
}

fn answer(demo: &Demo) -> String {
    format!("{} {}\n", demo.version, demo.backend)
}

async fn root(State(demo): State<Arc<Demo>>) -> (StatusCode, String) {
    if let Some(delay) = demo.slow {
        tokio::time::sleep(delay).await;
    }
    let answered = demo.answered.fetch_add(1, Ordering::Relaxed) + 1;
    if demo.fail_every.is_some_and(|every| answered % every == 0) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} {} fails on purpose\n", demo.version, demo.backend),
        );
    }
    (StatusCode::OK, answer(&demo))
}

async fn alive(State(demo): State<Arc<Demo>>) -> (StatusCode, &'static str) {
    if demo.never_healthy {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy on purpose\n")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn slow_answer(
    State(demo): State<Arc<Demo>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<String, (StatusCode, String)> {
    let ms: u64 = match query.get("ms") {
        None => 1000,
        Some(value) => value.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("ms={value:?} is not a number of milliseconds\n"),
            )
        })?,
    };
    tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    Ok(answer(&demo))
}
