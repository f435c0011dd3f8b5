//! The server-rendered pages and Baton's own health endpoint.

use crate::helpers::spawn_app;

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
