//! The rollout's timeline as a Gantt chart: one lane per backend (and one for the steps of the
//! whole rollout), each step a bar on one shared time axis, so a reader sees at a glance which
//! backend was out when, how long each wait took and where it failed.
//!
//! [`chart`] is pure (the layout in percent of the axis); the component only draws it, again on
//! every live event and, while a step runs, on every tick of the clock.

use leptos::prelude::*;

use super::format::{format_duration, outcome_label, step_label};
use super::timeline::Timeline;
use super::widgets::use_now;
use crate::model::{StepKind, StepOutcome, StepSummary};

/// The narrowest bar drawn, in percent of the axis, so an instant step stays visible.
const MIN_WIDTH: f64 = 0.4;

/// One step, placed on the axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub step: StepKind,
    pub rollback: bool,
    /// `None` while it runs.
    pub outcome: Option<StepOutcome>,
    /// Where it begins and how long it is, in percent of the axis.
    pub left: f64,
    pub width: f64,
    /// "Drain: 1.2 s (Done)", or "Wait for sessions: 8.0 s (Running)" while it runs.
    pub title: String,
}

/// One backend's bars, or the whole rollout's (`backend: None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    pub backend: Option<String>,
    pub bars: Vec<Bar>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub lanes: Vec<Lane>,
    /// The axis's length: from the first step's start to the last step's end (or `now`).
    pub span_ms: i64,
}

/// Lays out `timeline`'s steps; a step still running ends at `now`. `None` before any step.
pub fn chart(timeline: &Timeline, now: i64) -> Option<Chart> {
    let start = timeline.steps.iter().map(|s| s.started_at).min()?;
    let end_of = |step: &StepSummary| step.finished_at.unwrap_or(now.max(step.started_at));
    let end = timeline.steps.iter().map(end_of).max()?;
    // At least a second wide: a rollout of instant steps is not drawn as one full-width bar.
    let span_ms = (end - start).max(1_000);
    let percent = |ms: i64| ms as f64 * 100.0 / span_ms as f64;

    let mut backends: Vec<Option<String>> = Vec::new();
    if timeline.steps.iter().any(|s| s.backend.is_none()) {
        backends.push(None);
    }
    backends.extend(timeline.backends.iter().cloned().map(Some));
    let lanes = backends
        .into_iter()
        .map(|backend| {
            let bars = timeline
                .steps_of(backend.as_deref())
                .iter()
                .map(|step| {
                    let took = end_of(step) - step.started_at;
                    let left = percent(step.started_at - start);
                    let title = format!(
                        "{}{}: {} ({})",
                        step_label(step.step),
                        if step.rollback { ", rollback" } else { "" },
                        format_duration(took),
                        outcome_label(step.outcome),
                    );
                    Bar {
                        step: step.step,
                        rollback: step.rollback,
                        outcome: step.outcome,
                        left,
                        width: percent(took).max(MIN_WIDTH).min(100.0 - left),
                        title,
                    }
                })
                .collect();
            Lane { backend, bars }
        })
        .collect();
    Some(Chart { lanes, span_ms })
}

/// The Gantt chart of a rollout, kept current by the page's timeline signal.
#[component]
pub fn Gantt(timeline: RwSignal<Timeline>) -> impl IntoView {
    let now = use_now();
    let running = move || timeline.with(|t| t.steps.iter().any(|s| s.finished_at.is_none()));
    let drawn = move || {
        // Only a running step grows with the clock; otherwise the chart ignores its ticks.
        let now = if running() {
            now.get()
        } else {
            now.get_untracked()
        };
        timeline.with(|t| chart(t, now)).map(draw)
    };
    view! {
        <section class="gantt" aria-labelledby="gantt-heading" data-testid="gantt">
            <h2 id="gantt-heading">"Timeline"</h2>
            {drawn}
        </section>
    }
}

fn draw(chart: Chart) -> impl IntoView {
    let lanes = chart
        .lanes
        .into_iter()
        .map(|lane| {
            let label = lane.backend.unwrap_or_else(|| "rollout".to_owned());
            let shown = label.clone();
            let bars = lane
                .bars
                .into_iter()
                .map(|bar| {
                    let outcome = bar.outcome.map_or("running", StepOutcome::as_str);
                    let hidden = bar.title.clone();
                    view! {
                        <span
                            class=format!(
                                "bar step-{} outcome-{outcome}{}",
                                bar.step.as_str(),
                                if bar.rollback { " rollback" } else { "" },
                            )
                            style=format!("left: {:.2}%; width: {:.2}%", bar.left, bar.width)
                            title=bar.title
                            data-step=bar.step.as_str()
                            data-outcome=outcome
                        >
                            <span class="visually-hidden">{hidden}</span>
                        </span>
                    }
                })
                .collect_view();
            view! {
                <li class="lane" data-backend=label>
                    <span class="lane-label">{shown}</span>
                    <span class="track">{bars}</span>
                </li>
            }
        })
        .collect_view();
    view! {
        <ol class="lanes">{lanes}</ol>
        <p class="axis small muted">
            <span>"0 s"</span>
            <span data-testid="gantt-span">{format_duration(chart.span_ms)}</span>
        </p>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeploymentDetail, DeploymentSummary, RolloutStatus, Trigger};

    fn step(
        id: i64,
        backend: Option<&str>,
        kind: StepKind,
        at: (i64, Option<i64>),
        outcome: Option<StepOutcome>,
    ) -> StepSummary {
        StepSummary {
            id,
            backend: backend.map(str::to_owned),
            step: kind,
            rollback: false,
            version: "v2".into(),
            started_at: at.0,
            finished_at: at.1,
            outcome,
            detail: None,
        }
    }

    fn timeline(steps: Vec<StepSummary>) -> Timeline {
        Timeline::new(DeploymentDetail {
            deployment: DeploymentSummary {
                id: 1,
                service: "api".into(),
                status: RolloutStatus::Running,
                from_version: Some("v1".into()),
                to_version: "v2".into(),
                trigger: Trigger::Api,
                requested_by: None,
                reason: None,
                created_at: 0,
                started_at: Some(10_000),
                finished_at: None,
            },
            backends: vec!["s1".into(), "s2".into()],
            steps,
            last_event_id: 0,
            pending: None,
            approved_by: None,
            promoted_by: None,
            logs: Vec::new(),
        })
    }

    #[test]
    fn no_steps_no_chart() {
        assert_eq!(chart(&timeline(vec![]), 20_000), None);
    }

    #[test]
    fn bars_share_one_axis_from_the_first_step_to_the_last() {
        let ok = Some(StepOutcome::Ok);
        let chart = chart(
            &timeline(vec![
                step(1, None, StepKind::Prepare, (10_000, Some(11_000)), ok),
                step(2, Some("s1"), StepKind::Drain, (11_000, Some(15_000)), ok),
                step(3, Some("s2"), StepKind::Drain, (15_000, Some(20_000)), ok),
            ]),
            99_000,
        )
        .unwrap();
        assert_eq!(chart.span_ms, 10_000);
        let lanes: Vec<_> = chart.lanes.iter().map(|l| l.backend.clone()).collect();
        assert_eq!(lanes, [None, Some("s1".into()), Some("s2".into())]);
        let s1 = &chart.lanes[1].bars[0];
        assert_eq!((s1.left, s1.width), (10.0, 40.0));
        let s2 = &chart.lanes[2].bars[0];
        assert_eq!((s2.left, s2.width), (50.0, 50.0));
        assert_eq!(s2.title, "Drain: 5.0 s (Done)");
    }

    #[test]
    fn a_running_step_grows_until_now_and_says_so() {
        let chart = chart(
            &timeline(vec![
                step(
                    1,
                    Some("s1"),
                    StepKind::Drain,
                    (10_000, Some(12_000)),
                    Some(StepOutcome::Ok),
                ),
                step(2, Some("s1"), StepKind::WaitSessions, (12_000, None), None),
            ]),
            20_000,
        )
        .unwrap();
        assert_eq!(chart.span_ms, 10_000);
        let running = &chart.lanes[0].bars[1];
        assert_eq!((running.left, running.width), (20.0, 80.0));
        assert_eq!(running.outcome, None);
        assert_eq!(running.title, "Wait for sessions: 8.0 s (Running)");
    }

    #[test]
    fn an_instant_step_is_still_visible_and_never_past_the_axis() {
        let ok = Some(StepOutcome::Ok);
        let chart = chart(
            &timeline(vec![
                step(1, Some("s1"), StepKind::Enable, (10_000, Some(10_000)), ok),
                step(
                    2,
                    Some("s2"),
                    StepKind::ConfirmUp,
                    (20_000, Some(20_000)),
                    ok,
                ),
            ]),
            20_000,
        )
        .unwrap();
        assert_eq!(chart.lanes[0].bars[0].width, MIN_WIDTH);
        let last = &chart.lanes[1].bars[0];
        assert!(last.left + last.width <= 100.0, "{last:?}");
    }
}
