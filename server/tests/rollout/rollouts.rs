//! What a user of Baton notices: versions change, nothing fails, failures roll back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_server::auth::Role;
use serde_json::Value;

use crate::support::fleet::{FleetOptions, load, spawn_fleet, steps_of};
use crate::support::haproxy::Checks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rollout_replaces_every_backend_without_one_failed_request() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    assert!(fleet.through_haproxy().await.unwrap().starts_with("v1 "));

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_eq!(deployment["from_version"], "v1");
    assert_eq!(deployment["to_version"], "v2");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 20, "the load generator sent only {sent} requests");

    let steps = steps_of(&deployment, false);
    let expected_for = |backend: &str| {
        [
            "check_capacity",
            "drain",
            "wait_sessions",
            "maint",
            "stop",
            "start",
            "wait_healthy",
            "lb_check",
            "enable",
            "confirm_up",
        ]
        .map(|step| format!("{backend} {step} ok"))
    };
    let mut expected = vec!["- prepare ok".to_string()];
    for backend in ["web1", "web2", "web3"] {
        expected.extend(expected_for(backend));
    }
    assert_eq!(steps, expected);

    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["version"], "v2", "{backend}");
        assert_eq!(backend["load_balancer"][0]["status"], "UP", "{backend}");
    }
    for _ in 0..6 {
        assert!(fleet.through_haproxy().await.unwrap().starts_with("v2 "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_becomes_healthy_is_rolled_back_and_every_backend_serves_the_old_one()
{
    let fleet = spawn_fleet(FleetOptions {
        start_timeout: Duration::from_secs(2),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2-unhealthy").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "rolled_back", "{deployment:#}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("wait_healthy failed on web1: not healthy within the start timeout of 2s"),
        "{reason}"
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        !steps_of(&deployment, false)
            .iter()
            .any(|s| s.starts_with("web2")),
        "web2 was never touched"
    );
    assert!(
        steps_of(&deployment, true).last().unwrap() == "web1 confirm_up ok",
        "{:?}",
        steps_of(&deployment, true)
    );

    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["version"], "v1", "{backend}");
        assert_eq!(backend["load_balancer"][0]["status"], "UP", "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_rollout_that_fails_rolls_back_to_what_the_rollout_before_it_left() {
    let fleet = spawn_fleet(FleetOptions {
        start_timeout: Duration::from_secs(2),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, first) = fleet.deploy("v2").await;
    let (status, second) = fleet.deploy("v3-unhealthy").await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(
        second["status"], "queued",
        "the second waits behind the first"
    );
    let queued = fleet
        .get(&format!("/api/deployments/{}", second["id"]))
        .await
        .unwrap();
    assert!(
        queued["from_version"].is_null(),
        "what it starts from is not known while another rollout is ahead: {queued:#}"
    );

    let first = fleet.finished(first["id"].as_i64().unwrap()).await;
    let second = fleet.finished(second["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(first["status"], "succeeded", "{first:#}");
    assert_eq!(second["status"], "rolled_back", "{second:#}");
    assert_eq!(
        second["from_version"], "v2",
        "it started from what the first left"
    );
    let rollback = steps_of(&second, true);
    assert_eq!(
        rollback.last().unwrap(),
        "web1 confirm_up ok",
        "{rollback:?}"
    );
    let restarted: Vec<&Value> = second["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["rollback"] == true && s["step"] == "start")
        .collect();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0]["version"], "v2", "web1 went back to v2");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["version"], "v2", "{backend}");
        assert_eq!(backend["load_balancer"][0]["status"], "UP", "{backend}");
    }
    assert_eq!(
        services[0]["rollback_version"], "v1",
        "a rollback from v2 goes to v1: {:#}",
        services[0]
    );
    for _ in 0..6 {
        assert!(fleet.through_haproxy().await.unwrap().starts_with("v2 "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_crashes_at_start_fails_fast_and_is_rolled_back() {
    let fleet = spawn_fleet(FleetOptions {
        start_timeout: Duration::from_secs(20),
        ..FleetOptions::default()
    })
    .await;
    let (_, queued) = fleet.deploy("v2-crash").await;
    let started = std::time::Instant::now();
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(deployment["status"], "rolled_back", "{deployment:#}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason.contains("stopped before it became healthy"),
        "{reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a crash is noticed long before the 20 s start timeout"
    );
    assert!(fleet.through_haproxy().await.unwrap().starts_with("v1 "));

    // What the crashed version printed is kept with its failed step, for deployers and admins.
    let id = deployment["id"].as_i64().unwrap();
    let logs = deployment["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1, "{logs:#?}");
    assert_eq!(logs[0]["backend"], "web1");
    let said = |log: &Value, text: &str| {
        log["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|line| line.as_str().unwrap().contains(text))
    };
    assert!(
        said(&logs[0], "web1 version v2-crash crashes on purpose"),
        "{logs:#?}"
    );
    assert!(logs[0]["source"].as_str().unwrap().ends_with("/web1.log"));
    // A viewer learns that there is a log and how long it is, not what it says.
    let viewer = fleet.client_as("watcher", Role::Viewer).await;
    let url = |path: &str| format!("{}{path}", fleet.baton);
    let seen: Value = viewer
        .get(url(&format!("/api/deployments/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let withheld = &seen["logs"][0];
    assert_eq!(withheld["withheld"], true, "{withheld}");
    assert_eq!(withheld["lines"], serde_json::json!([]));
    assert_eq!(withheld["line_count"], logs[0]["line_count"]);

    // The rollout page shows the same: the lines to the admin, that there is a log to a viewer.
    let page = |client: reqwest::Client| {
        let url = url(&format!("/deployments/{id}"));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let html = page(fleet.client.clone()).await;
    assert!(html.contains("data-testid=\"log-lines\""), "{html}");
    assert!(html.contains("crashes on purpose"), "{html}");
    let html = page(viewer.clone()).await;
    assert!(html.contains("data-testid=\"log-withheld\""), "{html}");
    assert!(
        !html.contains("crashes on purpose"),
        "a viewer read the log:\n{html}"
    );

    // The live tail: web1 now runs v1 again, and its log says so last.
    let live = fleet
        .get("/api/services/web/backends/web1/log?lines=3")
        .await
        .unwrap();
    let lines = live["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 3, "{live:#}");
    assert!(
        said(&live, "crashes on purpose") || said(&live, "v1"),
        "{live:#}"
    );
    for (path, status) in [
        ("/api/services/web/backends/web1/log", 403),
        ("/api/services/web/backends/nope/log", 403),
    ] {
        let answer = viewer.get(url(path)).send().await.unwrap();
        assert_eq!(answer.status(), status, "{path} as a viewer");
    }
    for (path, status, says) in [
        (
            "/api/services/web/backends/nope/log",
            404,
            "service web has no backend named",
        ),
        (
            "/api/services/web/backends/web1/log?lines=0",
            400,
            "lines=0 is out of range",
        ),
        (
            "/api/services/web/backends/web1/log?lines=x",
            400,
            "expected ?lines=N",
        ),
    ] {
        let answer = fleet.client.get(url(path)).send().await.unwrap();
        assert_eq!(answer.status(), status, "{path}");
        let body = answer.text().await.unwrap();
        assert!(body.contains(says), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_checked_with_fall_1_is_refused_before_anything_is_touched() {
    let fleet = spawn_fleet(FleetOptions {
        checks: Checks {
            downinter: None,
            fall: 1,
            ..Checks::FAST
        },
        ..FleetOptions::default()
    })
    .await;
    let (_, queued) = fleet.deploy("v2").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;

    assert_eq!(deployment["status"], "failed", "{deployment:#}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason.contains("web/web1 with `fall 1`") && reason.contains("set `fall 2` or more"),
        "{reason}"
    );
    let steps = steps_of(&deployment, false);
    assert_eq!(
        steps.last().map(String::as_str),
        Some("web1 check_capacity failed"),
        "{steps:?}"
    );
    assert!(
        !steps.iter().any(|s| s.contains("drain")),
        "nothing past the check ran: {steps:?}"
    );
    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["version"], "v1", "{backend}");
        assert_eq!(backend["load_balancer"][0]["status"], "UP", "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_reason() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        ..FleetOptions::default()
    })
    .await;
    let (status, body) = fleet.deploy("v2; rm -rf /").await;
    assert_eq!(status, 422);
    assert!(
        body["error"].as_str().unwrap().contains("invalid version"),
        "{body}"
    );

    let response = fleet
        .client
        .post(format!("{}/api/services/nope/deployments", fleet.baton))
        .json(&serde_json::json!({"version": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = fleet
        .client
        .post(format!("{}/api/services/web/deployments", fleet.baton))
        .header("content-type", "application/json")
        .body("{\"vers\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected a JSON body"),
        "{body}"
    );
    assert!(
        fleet.get("/api/deployments").await.unwrap()["deployments"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rollouts_requested_at_once_run_one_after_the_other() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        ..FleetOptions::default()
    })
    .await;
    let ((_, first), (_, second)) = tokio::join!(fleet.deploy("v2"), fleet.deploy("v3"));
    let (first, second) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );
    let a = fleet.finished(first).await;
    let b = fleet.finished(second).await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    let (a_end, b_start) = (
        a["finished_at"].as_i64().unwrap(),
        b["started_at"].as_i64().unwrap(),
    );
    let (earlier_end, later_start) = if first < second {
        (a_end, b_start)
    } else {
        (
            b["finished_at"].as_i64().unwrap(),
            a["started_at"].as_i64().unwrap(),
        )
    };
    assert!(
        later_start >= earlier_end,
        "the second rollout started before the first ended"
    );
    let last = if first < second { "v3" } else { "v2" };
    assert!(
        fleet
            .through_haproxy()
            .await
            .unwrap()
            .starts_with(&format!("{last} "))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_start_keeps_its_database_state_and_logs_to_batons_user() {
    use std::os::unix::fs::PermissionsExt;
    let fleet = spawn_fleet(FleetOptions {
        backends: 1,
        ..FleetOptions::default()
    })
    .await;
    let dir = fleet.dir.path();
    let state = fleet.state_dir();
    let expected = [
        (dir.join("baton.db"), 0o600),
        (dir.join("baton.db-wal"), 0o600),
        (dir.join("baton.db-shm"), 0o600),
        (state.clone(), 0o700),
        (state.join("web"), 0o700),
        (state.join("web").join("web1.log"), 0o600),
        (state.join("web").join("web1.json"), 0o600),
    ];
    for (path, mode) in expected {
        let found = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(found, mode, "{}: {found:o}", path.display());
    }
}
