//! Signing in and out: the cookie, form redirects, throttling, sessions across a restart.

use std::time::Duration;

use baton_server::auth::Role;
use baton_server::settings::{AuthConfig, PasswordChecks, Throttle};

use crate::helpers::{error_of, session_cookie, set_cookie, spawn, spawn_with};

const PASSWORD: &str = "deployer password 51c0de";

#[tokio::test]
async fn a_login_sets_a_hardened_session_cookie_that_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;

    let response = server
        .client
        .post(server.url("/auth/login"))
        .json(&serde_json::json!({ "name": "dora", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = set_cookie(&response).unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = session_cookie(&response).unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["name"], "dora");
    assert_eq!(body["role"], "deployer");
    assert!(
        !body.to_string().contains(&session),
        "the id is only in the cookie"
    );

    let me: serde_json::Value = server
        .client
        .get(server.url("/api/me"))
        .headers(server.browser(&session))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        serde_json::json!({ "name": "dora", "role": "deployer", "via": "session" })
    );

    // Behind a TLS-ending proxy the cookie is Secure.
    let response = server
        .client
        .post(server.url("/auth/login"))
        .header("x-forwarded-proto", "https")
        .json(&serde_json::json!({ "name": "dora", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&response).unwrap().contains("Secure"));

    // A wrong password says nothing about which half was wrong, and sets no cookie.
    for (name, password) in [("dora", "not the password"), ("nobody", PASSWORD)] {
        let response = server
            .client
            .post(server.url("/auth/login"))
            .json(&serde_json::json!({ "name": name, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert!(set_cookie(&response).is_none());
        assert_eq!(error_of(response).await, "wrong user name or password");
    }
}

#[tokio::test]
async fn a_login_form_redirects_to_the_page_asked_for_or_back_to_the_form() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;
    let form = |password: &str, next: &str| {
        server
            .client
            .post(server.url("/auth/login"))
            .header("origin", server.url.clone())
            .form(&[("name", "dora"), ("password", password), ("next", next)])
            .send()
    };

    let ok = form(PASSWORD, "/deployments?service=web").await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/deployments?service=web");
    assert!(session_cookie(&ok).is_some());

    let elsewhere = form(PASSWORD, "//evil.example/").await.unwrap();
    assert_eq!(elsewhere.headers()["location"], "/");

    let wrong = form("wrong password", "/deployments").await.unwrap();
    assert_eq!(wrong.status(), 303);
    assert_eq!(
        wrong.headers()["location"],
        "/login?error=invalid&next=%2Fdeployments"
    );
    assert!(session_cookie(&wrong).is_none());
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_even_for_the_right_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;
    server.add_user("otto", Role::Viewer, PASSWORD).await;
    let attempt = |name: &'static str, password: &'static str| {
        server
            .client
            .post(server.url("/auth/login"))
            .json(&serde_json::json!({ "name": name, "password": password }))
            .send()
    };
    for _ in 0..Throttle::default().per_name {
        assert_eq!(
            attempt("dora", "guess guess guess").await.unwrap().status(),
            401
        );
    }
    let throttled = attempt("dora", PASSWORD).await.unwrap();
    assert_eq!(throttled.status(), 429);
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((890..=900).contains(&retry_after), "{retry_after}");
    assert!(session_cookie(&throttled).is_none());
    let error = error_of(throttled).await;
    assert!(error.contains("too many failed logins"), "{error}");

    // A form gets the same refusal as a redirect the login page can explain.
    let form = server
        .client
        .post(server.url("/auth/login"))
        .form(&[("name", "dora"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    let location = form.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("/login?error=throttled&retry_after="),
        "{location}"
    );

    // Another user from the same address is not locked out by dora's failures.
    assert_eq!(attempt("otto", PASSWORD).await.unwrap().status(), 200);

    // Each failure is in the audit log with the address.
    let failures = server
        .store
        .audit(&baton_server::store::auth::AuditQuery {
            action: Some("login_failed"),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|entry| entry.actor == "dora"
        && entry.address.as_deref() == Some("127.0.0.1")
        && entry.detail.as_deref() == Some("wrong password")));
}

#[tokio::test]
async fn failures_from_one_address_throttle_every_name_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuthConfig {
        throttle: Throttle {
            per_name: 5,
            per_address: 3,
            window: Duration::from_secs(60),
        },
        ..AuthConfig::default()
    };
    let server = spawn_with(&dir.path().join("baton.db"), config).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;
    for name in ["alice", "bob", "carol"] {
        let response = server
            .client
            .post(server.url("/auth/login"))
            .json(&serde_json::json!({ "name": name, "password": "spray spray spray" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let response = server
        .client
        .post(server.url("/auth/login"))
        .json(&serde_json::json!({ "name": "dora", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn a_session_survives_a_restart_and_ends_at_logout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let server = spawn(&db).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;
    let cookie = server.login("dora", PASSWORD).await;
    server.stop().await;

    let server = spawn(&db).await;
    let me = server
        .client
        .get(server.url("/api/me"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the session outlived the restart");

    // Logging out from another site is refused (the CSRF check covers logout too).
    let forged = server
        .client
        .post(server.url("/auth/logout"))
        .header("cookie", format!("baton_session={cookie}"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let logout = server
        .client
        .post(server.url("/auth/logout"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert!(set_cookie(&logout).unwrap().contains("Max-Age=0"));
    let me = server
        .client
        .get(server.url("/api/me"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the session was revoked on the server");
    let page = server
        .client
        .get(server.url("/deployments"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
}

#[tokio::test]
async fn parallel_logins_beyond_the_password_check_line_get_503_and_a_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // Two checks at once and no line: whatever arrives while two run is refused.
    let config = AuthConfig {
        password_checks: PasswordChecks {
            at_once: 2,
            queue: 0,
            wait: Duration::from_secs(10),
        },
        // Room for exactly the 12 guesses below.
        throttle: Throttle {
            per_name: 5,
            per_address: 12,
            window: Duration::from_secs(60),
        },
        ..AuthConfig::default()
    };
    let server = spawn_with(&dir.path().join("baton.db"), config).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;

    // Many names: the throttle lets each through.
    let logins = (0..12).map(|i| {
        server
            .client
            .post(server.url("/auth/login"))
            .json(&serde_json::json!({ "name": format!("guess{i}"), "password": "a wrong guess" }))
            .send()
    });
    let answers = futures::future::join_all(logins).await;
    let mut busy = 0;
    for answer in answers {
        let answer = answer.unwrap();
        match answer.status().as_u16() {
            401 => {}
            503 => {
                busy += 1;
                assert_eq!(answer.headers()["retry-after"], "1");
                let error = error_of(answer).await;
                assert!(error.contains("busy checking"), "{error}");
            }
            other => panic!("expected 401 or 503, got {other}"),
        }
    }
    assert!(
        busy > 0,
        "12 argon2 checks at once went through a gate of 2 with no line"
    );
    // Once the line is clear a normal login works; and the refused guesses were never checked,
    // so they are no failures: fewer than 12 count against this address.
    server.login("dora", PASSWORD).await;
}

#[tokio::test]
async fn over_https_the_session_cookie_is_host_prefixed_and_only_that_name_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("dora", Role::Deployer, PASSWORD).await;
    let login = |proto: Option<&'static str>| {
        let mut request = server
            .client
            .post(server.url("/auth/login"))
            .json(&serde_json::json!({ "name": "dora", "password": PASSWORD }));
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            set_cookie(&response).unwrap()
        }
    };
    let me = |cookie: String, https: bool| {
        let mut request = server
            .client
            .get(server.url("/api/me"))
            .header("cookie", cookie);
        if https {
            request = request.header("x-forwarded-proto", "https");
        }
        async move { request.send().await.unwrap().status() }
    };

    let secure = login(Some("https")).await;
    assert!(secure.starts_with("__Host-baton_session="), "{secure}");
    for attribute in ["Secure", "Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(secure.contains(attribute), "{attribute} in {secure}");
    }
    assert!(!secure.contains("Domain"), "{secure}");
    let value = secure
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("__Host-baton_session=")
        .unwrap()
        .to_owned();
    assert_eq!(me(format!("__Host-baton_session={value}"), true).await, 200);
    // The same session under the plain name is not read over HTTPS (a sibling site could have
    // set that one), and the prefixed name is not read over plain HTTP.
    assert_eq!(me(format!("baton_session={value}"), true).await, 401);
    assert_eq!(
        me(format!("__Host-baton_session={value}"), false).await,
        401
    );

    let plain = login(None).await;
    assert!(plain.starts_with("baton_session="), "{plain}");
    assert!(!plain.contains("Secure"), "{plain}");

    // Signing out over HTTPS ends the session and clears the prefixed cookie.
    let logout = server
        .client
        .post(server.url("/auth/logout"))
        .header("x-forwarded-proto", "https")
        .header("sec-fetch-site", "same-origin")
        .header("cookie", format!("__Host-baton_session={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let cleared = set_cookie(&logout).unwrap();
    assert!(
        cleared.starts_with("__Host-baton_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(me(format!("__Host-baton_session={value}"), true).await, 401);
}
