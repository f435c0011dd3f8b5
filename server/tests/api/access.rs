//! Access control on the real application: every route Baton serves is in its policy, and
//! every one that needs a role refuses callers without it. The routes come from the policy the
//! application built, so a route added later is checked without editing this test.

use baton_server::auth::{Kind, Role};
use reqwest::Method;

use crate::support::baton::{TestApp, spawn_app, spawn_app_on_postgres};

/// The only routes anyone may call to change something: signing in and out, and webhooks
/// (which prove themselves with the git host's signature instead).
const PUBLIC_MUTATIONS: &[&str] = &[
    "POST /auth/login",
    "POST /auth/logout",
    "POST /hooks/{service}",
    // Says who is signed in; changes nothing (server functions are all POST).
    "POST /rpc/current_user",
];

#[tokio::test]
async fn every_route_of_baton_refuses_anonymous_and_under_privileged_callers() {
    let app = spawn_app().await;
    let viewer = app.token("viewer-ci", Role::Viewer).await;
    let deployer = app.token("deployer-ci", Role::Deployer).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let mut checked = Vec::new();
    for rule in app.policy.rules() {
        let what = format!("{} {}", rule.method, rule.path);
        checked.push(what.clone());
        let Some(needed) = rule.access.role() else {
            assert!(
                !rule.is_mutating() || PUBLIC_MUTATIONS.contains(&what.as_str()),
                "{what} changes something but is public"
            );
            continue;
        };
        let method = Method::from_bytes(rule.method.as_str().as_bytes()).unwrap();
        let url = format!("{}{}", app.address, rule.example_path());
        let anonymous = no_redirects
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        let expected = if rule.kind == Kind::Page { 303 } else { 401 };
        assert_eq!(anonymous.status(), expected, "{what}: anonymous");

        for (caller, role, token) in [
            ("viewer", Role::Viewer, &viewer),
            ("deployer", Role::Deployer, &deployer),
        ] {
            let response = no_redirects
                .request(method.clone(), &url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if role.allows(needed) {
                assert!(
                    ![401, 403].contains(&status),
                    "{what}: a {caller} may, got {status}"
                );
            } else {
                assert_eq!(status, 403, "{what}: a {caller} may not");
            }
        }
    }
    for route in [
        "GET /",
        "GET /deployments",
        "GET /api/services",
        "GET /api/events",
        "POST /api/services/{service}/deployments",
        "POST /api/services/{service}/rollback",
        "GET /api/services/{service}/backends/{backend}/log",
        "POST /api/deployments/{id}/{action}",
        "POST /api/deliveries/{id}/replay",
        "POST /api/users",
        "POST /api/tokens",
        "POST /rpc/deploy",
        "POST /rpc/control_deployment",
        "POST /rpc/rollback_service",
        "POST /rpc/replay_delivery",
        "POST /hooks/{service}",
    ] {
        assert!(
            checked.iter().any(|c| c == route),
            "{route} is not in the policy: {checked:?}"
        );
    }
}

#[tokio::test]
async fn a_deploy_through_the_api_names_its_caller_in_the_history_and_the_audit_log() {
    deploy_names_its_caller(spawn_app().await).await;
}

#[tokio::test]
async fn on_postgres_a_deploy_through_the_api_names_its_caller_in_the_history_and_the_audit_log() {
    deploy_names_its_caller(spawn_app_on_postgres().await).await;
}

async fn deploy_names_its_caller(app: TestApp) {
    let deployer = app.token("release-bot", Role::Deployer).await;
    let response = app
        .anonymous
        .post(format!("{}/api/services/api/deployments", app.address))
        .bearer_auth(&deployer)
        .json(&serde_json::json!({ "version": "v2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let deployment: serde_json::Value = app
        .get(&format!("/api/deployments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(deployment["requested_by"], "release-bot");
    let audit: serde_json::Value = app
        .get("/api/audit?action=deploy")
        .await
        .json()
        .await
        .unwrap();
    let entry = &audit["entries"][0];
    assert_eq!(entry["actor"], "release-bot", "{audit:#}");
    assert_eq!(entry["target"], "api");
    assert!(entry["detail"].as_str().unwrap().contains("v2"), "{entry}");
    assert!(
        entry["address"].as_str().unwrap().starts_with("127.0.0.1"),
        "{entry}"
    );
}
