//! The surge strategy through a real HAProxy (`retries 0`) under continuous load: the new
//! version of each backend is UP beside the old one before the old one leaves, so the backend
//! never has fewer UP servers than the service has backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_server::drivers::LoadBalancer;
use serde_json::Value;

use crate::support::fleet::{
    Fleet, FleetOptions, assert_no_failures, capacity_summary, capacity_trace, load, spawn_fleet,
    steps_of,
};
use crate::support::haproxy::Checks;
use crate::support::process::process_alive;

const OVERLAP: Duration = Duration::from_secs(1);

/// Surge, with HAProxy's checks given a second to answer: without `timeout check` a check's
/// timeout is its `inter` (100 ms here), which a loaded test machine sometimes misses, and one
/// missed check shows a server `UP 1/2`, which the capacity trace does not count as UP.
fn surge_options() -> FleetOptions {
    FleetOptions {
        surge: Some(OVERLAP),
        checks: Checks {
            timeout: Some(Duration::from_secs(1)),
            ..Checks::FAST
        },
        ..FleetOptions::default()
    }
}

/// The HAProxy servers of `web` and their states, sorted by name: "web1:surge UP".
async fn servers(fleet: &Fleet) -> Vec<String> {
    let mut servers: Vec<String> = fleet
        .haproxy_servers()
        .await
        .into_iter()
        .map(|s| format!("{} {}", s.server, s.status))
        .collect();
    servers.sort();
    servers
}

/// The time a step of `backend` began or ended (`which` is "started_at" or "finished_at").
fn step_time(deployment: &Value, backend: &str, step: &str, which: &str) -> i64 {
    deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backend"] == backend && s["step"] == step && s["rollback"] == false)
        .and_then(|s| s[which].as_i64())
        .unwrap_or_else(|| panic!("no {which} for {backend} {step}: {deployment:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_keeps_every_backend_up_and_retires_the_old_processes_after_the_overlap() {
    let fleet = spawn_fleet(surge_options()).await;
    let old: Vec<i32> = ["web1", "web2", "web3"]
        .iter()
        .map(|b| {
            fleet
                .recorded_process(b)
                .expect("v1 runs on each address")
                .0
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let trace = capacity_trace(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_i64().unwrap();

    // While web1's old instance is kept for the overlap, the fleet view shows both.
    fleet
        .wait_for_step(id, "web1's overlap", |s| {
            s["backend"] == "web1" && s["step"] == "overlap" && s["outcome"].is_null()
        })
        .await;
    let services = fleet.get("/api/services").await.unwrap();
    let web1 = &services[0]["backends"][0];
    assert_eq!(web1["version"], "v2", "{web1:#}");
    assert_eq!(web1["load_balancer"][0]["status"], "UP", "{web1:#}");
    assert_eq!(web1["overlap"]["server"], "web1", "{web1:#}");
    assert_eq!(
        web1["overlap"]["version"], "v1",
        "the old instance's version: {web1:#}"
    );
    assert_eq!(
        web1["overlap"]["load_balancer"][0]["status"], "DRAIN",
        "{web1:#}"
    );
    let html = fleet
        .client
        .get(format!("{}/", fleet.baton))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("data-testid=\"overlap\"")
            && html.contains("DRAIN")
            && html.contains("<span class=\"version\">v1</span> on "),
        "the services page shows web1's old instance beside the new one: {html}"
    );

    let deployment = fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    let (min, changes) = capacity_summary(&trace.await.unwrap());

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_no_failures(sent, &failures);
    assert!(
        min >= 3,
        "HAProxy had only {min} UP servers for 3 backends at some point: {changes}"
    );
    eprintln!("capacity during a surge of 3 backends: {changes}");
    let mut expected = vec!["- prepare ok".to_string()];
    for backend in ["web1", "web2", "web3"] {
        expected.extend(
            [
                "check_capacity",
                "surge_start",
                "surge_healthy",
                "surge_add",
                "surge_enable",
                "drain",
                "wait_sessions",
                "overlap",
                "retire",
            ]
            .map(|step| format!("{backend} {step} ok")),
        );
    }
    assert_eq!(steps_of(&deployment, false), expected);

    // Each old process ran on, drained, for the overlap, and is gone now.
    for (backend, pid) in ["web1", "web2", "web3"].iter().zip(&old) {
        let kept = step_time(&deployment, backend, "retire", "started_at")
            - step_time(&deployment, backend, "drain", "started_at");
        assert!(
            kept >= OVERLAP.as_millis() as i64,
            "{backend}'s old instance was kept {kept} ms, less than the overlap"
        );
        assert!(
            !process_alive(*pid),
            "{backend}'s v1 (pid {pid}) still runs"
        );
        assert_eq!(fleet.recorded_process(backend), None, "{backend}");
        let (_, version) = fleet
            .recorded_process(&format!("{backend}@surge"))
            .expect("the new instance is recorded");
        assert_eq!(version, "v2");
    }
    assert_eq!(
        servers(&fleet).await,
        ["web1:surge UP", "web2:surge UP", "web3:surge UP"]
    );
    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert!(backend["overlap"].is_null(), "{backend:#}");
        assert!(
            backend["address"] != Value::Null
                && fleet.config.toml().contains(&format!(
                    "surge_address = \"{}\"",
                    backend["address"].as_str().unwrap()
                )),
            "the current address is the surge address: {backend:#}"
        );
    }

    // The next surge goes back to the first addresses.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let trace = capacity_trace(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v3").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    let (min, changes) = capacity_summary(&trace.await.unwrap());
    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_no_failures(sent, &failures);
    assert!(min >= 3, "{changes}");
    assert_eq!(servers(&fleet).await, ["web1 UP", "web2 UP", "web3 UP"]);
    for backend in ["web1", "web2", "web3"] {
        assert_eq!(fleet.recorded_process(backend).unwrap().1, "v3");
        assert_eq!(fleet.recorded_process(&format!("{backend}@surge")), None);
    }
    for _ in 0..6 {
        assert!(fleet.through_haproxy().await.unwrap().starts_with("v3 "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_to_a_version_that_never_gets_healthy_leaves_the_old_ones_serving_and_removes_its_server()
 {
    let fleet = spawn_fleet(FleetOptions {
        start_timeout: Duration::from_secs(2),
        ..surge_options()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let trace = capacity_trace(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2-unhealthy").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    let (min, changes) = capacity_summary(&trace.await.unwrap());

    assert_eq!(deployment["status"], "rolled_back", "{deployment:#}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("surge_healthy failed on web1: not healthy within the start timeout"),
        "{reason}"
    );
    assert_eq!(steps_of(&deployment, true), ["web1 discard ok"]);
    assert_no_failures(sent, &failures);
    assert!(min >= 3, "{changes}");
    assert_eq!(servers(&fleet).await, ["web1 UP", "web2 UP", "web3 UP"]);
    assert_eq!(
        fleet.recorded_process("web1@surge"),
        None,
        "the new one stopped"
    );
    for backend in ["web1", "web2", "web3"] {
        assert_eq!(fleet.recorded_process(backend).unwrap().1, "v1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baton_killed_during_the_overlap_resumes_on_the_instance_it_recorded_as_current() {
    let mut fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        backends: 2,
        ..surge_options()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let trace = capacity_trace(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_for_step(id, "web1's overlap", |s| {
            s["backend"] == "web1" && s["step"] == "overlap" && s["outcome"].is_null()
        })
        .await;
    let new = fleet.recorded_process("web1@surge").unwrap().0;
    fleet.kill_baton();
    fleet.restart_baton().await;
    let deployment = fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    let (min, changes) = capacity_summary(&trace.await.unwrap());

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_no_failures(sent, &failures);
    assert!(min >= 2, "{changes}");
    assert_eq!(
        fleet.recorded_process("web1@surge").unwrap().0,
        new,
        "the new instance was adopted, not started again"
    );
    assert_eq!(servers(&fleet).await, ["web1:surge UP", "web2:surge UP"]);
    let services = fleet.get("/api/services").await.unwrap();
    for backend in services[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["version"], "v2", "{backend:#}");
        assert_eq!(backend["load_balancer"][0]["status"], "UP", "{backend:#}");
    }

    // Started again between rollouts, Baton adopts the instances on the surge addresses
    // instead of starting the version again on the first ones.
    fleet.kill_baton();
    fleet.restart_baton().await;
    fleet.wait_all_up(2).await;
    assert_eq!(fleet.recorded_process("web1@surge").unwrap().0, new);
    assert_eq!(
        fleet.recorded_process("web1"),
        None,
        "nothing started on web1's address"
    );
    assert_eq!(fleet.recorded_process("web2"), None);
}

/// The figure a surge is compared with: a rolling rollout takes each backend out before its
/// replacement exists, so the backend runs one server short during every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_rollout_runs_one_server_short_while_each_backend_is_replaced() {
    let fleet = spawn_fleet(FleetOptions {
        checks: surge_options().checks,
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let trace = capacity_trace(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (min, changes) = capacity_summary(&trace.await.unwrap());
    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    eprintln!("capacity during a rolling rollout of 3 backends: {changes}");
    assert_eq!(min, 2, "{changes}");
}

/// HAProxy forgets the servers a surge added when it restarts: Baton adds each backend's
/// current server back by itself, and the service serves the new version again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_haproxy_restarts_baton_puts_the_surged_servers_back() {
    let mut fleet = spawn_fleet(surge_options()).await;
    let (_, queued) = fleet.deploy("v2").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_eq!(
        servers(&fleet).await,
        ["web1:surge UP", "web2:surge UP", "web3:surge UP"]
    );

    fleet.restart_haproxy();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        seen = match fleet.haproxy().servers("web").await {
            Ok(_) => servers(&fleet).await,
            // HAProxy is still starting.
            Err(_) => Vec::new(),
        };
        if seen == ["web1:surge UP", "web2:surge UP", "web3:surge UP"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        ["web1:surge UP", "web2:surge UP", "web3:surge UP"],
        "the configured servers (at the addresses nothing listens on) are taken out"
    );
    for _ in 0..6 {
        let answer = fleet.through_haproxy().await.unwrap();
        assert!(answer.starts_with("v2 "), "{answer}");
    }
}
