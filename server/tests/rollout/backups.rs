//! HAProxy `backup` servers in a rollout: never counted as capacity, rolled after every other
//! backend, and never the only servers left UP. Real HAProxy (`retries 0`) under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::fleet::{
    FleetOptions, assert_all_serving, assert_no_failures, load, spawn_fleet, steps_of,
};

/// The backends in the order the rollout took them out of rotation.
fn drain_order(deployment: &serde_json::Value) -> Vec<String> {
    steps_of(deployment, false)
        .iter()
        .filter(|step| step.contains(" drain "))
        .map(|step| step.split(' ').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_server_is_rolled_last_and_no_request_fails() {
    let fleet = spawn_fleet(FleetOptions {
        backup_servers: &["web2"],
        ..FleetOptions::default()
    })
    .await;
    let services = fleet.get("/api/services").await.unwrap();
    let backup: Vec<(&str, bool)> = services[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap(),
                b["load_balancer"][0]["backup"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        backup,
        [("web1", false), ("web2", true), ("web3", false)],
        "the fleet view marks the backup server"
    );
    let page = fleet
        .client
        .get(format!("{}/", fleet.baton))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        page.matches("data-backup").count(),
        1,
        "the services page marks web2 alone as a backup: {page}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_eq!(
        drain_order(&deployment),
        ["web1", "web3", "web2"],
        "configuration order, the backup last"
    );
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_would_leave_only_the_backup_up_is_refused_before_anything_is_touched() {
    let fleet = spawn_fleet(FleetOptions {
        backup_servers: &["web3"],
        batch_size: Some(2),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "failed", "{deployment:#}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("check_capacity failed on web1: ")
            && reason.ends_with(
                "taking web1, web2 out would leave only the backup server(s) web3 UP, and a backup is not capacity"
            ),
        "{reason}"
    );
    assert_eq!(
        steps_of(&deployment, false),
        [
            "- prepare ok",
            "web1 check_capacity failed",
            "web2 check_capacity failed"
        ],
        "nothing was drained"
    );
    // Refused at once, so few requests went out: none of them failed.
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert_all_serving(&fleet, "v1").await;
}
