//! Baton's web UI: the Leptos components and the server functions they call.
//!
//! The same code renders on the server (feature `ssr`) and hydrates in the browser (feature
//! `hydrate`). Nothing here knows how the fleet is driven: the server hands the UI a
//! [`fleet::Fleet`] through Leptos context.

// One build of this crate is either the server's half or the browser's. Cargo unifies features
// across a build, so `cargo build --workspace` (or `--all-features`) would compile both into the
// server, which then panics at start; refuse that here, with what to run instead.
#[cfg(all(feature = "ssr", feature = "hydrate"))]
compile_error!(
    "the `ssr` and `hydrate` features of `app` cannot be built together (did you pass \
     --workspace or --all-features?): run `cargo build --release` at the workspace root for the \
     server (its default members), and `scripts/dev build` for the web client as well"
);

pub mod auth;
pub mod fleet;
pub mod model;
mod pages;
pub mod webhooks;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::{
    SsrMode,
    components::{A, Route, Router, Routes},
    path,
};

/// Baton's version, shown in the footer.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The HTML document the server streams around [`App`].
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    pages::provide_hydrated();
    pages::provide_clock();
    auth::provide_caller();
    pages::provide_replica();
    let caller = auth::use_caller();
    let replica = pages::use_replica();
    // Marks the page once the wasm client has taken over (tests and people debugging look for it).
    #[cfg(feature = "hydrate")]
    Effect::new(|_| {
        if let Some(root) = document().document_element() {
            let _ = root.set_attribute("data-hydrated", "true");
        }
    });

    view! {
        <Stylesheet id="baton" href="/pkg/baton.css" />
        <Title formatter=|page: String| format!("{page} · Baton") />
        <Router>
            <header class="topbar">
                <A href="/" attr:class="brand">
                    "Baton"
                </A>
                // Who is signed in decides what the bar offers; a visitor who is not sees only
                // the sign-in page (the server redirects every other page there).
                <Transition fallback=|| ()>
                    {move || Suspend::new(async move {
                        let replica = replica.await;
                        caller
                            .await
                            .map(|caller| {
                                let admin = caller.role.allows(model::Role::Admin);
                                view! {
                                    <nav aria-label="Main">
                                        <A href="/" exact=true>
                                            "Services"
                                        </A>
                                        <A href="/deployments">"Deployments"</A>
                                        {admin
                                            .then(|| {
                                                view! {
                                                    <A href="/audit">"Audit log"</A>
                                                    <A href="/users">"Users"</A>
                                                    <A href="/tokens">"Tokens"</A>
                                                }
                                            })}
                                    </nav>
                                    {replica
                                        .map(|replica| view! { <pages::ReplicaBadge replica /> })}
                                    <auth::SignedIn caller />
                                }
                            })
                    })}
                </Transition>
            </header>
            <main>
                <Routes fallback=pages::NotFound>
                    // Async: the server waits for the data, so every page is complete HTML
                    // (readable before the wasm loads) and an unknown rollout can answer 404.
                    <Route path=path!("/") view=pages::ServicesPage ssr=SsrMode::Async />
                    <Route
                        path=path!("/deployments")
                        view=pages::DeploymentsPage
                        ssr=SsrMode::Async
                    />
                    <Route
                        path=path!("/deployments/:id")
                        view=pages::RolloutPage
                        ssr=SsrMode::Async
                    />
                    <Route path=path!("/login") view=pages::LoginPage ssr=SsrMode::Async />
                    // Admins only: the server refuses these pages to anyone else.
                    <Route path=path!("/audit") view=pages::AuditLogPage ssr=SsrMode::Async />
                    <Route path=path!("/users") view=pages::UsersPage ssr=SsrMode::Async />
                    <Route path=path!("/tokens") view=pages::TokensPage ssr=SsrMode::Async />
                </Routes>
            </main>
            <footer class="footer">
                <span>{format!("Baton {VERSION}")}</span>
                <span class="muted">"zero-downtime rolling deploys"</span>
            </footer>
        </Router>
    }
}
