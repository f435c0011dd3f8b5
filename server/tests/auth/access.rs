//! The route policy and the auth layer: who gets in where, CSRF, pages, security headers.

use baton_server::auth::{self, Access, Auth, Guarded, Kind, Role};
use baton_server::settings::AuthConfig;
use reqwest::Method;

use crate::helpers::{Server, error_of, spawn};

const ADMIN_PASSWORD: &str = "admin password 7f3a9c";
const VIEWER_PASSWORD: &str = "viewer password 2b8e41";

/// The only routes anyone may call to change something: signing in and out, and webhooks
/// (which check the git host's signature instead).
const PUBLIC_MUTATIONS: &[&str] = &[
    "POST /auth/login",
    "POST /auth/logout",
    "POST /hooks/{service}",
    // Says who is signed in; changes nothing (server functions are all POST).
    "POST /rpc/current_user",
];

/// Every route with a role, taken from the policy (so a new route is covered without editing
/// this test): anonymous callers get 401 (a page, a redirect to the login page), viewers 403
/// wherever more than viewer is needed, deployers 403 where admin is.
#[tokio::test]
async fn every_route_refuses_anonymous_callers_and_under_privileged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("vera", Role::Viewer, VIEWER_PASSWORD).await;
    let viewer_cookie = server.login("vera", VIEWER_PASSWORD).await;
    let viewer_token = server.add_token("viewer-ci", Role::Viewer).await;
    let deployer_token = server.add_token("deploy-ci", Role::Deployer).await;

    let mut mutating_checked = Vec::new();
    for rule in server.policy.rules() {
        let what = format!("{} {}", rule.method, rule.path);
        let Some(needed) = rule.access.role() else {
            // Public routes that change something prove who calls them another way.
            assert!(
                !rule.is_mutating() || PUBLIC_MUTATIONS.contains(&what.as_str()),
                "{what} changes something but is public"
            );
            continue;
        };
        // Server functions are all POST, reads too; every other unsafe method changes
        // something, which a viewer may not do.
        if rule.is_mutating() && !rule.path.starts_with("/rpc/") {
            assert!(
                needed > Role::Viewer,
                "{what} changes something, yet viewers may call it"
            );
        }
        let method = Method::from_bytes(rule.method.as_str().as_bytes()).unwrap();
        let url = server.url(&rule.example_path());

        let anonymous = server
            .client
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        match rule.kind {
            Kind::Page => {
                assert_eq!(anonymous.status(), 303, "{what}: anonymous page view");
                let location = anonymous.headers()["location"].to_str().unwrap();
                assert!(location.starts_with("/login?next="), "{what}: {location}");
            }
            Kind::Api => {
                assert_eq!(anonymous.status(), 401, "{what}: anonymous");
                assert!(error_of(anonymous).await.contains("sign-in required"));
            }
        }

        let callers = [
            ("viewer token", Role::Viewer, Server::bearer(&viewer_token)),
            (
                "viewer session",
                Role::Viewer,
                server.browser(&viewer_cookie),
            ),
            (
                "deployer token",
                Role::Deployer,
                Server::bearer(&deployer_token),
            ),
        ];
        for (caller, role, headers) in callers {
            let response = server
                .client
                .request(method.clone(), &url)
                .headers(headers)
                .send()
                .await
                .unwrap();
            if role.allows(needed) {
                assert!(
                    ![401, 403].contains(&response.status().as_u16()),
                    "{what}: {caller} may, got {}",
                    response.status()
                );
            } else {
                assert_eq!(response.status(), 403, "{what}: {caller}");
                if rule.kind == Kind::Api {
                    let error = error_of(response).await;
                    assert!(
                        error.contains(&format!("needs the {needed} role")),
                        "{error}"
                    );
                }
            }
        }
        if rule.is_mutating() {
            mutating_checked.push(what);
        }
    }
    // The stand-ins, auth's own endpoints and the server functions were all there.
    for expected in [
        "POST /api/services/{service}/deployments",
        "POST /api/deployments/{id}/{action}",
        "POST /api/webhooks/deliveries/{id}/replay",
        "POST /api/users",
        "DELETE /api/users/{name}",
        "POST /api/tokens",
        "DELETE /api/tokens/{id}",
        "POST /rpc/deploy",
        "POST /rpc/control_deployment",
        "POST /rpc/rollback_service",
        "POST /rpc/replay_delivery",
    ] {
        assert!(
            mutating_checked.iter().any(|checked| checked == expected),
            "{expected} was not checked: {mutating_checked:?}"
        );
    }
}

#[tokio::test]
async fn a_route_without_a_rule_is_refused_even_to_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    let admin = server.add_token("root-ci", Role::Admin).await;
    let response = server
        .client
        .post(server.url("/api/forgotten"))
        .headers(Server::bearer(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        error_of(response)
            .await
            .contains("no access rule covers POST /api/forgotten")
    );
    // A known path with a method nobody registered is 405 with the methods there are.
    let response = server
        .client
        .put(server.url("/api/users"))
        .headers(Server::bearer(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
}

/// Without the auth layer no caller is ever found, so a guarded route refuses everyone.
#[tokio::test]
async fn guarded_routes_refuse_everyone_when_the_auth_layer_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = baton_server::store::Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("baton.db").display()
    ))
    .await
    .unwrap();
    let auth = Auth::new(store.clone(), AuthConfig::default());
    let (router, policy) = Guarded::<()>::new()
        .get("/api/services", Role::Viewer, || async { "[]" })
        .get("/alive", Access::Public, || async { "ok" })
        .merge(auth.routes())
        .into_parts();
    let server = crate::helpers::serve(router, store, policy).await;
    let admin = server.add_token("root-ci", Role::Admin).await;
    let response = server
        .client
        .get(server.url("/api/services"))
        .headers(Server::bearer(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let alive = server
        .client
        .get(server.url("/alive"))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200);
}

/// Each server function linked into Baton has a role, and the table names no function that
/// does not exist.
#[test]
fn every_server_function_has_a_role() {
    let registered: Vec<(&str, _)> = leptos::server_fn::axum::server_fn_paths().collect();
    assert!(
        registered.iter().any(|(path, _)| *path == "/rpc/deploy"),
        "the UI's server functions are linked in: {registered:?}"
    );
    for (path, _) in &registered {
        assert!(
            auth::server_function_access(path).is_some(),
            "server function {path} has no role in auth::SERVER_FUNCTIONS"
        );
    }
    for (path, _) in auth::SERVER_FUNCTIONS {
        assert!(
            registered.iter().any(|(known, _)| known == path),
            "auth::SERVER_FUNCTIONS names {path}, which is no server function"
        );
    }
}

#[tokio::test]
async fn pages_send_anonymous_visitors_to_login_and_refuse_missing_roles() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    let response = server
        .client
        .get(server.url("/deployments?service=web&limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/login?next=%2Fdeployments%3Fservice%3Dweb%26limit%3D5"
    );
    // The login page itself and static files are public.
    let login = server
        .client
        .get(server.url("/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let missing = server
        .client
        .get(server.url("/pkg/none.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    server.add_user("vera", Role::Viewer, VIEWER_PASSWORD).await;
    let cookie = server.login("vera", VIEWER_PASSWORD).await;
    let page = server
        .client
        .get(server.url("/deployments"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let audit = server
        .client
        .get(server.url("/audit"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(audit.status(), 403);
    assert!(
        audit.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = audit.text().await.unwrap();
    assert!(
        body.contains("the page /audit needs the admin role; vera is a viewer"),
        "{body}"
    );
}

#[tokio::test]
async fn a_cross_origin_post_with_a_valid_cookie_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    server.add_user("root", Role::Admin, ADMIN_PASSWORD).await;
    let cookie = server.login("root", ADMIN_PASSWORD).await;
    let create = |headers: Vec<(&'static str, String)>| {
        let mut request = server
            .client
            .post(server.url("/api/tokens"))
            .header("cookie", format!("{}={cookie}", auth::SESSION_COOKIE))
            .json(&serde_json::json!({ "name": "ci", "role": "deployer" }));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };

    let evil = create(vec![("origin", "http://evil.example".into())])
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let error = error_of(evil).await;
    assert!(error.contains("cross-origin request refused"), "{error}");
    assert!(error.contains("http://evil.example"), "{error}");

    let sibling = create(vec![
        ("sec-fetch-site", "same-site".into()),
        ("origin", server.url.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(sibling.status(), 403);
    assert!(error_of(sibling).await.contains("expected same-origin"));

    let bare = create(vec![]).await.unwrap();
    assert_eq!(bare.status(), 403);
    assert!(
        error_of(bare)
            .await
            .contains("neither an Origin nor a Sec-Fetch-Site")
    );

    // Nothing was created by the refused requests.
    assert!(server.store.tokens().await.unwrap().is_empty());

    let same = create(vec![("origin", server.url.clone())]).await.unwrap();
    assert_eq!(same.status(), 201);
    let fetch = server
        .client
        .post(server.url("/api/tokens"))
        .header("cookie", format!("{}={cookie}", auth::SESSION_COOKIE))
        .header("sec-fetch-site", "same-origin")
        .json(&serde_json::json!({ "name": "ci2", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), 201);

    // A bearer token is never sent by a browser on its own: no origin check.
    let token = server.add_token("root-ci", Role::Admin).await;
    let scripted = server
        .client
        .post(server.url("/api/tokens"))
        .headers(Server::bearer(&token))
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({ "name": "ci3", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status(), 201);

    // A cross-origin login form is refused too (login CSRF).
    let login = server
        .client
        .post(server.url("/auth/login"))
        .header("sec-fetch-site", "cross-site")
        .json(&serde_json::json!({ "name": "root", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 403);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir.path().join("baton.db")).await;
    for path in ["/alive", "/api/services", "/login", "/no/such/file.js"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("'wasm-unsafe-eval'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("'unsafe-eval'"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
    }
}
