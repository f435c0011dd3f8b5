//! The sign-in page: a plain HTML form posted to `/auth/login`, so it works before (and without)
//! the wasm client. The server answers with a redirect: to the page asked for, or back here with
//! `?error=invalid|throttled|busy|refused` (and `retry_after` in seconds), which this page explains.

use leptos::html;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;
use leptos_router::hooks::use_query_map;

use crate::auth::{SignedIn, use_caller};

#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let caller = use_caller();
    let next = Memo::new(move |_| safe_next(query.read().get("next").as_deref()).to_owned());
    let problem = Memo::new(move |_| {
        let query = query.read();
        query.get("error").map(|error| {
            let retry_after = query.get("retry_after").and_then(|s| s.parse().ok());
            login_error(&error, retry_after)
        })
    });

    view! {
        <Title text="Sign in" />
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match caller.await {
                    Some(caller) => {
                        let href = next.get();
                        view! {
                            <section class="card login" aria-labelledby="login-heading">
                                <h1 id="login-heading">"Signed in"</h1>
                                <p>
                                    "You are signed in as " <strong>{caller.name.clone()}</strong>
                                    {format!(" ({}).", caller.role)}
                                </p>
                                <p>
                                    <A href=href>"Continue to Baton"</A>
                                </p>
                                <SignedIn caller />
                            </section>
                        }
                            .into_any()
                    }
                    None => view! { <LoginForm next problem /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn LoginForm(next: Memo<String>, problem: Memo<Option<String>>) -> impl IntoView {
    let name_input = NodeRef::<html::Input>::new();
    // `autofocus` puts the cursor in the name field when the server's page loads; this does the
    // same when the client renders the page, unless the visitor has already moved on.
    Effect::new(move |_| {
        if let Some(input) = name_input.get() {
            let idle = document()
                .active_element()
                .is_none_or(|active| active.tag_name().eq_ignore_ascii_case("body"));
            if idle {
                let _ = input.focus();
            }
        }
    });
    let invalid = move || {
        if problem.with(Option::is_some) {
            "true"
        } else {
            "false"
        }
    };
    let described = move || problem.with(Option::is_some).then_some("login-error");
    view! {
        <section class="card login" aria-labelledby="login-heading">
            <h1 id="login-heading">"Sign in to Baton"</h1>
            {move || {
                problem
                    .get()
                    .map(|message| {
                        view! {
                            <p id="login-error" class="error login-error" role="alert">
                                {message}
                            </p>
                        }
                    })
            }}
            <form method="post" action="/auth/login" class="login-form">
                <input type="hidden" name="next" value=move || next.get() />
                <label for="login-name">"User name"</label>
                <input
                    id="login-name"
                    node_ref=name_input
                    name="name"
                    type="text"
                    autocomplete="username"
                    autocapitalize="none"
                    spellcheck="false"
                    required
                    autofocus
                    aria-invalid=invalid
                    aria-describedby=described
                />
                <label for="login-password">"Password"</label>
                <input
                    id="login-password"
                    name="password"
                    type="password"
                    autocomplete="current-password"
                    required
                    aria-invalid=invalid
                    aria-describedby=described
                />
                <button type="submit" class="primary">
                    "Sign in"
                </button>
            </form>
        </section>
    }
}

/// What went wrong, from the `error` the server put in the address.
fn login_error(error: &str, retry_after: Option<u64>) -> String {
    match error {
        "invalid" => "Wrong user name or password.".into(),
        "throttled" => match retry_after {
            Some(secs) => format!("Too many failed logins; try again in {}.", wait_for(secs)),
            None => "Too many failed logins; try again later.".into(),
        },
        "busy" => format!(
            "Baton is busy checking other sign-ins; try again in {}.",
            wait_for(retry_after.unwrap_or(1))
        ),
        "refused" => "Sign-in refused: the form was not sent from this Baton's own page (a \
                      cross-origin request). Open Baton's address directly and sign in again."
            .into(),
        _ => "Sign-in failed. Try again.".into(),
    }
}

/// `45 s`, `14 min 05 s`.
fn wait_for(secs: u64) -> String {
    if secs < 60 {
        format!("{secs} s")
    } else {
        format!("{} min {:02} s", secs / 60, secs % 60)
    }
}

/// Where to go after signing in: a path on this site, else the dashboard. (The server checks it
/// again; this keeps the form from carrying anything else.)
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next.starts_with("//")
                && !next.starts_with("/\\")
                && !next.chars().any(char::is_control) =>
        {
            next
        }
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_is_explained() {
        assert_eq!(login_error("invalid", None), "Wrong user name or password.");
        assert_eq!(
            login_error("throttled", Some(42)),
            "Too many failed logins; try again in 42 s."
        );
        assert_eq!(
            login_error("throttled", Some(845)),
            "Too many failed logins; try again in 14 min 05 s."
        );
        assert_eq!(
            login_error("busy", Some(1)),
            "Baton is busy checking other sign-ins; try again in 1 s."
        );
        assert!(login_error("refused", None).contains("cross-origin"));
        assert_eq!(login_error("nonsense", None), "Sign-in failed. Try again.");
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/deployments/3?x=1")), "/deployments/3?x=1");
        for outside in [
            None,
            Some("https://evil.example/"),
            Some("//evil.example/"),
            Some("/\\evil.example"),
            Some("/a\nb"),
            Some(""),
        ] {
            assert_eq!(safe_next(outside), "/", "{outside:?}");
        }
    }
}
