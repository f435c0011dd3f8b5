//! Two Baton replicas on one PostgreSQL database, in front of a real HAProxy and demo-app
//! backends under continuous load: the leader killed, frozen, or its database restarted in the
//! middle of a rollout, and two replicas started at once on an empty database.

mod database;
mod takeover;

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;

use support::fleet::{Fleet, FleetOptions};

/// The replicas' lease in these tests: short, so takeovers are quick to wait for, and long
/// enough for a loaded test machine to renew it in time.
const LEASE: Duration = Duration::from_secs(2);

/// Three backends whose every start takes 1.5 s, so a rollout is surely still in web1's
/// `wait_healthy` when the test acts.
fn slow_starts() -> FleetOptions {
    FleetOptions {
        backend_env: &[("DEMO_START_DELAY_MS", "1500")],
        ..FleetOptions::default()
    }
}

/// Waits until the rollout is in web1's `wait_healthy` (web1 is out of rotation, its new version
/// starting).
async fn wait_for_web1_starting(fleet: &Fleet, id: i64) -> Value {
    fleet
        .wait_for_step(id, "web1 wait_healthy", |s| {
            s["backend"] == "web1" && s["step"] == "wait_healthy" && s["outcome"].is_null()
        })
        .await
}

/// How often each backend's process was started at v1 and v2, and stopped, by its own log: a
/// backend restarted twice shows a count above 1.
fn starts_and_stops(fleet: &Fleet, backend: &str) -> (usize, usize, usize) {
    let log = std::fs::read_to_string(fleet.state_dir().join("web").join(format!("{backend}.log")))
        .unwrap_or_default();
    let count = |what: &str| log.matches(what).count();
    (
        count("[baton] starting version v1 "),
        count(" got SIGTERM"),
        count("[baton] starting version v2 "),
    )
}

/// Each backend was started once at v1 (before the rollout), stopped once and started once at
/// v2, whichever replica did it.
fn assert_each_backend_replaced_once(fleet: &Fleet) {
    for backend in ["web1", "web2", "web3"] {
        assert_eq!(
            starts_and_stops(fleet, backend),
            (1, 1, 1),
            "{backend} was not started, stopped and started again exactly once"
        );
    }
}
