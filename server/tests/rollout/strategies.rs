//! Canary with promote, and approvals, on real rollouts through a real HAProxy (retries 0) with
//! traffic flowing the whole time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_server::auth::Role;
use serde_json::Value;

use crate::support::baton::{authorized_client, create_token};
use crate::support::fleet::{
    Fleet, FleetOptions, assert_all_serving, assert_no_failures, capacity_summary, capacity_trace,
    load, spawn_fleet, steps_of,
};
use crate::support::haproxy::Checks;

async fn post(client: &reqwest::Client, fleet: &Fleet, path: &str) -> (u16, Value) {
    let response = client
        .post(format!("{}{path}", fleet.baton))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

/// Every backend's version and its status on the (single) HAProxy node.
async fn backends(fleet: &Fleet) -> Vec<(String, String)> {
    let services = fleet.get("/api/services").await.unwrap();
    services[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["version"].as_str().unwrap().to_owned(),
                b["load_balancer"][0]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(v, s)| ((*v).to_owned(), (*s).to_owned()))
        .collect()
}

/// Which backends answered with which version over `count` requests through HAProxy:
/// {"v1 web2", "v2 web1", …}.
async fn answers(fleet: &Fleet, count: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let answer = fleet.through_haproxy().await.unwrap();
        seen.insert(answer.trim().to_owned());
    }
    seen
}

/// The rollout page as the server renders it for `client`.
async fn page(client: &reqwest::Client, fleet: &Fleet, id: i64) -> String {
    let response = client
        .get(format!("{}/deployments/{id}", fleet.baton))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The audit log's entries (oldest first) as "actor action target detail".
async fn audit(fleet: &Fleet) -> Vec<String> {
    let page = fleet.get("/api/audit").await.unwrap();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|entry| {
            format!(
                "{} {} {} {}",
                entry["actor"].as_str().unwrap_or("-"),
                entry["action"].as_str().unwrap_or("-"),
                entry["target"].as_str().unwrap_or("-"),
                entry["detail"].as_str().unwrap_or("-"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_serves_alone_on_the_new_version_until_promoted_with_no_failed_request() {
    let fleet = spawn_fleet(FleetOptions {
        canary: Some(1),
        // A second for each check to answer, as the surge and rolling traces have: a check
        // missed on a loaded machine would show a server `UP 1/2`, not counted as UP.
        checks: Checks {
            timeout: Some(Duration::from_secs(1)),
            ..Checks::FAST
        },
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let trace = capacity_trace(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    let waiting = fleet
        .wait_until(id, "awaiting promotion", |d| {
            d["status"] == "awaiting_promote"
        })
        .await;

    assert_eq!(
        steps_of(&waiting, false).last().map(String::as_str),
        Some("web1 confirm_up ok")
    );
    assert!(
        !steps_of(&waiting, false)
            .iter()
            .any(|s| s.starts_with("web2")),
        "web2 not touched: {waiting:#}"
    );
    assert_eq!(
        backends(&fleet).await,
        owned(&[("v2", "UP"), ("v1", "UP"), ("v1", "UP")])
    );
    let seen = answers(&fleet, 30).await;
    assert!(
        seen.iter()
            .filter(|answer| answer.starts_with("v2 "))
            .all(|answer| answer == "v2 web1"),
        "only the canary answers with the new version: {seen:?}"
    );
    assert!(seen.contains("v2 web1"), "the canary serves: {seen:?}");
    let html = page(&fleet.client, &fleet, id).await;
    for expected in [
        ">Awaiting promotion</span>",
        "The canaries run v2 and serve: Promote rolls out the other backends; Abort puts the \
         canaries back.",
        ">Promote</button>",
    ] {
        assert!(
            html.contains(expected),
            "the page lacks {expected:?}:\n{html}"
        );
    }
    let viewer =
        authorized_client(&create_token(&fleet.database_url, "watcher", Role::Viewer).await);
    let html = page(&viewer, &fleet, id).await;
    assert!(html.contains("The canaries run v2 and serve"), "{html}");
    assert!(
        !html.contains(">Promote</button>"),
        "a viewer may not promote"
    );
    let (status, body) = post(
        &fleet.client,
        &fleet,
        &format!("/api/deployments/{id}/resume"),
    )
    .await;
    assert_eq!(status, 409, "resuming is not promoting: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("awaiting promotion"),
        "{body}"
    );

    let (status, body) = post(
        &fleet.client,
        &fleet,
        &format!("/api/deployments/{id}/promote"),
    )
    .await;
    assert_eq!((status, body["requested"].as_str()), (202, Some("promote")));
    let done = fleet
        .wait_until(id, "the end", |d| {
            d["status"]
                .as_str()
                .is_some_and(|status| !matches!(status, "awaiting_promote" | "running"))
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    // A canary rollout's capacity is a rolling one's: one backend short while each is replaced,
    // all of them serving while it waits for the promotion.
    let (min, changes) = capacity_summary(&trace.await.unwrap());
    eprintln!("capacity during a canary rollout of 3 backends: {changes}");
    assert_eq!(min, 2, "{changes}");

    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        done["promoted_by"], "tests",
        "the history names who promoted"
    );
    let html = page(&viewer, &fleet, id).await;
    assert!(
        html.contains("data-testid=\"promoted-by\">tests<"),
        "{html}"
    );
    assert!(!html.contains(">Promote</button>"), "{html}");
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v2").await;
    let (status, _) = post(
        &fleet.client,
        &fleet,
        &format!("/api/deployments/{id}/promote"),
    )
    .await;
    assert_eq!(status, 409, "already ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_awaiting_promotion_puts_the_canary_back_with_no_failed_request() {
    let fleet = spawn_fleet(FleetOptions {
        canary: Some(1),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_until(id, "awaiting promotion", |d| {
            d["status"] == "awaiting_promote"
        })
        .await;
    let (status, _) = post(
        &fleet.client,
        &fleet,
        &format!("/api/deployments/{id}/abort"),
    )
    .await;
    assert_eq!(status, 202);
    let done = fleet
        .wait_until(id, "the end", |d| d["status"] == "cancelled")
        .await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(
        done["reason"],
        "aborted by an operator before the canaries were promoted; web1 went back to v1, \
         and every backend is serving",
        "{done:#}"
    );
    assert_eq!(
        steps_of(&done, true).last().map(String::as_str),
        Some("web1 confirm_up ok"),
        "web1 was put back by the whole procedure"
    );
    assert_eq!(done["promoted_by"], Value::Null);
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_needing_approval_waits_refuses_its_requester_and_runs_once_another_approves() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        approval: Some("start"),
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    // The fleet's own client is the "tests" token: it requests.
    let (status, queued) = fleet.deploy("v2").await;
    assert_eq!(status, 202);
    assert_eq!(queued["needs_approval"], true, "{queued}");
    let id = queued["id"].as_i64().unwrap();
    let waiting = fleet
        .wait_until(id, "awaiting approval", |d| {
            d["status"] == "awaiting_approval"
        })
        .await;
    assert!(
        waiting["steps"].as_array().unwrap().is_empty(),
        "{waiting:#}"
    );
    assert_eq!(backends(&fleet).await, owned(&[("v1", "UP"), ("v1", "UP")]));
    // A second rollout queues behind it: the one awaiting approval holds the queue.
    let (_, second) = fleet.deploy("v3").await;
    assert_eq!(second["status"], "queued", "{second}");

    let (status, body) = post(
        &fleet.client,
        &fleet,
        &format!("/api/deployments/{id}/approve"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        format!(
            "rollout {id} was requested by tests: it needs the approval of another deployer or admin"
        )
    );
    let viewer =
        authorized_client(&create_token(&fleet.database_url, "watcher", Role::Viewer).await);
    let (status, _) = post(&viewer, &fleet, &format!("/api/deployments/{id}/approve")).await;
    assert_eq!(status, 403, "a viewer may not approve");
    assert_eq!(
        fleet.get(&format!("/api/deployments/{id}")).await.unwrap()["status"],
        "awaiting_approval"
    );

    let reviewer =
        authorized_client(&create_token(&fleet.database_url, "reviewer", Role::Deployer).await);
    let (status, body) = post(&reviewer, &fleet, &format!("/api/deployments/{id}/approve")).await;
    assert_eq!((status, body["requested"].as_str()), (202, Some("approve")));
    let done = fleet
        .wait_until(id, "the end", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(done["approved_by"], "reviewer");
    // Then the second one waits for its own approval; an abort cancels it untouched.
    let second = second["id"].as_i64().unwrap();
    fleet
        .wait_until(second, "awaiting approval", |d| {
            d["status"] == "awaiting_approval"
        })
        .await;
    let (status, _) = post(
        &fleet.client,
        &fleet,
        &format!("/api/deployments/{second}/abort"),
    )
    .await;
    assert_eq!(status, 202);
    let cancelled = fleet
        .wait_until(second, "cancelled", |d| d["status"] == "cancelled")
        .await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert!(
        cancelled["steps"].as_array().unwrap().is_empty(),
        "{cancelled:#}"
    );
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v2").await;
    let target = format!("rollout {id}");
    assert_eq!(
        audit(&fleet)
            .await
            .into_iter()
            .filter(|line| line.contains(&target) || line.contains("deploy web"))
            .collect::<Vec<_>>(),
        [
            format!("tests deploy web version v2, rollout {id}, awaiting approval"),
            format!("tests deploy web version v3, rollout {second}, awaiting approval"),
            format!(
                "tests approve_refused {target} rollout {id} was requested by tests: it needs the approval of another deployer or admin"
            ),
            format!("reviewer approve {target} -"),
        ]
    );
}
