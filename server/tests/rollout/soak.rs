//! The watch after enable (`[service.soak]`) through real HAProxy (`retries 0`) under load: a
//! version that passes `/alive` but answers 500s is rolled back with the numbers, and a healthy
//! one passes the watch of every batch with no failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::fleet::{
    Fleet, FleetOptions, assert_all_serving, assert_no_failures, load, spawn_fleet, steps_of,
};

/// `GET /metrics` until `line` is on it (up to 10 s).
async fn scrape_until(fleet: &Fleet, line: &str) {
    let mut text = String::new();
    for _ in 0..100 {
        text = fleet
            .client
            .get(format!("{}/metrics", fleet.baton))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {line:?} within 10 s in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_passes_alive_but_answers_500s_is_rolled_back_by_the_watch() {
    let fleet = spawn_fleet(FleetOptions {
        soak: Some((Duration::from_secs(5), 0)),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    // The demo app answers every third `/` of a `flaky` version with a 500; `/alive` passes.
    let (status, queued) = fleet.deploy("v2-flaky").await;
    assert_eq!(status, 202, "{queued}");
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "rolled_back", "{deployment:#}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("soak failed on web1: web1 answered ")
            && reason.contains(" 5xx of ")
            && reason.contains("request(s), more than max_5xx = 0, ")
            && reason.ends_with(" into the 5s watch; every changed backend was rolled back"),
        "{reason}"
    );
    let forward = steps_of(&deployment, false);
    assert!(
        forward.contains(&"web1 soak failed".to_owned()),
        "{forward:#?}"
    );
    assert!(
        !forward
            .iter()
            .any(|s| s.starts_with("web2") || s.starts_with("web3")),
        "the next batch never began: {forward:#?}"
    );
    assert_all_serving(&fleet, "v1").await;
    // What users saw: only the flaky version's own 500s while it was watched; no request
    // failed at the cut-overs.
    assert!(!failures.is_empty(), "the flaky version served some 500s");
    assert!(
        failures
            .iter()
            .all(|f| f == "HTTP 500 Internal Server Error"),
        "{sent} sent: {failures:?}"
    );
    scrape_until(&fleet, "baton_soak_trips_total{service=\"web\"} 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_version_passes_the_watch_of_every_batch_and_no_request_fails() {
    let fleet = spawn_fleet(FleetOptions {
        soak: Some((Duration::from_secs(1), 0)),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    for backend in ["web1", "web2", "web3"] {
        let watch = deployment["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["backend"] == backend && s["step"] == "soak")
            .unwrap_or_else(|| panic!("{backend} was watched: {deployment:#}"));
        assert_eq!(watch["outcome"], "ok", "{watch}");
        let detail = watch["detail"].as_str().unwrap();
        let requests: u64 = detail
            .strip_prefix(&format!("watched for 1s: {backend} "))
            .and_then(|rest| rest.strip_suffix(" request(s), 0 5xx"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{detail}"));
        assert!(
            requests > 0,
            "{backend} took traffic while watched: {detail}"
        );
    }
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v2").await;
    scrape_until(&fleet, "baton_soak_trips_total{service=\"web\"} 0").await;
}
