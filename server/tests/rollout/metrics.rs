//! `GET /metrics` after a real rollout through HAProxy.

use std::time::Duration;

use crate::support::fleet::{Fleet, FleetOptions, spawn_fleet};

/// Scrapes until every line in `lines` is on the page (up to 10 s); the page.
async fn scrape_until(fleet: &Fleet, lines: &[&str]) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        let response = fleet
            .client
            .get(format!("{}/metrics", fleet.baton))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        text = response.text().await.unwrap();
        if lines.iter().all(|line| text.lines().any(|l| l == *line)) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not every line of {lines:#?} within 10 s in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_rollout_shows_it_its_steps_and_every_backend_up() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");

    let text = scrape_until(
        &fleet,
        &[
            "baton_rollouts_total{service=\"web\",outcome=\"succeeded\"} 1",
            // One per backend and HAProxy node, from the fleet's snapshot.
            "baton_backends{service=\"web\",state=\"up\"} 3",
            "baton_step_duration_seconds_count{step=\"prepare\"} 1",
            "baton_step_duration_seconds_count{step=\"drain\"} 3",
            "baton_step_duration_seconds_count{step=\"wait_healthy\"} 3",
            "baton_soak_trips_total{service=\"web\"} 0",
        ],
    )
    .await;
    assert!(
        !text.contains("outcome=\"failed\"") && !text.contains("outcome=\"rolled_back\""),
        "{text}"
    );
    assert!(
        text.contains(
            "baton_http_requests_total{method=\"POST\",route=\"/api/services/{service}/deployments\",status=\"202\"} 1\n"
        ),
        "{text}"
    );
}
