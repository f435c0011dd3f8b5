//! Live streams and Baton's lifecycle.

use std::time::Duration;

use futures::StreamExt;

use crate::helpers::spawn_app;

#[tokio::test]
async fn stopping_baton_ends_open_event_streams_instead_of_waiting_for_them() {
    let app = spawn_app().await;
    let response = app.get("/api/events").await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the fleet state comes at once")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: fleet"));

    // The browser keeps the stream open; Baton must still stop promptly.
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("Baton stops within 5 s with a stream open");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with Baton");
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_json_reason() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/api/services/api/deployments", app.address))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("over the limit"),
        "{body}"
    );
}
