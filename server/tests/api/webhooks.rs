//! Git push webhooks over real HTTP: each host's real payload (from server/tests/fixtures/webhooks, a copy of shared/fixtures/webhooks,
//! byte for byte) signed with a test secret, the refusals, the delivery log, redeliveries,
//! replays and coalescing, against a real SQLite database and a real `command` runtime.
//!
//! HAProxy is absent here, so rollouts fail at their capacity check; but their first step,
//! `prepare`, runs the runtime's real shell command with `BATON_VERSION`, which shows exactly
//! which versions reached a runtime.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use baton_server::auth::Role;

use crate::support::baton::{TestApp, spawn_app_with, spawn_app_with_on_postgres};
use crate::support::config::{Config, Runtime, Service, Webhook};
use crate::support::webhooks::{Host, fixture, signed};

const SECRET: &str = "a test secret, not It's a Secret to Everybody";
const WORKER_SECRET: &str = "the worker's own secret";

/// The fixtures' commits.
const GITHUB_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const GITLAB_SHA: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
const GITEA_SHA: &str = "67b56589a45103f891bdee7c0546e5d40bc02001";

/// `api` deploys pushes to master (the fixtures' branch) and tags `v*`; `worker` deploys main
/// only; `pinned` shares `api`'s secret (an organisation-wide hook) but deploys pushes from
/// GitHub's fixture repository only; `quiet` takes no webhooks. Their runtimes run shell
/// commands that do nothing but `api`'s prepare, which logs each version it is given (and
/// holds a version named `slow…` until the file `release` appears, at most 10 s).
fn config() -> Config {
    Config::edge()
        .service(
            Service::new("api")
                .runtime(Runtime::command().prepare(
                    r#"case "$BATON_VERSION" in slow*) i=0; while [ ! -e release ] && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i+1)); done;; esac; echo "$BATON_VERSION" >> prepared.log"#,
                ))
                .backend("s1", 18001)
                .webhook(Webhook::new("API_WEBHOOK_SECRET").branch("master").tags("v*")),
        )
        .service(
            Service::new("worker")
                .runtime(Runtime::command())
                .backend("w1", 18011)
                .webhook(Webhook::new("WORKER_WEBHOOK_SECRET").branch("main")),
        )
        .service(
            Service::new("pinned")
                .runtime(Runtime::command())
                .backend("p1", 18031)
                .webhook(
                    Webhook::new("API_WEBHOOK_SECRET")
                        .branch("master")
                        .repository("Codertocat/Hello-World"),
                ),
        )
        .service(
            Service::new("quiet")
                .runtime(Runtime::command())
                .backend("q1", 18021),
        )
}

const SECRETS: &[(&str, &str)] = &[
    ("API_WEBHOOK_SECRET", SECRET),
    ("WORKER_WEBHOOK_SECRET", WORKER_SECRET),
];

async fn spawn() -> TestApp {
    spawn_app_with(&config().toml(), SECRETS).await
}

async fn spawn_on_postgres() -> TestApp {
    spawn_app_with_on_postgres(&config().toml(), SECRETS).await
}

fn github_push() -> Vec<u8> {
    fixture("github/push__with-new-branch.payload.json")
}

/// A fixture with some top-level fields changed (for cases the fixtures do not cover).
fn edited(body: &[u8], changes: Value) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(body).unwrap();
    for (key, new) in changes.as_object().unwrap() {
        value[key] = new.clone();
    }
    serde_json::to_vec(&value).unwrap()
}

/// No Bitbucket fixture exists in shared/fixtures: these follow the shapes in Atlassian's
/// "Event payloads" pages (Cloud `repo:push`, Data Center `repo:refs_changed`).
fn bitbucket_cloud_push(branch: &str, hash: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "actor": {"type": "user", "display_name": "Codertocat"},
        "repository": {"type": "repository", "full_name": "team/hello-world", "name": "hello-world"},
        "push": {"changes": [{
            "old": {"type": "branch", "name": branch, "target": {"type": "commit", "hash": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}},
            "new": {"type": "branch", "name": branch, "target": {"type": "commit", "hash": hash,
                    "message": "Update README\n", "date": "2024-05-01T12:00:00+00:00"}},
            "created": false, "forced": false, "closed": false, "truncated": false,
            "commits": [{"hash": hash, "type": "commit", "message": "Update README\n"}]
        }]}
    }))
    .unwrap()
}

fn bitbucket_dc_push(branch: &str, hash: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventKey": "repo:refs_changed",
        "date": "2024-05-01T12:00:00+1000",
        "actor": {"name": "admin", "emailAddress": "admin@example.com", "id": 1, "displayName": "Administrator", "active": true, "slug": "admin", "type": "NORMAL"},
        "repository": {"slug": "hello-world", "id": 84, "name": "hello-world", "scmId": "git", "state": "AVAILABLE", "forkable": true,
                       "project": {"key": "PRJ", "id": 84, "name": "Project", "public": false, "type": "NORMAL"}, "public": false},
        "changes": [{
            "ref": {"id": format!("refs/heads/{branch}"), "displayId": branch, "type": "BRANCH"},
            "refId": format!("refs/heads/{branch}"),
            "fromHash": "ecddabb624f6f5ba43816f5926e580a5f680a932",
            "toHash": hash,
            "type": "UPDATE"
        }]
    }))
    .unwrap()
}

pub async fn post(
    app: &TestApp,
    service: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/hooks/{service}", app.address))
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/test")
        .body(body);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.expect("Baton answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("a JSON answer, got {status} {text:?}"));
    (status, value)
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

async fn deployments(app: &TestApp, service: &str) -> Vec<Value> {
    get_json(app, &format!("/api/deployments?service={service}")).await["deployments"]
        .as_array()
        .unwrap()
        .clone()
}

async fn deliveries(app: &TestApp, service: &str) -> Vec<Value> {
    get_json(app, &format!("/api/services/{service}/deliveries")).await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runtime_dir(app: &TestApp) -> PathBuf {
    app.dir.path().join("state/api")
}

/// The versions the `api` runtime's prepare command has seen.
fn prepared(app: &TestApp) -> String {
    std::fs::read_to_string(runtime_dir(app).join("prepared.log")).unwrap_or_default()
}

fn assert_reason(answer: &Value, needle: &str) {
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(needle), "{needle:?} not in {answer:#}");
}

#[tokio::test]
async fn a_github_push_to_the_branch_deploys_the_pushed_commit() {
    github_push_deploys(spawn().await).await;
}

#[tokio::test]
async fn on_postgres_a_github_push_to_the_branch_deploys_the_pushed_commit() {
    github_push_deploys(spawn_on_postgres().await).await;
}

async fn github_push_deploys(app: TestApp) {
    let body = github_push();
    let headers = signed(
        Host::GitHub,
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &body,
        SECRET,
    );
    let (status, answer) = post(&app, "api", &headers, body).await;

    assert_eq!(status, 202, "{answer:#}");
    assert_eq!(answer["verdict"], "deployed");
    assert_eq!(answer["version"], GITHUB_SHA);
    assert_eq!(answer["ref"], "refs/heads/master");
    assert_eq!(answer["provider"], "github");
    let rollout = answer["rollout"].as_i64().expect("the rollout id");
    assert_reason(&answer, &format!("deploys commit {GITHUB_SHA}"));

    let detail = get_json(&app, &format!("/api/deployments/{rollout}")).await;
    assert_eq!(detail["to_version"], GITHUB_SHA);
    assert_eq!(detail["trigger"], "webhook");
    assert_eq!(
        detail["requested_by"],
        "GitHub delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    // The pushed commit reached the runtime, as BATON_VERSION.
    eventually("the runtime prepares the pushed commit", || async {
        prepared(&app).contains(GITHUB_SHA)
    })
    .await;

    let log = deliveries(&app, "api").await;
    assert_eq!(log.len(), 1);
    let entry = &log[0];
    assert_eq!(entry["provider"], "github");
    assert_eq!(entry["event"], "push");
    assert_eq!(entry["delivery_id"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(entry["ref"], "refs/heads/master");
    assert_eq!(entry["sha"], GITHUB_SHA);
    assert_eq!(entry["verdict"], "deployed");
    assert_eq!(entry["status"], 202);
    assert_eq!(entry["rollout"], rollout);
    assert_eq!(entry["verified"], true);
    assert!(entry["received_at"].as_i64().unwrap() > 1_600_000_000_000);
    app.stop().await;
}

#[tokio::test]
async fn every_host_deploys_its_real_push() {
    let app = spawn().await;
    let cases = [
        (
            Host::GitLab,
            "Push Hook",
            fixture("gitlab/push-event__go-playground.json"),
            GITLAB_SHA,
            "gitlab",
        ),
        (
            Host::Gitea,
            "push",
            fixture("gitea/push-event__go-playground.json"),
            GITEA_SHA,
            "gitea",
        ),
        (
            Host::Forgejo,
            "push",
            // Gitea's body as it is was just sent: the same body would be a duplicate.
            edited(
                &fixture("gitea/push-event__go-playground.json"),
                json!({"before": GITHUB_SHA}),
            ),
            GITEA_SHA,
            "forgejo",
        ),
        (
            Host::BitbucketCloud,
            "repo:push",
            bitbucket_cloud_push("master", "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"),
            "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
            "bitbucket-cloud",
        ),
        (
            Host::BitbucketDataCenter,
            "repo:refs_changed",
            bitbucket_dc_push("master", "178864a7d521b6f5e720b386b2c2b0ef8563e0dc"),
            "178864a7d521b6f5e720b386b2c2b0ef8563e0dc",
            "bitbucket-dc",
        ),
    ];
    for (i, (host, event, body, sha, provider)) in cases.into_iter().enumerate() {
        let delivery = format!("delivery-{i}");
        let headers = signed(host, event, &delivery, &body, SECRET);
        let (status, answer) = post(&app, "api", &headers, body).await;
        assert_eq!(status, 202, "{host:?}: {answer:#}");
        assert_eq!(answer["verdict"], "deployed", "{host:?}: {answer:#}");
        assert_eq!(answer["version"], sha, "{host:?}");
        assert_eq!(answer["provider"], provider, "{host:?}");
        assert_eq!(answer["delivery_id"], delivery, "{host:?}");
        assert!(answer["rollout"].as_i64().is_some(), "{host:?}: {answer:#}");
    }
    let log = deliveries(&app, "api").await;
    let providers: Vec<&str> = log
        .iter()
        .map(|e| e["provider"].as_str().unwrap())
        .collect();
    assert_eq!(
        providers,
        [
            "bitbucket-dc",
            "bitbucket-cloud",
            "forgejo",
            "gitea",
            "gitlab"
        ],
        "newest first"
    );
    assert!(log.iter().all(|e| e["verdict"] == "deployed"));
    app.stop().await;
}

#[tokio::test]
async fn a_ping_is_answered_200_and_logged() {
    let app = spawn().await;
    let body = fixture("github/ping__payload.json");
    let headers = signed(Host::GitHub, "ping", "ping-1", &body, SECRET);
    let (status, answer) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["verdict"], "ping");
    assert_reason(&answer, "signature holds");

    // Bitbucket Data Center's "Test connection" is not signed.
    let (status, answer) = post(
        &app,
        "api",
        &[
            ("x-event-key".into(), "diagnostics:ping".into()),
            (
                "x-request-id".into(),
                "c7f1e0c6-5d1b-4a0a-9f1e-0d5f0e8c4a11".into(),
            ),
        ],
        b"{\"test\": true}".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["verdict"], "ping");
    assert!(deployments(&app, "api").await.is_empty());
    let log = deliveries(&app, "api").await;
    assert_eq!(log[0]["verified"], false);
    assert_eq!(log[1]["verdict"], "ping");
    assert_eq!(log[1]["verified"], true);
    app.stop().await;
}

#[tokio::test]
async fn bad_or_missing_signatures_are_refused_401_and_start_nothing() {
    let app = spawn().await;
    let body = github_push();
    let good = signed(Host::GitHub, "push", "d-1", &body, SECRET);

    // The body changed after signing (one byte: the branch).
    let tampered = String::from_utf8(body.clone())
        .unwrap()
        .replacen("refs/heads/master", "refs/heads/masteR", 1)
        .into_bytes();
    let (status, answer) = post(&app, "api", &good, tampered).await;
    assert_eq!(status, 401, "{answer:#}");
    assert_eq!(answer["verdict"], "rejected");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("does not match the body"),
        "{answer:#}"
    );

    // Signed with another secret.
    let wrong = signed(Host::GitHub, "push", "d-2", &body, "not the secret");
    let (status, _) = post(&app, "api", &wrong, body.clone()).await;
    assert_eq!(status, 401);

    // No signature at all.
    let unsigned: Vec<_> = good
        .iter()
        .filter(|(name, _)| name != "x-hub-signature-256")
        .cloned()
        .collect();
    let (status, answer) = post(&app, "api", &unsigned, body.clone()).await;
    assert_eq!(status, 401);
    assert_reason(&answer, "not signed");

    // GitLab with the wrong token; Gitea with a bare signature from another secret.
    let gitlab = fixture("gitlab/push-event__go-playground.json");
    let (status, _) = post(
        &app,
        "api",
        &signed(Host::GitLab, "Push Hook", "d-3", &gitlab, "nope"),
        gitlab,
    )
    .await;
    assert_eq!(status, 401);
    let gitea = fixture("gitea/push-event__go-playground.json");
    let (status, _) = post(
        &app,
        "api",
        &signed(Host::Gitea, "push", "d-4", &gitea, "nope"),
        gitea,
    )
    .await;
    assert_eq!(status, 401);
    // GitHub's legacy SHA-1 header alone is not enough.
    let (status, answer) = post(
        &app,
        "api",
        &[
            ("x-github-event".into(), "push".into()),
            ("x-hub-signature".into(), "sha1=0123".into()),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    assert_reason(&answer, "X-Hub-Signature-256");

    assert!(
        deployments(&app, "api").await.is_empty(),
        "nothing was queued"
    );
    assert!(prepared(&app).is_empty(), "nothing reached the runtime");
    let log = deliveries(&app, "api").await;
    assert_eq!(log.len(), 6);
    assert!(
        log.iter()
            .all(|e| e["status"] == 401 && e["verified"] == false)
    );

    // The forged deliveries did not claim "d-1": the real one still deploys.
    let (status, answer) = post(&app, "api", &good, body).await;
    assert_eq!(status, 202, "{answer:#}");
    assert_eq!(answer["verdict"], "deployed");
    app.stop().await;
}

#[tokio::test]
async fn a_redelivery_starts_nothing_new_and_names_the_earlier_verdict() {
    let app = spawn().await;
    let body = github_push();
    let headers = signed(Host::GitHub, "push", "same-delivery", &body, SECRET);
    let (status, first) = post(&app, "api", &headers, body.clone()).await;
    assert_eq!(status, 202);
    let rollout = first["rollout"].as_i64().unwrap();

    let (status, again) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 202, "{again:#}");
    assert_eq!(again["verdict"], "duplicate");
    assert_eq!(again["rollout"], rollout);
    assert_eq!(again["earlier"]["verdict"], "deployed");
    assert_eq!(again["earlier"]["id"], first["delivery"]);
    assert_reason(&again, "redelivery of delivery same-delivery");
    assert_reason(&again, &format!("rollout #{rollout}"));
    assert_reason(&again, "nothing new was started");

    assert_eq!(deployments(&app, "api").await.len(), 1, "one rollout only");
    let log = deliveries(&app, "api").await;
    assert_eq!(log[0]["verdict"], "duplicate");
    assert_eq!(log[1]["verdict"], "deployed");
    app.stop().await;
}

#[tokio::test]
async fn the_same_signed_body_under_another_id_no_id_or_another_host_starts_nothing() {
    let app = spawn().await;
    let body = github_push();
    let (status, first) = post(
        &app,
        "api",
        &signed(Host::GitHub, "push", "original", &body, SECRET),
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "{first:#}");
    assert_eq!(first["verdict"], "deployed");
    let rollout = first["rollout"].as_i64().unwrap();

    let without_id: Vec<(String, String)> = signed(Host::GitHub, "push", "unused", &body, SECRET)
        .into_iter()
        .filter(|(name, _)| name != "x-github-delivery")
        .collect();
    // The same body, signed with the same HMAC, under every other set of headers: a new id, no
    // id, and each other host's (their signature headers carry the very same hex).
    let resent = [
        (
            "a new delivery id",
            signed(Host::GitHub, "push", "new-id", &body, SECRET),
        ),
        ("no delivery id", without_id),
        (
            "Gitea's headers",
            signed(Host::Gitea, "push", "original", &body, SECRET),
        ),
        (
            "Forgejo's headers",
            signed(Host::Forgejo, "push", "f-1", &body, SECRET),
        ),
        (
            "Bitbucket Cloud's headers",
            signed(Host::BitbucketCloud, "repo:push", "b-1", &body, SECRET),
        ),
        (
            "Bitbucket Data Center's headers",
            signed(
                Host::BitbucketDataCenter,
                "repo:refs_changed",
                "b-2",
                &body,
                SECRET,
            ),
        ),
        (
            "GitLab's headers",
            signed(Host::GitLab, "Push Hook", "g-1", &body, SECRET),
        ),
    ];
    for (how, headers) in resent {
        let (status, again) = post(&app, "api", &headers, body.clone()).await;
        assert_eq!(status, 202, "{how}: {again:#}");
        assert_eq!(again["verdict"], "duplicate", "{how}: {again:#}");
        assert_eq!(again["earlier"]["id"], first["delivery"], "{how}");
        assert_eq!(again["rollout"], rollout, "{how}");
        assert_reason(&again, "the same body as GitHub delivery original");
        assert_reason(&again, &format!("rollout #{rollout}"));
        assert_reason(&again, "nothing new was started");
    }

    assert_eq!(deployments(&app, "api").await.len(), 1, "one rollout only");
    let log = deliveries(&app, "api").await;
    assert_eq!(log.len(), 8);
    assert!(
        log[..7]
            .iter()
            .all(|e| e["verdict"] == "duplicate" && e["verified"] == true),
        "{log:#?}"
    );
    eventually("the rollout prepares the pushed commit", || async {
        prepared(&app).contains(GITHUB_SHA)
    })
    .await;
    assert_eq!(prepared(&app).trim(), GITHUB_SHA, "prepared once");

    // Another service's log is its own: the body deploys there (worker ignores master).
    let (status, elsewhere) = post(
        &app,
        "worker",
        &signed(Host::GitHub, "push", "new-id", &body, WORKER_SECRET),
        body,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(elsewhere["verdict"], "ignored", "{elsewhere:#}");
    app.stop().await;
}

#[tokio::test]
async fn a_service_with_a_repository_ignores_pushes_from_any_other() {
    let app = spawn().await;
    // The GitHub fixture is a push to Codertocat/Hello-World: it deploys.
    let body = github_push();
    let (status, answer) = post(
        &app,
        "pinned",
        &signed(Host::GitHub, "push", "pinned-0", &body, SECRET),
        body,
    )
    .await;
    assert_eq!(status, 202, "{answer:#}");
    assert_eq!(answer["verdict"], "deployed", "{answer:#}");

    // Every other host's push to the same branch, from its own repository (the same secret,
    // so each is verified): ignored, naming both repositories.
    let others = [
        (
            Host::GitHub,
            "push",
            edited(
                &github_push(),
                json!({"repository": {"full_name": "Mallory/Hello-World", "name": "Hello-World"}}),
            ),
            "Mallory/Hello-World",
        ),
        (
            Host::GitLab,
            "Push Hook",
            fixture("gitlab/push-event__go-playground.json"),
            "mike/diaspora",
        ),
        (
            Host::Gitea,
            "push",
            fixture("gitea/push-event__go-playground.json"),
            "example/example",
        ),
        (
            Host::BitbucketCloud,
            "repo:push",
            bitbucket_cloud_push("master", GITHUB_SHA),
            "team/hello-world",
        ),
        (
            Host::BitbucketDataCenter,
            "repo:refs_changed",
            bitbucket_dc_push("master", GITHUB_SHA),
            "PRJ/hello-world",
        ),
    ];
    for (i, (host, event, body, repository)) in others.into_iter().enumerate() {
        let headers = signed(host, event, &format!("pinned-{}", i + 1), &body, SECRET);
        let (status, answer) = post(&app, "pinned", &headers, body).await;
        assert_eq!(status, 202, "{host:?}: {answer:#}");
        assert_eq!(answer["verdict"], "ignored", "{host:?}: {answer:#}");
        assert!(answer.get("rollout").is_none(), "{host:?}");
        assert_reason(
            &answer,
            &format!(
                "push from repository \"{repository}\": only pushes from Codertocat/Hello-World deploy"
            ),
        );
    }
    assert_eq!(deployments(&app, "pinned").await.len(), 1);
    let log = deliveries(&app, "pinned").await;
    assert_eq!(
        log[0]["ref"], "refs/heads/master",
        "the log still names the ref"
    );

    // The service's page says so.
    let html = app.get("/").await.text().await.unwrap();
    let section = html
        .split("data-testid=\"webhooks\" data-service=\"pinned\"")
        .nth(1)
        .expect("the pinned service shows its webhook section");
    assert!(
        section.contains("Only pushes from Codertocat/Hello-World deploy."),
        "{section}"
    );
    app.stop().await;
}

/// What an ignored push is, who sends it, its event and body, to which service, and why.
type IgnoredCase = (
    &'static str,
    Host,
    &'static str,
    Vec<u8>,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn deletions_other_branches_unmatched_tags_and_other_events_are_ignored_with_reasons() {
    let app = spawn().await;
    let zeros = "0".repeat(40);
    // (what, host, event, body, service, reason)
    let cases: Vec<IgnoredCase> = vec![
        (
            "a deleted branch",
            Host::GitHub,
            "push",
            edited(
                &github_push(),
                json!({"after": zeros, "deleted": true, "created": false}),
            ),
            "api",
            "branch master was deleted",
        ),
        (
            "a push to another branch (the fixture as it is: worker deploys main)",
            Host::GitHub,
            "push",
            github_push(),
            "worker",
            "push to branch master: only pushes to main deploy",
        ),
        (
            "a tag that does not match v*",
            Host::GitLab,
            "Tag Push Hook",
            edited(
                &fixture("gitlab/push-event__go-playground.json"),
                json!({"object_kind": "tag_push", "ref": "refs/tags/release-7"}),
            ),
            "api",
            "tag release-7 does not match the pattern v*",
        ),
        (
            "a deleted tag",
            Host::Gitea,
            "push",
            edited(
                &fixture("gitea/push-event__go-playground.json"),
                json!({"ref": "refs/tags/v2.0.0", "after": zeros}),
            ),
            "api",
            "tag v2.0.0 was deleted",
        ),
        (
            "another event",
            Host::GitHub,
            "issues",
            github_push(),
            "api",
            "event \"issues\" does not deploy",
        ),
        (
            "a Bitbucket push to another branch",
            Host::BitbucketCloud,
            "repo:push",
            bitbucket_cloud_push("feature/login", GITHUB_SHA),
            "api",
            "push to branch feature/login",
        ),
    ];
    for (i, (name, host, event, body, service, reason)) in cases.into_iter().enumerate() {
        let secret = if service == "worker" {
            WORKER_SECRET
        } else {
            SECRET
        };
        let headers = signed(host, event, &format!("ignored-{i}"), &body, secret);
        let (status, answer) = post(&app, service, &headers, body).await;
        assert_eq!(status, 202, "{name}: {answer:#}");
        assert_eq!(answer["verdict"], "ignored", "{name}: {answer:#}");
        assert!(answer.get("rollout").is_none(), "{name}");
        assert_reason(&answer, reason);
    }
    assert!(deployments(&app, "api").await.is_empty());
    assert!(deployments(&app, "worker").await.is_empty());
    let log = deliveries(&app, "api").await;
    assert_eq!(log.len(), 5);
    assert!(
        log.iter()
            .all(|e| e["verdict"] == "ignored" && e["status"] == 202)
    );
    assert_eq!(log[4]["ref"], "refs/heads/master");
    assert_eq!(log[4]["sha"], zeros);
    app.stop().await;
}

#[tokio::test]
async fn a_tag_matching_the_pattern_deploys_the_tag() {
    let app = spawn().await;
    let body = edited(
        &fixture("gitlab/push-event__go-playground.json"),
        json!({"object_kind": "tag_push", "ref": "refs/tags/v1.4.0"}),
    );
    let headers = signed(Host::GitLab, "Tag Push Hook", "tag-1", &body, SECRET);
    let (status, answer) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 202, "{answer:#}");
    assert_eq!(answer["verdict"], "deployed");
    assert_eq!(answer["version"], "v1.4.0");
    let rollout = answer["rollout"].as_i64().unwrap();
    let detail = get_json(&app, &format!("/api/deployments/{rollout}")).await;
    assert_eq!(detail["to_version"], "v1.4.0");
    app.stop().await;
}

#[tokio::test]
async fn shell_metacharacters_in_a_ref_or_sha_never_reach_the_runtime() {
    let app = spawn().await;
    let hostile_tags = [
        "v1$(touch pwned)",
        "v1;touch pwned",
        "v1`touch pwned`",
        "v1|touch pwned",
        "v1&&touch${IFS}pwned",
    ];
    for (i, tag) in hostile_tags.iter().enumerate() {
        let body = edited(&github_push(), json!({"ref": format!("refs/tags/{tag}")}));
        let headers = signed(Host::GitHub, "push", &format!("tag-{i}"), &body, SECRET);
        let (status, answer) = post(&app, "api", &headers, body).await;
        assert_eq!(status, 202, "{tag}: {answer:#}");
        assert_eq!(answer["verdict"], "ignored", "{tag}: {answer:#}");
        assert_reason(&answer, "cannot be a version");
    }
    for (i, sha) in ["$(touch pwned)", "6113728f;touch pwned", "`touch pwned`"]
        .iter()
        .enumerate()
    {
        let body = edited(&github_push(), json!({"after": sha}));
        let headers = signed(Host::GitHub, "push", &format!("sha-{i}"), &body, SECRET);
        let (status, answer) = post(&app, "api", &headers, body).await;
        assert_eq!(status, 400, "{sha}: {answer:#}");
        assert_eq!(answer["verdict"], "rejected");
        assert_reason(&answer, "is not a git commit id");
    }
    assert!(
        deployments(&app, "api").await.is_empty(),
        "no rollout was queued"
    );

    // A clean push afterwards does reach the runtime's prepare command: it would have run.
    let body = github_push();
    let headers = signed(Host::GitHub, "push", "clean", &body, SECRET);
    let (status, _) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 202);
    eventually("the clean push is prepared", || async {
        prepared(&app).contains(GITHUB_SHA)
    })
    .await;
    assert_eq!(
        prepared(&app).trim(),
        GITHUB_SHA,
        "only the clean version was prepared"
    );
    assert!(!runtime_dir(&app).join("pwned").exists());
    assert!(!app.dir.path().join("pwned").exists());
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_with_the_parser_s_reason() {
    let app = spawn().await;
    let body = b"{\"ref\": \"refs/heads/master\", \"after\": ".to_vec();
    let headers = signed(Host::GitHub, "push", "broken", &body, SECRET);
    let (status, answer) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 400, "{answer:#}");
    assert_eq!(answer["verdict"], "rejected");
    assert_reason(&answer, "malformed GitHub push payload");
    assert_reason(&answer, "EOF");

    // A webhook set to send form data is told to send JSON.
    let body = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmaster%22%7D".to_vec();
    let headers = signed(Host::GitHub, "push", "form", &body, SECRET);
    let response = app
        .client
        .post(format!("{}/hooks/api", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .headers(
            headers
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                .collect(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_reason(&answer, "set its content type to application/json");
    assert!(deployments(&app, "api").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn().await;
    let big = vec![b' '; 1024 * 1024 + 1];
    let headers = signed(Host::GitHub, "push", "big", &big, SECRET);

    // Streamed without a length: Baton counts, stops at the limit and says why in JSON.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let mut request = app
        .client
        .post(format!("{}/hooks/api", app.address))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
    for (name, value) in &headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 413);
    let answer: Value = response.json().await.expect("a JSON answer");
    assert_eq!(answer["verdict"], "rejected");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("expected at most 1048576 bytes"),
        "{answer:#}"
    );

    // With a Content-Length over the limit, the request is refused before it is read.
    let response = app
        .client
        .post(format!("{}/hooks/api", app.address))
        .header("x-github-event", "push")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(deployments(&app, "api").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_service_without_a_secret_is_403_and_an_unknown_one_404() {
    let app = spawn().await;
    let body = github_push();
    let headers = signed(Host::GitHub, "push", "q-1", &body, SECRET);
    let (status, answer) = post(&app, "quiet", &headers, body.clone()).await;
    assert_eq!(status, 403, "{answer:#}");
    assert_reason(&answer, "takes no webhooks");
    assert_reason(&answer, "[service.webhook]");
    assert_reason(&answer, "secret_env");

    let (status, answer) = post(&app, "nosuch", &headers, body.clone()).await;
    assert_eq!(status, 404, "{answer:#}");
    assert_reason(&answer, "no service is named \"nosuch\"");

    // Headers no git host sends.
    let (status, answer) = post(
        &app,
        "api",
        &[("x-custom-event".into(), "push".into())],
        body,
    )
    .await;
    assert_eq!(status, 400, "{answer:#}");
    assert_reason(&answer, "cannot tell which git host");
    assert!(deployments(&app, "quiet").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn pushes_while_a_rollout_is_queued_coalesce_into_it_with_the_newest_commit() {
    let app = spawn().await;
    // A rollout whose prepare step waits (for the `release` file): it keeps running.
    let response = app
        .client
        .post(format!("{}/api/services/api/deployments", app.address))
        .json(&json!({"version": "slow-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let running: Value = response.json().await.unwrap();
    let running = running["id"].as_i64().unwrap();
    eventually("the first rollout runs", || async {
        get_json(&app, &format!("/api/deployments/{running}")).await["status"] == "running"
    })
    .await;
    // Running is not yet preparing: as it begins, a rollout first asks HAProxy which servers
    // are backups. Its prepare has begun once the runtime has made its folder.
    eventually("the first rollout prepares", || async {
        runtime_dir(&app).exists()
    })
    .await;

    let first = github_push();
    let (status, a) = post(
        &app,
        "api",
        &signed(Host::GitHub, "push", "push-a", &first, SECRET),
        first,
    )
    .await;
    assert_eq!(status, 202, "{a:#}");
    assert_eq!(a["rollout_status"], "queued");
    assert!(a.get("coalesced").is_none());
    let queued = a["rollout"].as_i64().unwrap();
    assert_ne!(queued, running);

    let second = fixture("gitea/push-event__go-playground.json");
    let (status, b) = post(
        &app,
        "api",
        &signed(Host::Gitea, "push", "push-b", &second, SECRET),
        second,
    )
    .await;
    assert_eq!(status, 202, "{b:#}");
    assert_eq!(b["verdict"], "deployed");
    assert_eq!(
        b["rollout"], queued,
        "the queued rollout took the newer commit"
    );
    assert_eq!(b["coalesced"], true);
    assert_reason(&b, "was still queued");

    let all = deployments(&app, "api").await;
    assert_eq!(all.len(), 2, "one running, one queued: {all:#?}");
    let waiting: Vec<&Value> = all.iter().filter(|d| d["status"] == "queued").collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["id"], queued);
    assert_eq!(waiting[0]["to_version"], GITEA_SHA);
    assert_eq!(waiting[0]["requested_by"], "Gitea delivery push-b");

    std::fs::write(runtime_dir(&app).join("release"), "").unwrap();
    eventually(
        "the coalesced rollout prepares the newest commit",
        || async { prepared(&app).contains(GITEA_SHA) },
    )
    .await;
    assert!(
        !prepared(&app).contains(GITHUB_SHA),
        "the older push never reached the runtime"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_push_never_rewrites_a_rollout_that_a_person_queued_it_queues_after_it() {
    let app = spawn().await;
    let deploy = |version: &'static str| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(format!("{}/api/services/api/deployments", app.address))
                .json(&json!({ "version": version }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap()
        }
    };
    let queued = |services: Value| {
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "api")
            .unwrap()["queued"]
            .clone()
    };
    assert_eq!(queued(get_json(&app, "/api/services").await), 0);
    // The first rollout waits in its prepare step (for the `release` file) and keeps running.
    let running = deploy("slow-1").await;
    eventually("the first rollout runs", || async {
        get_json(&app, &format!("/api/deployments/{running}")).await["status"] == "running"
    })
    .await;
    let asked = deploy("v7").await;

    let body = github_push();
    let (status, push) = post(
        &app,
        "api",
        &signed(Host::GitHub, "push", "after-a-person", &body, SECRET),
        body,
    )
    .await;
    assert_eq!(status, 202, "{push:#}");
    assert_eq!(push["verdict"], "deployed");
    assert!(push.get("coalesced").is_none(), "{push:#}");
    let pushed = push["rollout"].as_i64().unwrap();
    assert!(pushed > asked, "the push queued after the person's rollout");

    assert_eq!(
        queued(get_json(&app, "/api/services").await),
        2,
        "the person's rollout and the push's wait"
    );
    let person = get_json(&app, &format!("/api/deployments/{asked}")).await;
    assert_eq!(person["to_version"], "v7", "{person:#}");
    assert_eq!(person["trigger"], "api");
    assert_eq!(person["status"], "queued");

    // A second push may take the place of the first push's rollout, still behind the person's.
    let second = fixture("gitea/push-event__go-playground.json");
    let (_, newer) = post(
        &app,
        "api",
        &signed(Host::Gitea, "push", "newer", &second, SECRET),
        second,
    )
    .await;
    assert_eq!(newer["rollout"], pushed, "{newer:#}");
    assert_eq!(newer["coalesced"], true);

    std::fs::write(runtime_dir(&app).join("release"), "").unwrap();
    eventually("both queued rollouts run, the person's first", || async {
        prepared(&app).contains(GITEA_SHA)
    })
    .await;
    let order = prepared(&app);
    let v7 = order.find("v7").expect("v7 was prepared");
    assert!(v7 < order.find(GITEA_SHA).unwrap(), "{order}");
    app.stop().await;
}

#[tokio::test]
async fn a_replay_processes_the_stored_delivery_again() {
    replay_processes_the_stored_delivery(spawn().await).await;
}

#[tokio::test]
async fn on_postgres_a_replay_processes_the_stored_delivery_again() {
    replay_processes_the_stored_delivery(spawn_on_postgres().await).await;
}

async fn replay_processes_the_stored_delivery(app: TestApp) {
    let body = fixture("gitlab/push-event__go-playground.json");
    let headers = signed(Host::GitLab, "Push Hook", "replay-me", &body, SECRET);
    let (status, first) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 202);
    let delivery = first["delivery"].as_i64().unwrap();
    eventually("the first rollout ends", || async {
        let all = deployments(&app, "api").await;
        all.iter().all(|d| d["finished_at"].is_i64())
    })
    .await;

    let response = app
        .client
        .post(format!("{}/api/deliveries/{delivery}/replay", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed["verdict"], "deployed", "{replayed:#}");
    assert_eq!(replayed["version"], GITLAB_SHA);
    assert_ne!(
        replayed["rollout"], first["rollout"],
        "a replay is not a redelivery"
    );
    let rollout = replayed["rollout"].as_i64().unwrap();
    let detail = get_json(&app, &format!("/api/deployments/{rollout}")).await;
    assert_eq!(
        detail["requested_by"],
        format!("replay of GitLab delivery #{delivery}")
    );

    let log = deliveries(&app, "api").await;
    assert_eq!(log[0]["replay_of"], delivery);
    assert_eq!(log[0]["delivery_id"], "replay-me");
    assert_eq!(log[0]["verdict"], "deployed");

    // Unverified deliveries cannot be replayed; unknown ids are 404.
    let forged = signed(Host::GitLab, "Push Hook", "forged", b"{}", "wrong");
    let (_, refused) = post(&app, "api", &forged, b"{}".to_vec()).await;
    let refused = refused["delivery"].as_i64().unwrap();
    let response = app
        .client
        .post(format!("{}/api/deliveries/{refused}/replay", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("did not hold"),
        "{error:#}"
    );
    let response = app
        .client
        .post(format!("{}/api/deliveries/999999/replay", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // GitLab's token is the secret itself: it is in no answer and nowhere in the database.
    app.client
        .get(format!("{}/alive", app.address))
        .send()
        .await
        .unwrap();
    let stored = app.stored_bytes();
    assert!(!stored.is_empty());
    // As it is, and as a PostgreSQL dump shows bytes (a kept body is `bytea`, in hex).
    for needle in [SECRET.to_owned(), hex::encode(SECRET)] {
        let needle = needle.as_bytes();
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "the secret is in the database"
        );
    }
    assert!(!first.to_string().contains(SECRET) && !replayed.to_string().contains(SECRET));
    app.stop().await;
}

#[tokio::test]
async fn a_replay_from_the_ui_is_audited_as_the_api_s_naming_the_admin() {
    let app = spawn().await;
    let body = fixture("github/ping__payload.json");
    let (status, answer) = post(
        &app,
        "api",
        &signed(Host::GitHub, "ping", "audited-ping", &body, SECRET),
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer:#}");
    let delivery = answer["delivery"].as_i64().unwrap();
    let admin = app.token("ui-admin", Role::Admin).await;

    // The UI's Replay button calls this server function.
    let response = app
        .anonymous
        .post(format!("{}/rpc/replay_delivery", app.address))
        .bearer_auth(&admin)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(format!("id={delivery}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed["verdict"], "ping", "{replayed:#}");
    let response = app
        .anonymous
        .post(format!("{}/api/deliveries/{delivery}/replay", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let audit = get_json(&app, "/api/audit?action=webhook_replay").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "one entry per replay: {audit:#}");
    for entry in entries {
        assert_eq!(entry["actor"], "ui-admin", "{entry:#}");
        assert_eq!(entry["actor_kind"], "token", "{entry:#}");
        assert_eq!(entry["target"], format!("delivery {delivery}"), "{entry:#}");
        assert_eq!(entry["detail"], "ping", "{entry:#}");
        assert!(
            entry["address"].as_str().unwrap().starts_with("127.0.0.1"),
            "{entry:#}"
        );
    }

    // A deployer's call of the server function is refused, and audited as nothing.
    let deployer = app.token("ui-deployer", Role::Deployer).await;
    let response = app
        .anonymous
        .post(format!("{}/rpc/replay_delivery", app.address))
        .bearer_auth(&deployer)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={delivery}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let audit = get_json(&app, "/api/audit?action=webhook_replay").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn the_delivery_log_pages_newest_first() {
    let app = spawn().await;
    let body = github_push();
    for i in 0..5 {
        let headers = signed(
            Host::GitHub,
            "push",
            &format!("page-{i}"),
            &body,
            WORKER_SECRET,
        );
        let (status, _) = post(&app, "worker", &headers, body.clone()).await;
        assert_eq!(status, 202);
    }
    let page = get_json(&app, "/api/services/worker/deliveries?limit=2").await;
    let ids: Vec<&str> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["page-4", "page-3"]);
    let before = page["next_before"].as_i64().unwrap();
    let page = get_json(
        &app,
        &format!("/api/services/worker/deliveries?limit=2&before={before}"),
    )
    .await;
    assert_eq!(page["deliveries"][0]["delivery_id"], "page-2");
    assert!(
        deliveries(&app, "api").await.is_empty(),
        "each service has its own log"
    );
    let response = app.get("/api/services/nosuch/deliveries").await;
    assert_eq!(response.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_shows_the_webhook_url_what_to_paste_and_the_deliveries() {
    let app = spawn().await;
    let body = github_push();
    let headers = signed(Host::GitHub, "push", "dash-delivery-1", &body, SECRET);
    let (status, _) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 202);

    let html = app.get("/").await.text().await.unwrap();
    let webhooks = html
        .split("data-testid=\"webhooks\" data-service=\"api\"")
        .nth(1)
        .expect("the api service shows its webhook section");
    for expected in [
        "/hooks/api",
        "application/json",
        "API_WEBHOOK_SECRET",
        "GitHub",
        "GitLab",
        "dash-delivery-1",
    ] {
        assert!(
            webhooks.contains(expected),
            "the webhook section lacks {expected:?}"
        );
    }
    assert!(
        !webhooks.contains(SECRET),
        "the secret's value never reaches a page"
    );
}

#[tokio::test]
async fn a_push_to_a_service_that_needs_approval_waits_and_any_deployer_may_approve_it() {
    let app = spawn_app_with(
        &Config::edge()
            .service(
                Service::new("gated")
                    .approval("start")
                    .runtime(Runtime::command())
                    .backend("g1", 18041)
                    .webhook(Webhook::new("API_WEBHOOK_SECRET").branch("master")),
            )
            .toml(),
        SECRETS,
    )
    .await;
    let push = github_push();
    let (status, answer) = post(
        &app,
        "gated",
        &signed(Host::GitHub, "push", "push-g", &push, SECRET),
        push,
    )
    .await;
    assert_eq!(status, 202, "{answer:#}");
    assert_eq!(answer["rollout_status"], "awaiting_approval", "{answer:#}");
    let id = answer["rollout"].as_i64().unwrap();
    eventually("the push's rollout awaits approval", || async {
        get_json(&app, &format!("/api/deployments/{id}")).await["status"] == "awaiting_approval"
    })
    .await;

    // A push has no person behind it: the token that approves is not its requester.
    let response = app
        .client
        .post(format!("{}/api/deployments/{id}/approve", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    eventually("approved", || async {
        get_json(&app, &format!("/api/deployments/{id}")).await["approved_by"] == "tests"
    })
    .await;
    let audit = get_json(&app, "/api/audit?action=deploy").await;
    assert_eq!(
        audit["entries"][0]["detail"],
        format!("version {GITHUB_SHA}, rollout {id}, awaiting approval"),
        "{audit:#}"
    );
    assert_eq!(audit["entries"][0]["actor_kind"], "webhook", "{audit:#}");
    app.stop().await;
}
