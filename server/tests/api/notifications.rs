//! Notifications (`[[notify]]`) as a receiver sees them: an axum server on 127.0.0.1 in the
//! test. The rollouts here fail at their capacity check (no HAProxy listens), which is quick
//! and announces two events: `started` and `failed`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use baton_server::auth::Role;
use baton_server::webhooks::signature::hmac_sha256_matches;
use serde_json::Value;

use crate::support::baton::{TestApp, authorized_client, spawn_app_with};
use crate::support::config::{Config, Notify, Service};

/// What the receiver got: the path it was posted to, its headers and body.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answers {
    /// `failures` times 500, then 200.
    FailingFirst { failures: usize },
    /// Never: the request is held open until the receiver is dropped.
    Never,
}

#[derive(Clone)]
struct Shared {
    answers: Answers,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A local HTTP receiver on 127.0.0.1, stopped when dropped.
struct Receiver {
    address: String,
    received: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(shared): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let count = {
        let mut received = shared.received.lock().unwrap();
        received.push(Received {
            path,
            headers,
            body,
        });
        received.len()
    };
    match shared.answers {
        Answers::FailingFirst { failures } if count <= failures => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Answers::FailingFirst { .. } => StatusCode::OK,
        Answers::Never => std::future::pending().await,
    }
}

impl Receiver {
    async fn start(answers: Answers) -> Self {
        let received = Arc::default();
        let shared = Shared {
            answers,
            received: Arc::clone(&received),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let router = Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            address,
            received,
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `count` requests have arrived, and returns them.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} notifications arrived: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const KEY: &str = "the notifications' signing key";

/// `api`, one backend, no HAProxy: its rollouts start and fail.
fn api() -> Service {
    Service::new("api").backend("s1", 18001)
}

async fn spawn(config: Config, receiver: &Receiver) -> TestApp {
    let (hook, slack) = (receiver.url("hook"), receiver.url("slack"));
    spawn_app_with(
        &config.toml(),
        &[
            ("HOOK_URL", &hook),
            ("SLACK_URL", &slack),
            ("HOOK_KEY", KEY),
        ],
    )
    .await
}

/// Starts a rollout of `api` and waits until it has ended; returns its id and how long that took.
async fn rollout(app: &TestApp) -> (i64, Duration) {
    let began = Instant::now();
    let response = app
        .client
        .post(format!("{}/api/services/api/deployments", app.address))
        .json(&serde_json::json!({ "version": "v2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deployment: Value = app
            .get(&format!("/api/deployments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if deployment["status"] == "failed" {
            return (id, began.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} did not fail: {deployment:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The attempts `GET /api/notifications` shows, as "event attempt status verdict", oldest first.
async fn attempts(app: &TestApp) -> Vec<String> {
    let attempts: Value = app.get("/api/notifications").await.json().await.unwrap();
    let mut lines: Vec<String> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {}",
                a["event"].as_str().unwrap(),
                a["attempt"],
                a["status"],
                a["verdict"].as_str().unwrap()
            )
        })
        .collect();
    lines.reverse();
    lines
}

#[tokio::test]
async fn a_signed_webhook_and_slack_hear_that_a_rollout_started_and_failed() {
    let receiver = Receiver::start(Answers::FailingFirst { failures: 0 }).await;
    let config = Config::edge()
        .service(api().notify(Notify::webhook("HOOK_URL", "HOOK_KEY")))
        .notify(Notify::slack("SLACK_URL"));
    let app = spawn(config, &receiver).await;
    let (id, _) = rollout(&app).await;

    let received = receiver.wait_for(4).await;
    let hooks: Vec<&Received> = received.iter().filter(|r| r.path == "hook").collect();
    let mut events: Vec<&str> = hooks.iter().map(|r| r.header("x-baton-event")).collect();
    events.sort_unstable();
    assert_eq!(events, ["failed", "started"]);
    for hook in hooks {
        let signature = hook.header("x-baton-signature");
        let hex = signature.strip_prefix("sha256=").expect("sha256=<hex>");
        assert!(
            hmac_sha256_matches(KEY.as_bytes(), &hook.body, hex),
            "the signature verifies over the body"
        );
        assert!(
            !hmac_sha256_matches(b"another key", &hook.body, hex),
            "and only under the key"
        );
        let body = hook.json();
        assert_eq!(
            body["sent_at"].to_string(),
            hook.header("x-baton-timestamp"),
            "the timestamp is signed with the body"
        );
        assert_eq!(body["rollout"], id);
        assert_eq!(body["service"], "api");
        assert_eq!(body["to_version"], "v2");
        assert_eq!(
            hook.header("x-baton-delivery"),
            format!("{id}-{}", body["event"].as_str().unwrap())
        );
        if body["event"] == "failed" {
            let reason = body["reason"].as_str().unwrap();
            assert!(reason.starts_with("check_capacity failed"), "{reason}");
        }
    }
    let mut slack: Vec<String> = received
        .iter()
        .filter(|r| r.path == "slack")
        .map(|r| {
            assert!(r.headers.get("x-baton-signature").is_none());
            let body = r.json();
            assert_eq!(body.as_object().unwrap().len(), 1, "only `text`: {body}");
            body["text"].as_str().unwrap().to_owned()
        })
        .collect();
    slack.sort();
    assert!(
        slack[0].starts_with(&format!(
            "api: rollout #{id} to v2 failed: check_capacity failed"
        )) && slack[1].starts_with(&format!("api: rollout #{id} to v2 started")),
        "{slack:#?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_answers_500_is_tried_again_until_it_takes_the_event_it_asked_for() {
    let receiver = Receiver::start(Answers::FailingFirst { failures: 2 }).await;
    let config = Config::edge()
        .service(api())
        .notify(Notify::webhook("HOOK_URL", "HOOK_KEY").events(&["failed"]));
    let app = spawn(config, &receiver).await;
    let (id, _) = rollout(&app).await;

    let received = receiver.wait_for(3).await;
    for attempt in &received {
        assert_eq!(
            attempt.header("x-baton-delivery"),
            format!("{id}-failed"),
            "the same notification each time, and never `started`: the receiver asked for failures only"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while attempts(&app).await.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        attempts(&app).await,
        [
            "failed 1 500 will_retry",
            "failed 2 500 will_retry",
            "failed 3 200 delivered"
        ]
    );
    assert_eq!(receiver.received().len(), 3, "nothing more once delivered");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_the_rollout_up() {
    let receiver = Receiver::start(Answers::Never).await;
    let config = Config::edge()
        .service(api())
        .notify(Notify::webhook("HOOK_URL", "HOOK_KEY"));
    let app = spawn(config, &receiver).await;
    let (_, took) = rollout(&app).await;

    let held = receiver.wait_for(1).await;
    assert_eq!(held[0].header("x-baton-event"), "started");
    assert!(
        attempts(&app).await.is_empty(),
        "the rollout ended while the receiver still held its `started` unanswered"
    );
    assert!(
        took < Duration::from_secs(8),
        "the rollout took {took:?}: under the notification's 10 s timeout"
    );
    // Baton stops at once too: the attempt in flight is dropped.
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("Baton stops while a receiver hangs");
}

#[tokio::test]
async fn only_admins_see_the_attempts() {
    let receiver = Receiver::start(Answers::FailingFirst { failures: 0 }).await;
    let config = Config::edge()
        .service(api())
        .notify(Notify::webhook("HOOK_URL", "HOOK_KEY").events(&["started"]));
    let app = spawn(config, &receiver).await;
    rollout(&app).await;
    receiver.wait_for(1).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while attempts(&app).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shown: Value = app.get("/api/notifications").await.json().await.unwrap();
    assert_eq!(shown[0]["url_env"], "HOOK_URL");
    assert_eq!(shown[0]["kind"], "webhook");
    let raw = shown.to_string();
    assert!(
        !raw.contains(&receiver.address),
        "the URL is a secret: only its variable is shown: {raw}"
    );

    // The audit page shows them too, rendered on the server.
    let html = app.get("/audit").await.text().await.unwrap();
    for expected in [
        "data-testid=\"notifications\"",
        "data-verdict=\"delivered\"",
        "<code>HOOK_URL</code>",
        "Delivered",
    ] {
        assert!(
            html.contains(expected),
            "the audit page lacks {expected:?}:\n{html}"
        );
    }

    for role in [Role::Viewer, Role::Deployer] {
        let client = authorized_client(&app.token(&format!("{role:?}"), role).await);
        let response = client
            .get(format!("{}/api/notifications", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{role:?}");
        let response = client
            .post(format!("{}/rpc/list_notifications", app.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "the server function, as a {role:?}");
    }
    let response = app
        .anonymous
        .get(format!("{}/api/notifications", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}
