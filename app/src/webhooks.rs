//! Git push webhooks in the UI: what to paste into each git host, and the delivery log with a
//! replay button. The shapes here are also what the JSON API answers.
//!
//! The server provides a [`Webhooks`] context ([`WebhookSource`]); the UI never sees the
//! configuration file, the database or a secret (only the name of the variable that holds it).

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::RolloutStatus;
use crate::pages::LocalTime;

/// One delivery as the log shows it. Times are Unix milliseconds.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// The log entry's id (what a replay names).
    pub id: i64,
    pub service: String,
    /// `github`, `gitlab`, `gitea`, `forgejo`, `bitbucket-cloud`, `bitbucket-dc` or `unknown`.
    pub provider: String,
    /// The host's event name, as sent (`push`, `Push Hook`, `repo:push`, …).
    pub event: Option<String>,
    /// The host's own delivery id: a redelivery carries the same one.
    pub delivery_id: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    /// `deployed`, `ignored`, `ping`, `duplicate`, `rejected`, or `processing` while its rollout
    /// is being queued.
    pub verdict: String,
    /// The HTTP status Baton answered with.
    pub status: u16,
    /// Why, in words.
    pub reason: String,
    /// The rollout it started (or the queued rollout it updated).
    pub rollout: Option<i64>,
    /// Set when an operator's replay of that earlier delivery wrote this entry.
    pub replay_of: Option<i64>,
    /// Whether its signature (or token) held. Only verified deliveries can be replayed.
    pub verified: bool,
    pub received_at: i64,
}

/// One page of a service's delivery log, newest first.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// What Baton answered to a delivery (or to a replay): the body of `POST /hooks/{service}`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    /// The HTTP status of the answer.
    pub status: u16,
    /// `deployed`, `ignored`, `ping`, `duplicate` or `rejected`.
    pub verdict: String,
    /// Why, in words: what was decided, or what was wrong and what was expected.
    pub reason: String,
    /// The same words on a 4xx or 5xx, so every error answer has `error` like the rest of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub service: String,
    /// The delivery log entry written for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// The version a rollout was asked for (the pushed commit, or the tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The rollout started, or the queued one that now deploys this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<i64>,
    /// `running` or `queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_status: Option<RolloutStatus>,
    /// A rollout already queued took this newer version instead of a second rollout queueing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coalesced: bool,
    /// For a duplicate: the first delivery with the same id (a redelivery) or the same body,
    /// and what was decided then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier: Option<Box<DeliveryView>>,
}

/// How a service's webhook is set up, for the page that says what to paste into each host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSetup {
    pub service: String,
    /// `/hooks/{service}`.
    pub path: String,
    /// The full URL: on `[auth] public_origin` when the configuration sets it, else on the host
    /// and scheme this browser reached Baton at.
    pub url: String,
    /// `None` when the service has no `[service.webhook]`: deliveries are refused with 403.
    pub config: Option<WebhookConfigView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookConfigView {
    /// The environment variable that holds the secret (its value is never shown).
    pub secret_env: String,
    pub branch: Option<String>,
    pub tags: Option<String>,
    /// Only pushes from this repository (`owner/name`) deploy; `None`: from any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// What the server provides to the webhook server functions, through Leptos context.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct Webhooks(pub std::sync::Arc<dyn WebhookSource>);

/// Errors are messages meant for the operator: they say what was wrong and what was expected.
#[cfg(feature = "ssr")]
#[async_trait::async_trait]
pub trait WebhookSource: Send + Sync + 'static {
    /// The service's webhook set-up, its `url` on Baton's own origin as the server sees it.
    fn setup(&self, service: &str) -> Result<WebhookSetup, String>;
    /// The service's delivery log, newest first.
    async fn deliveries(
        &self,
        service: String,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<DeliveryPage, String>;
    /// Processes a logged delivery again, as if it had just arrived (skipping the redelivery
    /// and same-body checks). Routed for admins only; the audit log names the caller, as it
    /// does for the API's replay.
    async fn replay(&self, id: i64) -> Result<DeliveryOutcome, String>;
}

#[cfg(feature = "ssr")]
fn source() -> Result<std::sync::Arc<dyn WebhookSource>, ServerFnError> {
    use_context::<Webhooks>()
        .map(|Webhooks(source)| source)
        .ok_or_else(|| ServerFnError::new("webhooks are not available on this server"))
}

/// The service's webhook URL and settings.
#[server(prefix = "/rpc", endpoint = "webhook_setup")]
pub async fn get_webhook_setup(service: String) -> Result<WebhookSetup, ServerFnError> {
    source()?.setup(&service).map_err(ServerFnError::new)
}

/// The newest deliveries of a service (50 unless `limit` says otherwise), newest first.
#[server(prefix = "/rpc", endpoint = "list_deliveries")]
pub async fn list_deliveries(
    service: String,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<DeliveryPage, ServerFnError> {
    source()?
        .deliveries(service, before, limit)
        .await
        .map_err(ServerFnError::new)
}

/// Processes a logged delivery again; returns what Baton decided this time.
#[server(prefix = "/rpc", endpoint = "replay_delivery")]
pub async fn replay_delivery(id: i64) -> Result<DeliveryOutcome, ServerFnError> {
    source()?.replay(id).await.map_err(ServerFnError::new)
}

/// A service's webhook: the URL and what to paste into each git host, then the delivery log
/// with, when `may_replay` (admins), a Replay button on each verified delivery. For anyone else
/// the buttons are not rendered at all (and the server refuses their replays regardless).
#[component]
pub fn ServiceWebhooks(service: String, may_replay: bool) -> impl IntoView {
    let setup = Resource::new(
        {
            let service = service.clone();
            move || service.clone()
        },
        get_webhook_setup,
    );
    // The last replay's outcome, whether one is in flight, and a counter that reloads the log.
    let replayed = RwSignal::new(None::<Result<DeliveryOutcome, String>>);
    let busy = RwSignal::new(false);
    let reload = RwSignal::new(0_u32);
    let replay = Replay {
        busy,
        run: move |id: i64| {
            busy.set(true);
            leptos::task::spawn_local(async move {
                let outcome = replay_delivery(id).await.map_err(|error| error.to_string());
                replayed.set(Some(outcome));
                busy.set(false);
                reload.update(|n| *n += 1);
            });
        },
    };
    let deliveries = Resource::new(
        {
            let service = service.clone();
            move || (service.clone(), reload.get())
        },
        |(service, _)| list_deliveries(service, None, None),
    );

    view! {
        <section class="card webhooks" data-testid="webhooks" data-service=service.clone()>
            <h2>"Git push webhooks"</h2>
            <Suspense fallback=|| view! { <p class="muted">"Loading the webhook set-up…"</p> }>
                {move || Suspend::new(async move {
                    match setup.await {
                        Ok(setup) => setup_view(setup).into_any(),
                        Err(error) => {
                            view! {
                                <p class="error" role="alert">
                                    "Could not load the webhook set-up: " {error.to_string()}
                                </p>
                            }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
            <h3>"Deliveries"</h3>
            <p class="muted" role="status" data-testid="replay-result">
                {move || match replayed.get() {
                    None => String::new(),
                    Some(Ok(outcome)) => {
                        format!(
                            "Replayed: {} ({}): {}",
                            outcome.verdict,
                            outcome.status,
                            outcome.reason,
                        )
                    }
                    Some(Err(error)) => format!("Replay failed: {error}"),
                }}
            </p>
            <Transition fallback=|| view! { <p class="muted">"Loading deliveries…"</p> }>
                {move || Suspend::new(async move {
                    match deliveries.await {
                        Ok(page) => {
                            delivery_table(page.deliveries, may_replay.then_some(replay))
                                .into_any()
                        }
                        Err(error) => {
                            view! {
                                <p class="error" role="alert">
                                    "Could not load the deliveries: " {error.to_string()}
                                </p>
                            }
                                .into_any()
                        }
                    }
                })}
            </Transition>
        </section>
    }
}

fn setup_view(setup: WebhookSetup) -> impl IntoView {
    let Some(config) = setup.config else {
        return view! {
            <p class="empty" data-testid="webhook-not-configured">
                "Webhooks are off for " <code>{setup.service}</code>
                ": Baton answers them 403. To turn them on, add to this service in the configuration file:"
            </p>
            <pre>
                <code>
                    "[service.webhook]\nsecret_env = \"WEBHOOK_SECRET\"   # the variable that holds the secret\nbranch = \"main\"                  # pushes to main deploy the pushed commit\ntags = \"v*\"                      # optional: matching tags deploy the tag"
                </code>
            </pre>
            <p class="muted">
                "Then set that environment variable to a long random secret and restart Baton."
            </p>
        }
        .into_any();
    };
    let deploys = match (&config.branch, &config.tags) {
        (Some(branch), Some(tags)) => {
            format!(
                "Pushes to {branch} deploy the pushed commit; tags matching {tags} deploy the tag."
            )
        }
        (Some(branch), None) => format!("Pushes to {branch} deploy the pushed commit."),
        (None, Some(tags)) => format!("Tags matching {tags} deploy the tag."),
        (None, None) => "No push deploys.".to_owned(),
    };
    let deploys = match &config.repository {
        Some(repository) => format!("{deploys} Only pushes from {repository} deploy."),
        None => deploys,
    };
    let secret = format!(
        "the value of the environment variable {} on Baton's host",
        config.secret_env
    );
    let hosts = host_instructions(&setup.url, &secret, config.tags.is_some());
    view! {
        <p>
            "Webhook URL: " <code data-testid="webhook-url">{setup.url.clone()}</code>
        </p>
        <p class="muted">{deploys}</p>
        <div class="hosts">
            {hosts
                .into_iter()
                .map(|host| {
                    view! {
                        <details data-host=host.name>
                            <summary>{host.name}</summary>
                            <p class="muted">{host.place}</p>
                            <dl>
                                {host
                                    .fields
                                    .into_iter()
                                    .map(|(label, value)| {
                                        view! {
                                            <dt>{label}</dt>
                                            <dd>
                                                <code>{value}</code>
                                            </dd>
                                        }
                                    })
                                    .collect_view()}
                            </dl>
                            {host.note.map(|note| view! { <p class="muted">{note}</p> })}
                        </details>
                    }
                })
                .collect_view()}
        </div>
    }
    .into_any()
}

/// What one git host's webhook form asks for.
struct HostInstructions {
    name: &'static str,
    place: &'static str,
    fields: Vec<(&'static str, String)>,
    note: Option<&'static str>,
}

fn host_instructions(url: &str, secret: &str, tags: bool) -> Vec<HostInstructions> {
    let url = url.to_owned();
    let secret = secret.to_owned();
    let json = "application/json".to_owned();
    vec![
        HostInstructions {
            name: "GitHub",
            place: "Repository → Settings → Webhooks → Add webhook",
            fields: vec![
                ("Payload URL", url.clone()),
                ("Content type", json.clone()),
                ("Secret", secret.clone()),
                ("Events", "Just the push event".into()),
            ],
            note: Some("GitHub sends a ping when the webhook is saved; Baton answers it 200."),
        },
        HostInstructions {
            name: "GitLab",
            place: "Project → Settings → Webhooks → Add new webhook",
            fields: vec![
                ("URL", url.clone()),
                ("Secret token", secret.clone()),
                (
                    "Trigger",
                    if tags {
                        "Push events, Tag push events".into()
                    } else {
                        "Push events".into()
                    },
                ),
            ],
            note: Some("GitLab always sends application/json."),
        },
        HostInstructions {
            name: "Gitea / Forgejo",
            place: "Repository → Settings → Webhooks → Add webhook → Gitea (or Forgejo)",
            fields: vec![
                ("Target URL", url.clone()),
                ("HTTP method", "POST".into()),
                ("POST content type", json.clone()),
                ("Secret", secret.clone()),
                ("Trigger on", "Push events".into()),
            ],
            note: None,
        },
        HostInstructions {
            name: "Bitbucket Cloud",
            place: "Repository settings → Webhooks → Add webhook",
            fields: vec![
                ("URL", url.clone()),
                ("Secret", secret.clone()),
                ("Triggers", "Repository: Push".into()),
            ],
            note: Some("Bitbucket always sends application/json."),
        },
        HostInstructions {
            name: "Bitbucket Data Center",
            place: "Repository settings → Webhooks → Create webhook",
            fields: vec![
                ("URL", url),
                ("Secret", secret),
                ("Events", "Repository: Push".into()),
            ],
            note: Some(
                "Its Test connection request is not signed: Baton answers that ping 200, but every push must be signed.",
            ),
        },
    ]
}

/// The Replay buttons' shared state and handler.
#[derive(Clone, Copy)]
struct Replay<F: Fn(i64) + Copy + 'static> {
    busy: RwSignal<bool>,
    run: F,
}

/// The log; `replay` is `None` for a caller who may not replay, who then gets no buttons.
fn delivery_table<F: Fn(i64) + Copy + Send + Sync + 'static>(
    deliveries: Vec<DeliveryView>,
    replay: Option<Replay<F>>,
) -> impl IntoView {
    if deliveries.is_empty() {
        return view! {
            <p class="empty" data-testid="no-deliveries">
                "No deliveries yet. Once the git host has the URL and secret, its first ping or push shows here."
            </p>
        }
        .into_any();
    }
    view! {
        <table class="deliveries" data-testid="deliveries">
            <thead>
                <tr>
                    <th scope="col">"Received"</th>
                    <th scope="col">"Host"</th>
                    <th scope="col">"Event"</th>
                    <th scope="col">"Ref"</th>
                    <th scope="col">"Commit"</th>
                    <th scope="col">"Verdict"</th>
                    <th scope="col">"Why"</th>
                    <th scope="col">"Rollout"</th>
                    {replay
                        .is_some()
                        .then(|| {
                            view! {
                                <th scope="col">
                                    <span class="visually-hidden">"Replay"</span>
                                </th>
                            }
                        })}
                </tr>
            </thead>
            <tbody>
                {deliveries
                    .into_iter()
                    .map(|delivery| {
                        let id = delivery.id;
                        let sha = delivery
                            .sha
                            .as_deref()
                            .map(|sha| sha.chars().take(12).collect::<String>())
                            .unwrap_or_default();
                        let column = replay.is_some();
                        let replay = replay.filter(|_| delivery.verified);
                        view! {
                            <tr data-delivery=id data-verdict=delivery.verdict.clone()>
                                <td>
                                    <LocalTime ms=delivery.received_at />
                                </td>
                                <td>{delivery.provider}</td>
                                <td>{delivery.event.unwrap_or_default()}</td>
                                <td>
                                    <code>{delivery.git_ref.unwrap_or_default()}</code>
                                </td>
                                <td>
                                    <code title=delivery.sha.clone().unwrap_or_default()>{sha}</code>
                                </td>
                                <td>
                                    <span class=format!(
                                        "verdict verdict-{}",
                                        delivery.verdict,
                                    )>{format!("{} {}", delivery.verdict, delivery.status)}</span>
                                    {delivery
                                        .replay_of
                                        .map(|of| {
                                            view! { <span class="muted">{format!(" (replay of #{of})")}</span> }
                                        })}
                                </td>
                                <td>{delivery.reason}</td>
                                <td>
                                    {delivery
                                        .rollout
                                        .map(|rollout| {
                                            view! {
                                                <a href=format!(
                                                    "/deployments/{rollout}",
                                                )>{format!("#{rollout}")}</a>
                                            }
                                        })}
                                </td>
                                {column
                                    .then(|| {
                                        view! {
                                            <td>
                                                {replay
                                                    .map(|replay| {
                                                        view! {
                                                            <button
                                                                type="button"
                                                                data-replay=id
                                                                disabled=move || replay.busy.get()
                                                                on:click=move |_| (replay.run)(id)
                                                            >
                                                                "Replay"
                                                            </button>
                                                        }
                                                    })}
                                            </td>
                                        }
                                    })}
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field that picks which events each host sends, as its settings page names it.
    fn events_field(tags: bool) -> Vec<(&'static str, (&'static str, String))> {
        host_instructions("http://baton:8080/hooks/api", "the value of S", tags)
            .into_iter()
            .map(|host| {
                let (label, value) = host
                    .fields
                    .into_iter()
                    .find(|(label, _)| label.starts_with("Event") || label.starts_with("Trigger"))
                    .unwrap_or_else(|| panic!("{} names the events to send", host.name));
                (host.name, (label, value))
            })
            .collect()
    }

    #[test]
    fn every_host_gets_the_url_the_secret_and_push_events() {
        let hosts = host_instructions("http://baton:8080/hooks/api", "the value of S", true);
        assert_eq!(hosts.len(), 5);
        for host in &hosts {
            let values: Vec<&str> = host.fields.iter().map(|(_, v)| v.as_str()).collect();
            assert!(
                values.contains(&"http://baton:8080/hooks/api"),
                "{}",
                host.name
            );
            assert!(values.contains(&"the value of S"), "{}", host.name);
        }
        let pushes = |gitlab: &str| {
            [
                ("GitHub", ("Events", "Just the push event")),
                ("GitLab", ("Trigger", gitlab)),
                ("Gitea / Forgejo", ("Trigger on", "Push events")),
                ("Bitbucket Cloud", ("Triggers", "Repository: Push")),
                ("Bitbucket Data Center", ("Events", "Repository: Push")),
            ]
            .map(|(host, (label, value))| (host, (label, value.to_owned())))
            .to_vec()
        };
        // Only GitLab sends tag pushes as events of their own, to be ticked when tags deploy.
        assert_eq!(events_field(true), pushes("Push events, Tag push events"));
        assert_eq!(events_field(false), pushes("Push events"));
    }
}
