//! The audit log, for admins: who did what to what, from which address and when, newest first,
//! filtered by actor and action through the address (so a filtered view can be shared), a page
//! at a time. Below it, the newest attempts to send notifications (`[[notify]]`).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::{A, Form};
use leptos_router::hooks::use_query_map;

use super::address;
use super::format::error_message;
use super::widgets::LocalTime;
use crate::auth::{
    AuditEntry, AuditFilter, AuditPage, allows, list_audit, list_notifications, use_caller,
};
use crate::model::{AttemptVerdict, NotificationAttempt, NotificationEvent, NotifyKind, Role};

/// Entries per page unless the address says otherwise.
const PAGE_SIZE: u32 = 50;

/// The actions Baton records, in the order the filter offers them, with how people say them.
const ACTIONS: &[(&str, &str)] = &[
    ("login", "Signed in"),
    ("login_failed", "Failed sign-in"),
    ("logout", "Signed out"),
    ("deploy", "Deploy"),
    ("pause", "Pause"),
    ("resume", "Resume"),
    ("abort", "Abort"),
    ("approve", "Approve"),
    ("approve_refused", "Approval refused"),
    ("promote", "Promote"),
    ("rollback", "Roll back"),
    ("webhook_replay", "Webhook replay"),
    ("user_create", "User added"),
    ("user_password", "Password changed"),
    ("user_delete", "User deleted"),
    ("token_create", "Token created"),
    ("token_revoke", "Token revoked"),
];

fn action_label(action: &str) -> String {
    ACTIONS
        .iter()
        .find(|(known, _)| *known == action)
        .map_or_else(
            || action.replace('_', " "),
            |(_, label)| (*label).to_owned(),
        )
}

/// The audit page's query string: `actor`, `action`, `before`, `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Query {
    actor: Option<String>,
    action: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

impl Query {
    fn filter(&self) -> AuditFilter {
        AuditFilter {
            actor: self.actor.clone(),
            action: self.action.clone(),
            before: self.before,
            limit: Some(self.limit.unwrap_or(PAGE_SIZE)),
        }
    }

    fn is_filtered(&self) -> bool {
        self.actor.is_some() || self.action.is_some()
    }

    /// The address of this view at another page.
    fn href(&self, before: Option<i64>) -> String {
        address::href(
            "/audit",
            &[
                ("actor", self.actor.clone()),
                ("action", self.action.clone()),
                ("limit", self.limit.map(|limit| limit.to_string())),
                ("before", before.map(|before| before.to_string())),
            ],
        )
    }
}

#[component]
pub fn AuditLogPage() -> impl IntoView {
    let query_map = use_query_map();
    let query = Memo::new(move |_| {
        query_map.with(|q| Query {
            actor: address::text(q, "actor"),
            action: address::text(q, "action"),
            before: address::number(q, "before"),
            limit: address::number(q, "limit"),
        })
    });
    let caller = use_caller();
    let page = Resource::new(move || query.get(), |query| list_audit(query.filter()));
    let notifications = Resource::new(|| (), |_| list_notifications());

    view! {
        <Title text="Audit log" />
        <div class="page-head">
            <h1>"Audit log"</h1>
        </div>
        <Transition fallback=|| view! { <p class="muted">"Loading the audit log…"</p> }>
            {move || Suspend::new(async move {
                if !allows(caller.await.as_ref(), Role::Admin) {
                    return view! {
                        <p class="empty">"Only admins can read the audit log."</p>
                    }
                        .into_any();
                }
                let current = query.get();
                let filters = filter_form(&current);
                let sent = notification_section(notifications.await);
                match page.await {
                    Ok(page) => view! { {filters} {entries(page, &current)} {sent} }.into_any(),
                    Err(error) => {
                        view! {
                            {filters}
                            <p class="error" role="alert">
                                "Could not load the audit log: "
                                {error_message(&error)}
                            </p>
                            {sent}
                        }
                            .into_any()
                    }
                }
            })}
        </Transition>
    }
    .into_any()
}

/// Actor and action filters; a plain GET form, so it works before the wasm loads too.
fn filter_form(current: &Query) -> impl IntoView + use<> {
    let mut actions: Vec<(String, String)> = ACTIONS
        .iter()
        .map(|(action, label)| ((*action).to_owned(), (*label).to_owned()))
        .collect();
    // An action this version does not know (from the address, or a newer Baton) stays selectable.
    if let Some(action) = &current.action
        && !actions.iter().any(|(known, _)| known == action)
    {
        actions.push((action.clone(), action_label(action)));
    }
    let action_options = actions
        .into_iter()
        .map(|(action, label)| {
            let selected = current.action.as_deref() == Some(action.as_str());
            view! {
                <option value=action selected=selected>
                    {label}
                </option>
            }
        })
        .collect_view();
    let limit = current.limit.map(|limit| {
        view! { <input type="hidden" name="limit" value=limit.to_string() /> }
    });
    let clear = current.is_filtered().then(|| {
        view! { <A href="/audit">"Clear filters"</A> }
    });
    let any_action = current.action.is_none();
    let actor = current.actor.clone().unwrap_or_default();
    view! {
        <Form method="GET" action="/audit">
            <div class="filters" role="group" aria-label="Filter the audit log">
                <label for="filter-actor">"Who"</label>
                <input
                    id="filter-actor"
                    type="text"
                    name="actor"
                    value=actor
                    placeholder="user or token name"
                    autocomplete="off"
                    spellcheck="false"
                />
                <label for="filter-action">"Action"</label>
                <select id="filter-action" name="action">
                    <option value="" selected=any_action>
                        "Any action"
                    </option>
                    {action_options}
                </select>
                {limit}
                <button type="submit">"Apply"</button>
                {clear}
            </div>
        </Form>
    }
}

fn entries(page: AuditPage, query: &Query) -> impl IntoView + use<> {
    if page.entries.is_empty() {
        let empty = if query.is_filtered() {
            view! {
                <p class="empty">
                    "No entries match these filters. " <A href="/audit">"Show every entry"</A>
                </p>
            }
            .into_any()
        } else if query.before.is_some() {
            view! {
                <p class="empty">
                    "No older entries. " <A href="/audit">"Back to the newest"</A>
                </p>
            }
            .into_any()
        } else {
            view! { <p class="empty">"Nothing has been recorded yet."</p> }.into_any()
        };
        return empty;
    }
    let newest = query.before.map(|_| {
        let href = query.href(None);
        view! {
            <A href=href attr:rel="prev">
                "← Newest"
            </A>
        }
    });
    let older = page.next_before.map(|before| {
        let href = query.href(Some(before));
        view! {
            <A href=href attr:rel="next">
                "Older →"
            </A>
        }
    });
    view! {
        <table class="audit stack" data-testid="audit">
            <caption class="visually-hidden">"Audit log, newest first"</caption>
            <thead>
                <tr>
                    <th scope="col">"When"</th>
                    <th scope="col">"Who"</th>
                    <th scope="col">"What"</th>
                    <th scope="col">"Target"</th>
                    <th scope="col">"Detail"</th>
                    <th scope="col">"From"</th>
                </tr>
            </thead>
            <tbody>
                {page.entries.into_iter().map(entry_row).collect_view()}
            </tbody>
        </table>
        <nav class="pager" aria-label="Pages">
            {newest}
            {older}
        </nav>
    }
    .into_any()
}

fn entry_row(entry: AuditEntry) -> impl IntoView {
    let failed = entry.action.ends_with("_failed");
    let dash = || "—".to_owned();
    let from = entry.address.clone().unwrap_or_else(|| {
        if entry.actor_kind == "cli" {
            "command line".into()
        } else {
            dash()
        }
    });
    view! {
        <tr
            data-audit-id=entry.id.to_string()
            data-action=entry.action.clone()
            data-actor=entry.actor.clone()
            class:audit-failed=failed
        >
            <td data-label="When">
                <LocalTime ms=entry.at />
            </td>
            <td data-label="Who">
                {entry.actor.clone()} " "
                <span class="muted small">{format!("({})", entry.actor_kind)}</span>
            </td>
            <td data-label="What">{action_label(&entry.action)}</td>
            <td data-label="Target">{entry.target.unwrap_or_else(dash)}</td>
            <td data-label="Detail">{entry.detail.unwrap_or_else(dash)}</td>
            <td data-label="From">
                <code>{from}</code>
            </td>
        </tr>
    }
}

/// A notification's event in words.
fn event_label(event: NotificationEvent) -> &'static str {
    match event {
        NotificationEvent::Started => "Started",
        NotificationEvent::Succeeded => "Succeeded",
        NotificationEvent::Failed => "Failed",
        NotificationEvent::RolledBack => "Rolled back",
        NotificationEvent::SoakTripped => "Watch tripped",
    }
}

/// How an attempt ended, in words, and the class that colours it.
fn verdict_label(verdict: AttemptVerdict) -> (&'static str, &'static str) {
    match verdict {
        AttemptVerdict::Delivered => ("Delivered", "check-ok"),
        AttemptVerdict::WillRetry => ("Will retry", "muted"),
        AttemptVerdict::GaveUp => ("Gave up", "error"),
    }
}

fn kind_label(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Slack => "Slack",
        NotifyKind::Webhook => "Webhook",
    }
}

/// The notification attempts, newest first: what was sent where, and how it went.
fn notification_section(
    attempts: Result<Vec<NotificationAttempt>, ServerFnError>,
) -> impl IntoView + use<> {
    let body = match attempts {
        Err(error) => view! {
            <p class="error" role="alert">
                "Could not load the notification attempts: " {error_message(&error)}
            </p>
        }
        .into_any(),
        Ok(attempts) if attempts.is_empty() => view! {
            <p class="empty">"No notification has been sent yet."</p>
        }
        .into_any(),
        Ok(attempts) => view! {
            <table class="audit stack" data-testid="notifications">
                <caption class="visually-hidden">"Notification attempts, newest first"</caption>
                <thead>
                    <tr>
                        <th scope="col">"When"</th>
                        <th scope="col">"Rollout"</th>
                        <th scope="col">"Event"</th>
                        <th scope="col">"To"</th>
                        <th scope="col">"Attempt"</th>
                        <th scope="col">"Result"</th>
                    </tr>
                </thead>
                <tbody>{attempts.into_iter().map(attempt_row).collect_view()}</tbody>
            </table>
        }
        .into_any(),
    };
    view! {
        <h2 id="notifications">"Notifications"</h2>
        {body}
    }
}

fn attempt_row(attempt: NotificationAttempt) -> impl IntoView {
    let (verdict, class) = verdict_label(attempt.verdict);
    let detail = match (attempt.status, attempt.error) {
        (_, Some(error)) => format!(" ({error})"),
        (Some(status), None) => format!(" (HTTP {status})"),
        (None, None) => String::new(),
    };
    view! {
        <tr data-notification-id=attempt.id.to_string() data-verdict=attempt.verdict.as_str()>
            <td data-label="When">
                <LocalTime ms=attempt.at />
            </td>
            <td data-label="Rollout">
                <A href=format!("/deployments/{}", attempt.rollout)>
                    {format!("{} #{}", attempt.service, attempt.rollout)}
                </A>
            </td>
            <td data-label="Event">{event_label(attempt.event)}</td>
            <td data-label="To">
                {kind_label(attempt.kind)} " " <code>{attempt.url_env}</code>
            </td>
            <td data-label="Attempt">{attempt.attempt.to_string()}</td>
            <td data-label="Result">
                <span class=class>{verdict}</span>
                {detail}
            </td>
        </tr>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_keep_the_filters() {
        let query = Query {
            actor: Some("ada lovelace".into()),
            action: Some("deploy".into()),
            before: Some(40),
            limit: Some(10),
        };
        assert_eq!(
            query.href(Some(30)),
            "/audit?actor=ada%20lovelace&action=deploy&limit=10&before=30"
        );
        assert_eq!(Query::default().href(None), "/audit");
        assert_eq!(Query::default().href(Some(7)), "/audit?before=7");
    }

    #[test]
    fn actions_read_as_words() {
        assert_eq!(action_label("login_failed"), "Failed sign-in");
        assert_eq!(action_label("approve_refused"), "Approval refused");
        assert_eq!(action_label("something_new"), "something new");
    }
}
