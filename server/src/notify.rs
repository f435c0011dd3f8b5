//! Notifications: telling Slack or any webhook receiver that a rollout started, succeeded,
//! failed or was rolled back (`[[notify]]`, `[[service.notify]]`).
//!
//! The rollout worker hands a [`Notice`] to its [`Outbox`], which only puts one job per target
//! on a bounded queue and returns at once; a full queue drops the notification with a log line.
//! So no receiver, however slow or broken, delays a rollout. One [`Worker`] task takes the jobs
//! and sends each in its own task (at most [`IN_FLIGHT`] at once), trying again after a
//! growing delay (backon's exponential backoff, with jitter) while the failure is one another
//! attempt could cure. Every attempt is logged and recorded (`notification_attempts`).
//!
//! Only the leader's rollout workers hand over notices, so with PostgreSQL replicas only the
//! leader sends. Invariant: no URL or secret reaches a log line or the database: a target is
//! named by its `url_env`, and reqwest's errors are shown without their URL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::model::{AttemptVerdict, NotificationEvent, NotifyKind, RolloutStatus, Trigger};
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::NotifySettings;
use crate::store::Store;
use crate::store::notifications::NewAttempt;

/// How many attempts admins see (`GET /api/notifications`, the audit page), newest first.
pub const ATTEMPTS_SHOWN: i64 = 200;
/// How many notifications may wait to be sent; more are dropped (and logged).
pub const QUEUE: usize = 256;
/// How many notifications are sent at once.
const IN_FLIGHT: usize = 16;
/// How long one attempt may take, connecting and answering included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The delays between attempts: 0.5 s, then doubling up to a minute, with jitter; five
/// attempts in all.
fn retry_delays() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .with_max_times(4)
        .with_jitter()
}

/// The headers of a generic webhook: the event, a delivery id (the same on every attempt, for
/// the receiver to drop repeats), the Unix time of sending (also the body's `sent_at`), and
/// `sha256=<hex HMAC-SHA256 of the body>` under the target's secret.
pub const EVENT_HEADER: &str = "X-Baton-Event";
pub const DELIVERY_HEADER: &str = "X-Baton-Delivery";
pub const TIMESTAMP_HEADER: &str = "X-Baton-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Baton-Signature";

/// What happened to a rollout, for the people watching it.
#[derive(Debug, Clone)]
pub struct Notice {
    pub rollout: i64,
    pub service: String,
    pub event: NotificationEvent,
    pub from_version: Option<String>,
    pub to_version: String,
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
}

impl Notice {
    /// One line for people (Slack's `text`, and the webhook body's).
    pub fn text(&self) -> String {
        let head = format!(
            "{}: rollout #{} to {}",
            self.service, self.rollout, self.to_version
        );
        let reason = self
            .reason
            .as_deref()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default();
        match self.event {
            NotificationEvent::Started => {
                let from = self
                    .from_version
                    .as_deref()
                    .map(|from| format!(" from {from}"))
                    .unwrap_or_default();
                let by = self
                    .requested_by
                    .as_deref()
                    .map(|by| format!(", requested by {by}"))
                    .unwrap_or_default();
                format!("{head} started{from} ({}{by})", self.trigger)
            }
            NotificationEvent::Succeeded => format!("{head} succeeded"),
            NotificationEvent::Failed => format!("{head} failed{reason}"),
            NotificationEvent::RolledBack => format!("{head} was rolled back{reason}"),
            NotificationEvent::SoakTripped => {
                format!("{head}: the watch after enable tripped{reason}")
            }
        }
    }

    /// The id a receiver can drop repeats by: the same for every attempt.
    pub fn delivery(&self) -> String {
        format!("{}-{}", self.rollout, self.event)
    }
}

/// The event a rollout that ended with `status` is announced with; `None` for a status that
/// is not an ending worth one (an operator's cancel is in the audit log already).
pub fn ending(status: RolloutStatus) -> Option<NotificationEvent> {
    match status {
        RolloutStatus::Succeeded => Some(NotificationEvent::Succeeded),
        RolloutStatus::Failed => Some(NotificationEvent::Failed),
        RolloutStatus::RolledBack => Some(NotificationEvent::RolledBack),
        RolloutStatus::Queued
        | RolloutStatus::Running
        | RolloutStatus::Paused
        | RolloutStatus::AwaitingApproval
        | RolloutStatus::AwaitingPromote
        | RolloutStatus::Cancelled => None,
    }
}

/// A generic webhook's JSON body.
#[derive(Serialize)]
struct WebhookBody<'a> {
    event: NotificationEvent,
    service: &'a str,
    rollout: i64,
    from_version: Option<&'a str>,
    to_version: &'a str,
    trigger: Trigger,
    requested_by: Option<&'a str>,
    reason: Option<&'a str>,
    text: String,
    delivery: String,
    /// Unix seconds, as `X-Baton-Timestamp`: signed with the body, so it cannot be changed.
    sent_at: u64,
}

/// The body and headers of one attempt to `target`, sent at `sent_at` (Unix seconds).
pub fn request_parts(
    target: &NotifySettings,
    notice: &Notice,
    sent_at: u64,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    match target.kind {
        NotifyKind::Slack => (
            serde_json::to_vec(&serde_json::json!({ "text": notice.text() }))
                .expect("JSON serializes"),
            Vec::new(),
        ),
        NotifyKind::Webhook => {
            let body = serde_json::to_vec(&WebhookBody {
                event: notice.event,
                service: &notice.service,
                rollout: notice.rollout,
                from_version: notice.from_version.as_deref(),
                to_version: &notice.to_version,
                trigger: notice.trigger,
                requested_by: notice.requested_by.as_deref(),
                reason: notice.reason.as_deref(),
                text: notice.text(),
                delivery: notice.delivery(),
                sent_at,
            })
            .expect("JSON serializes");
            let mut headers = vec![
                (EVENT_HEADER, notice.event.to_string()),
                (DELIVERY_HEADER, notice.delivery()),
                (TIMESTAMP_HEADER, sent_at.to_string()),
            ];
            if let Some(secret) = &target.secret {
                headers.push((
                    SIGNATURE_HEADER,
                    format!("sha256={}", sign(secret.expose(), &body)),
                ));
            }
            (body, headers)
        }
    }
}

/// The lowercase hex HMAC-SHA256 of `body` under `secret`. (Not the webhooks module's own:
/// `webhooks` reaches the fleet, which reaches this module.)
fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// One notification for one target.
pub struct Job {
    notice: Arc<Notice>,
    target: NotifySettings,
}

/// Where a rollout worker hands its notices; the default sends nothing (no `[[notify]]`).
#[derive(Clone, Default)]
pub struct Outbox(Option<mpsc::Sender<Job>>);

impl Outbox {
    /// Queues `notice` for each of `targets` that wants its event, without waiting.
    pub fn send(&self, targets: &[NotifySettings], notice: Notice) {
        let Some(sender) = &self.0 else { return };
        let notice = Arc::new(notice);
        for target in targets.iter().filter(|t| t.wants(notice.event)) {
            let job = Job {
                notice: notice.clone(),
                target: target.clone(),
            };
            match sender.try_send(job) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                    rollout_id = notice.rollout,
                    service = %notice.service,
                    event = %notice.event,
                    url_env = %target.url_env,
                    "the notification queue is full ({QUEUE} waiting): this notification is dropped"
                ),
                Err(mpsc::error::TrySendError::Closed(_)) => tracing::warn!(
                    rollout_id = notice.rollout,
                    event = %notice.event,
                    url_env = %target.url_env,
                    "notifications are no longer sent (Baton is stopping): this one is dropped"
                ),
            }
        }
    }
}

#[cfg(test)]
impl Outbox {
    /// An outbox whose notices a test reads (event and reason) instead of sending them.
    pub fn recording() -> (Self, mpsc::Receiver<Job>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        (Self(Some(sender)), receiver)
    }
}

#[cfg(test)]
impl Job {
    pub fn notice(&self) -> &Notice {
        &self.notice
    }
}

/// The queue of notifications and the worker that empties it, made once per Baton.
pub struct Notifier {
    sender: mpsc::Sender<Job>,
    worker: Mutex<Option<Worker>>,
}

impl Notifier {
    pub fn new(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("Baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client");
        Self {
            sender,
            worker: Mutex::new(Some(Worker {
                receiver,
                client,
                store,
            })),
        }
    }

    pub fn outbox(&self) -> Outbox {
        Outbox(Some(self.sender.clone()))
    }

    /// The worker, the first time it is asked for (it runs once).
    pub fn take_worker(&self) -> Option<Worker> {
        self.worker.lock().expect("notifier lock").take()
    }
}

/// Sends what the outboxes queue until shutdown.
pub struct Worker {
    receiver: mpsc::Receiver<Job>,
    client: reqwest::Client,
    store: Store,
}

impl Worker {
    /// Runs until `shutdown`; notifications still waiting or being retried then are dropped,
    /// and the log says how many.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sending = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
                job = self.receiver.recv(), if sending.len() < IN_FLIGHT => match job {
                    Some(job) => {
                        sending.spawn(deliver(self.client.clone(), self.store.clone(), job));
                    }
                    None => break,
                },
            }
        }
        let dropped = sending.len() + self.receiver.len();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "Baton is stopping: notifications still being sent or waiting are dropped"
            );
        }
        sending.shutdown().await;
    }
}

/// Why an attempt did not deliver.
#[derive(Debug)]
enum Undelivered {
    /// The receiver answered this non-2xx status.
    Status(u16),
    /// No answer within [`ATTEMPT_TIMEOUT`].
    TimedOut,
    /// No connection, or the exchange broke: what went wrong, without the URL.
    Unanswered(String),
}

impl Undelivered {
    /// Whether another attempt could go better: not after an answer that says the request
    /// itself is wrong (4xx other than 408 and 429).
    fn worth_retrying(&self) -> bool {
        match self {
            Self::Status(status) => matches!(status, 408 | 429 | 500..),
            Self::TimedOut | Self::Unanswered(_) => true,
        }
    }
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status) => write!(f, "the receiver answered HTTP {status}"),
            Self::TimedOut => write!(f, "no answer within {ATTEMPT_TIMEOUT:?}"),
            Self::Unanswered(error) => f.write_str(error),
        }
    }
}

/// Sends one job, attempt after attempt, recording each.
async fn deliver(client: reqwest::Client, store: Store, job: Job) {
    let Job { notice, target } = job;
    let mut delays = retry_delays().build();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let result = attempt_once(&client, &target, &notice).await;
        let next = match &result {
            Ok(_) => None,
            Err(undelivered) if undelivered.worth_retrying() => delays.next(),
            Err(_) => None,
        };
        let verdict = match (&result, next) {
            (Ok(_), _) => AttemptVerdict::Delivered,
            (Err(_), Some(_)) => AttemptVerdict::WillRetry,
            (Err(_), None) => AttemptVerdict::GaveUp,
        };
        let error = result.as_ref().err().map(ToString::to_string);
        let status = match &result {
            Ok(status) | Err(Undelivered::Status(status)) => Some(*status),
            Err(Undelivered::TimedOut | Undelivered::Unanswered(_)) => None,
        };
        match verdict {
            AttemptVerdict::Delivered => tracing::info!(
                rollout_id = notice.rollout, service = %notice.service, event = %notice.event,
                kind = %target.kind, url_env = %target.url_env, attempt, status,
                "notification delivered"
            ),
            AttemptVerdict::WillRetry | AttemptVerdict::GaveUp => tracing::warn!(
                rollout_id = notice.rollout, service = %notice.service, event = %notice.event,
                kind = %target.kind, url_env = %target.url_env, attempt,
                error = error.as_deref().unwrap_or(""), retry_in = ?next, %verdict,
                "notification not delivered"
            ),
        }
        let recorded = store
            .record_notification_attempt(&NewAttempt {
                service: &notice.service,
                deployment_id: notice.rollout,
                event: notice.event,
                kind: target.kind,
                url_env: &target.url_env,
                attempt,
                status,
                error: error.as_deref(),
                verdict,
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(%error, rollout_id = notice.rollout, "cannot record a notification attempt");
        }
        match next {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return,
        }
    }
}

/// One POST; the receiver's 2xx status, or why not.
async fn attempt_once(
    client: &reqwest::Client,
    target: &NotifySettings,
    notice: &Notice,
) -> Result<u16, Undelivered> {
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (body, headers) = request_parts(target, notice, sent_at);
    let mut request = client
        .post(target.url.expose().clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
        Ok(response) => Err(Undelivered::Status(response.status().as_u16())),
        Err(error) if error.is_timeout() => Err(Undelivered::TimedOut),
        Err(error) => Err(Undelivered::Unanswered(without_url(error))),
    }
}

/// reqwest's error with its causes, never its URL (which may hold a secret).
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{NotifyUrl, WebhookSecret};

    fn notice(event: NotificationEvent) -> Notice {
        Notice {
            rollout: 12,
            service: "web".into(),
            event,
            from_version: Some("v1".into()),
            to_version: "v2".into(),
            trigger: Trigger::Api,
            requested_by: Some("ada".into()),
            reason: Some("wait_healthy failed on web1".into()),
        }
    }

    #[test]
    fn people_read_one_line_per_event() {
        assert_eq!(
            notice(NotificationEvent::Started).text(),
            "web: rollout #12 to v2 started from v1 (api, requested by ada)"
        );
        assert_eq!(
            notice(NotificationEvent::RolledBack).text(),
            "web: rollout #12 to v2 was rolled back: wait_healthy failed on web1"
        );
    }

    #[test]
    fn a_webhook_body_is_signed_with_its_timestamp_inside_and_slack_gets_text_only() {
        let url = NotifyUrl::parse("http://127.0.0.1:9/hook").unwrap();
        let mut target = NotifySettings {
            kind: NotifyKind::Webhook,
            url_env: "HOOK".into(),
            url,
            secret: Some(WebhookSecret::new("k3y")),
            events: NotificationEvent::all().to_vec(),
        };
        let (body, headers) =
            request_parts(&target, &notice(NotificationEvent::Failed), 1_700_000_000);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let signature = header(SIGNATURE_HEADER);
        let hex = signature.strip_prefix("sha256=").unwrap();
        assert!(crate::webhooks::signature::hmac_sha256_matches(
            b"k3y", &body, hex
        ));
        assert_eq!(header(TIMESTAMP_HEADER), "1700000000");
        assert_eq!(header(DELIVERY_HEADER), "12-failed");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["sent_at"], 1_700_000_000);
        assert_eq!(json["event"], "failed");
        assert_eq!(json["reason"], "wait_healthy failed on web1");

        target.kind = NotifyKind::Slack;
        target.secret = None;
        let (body, headers) = request_parts(
            &target,
            &notice(NotificationEvent::Succeeded),
            1_700_000_000,
        );
        assert!(headers.is_empty());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({ "text": "web: rollout #12 to v2 succeeded" })
        );
    }

    /// A full queue drops the notification (with a log line) rather than wait: the rollout
    /// worker that hands it over never blocks.
    #[test]
    fn a_full_queue_drops_notifications_and_only_wanted_events_are_queued() {
        let (sender, mut receiver) = mpsc::channel(2);
        let outbox = Outbox(Some(sender));
        let target = NotifySettings {
            kind: NotifyKind::Slack,
            url_env: "SLACK".into(),
            url: NotifyUrl::parse("https://hooks.slack.test/x").unwrap(),
            secret: None,
            events: vec![NotificationEvent::Failed],
        };
        outbox.send(
            std::slice::from_ref(&target),
            notice(NotificationEvent::Started),
        );
        for _ in 0..5 {
            outbox.send(
                std::slice::from_ref(&target),
                notice(NotificationEvent::Failed),
            );
        }
        let mut queued = Vec::new();
        while let Ok(job) = receiver.try_recv() {
            queued.push(job.notice.event);
        }
        assert_eq!(queued, [NotificationEvent::Failed; 2]);
        Outbox::default().send(&[target], notice(NotificationEvent::Failed));
    }

    #[test]
    fn only_failures_another_attempt_could_cure_are_retried() {
        for status in [408, 429, 500, 502, 503] {
            assert!(Undelivered::Status(status).worth_retrying(), "{status}");
        }
        for status in [400, 401, 403, 404, 410] {
            assert!(!Undelivered::Status(status).worth_retrying(), "{status}");
        }
        assert!(Undelivered::TimedOut.worth_retrying());
        let delays: Vec<Duration> = retry_delays().build().collect();
        assert_eq!(delays.len(), 4, "five attempts in all");
    }
}
