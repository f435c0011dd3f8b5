//! The live streams against a real rollout: every event exactly once, in order, across
//! reconnects; several watchers see the same thing.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::support::fleet::{FleetOptions, spawn_fleet};

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads a `text/event-stream` response, one event at a time.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<i64>) -> Self {
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{url}"
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` at the deadline.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        sse.id = Some(value.trim().parse().unwrap());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        sse.event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                sse.data = serde_json::from_str(&data).unwrap();
                return Some(sse);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Reads a rollout's events until its status event says it ended.
async fn until_finished(reader: &mut SseReader, seen: &mut Vec<Sse>) {
    loop {
        let event = reader
            .next(Duration::from_secs(30))
            .await
            .expect("the rollout ends within 30 s");
        let ended = event.data["kind"] == "status"
            && !matches!(
                event.data["deployment"]["status"].as_str(),
                Some("queued" | "running" | "paused")
            );
        seen.push(event);
        if ended {
            return;
        }
    }
}

fn ids(events: &[Sse]) -> Vec<i64> {
    events.iter().map(|e| e.id.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reconnects_gets_exactly_the_events_it_missed() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        ..FleetOptions::default()
    })
    .await;
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    let url = format!("{}/api/deployments/{id}/events", fleet.baton);

    // A second watcher follows the whole rollout without interruption.
    let mut steady = SseReader::open(&fleet.client, &url, None).await;
    let steady_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        until_finished(&mut steady, &mut seen).await;
        seen
    });

    let mut first = SseReader::open(&fleet.client, &url, None).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(first.next(Duration::from_secs(10)).await.unwrap());
    }
    drop(first);
    // Events come while nobody listens on this connection.
    let missed_from = seen.last().unwrap().id.unwrap();
    fleet
        .wait_until(id, "an event after the watcher left", |deployment| {
            deployment["last_event_id"]
                .as_i64()
                .is_some_and(|last| last > missed_from)
        })
        .await;
    let mut again = SseReader::open(&fleet.client, &url, seen.last().unwrap().id).await;
    until_finished(&mut again, &mut seen).await;

    let ids = ids(&seen);
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "in order, none twice: {ids:?}"
    );
    let steady = steady_task.await.unwrap();
    assert_eq!(seen, steady, "both watchers saw the same events");

    // The stream told the whole story: every step row began and ended in it.
    let deployment = fleet.finished(id).await;
    assert_eq!(deployment["status"], "succeeded");
    assert_eq!(deployment["last_event_id"], *ids.last().unwrap());
    let steps = deployment["steps"].as_array().unwrap();
    for step in steps {
        let events: Vec<&Sse> = seen
            .iter()
            .filter(|e| e.data["kind"] == "step" && e.data["step"]["id"] == step["id"])
            .collect();
        assert_eq!(events.len(), 2, "step {step} began and ended once each");
        assert_eq!(events[1].data["step"], *step);
    }
    let statuses: Vec<&str> = seen
        .iter()
        .filter(|e| e.data["kind"] == "status")
        .map(|e| e.data["deployment"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"succeeded"));
    assert!(statuses.contains(&"running"), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_stream_sends_the_state_at_once_then_rollout_events() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        ..FleetOptions::default()
    })
    .await;
    let url = format!("{}/api/events", fleet.baton);
    let mut reader = SseReader::open(&fleet.client, &url, None).await;
    let first = reader.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.event, "fleet");
    assert_eq!(first.id, None, "state is not history");
    assert_eq!(first.data[0]["name"], "web", "{first:?}");
    assert_eq!(
        first.data[0]["backends"][0]["load_balancer"][0]["status"],
        "UP"
    );

    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    let mut saw_running_rollout = false;
    let mut saw_new_version = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(saw_running_rollout && saw_new_version) {
        assert!(Instant::now() < deadline, "the fleet stream went quiet");
        let event = reader.next(Duration::from_secs(10)).await.unwrap();
        match event.event.as_str() {
            "deployment" => assert_eq!(event.data["deployment_id"], id),
            "fleet" => {
                let service = &event.data[0];
                saw_running_rollout |= service["active"]["id"] == id;
                saw_new_version |= service["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|b| b["version"] == "v2" && b["load_balancer"][0]["status"] == "UP");
            }
            other => panic!("unexpected event {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_an_unknown_rollout_or_with_a_bad_last_event_id_is_refused() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 1,
        ..FleetOptions::default()
    })
    .await;
    let response = fleet
        .client
        .get(format!("{}/api/deployments/999/events", fleet.baton))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = fleet
        .client
        .get(format!("{}/api/events", fleet.baton))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"));
}
