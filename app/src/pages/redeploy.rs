//! The Redeploy form of one service: version (prefilled), a confirmation, then the rollout page.
//!
//! Focus follows the form: the version field when it opens, the confirm button when it asks,
//! the field again (with the error) when the server refuses, and the Redeploy button when it
//! closes. The server checks the version; its message is shown beside the field, whose text is
//! kept.

use leptos::html;
use leptos::prelude::*;
use leptos_router::hooks::use_navigate;

use super::format::error_message;
use crate::fleet::deploy;
use crate::model::ServiceStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Closed,
    Editing,
    Confirming,
    Sending,
}

#[component]
pub fn Redeploy(service: String, status: Memo<Option<ServiceStatus>>) -> impl IntoView {
    let stage = RwSignal::new(Stage::Closed);
    let version = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let open_button = NodeRef::<html::Button>::new();
    let input = NodeRef::<html::Input>::new();
    let confirm_button = NodeRef::<html::Button>::new();
    let navigate = use_navigate();

    let form_id = format!("redeploy-{service}");
    let input_id = format!("redeploy-{service}-version");
    let error_id = format!("redeploy-{service}-error");
    let question_id = format!("redeploy-{service}-question");

    // Move the focus to where the operator acts next.
    Effect::new(move |previous: Option<Stage>| {
        let current = stage.get();
        if previous.is_some() && previous != Some(current) {
            match current {
                Stage::Editing => {
                    if let Some(input) = input.get() {
                        let _ = input.focus();
                        input.select();
                    }
                }
                Stage::Confirming => {
                    if let Some(button) = confirm_button.get() {
                        let _ = button.focus();
                    }
                }
                Stage::Closed => {
                    if let Some(button) = open_button.get() {
                        let _ = button.focus();
                    }
                }
                Stage::Sending => {}
            }
        }
        current
    });

    let open = move |_| {
        let suggested = status.with_untracked(|s| {
            s.as_ref()
                .and_then(|s| s.suggested_version.clone())
                .unwrap_or_default()
        });
        version.set(suggested);
        error.set(None);
        stage.set(Stage::Editing);
    };
    let close = move || {
        error.set(None);
        stage.set(Stage::Closed);
    };
    let on_keydown = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Escape" && stage.get_untracked() != Stage::Sending {
            ev.prevent_default();
            close();
        }
    };
    let review = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if version.with_untracked(|v| v.trim().is_empty()) {
            error.set(Some("Enter the version to deploy, such as v2.".into()));
            if let Some(input) = input.get_untracked() {
                let _ = input.focus();
            }
            return;
        }
        version.update(|v| *v = v.trim().to_owned());
        error.set(None);
        stage.set(Stage::Confirming);
    };
    let confirm = {
        let service = service.clone();
        move |_| {
            let service = service.clone();
            let navigate = navigate.clone();
            let wanted = version.get_untracked();
            stage.set(Stage::Sending);
            leptos::task::spawn_local(async move {
                match deploy(service, wanted).await {
                    Ok(id) => {
                        stage.set(Stage::Closed);
                        navigate(&format!("/deployments/{id}"), Default::default());
                    }
                    Err(refused) => {
                        error.set(Some(error_message(&refused)));
                        stage.set(Stage::Editing);
                    }
                }
            });
        }
    };

    let question = {
        let service = service.clone();
        move || {
            let count = status.with(|s| s.as_ref().map_or(0, |s| s.backends.len()));
            let backends = if count == 1 {
                "1 backend".to_owned()
            } else {
                format!("{count} backends")
            };
            format!("Deploy {} to {service} ({backends})?", version.get())
        }
    };
    let busy = move || {
        status.with(|s| {
            s.as_ref().and_then(|s| s.active.as_ref()).map(|active| {
                view! {
                    <p class="muted small">
                        {format!(
                            "A rollout is in progress (#{}); a new one waits for it to finish.",
                            active.id,
                        )}
                    </p>
                }
            })
        })
    };

    let editing_view = {
        let form_id = form_id.clone();
        move || {
            let error_id = error_id.clone();
            let error_view = {
                let error_id = error_id.clone();
                move || {
                    error.get().map(|message| {
                        view! {
                            <p id=error_id.clone() class="error field-error" role="alert">
                                {message}
                            </p>
                        }
                    })
                }
            };
            view! {
                <form id=form_id.clone() class="redeploy-form" on:submit=review novalidate>
                    <label for=input_id.clone()>"Version"</label>
                    <div class="field-row">
                        <input
                            id=input_id.clone()
                            node_ref=input
                            type="text"
                            name="version"
                            autocomplete="off"
                            spellcheck="false"
                            required
                            aria-invalid=move || if error.with(Option::is_some) { "true" } else { "false" }
                            aria-describedby=error_id
                            prop:value=move || version.get()
                            on:input=move |ev| version.set(event_target_value(&ev))
                        />
                        <button type="submit" class="primary">
                            "Continue"
                        </button>
                        <button type="button" on:click=move |_| close()>
                            "Cancel"
                        </button>
                    </div>
                    {error_view}
                </form>
            }
        }
    };
    let confirming_view = move || {
        let question = question.clone();
        let confirm = confirm.clone();
        view! {
            <div class="redeploy-confirm" role="group" aria-labelledby=question_id.clone()>
                <p id=question_id.clone() class="question">
                    <strong>{question}</strong>
                </p>
                {busy}
                <div class="field-row">
                    <button
                        type="button"
                        class="primary"
                        node_ref=confirm_button
                        disabled=move || stage.get() == Stage::Sending
                        on:click=confirm
                    >
                        {move || if stage.get() == Stage::Sending { "Deploying…" } else { "Deploy" }}
                    </button>
                    <button
                        type="button"
                        disabled=move || stage.get() == Stage::Sending
                        on:click=move |_| stage.set(Stage::Editing)
                    >
                        "Back"
                    </button>
                </div>
            </div>
        }
    };

    // Which part is on screen: sending keeps the confirmation (its buttons disabled).
    let shown = Memo::new(move |_| match stage.get() {
        Stage::Sending => Stage::Confirming,
        other => other,
    });

    view! {
        <div class="redeploy" on:keydown=on_keydown>
            <button
                type="button"
                class="primary"
                node_ref=open_button
                aria-expanded=move || if stage.get() == Stage::Closed { "false" } else { "true" }
                aria-controls=move || (stage.get() == Stage::Editing).then(|| form_id.clone())
                on:click=open
            >
                {format!("Redeploy {service}")}
            </button>
            {move || match shown.get() {
                Stage::Closed => ().into_any(),
                Stage::Editing => editing_view().into_any(),
                _ => confirming_view().into_any(),
            }}
        </div>
    }
    .into_any()
}
