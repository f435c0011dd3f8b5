//! Baton's real Leptos pages and server functions behind the auth layer, wired the way
//! `startup::router` should wire them: the page's Content-Security-Policy carries the nonce of
//! its inline scripts (or the hydration script would be blocked), and the signed-in caller
//! reaches server functions.

use std::net::SocketAddr;
use std::sync::Arc;

use app::fleet::Fleet;
use axum::Router;
use baton_server::auth::{self, Access, Auth, Role};
use baton_server::fleet::Fleet as ServiceFleet;
use baton_server::settings::AuthConfig;
use baton_server::store::Store;
use baton_server::ui::UiFleet;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};

use crate::helpers::{Server, serve};
use crate::support::baton::settings;
use crate::support::config::one_web_service;

/// The UI half of Baton's router, with pages needing `page_access`.
pub async fn spawn_pages(dir: &std::path::Path, page_access: Access) -> Server {
    let settings = settings(&one_web_service().toml(), dir, &[]);
    let store = Store::connect(&settings.server.database_url).await.unwrap();
    let fleet = Arc::new(ServiceFleet::from_settings(&settings, store.clone()));
    let leptos_options = LeptosOptions::builder()
        .output_name("baton")
        .site_root(settings.server.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .build();
    let ui = Fleet(Arc::new(UiFleet {
        settings: Arc::new(settings),
        fleet,
        store: store.clone(),
        leadership: baton_server::replica::Leadership::single("pages".into()),
    }));
    // The leptos options are the whole state here: only the pages are under test.
    let state = leptos_options;
    let shell_options = state.clone();
    let pages = generate_route_list(app::App);

    let auth = Auth::new(store.clone(), AuthConfig::default());
    let mut guarded = auth.routes::<LeptosOptions>().server_functions();
    for page in &pages {
        guarded = guarded.page(page.path(), page_access);
    }
    let (routes, policy) = guarded.into_parts();
    let router = Router::new()
        .merge(routes)
        .leptos_routes_with_context(
            &state,
            pages,
            move || {
                provide_context(ui.clone());
                auth::provide_request_context();
            },
            move || app::shell(shell_options.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<LeptosOptions, _>(
            app::shell,
        ))
        .with_state(state);
    let router = auth
        .protect(router, policy.clone())
        .layer(auth::security_headers());
    serve(router, store, policy).await
}

#[tokio::test]
async fn a_page_allows_exactly_the_nonce_its_inline_scripts_carry() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_pages(dir.path(), Role::Viewer.into()).await;
    server
        .add_user("vera", Role::Viewer, "viewer password 6e2d90")
        .await;
    let cookie = server.login("vera", "viewer password 6e2d90").await;

    let anonymous = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303);

    let mut nonces = Vec::new();
    for _ in 0..2 {
        let page = server
            .client
            .get(server.url("/"))
            .headers(server.browser(&cookie))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("the page's policy names a nonce: {csp}"))
            .to_owned();
        assert!(csp.contains("'wasm-unsafe-eval'"), "{csp}");
        let html = page.text().await.unwrap();
        assert!(
            html.contains(&format!("<script type=\"module\" nonce=\"{nonce}\">")),
            "the hydration script carries the policy's nonce {nonce}: {html}"
        );
        let scripts = html.matches("<script").count();
        let nonced = html.matches(&format!("nonce=\"{nonce}\"")).count();
        assert!(
            nonced >= scripts,
            "every inline script carries the nonce: {html}"
        );
        nonces.push(nonce);
    }
    assert_ne!(nonces[0], nonces[1], "a fresh nonce for every page");

    // Server functions see the caller: a viewer may read, not deploy.
    let read = server
        .client
        .post(server.url("/rpc/list_services"))
        .headers(server.browser(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let deploy = server
        .client
        .post(server.url("/rpc/deploy"))
        .headers(server.browser(&cookie))
        .form(&[("service", "web"), ("version", "v2")])
        .send()
        .await
        .unwrap();
    assert_eq!(deploy.status(), 403);
}
