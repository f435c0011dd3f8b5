//! The fleet dashboard: every service with its backends as the load balancer sees them, the
//! rollout in progress, and a Redeploy button per service. Server-rendered from
//! `fleet_status`, then kept live by the fleet-wide event stream.

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;

use super::format::{check_label, lb_class, reachability_label, status_label, step_doing};
use super::live::{Connection, ConnectionBadge, Handler, follow};
use super::redeploy::Redeploy;
use super::widgets::LocalTime;
use crate::auth::{allows, use_caller};
use crate::fleet::fleet_status;
use crate::model::{
    ActiveRollout, BackendStatus, CheckResult, HostView, OverlapView, Reachability, Role,
    RolloutStatus, ServiceStatus, StepKind,
};

#[component]
pub fn ServicesPage() -> impl IntoView {
    let initial = Resource::new(|| (), |_| fleet_status());
    let caller = use_caller();
    view! {
        <Title text="Services" />
        <Suspense fallback=|| view! { <p class="muted">"Loading services…"</p> }>
            {move || Suspend::new(async move {
                let caller = caller.await;
                let may = Permissions {
                    deploy: allows(caller.as_ref(), Role::Deployer),
                    replay: allows(caller.as_ref(), Role::Admin),
                };
                match initial.await {
                    Ok(services) => view! { <Dashboard initial=services may /> }.into_any(),
                    Err(error) => {
                        view! {
                            <h1>"Services"</h1>
                            <p class="error" role="alert">
                                "Could not load the services: "
                                {super::format::error_message(&error)}
                            </p>
                        }
                            .into_any()
                    }
                }
            })}
        </Suspense>
    }
}

/// What the caller may do on the dashboard (the server enforces it regardless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Permissions {
    /// Redeploy (deployers and admins).
    deploy: bool,
    /// Replay a webhook delivery (admins).
    replay: bool,
}

/// The dashboard over a live copy of the fleet's state.
#[component]
fn Dashboard(initial: Vec<ServiceStatus>, may: Permissions) -> impl IntoView {
    let fleet = RwSignal::new(initial);
    let connection = RwSignal::new(Connection::Waiting);
    let on_fleet: Handler = Box::new(move |data, _id| {
        if let Ok(services) = serde_json::from_str::<Vec<ServiceStatus>>(&data) {
            fleet.set(services);
        }
    });
    follow("/api/events", connection, vec![("fleet", on_fleet)]);

    let (filter, set_filter) = signal(String::new());
    let names = Memo::new(move |_| {
        fleet.with(|all| all.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
    });
    let shown = Memo::new(move |_| {
        let needle = filter.get().trim().to_lowercase();
        names.with(|names| {
            names
                .iter()
                .filter(|name| name.to_lowercase().contains(&needle))
                .cloned()
                .collect::<Vec<_>>()
        })
    });
    let count = move || {
        format!(
            "Showing {} of {} services",
            shown.with(Vec::len),
            names.with(Vec::len)
        )
    };

    view! {
        <div class="page-head">
            <div class="title-line">
                <h1>"Services"</h1>
                <ConnectionBadge connection />
            </div>
            <label class="filter">
                <span>"Filter"</span>
                <input
                    type="search"
                    name="filter"
                    placeholder="service name"
                    prop:value=filter
                    on:input=move |ev| set_filter.set(event_target_value(&ev))
                />
            </label>
        </div>
        <Show
            when=move || names.with(|n| !n.is_empty())
            fallback=|| {
                view! {
                    <p class="empty">
                        "No services are configured yet. Add a " <code>"[[service]]"</code>
                        " table to the configuration file and restart Baton."
                    </p>
                }
            }
        >
            <p class="muted" data-testid="service-count">
                {count}
            </p>
            <ul class="services">
                // Every card stays built; the filter only hides the others, so clearing it does
                // not build a service's rows again (500 of them took a 100–170 ms task).
                <For each=move || names.get() key=|name| name.clone() let:name>
                    <ServiceCard name fleet may shown />
                </For>
            </ul>
        </Show>
    }
    .into_any()
}

/// One service: its backends, its rollout in progress, and its Redeploy form. The card is built
/// once per service and reads its state from the live fleet, so an open form survives updates.
#[component]
fn ServiceCard(
    name: String,
    fleet: RwSignal<Vec<ServiceStatus>>,
    may: Permissions,
    /// The services the filter lets through; the card is hidden when it is not one of them.
    shown: Memo<Vec<String>>,
) -> impl IntoView {
    let hidden = {
        let name = name.clone();
        move || shown.with(|shown| !shown.contains(&name))
    };
    let status = {
        let name = name.clone();
        Memo::new(move |_| fleet.with(|all| all.iter().find(|s| s.name == name).cloned()))
    };
    let heading_id = format!("service-{name}");
    let place = move || {
        status.with(|s| {
            s.as_ref().map(|s| {
                view! {
                    "HAProxy backend " <code>{s.haproxy_backend.clone()}</code> " on "
                    {s.load_balancer.clone()}
                }
            })
        })
    };
    let summary = move || status.with(|s| s.as_ref().map(version_summary));
    let lb_error = move || {
        status.with(|s| {
            s.as_ref()
                .and_then(|s| s.load_balancer_error.clone())
                .map(|error| {
                    view! {
                        <p class="lb-error" role="alert" data-testid="lb-error">
                            <strong>"The load balancer did not answer: "</strong>
                            {error}
                        </p>
                    }
                })
        })
    };
    let active = move || {
        status.with(|s| {
            s.as_ref()
                .and_then(|s| s.active.clone().map(|active| (active, s.queued)))
                .map(|(active, queued)| view! { <ActiveBox active queued /> })
        })
    };
    // Each row is keyed and reads its own memo, so a snapshot redraws only the rows whose
    // backend (or host) changed, not all of them: with 500 backends, redrawing every row took
    // one 100–170 ms task per snapshot.
    let rows = Memo::new(move |_| status.with(|s| s.as_ref().map(table_rows).unwrap_or_default()));
    let keys = Memo::new(move |_| {
        rows.with(|rows| rows.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>())
    });
    let by_key = Memo::new(move |_| {
        rows.with(|rows| rows.iter().cloned().collect::<HashMap<String, Row>>())
    });

    let data_service = name.clone();
    let labelled_by = heading_id.clone();
    let caption = format!("Backends of {name}");
    view! {
        <li
            class="card service"
            data-service=data_service
            aria-labelledby=labelled_by
            hidden=hidden
        >
            <div class="card-head">
                <div>
                    <h2 id=heading_id>{name.clone()}</h2>
                    <p class="muted small">{place}</p>
                </div>
                <p class="version-summary" data-testid="version-summary">
                    {summary}
                </p>
            </div>
            {lb_error}
            {active}
            <table class="backends stack">
                <caption class="visually-hidden">{caption}</caption>
                <thead>
                    <tr>
                        <th scope="col">"Backend"</th>
                        <th scope="col">"Version"</th>
                        <th scope="col">"Load balancer"</th>
                        <th scope="col">"Sessions"</th>
                        <th scope="col">"Health"</th>
                    </tr>
                </thead>
                <tbody>
                    <For each=move || keys.get() key=|key| key.clone() let:key>
                        <TableRow key rows=by_key />
                    </For>
                </tbody>
            </table>
            {may.deploy.then(|| view! { <Redeploy service=name.clone() status /> })}
            <details class="webhooks">
                <summary>"Webhooks and deliveries"</summary>
                <crate::webhooks::ServiceWebhooks service=name may_replay=may.replay />
            </details>
        </li>
    }
    .into_any()
}

/// "v2 on all 3 backends", or the mix; backends on a host out of reach are counted apart, since
/// what they run is not known.
fn version_summary(status: &ServiceStatus) -> String {
    let out_of_reach = |b: &&BackendStatus| {
        b.host
            .as_ref()
            .is_some_and(|host| host.reachable == Reachability::Unreachable)
    };
    let known: Vec<&BackendStatus> = status
        .backends
        .iter()
        .filter(|b| !out_of_reach(b))
        .collect();
    let unknown = status.backends.len() - known.len();
    let mut versions: Vec<&str> = known.iter().map(|b| b.version.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    let summary = match versions.as_slice() {
        [] if unknown == 0 => "No backends".into(),
        [] => String::new(),
        [one] if unknown > 0 => format!("{one} on {} of {}", known.len(), status.backends.len()),
        [one] => format!(
            "{one} on {}",
            match known.len() {
                1 => "its backend".to_owned(),
                2 => "both backends".to_owned(),
                n => format!("all {n} backends"),
            }
        ),
        many => format!("Mixed versions: {}", many.join(", ")),
    };
    match unknown {
        0 => summary,
        n if summary.is_empty() => format!("{n} unknown: host out of reach"),
        n => format!("{summary}; {n} unknown: host out of reach"),
    }
}

/// One row of a service's backends table.
#[derive(Clone, Debug, PartialEq)]
enum Row {
    /// The heading of a host's backends (`None`: this machine's).
    Host(Option<HostView>),
    /// A backend, with the step it is in when the rollout in progress acts on it.
    Backend(BackendStatus, Option<StepKind>),
}

/// The table's rows in order, each with its key: a heading per host when some backend runs on
/// one (`host:<name>`, or `host:` for this machine), then its backends (`backend:<name>`).
fn table_rows(status: &ServiceStatus) -> Vec<(String, Row)> {
    let acting: &[String] = status
        .active
        .as_ref()
        .map_or(&[], |active| active.backends.as_slice());
    let step = status.active.as_ref().and_then(|active| active.step);
    let grouped = status.backends.iter().any(|b| b.host.is_some());
    let mut rows = Vec::with_capacity(status.backends.len() + 1);
    for (host, backends) in by_host(&status.backends) {
        if grouped {
            let key = format!("host:{}", host.map_or("", |h| h.name.as_str()));
            rows.push((key, Row::Host(host.cloned())));
        }
        for backend in backends {
            let here = acting.contains(&backend.name).then_some(step).flatten();
            rows.push((
                format!("backend:{}", backend.name),
                Row::Backend(backend.clone(), here),
            ));
        }
    }
    rows
}

/// One keyed row, redrawn only when what it shows changed.
#[component]
fn TableRow(key: String, rows: Memo<HashMap<String, Row>>) -> impl IntoView {
    let row = Memo::new(move |_| rows.with(|rows| rows.get(&key).cloned()));
    move || {
        row.with(|row| match row {
            Some(Row::Host(host)) => host_row(host.as_ref()).into_any(),
            Some(Row::Backend(backend, step)) => backend_row(backend, *step).into_any(),
            // Gone from the configuration: the keyed list drops the row next.
            None => ().into_any(),
        })
    }
}

/// The backends grouped by the host they run on, in the order their hosts first appear (this
/// machine's, `None`, wherever its first backend is).
fn by_host(backends: &[BackendStatus]) -> Vec<(Option<&HostView>, Vec<&BackendStatus>)> {
    let mut groups: Vec<(Option<&HostView>, Vec<&BackendStatus>)> = Vec::new();
    for backend in backends {
        let name = backend.host.as_ref().map(|h| h.name.as_str());
        match groups
            .iter_mut()
            .find(|(host, _)| host.map(|h| h.name.as_str()) == name)
        {
            Some((_, members)) => members.push(backend),
            None => groups.push((backend.host.as_ref(), vec![backend])),
        }
    }
    groups
}

/// The heading row of one host's backends: whether Baton can reach it, and since when not.
fn host_row(host: Option<&HostView>) -> impl IntoView + use<> {
    let Some(host) = host else {
        return view! {
            <tr class="host-row" data-host="">
                <th colspan="5" scope="rowgroup">
                    "This machine"
                </th>
            </tr>
        }
        .into_any();
    };
    let (class, word) = reachability_label(host.reachable);
    let seen = host.last_seen.map(|ms| {
        view! { <span class="muted small">" · last seen " <LocalTime ms /></span> }
    });
    let error = (host.reachable == Reachability::Unreachable)
        .then(|| host.last_error.clone())
        .flatten()
        .map(|error| view! { <span class="host-error small" data-testid="host-error">" · " {error}</span> });
    view! {
        <tr class="host-row" data-host=host.name.clone()>
            <th colspan="5" scope="rowgroup">
                "Host " {host.name.clone()}
                <span class="muted small address">{host.ssh.clone()}</span>
                " "
                <span class=class data-testid="host-reachability">
                    {word}
                </span>
                {seen}
                {error}
            </th>
        </tr>
    }
    .into_any()
}

/// The other instance of a backend while a surge runs both: where it listens and what HAProxy
/// says of it on each node.
fn overlap_line(overlap: &OverlapView) -> AnyView {
    let states: Vec<String> = overlap
        .load_balancer
        .iter()
        .map(|node| node.status.to_string())
        .collect();
    view! {
        <div class="small overlap" data-testid="overlap">
            "overlapping with "
            {overlap.version.clone().map(|version| view! { <span class="version">{version}</span> " on " })}
            <span class="address">{overlap.address.clone()}</span>
            " ("
            {overlap.server.clone()}
            ": "
            <span data-lb-status=states.join(", ")>{states.join(", ")}</span>
            ")"
        </div>
    }
    .into_any()
}

fn backend_row(backend: &BackendStatus, step: Option<StepKind>) -> impl IntoView + use<> {
    let unreachable = backend
        .host
        .as_ref()
        .filter(|host| host.reachable == Reachability::Unreachable)
        .map(|host| host.name.clone());
    let nodes = backend.load_balancer.len();
    let status_cell = if backend.load_balancer.is_empty() {
        view! { <span class="lb lb-unknown">"unknown"</span> }.into_any()
    } else {
        backend
            .load_balancer
            .iter()
            .map(|node| {
                let label = if nodes > 1 {
                    format!("{}: {}", node.node, node.status)
                } else {
                    node.status.to_string()
                };
                let backup = node.backup.then_some(view! {
                    <span
                        class="muted"
                        data-backup="true"
                        title="An HAProxy backup server: it gets traffic only when no other server is UP, so Baton never counts it as capacity and rolls it last"
                    >
                        " (backup)"
                    </span>
                });
                view! {
                    <span
                        class=format!("lb {}", lb_class(&node.status))
                        data-lb-status=node.status.to_string()
                        title=format!("HAProxy node {}", node.node)
                    >
                        {label}
                    </span>
                    {backup}
                }
            })
            .collect_view()
            .into_any()
    };
    let sessions: u64 = backend.load_balancer.iter().map(|n| n.sessions).sum();
    let checks: Vec<CheckResult> = backend
        .load_balancer
        .iter()
        .filter_map(|n| n.check.clone())
        .collect();
    let unchecked = checks.is_empty().then(|| {
        view! {
            <span class="muted" title="HAProxy runs no check on a server in maintenance">
                "not checked"
            </span>
        }
    });
    let health = checks
        .into_iter()
        .map(|check| {
            let (class, word) = check_label(&check);
            view! {
                <span class=class title=format!("HAProxy check result {check}")>
                    {format!("{word} ({check})")}
                </span>
            }
        })
        .collect_view();
    let acting = step.is_some();
    let step = step.map(|step| {
        view! {
            <span class="acting" data-testid="acting">
                {format!("↻ {}", step_doing(step))}
            </span>
        }
    });
    let overlap = backend.overlap.as_ref().map(overlap_line);
    view! {
        <tr data-backend=backend.name.clone() class:acting-row=acting>
            <th scope="row" data-label="Backend">
                {backend.name.clone()}
                <span class="muted small address">{backend.address.clone()}</span>
                {step}
                {overlap}
            </th>
            <td data-label="Version" data-testid="backend-version">
                {match unreachable {
                    Some(host) => {
                        view! {
                            <span class="unreachable" data-testid="backend-unreachable">
                                {format!("unknown: host {host} is unreachable")}
                            </span>
                        }
                            .into_any()
                    }
                    None => view! { <code>{backend.version.clone()}</code> }.into_any(),
                }}
            </td>
            <td data-label="Load balancer">{status_cell}</td>
            <td data-label="Sessions" data-testid="sessions">
                {sessions.to_string()}
            </td>
            <td data-label="Health">{health} {unchecked}</td>
        </tr>
    }
}

/// The rollout in progress on a service: which backend, which step, how far, and a link to it.
#[component]
fn ActiveBox(active: ActiveRollout, queued: u32) -> impl IntoView {
    let href = format!("/deployments/{}", active.id);
    let verb = match active.status {
        RolloutStatus::Queued => "Queued",
        RolloutStatus::Paused => "Paused",
        RolloutStatus::AwaitingApproval => "Awaiting approval",
        RolloutStatus::AwaitingPromote => "Awaiting promotion",
        RolloutStatus::Running if active.rolling_back => "Rolling back",
        RolloutStatus::Running => "Rolling out",
        // Not active any more: the next snapshot drops it.
        status @ (RolloutStatus::Succeeded
        | RolloutStatus::Failed
        | RolloutStatus::RolledBack
        | RolloutStatus::Cancelled) => status_label(status),
    };
    let headline = format!("{verb}: {} (rollout #{})", active.to_version, active.id);
    let now = match (active.step, active.backends.as_slice()) {
        (Some(step), []) => step_doing(step).to_owned(),
        (Some(step), backends) => format!("{}: {}", backends.join(", "), step_doing(step)),
        (None, _) if active.status == RolloutStatus::AwaitingApproval => {
            "waiting for the approval of a deployer other than its requester".into()
        }
        (None, _) if active.status == RolloutStatus::AwaitingPromote => {
            "the canaries are done and serving: waiting for a promotion".into()
        }
        (None, _) => "waiting for its turn".into(),
    };
    let progress = format!("{} of {} backends done", active.done, active.total);
    let queued = (queued > 0).then(|| {
        view! {
            <p class="muted small">
                {format!("{queued} more rollout(s) queued behind it")}
            </p>
        }
    });
    view! {
        <div class=format!("active active-{}", active.status) data-testid="active-rollout">
            <p>
                <strong>{headline}</strong>
                " · "
                <span data-testid="active-step">{now}</span>
            </p>
            <div class="progress-line">
                <progress
                    max=active.total.max(1).to_string()
                    value=active.done.to_string()
                    aria-label=progress.clone()
                ></progress>
                <span class="small">{progress}</span>
                <A href=href attr:class="button-link">
                    "View rollout"
                </A>
            </div>
            {queued}
        </div>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, host: Option<&str>) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            address: "198.18.0.2:8080".into(),
            version: "v1".into(),
            load_balancer: Vec::new(),
            host: host.map(|host| HostView {
                name: host.into(),
                ssh: format!("deploy@{host}:22"),
                reachable: Reachability::Reachable,
                last_error: None,
                last_seen: None,
            }),
            overlap: None,
        }
    }

    #[test]
    fn backends_on_a_host_out_of_reach_are_not_counted_as_running_a_version() {
        let mut backends = vec![
            backend("web1", None),
            backend("web2", Some("app1")),
            backend("web3", Some("app1")),
        ];
        let status = |backends: &[BackendStatus]| ServiceStatus {
            name: "web".into(),
            load_balancer: "edge".into(),
            haproxy_backend: "web".into(),
            backends: backends.to_vec(),
            load_balancer_error: None,
            active: None,
            queued: 0,
            suggested_version: None,
            rollback_version: None,
        };
        assert_eq!(version_summary(&status(&backends)), "v1 on all 3 backends");
        for b in &mut backends[1..] {
            b.host.as_mut().unwrap().reachable = Reachability::Unreachable;
        }
        assert_eq!(
            version_summary(&status(&backends)),
            "v1 on 1 of 3; 2 unknown: host out of reach"
        );
        assert_eq!(
            version_summary(&status(&backends[1..])),
            "2 unknown: host out of reach"
        );
    }

    #[test]
    fn rows_are_keyed_by_host_and_backend_and_only_the_acting_backend_shows_the_step() {
        let status = |backends: Vec<BackendStatus>| ServiceStatus {
            name: "web".into(),
            load_balancer: "edge".into(),
            haproxy_backend: "web".into(),
            backends,
            load_balancer_error: None,
            active: Some(ActiveRollout {
                id: 7,
                status: RolloutStatus::Running,
                to_version: "v2".into(),
                step: Some(StepKind::Drain),
                backends: vec!["web2".into()],
                done: 0,
                total: 2,
                rolling_back: false,
            }),
            queued: 0,
            suggested_version: None,
            rollback_version: None,
        };
        let described = |rows: Vec<(String, Row)>| -> Vec<(String, Option<StepKind>)> {
            rows.into_iter()
                .map(|(key, row)| match row {
                    Row::Backend(_, step) => (key, step),
                    Row::Host(_) => (key, None),
                })
                .collect()
        };
        let local = described(table_rows(&status(vec![
            backend("web1", None),
            backend("web2", None),
        ])));
        assert_eq!(
            local,
            [
                ("backend:web1".to_owned(), None),
                ("backend:web2".to_owned(), Some(StepKind::Drain)),
            ],
            "no host headings when every backend is on this machine"
        );
        let hosted = described(table_rows(&status(vec![
            backend("web1", Some("app1")),
            backend("web2", None),
        ])));
        let keys: Vec<&str> = hosted.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["host:app1", "backend:web1", "host:", "backend:web2"]);
    }

    #[test]
    fn backends_are_grouped_by_host_in_the_order_hosts_first_appear() {
        let backends = [
            backend("web1", Some("app1")),
            backend("web2", Some("app2")),
            backend("web3", Some("app1")),
            backend("local1", None),
            backend("web4", Some("app2")),
        ];
        let groups: Vec<(Option<&str>, Vec<&str>)> = by_host(&backends)
            .into_iter()
            .map(|(host, members)| {
                (
                    host.map(|h| h.name.as_str()),
                    members.iter().map(|b| b.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                (Some("app1"), vec!["web1", "web3"]),
                (Some("app2"), vec!["web2", "web4"]),
                (None, vec!["local1"]),
            ]
        );
    }
}
