//! Users, API tokens and the audit log through the admin API.

use baton_server::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{Server, error_of, spawn};

const ADMIN_PASSWORD: &str = "admin password c4f2e8";
const NEW_USER_PASSWORD: &str = "new user password 9d1b77";

/// An audit line as (actor, actor kind, action, target, address).
type Line = (String, String, String, Option<String>, Option<String>);

#[tokio::test]
async fn a_revoked_token_stops_working_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    let admin = Server::bearer(&server.add_token("root-ci", Role::Admin).await);

    let created = server
        .client
        .post(server.url("/api/tokens"))
        .headers(admin.clone())
        .json(&json!({ "name": "ci", "role": "deployer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("baton_"));
    let id = created["id"].as_i64().unwrap();

    let me: Value = server
        .client
        .get(server.url("/api/me"))
        .headers(Server::bearer(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        json!({ "name": "ci", "role": "deployer", "via": "token" })
    );

    // The listing shows when it was used, never the token.
    let listing = server
        .client
        .get(server.url("/api/tokens"))
        .headers(admin.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(&token), "{listing}");
    let listing: Vec<Value> = serde_json::from_str(&listing).unwrap();
    let ci = listing.iter().find(|t| t["name"] == "ci").unwrap();
    assert!(ci["last_used_at"].as_i64().is_some(), "{ci}");
    assert!(ci["revoked_at"].is_null());

    let revoked = server
        .client
        .delete(server.url(&format!("/api/tokens/{id}")))
        .headers(admin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let refused = server
        .client
        .post(server.url("/api/services/web/deployments"))
        .headers(Server::bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let error = error_of(refused).await;
    assert!(error.contains("revoked"), "{error}");
    assert!(!error.contains(&token), "{error}");

    let again = server
        .client
        .delete(server.url(&format!("/api/tokens/{id}")))
        .headers(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(error_of(again).await, format!("no live token has id {id}"));
}

#[tokio::test]
async fn the_audit_log_records_logins_and_every_account_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("root", Role::Admin, ADMIN_PASSWORD).await;
    let cookie = server.login("root", ADMIN_PASSWORD).await;
    let browser = server.browser(&cookie);

    let failed = server
        .client
        .post(server.url("/auth/login"))
        .json(&json!({ "name": "root", "password": "a wrong guess" }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);

    let user = server
        .client
        .post(server.url("/api/users"))
        .headers(browser.clone())
        .json(&json!({ "name": "vera", "role": "viewer", "password": NEW_USER_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 201);
    let user = user.text().await.unwrap();
    assert!(
        !user.contains(NEW_USER_PASSWORD) && !user.contains("argon2"),
        "{user}"
    );

    let duplicate = server
        .client
        .post(server.url("/api/users"))
        .headers(browser.clone())
        .json(&json!({ "name": "vera", "role": "viewer", "password": NEW_USER_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 409);
    let weak = server
        .client
        .post(server.url("/api/users"))
        .headers(browser.clone())
        .json(&json!({ "name": "walt", "role": "viewer", "password": "short" }))
        .send()
        .await
        .unwrap();
    assert_eq!(weak.status(), 422);
    let error = error_of(weak).await;
    assert!(
        error.contains("expected at least 10") && !error.contains("short\""),
        "{error}"
    );

    let token: Value = server
        .client
        .post(server.url("/api/tokens"))
        .headers(browser.clone())
        .json(&json!({ "name": "ci", "role": "deployer" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = token["id"].as_i64().unwrap();
    let revoked = server
        .client
        .delete(server.url(&format!("/api/tokens/{id}")))
        .headers(browser.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let deleted = server
        .client
        .delete(server.url("/api/users/vera"))
        .headers(browser.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let last_admin = server
        .client
        .delete(server.url("/api/users/root"))
        .headers(browser.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(last_admin.status(), 409);
    assert!(error_of(last_admin).await.contains("last admin"));

    let audit: Value = server
        .client
        .get(server.url("/api/audit"))
        .headers(browser.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines: Vec<Line> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|entry| {
            (
                entry["actor"].as_str().unwrap().to_owned(),
                entry["actor_kind"].as_str().unwrap().to_owned(),
                entry["action"].as_str().unwrap().to_owned(),
                entry["target"].as_str().map(str::to_owned),
                entry["address"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let at =
        |actor: &str, kind: &str, action: &str, target: Option<&str>, address: Option<&str>| {
            (
                actor.to_owned(),
                kind.to_owned(),
                action.to_owned(),
                target.map(str::to_owned),
                address.map(str::to_owned),
            )
        };
    let here = Some("127.0.0.1");
    assert_eq!(
        lines,
        vec![
            at("cli", "cli", "user_create", Some("root"), None),
            at("root", "user", "login", None, here),
            at("root", "user", "login_failed", None, here),
            at("root", "user", "user_create", Some("vera"), here),
            at("root", "user", "token_create", Some("ci"), here),
            at("root", "user", "token_revoke", Some("ci"), here),
            at("root", "user", "user_delete", Some("vera"), here),
        ]
    );

    // Filters and pages.
    let only: Value = server
        .client
        .get(server.url("/api/audit?action=token_create"))
        .headers(browser.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        only["entries"][0]["detail"],
        format!("role deployer, id {id}")
    );
    let page: Value = server
        .client
        .get(server.url("/api/audit?actor=root&limit=2"))
        .headers(browser.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["action"], "user_delete");
    let before = page["next_before"].as_i64().unwrap();
    let next: Value = server
        .client
        .get(server.url(&format!("/api/audit?actor=root&limit=2&before={before}")))
        .headers(browser.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["entries"][0]["action"], "token_create");
    let bad = server
        .client
        .get(server.url("/api/audit?limit=0"))
        .headers(browser)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(error_of(bad).await, "invalid limit 0: expected 1 to 1000");
}

#[tokio::test]
async fn deleting_a_user_revokes_the_tokens_they_created_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("root", Role::Admin, ADMIN_PASSWORD).await;
    server.add_user("ada", Role::Admin, NEW_USER_PASSWORD).await;
    let root = server.browser(&server.login("root", ADMIN_PASSWORD).await);
    let ada = server.browser(&server.login("ada", NEW_USER_PASSWORD).await);
    let machine = server.add_token("machine", Role::Deployer).await;

    let create = |headers: reqwest::header::HeaderMap, name: &'static str, role: &'static str| {
        let request = server
            .client
            .post(server.url("/api/tokens"))
            .headers(headers)
            .json(&json!({ "name": name, "role": role }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201, "{name} is created");
            let body: Value = response.json().await.unwrap();
            body["token"].as_str().unwrap().to_owned()
        }
    };
    // Ada's own token, and one her token made: both are hers.
    let ada_admin = create(ada.clone(), "ada-admin", "admin").await;
    let ada_ci = create(Server::bearer(&ada_admin), "ada-ci", "deployer").await;
    let root_ci = create(root.clone(), "root-ci", "deployer").await;
    let works = |token: String| {
        let request = server
            .client
            .get(server.url("/api/services"))
            .headers(Server::bearer(&token));
        async move { request.send().await.unwrap().status() }
    };
    for token in [&ada_admin, &ada_ci, &root_ci, &machine] {
        assert_eq!(works(token.clone()).await, 200);
    }

    // The tokens page says who created each.
    let listed: Value = server
        .client
        .get(server.url("/api/tokens"))
        .headers(root.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let creators: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|token| {
            (
                token["name"].as_str().unwrap().to_owned(),
                token["created_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for pair in [
        ("ada-admin", "ada"),
        ("ada-ci", "ada-admin"),
        ("root-ci", "root"),
        ("machine", "cli"),
    ] {
        assert!(
            creators.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "{creators:?}"
        );
    }

    let deleted = server
        .client
        .delete(server.url("/api/users/ada"))
        .headers(root.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    for token in [&ada_admin, &ada_ci] {
        assert_eq!(works(token.clone()).await, 401, "ada's tokens are revoked");
    }
    for token in [&root_ci, &machine] {
        assert_eq!(works(token.clone()).await, 200, "other tokens live on");
    }
    let audit: Value = server
        .client
        .get(server.url("/api/audit?action=user_delete"))
        .headers(root.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        audit["entries"][0]["detail"],
        "revoked its tokens ada-admin, ada-ci"
    );
}
