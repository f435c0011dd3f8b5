//! The rollout page: the header, one row per backend with its steps as they happen, the final
//! result, and the controls (pause, resume, abort, roll back; approve and promote when the
//! rollout waits for them).
//!
//! The server renders the rollout as stored (`get_deployment`); once hydrated, the page follows
//! the rollout's event stream from the `last_event_id` it was rendered at, so nothing is missed
//! and nothing is shown twice.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_params_map};

use super::format::{
    error_message, outcome_label, status_label, step_doing, step_label, trigger_label,
};
use super::gantt::Gantt;
use super::live::{Connection, ConnectionBadge, Handler, follow};
use super::logs::FailureLogs;
use super::timeline::Timeline;
use super::traffic::TrafficChart;
use super::widgets::{LocalTime, StatusBadge, elapsed, use_now};
use crate::auth::{allows, use_caller};
use crate::fleet::{control_deployment, fleet_status, get_deployment, rollback_service};
use crate::model::{
    ControlAction, DeploymentDetail, DeploymentEvent, DeploymentSummary, PendingControl, Role,
    RolloutStatus, StepKind, StepOutcome, StepSummary, Trigger,
};

#[component]
pub fn RolloutPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || {
        params
            .read()
            .get("id")
            .and_then(|id| id.parse::<i64>().ok())
    };
    let detail = Resource::new(id, |id| async move {
        match id {
            Some(id) => get_deployment(id).await,
            None => Ok(None),
        }
    });
    let caller = use_caller();
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading the rollout…"</p> }>
            {move || Suspend::new(async move {
                let caller = caller.await;
                let may_control = allows(caller.as_ref(), Role::Deployer);
                let me = caller.map(|caller| caller.name);
                match detail.await {
                    Ok(Some(detail)) => {
                        view! { <RolloutView detail may_control me /> }.into_any()
                    }
                    Ok(None) => not_found(id()).into_any(),
                    Err(error) => {
                        view! {
                            <Title text="Rollout" />
                            <h1>"Rollout"</h1>
                            <p class="error" role="alert">
                                "Could not load the rollout: "
                                {error_message(&error)}
                            </p>
                        }
                            .into_any()
                    }
                }
            })}
        </Suspense>
    }
}

fn not_found(id: Option<i64>) -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    let what = match id {
        Some(id) => format!("No rollout has id {id}."),
        None => "A rollout id is a number, such as /deployments/12.".to_owned(),
    };
    view! {
        <Title text="Rollout not found" />
        <h1>"Rollout not found"</h1>
        <p class="empty">{what} " " <A href="/deployments">"See every rollout"</A></p>
    }
}

/// A rollout; `may_control` shows the controls (deployers and admins); `me` is who is signed in.
#[component]
fn RolloutView(detail: DeploymentDetail, may_control: bool, me: Option<String>) -> impl IntoView {
    let id = detail.deployment.id;
    let service = detail.deployment.service.clone();
    let timeline = RwSignal::new(Timeline::new(detail));
    let connection = RwSignal::new(Connection::Waiting);
    let after = timeline.with_untracked(|t| t.last_event_id);
    let on_event: Handler = Box::new(move |data, _id| {
        if let Ok(event) = serde_json::from_str::<DeploymentEvent>(&data) {
            // `apply` ignores what is already shown; only a real change re-renders.
            let mut changed = false;
            timeline.update_untracked(|t| changed = t.apply(event));
            if changed {
                timeline.notify();
            }
        }
    });
    // A rollout that has ended changes no more: only one still going is followed.
    let ended_at_load = timeline.with_untracked(|t| t.deployment.status.is_finished());
    if !ended_at_load {
        follow(
            &format!("/api/deployments/{id}/events?after={after}"),
            connection,
            vec![("deployment", on_event)],
        );
    }

    // A step that fails while the page watches may have had its backend's log kept: ask for
    // the rollout's logs again (the server writes the log before the failure's event).
    #[cfg(feature = "hydrate")]
    {
        let failures = Memo::new(move |_| timeline.with(|t| t.failures()));
        Effect::new(move |seen: Option<usize>| {
            let now = failures.get();
            if seen.is_some_and(|seen| now > seen) {
                leptos::task::spawn_local(async move {
                    if let Ok(Some(detail)) = get_deployment(id).await {
                        timeline.update(|t| t.logs = detail.logs);
                    }
                });
            }
            now
        });
    }

    let deployment = Memo::new(move |_| timeline.with(|t| t.deployment.clone()));
    let pending = Memo::new(move |_| timeline.with(|t| t.pending.clone()));
    let decided =
        Memo::new(move |_| timeline.with(|t| (t.approved_by.clone(), t.promoted_by.clone())));
    let status = Signal::derive(move || deployment.with(|d| d.status));
    let rows = Memo::new(move |_| {
        timeline.with(|t| {
            let mut rows: Vec<Option<String>> = Vec::new();
            if t.steps.iter().any(|s| s.backend.is_none()) {
                rows.push(None);
            }
            rows.extend(t.backends.iter().cloned().map(Some));
            rows
        })
    });
    let now = use_now();

    // Its own closure, so the ticking clock re-renders this text alone.
    let duration = move || {
        let (started, finished) = deployment.with(|d| (d.started_at, d.finished_at));
        match started {
            Some(start) => elapsed(start, finished, now)(),
            None => "—".to_owned(),
        }
    };

    let title = format!("Rollout #{id} · {service}");
    let header = move || {
        let d = deployment.get();
        let versions = match &d.from_version {
            Some(from) => view! {
                <code>{from.clone()}</code>
                " → "
                <code>{d.to_version.clone()}</code>
            }
            .into_any(),
            None => view! {
                "mixed → "
                <code>{d.to_version.clone()}</code>
            }
            .into_any(),
        };
        let started = match d.started_at {
            Some(at) => view! { <LocalTime ms=at /> }.into_any(),
            None => view! {
                "not yet (queued "
                <LocalTime ms=d.created_at />
                ")"
            }
            .into_any(),
        };
        view! {
            <dl class="facts">
                <div>
                    <dt>"Service"</dt>
                    <dd>
                        <A href="/">{d.service.clone()}</A>
                    </dd>
                </div>
                <div>
                    <dt>"Version"</dt>
                    <dd data-testid="versions">{versions}</dd>
                </div>
                <div>
                    <dt>"Trigger"</dt>
                    <dd>{trigger_label(d.trigger)}</dd>
                </div>
                <div>
                    <dt>"Requested by"</dt>
                    <dd>{d.requested_by.clone().unwrap_or_else(|| "—".into())}</dd>
                </div>
                {move || {
                    decided
                        .get()
                        .0
                        .map(|by| {
                            view! {
                                <div>
                                    <dt>"Approved by"</dt>
                                    <dd data-testid="approved-by">{by}</dd>
                                </div>
                            }
                        })
                }}
                {move || {
                    decided
                        .get()
                        .1
                        .map(|by| {
                            view! {
                                <div>
                                    <dt>"Promoted by"</dt>
                                    <dd data-testid="promoted-by">{by}</dd>
                                </div>
                            }
                        })
                }}
                <div>
                    <dt>"Started"</dt>
                    <dd>{started}</dd>
                </div>
                <div>
                    <dt>"Duration"</dt>
                    <dd data-testid="duration">{duration}</dd>
                </div>
            </dl>
        }
    };
    let result = move || {
        let d = deployment.get();
        let text = match d.status {
            RolloutStatus::Queued
            | RolloutStatus::Running
            | RolloutStatus::Paused
            | RolloutStatus::AwaitingApproval
            | RolloutStatus::AwaitingPromote => return None,
            RolloutStatus::Succeeded => format!("Succeeded: every backend runs {}.", d.to_version),
            ended @ (RolloutStatus::Failed
            | RolloutStatus::RolledBack
            | RolloutStatus::Cancelled) => {
                let reason = d
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into());
                format!("{}: {reason}", status_label(ended))
            }
        };
        Some(view! {
            <p class=format!("result result-{}", d.status) data-testid="result">
                {text}
            </p>
        })
    };
    let reason = move || {
        let d = deployment.get();
        (!d.status.is_finished())
            .then_some(d.reason)
            .flatten()
            .map(|reason| view! { <p class="muted">{reason}</p> })
    };

    view! {
        <Title text=title.clone() />
        <p class="breadcrumb small">
            <A href="/deployments">"Deployments"</A>
            " / "
            {format!("#{id}")}
        </p>
        <div class="page-head">
            <div class="title-line">
                <h1>{title}</h1>
                <StatusBadge status />
            </div>
            {(!ended_at_load).then(|| view! { <ConnectionBadge connection /> })}
        </div>
        {header}
        {reason}
        <div aria-live="polite">{result}</div>
        <Controls id service pending status deployment may_control me />
        <Gantt timeline />
        <TrafficChart id timeline />
        <FailureLogs timeline />
        <section class="timeline" aria-labelledby="timeline-heading">
            <h2 id="timeline-heading">"Backends"</h2>
            <ol class="rows">
                <For each=move || rows.get() key=|row| row.clone() let:row>
                    <BackendRow row timeline />
                </For>
            </ol>
        </section>
    }
    .into_any()
}

/// One backend (or, for `None`, the steps of the whole rollout) with its steps.
#[component]
fn BackendRow(row: Option<String>, timeline: RwSignal<Timeline>) -> impl IntoView {
    let steps = {
        let row = row.clone();
        Memo::new(move |_| timeline.with(|t| t.steps_of(row.as_deref())))
    };
    let to_version = Memo::new(move |_| timeline.with(|t| t.deployment.to_version.clone()));
    let name = row.clone().unwrap_or_else(|| "Whole rollout".into());
    let finished = Memo::new(move |_| timeline.with(|t| t.deployment.status.is_finished()));
    let whole = row.is_none();
    let state =
        move || steps.with(|steps| row_state(steps, &to_version.get(), finished.get(), whole));
    let forward = move || {
        steps.with(|steps| {
            steps
                .iter()
                .filter(|s| !s.rollback)
                .cloned()
                .map(|step| view! { <StepItem step /> })
                .collect_view()
        })
    };
    let rollback = move || {
        steps.with(|steps| {
            let back: Vec<StepSummary> = steps.iter().filter(|s| s.rollback).cloned().collect();
            let version = back.first()?.version.clone();
            Some(view! {
                <div class="rollback-steps" data-testid="rollback-steps">
                    <h4>{format!("↩ Rollback to {version}")}</h4>
                    <ol class="steps">
                        {back.into_iter().map(|step| view! { <StepItem step /> }).collect_view()}
                    </ol>
                </div>
            })
        })
    };
    view! {
        <li class="row" data-row=row.clone().unwrap_or_default()>
            <div class="row-head">
                <h3>{name}</h3>
                <span class="row-state" data-testid="row-state">
                    {state}
                </span>
            </div>
            <ol class="steps">{forward}</ol>
            {rollback}
        </li>
    }
    .into_any()
}

/// Where one backend (or, with `whole`, the rollout-wide row) stands, from its steps.
fn row_state(steps: &[StepSummary], to_version: &str, finished: bool, whole: bool) -> String {
    let Some(last) = steps.last() else {
        return if finished { "Not changed" } else { "Waiting" }.into();
    };
    if whole && last.outcome == Some(StepOutcome::Ok) {
        return "Done".into();
    }
    let doing = if last.rollback {
        "Rolling back"
    } else {
        "In progress"
    };
    match last.outcome {
        None if last.rollback => format!("Rolling back: {}", step_doing(last.step)),
        None => step_doing(last.step).to_owned(),
        // A surged backend's last step is the old instance's retirement.
        Some(StepOutcome::Ok)
            if matches!(
                last.step,
                StepKind::ConfirmUp | StepKind::Retire | StepKind::Discard
            ) && last.rollback =>
        {
            format!("Rolled back: runs {}", last.version)
        }
        Some(StepOutcome::Ok)
            if matches!(
                last.step,
                StepKind::ConfirmUp | StepKind::Retire | StepKind::Soak
            ) =>
        {
            format!("Done: runs {to_version}")
        }
        Some(StepOutcome::Ok | StepOutcome::TimedOut) => {
            format!("{doing}: {} done", step_label(last.step))
        }
        Some(ended @ (StepOutcome::Failed | StepOutcome::Interrupted)) => format!(
            "{} at {}",
            outcome_label(Some(ended)),
            step_label(last.step)
        ),
    }
}

#[component]
fn StepItem(step: StepSummary) -> impl IntoView {
    let now = use_now();
    let outcome = step.outcome.map_or("running", StepOutcome::as_str);
    let time = elapsed(step.started_at, step.finished_at, now);
    let mark = match step.outcome {
        None => "…",
        Some(StepOutcome::Ok) => "✓",
        Some(StepOutcome::TimedOut) => "⏱",
        Some(StepOutcome::Failed | StepOutcome::Interrupted) => "✗",
    };
    let outcome_class = if step.outcome == Some(StepOutcome::Ok) {
        "step-outcome visually-hidden"
    } else {
        "step-outcome"
    };
    let detail = step.detail.clone().map(|detail| {
        view! { <p class="step-detail">{detail}</p> }
    });
    view! {
        <li
            class=format!("step outcome-{outcome}")
            class:rollback=step.rollback
            data-step-id=step.id.to_string()
            data-step=step.step.as_str()
            data-outcome=outcome
        >
            <span class="step-mark" aria-hidden="true">
                {mark}
            </span>
            <span class="step-label">{step_label(step.step)}</span>
            // "Done" is what the tick says; other outcomes are spelled out.
            <span class=outcome_class>
                {outcome_label(step.outcome)}
            </span>
            <span class="step-time">{time}</span>
            {detail}
        </li>
    }
    .into_any()
}

/// Pause, Resume, Abort (confirmed) and Roll back (confirmed), each enabled only when it applies,
/// and Approve or Promote while the rollout waits for one; without `may_control` only what the
/// rollout waits for and what others asked for (a pending pause or abort) show.
#[component]
fn Controls(
    id: i64,
    service: String,
    pending: Memo<Option<PendingControl>>,
    status: Signal<RolloutStatus>,
    deployment: Memo<DeploymentSummary>,
    may_control: bool,
    me: Option<String>,
) -> impl IntoView {
    // Whoever requested it may not approve it; a push has no person behind it.
    let requested_by_me = Memo::new(move |_| {
        deployment.with(|d| {
            d.trigger != Trigger::Webhook && d.requested_by.is_some() && d.requested_by == me
        })
    });
    let waiting_note = move || {
        let text = deployment.with(|d| match d.status {
            RolloutStatus::AwaitingApproval => Some(match (&d.requested_by, d.trigger) {
                (Some(by), trigger) if trigger != Trigger::Webhook => format!(
                    "Awaiting approval: a deployer or admin other than {by} approves it to \
                     begin. Nothing has been touched."
                ),
                _ => "Awaiting approval: a deployer or admin approves it to begin. Nothing \
                      has been touched."
                    .to_owned(),
            }),
            RolloutStatus::AwaitingPromote => Some(format!(
                "The canaries run {} and serve: Promote rolls out the other backends; Abort \
                 puts the canaries back.",
                d.to_version
            )),
            RolloutStatus::Queued
            | RolloutStatus::Running
            | RolloutStatus::Paused
            | RolloutStatus::Succeeded
            | RolloutStatus::Failed
            | RolloutStatus::RolledBack
            | RolloutStatus::Cancelled => None,
        })?;
        Some(view! {
            <p class="waiting" role="status" data-testid="waiting">
                {text}
            </p>
        })
    };
    let pending_note = move || {
        pending.get().map(|pending| {
            view! {
                <p class="pending" role="status" data-testid="pending">
                    {pending.describe()}
                </p>
            }
        })
    };
    if !may_control {
        return view! {
            <section class="controls" aria-label="Rollout controls">
                {waiting_note}
                {pending_note}
            </section>
        }
        .into_any();
    }
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let confirming = RwSignal::new(None::<Confirm>);
    let navigate = use_navigate();
    let finished = Memo::new(move |_| status.get().is_finished());
    // The service's rollback target, fetched again when this rollout ends.
    let fleet = Resource::new(move || finished.get(), |_| fleet_status());
    let rollback_version = {
        let service = service.clone();
        move || {
            fleet.get().and_then(|fleet| {
                fleet
                    .ok()?
                    .into_iter()
                    .find(|s| s.name == service)?
                    .rollback_version
            })
        }
    };

    let send = move |action: ControlAction| {
        busy.set(true);
        error.set(None);
        confirming.set(None);
        leptos::task::spawn_local(async move {
            if let Err(refused) = control_deployment(id, action).await {
                error.set(Some(error_message(&refused)));
            }
            busy.set(false);
        });
    };
    let roll_back = {
        let service = service.clone();
        move || {
            let service = service.clone();
            let navigate = navigate.clone();
            busy.set(true);
            error.set(None);
            confirming.set(None);
            leptos::task::spawn_local(async move {
                match rollback_service(service).await {
                    Ok(new_id) => {
                        navigate(&format!("/deployments/{new_id}"), Default::default());
                    }
                    Err(refused) => error.set(Some(error_message(&refused))),
                }
                busy.set(false);
            });
        }
    };

    let asked = move |action: ControlAction| {
        pending.with(|p| p.as_ref().is_some_and(|p| p.action == action))
    };
    let can_pause = move || status.get() == RolloutStatus::Running && !asked(ControlAction::Pause);
    let can_resume = move || status.get() == RolloutStatus::Paused && !asked(ControlAction::Resume);
    let can_abort = move || !status.get().is_finished() && !asked(ControlAction::Abort);
    let can_approve = move || !requested_by_me.get() && !asked(ControlAction::Approve);
    let can_promote = move || !asked(ControlAction::Promote);
    // Shown only while the rollout waits for them, so an ordinary rollout's controls stay as
    // they were.
    let approve_button = move || {
        (status.get() == RolloutStatus::AwaitingApproval).then(|| {
            view! {
                <button
                    type="button"
                    class="primary"
                    disabled=move || busy.get() || !can_approve()
                    title=move || {
                        if requested_by_me.get() {
                            "You requested this rollout: another deployer or admin must approve it"
                        } else {
                            ""
                        }
                    }
                    on:click=move |_| send(ControlAction::Approve)
                >
                    "Approve"
                </button>
            }
        })
    };
    let promote_button = move || {
        (status.get() == RolloutStatus::AwaitingPromote).then(|| {
            view! {
                <button
                    type="button"
                    class="primary"
                    disabled=move || busy.get() || !can_promote()
                    on:click=move |_| send(ControlAction::Promote)
                >
                    "Promote"
                </button>
            }
        })
    };

    let error_note = move || {
        error.get().map(|message| {
            view! {
                <p class="error" role="alert">
                    {message}
                </p>
            }
        })
    };
    let rollback_button = {
        let rollback_version = rollback_version.clone();
        move || {
            rollback_version().map(|version| {
                view! {
                    <button
                        type="button"
                        disabled=move || busy.get() || !finished.get()
                        title=move || {
                            if finished.get() {
                                String::new()
                            } else {
                                "Available once this rollout has ended".to_owned()
                            }
                        }
                        on:click=move |_| confirming.set(Some(Confirm::RollBack))
                    >
                        {format!("Roll back to {version}")}
                    </button>
                }
            })
        }
    };
    let confirmation = {
        let service = service.clone();
        move || {
            let roll_back = roll_back.clone();
            let service = service.clone();
            let rollback_version = rollback_version.clone();
            confirming.get().map(move |what| {
                let (question, yes, no) = match what {
                    Confirm::Abort => (
                        match status.get_untracked() {
                            RolloutStatus::AwaitingApproval => {
                                "Cancel this rollout? Nothing has been touched yet."
                            }
                            RolloutStatus::AwaitingPromote => {
                                "Abort this rollout? The canaries are put back on their \
                                 previous version, one at a time, and every backend is left \
                                 serving."
                            }
                            RolloutStatus::Queued
                            | RolloutStatus::Running
                            | RolloutStatus::Paused
                            | RolloutStatus::Succeeded
                            | RolloutStatus::Failed
                            | RolloutStatus::RolledBack
                            | RolloutStatus::Cancelled => {
                                "Abort this rollout? The current step finishes, the backend in \
                                 the middle is put back, and every backend is left serving."
                            }
                        }
                        .to_owned(),
                        "Abort rollout",
                        "Keep going",
                    ),
                    Confirm::RollBack => (
                        format!(
                            "Roll {service} back to {}? This starts a new rollout.",
                            rollback_version().unwrap_or_default()
                        ),
                        "Roll back",
                        "Cancel",
                    ),
                };
                let confirm = move |_| match what {
                    Confirm::Abort => send(ControlAction::Abort),
                    Confirm::RollBack => roll_back(),
                };
                let yes_button = NodeRef::<leptos::html::Button>::new();
                Effect::new(move |_| {
                    if let Some(button) = yes_button.get() {
                        let _ = button.focus();
                    }
                });
                view! {
                    <div
                        class="confirm"
                        role="alertdialog"
                        aria-labelledby="confirm-question"
                        on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                            if ev.key() == "Escape" {
                                confirming.set(None);
                            }
                        }
                    >
                        <p id="confirm-question">
                            <strong>{question}</strong>
                        </p>
                        <div class="field-row">
                            <button
                                type="button"
                                class="danger"
                                node_ref=yes_button
                                disabled=move || busy.get()
                                on:click=confirm
                            >
                                {yes}
                            </button>
                            <button type="button" on:click=move |_| confirming.set(None)>
                                {no}
                            </button>
                        </div>
                    </div>
                }
            })
        }
    };

    view! {
        <section class="controls" aria-label="Rollout controls">
            {waiting_note}
            <div class="field-row">
                {approve_button}
                {promote_button}
                <button
                    type="button"
                    disabled=move || busy.get() || !can_pause()
                    on:click=move |_| send(ControlAction::Pause)
                >
                    "Pause"
                </button>
                <button
                    type="button"
                    disabled=move || busy.get() || !can_resume()
                    on:click=move |_| send(ControlAction::Resume)
                >
                    "Resume"
                </button>
                <button
                    type="button"
                    class="danger"
                    disabled=move || busy.get() || !can_abort()
                    on:click=move |_| confirming.set(Some(Confirm::Abort))
                >
                    "Abort"
                </button>
                <Transition fallback=|| ()>{rollback_button.clone()}</Transition>
            </div>
            {confirmation}
            {pending_note}
            {error_note}
        </section>
    }
    .into_any()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Confirm {
    Abort,
    RollBack,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: StepKind, rollback: bool, version: &str) -> StepSummary {
        StepSummary {
            id: 1,
            backend: Some("web1".into()),
            step,
            rollback,
            version: version.into(),
            started_at: 0,
            finished_at: Some(1),
            outcome: Some(StepOutcome::Ok),
            detail: None,
        }
    }

    #[test]
    fn a_surged_backend_is_done_once_its_old_instance_is_retired() {
        let done = [step(StepKind::Retire, false, "v2")];
        assert_eq!(row_state(&done, "v2", true, false), "Done: runs v2");
        let overlapping = [step(StepKind::Overlap, false, "v2")];
        assert_eq!(
            row_state(&overlapping, "v2", false, false),
            "In progress: Overlap done"
        );
        let discarded = [step(StepKind::Discard, true, "v1")];
        assert_eq!(
            row_state(&discarded, "v2", true, false),
            "Rolled back: runs v1"
        );
    }
}
