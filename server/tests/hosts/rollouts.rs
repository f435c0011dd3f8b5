//! Rollouts of backends on other hosts, through real HAProxy and real OpenSSH servers: under
//! load with no failed request, a host out of reach when a rollout starts, a host cut in the
//! middle of one and repaired when it returns, and Baton killed in the middle of one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_server::drivers::ServerState;
use serde_json::Value;

use crate::support::fleet::{Fleet, FleetOptions, load, spawn_fleet, steps_of};
use crate::support::hosts::TestHosts;

fn on_hosts(hosts: &Arc<TestHosts>, per_host: usize) -> FleetOptions {
    FleetOptions {
        backends: per_host,
        hosts: Some(hosts.clone()),
        start_timeout: Duration::from_secs(10),
        ..FleetOptions::default()
    }
}

/// `/api/services`' backends of `web`.
async fn backends(fleet: &Fleet) -> Vec<Value> {
    fleet.get("/api/services").await.unwrap()[0]["backends"]
        .as_array()
        .unwrap()
        .clone()
}

/// HAProxy's view of each server: `(name, state)`.
async fn haproxy_states(fleet: &Fleet) -> Vec<(String, ServerState)> {
    fleet
        .haproxy_servers()
        .await
        .into_iter()
        .map(|server| (server.server, server.status))
        .collect()
}

/// Waits (at most `limit`) until `done` holds for `/api/services`' backends; returns them.
async fn wait_backends(
    fleet: &Fleet,
    limit: Duration,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let backends = backends(fleet).await;
        if done(&backends) {
            return backends;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {backends:#?}\nBaton's log:\n{}",
            fleet.baton_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_with_two_backends_each_roll_out_under_load_without_a_failed_request() {
    let hosts = Arc::new(TestHosts::start(3));
    let fleet = spawn_fleet(on_hosts(&hosts, 2)).await;

    // The fleet view groups them by host, each host reachable.
    let shown = backends(&fleet).await;
    let placed: Vec<(&str, &str, &str)> = shown
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap(),
                b["host"]["name"].as_str().unwrap(),
                b["host"]["reachable"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            ("web1", "app1", "reachable"),
            ("web2", "app1", "reachable"),
            ("web3", "app2", "reachable"),
            ("web4", "app2", "reachable"),
            ("web5", "app3", "reachable"),
            ("web6", "app3", "reachable"),
        ]
    );
    let before: Vec<i32> = (1..=6)
        .map(|i| fleet.hosted_process(&format!("web{i}")).unwrap().0)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let done = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    assert_eq!(
        done["status"],
        "succeeded",
        "{done:#}\n{}",
        fleet.baton_log()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(
        sent >= 50,
        "only {sent} requests went through during the rollout"
    );

    // Every backend runs v2 as a new process on its own host.
    for (i, old_pid) in before.into_iter().enumerate() {
        let backend = format!("web{}", i + 1);
        let (pid, version) = fleet.hosted_process(&backend).unwrap();
        assert_eq!(version, "v2", "{backend}");
        assert_ne!(pid, old_pid, "{backend} was not restarted");
        if let Some(namespace) = hosts.hosts()[i / 2].netns() {
            let inside = std::process::Command::new("ip")
                .args(["netns", "identify", &pid.to_string()])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&inside.stdout).trim(),
                namespace,
                "{backend} runs on its host"
            );
        }
    }
    // Nothing was left out of rotation.
    for (server, state) in haproxy_states(&fleet).await {
        assert!(
            matches!(state, ServerState::Up { changing: None }),
            "{server}: {state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_out_of_reach_when_a_rollout_starts_is_refused_before_anything_is_drained() {
    let hosts = Arc::new(TestHosts::start(2));
    let fleet = spawn_fleet(on_hosts(&hosts, 1)).await;
    hosts.cut(1);

    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let done = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("prepare failed") && reason.contains("host app2 is unreachable"),
        "{reason}"
    );
    assert_eq!(steps_of(&done, false), ["- prepare failed"]);
    assert!(steps_of(&done, true).is_empty());
    // web1 was never drained, and still runs v1.
    assert_eq!(fleet.hosted_process("web1").unwrap().1, "v1");
    let web1 = fleet
        .haproxy_servers()
        .await
        .into_iter()
        .find(|s| s.server == "web1")
        .unwrap();
    assert!(web1.is_up(), "{web1:?}");

    // The fleet view says which host and why.
    let shown = wait_backends(&fleet, Duration::from_secs(10), "app2 unreachable", |b| {
        b[1]["host"]["reachable"] == "unreachable"
    })
    .await;
    assert!(
        shown[1]["host"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("host app2 is unreachable")),
        "{shown:#?}"
    );
    assert_eq!(shown[0]["host"]["reachable"], "reachable");
    hosts.restore(1);
    wait_backends(
        &fleet,
        Duration::from_secs(20),
        "app2 reachable again",
        |b| b[1]["host"]["reachable"] == "reachable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_stages_the_version_on_every_host_and_one_failing_host_stops_the_rollout() {
    let hosts = Arc::new(TestHosts::start(2));
    let fleet = spawn_fleet(FleetOptions {
        // Run in the service's folder on the host; `refuse` beside it makes this host fail.
        prepare: Some(
            r#"echo "$BATON_SERVICE" > "staged-$BATON_VERSION"; [ ! -e ../refuse ] || { echo "no space left for $BATON_VERSION" >&2; exit 3; }"#,
        ),
        ..on_hosts(&hosts, 1)
    })
    .await;
    let (_, queued) = fleet.deploy("v2").await;
    let done = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    for host in hosts.hosts() {
        let staged = host.state_dir.join("web/staged-v2");
        assert_eq!(
            std::fs::read_to_string(&staged).unwrap(),
            "web\n",
            "{}",
            host.name
        );
    }

    std::fs::write(hosts.hosts()[1].state_dir.join("refuse"), "").unwrap();
    let (_, queued) = fleet.deploy("v3").await;
    let done = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("on host app2: prepare exited with status 3: no space left for v3"),
        "{reason}"
    );
    assert!(!reason.contains("app1"), "app1 prepared fine: {reason}");
    assert_eq!(steps_of(&done, false), ["- prepare failed"]);
    assert_eq!(fleet.hosted_process("web1").unwrap().1, "v2");
    assert_eq!(fleet.hosted_process("web2").unwrap().1, "v2");
}

/// The backends run under a shell that takes 3 s to end after SIGTERM (the demo app itself ends
/// at once): long enough to cut the host while its backend is being stopped.
const SLOW_TO_STOP: &[&str] = &[
    "sh",
    "-c",
    "trap 'sleep 3; exit 0' TERM; \"$0\" & wait",
    env!("CARGO_BIN_EXE_baton-demo-app"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_while_its_backend_stops_is_rolled_back_around_and_repaired_when_it_returns() {
    let hosts = Arc::new(TestHosts::start(3));
    let fleet = spawn_fleet(FleetOptions {
        backend_command: Some(SLOW_TO_STOP),
        ..on_hosts(&hosts, 1)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_for_step(id, "web2's stop", |s| {
            s["backend"] == "web2" && s["step"] == "stop" && s["rollback"] == false
        })
        .await;
    hosts.cut(1);
    let done = fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );

    // The step failed with the host and ssh's words; web1 (done before) went back to v1, web3
    // was never touched, and web2 waits for its host.
    assert_eq!(done["status"], "failed", "{done:#}");
    let failed_stop = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backend"] == "web2" && s["step"] == "stop" && s["rollback"] == false)
        .unwrap();
    assert_eq!(failed_stop["outcome"], "failed", "{done:#}");
    assert!(
        failed_stop["detail"]
            .as_str()
            .is_some_and(|d| d.contains("host app2 is unreachable")),
        "{failed_stop:#}"
    );
    assert_eq!(fleet.hosted_process("web1").unwrap().1, "v1");
    assert_eq!(fleet.hosted_process("web3").unwrap().1, "v1");
    let states = haproxy_states(&fleet).await;
    for (server, state) in &states {
        match server.as_str() {
            "web2" => assert!(matches!(state, ServerState::Maint { .. }), "{state}"),
            _ => assert!(
                matches!(state, ServerState::Up { changing: None }),
                "{server}: {state}"
            ),
        }
    }
    let shown = wait_backends(&fleet, Duration::from_secs(10), "app2 unreachable", |b| {
        b[1]["host"]["reachable"] == "unreachable"
    })
    .await;
    assert_eq!(shown[0]["host"]["reachable"], "reachable");

    // Back on the network, web2 runs its recorded version (v1) again and is back in rotation.
    hosts.restore(1);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let web2 = fleet
            .haproxy_servers()
            .await
            .into_iter()
            .find(|s| s.server == "web2")
            .unwrap();
        if web2.is_up() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web2 was not repaired: {web2:?}\nBaton's log:\n{}",
            fleet.baton_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fleet.hosted_process("web2").unwrap().1, "v1");
    let shown = backends(&fleet).await;
    assert_eq!(shown[1]["host"]["reachable"], "reachable");
    assert_eq!(shown[1]["version"], "v1");
    let answers = fleet.through_haproxy().await;
    assert!(answers.is_ok_and(|a| a.starts_with("v1 ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_killed_mid_rollout_adopts_the_remote_backends_instead_of_restarting_them() {
    let hosts = Arc::new(TestHosts::start(2));
    let mut fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        ..on_hosts(&hosts, 2)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_for_step(id, "web3's health check", |s| {
            s["backend"] == "web3" && s["step"] == "wait_healthy"
        })
        .await;
    fleet.kill_baton();
    let at_kill: Vec<(i32, String)> = (1..=4)
        .map(|i| fleet.hosted_process(&format!("web{i}")).unwrap())
        .collect();
    fleet.restart_baton().await;
    let done = fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    assert_eq!(
        done["status"],
        "succeeded",
        "{done:#}\n{}",
        fleet.baton_log()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );

    // web1 and web2 (done) and web3 (started, being checked) kept the processes they had.
    for (i, (pid, version)) in at_kill.iter().enumerate().take(3) {
        let backend = format!("web{}", i + 1);
        assert_eq!(version, "v2", "{backend}");
        assert_eq!(
            fleet.hosted_process(&backend).unwrap(),
            (*pid, "v2".to_owned()),
            "{backend} was restarted instead of adopted"
        );
    }
    assert_eq!(fleet.hosted_process("web4").unwrap().1, "v2");
    assert_eq!(
        steps_of(&done, false)
            .iter()
            .filter(|s| s.starts_with("web3 start"))
            .count(),
        1,
        "web3 was not started twice: {:?}",
        steps_of(&done, false)
    );
}
