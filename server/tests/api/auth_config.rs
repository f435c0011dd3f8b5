//! `[auth]` in the configuration file reaches the running server: the origin the CSRF check
//! expects behind a proxy, the session lifetime, the login throttle and the stream cap.

use std::time::Duration;

use baton_server::auth::Role;

use crate::support::baton::spawn_app_with;
use crate::support::config::{Auth, api_and_worker};

const PASSWORD: &str = "correct horse battery staple";

#[tokio::test]
async fn the_auth_table_sets_the_origin_session_lifetime_and_throttle_of_the_real_server() {
    let config = api_and_worker().auth(
        Auth::new()
            .public_origin("https://baton.example.com")
            .session_ttl(Duration::from_secs(2 * 60 * 60))
            .login_throttle_per_name(2)
            .streams_per_caller(1),
    );
    let app = spawn_app_with(&config.toml(), &[]).await;
    let login = app
        .add_user_and_log_in("ada", Role::Deployer, PASSWORD)
        .await;
    assert_eq!(login.status(), 200);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("Max-Age=7200"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let deploy = |origin: String| {
        app.anonymous
            .post(format!("{}/api/services/api/deployments", app.address))
            .header("cookie", &cookie)
            .header("origin", origin)
            .json(&serde_json::json!({ "version": "v2" }))
            .send()
    };
    // Behind a proxy the browser's origin is the public one, not the address Baton listens on.
    let direct = deploy(app.address.clone()).await.unwrap();
    assert_eq!(direct.status(), 403);
    let error: serde_json::Value = direct.json().await.unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("not this server's origin \"https://baton.example.com\""),
        "{error}"
    );
    let public = deploy("https://baton.example.com".into()).await.unwrap();
    assert_eq!(public.status(), 202, "{}", public.text().await.unwrap());

    let fail = || {
        app.anonymous
            .post(format!("{}/auth/login", app.address))
            .json(&serde_json::json!({ "name": "ada", "password": "wrong" }))
            .send()
    };
    assert_eq!(fail().await.unwrap().status(), 401);
    assert_eq!(fail().await.unwrap().status(), 401);
    assert_eq!(
        fail().await.unwrap().status(),
        429,
        "per_name = 2 allows two failed logins"
    );

    let stream = || app.client.get(format!("{}/api/events", app.address)).send();
    let first = stream().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = stream().await.unwrap();
    assert_eq!(second.status(), 429, "streams_per_caller = 1 allows one");
    drop(first);
}
