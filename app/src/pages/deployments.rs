//! The deployment history: every rollout, newest first, filtered by service and result through
//! the address (so a filtered view can be shared), a page at a time.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::{A, Form};
use leptos_router::hooks::use_query_map;

use super::address;
use super::format::{error_message, status_label, trigger_label};
use super::live::{Connection, ConnectionBadge, Handler, follow};
use super::widgets::{LocalTime, StatusBadge, elapsed, use_now};
use crate::fleet::{list_deployments, list_services};
use crate::model::{
    Change, DeploymentEvent, DeploymentFilter, DeploymentPage, DeploymentSummary, RolloutStatus,
};

/// Rollouts per page unless the address says otherwise.
const PAGE_SIZE: u32 = 25;

/// The history's query string: `service`, `status`, `before` or `after`, `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Query {
    service: Option<String>,
    status: Option<RolloutStatus>,
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// Which page of the same view a link goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    Newest,
    /// The page below this id.
    Older(i64),
    /// The page just above this id.
    Newer(i64),
}

impl Query {
    fn filter(&self) -> DeploymentFilter {
        DeploymentFilter {
            service: self.service.clone(),
            status: self.status,
            before: self.before,
            after: self.after,
            limit: Some(self.limit.unwrap_or(PAGE_SIZE)),
        }
    }

    fn is_filtered(&self) -> bool {
        self.service.is_some() || self.status.is_some()
    }

    /// The address of this view (the same filters) at another page.
    fn href(&self, cursor: Cursor) -> String {
        let (before, after) = match cursor {
            Cursor::Newest => (None, None),
            Cursor::Older(before) => (Some(before.to_string()), None),
            Cursor::Newer(after) => (None, Some(after.to_string())),
        };
        address::href(
            "/deployments",
            &[
                ("service", self.service.clone()),
                (
                    "status",
                    self.status.map(|status| status.as_str().to_owned()),
                ),
                ("limit", self.limit.map(|limit| limit.to_string())),
                ("before", before),
                ("after", after),
            ],
        )
    }
}

#[component]
pub fn DeploymentsPage() -> impl IntoView {
    let query_map = use_query_map();
    let query = Memo::new(move |_| {
        query_map.with(|q| Query {
            service: address::text(q, "service"),
            // An unknown status filters nothing, as if none were given.
            status: address::text(q, "status").and_then(|status| status.parse().ok()),
            before: address::number(q, "before"),
            after: address::number(q, "after"),
            limit: address::number(q, "limit"),
        })
    });
    let page = Resource::new(
        move || query.get(),
        |query| list_deployments(query.filter()),
    );
    let services = Resource::new(|| (), |_| list_services());

    // A rollout that starts or ends anywhere refreshes the list.
    let connection = RwSignal::new(Connection::Waiting);
    let on_event: Handler = Box::new(move |data, _id| {
        if let Ok(DeploymentEvent {
            change: Change::Status { .. },
            ..
        }) = serde_json::from_str::<DeploymentEvent>(&data)
        {
            page.refetch();
        }
    });
    follow("/api/events", connection, vec![("deployment", on_event)]);

    view! {
        <Title text="Deployments" />
        <div class="page-head">
            <div class="title-line">
                <h1>"Deployments"</h1>
                <ConnectionBadge connection />
            </div>
        </div>
        <Transition fallback=|| view! { <p class="muted">"Loading the history…"</p> }>
            {move || Suspend::new(async move {
                let names = services
                    .await
                    .map(|all| all.into_iter().map(|s| s.name).collect::<Vec<_>>())
                    .unwrap_or_default();
                let current = query.get();
                let filters = filter_form(names, &current);
                match page.await {
                    Ok(page) => view! { {filters} {history(page, &current)} }.into_any(),
                    Err(error) => {
                        view! {
                            {filters}
                            <p class="error" role="alert">
                                "Could not load the history: "
                                {error_message(&error)}
                            </p>
                        }
                            .into_any()
                    }
                }
            })}
        </Transition>
    }
    .into_any()
}

/// Service and result filters; a plain GET form, so it works before the wasm loads too.
fn filter_form(services: Vec<String>, current: &Query) -> impl IntoView + use<> {
    let service_options = services
        .into_iter()
        .map(|name| {
            let selected = current.service.as_deref() == Some(name.as_str());
            view! {
                <option value=name.clone() selected=selected>
                    {name.clone()}
                </option>
            }
        })
        .collect_view();
    let status_options = RolloutStatus::ALL
        .iter()
        .map(|&status| {
            let selected = current.status == Some(status);
            view! {
                <option value=status.as_str() selected=selected>
                    {status_label(status)}
                </option>
            }
        })
        .collect_view();
    let limit = current.limit.map(|limit| {
        view! { <input type="hidden" name="limit" value=limit.to_string() /> }
    });
    let clear = current.is_filtered().then(|| {
        view! { <A href="/deployments">"Clear filters"</A> }
    });
    let any_service = current.service.is_none();
    let any_status = current.status.is_none();
    view! {
        <Form method="GET" action="/deployments">
            <div class="filters" role="group" aria-label="Filter the history">
                <label for="filter-service">"Service"</label>
                <select id="filter-service" name="service">
                    <option value="" selected=any_service>
                        "All services"
                    </option>
                    {service_options}
                </select>
                <label for="filter-status">"Result"</label>
                <select id="filter-status" name="status">
                    <option value="" selected=any_status>
                        "Any result"
                    </option>
                    {status_options}
                </select>
                {limit}
                <button type="submit">"Apply"</button>
                {clear}
            </div>
        </Form>
    }
}

fn history(page: DeploymentPage, query: &Query) -> impl IntoView + use<> {
    if page.deployments.is_empty() {
        let empty = if query.is_filtered() {
            view! {
                <p class="empty">
                    "No deployments match these filters. "
                    <A href="/deployments">"Show every deployment"</A>
                </p>
            }
            .into_any()
        } else if query.before.is_some() {
            view! {
                <p class="empty">
                    "No older deployments. " <A href="/deployments">"Back to the newest"</A>
                </p>
            }
            .into_any()
        } else if query.after.is_some() {
            view! {
                <p class="empty">
                    "No newer deployments. " <A href="/deployments">"Back to the newest"</A>
                </p>
            }
            .into_any()
        } else {
            view! {
                <p class="empty">
                    "No deployments yet. Open " <A href="/">"Services"</A>
                    " and press Redeploy to start the first rollout."
                </p>
            }
            .into_any()
        };
        return empty;
    }
    // Off the newest page: back to it, or one page towards it.
    let newest = page.prev_after.map(|_| {
        let href = query.href(Cursor::Newest);
        view! { <A href=href>"← Newest"</A> }
    });
    let newer = page.prev_after.map(|after| {
        let href = query.href(Cursor::Newer(after));
        view! {
            <A href=href attr:rel="prev">
                "← Newer"
            </A>
        }
    });
    let older = page.next_before.map(|before| {
        let href = query.href(Cursor::Older(before));
        view! {
            <A href=href attr:rel="next">
                "Older →"
            </A>
        }
    });
    view! {
        <table class="history stack" data-testid="history">
            <caption class="visually-hidden">"Rollouts, newest first"</caption>
            <thead>
                <tr>
                    <th scope="col">"Rollout"</th>
                    <th scope="col">"Service"</th>
                    <th scope="col">"Version"</th>
                    <th scope="col">"Trigger"</th>
                    <th scope="col">"Who"</th>
                    <th scope="col">"Started"</th>
                    <th scope="col">"Duration"</th>
                    <th scope="col">"Result"</th>
                </tr>
            </thead>
            <tbody>
                {page
                    .deployments
                    .into_iter()
                    .map(|deployment| view! { <HistoryRow deployment /> })
                    .collect_view()}
            </tbody>
        </table>
        <nav class="pager" aria-label="Pages">
            {newest}
            {newer}
            {older}
        </nav>
    }
    .into_any()
}

#[component]
fn HistoryRow(deployment: DeploymentSummary) -> impl IntoView {
    let now = use_now();
    let d = deployment;
    let href = format!("/deployments/{}", d.id);
    let versions = format!(
        "{} → {}",
        d.from_version.as_deref().unwrap_or("mixed"),
        d.to_version
    );
    let started = match d.started_at {
        Some(at) => view! { <LocalTime ms=at /> }.into_any(),
        None => view! { <span class="muted">"not started"</span> }.into_any(),
    };
    let duration = d.started_at.map(|start| elapsed(start, d.finished_at, now));
    let status = d.status;
    view! {
        <tr data-deployment-id=d.id.to_string()>
            <td data-label="Rollout">
                <A href=href>{format!("#{}", d.id)}</A>
            </td>
            <td data-label="Service">{d.service.clone()}</td>
            <td data-label="Version">
                <code>{versions}</code>
            </td>
            <td data-label="Trigger">{trigger_label(d.trigger)}</td>
            <td data-label="Who">{d.requested_by.clone().unwrap_or_else(|| "—".into())}</td>
            <td data-label="Started">{started}</td>
            <td data-label="Duration">{duration}</td>
            <td data-label="Result" data-testid="result">
                <StatusBadge status=Signal::stored(status) />
            </td>
        </tr>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_keep_the_filters() {
        let query = Query {
            service: Some("web".into()),
            status: Some(RolloutStatus::RolledBack),
            before: Some(40),
            after: None,
            limit: Some(10),
        };
        assert_eq!(
            query.href(Cursor::Older(30)),
            "/deployments?service=web&status=rolled_back&limit=10&before=30"
        );
        assert_eq!(
            query.href(Cursor::Newer(31)),
            "/deployments?service=web&status=rolled_back&limit=10&after=31",
            "one cursor at a time"
        );
        assert_eq!(
            query.href(Cursor::Newest),
            "/deployments?service=web&status=rolled_back&limit=10"
        );
        assert_eq!(Query::default().href(Cursor::Newest), "/deployments");
    }
}
