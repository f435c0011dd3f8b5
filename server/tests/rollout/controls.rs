//! Pause, resume, abort and roll back, on a real rollout through a real HAProxy.

use serde_json::Value;

use crate::support::fleet::{Fleet, FleetOptions, spawn_fleet};

async fn post(fleet: &Fleet, path: &str) -> (u16, Value) {
    let response = fleet
        .client
        .post(format!("{}{path}", fleet.baton))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

/// Whether a step of the rollout has begun on `backend` (in the forward direction).
fn began(deployment: &Value, backend: &str, step: &str) -> bool {
    deployment["steps"].as_array().is_some_and(|steps| {
        steps
            .iter()
            .any(|s| s["backend"] == backend && s["step"] == step && s["rollback"] == false)
    })
}

/// Every backend's version and its status on the (single) HAProxy node.
async fn backends(fleet: &Fleet) -> Vec<(String, String)> {
    let services = fleet.get("/api/services").await.unwrap();
    services[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["version"].as_str().unwrap().to_owned(),
                b["load_balancer"][0]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_stops_after_the_current_backend_and_resume_finishes_it() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_until(id, "web1 draining", |d| began(d, "web1", "drain"))
        .await;
    let (status, body) = post(&fleet, &format!("/api/deployments/{id}/pause")).await;
    assert_eq!((status, body["requested"].as_str()), (202, Some("pause")));

    // That a paused rollout then does nothing, however long, is shown on a paused clock by the
    // executor's tests.
    let paused = fleet
        .wait_until(id, "paused", |d| d["status"] == "paused")
        .await;
    assert!(began(&paused, "web1", "confirm_up"), "web1 was finished");
    assert!(!began(&paused, "web2", "drain"), "web2 was not touched");
    assert_eq!(
        backends(&fleet).await,
        [("v2", "UP"), ("v1", "UP"), ("v1", "UP")].map(|(v, s)| (v.into(), s.into())),
        "while paused every backend serves"
    );

    let (status, _) = post(&fleet, &format!("/api/deployments/{id}/pause")).await;
    assert_eq!(status, 409, "already paused");
    let (status, _) = post(&fleet, &format!("/api/deployments/{id}/resume")).await;
    assert_eq!(status, 202);
    let done = fleet
        .wait_until(id, "the end", |d| {
            !matches!(d["status"].as_str(), Some("paused" | "running"))
        })
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(
        backends(&fleet)
            .await
            .iter()
            .all(|(v, s)| v == "v2" && s == "UP")
    );

    let (status, body) = post(&fleet, &format!("/api/deployments/{id}/resume")).await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("already ended"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_rollout_leaves_every_backend_serving() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    // slowstart: web2's new version takes 3 s to listen, so the abort lands mid-procedure.
    let (_, queued) = fleet.deploy("v2-slowstart").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_until(id, "web2 starting", |d| began(d, "web2", "wait_healthy"))
        .await;
    let (status, _) = post(&fleet, &format!("/api/deployments/{id}/abort")).await;
    assert_eq!(status, 202);

    let done = fleet.finished(id).await;
    assert_eq!(done["status"], "cancelled", "{done:#}");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.starts_with("aborted by an operator"), "{reason}");
    assert!(!began(&done, "web3", "drain"), "web3 was never touched");
    assert_eq!(
        backends(&fleet).await,
        [("v2-slowstart", "UP"), ("v1", "UP"), ("v1", "UP")].map(|(v, s)| (v.into(), s.into())),
        "web1 keeps the new version, web2 is back on the old one, all in rotation"
    );
    assert!(fleet.through_haproxy().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_queued_rollout_cancels_it_before_it_starts() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        ..FleetOptions::default()
    })
    .await;
    let (_, first) = fleet.deploy("v2").await;
    let (_, second) = fleet.deploy("v3").await;
    assert_eq!(second["status"], "queued");
    let second = second["id"].as_i64().unwrap();
    let (status, _) = post(&fleet, &format!("/api/deployments/{second}/pause")).await;
    assert_eq!(status, 409, "only abort applies to a queued rollout");
    let (status, _) = post(&fleet, &format!("/api/deployments/{second}/abort")).await;
    assert_eq!(status, 202);
    let cancelled = fleet
        .get(&format!("/api/deployments/{second}"))
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["steps"].as_array().unwrap().is_empty());

    // That the worker never takes the cancelled one up, however long it waits, is shown on a
    // paused clock by the executor's tests.
    let first = fleet.finished(first["id"].as_i64().unwrap()).await;
    assert_eq!(first["status"], "succeeded");
    assert!(backends(&fleet).await.iter().all(|(v, _)| v == "v2"));
    let cancelled = fleet
        .get(&format!("/api/deployments/{second}"))
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_deploys_the_previous_good_version() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        ..FleetOptions::default()
    })
    .await;
    let (status, body) = post(&fleet, "/api/services/web/rollback").await;
    assert_eq!(
        status, 409,
        "nothing deployed yet beyond the initial version: {body}"
    );

    let (_, queued) = fleet.deploy("v2").await;
    fleet.finished(queued["id"].as_i64().unwrap()).await;
    let services = fleet.get("/api/services").await.unwrap();
    assert_eq!(services[0]["rollback_version"], "v1");

    let (status, queued) = post(&fleet, "/api/services/web/rollback").await;
    assert_eq!(status, 202, "{queued}");
    let rollback = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(rollback["status"], "succeeded");
    assert_eq!(rollback["trigger"], "rollback");
    assert_eq!(
        (
            rollback["from_version"].as_str(),
            rollback["to_version"].as_str()
        ),
        (Some("v2"), Some("v1"))
    );
    assert!(
        backends(&fleet)
            .await
            .iter()
            .all(|(v, s)| v == "v1" && s == "UP")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_of_unknown_rollouts_or_actions_get_a_reason() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 1,
        ..FleetOptions::default()
    })
    .await;
    let (status, body) = post(&fleet, "/api/deployments/42/pause").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no deployment has id 42");
    let (status, body) = post(&fleet, "/api/deployments/42/explode").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected pause, resume, abort, approve or promote")
    );
    let (status, _) = post(&fleet, "/api/services/nope/rollback").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_asked_for_just_before_baton_is_killed_still_takes_effect_after_the_restart() {
    let mut fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        backend_env: &[("DEMO_START_DELAY_MS", "1500")],
        ..FleetOptions::default()
    })
    .await;
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    // web1's new process takes 1.5 s to answer: the worker is inside wait_healthy and takes
    // no request until that step ends.
    fleet
        .wait_until(id, "web1 waiting for health", |d| {
            began(d, "web1", "wait_healthy")
        })
        .await;
    let (status, _) = post(&fleet, &format!("/api/deployments/{id}/pause")).await;
    assert_eq!(status, 202);
    fleet.kill_baton();
    fleet.restart_baton().await;

    let shown = fleet.get(&format!("/api/deployments/{id}")).await.unwrap();
    assert!(
        shown["status"] == "paused" || shown["pending"]["action"] == "pause",
        "after the restart the pause is still shown as asked for: {shown:#}"
    );
    let paused = fleet
        .wait_until(id, "paused", |d| d["status"] == "paused")
        .await;
    assert_eq!(paused["pending"], Value::Null, "{paused:#}");
    assert!(began(&paused, "web1", "confirm_up"), "web1 was finished");
    assert!(!began(&paused, "web2", "drain"), "web2 was not touched");
    assert_eq!(
        backends(&fleet).await,
        [("v2", "UP"), ("v1", "UP"), ("v1", "UP")].map(|(v, s)| (v.to_owned(), s.to_owned())),
    );
}
