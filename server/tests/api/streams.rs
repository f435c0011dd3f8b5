//! Live streams: Baton's lifecycle, and who may keep a stream open.

use std::pin::Pin;
use std::time::Duration;

use baton_server::auth::{Actor, Password, Role, accounts};
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::support::baton::{TestApp, bearer, spawn_app, spawn_app_tuned};

const PASSWORD: &str = "viewer password 7e21aa";

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Opens the stream at `path` with `headers`; returns it once its first event has arrived.
async fn open(app: &TestApp, path: &str, headers: &HeaderMap) -> Body {
    let response = app
        .anonymous
        .get(format!("{}{path}", app.address))
        .headers(headers.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path} opens");
    let mut body: Body = Box::pin(response.bytes_stream());
    tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first event comes at once")
        .expect("the stream is open")
        .expect("the stream is open");
    body
}

/// Waits (up to 5 s) for the stream to end.
async fn ends(body: &mut Body, why: &str) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .unwrap_or_else(|_| panic!("the stream ends within 5 s when {why}"));
}

async fn status_of(app: &TestApp, path: &str, headers: &HeaderMap) -> u16 {
    app.anonymous
        .get(format!("{}{path}", app.address))
        .headers(headers.clone())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Adds a viewer through the API and signs it in; returns the headers its browser sends.
async fn signed_in_viewer(app: &TestApp, name: &str) -> HeaderMap {
    let login = app.add_user_and_log_in(name, Role::Viewer, PASSWORD).await;
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        HeaderValue::from_str(cookie.split(';').next().unwrap()).unwrap(),
    );
    headers.insert("origin", HeaderValue::from_str(&app.address).unwrap());
    headers
}

async fn token_id(app: &TestApp, name: &str) -> i64 {
    let tokens: Value = app.get("/api/tokens").await.json().await.unwrap();
    tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["name"] == name && token["revoked_at"].is_null())
        .and_then(|token| token["id"].as_i64())
        .unwrap_or_else(|| panic!("a live token named {name}: {tokens}"))
}

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

#[tokio::test]
async fn streams_end_at_once_when_their_token_is_revoked() {
    let app = spawn_app().await;
    let deployment: Value = app
        .client
        .post(format!("{}/api/services/api/deployments", app.address))
        .json(&json!({ "version": "v2" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rollout = format!("/api/deployments/{}/events", deployment["id"]);
    let watcher = bearer(&app.token("watcher", Role::Viewer).await);
    let mut fleet = open(&app, "/api/events", &watcher).await;
    let mut one = open(&app, &rollout, &watcher).await;
    let other = bearer(&app.token("other", Role::Viewer).await);
    let mut others = open(&app, "/api/events", &other).await;

    let id = token_id(&app, "watcher").await;
    let revoked = app
        .client
        .delete(format!("{}/api/tokens/{id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    ends(&mut fleet, "the token is revoked").await;
    ends(&mut one, "the token is revoked").await;
    // The client's reconnect is refused.
    assert_eq!(status_of(&app, "/api/events", &watcher).await, 401);
    // Another token's stream was checked too, and goes on.
    let more = tokio::time::timeout(Duration::from_millis(300), others.next()).await;
    assert!(
        !matches!(more, Ok(None | Some(Err(_)))),
        "the other token's stream stays open: {more:?}"
    );
}

#[tokio::test]
async fn a_browser_stream_ends_at_sign_out_and_when_its_user_is_deleted() {
    let app = spawn_app().await;
    let vera = signed_in_viewer(&app, "vera").await;
    let walt = signed_in_viewer(&app, "walt").await;
    let mut veras = open(&app, "/api/events", &vera).await;
    let mut walts = open(&app, "/api/events", &walt).await;

    let logout = app
        .anonymous
        .post(format!("{}/auth/logout", app.address))
        .headers(vera.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    ends(&mut veras, "the browser signs out").await;
    assert_eq!(status_of(&app, "/api/events", &vera).await, 401);

    let deleted = app
        .client
        .delete(format!("{}/api/users/walt", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    ends(&mut walts, "the user is deleted").await;
    assert_eq!(status_of(&app, "/api/events", &walt).await, 401);
}

#[tokio::test]
async fn streams_notice_a_password_change_or_revocation_made_by_the_command_line() {
    // The `baton` command changes the database from another process, so only the stream's
    // periodic check can notice; it runs every 10 s by default.
    let app = spawn_app_tuned(|settings| {
        settings.auth.stream_recheck = Duration::from_millis(200);
    })
    .await;
    let vera = signed_in_viewer(&app, "vera").await;
    let ci = bearer(&app.token("ci", Role::Viewer).await);
    let mut veras = open(&app, "/api/events", &vera).await;
    let mut cis = open(&app, "/api/events", &ci).await;

    let cli = app.cli_store().await;
    accounts::set_password(
        &cli,
        &Actor::cli(),
        None,
        "vera",
        Password::new("a new password 0b9e51"),
    )
    .await
    .unwrap();
    ends(&mut veras, "the password is changed").await;
    accounts::revoke_token(
        &cli,
        &Actor::cli(),
        None,
        &accounts::TokenRef::Name("ci".into()),
    )
    .await
    .unwrap();
    ends(&mut cis, "the token is revoked").await;
    cli.close().await;
    assert_eq!(status_of(&app, "/api/events", &vera).await, 401);
}

#[tokio::test]
async fn a_caller_may_hold_16_streams_and_the_17th_is_refused() {
    let app = spawn_app().await;
    let ci = bearer(&app.token("ci", Role::Viewer).await);
    let mut open_streams =
        futures::future::join_all((0..16).map(|_| open(&app, "/api/events", &ci))).await;
    let refused = app
        .anonymous
        .get(format!("{}/api/events", app.address))
        .headers(ci.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("ci already has 16 event streams open"),
        "{error}"
    );
    // Another caller has its own count.
    let other = bearer(&app.token("other", Role::Viewer).await);
    let _others = open(&app, "/api/events", &other).await;

    // Closing one (a browser tab) gives its place back as soon as Baton sees the connection
    // close.
    drop(open_streams.pop());
    let reopened = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if status_of(&app, "/api/events", &ci).await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(reopened.is_ok(), "a closed stream's place is given back");
}
