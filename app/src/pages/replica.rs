//! Which replica answers and which one leads, in the top bar: rendered by the server with the
//! page, then asked again every few seconds in the browser, so a takeover shows without a reload.

use leptos::prelude::*;

use super::widgets::LocalTime;
use crate::fleet::replica_status;
use crate::model::{ReplicaRole, ReplicaView};

/// How often the browser asks again.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// What the bar says about the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leadership {
    /// The replica that answered this page.
    answered_by: String,
    /// Who leads, in words.
    leads: String,
    /// Since when (Unix milliseconds), when known.
    since: Option<i64>,
}

fn leadership(view: &ReplicaView) -> Leadership {
    let leads = match (view.role, &view.leader) {
        (ReplicaRole::Leader, _) => "this replica leads".to_owned(),
        (ReplicaRole::Follower, Some(leader)) => format!("leader: {leader}"),
        (ReplicaRole::Follower, None) => "no replica leads right now".to_owned(),
        (ReplicaRole::Starting, _) => "starting: not known yet which replica leads".to_owned(),
    };
    Leadership {
        answered_by: view.replica.clone(),
        leads,
        since: view.leader_since,
    }
}

/// The page's one answer to `replica_status`, shared through context.
#[derive(Clone, Copy)]
struct ReplicaResource(Resource<Option<ReplicaView>>);

/// Asks the server which replica answers once per page load, and again every [`REFRESH`] in the
/// browser while someone is signed in; call at the top of the app, after `provide_caller` (so
/// the resource is made in the same order on the server and while hydrating).
pub fn provide_replica() {
    // An error (a visitor not signed in, Baton unreachable) shows nothing.
    let replica = Resource::new(|| (), |_| async { replica_status().await.ok() });
    #[cfg(feature = "hydrate")]
    {
        // Only for someone signed in: a visitor would be refused every time.
        let caller = crate::auth::use_caller();
        let refresh = move || {
            if caller.get_untracked().flatten().is_some() {
                replica.refetch();
            }
        };
        if let Ok(handle) = set_interval_with_handle(refresh, REFRESH) {
            on_cleanup(move || handle.clear());
        }
    }
    provide_context(ReplicaResource(replica));
}

/// "Replica baton-b · leader: baton-a since …", or "… · this replica leads since …".
#[component]
pub fn ReplicaBadge() -> impl IntoView {
    let Some(ReplicaResource(replica)) = use_context::<ReplicaResource>() else {
        return ().into_any();
    };
    view! {
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                replica
                    .await
                    .map(|replica| {
                        let shown = leadership(&replica);
                        let role: &'static str = replica.role.into();
                        view! {
                            <p
                                class=format!("replica replica-{role}")
                                data-testid="replica"
                                data-role=role
                            >
                                <span class="muted">"Replica "</span>
                                <strong data-testid="replica-name">{shown.answered_by}</strong>
                                " · "
                                <span data-testid="replica-leader">{shown.leads}</span>
                                {shown
                                    .since
                                    .map(|ms| {
                                        view! {
                                            " since "
                                            <LocalTime ms />
                                        }
                                    })}
                            </p>
                        }
                    })
            })}
        </Transition>
    }
    .into_any()
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
        let leads = |role, leader| leadership(&view(role, leader)).leads;
        assert_eq!(
            leads(ReplicaRole::Leader, Some("baton-b")),
            "this replica leads"
        );
        assert_eq!(
            leads(ReplicaRole::Follower, Some("baton-a")),
            "leader: baton-a"
        );
        assert_eq!(
            leads(ReplicaRole::Follower, None),
            "no replica leads right now"
        );
        assert!(leads(ReplicaRole::Starting, None).starts_with("starting"));
        let shown = leadership(&view(ReplicaRole::Follower, Some("baton-a")));
        assert_eq!(shown.answered_by, "baton-b");
        assert_eq!(shown.since, Some(1_700_000_000_000));
    }
}
