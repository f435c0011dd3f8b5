//! The ends of backends' logs kept when a step failed, under the rollout's timeline: the
//! answer to "why did it fail?" without ssh-ing in. Deployers and admins read the lines; a
//! viewer sees that a log is there (the server leaves the lines out for them).

use leptos::prelude::*;

use super::format::step_label;
use super::timeline::Timeline;
use crate::model::StepLog;

/// Every kept log of the rollout, in the order their steps ran; nothing when none was kept.
#[component]
pub fn FailureLogs(timeline: RwSignal<Timeline>) -> impl IntoView {
    let logs = Memo::new(move |_| timeline.with(|t| t.logs.clone()));
    move || {
        let logs = logs.get();
        (!logs.is_empty()).then(|| {
            let shown = logs
                .into_iter()
                .map(|log| {
                    let step = timeline.with_untracked(|t| {
                        t.steps
                            .iter()
                            .find(|step| step.id == log.step_id)
                            .map(|step| step_label(step.step))
                    });
                    view! { <KeptLog log step /> }
                })
                .collect_view();
            view! {
                <section class="logs" aria-labelledby="logs-heading" data-testid="logs">
                    <h2 id="logs-heading">"Logs"</h2>
                    {shown}
                </section>
            }
        })
    }
}

#[component]
fn KeptLog(log: StepLog, step: Option<&'static str>) -> impl IntoView {
    let heading = match step {
        Some(step) => format!("{} · when {step} failed", log.backend),
        None => log.backend.clone(),
    };
    let body = if log.withheld {
        view! {
            <p class="muted" data-testid="log-withheld">
                {format!(
                    "{}'s log was kept ({}); deployers and admins can read it.",
                    log.backend,
                    lines(log.line_count),
                )}
            </p>
        }
        .into_any()
    } else {
        view! {
            <pre class="log-lines" data-testid="log-lines">
                {log.lines.join("\n")}
            </pre>
        }
        .into_any()
    };
    view! {
        <article class="log" data-log-backend=log.backend.clone() data-log-step=log.step_id>
            <h3>{heading}</h3>
            <p class="small muted">
                {format!("The last {} of ", lines(log.line_count))}
                <code>{log.source.clone()}</code>
            </p>
            {body}
        </article>
    }
}

fn lines(count: u32) -> String {
    if count == 1 {
        "1 line".to_owned()
    } else {
        format!("{count} lines")
    }
}
