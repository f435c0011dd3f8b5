//! Two Baton replicas on one PostgreSQL database, as a browser and a balancer see them: a
//! rollout requested on one streams on the other (each event once, in order, with the same
//! `Last-Event-ID` replay), `/ready` follows the database, and every replica says which one
//! leads.

use std::pin::Pin;
use std::time::{Duration, Instant};

use baton_server::auth::Role;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::support::baton::{
    InProcess, authorized_client, create_token, settings, spawn_app, spawn_app_on_postgres,
};
use crate::support::config;
use crate::support::postgres::{self, OwnPostgres};

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// One replica: Baton in this process on `api_and_worker`, on a database others share.
struct Replica {
    baton: InProcess,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(database_url: &str) -> Self {
        Self::start_with(database_url, config::api_and_worker()).await
    }

    /// A replica on `config` instead of `api_and_worker`.
    async fn start_with(database_url: &str, config: config::Config) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut settings = settings(&config.toml(), dir.path(), &[]);
        settings.server.database_url = database_url.to_owned();
        Self {
            baton: InProcess::start(settings).await,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.baton.address)
    }
}

/// Two replicas on `database_url`, and an admin client for both.
async fn two_replicas(database_url: &str) -> (Replica, Replica, reqwest::Client) {
    let a = Replica::start(database_url).await;
    let b = Replica::start(database_url).await;
    let token = create_token(database_url, "replicas", Role::Admin).await;
    (a, b, authorized_client(&token))
}

/// Opens the event stream at `url` (with `Last-Event-ID` when given).
async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<i64>) -> Events {
    let mut request = client.get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.expect("the replica answers");
    assert_eq!(response.status(), 200, "{url} opens");
    Box::pin(response.bytes_stream().eventsource())
}

/// The ids of the `deployment` events on `events` until `done` says the last one was enough
/// (at most 30 s).
async fn deployment_ids(events: &mut Events, done: impl Fn(&Value) -> bool) -> Vec<i64> {
    let mut ids = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            let event = event.expect("the stream stays open");
            if event.event != "deployment" {
                continue;
            }
            ids.push(
                event
                    .id
                    .parse::<i64>()
                    .expect("a deployment event has an id"),
            );
            let data: Value = serde_json::from_str(&event.data).expect("an event is JSON");
            if done(&data) {
                return;
            }
        }
        panic!("the stream ended after {ids:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("the stream stopped short after {ids:?}"));
    ids
}

/// Whether `event` says rollout `id` ended (any status but queued, running or paused).
fn ended(id: i64) -> impl Fn(&Value) -> bool {
    move |event| {
        let status = event["deployment"]["status"].as_str();
        event["deployment_id"] == id
            && event["kind"] == "status"
            && !matches!(status, Some("queued" | "running" | "paused"))
    }
}

/// The ids of every event of rollout `id`, from the database.
async fn stored_ids(database_url: &str, id: i64) -> Vec<i64> {
    let store = baton_server::store::Store::connect(database_url)
        .await
        .unwrap();
    let ids = store
        .events_after(Some(id), 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|event| event.id)
        .collect();
    store.close().await;
    ids
}

async fn deploy(client: &reqwest::Client, replica: &Replica, version: &str) -> i64 {
    let queued: Value = client
        .post(replica.url("/api/services/api/deployments"))
        .json(&json!({ "version": version }))
        .send()
        .await
        .expect("the replica answers")
        .json()
        .await
        .expect("the answer is JSON");
    queued["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("a rollout is queued: {queued}"))
}

/// Asserts that nothing but keep-alives comes on `events` for a little while.
async fn nothing_more(events: &mut Events, why: &str) {
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match events.next().await {
                Some(Ok(event)) if event.event == "deployment" => return event,
                Some(Ok(_)) => continue,
                other => panic!("the stream ended: {other:?}"),
            }
        }
    })
    .await;
    if let Ok(event) = quiet {
        panic!("{why}: {event:?}");
    }
}

#[tokio::test]
async fn a_rollout_requested_on_one_replica_streams_on_the_other_once_in_order() {
    let database_url = postgres::fresh_database();
    let (a, b, client) = two_replicas(&database_url).await;
    // A browser on B's fleet page: from now on.
    let mut on_b = open(&client, &b.url("/api/events"), None).await;

    let id = deploy(&client, &a, "v2").await;
    let streamed = deployment_ids(&mut on_b, ended(id)).await;
    let stored = stored_ids(&database_url, id).await;
    assert_eq!(
        streamed, stored,
        "B streams every event of the rollout A was asked for, once each, in id order"
    );
    nothing_more(&mut on_b, "an event came twice").await;

    // A browser that reconnects to B after the second event gets exactly the rest.
    let mut replayed = open(
        &client,
        &b.url(&format!("/api/deployments/{id}/events")),
        Some(stored[1]),
    )
    .await;
    assert_eq!(
        deployment_ids(&mut replayed, ended(id)).await,
        stored[2..],
        "Last-Event-ID replays what was missed"
    );
    // And one that reconnects to the fleet stream gets the rest of this one, then the next
    // rollout A is asked for, live.
    let mut resumed = open(&client, &b.url("/api/events"), Some(stored[1])).await;
    let next = deploy(&client, &a, "v3").await;
    let mut expected = stored[2..].to_vec();
    expected.extend(stored_ids(&database_url, next).await.first());
    let mut got = deployment_ids(&mut resumed, ended(id)).await;
    got.extend(deployment_ids(&mut resumed, |_| true).await);
    assert_eq!(
        got, expected,
        "replayed, then live, without a gap or a repeat"
    );

    a.baton.stop().await;
    b.baton.stop().await;
}

#[tokio::test]
async fn ready_follows_the_database_and_events_flow_again_after_it_restarts() {
    let mut postgres = OwnPostgres::start();
    let database_url = postgres.fresh_database();
    let (a, b, client) = two_replicas(&database_url).await;
    let anonymous = reqwest::Client::new();
    let ready = |replica: &Replica| {
        anonymous
            .get(replica.url("/ready"))
            .timeout(Duration::from_secs(10))
            .send()
    };

    let answer = ready(&a).await.unwrap();
    assert_eq!(answer.status(), 200);
    let view: Value = answer.json().await.unwrap();
    assert_eq!(view["role"], "leader", "{view}");
    assert!(
        view["replica"]
            .as_str()
            .is_some_and(|name| !name.is_empty())
    );

    postgres.stop();
    let answer = ready(&a).await.unwrap();
    assert_eq!(answer.status(), 503, "not ready without its database");
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    assert_eq!(body["replica"]["replica"], view["replica"], "{body}");
    assert_eq!(
        anonymous
            .get(a.url("/alive"))
            .send()
            .await
            .unwrap()
            .status(),
        503,
        "/alive is as it was: it too needs the database"
    );

    postgres.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(&a).await.is_ok_and(|answer| answer.status() == 200) {
        assert!(Instant::now() < deadline, "ready again within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B listens again: a rollout requested on A after the restart streams on B. (A stream
    // open during the outage ends when its caller cannot be checked; the browser reconnects.)
    let mut on_b = open(&client, &b.url("/api/events"), None).await;
    let id = deploy(&client, &a, "v2").await;
    let streamed = deployment_ids(&mut on_b, ended(id)).await;
    let stored = stored_ids(&database_url, id).await;
    assert_eq!(streamed, stored, "B streams A's rollout after the restart");

    a.baton.stop().await;
    b.baton.stop().await;
}

#[tokio::test]
async fn every_replica_says_which_one_answers_and_which_one_leads() {
    for app in [spawn_app().await, spawn_app_on_postgres().await] {
        let view: Value = app.get("/api/replica").await.json().await.unwrap();
        assert_eq!(view["role"], "leader", "a single replica leads: {view}");
        assert_eq!(view["leader"], view["replica"], "{view}");
        assert!(view["leader_since"].as_i64().is_some(), "{view}");
        let ready: Value = app
            .anonymous
            .get(format!("{}/ready", app.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready, view, "/ready answers the same view");

        let html = app.get("/").await.text().await.unwrap();
        let name = view["replica"].as_str().unwrap();
        for expected in [
            "data-testid=\"replica\"",
            "data-role=\"leader\"",
            name,
            "this replica leads",
            " since ",
        ] {
            assert!(
                html.contains(expected),
                "the top bar lacks {expected:?}:\n{html}"
            );
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn an_approval_given_on_a_follower_reaches_the_leader_and_the_requester_is_refused_there_too()
{
    let database_url = postgres::fresh_database();
    let gated = || {
        config::Config::edge().service(
            config::Service::new("api")
                .approval("start")
                .runtime(config::Runtime::idle())
                .backend("s1", 18001)
                .backend("s2", 18002),
        )
    };
    let a = Replica::start_with(&database_url, gated()).await;
    let b = Replica::start_with(&database_url, gated()).await;
    let requester = authorized_client(&create_token(&database_url, "ana", Role::Deployer).await);
    let approver = authorized_client(&create_token(&database_url, "bea", Role::Deployer).await);
    let role = |replica: &Replica| {
        let url = replica.url("/api/replica");
        let client = requester.clone();
        async move {
            let view: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            view["role"].as_str().unwrap_or_default().to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let follower = loop {
        match (role(&a).await.as_str(), role(&b).await.as_str()) {
            ("leader", "follower") => break &b,
            ("follower", "leader") => break &a,
            _ => {}
        }
        assert!(Instant::now() < deadline, "one replica never came to lead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let id = deploy(&requester, follower, "v2").await;
    let status = |id: i64| {
        let url = follower.url(&format!("/api/deployments/{id}"));
        let client = requester.clone();
        async move {
            let deployment: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            deployment
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(id).await["status"] != "awaiting_approval" {
        assert!(
            Instant::now() < deadline,
            "the leader never took it up: {}",
            status(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let refused = requester
        .post(follower.url(&format!("/api/deployments/{id}/approve")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        403,
        "the follower refuses the requester too"
    );
    let approved = approver
        .post(follower.url(&format!("/api/deployments/{id}/approve")))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 202);
    // The leader's worker takes it from the database and begins (its steps fail here: no
    // HAProxy answers, which is beside the point).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deployment = status(id).await;
        if deployment["status"] != "awaiting_approval" {
            assert_eq!(deployment["approved_by"], "bea", "{deployment:#}");
            assert!(
                !deployment["steps"].as_array().unwrap().is_empty(),
                "the leader began it: {deployment:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the approval never reached the leader: {deployment:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.baton.stop().await;
    b.baton.stop().await;
}
