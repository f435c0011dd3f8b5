//! Secrets stay out of the logs.

use baton_server::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{Server, logs, spawn};

#[tokio::test]
async fn logs_hold_no_password_session_or_token_the_test_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    let admin_password = "logs-test admin pw 3e9f01";
    let wrong_password = "logs-test wrong pw 77aa10";
    let new_password = "logs-test new user pw 0c5d2b";
    server.add_user("lena", Role::Admin, admin_password).await;

    let mut secrets = vec![
        admin_password.to_owned(),
        wrong_password.to_owned(),
        new_password.to_owned(),
    ];
    let failed = server
        .client
        .post(server.url("/auth/login"))
        .json(&json!({ "name": "lena", "password": wrong_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);
    let cookie = server.login("lena", admin_password).await;
    secrets.push(cookie.clone());
    let created = server
        .client
        .post(server.url("/api/users"))
        .headers(server.browser(&cookie))
        .json(&json!({ "name": "lars", "role": "viewer", "password": new_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let token: Value = server
        .client
        .post(server.url("/api/tokens"))
        .headers(server.browser(&cookie))
        .json(&json!({ "name": "logs-ci", "role": "deployer" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    secrets.push(token.clone());
    for headers in [
        Server::bearer(&token),
        Server::bearer("baton_not-a-real-token-but-still-secret"),
    ] {
        server
            .client
            .get(server.url("/api/me"))
            .headers(headers)
            .send()
            .await
            .unwrap();
    }
    secrets.push("baton_not-a-real-token-but-still-secret".into());
    let malformed = "Token logs-test-malformed-secret";
    server
        .client
        .get(server.url("/api/me"))
        .header("authorization", malformed)
        .send()
        .await
        .unwrap();
    secrets.push("logs-test-malformed-secret".into());
    server
        .client
        .post(server.url("/auth/logout"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();

    let logs = logs();
    // The capture works: this test's own sign-ins and requests are there.
    assert!(
        logs.contains("signed in") && logs.contains("user=lena"),
        "{logs}"
    );
    assert!(logs.contains("login failed"), "{logs}");
    assert!(
        logs.contains("/api/tokens"),
        "request logs are captured: {logs}"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {secret}"
        );
    }
}
