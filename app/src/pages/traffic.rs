//! The rollout's traffic as a small SVG chart: requests/s per backend (one line each), 5xx/s in
//! red (a red line on the baseline when there were none), and a thin mark where each backend's
//! batch left rotation and where it came back, on one time axis. A reader sees at a glance that
//! traffic moved off each batch and back, and that nothing failed meanwhile.
//!
//! [`chart`] is pure (the layout in the SVG's own units); the component fetches the samples
//! (`get_traffic`) as the page renders, again every [`REFRESH_MS`] while the rollout goes on, and
//! once more as it ends.

use leptos::prelude::*;

use super::format::step_label;
use super::timeline::Timeline;
use crate::fleet::get_traffic;
use crate::model::{RolloutTraffic, StepKind, StepSummary, TrafficPoint};

/// The SVG's coordinate space: the plot fills it below a strip for the marks' labels.
pub const WIDTH: f64 = 600.0;
pub const HEIGHT: f64 = 160.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = HEIGHT - 2.0;

/// How often a rollout still going asks for its samples again (the sampler takes one a second).
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub const REFRESH_MS: u64 = 2_000;

/// Distinct hues for the backends' lines, none of them red (red is 5xx).
const PALETTE: [&str; 8] = [
    "#2f6fdf", "#2a9d6a", "#8a5cd0", "#d9a441", "#1aa3b8", "#6b7a8f", "#b85fa3", "#5b8c2a",
];
const ERRORS: &str = "#c8433a";

/// One backend's lines, as SVG `points`, and what it served in all.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub backend: String,
    pub color: &'static str,
    /// Requests/s, sample by sample.
    pub requests: String,
    /// 5xx/s, sample by sample: on the baseline while there are none.
    pub errors: String,
    pub total_requests: u64,
    pub total_errors: u64,
}

/// Where a backend left rotation or came back.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub backend: String,
    pub step: StepKind,
    /// Whether it left rotation there (else it came back).
    pub leaves: bool,
    pub x: f64,
    /// "web1: Drain", the step that began there.
    pub title: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub lines: Vec<Line>,
    pub marks: Vec<Mark>,
    /// The top of the axis, in requests per second (a round number at least as high as the
    /// busiest sample).
    pub peak: f64,
    /// The time axis's length, from its first moment (a sample's start or a step's) to its last.
    pub span_ms: i64,
    pub samples: usize,
    pub requests: u64,
    pub errors_5xx: u64,
}

impl Chart {
    /// "412 requests, 0 5xx".
    pub fn summary(&self) -> String {
        format!(
            "{} request{}, {} 5xx",
            self.requests,
            if self.requests == 1 { "" } else { "s" },
            self.errors_5xx
        )
    }
}

/// How a step moves a backend's traffic: `Some(true)` where it leaves rotation (`Drain`, or
/// `Retire` for the instance a surge replaces), `Some(false)` where it comes back (`ConfirmUp`,
/// or `SurgeEnable` for the new one), `None` for the steps in between.
fn moves_traffic(step: StepKind) -> Option<bool> {
    match step {
        StepKind::Drain | StepKind::Retire => Some(true),
        StepKind::ConfirmUp | StepKind::SurgeEnable => Some(false),
        StepKind::Prepare
        | StepKind::CheckCapacity
        | StepKind::WaitSessions
        | StepKind::CutSessions
        | StepKind::Maint
        | StepKind::Stop
        | StepKind::Start
        | StepKind::WaitHealthy
        | StepKind::LbCheck
        | StepKind::Enable
        | StepKind::SurgeStart
        | StepKind::SurgeHealthy
        | StepKind::SurgeAdd
        | StepKind::Overlap
        | StepKind::Discard
        // The watch looks at the traffic; it moves none.
        | StepKind::Soak => None,
    }
}

/// A round number at least `value`: 1, 2 or 5 times a power of ten.
fn round_up(value: f64) -> f64 {
    let value = value.max(1.0);
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|nice| *nice >= value)
        .unwrap_or(10.0 * magnitude)
}

/// Lays out `traffic` with `steps`' marks on one time axis. `None` before the first sample.
pub fn chart(traffic: &RolloutTraffic, steps: &[StepSummary]) -> Option<Chart> {
    let points = || traffic.backends.iter().flat_map(|s| s.points.iter());
    let first = points().map(|p| p.at - p.span_ms).min()?;
    let last = points().map(|p| p.at).max()?;
    let marked: Vec<&StepSummary> = steps
        .iter()
        .filter(|s| s.backend.is_some() && moves_traffic(s.step).is_some())
        .collect();
    let start = marked.iter().map(|s| s.started_at).fold(first, i64::min);
    let end = marked.iter().map(|s| s.started_at).fold(last, i64::max);
    let span_ms = (end - start).max(1_000);
    let x = |at: i64| (at - start) as f64 * WIDTH / span_ms as f64;
    let peak = round_up(
        points()
            .map(|p| p.requests_per_s.max(p.errors_5xx_per_s))
            .fold(0.0, f64::max),
    );
    let y = |rate: f64| BOTTOM - rate / peak * (BOTTOM - TOP);
    let polyline = |rate: &dyn Fn(&TrafficPoint) -> f64, series: &[TrafficPoint]| {
        series
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at), y(rate(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lines: Vec<Line> = traffic
        .backends
        .iter()
        .enumerate()
        .map(|(i, series)| Line {
            backend: series.backend.clone(),
            color: PALETTE[i % PALETTE.len()],
            requests: polyline(&|p| p.requests_per_s, &series.points),
            errors: polyline(&|p| p.errors_5xx_per_s, &series.points),
            total_requests: series.points.iter().map(|p| p.requests).sum(),
            total_errors: series.points.iter().map(|p| p.errors_5xx).sum(),
        })
        .collect();
    let marks = marked
        .into_iter()
        .map(|step| {
            let backend = step.backend.clone().unwrap_or_default();
            Mark {
                title: format!(
                    "{backend}: {}{}",
                    step_label(step.step),
                    if step.rollback { " (rollback)" } else { "" }
                ),
                backend,
                step: step.step,
                leaves: moves_traffic(step.step) == Some(true),
                x: x(step.started_at),
            }
        })
        .collect();
    Some(Chart {
        requests: lines.iter().map(|l| l.total_requests).sum(),
        errors_5xx: lines.iter().map(|l| l.total_errors).sum(),
        samples: traffic
            .backends
            .iter()
            .map(|s| s.points.len())
            .max()
            .unwrap_or(0),
        lines,
        marks,
        peak,
        span_ms,
    })
}

/// The traffic chart of rollout `id`, its marks from the page's timeline.
#[component]
pub fn TrafficChart(id: i64, timeline: RwSignal<Timeline>) -> impl IntoView {
    let finished = Memo::new(move |_| timeline.with(|t| t.deployment.status.is_finished()));
    let fetches = RwSignal::new(0u32);
    let traffic = Resource::new(move || fetches.get(), move |_| get_traffic(id));
    #[cfg(feature = "hydrate")]
    {
        use std::time::Duration;
        // Ask again while the rollout goes on, and once more as it ends (its last samples).
        if let Ok(handle) = set_interval_with_handle(
            move || {
                if !finished.get_untracked() {
                    fetches.update(|n| *n += 1);
                }
            },
            Duration::from_millis(REFRESH_MS),
        ) {
            on_cleanup(move || handle.clear());
        }
        Effect::new(move |was: Option<bool>| {
            let now = finished.get();
            if was == Some(false) && now {
                fetches.update(|n| *n += 1);
            }
            now
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = finished;
    let drawn = move || {
        Suspend::new(async move {
            let traffic = match traffic.await {
                Ok(Some(traffic)) => traffic,
                Ok(None) | Err(_) => {
                    return view! {
                        <p class="muted small">"The traffic could not be read."</p>
                    }
                    .into_any();
                }
            };
            let drawn = timeline.with(|t| chart(&traffic, &t.steps));
            match drawn {
                Some(chart) => draw(chart).into_any(),
                None => view! {
                    <p class="muted small" data-testid="traffic-empty">
                        "No traffic sampled for this rollout."
                    </p>
                }
                .into_any(),
            }
        })
    };
    view! {
        <section class="traffic" aria-labelledby="traffic-heading" data-testid="traffic">
            <h2 id="traffic-heading">"Traffic"</h2>
            <Transition fallback=|| {
                view! { <p class="muted small">"Loading the traffic…"</p> }
            }>{drawn}</Transition>
        </section>
    }
}

fn draw(chart: Chart) -> impl IntoView {
    let summary = chart.summary();
    let failing = chart.errors_5xx > 0;
    let peak = format!("height: 0 to {} req/s", chart.peak);
    let lines = chart
        .lines
        .iter()
        .map(|line| {
            view! {
                <polyline
                    class="requests"
                    data-backend=line.backend.clone()
                    points=line.requests.clone()
                    fill="none"
                    stroke=line.color
                    stroke-width="1.5"
                />
            }
        })
        .collect_view();
    // Drawn after the requests, so a red line on the baseline stays visible.
    let errors = chart
        .lines
        .iter()
        .map(|line| {
            view! {
                <polyline
                    class="errors"
                    data-backend=line.backend.clone()
                    points=line.errors.clone()
                    fill="none"
                    stroke=ERRORS
                    stroke-width="1.5"
                    stroke-dasharray="4 2"
                />
            }
        })
        .collect_view();
    let marks = chart
        .marks
        .into_iter()
        .map(|mark| {
            let x = format!("{:.1}", mark.x);
            // Beside the line, on the side where the backend is out of rotation, so a backend
            // coming back and the next one leaving at the same moment do not overlap.
            let (label, anchor, nudge) = if mark.leaves {
                (format!("{} out", mark.backend), "start", 2.0)
            } else {
                (format!("{} in", mark.backend), "end", -2.0)
            };
            let text_x = format!("{:.1}", mark.x + nudge);
            view! {
                <g
                    class="mark"
                    data-testid="traffic-mark"
                    data-backend=mark.backend.clone()
                    data-step=mark.step.as_str()
                >
                    <title>{mark.title}</title>
                    <line
                        x1=x.clone()
                        x2=x.clone()
                        y1=TOP.to_string()
                        y2=BOTTOM.to_string()
                        stroke="#888"
                        stroke-width="0.75"
                    />
                    <text
                        x=text_x
                        y=(TOP - 3.0).to_string()
                        font-size="9"
                        text-anchor=anchor
                        fill="#666"
                    >
                        {label}
                    </text>
                </g>
            }
        })
        .collect_view();
    let legend = chart
        .lines
        .into_iter()
        .map(|line| {
            let style = format!("background: {}", line.color);
            let name = line.backend.clone();
            view! {
                <li
                    data-backend=line.backend.clone()
                    data-requests=line.total_requests.to_string()
                    data-errors=line.total_errors.to_string()
                >
                    <span class="swatch" style=style></span>
                    {name}
                    " "
                    <span class="muted">
                        {format!("{} req, {} 5xx", line.total_requests, line.total_errors)}
                    </span>
                </li>
            }
        })
        .collect_view();
    view! {
        <p
            class=if failing { "summary failing" } else { "summary" }
            data-testid="traffic-summary"
            data-requests=chart.requests.to_string()
            data-errors=chart.errors_5xx.to_string()
            data-samples=chart.samples.to_string()
        >
            {summary}
        </p>
        <svg
            class="traffic-chart"
            viewBox=format!("0 0 {WIDTH} {HEIGHT}")
            role="img"
            aria-label="Requests per second and 5xx per second for each backend during the rollout"
        >
            <line x1="0" x2=WIDTH.to_string() y1=BOTTOM.to_string() y2=BOTTOM.to_string() stroke="#ccc" stroke-width="1" />
            {marks}
            {lines}
            {errors}
        </svg>
        <p class="axis small muted">
            <span>"0 s"</span>
            <span>{peak}</span>
            <span data-testid="traffic-span">{super::format::format_duration(chart.span_ms)}</span>
        </p>
        <ul class="legend small">
            {legend}
            <li class="errors-key">
                <span class="swatch" style=format!("background: {ERRORS}")></span>
                "5xx/s (dashed)"
            </li>
        </ul>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StepOutcome, TrafficSeries};

    fn point(at: i64, requests: u64, errors_5xx: u64) -> TrafficPoint {
        TrafficPoint {
            at,
            span_ms: 1_000,
            requests,
            errors_5xx,
            requests_per_s: requests as f64,
            errors_5xx_per_s: errors_5xx as f64,
        }
    }

    fn series(backend: &str, points: Vec<TrafficPoint>) -> TrafficSeries {
        TrafficSeries {
            backend: backend.into(),
            points,
        }
    }

    fn step(backend: &str, kind: StepKind, at: i64) -> StepSummary {
        StepSummary {
            id: at,
            backend: Some(backend.into()),
            step: kind,
            rollback: false,
            version: "v2".into(),
            started_at: at,
            finished_at: Some(at),
            outcome: Some(StepOutcome::Ok),
            detail: None,
        }
    }

    #[test]
    fn nothing_sampled_no_chart() {
        assert_eq!(chart(&RolloutTraffic::default(), &[]), None);
    }

    #[test]
    fn lines_and_marks_share_one_time_axis() {
        let traffic = RolloutTraffic {
            backends: vec![
                series("s1", vec![point(11_000, 40, 0), point(12_000, 0, 0)]),
                series("s2", vec![point(11_000, 40, 0), point(12_000, 80, 0)]),
            ],
        };
        let steps = [
            step("s1", StepKind::Drain, 11_500),
            step("s1", StepKind::Stop, 11_600),
            step("s1", StepKind::ConfirmUp, 14_000),
        ];
        let chart = chart(&traffic, &steps).unwrap();
        // From the first sample's start (10 s) to the last mark (14 s).
        assert_eq!(chart.span_ms, 4_000);
        assert_eq!(chart.peak, 100.0);
        // Only the steps that move traffic are marked.
        let marks: Vec<(StepKind, bool, f64)> = chart
            .marks
            .iter()
            .map(|m| (m.step, m.leaves, m.x))
            .collect();
        assert_eq!(
            marks,
            [
                (StepKind::Drain, true, 225.0),
                (StepKind::ConfirmUp, false, 600.0)
            ]
        );
        assert_eq!(chart.marks[0].title, "s1: Drain");
        // s1 at 40 req/s at 1 s, then 0; the axis's top is 100 req/s.
        assert_eq!(chart.lines[0].requests, "150.0,100.4 300.0,158.0");
        assert_eq!(chart.lines[1].requests, "150.0,100.4 300.0,42.8");
        assert_eq!(chart.summary(), "160 requests, 0 5xx");
    }

    #[test]
    fn a_surge_is_marked_where_the_new_instance_comes_in_and_the_old_one_leaves() {
        let traffic = RolloutTraffic {
            backends: vec![series("s1", vec![point(1_000, 10, 0)])],
        };
        let steps = [
            step("s1", StepKind::SurgeAdd, 1_000),
            step("s1", StepKind::SurgeEnable, 1_200),
            step("s1", StepKind::Overlap, 1_300),
            step("s1", StepKind::Retire, 1_800),
        ];
        let marks: Vec<(StepKind, bool)> = chart(&traffic, &steps)
            .unwrap()
            .marks
            .iter()
            .map(|m| (m.step, m.leaves))
            .collect();
        assert_eq!(
            marks,
            [(StepKind::SurgeEnable, false), (StepKind::Retire, true)]
        );
    }

    #[test]
    fn no_errors_is_a_red_line_on_the_baseline_and_errors_rise_from_it() {
        let traffic = RolloutTraffic {
            backends: vec![series("s1", vec![point(1_000, 10, 0), point(2_000, 10, 5)])],
        };
        let chart = chart(&traffic, &[]).unwrap();
        assert_eq!(chart.lines[0].errors, "300.0,158.0 600.0,86.0");
        assert_eq!((chart.lines[0].total_errors, chart.errors_5xx), (5, 5));
        assert_eq!(chart.summary(), "20 requests, 5 5xx");
    }

    #[test]
    fn the_axis_top_is_a_round_number_above_the_busiest_sample() {
        assert_eq!(round_up(0.0), 1.0);
        assert_eq!(round_up(1.0), 1.0);
        assert_eq!(round_up(3.2), 5.0);
        assert_eq!(round_up(41.0), 50.0);
        assert_eq!(round_up(120.0), 200.0);
        assert_eq!(round_up(999.0), 1000.0);
    }
}
