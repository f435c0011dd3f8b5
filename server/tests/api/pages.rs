//! The server-rendered pages and Baton's own health endpoint.

use std::time::{Duration, Instant};

use baton_server::auth::Role;

use crate::support::baton::{TestApp, spawn_app, spawn_app_on_postgres, spawn_app_with};
use crate::support::config::{Auth, Config, Runtime, Service, Webhook};
use crate::support::webhooks::{Host, fixture, signed};
use crate::webhooks::post;

/// `api` takes signed webhooks, and its rollouts wait in `prepare` until the file `release`
/// appears in its state folder (at most 20 s), so a test can act on a rollout mid-step.
fn held_config() -> Config {
    Config::edge().service(
        Service::new("api")
            .runtime(Runtime::command().prepare(
                r#"i=0; while [ ! -e release ] && [ "$i" -lt 400 ]; do sleep 0.05; i=$((i+1)); done"#,
            ))
            .backend("s1", 18001)
            .webhook(Webhook::new("API_WEBHOOK_SECRET").branch("master")),
    )
}

const WEBHOOK_SECRET: &str = "the pages tests' webhook secret";

async fn spawn_held() -> TestApp {
    spawn_app_with(
        &held_config().toml(),
        &[("API_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    )
    .await
}

#[tokio::test]
async fn alive_answers_200_when_the_database_does() {
    let app = spawn_app().await;
    let response = app.get("/alive").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");
    assert!(
        app.database_file().exists(),
        "the SQLite file is created next to the config"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_services_page_lists_the_configured_services_server_side() {
    let app = spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    for expected in [
        "<title>Services · Baton</title>",
        "data-service=\"api\"",
        "data-service=\"worker\"",
        "127.0.0.1:18002",
        "Showing 2 of 2 services",
        "/pkg/baton.wasm",
        "/pkg/baton.js",
        "href=\"/deployments\"",
        concat!("Baton ", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(
            html.contains(expected),
            "the page lacks {expected:?}:\n{html}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_server_function_returns_the_services_as_json() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/rpc/list_services", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let services: serde_json::Value = response.json().await.unwrap();
    assert_eq!(services[0]["name"], "api");
    assert_eq!(services[0]["backends"][1]["name"], "s2");
    assert_eq!(services[1]["name"], "worker");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_page_is_a_404_in_the_shell() {
    let app = spawn_app().await;
    let response = app.get("/no/such/page").await;
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("There is no page at this address")
    );
    app.stop().await;
}

#[tokio::test]
async fn pages_are_compressed_for_clients_that_ask() {
    let app = spawn_app().await;
    // A client that does not decompress by itself, so the header stays visible.
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let response = client
        .get(format!("{}/", app.address))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    app.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/rpc/list_services", app.address))
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    app.stop().await;
}

/// Polls the API until rollout `id` has ended; returns it.
async fn finished(app: &TestApp, id: i64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let deployment: serde_json::Value = app
            .get(&format!("/api/deployments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if !matches!(
            deployment["status"].as_str(),
            Some("queued" | "running" | "paused")
        ) {
            return deployment;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout {id} did not end: {deployment:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn deploy(app: &TestApp, service: &str, version: &str) -> i64 {
    let response = app
        .client
        .post(format!(
            "{}/api/services/{service}/deployments",
            app.address
        ))
        .json(&serde_json::json!({ "version": version }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    body["id"].as_i64().unwrap()
}

fn assert_contains(html: &str, expected: &[&str]) {
    for expected in expected {
        assert!(
            html.contains(expected),
            "the page lacks {expected:?}:\n{html}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_shows_each_backend_and_says_when_the_load_balancer_does_not_answer() {
    let app = spawn_app().await;
    let html = app.get("/").await.text().await.unwrap();
    assert_contains(
        &html,
        &[
            "data-backend=\"s1\"",
            "data-backend=\"s2\"",
            "data-backend=\"w1\"",
            "v1 on both backends",
            "v1 on its backend",
            // No HAProxy listens in these tests: the page says so instead of showing nothing.
            "The load balancer did not answer",
            "role=\"alert\"",
            ">unknown<",
            ">Redeploy api</button>",
            ">Redeploy worker</button>",
            "aria-expanded=\"false\"",
        ],
    );
    app.stop().await;
}

#[tokio::test]
async fn the_history_says_when_there_are_no_deployments_yet() {
    let app = spawn_app().await;
    let response = app.get("/deployments").await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert_contains(
        &html,
        &[
            "<title>Deployments · Baton</title>",
            "No deployments yet",
            // The filters are a plain GET form: they work before the wasm loads.
            "name=\"service\"",
            "<option value=\"worker\"",
            "name=\"status\"",
            "<option value=\"rolled_back\"",
        ],
    );
    assert!(!html.contains("data-deployment-id"));
    app.stop().await;
}

#[tokio::test]
async fn the_history_is_rendered_on_the_server_filtered_by_the_address() {
    let app = spawn_app().await;
    let first = deploy(&app, "api", "v2").await;
    let first = finished(&app, first).await;
    let second = deploy(&app, "worker", "v3").await;
    finished(&app, second).await;
    let status = first["status"].as_str().unwrap().to_owned();

    let html = app.get("/deployments").await.text().await.unwrap();
    let newer = html
        .find(&format!("data-deployment-id=\"{second}\""))
        .unwrap();
    let older = html
        .find(&format!("data-deployment-id=\"{}\"", first["id"]))
        .unwrap();
    assert!(newer < older, "newest first");
    assert_contains(
        &html,
        &[
            &format!("href=\"/deployments/{second}\""),
            "v1 → v2",
            "v1 → v3",
            ">API<",
            // UTC on the server; the browser rewrites it in its own time zone.
            "<time datetime=\"",
            " UTC</time>",
        ],
    );

    let html = app
        .get("/deployments?service=worker")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("data-deployment-id=\"{second}\"")));
    assert!(!html.contains(&format!("data-deployment-id=\"{}\"", first["id"])));
    assert_contains(
        &html,
        &["<option value=\"worker\" selected", "Clear filters"],
    );

    let other = if status == "succeeded" {
        "cancelled"
    } else {
        "succeeded"
    };
    let html = app
        .get(&format!("/deployments?status={other}"))
        .await
        .text()
        .await
        .unwrap();
    assert_contains(&html, &["No deployments match these filters"]);

    let html = app.get("/deployments?limit=1").await.text().await.unwrap();
    assert_contains(
        &html,
        &[&format!(
            "href=\"/deployments?limit=1&amp;before={second}\""
        )],
    );
    app.stop().await;
}

#[tokio::test]
async fn the_rollout_page_is_complete_before_the_wasm_loads() {
    rollout_page_is_complete(spawn_app().await).await;
}

#[tokio::test]
async fn on_postgres_the_rollout_page_is_complete_before_the_wasm_loads() {
    rollout_page_is_complete(spawn_app_on_postgres().await).await;
}

async fn rollout_page_is_complete(app: TestApp) {
    let id = deploy(&app, "api", "v2").await;
    let deployment = finished(&app, id).await;

    let response = app.get(&format!("/deployments/{id}")).await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    let status = deployment["status"].as_str().unwrap();
    assert_contains(
        &html,
        &[
            &format!("<title>Rollout #{id} · api · Baton</title>"),
            &format!("data-status=\"{status}\""),
            "data-row=\"s1\"",
            "data-row=\"s2\"",
            "data-testid=\"result\"",
            ">Pause</button>",
            ">Resume</button>",
            ">Abort</button>",
        ],
    );
    // No HAProxy answers in these tests, so the rollout fails: its reason and the failed
    // step's detail are on the page, as they are in the API.
    let shown = |text: &str| {
        let escaped = text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        html.contains(text) || html.contains(&escaped)
    };
    let steps = deployment["steps"].as_array().unwrap();
    for step in steps {
        assert_contains(&html, &[&format!("data-step-id=\"{}\"", step["id"])]);
    }
    let failed = steps
        .iter()
        .find(|step| step["outcome"] == "failed")
        .unwrap_or_else(|| panic!("a step failed: {deployment:#}"));
    let detail = failed["detail"].as_str().expect("a failed step says why");
    assert!(
        shown(detail),
        "the step's detail {detail:?} is missing:\n{html}"
    );
    let reason = deployment["reason"]
        .as_str()
        .expect("a failed rollout says why");
    assert!(shown(reason), "the reason {reason:?} is missing:\n{html}");
    // The Gantt chart: a lane per backend, the failed step a red bar in it.
    assert_contains(
        &html,
        &[
            "data-testid=\"gantt\"",
            "data-backend=\"s1\"",
            "data-backend=\"s2\"",
            &format!(
                "data-step=\"{}\" data-outcome=\"failed\"",
                failed["step"].as_str().unwrap()
            ),
        ],
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rollouts_traffic_is_kept_with_it_for_viewers_and_drawn_on_its_page() {
    let app = spawn_app().await;
    let id = deploy(&app, "api", "v2").await;
    finished(&app, id).await;
    // No HAProxy answers in these tests, so the worker sampled nothing: the samples are written
    // as the leader's sampler writes them.
    let store = app.cli_store().await;
    let served = |backend: &str, requests, errors_5xx| baton_server::store::BackendTraffic {
        backend: backend.to_owned(),
        requests,
        errors_5xx,
    };
    store
        .save_traffic(id, 1_000, &[served("s1", 20, 0), served("s2", 22, 0)])
        .await
        .unwrap();
    store
        .save_traffic(id, 2_000, &[served("s1", 0, 0), served("s2", 48, 0)])
        .await
        .unwrap();

    let viewer = app.token("dashboard", Role::Viewer).await;
    let traffic = |id: i64| {
        app.anonymous
            .get(format!("{}/api/deployments/{id}/traffic", app.address))
            .bearer_auth(&viewer)
            .send()
    };
    let response = traffic(id).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let series = body["backends"].as_array().unwrap();
    let names: Vec<&str> = series
        .iter()
        .map(|s| s["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    let s2 = series[1]["points"].as_array().unwrap();
    assert_eq!(s2[0]["requests_per_s"], 22.0);
    assert_eq!(s2[1]["requests_per_s"], 24.0);
    assert_eq!(s2[1]["errors_5xx_per_s"], 0.0);
    assert!(s2[1]["at"].as_i64().unwrap() >= s2[0]["at"].as_i64().unwrap());

    let unknown = traffic(id + 100).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let anonymous = app
        .anonymous
        .get(format!("{}/api/deployments/{id}/traffic", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The page draws the kept samples before the wasm loads: a line per backend, the 5xx
    // line, and what was served in all.
    let html = app
        .get(&format!("/deployments/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert_contains(
        &html,
        &[
            "data-testid=\"traffic\"",
            "90 requests, 0 5xx",
            "data-samples=\"2\"",
            "class=\"errors\"",
        ],
    );
    for backend in ["s1", "s2"] {
        let lines = html
            .matches(&format!("<polyline data-backend=\"{backend}\""))
            .count();
        assert_eq!(lines, 2, "{backend}'s requests and 5xx lines:\n{html}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_rollout_is_a_404_that_says_so() {
    let app = spawn_app().await;
    let response = app.get("/deployments/999").await;
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("No rollout has id 999.")
    );
    let response = app.get("/deployments/latest").await;
    assert_eq!(response.status(), 404);
    app.stop().await;
}

/// `path` rendered for a caller holding a fresh token with `role`.
async fn page_as(app: &TestApp, role: Role, path: &str) -> String {
    // Token names are unique while live: number them.
    static TOKENS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = app.token(&format!("{role}-token-{n}"), role).await;
    let response = app
        .anonymous
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path} as a {role}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_login_page_is_a_plain_form_that_explains_a_refusal() {
    let app = spawn_app().await;
    let response = app
        .anonymous
        .get(format!(
            "{}/login?error=invalid&next=%2Fdeployments%2F3",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert_contains(
        &html,
        &[
            "<title>Sign in · Baton</title>",
            // Works without the wasm: a form the browser posts itself.
            "<form method=\"post\" action=\"/auth/login\"",
            "<input type=\"hidden\" name=\"next\" value=\"/deployments/3\"",
            "<label for=\"login-name\">User name</label>",
            "<label for=\"login-password\">Password</label>",
            "autocomplete=\"username\"",
            "autocomplete=\"current-password\"",
            "autofocus",
            "role=\"alert\"",
            "Wrong user name or password.",
            "aria-invalid=\"true\"",
        ],
    );
    // Nothing of the app for someone who is not signed in.
    for absent in ["aria-label=\"Main\"", "data-service=", "Sign out"] {
        assert!(!html.contains(absent), "the login page shows {absent:?}");
    }

    let html = app
        .anonymous
        .get(format!(
            "{}/login?error=throttled&retry_after=42&next=https://evil.example/",
            app.address
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_contains(
        &html,
        &[
            "Too many failed logins; try again in 42 s.",
            // Only a path on this site is carried on.
            "name=\"next\" value=\"/\"",
        ],
    );
    app.stop().await;
}

#[tokio::test]
async fn a_visitor_who_is_not_signed_in_is_sent_to_the_login_page() {
    let app = spawn_app().await;
    // The anonymous client follows redirects, as a browser does.
    let response = app
        .anonymous
        .get(format!("{}/deployments?service=api", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().path(), "/login");
    let html = response.text().await.unwrap();
    assert_contains(
        &html,
        &[
            "name=\"next\" value=\"/deployments?service=api\"",
            "Sign in to Baton",
        ],
    );
    assert!(!html.contains("data-deployment-id"));
    app.stop().await;
}

#[tokio::test]
async fn the_server_renders_only_the_buttons_the_callers_role_allows() {
    let app = spawn_app().await;

    let viewer = page_as(&app, Role::Viewer, "/").await;
    assert_contains(
        &viewer,
        &[
            "data-service=\"api\"",
            "data-backend=\"s1\"",
            "viewer-token",
            ">viewer</span>",
            "<form method=\"post\" action=\"/auth/logout\"",
            ">Sign out</button>",
        ],
    );
    for absent in ["Redeploy api", "Redeploy worker", "href=\"/audit\""] {
        assert!(!viewer.contains(absent), "a viewer is shown {absent:?}");
    }

    let deployer = page_as(&app, Role::Deployer, "/").await;
    assert_contains(&deployer, &[">Redeploy api</button>", ">deployer</span>"]);
    assert!(!deployer.contains("href=\"/audit\""));

    let admin = page_as(&app, Role::Admin, "/").await;
    assert_contains(
        &admin,
        &[
            ">Redeploy api</button>",
            "href=\"/audit\"",
            "href=\"/users\"",
            "href=\"/tokens\"",
        ],
    );

    // The rollout page: the controls for deployers, none for viewers.
    let id = deploy(&app, "api", "v2").await;
    finished(&app, id).await;
    let path = format!("/deployments/{id}");
    let viewer = page_as(&app, Role::Viewer, &path).await;
    assert_contains(&viewer, &["data-row=\"s1\""]);
    for absent in [">Pause</button>", ">Resume</button>", ">Abort</button>"] {
        assert!(!viewer.contains(absent), "a viewer is shown {absent:?}");
    }
    let deployer = page_as(&app, Role::Deployer, &path).await;
    assert_contains(&deployer, &[">Pause</button>", ">Abort</button>"]);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_rendered_for_admins_newest_first_and_filtered_by_the_address() {
    let app = spawn_app().await;
    let first = deploy(&app, "api", "v2").await;
    finished(&app, first).await;
    let second = deploy(&app, "worker", "v3").await;
    finished(&app, second).await;

    let html = page_as(&app, Role::Admin, "/audit").await;
    assert_contains(
        &html,
        &[
            "<title>Audit log · Baton</title>",
            "data-action=\"deploy\"",
            "data-actor=\"tests\"",
            &format!("version v2, rollout {first}"),
            &format!("version v3, rollout {second}"),
            // The filters are a plain GET form: they work before the wasm loads.
            "name=\"actor\"",
            "<option value=\"login_failed\"",
        ],
    );
    let newer = html.find(&format!("rollout {second}")).unwrap();
    let older = html.find(&format!("rollout {first}")).unwrap();
    assert!(newer < older, "newest first");

    let html = page_as(&app, Role::Admin, "/audit?action=login").await;
    assert_contains(
        &html,
        &[
            "No entries match these filters",
            "<option value=\"login\" selected",
        ],
    );
    let html = page_as(&app, Role::Admin, "/audit?action=deploy&limit=1").await;
    assert_contains(&html, &["action=deploy&amp;limit=1&amp;before="]);
    assert!(!html.contains(&format!("rollout {first}")));

    // Anyone else is refused the page by the server.
    let token = app.token("nosy", Role::Deployer).await;
    let response = app
        .anonymous
        .get(format!("{}/audit", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    app.stop().await;
}

/// GETs `path` as JSON with the admin token.
async fn json(app: &TestApp, path: &str) -> serde_json::Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Polls rollout `id` until `done` holds of it (at most 20 s); returns it.
async fn rollout_when(
    app: &TestApp,
    id: i64,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deployment = json(app, &format!("/api/deployments/{id}")).await;
        if done(&deployment) {
            return deployment;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id}: {what} not reached: {deployment:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pause_still_waiting_for_the_current_step_is_shown_on_a_fresh_page_load() {
    let app = spawn_held().await;
    let id = deploy(&app, "api", "v2").await;
    rollout_when(&app, id, "prepare running", |d| {
        d["status"] == "running" && d["steps"][0]["step"] == "prepare"
    })
    .await;
    let response = app
        .client
        .post(format!("{}/api/deployments/{id}/pause", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // What a reload gets: the API's rollout and the server-rendered page both carry it.
    let deployment = json(&app, &format!("/api/deployments/{id}")).await;
    assert_eq!(
        deployment["pending"],
        serde_json::json!({ "action": "pause", "by": "tests" }),
        "{deployment:#}"
    );
    for role in [Role::Viewer, Role::Deployer] {
        let html = page_as(&app, role, &format!("/deployments/{id}")).await;
        assert_contains(
            &html,
            &[
                "data-testid=\"pending\"",
                "Pause requested by tests: it takes effect once the current backend has finished.",
            ],
        );
    }

    // Once it took effect (between prepare and the first backend), it is no longer pending.
    std::fs::write(app.dir.path().join("state/api/release"), "").unwrap();
    let paused = rollout_when(&app, id, "paused", |d| d["status"] != "running").await;
    assert_eq!(paused["status"], "paused", "{paused:#}");
    assert_eq!(paused["pending"], serde_json::Value::Null);
    let html = page_as(&app, Role::Viewer, &format!("/deployments/{id}")).await;
    assert!(!html.contains("data-testid=\"pending\""), "{html}");

    // An abort of the paused rollout ends it at once; an ended rollout shows nothing pending.
    let response = app
        .client
        .post(format!("{}/api/deployments/{id}/abort", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ended = finished(&app, id).await;
    assert_eq!(ended["status"], "cancelled", "{ended:#}");
    assert_eq!(ended["pending"], serde_json::Value::Null);
    let html = page_as(&app, Role::Viewer, &format!("/deployments/{id}")).await;
    assert!(!html.contains("data-testid=\"pending\""), "{html}");
    app.stop().await;
}

#[tokio::test]
async fn only_admins_get_a_replay_button_in_the_server_rendered_delivery_log() {
    let app = spawn_held().await;
    // A signed GitHub ping: a verified delivery (so replayable) that starts no rollout.
    let body = fixture("github/ping__payload.json");
    let headers = signed(Host::GitHub, "ping", "pages-ping-1", &body, WEBHOOK_SECRET);
    let (status, answer) = post(&app, "api", &headers, body).await;
    assert_eq!(status, 200);
    let delivery = answer["delivery"].as_i64().expect("a logged delivery");
    let row = format!("data-delivery=\"{delivery}\"");
    let button = format!("data-replay=\"{delivery}\"");

    let admin = page_as(&app, Role::Admin, "/").await;
    let column = "<span class=\"visually-hidden\">Replay</span>";
    assert_contains(&admin, &[&row, &button, ">Replay</button>", column]);
    for role in [Role::Viewer, Role::Deployer] {
        let html = page_as(&app, role, "/").await;
        // The time the delivery arrived, for the browser to show in its own zone.
        assert_contains(&html, &[&row, "<time datetime=\""]);
        for absent in [button.as_str(), "data-replay=", ">Replay</button>", column] {
            assert!(!html.contains(absent), "a {role} is sent {absent:?}");
        }
    }

    // Hiding the button is a courtesy: the server still refuses their replays.
    for role in [Role::Viewer, Role::Deployer] {
        let token = app.token(&format!("replay-{role}"), role).await;
        let response = app
            .anonymous
            .post(format!("{}/api/deliveries/{delivery}/replay", app.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "a {role}'s replay");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_webhook_url_in_the_setup_panel_is_on_the_public_origin_when_one_is_set() {
    let url = |html: &str| {
        let start = html
            .find("data-testid=\"webhook-url\">")
            .expect("the page shows a webhook URL");
        let rest = &html[start + "data-testid=\"webhook-url\">".len()..];
        rest[..rest.find('<').unwrap()].to_owned()
    };
    // Behind a proxy that rewrites Host, the public origin is the one git hosts can reach.
    let config = held_config()
        .auth(Auth::default().public_origin("HTTPS://Baton.Example.com/"))
        .toml();
    let app = spawn_app_with(&config, &[("API_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await;
    let html = page_as(&app, Role::Viewer, "/").await;
    assert_eq!(url(&html), "https://baton.example.com/hooks/api");
    app.stop().await;

    // Without one, the request's own host, and https as the auth layer sees it.
    let app = spawn_held().await;
    let html = page_as(&app, Role::Viewer, "/").await;
    assert_eq!(url(&html), format!("{}/hooks/api", app.address));
    let token = app.token("forwarded", Role::Viewer).await;
    let html = app
        .anonymous
        .get(format!("{}/", app.address))
        .bearer_auth(token)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let host = app.address.trim_start_matches("http://");
    assert_eq!(url(&html), format!("https://{host}/hooks/api"));
    app.stop().await;
}

/// The history's rows, in the order the page shows them.
fn shown_ids(html: &str) -> Vec<i64> {
    html.split("data-deployment-id=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
        .collect()
}

/// The `href` of the pager link whose text is `text`, unescaped.
fn pager_link(html: &str, text: &str) -> Option<String> {
    let nav = &html[html.find("class=\"pager\"")?..];
    let end = nav.find(&format!(">{text}</a>"))?;
    let start = nav[..end].rfind("href=\"")? + "href=\"".len();
    let href = &nav[start..end];
    Some(href[..href.find('"')?].replace("&amp;", "&"))
}

#[tokio::test]
async fn the_history_goes_older_then_newer_back_to_the_same_rows_keeping_the_filters() {
    let app = spawn_app().await;
    // Five rollouts of api (and one of worker, which the filter leaves out), one at a time so
    // each ends before the next is asked for.
    let mut api = Vec::new();
    for (service, version) in [
        ("api", "v2"),
        ("api", "v3"),
        ("worker", "v2"),
        ("api", "v4"),
        ("api", "v5"),
        ("api", "v6"),
    ] {
        let id = deploy(&app, service, version).await;
        let ended = finished(&app, id).await;
        if service == "api" {
            api.push((id, ended["status"].as_str().unwrap().to_owned()));
        }
    }
    let status = api[0].1.clone();
    assert!(
        api.iter().all(|(_, s)| *s == status),
        "every api rollout ends the same way here: {api:?}"
    );
    let api: Vec<i64> = api.into_iter().map(|(id, _)| id).collect();
    let start = format!("/deployments?service=api&status={status}&limit=2");

    let newest = page_as(&app, Role::Viewer, &start).await;
    assert_eq!(shown_ids(&newest), [api[4], api[3]]);
    assert_eq!(pager_link(&newest, "← Newer"), None, "the newest page");
    assert_eq!(pager_link(&newest, "← Newest"), None);

    let older = pager_link(&newest, "Older →").expect("an Older link");
    assert_eq!(
        older,
        format!(
            "/deployments?service=api&status={status}&limit=2&before={}",
            api[3]
        )
    );
    let middle = page_as(&app, Role::Viewer, &older).await;
    assert_eq!(shown_ids(&middle), [api[2], api[1]]);
    assert_eq!(
        pager_link(&middle, "← Newest").as_deref(),
        Some(start.as_str())
    );

    let newer = pager_link(&middle, "← Newer").expect("a Newer link");
    assert_eq!(
        newer,
        format!(
            "/deployments?service=api&status={status}&limit=2&after={}",
            api[2]
        )
    );
    let back = page_as(&app, Role::Viewer, &newer).await;
    assert_eq!(
        shown_ids(&back),
        shown_ids(&newest),
        "the same rows as before"
    );
    assert_eq!(pager_link(&back, "← Newer"), None, "the newest page again");
    assert_eq!(pager_link(&back, "Older →"), Some(older.clone()));

    // The oldest page goes back one page, not to the newest.
    let oldest = pager_link(&middle, "Older →").expect("an Older link");
    let oldest = page_as(&app, Role::Viewer, &oldest).await;
    assert_eq!(shown_ids(&oldest), [api[0]]);
    assert_eq!(pager_link(&oldest, "Older →"), None, "the oldest page");
    let newer = pager_link(&oldest, "← Newer").expect("a Newer link");
    let back = page_as(&app, Role::Viewer, &newer).await;
    assert_eq!(shown_ids(&back), shown_ids(&middle));

    // The JSON API pages the same way.
    let page = json(
        &app,
        &format!("/api/deployments?service=api&limit=2&after={}", api[0]),
    )
    .await;
    let ids: Vec<i64> = page["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [api[2], api[1]]);
    assert_eq!(page["prev_after"], api[2]);
    assert_eq!(page["next_before"], api[1]);
    app.stop().await;
}

#[tokio::test]
async fn the_history_filters_by_a_status_word_and_refuses_one_it_does_not_know() {
    let app = spawn_app().await;
    let id = deploy(&app, "api", "v2").await;
    let ended = finished(&app, id).await;
    let status = ended["status"].as_str().unwrap();
    let page = json(&app, &format!("/api/deployments?status={status}")).await;
    assert_eq!(page["deployments"][0]["id"], id);
    assert_eq!(page["deployments"][0]["status"], status);
    assert_eq!(page["deployments"][0]["trigger"], "api");
    let page = json(&app, "/api/deployments?status=queued").await;
    assert_eq!(page["deployments"], serde_json::json!([]));

    let response = app.get("/api/deployments?status=rolledback").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "unknown rollout status \"rolledback\": expected one of queued, running, paused, \
         awaiting_approval, awaiting_promote, succeeded, failed, rolled_back, cancelled"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_tokens_page_says_who_created_each_token_and_what_deleting_them_does() {
    let app = spawn_app().await;
    let created = app
        .client
        .post(format!("{}/api/tokens", app.address))
        .json(&serde_json::json!({ "name": "ci", "role": "deployer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let html = page_as(&app, Role::Admin, "/tokens").await;
    assert_contains(
        &html,
        &[
            "data-token=\"ci\"",
            // Made with the admin token the tests' client sends.
            "<td data-label=\"Created by\">tests</td>",
            "deleting that user revokes it",
        ],
    );
}

#[tokio::test]
async fn the_login_page_explains_a_sign_in_refused_while_baton_is_busy() {
    let app = spawn_app().await;
    let html = app
        .anonymous
        .get(format!("{}/login?error=busy&retry_after=1", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_contains(
        &html,
        &["Baton is busy checking other sign-ins; try again in 1 s."],
    );
}

/// The opening tag of the button labelled `label` in `html`.
fn button_tag<'a>(html: &'a str, label: &str) -> Option<&'a str> {
    let end = html.find(&format!(">{label}</button>"))?;
    let start = html[..end].rfind("<button")?;
    Some(&html[start..=end])
}

#[tokio::test]
async fn a_rollout_awaiting_approval_offers_approve_to_other_deployers_only() {
    let app = spawn_app_with(
        &Config::edge()
            .service(
                Service::new("gate")
                    .approval("start")
                    .runtime(Runtime::command())
                    .backend("g1", 18011)
                    .backend("g2", 18012),
            )
            .toml(),
        &[],
    )
    .await;
    let id = deploy(&app, "gate", "v2").await;
    rollout_when(&app, id, "awaiting approval", |d| {
        d["status"] == "awaiting_approval"
    })
    .await;
    let path = format!("/deployments/{id}");
    let waiting = "Awaiting approval: a deployer or admin other than tests approves it to begin. \
                   Nothing has been touched.";

    // The requester (the app's own "tests" token) sees the button, disabled, and why.
    let response = app.get(&path).await;
    assert_eq!(response.status(), 200);
    let mine = response.text().await.unwrap();
    assert_contains(
        &mine,
        &[
            "data-status=\"awaiting_approval\"",
            ">Awaiting approval</span>",
            waiting,
        ],
    );
    let approve = button_tag(&mine, "Approve").expect("an Approve button");
    assert!(approve.contains("disabled"), "{approve}");
    assert!(
        approve.contains("You requested this rollout: another deployer or admin must approve it"),
        "{approve}"
    );
    assert!(button_tag(&mine, "Promote").is_none(), "nothing to promote");

    let other = page_as(&app, Role::Deployer, &path).await;
    let approve = button_tag(&other, "Approve").expect("an Approve button");
    assert!(!approve.contains("disabled"), "{approve}");
    let viewer = page_as(&app, Role::Viewer, &path).await;
    assert_contains(&viewer, &[waiting]);
    assert!(
        button_tag(&viewer, "Approve").is_none(),
        "a viewer may not approve"
    );

    // Once another deployer approved, the page names them and offers Approve no more.
    let reviewer = app.token("reviewer", Role::Deployer).await;
    let response = app
        .anonymous
        .post(format!("{}/api/deployments/{id}/approve", app.address))
        .bearer_auth(reviewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    rollout_when(&app, id, "approved", |d| d["status"] != "awaiting_approval").await;
    let approved = page_as(&app, Role::Viewer, &path).await;
    assert_contains(
        &approved,
        &[
            "<dt>Approved by</dt>",
            "data-testid=\"approved-by\">reviewer<",
        ],
    );
    let html = app.get(&path).await.text().await.unwrap();
    assert!(button_tag(&html, "Approve").is_none(), "{html}");
    assert!(!html.contains("data-testid=\"waiting\""), "{html}");
    app.stop().await;
}

#[tokio::test]
async fn a_requester_cannot_approve_their_own_rollout_with_a_token_of_theirs_either() {
    let app = spawn_app_with(
        &Config::edge()
            .service(
                Service::new("gate")
                    .approval("start")
                    .runtime(Runtime::command())
                    .backend("g1", 18021)
                    .backend("g2", 18022),
            )
            .toml(),
        &[],
    )
    .await;
    let login = app
        .add_user_and_log_in("ana", Role::Admin, "ana's long password 7c1e")
        .await;
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // What ana's browser sends: her cookie, from Baton's own origin.
    let as_ana = |path: &str, body: serde_json::Value| {
        app.anonymous
            .post(format!("{}{path}", app.address))
            .header("cookie", &cookie)
            .header("origin", &app.address)
            .json(&body)
            .send()
    };
    let token = as_ana(
        "/api/tokens",
        serde_json::json!({ "name": "ana-laptop", "role": "deployer" }),
    )
    .await
    .unwrap();
    assert_eq!(token.status(), 201);
    let token: serde_json::Value = token.json().await.unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let queued = as_ana(
        "/api/services/gate/deployments",
        serde_json::json!({ "version": "v2" }),
    )
    .await
    .unwrap();
    assert_eq!(queued.status(), 202);
    let id = queued.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    rollout_when(&app, id, "awaiting approval", |d| {
        d["status"] == "awaiting_approval"
    })
    .await;

    // Her token has another name, but it is hers.
    let refused = app
        .anonymous
        .post(format!("{}/api/deployments/{id}/approve", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"],
        format!(
            "rollout {id} was requested by ana: it needs the approval of another deployer or admin"
        )
    );
    // Anyone else may: here the app's own token, which belongs to no user.
    let approved = app
        .client
        .post(format!("{}/api/deployments/{id}/approve", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 202);
    let approved = rollout_when(&app, id, "approved", |d| d["status"] != "awaiting_approval").await;
    assert_eq!(approved["approved_by"], "tests");
    // The refusal is in the audit log, under its own action.
    let html = page_as(&app, Role::Admin, "/audit?action=approve_refused").await;
    assert_contains(
        &html,
        &[
            "<option value=\"approve_refused\" selected",
            "data-action=\"approve_refused\"",
            "data-actor=\"ana-laptop\"",
            &format!("rollout {id} was requested by ana"),
        ],
    );
    app.stop().await;
}
