//! `GET /metrics`: who may scrape it, and what a scrape shows after things happen.

use std::time::Duration;

use baton_server::auth::Role;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::baton::{TestApp, authorized_client, spawn_app, spawn_app_tuned};

/// A scrape with the admin token; asserts it answers 200 in the OpenMetrics text format.
async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    response.text().await.unwrap()
}

/// Scrapes until a line of the page is exactly `line` (up to 10 s).
async fn scrape_until(app: &TestApp, line: &str) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(app).await;
        if text.lines().any(|l| l == line) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no line {line:?} within 10 s in:\n{text}");
}

#[tokio::test]
async fn anonymous_scrapes_are_refused_and_a_viewer_token_is_enough() {
    let app = spawn_app().await;
    let anonymous = app
        .anonymous
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body = anonymous.text().await.unwrap();
    assert!(!body.contains("baton_"), "{body}");

    let viewer = authorized_client(&app.token("prometheus", Role::Viewer).await);
    let response = viewer
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("# TYPE baton_soak_trips counter"), "{text}");
    assert!(
        text.contains(
            "baton_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"} 1\n"
        ),
        "the anonymous try is counted: {text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn an_allow_listed_address_scrapes_without_a_token_and_others_still_need_one() {
    let allowed = spawn_app_tuned(|settings| {
        settings.server.metrics_allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let anonymous = allowed
        .anonymous
        .get(format!("{}/metrics", allowed.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200, "127.0.0.1 is in 127.0.0.0/8");
    // The allow-list opens /metrics only: the API still wants a token from the same address.
    let api = allowed
        .anonymous
        .get(format!("{}/api/services", allowed.address))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    // A token that is no longer valid is refused rather than ignored.
    let bad_token = authorized_client("baton_not-a-real-token")
        .get(format!("{}/metrics", allowed.address))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);

    let elsewhere = spawn_app_tuned(|settings| {
        settings.server.metrics_allow = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let anonymous = elsewhere
        .anonymous
        .get(format!("{}/metrics", elsewhere.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "127.0.0.1 is not in 10.0.0.0/8");
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_status_not_by_raw_path() {
    let app = spawn_app().await;
    for id in [4041, 4042] {
        let response = app.get(&format!("/api/deployments/{id}")).await;
        assert_eq!(response.status(), 404);
    }
    let refused = app
        .anonymous
        .get(format!("{}/api/services", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let text = scrape(&app).await;
    let line = |method: &str, route: &str, status: u16| {
        format!(
            "baton_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        )
    };
    assert!(
        text.contains(&format!(
            "{} 2\n",
            line("GET", "/api/deployments/{id}", 404)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 1\n", line("GET", "/api/services", 401))),
        "refusals are counted too: {text}"
    );
    assert!(!text.contains("4041"), "no raw path: {text}");
}

#[tokio::test]
async fn open_event_streams_are_counted_until_their_client_goes_away() {
    let app = spawn_app().await;
    scrape_until(&app, "baton_event_stream_subscribers{stream=\"fleet\"} 0").await;
    let response = app.get("/api/events").await;
    assert_eq!(response.status(), 200);
    let mut body = Box::pin(response.bytes_stream());
    tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first event comes at once")
        .expect("the stream is open")
        .expect("the stream is open");
    scrape_until(&app, "baton_event_stream_subscribers{stream=\"fleet\"} 1").await;
    drop(body);
    scrape_until(&app, "baton_event_stream_subscribers{stream=\"fleet\"} 0").await;
}

#[tokio::test]
async fn webhook_deliveries_are_counted_by_verdict() {
    let app = spawn_app().await;
    let unsigned = app
        .anonymous
        .post(format!("{}/hooks/api", app.address))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-1")
        .json(&json!({ "ref": "refs/heads/main" }))
        .send()
        .await
        .unwrap();
    // `api` takes no webhooks in this configuration.
    assert!(unsigned.status().is_client_error(), "{}", unsigned.status());
    let text = scrape(&app).await;
    assert!(
        text.contains("baton_webhook_deliveries_total{verdict=\"rejected\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_finished_rollout_is_counted_by_service_and_outcome_with_its_steps_timed() {
    let app = spawn_app().await;
    let text = scrape(&app).await;
    assert!(
        text.contains("baton_soak_trips_total{service=\"api\"} 0\n"),
        "the soak counter exists from the start: {text}"
    );
    assert!(!text.contains("baton_rollouts_total{"), "{text}");

    // Nothing listens on the test's HAProxy socket: the first rollout ends, one way or
    // another; the second is aborted (queued behind the first, or just begun).
    let first = deploy(&app, "v2").await;
    let second = deploy(&app, "v3").await;
    let aborted = app
        .client
        .post(format!("{}/api/deployments/{second}/abort", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(aborted.status(), 202);
    let status = finished(&app, first).await;
    assert_eq!(finished(&app, second).await, "cancelled");
    if status != "cancelled" {
        scrape_until(
            &app,
            &format!("baton_rollouts_total{{service=\"api\",outcome=\"{status}\"}} 1"),
        )
        .await;
    }
    let text = scrape_until(
        &app,
        "baton_rollouts_total{service=\"api\",outcome=\"cancelled\"} 1",
    )
    .await;
    assert!(
        text.contains("baton_step_duration_seconds_count{step=\"prepare\"} 1\n"),
        "{text}"
    );
    assert!(
        !text.contains("service=\"worker\",outcome="),
        "only api rolled out: {text}"
    );
}

/// Queues a rollout of `api` to `version`; its id.
async fn deploy(app: &TestApp, version: &str) -> i64 {
    let queued: Value = app
        .client
        .post(format!("{}/api/services/api/deployments", app.address))
        .json(&json!({ "version": version }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    queued["id"].as_i64().unwrap()
}

/// Waits (up to 30 s) for rollout `id` to end; its status.
async fn finished(app: &TestApp, id: i64) -> String {
    let mut deployment = Value::Null;
    for _ in 0..300 {
        deployment = app
            .get(&format!("/api/deployments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        let status = deployment["status"].as_str().unwrap();
        if ["succeeded", "failed", "rolled_back", "cancelled"].contains(&status) {
            return status.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rollout {id} did not end within 30 s: {deployment:#}");
}
