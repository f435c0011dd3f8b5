//! Which replica answers and which one leads, in the top bar: rendered by the server with the
//! page, then asked again every few seconds in the browser, so a takeover shows without a reload.
//!
//! The first answer is awaited in the top bar's own `Suspend`, beside the caller; the badge then
//! keeps its own signal fresh. It has no `Suspense` of its own: a nested one inside the bar's
//! broke hydration in Chromium.

use leptos::prelude::*;

use super::widgets::LocalTime;
use crate::fleet::replica_status;
use crate::model::{ReplicaRole, ReplicaView};

/// How often the browser asks again.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Who leads, in the bar's words.
fn leads(view: &ReplicaView) -> String {
    match (view.role, &view.leader) {
        (ReplicaRole::Leader, _) => "this replica leads".to_owned(),
        (ReplicaRole::Follower, Some(leader)) => format!("leader: {leader}"),
        (ReplicaRole::Follower, None) => "no replica leads right now".to_owned(),
        (ReplicaRole::Starting, _) => "starting: not known yet which replica leads".to_owned(),
    }
}

/// The page's one answer to `replica_status`, shared through context.
#[derive(Clone, Copy)]
struct ReplicaResource(Resource<Option<ReplicaView>>);

/// Asks the server once per page load which replica answers; call at the top of the app, right
/// after `provide_caller`, so the resource is made in the same order on the server and while
/// hydrating.
pub fn provide_replica() {
    // An error (a visitor not signed in, Baton unreachable) shows nothing.
    let replica = Resource::new(|| (), |_| async { replica_status().await.ok() });
    provide_context(ReplicaResource(replica));
}

/// The replica's first answer, to `.await` in the same `Suspend` as the caller.
pub fn use_replica() -> Resource<Option<ReplicaView>> {
    match use_context::<ReplicaResource>() {
        Some(ReplicaResource(replica)) => replica,
        None => Resource::new(|| (), |_| async { None }),
    }
}

/// "Replica baton-b · leader: baton-a since …", or "… · this replica leads since …".
#[component]
pub fn ReplicaBadge(replica: ReplicaView) -> impl IntoView {
    let current = RwSignal::new(replica);
    #[cfg(feature = "hydrate")]
    {
        let refresh = move || {
            leptos::task::spawn_local(async move {
                // A failed ask keeps the last answer: the next one corrects it.
                if let Ok(answer) = replica_status().await {
                    current.set(answer);
                }
            });
        };
        if let Ok(handle) = set_interval_with_handle(refresh, REFRESH) {
            on_cleanup(move || handle.clear());
        }
    }
    let role = move || -> &'static str { current.with(|view| view.role.into()) };
    view! {
        <p class=move || format!("replica replica-{}", role()) data-testid="replica" data-role=role>
            <span class="muted">"Replica "</span>
            <strong data-testid="replica-name">{move || current.with(|view| view.replica.clone())}</strong>
            " · "
            <span data-testid="replica-leader">{move || current.with(leads)}</span>
            <span data-testid="replica-since">
                {move || {
                    current
                        .with(|view| view.leader_since)
                        .map(|ms| {
                            view! {
                                " since "
                                <LocalTime ms />
                            }
                        })
                }}
            </span>
        </p>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(role: ReplicaRole, leader: Option<&str>) -> ReplicaView {
        ReplicaView {
            replica: "baton-b".into(),
            role,
            leader: leader.map(str::to_owned),
            leader_since: leader.map(|_| 1_700_000_000_000),
        }
    }

    #[test]
    fn the_bar_says_which_replica_leads() {
        assert_eq!(
            leads(&view(ReplicaRole::Leader, Some("baton-b"))),
            "this replica leads"
        );
        assert_eq!(
            leads(&view(ReplicaRole::Follower, Some("baton-a"))),
            "leader: baton-a"
        );
        assert_eq!(
            leads(&view(ReplicaRole::Follower, None)),
            "no replica leads right now"
        );
        assert!(leads(&view(ReplicaRole::Starting, None)).starts_with("starting"));
    }
}
