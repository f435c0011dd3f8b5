//! A client of a running Baton's API, for `baton deploy`: start a rollout, then follow its
//! event stream and report each step as it ends; and for `baton approve` and `baton promote`.
//!
//! Following uses the same SSE stream as the browser (`GET /api/deployments/{id}/events`). A
//! dropped connection (Baton restarting, a network blip) is picked up again with
//! `Last-Event-ID`, so no step is reported twice or lost.

use std::collections::HashSet;
use std::time::Duration;

use app::model::{
    Change, ControlAction, DeploymentEvent, DeploymentSummary, RolloutStatus, ServiceStatus,
    StepOutcome, StepSummary,
};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Deserialize;

/// How long `follow` keeps trying to reach Baton again after losing it.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// The pause between attempts to reach Baton again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach Baton at {base}: {reason}")]
    Unreachable { base: String, reason: String },
    /// Baton answered with an error status; `hint` says what the user can do about it.
    #[error("Baton refused {what} ({status}): {reason}{hint}")]
    Refused {
        what: &'static str,
        status: reqwest::StatusCode,
        reason: String,
        hint: &'static str,
    },
    #[error("Baton answered something unexpected: {0}")]
    Protocol(String),
    #[error("BATON_TOKEN is not a valid token: expected printable ASCII")]
    BadToken,
    #[error("no service is named {0:?}")]
    UnknownService(String),
    /// `baton approve` or `baton promote` found nothing of the service waiting for it.
    #[error("{service} has no rollout {waiting}{now}")]
    NothingWaiting {
        service: String,
        waiting: &'static str,
        /// What the service's rollout is doing instead, if it has one.
        now: String,
    },
}

/// What `POST /api/services/{service}/deployments` answers.
#[derive(Debug, Deserialize)]
pub struct Queued {
    pub id: i64,
    pub status: RolloutStatus,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token_given: bool,
}

impl Client {
    /// A client of the Baton at `base` (such as `http://127.0.0.1:8080`) that sends `token`.
    pub fn new(base: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let token = token.filter(|token| !token.is_empty());
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::BadToken)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token_given: token.is_some(),
        })
    }

    /// Asks for a rollout of `version` of `service`, started from the CLI.
    pub async fn deploy(&self, service: &str, version: &str) -> Result<Queued, ClientError> {
        let response = self
            .http
            .post(format!("{}/api/services/{service}/deployments", self.base))
            .json(&serde_json::json!({ "version": version, "trigger": "cli" }))
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let response = self.checked(response, "the rollout").await?;
        response
            .json()
            .await
            .map_err(|error| ClientError::Protocol(format!("a rollout without an id: {error}")))
    }

    /// Approves or promotes the rollout of `service` that waits for it (`action` is
    /// [`ControlAction::Approve`] or [`ControlAction::Promote`]); returns its id.
    pub async fn decide(&self, service: &str, action: ControlAction) -> Result<i64, ClientError> {
        let (wanted, waiting, what) = match action {
            ControlAction::Approve => (
                RolloutStatus::AwaitingApproval,
                "awaiting approval",
                "the approval",
            ),
            ControlAction::Promote => (
                RolloutStatus::AwaitingPromote,
                "awaiting promotion",
                "the promotion",
            ),
            ControlAction::Pause | ControlAction::Resume | ControlAction::Abort => {
                return Err(ClientError::Protocol(format!(
                    "{} is not a decision",
                    action.as_str()
                )));
            }
        };
        let response = self
            .http
            .get(format!("{}/api/services", self.base))
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let services: Vec<ServiceStatus> = self
            .checked(response, "to list the services")
            .await?
            .json()
            .await
            .map_err(|error| ClientError::Protocol(format!("a list of services: {error}")))?;
        let found = services
            .into_iter()
            .find(|found| found.name == service)
            .ok_or_else(|| ClientError::UnknownService(service.to_owned()))?;
        let id = match found.active {
            Some(active) if active.status == wanted => active.id,
            other => {
                return Err(ClientError::NothingWaiting {
                    service: service.to_owned(),
                    waiting,
                    now: other.map_or_else(String::new, |active| {
                        format!(" (rollout {} is {})", active.id, active.status)
                    }),
                });
            }
        };
        let response = self
            .http
            .post(format!(
                "{}/api/deployments/{id}/{}",
                self.base,
                action.as_str()
            ))
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        self.checked(response, what).await?;
        Ok(id)
    }

    /// Follows rollout `id` until it ends, calling `on_step` once for each step as it ends (in
    /// the order they end) and `on_wait` each time it comes to wait for an approval or a
    /// promotion, and returns the rollout as it ended.
    pub async fn follow(
        &self,
        id: i64,
        mut on_step: impl FnMut(&StepSummary),
        mut on_wait: impl FnMut(&DeploymentSummary),
    ) -> Result<DeploymentSummary, ClientError> {
        let url = format!("{}/api/deployments/{id}/events", self.base);
        let mut last_event: Option<i64> = None;
        let mut reported = HashSet::new();
        let mut lost_since: Option<tokio::time::Instant> = None;
        loop {
            let mut request = self.http.get(&url).header(ACCEPT, "text/event-stream");
            if let Some(last) = last_event {
                request = request.header("Last-Event-ID", last.to_string());
            }
            let lost = match request.send().await {
                Ok(response) => {
                    let response = self.checked(response, "to show the rollout").await?;
                    lost_since = None;
                    let mut events = response.bytes_stream().eventsource();
                    loop {
                        match events.next().await {
                            Some(Ok(message)) if message.event == "deployment" => {
                                let event: DeploymentEvent = serde_json::from_str(&message.data)
                                    .map_err(|error| {
                                        ClientError::Protocol(format!(
                                            "an event Baton's CLI cannot read ({error}): {}",
                                            message.data
                                        ))
                                    })?;
                                last_event = Some(event.id);
                                match event.change {
                                    Change::Step { step } => {
                                        if step.outcome.is_some() && reported.insert(step.id) {
                                            on_step(&step);
                                        }
                                    }
                                    Change::Status { deployment }
                                        if deployment.status.is_finished() =>
                                    {
                                        return Ok(deployment);
                                    }
                                    Change::Status { deployment }
                                        if waiting_line(&deployment).is_some() =>
                                    {
                                        on_wait(&deployment);
                                    }
                                    Change::Status { .. }
                                    | Change::Control { .. }
                                    | Change::Takeover { .. } => {}
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(error)) => break error.to_string(),
                            None => break "the stream ended".to_owned(),
                        }
                    }
                }
                Err(error) => error.to_string(),
            };
            let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= RECONNECT_FOR {
                return Err(ClientError::Unreachable {
                    base: self.base.clone(),
                    reason: format!(
                        "lost it for {RECONNECT_FOR:?} while following rollout {id}: {lost}"
                    ),
                });
            }
            tokio::time::sleep(RECONNECT_EVERY).await;
        }
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            reason: error.to_string(),
        }
    }

    /// The response if it succeeded; otherwise Baton's `{"error": …}` as a [`ClientError`].
    async fn checked(
        &self,
        response: reqwest::Response,
        what: &'static str,
    ) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let hint = match status.as_u16() {
            401 if !self.token_given => {
                "\n  set BATON_TOKEN to an API token (`baton token create NAME --role deployer`)"
            }
            401 | 403 => "\n  BATON_TOKEN must be a live token with the deployer or admin role",
            _ => "",
        };
        Err(ClientError::Refused {
            what,
            status,
            reason: body["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
            hint,
        })
    }
}

/// The line `baton deploy --wait` prints when the rollout comes to wait for someone; `None`
/// for a status that waits for no one.
pub fn waiting_line(deployment: &DeploymentSummary) -> Option<String> {
    let (what, command) = match deployment.status {
        RolloutStatus::AwaitingApproval => ("awaits approval by another deployer", "approve"),
        RolloutStatus::AwaitingPromote => ("awaits promotion", "promote"),
        RolloutStatus::Queued
        | RolloutStatus::Running
        | RolloutStatus::Paused
        | RolloutStatus::Succeeded
        | RolloutStatus::Failed
        | RolloutStatus::RolledBack
        | RolloutStatus::Cancelled => return None,
    };
    Some(format!(
        "rollout {} {what}: `baton {command} {}` goes on, an abort cancels",
        deployment.id, deployment.service
    ))
}

/// One line of `baton deploy --wait`'s report for a step that ended.
pub fn step_line(step: &StepSummary) -> String {
    let took = step.finished_at.unwrap_or(step.started_at) - step.started_at;
    format!(
        "  {}{:<8} {:<15} {:<10} {:>6} ms{}",
        if step.rollback { "rollback " } else { "" },
        step.backend.as_deref().unwrap_or("-"),
        step.step.as_str(),
        step.outcome.map_or("?", StepOutcome::as_str),
        took,
        step.detail
            .as_deref()
            .map(|detail| format!("  {detail}"))
            .unwrap_or_default()
    )
}
