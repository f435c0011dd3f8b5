//! Git push webhooks: `POST /hooks/{service}` from GitHub, GitLab, Gitea, Forgejo and Bitbucket
//! (Cloud and Data Center) starts a rollout of the pushed commit, and the delivery log with its
//! replay for operators.
//!
//! A delivery goes through five stages, each a function here:
//! 1. [`verify`]: service known (404) → webhook configured (403) → host recognised (400) → body
//!    within [`BODY_LIMIT`] (413) → signature over the raw body holds (401);
//! 2. and 3. [`decide`]: event and payload read (400) → [`policy`] decides (another repository,
//!    branch or tag: "ignored");
//! 4. [`record`]: neither its delivery id nor its body seen before for the service (else
//!    "duplicate", 202), logged before anything is done;
//! 5. [`act`]: the fleet queues (or coalesces) the rollout (202), and the log row says so.
//!
//! Every stage's answer is JSON that says why, and every delivery past the service lookup is
//! logged.
//!
//! Invariants: secrets never reach the log, the database or an answer (no header of a delivery
//! is stored; GitLab's token is the secret and is only compared). Only verified deliveries claim
//! a delivery id and a body, so a forged request cannot block a real one; a signed body starts
//! at most one rollout, however often and under whichever host's headers it is sent again. Only
//! an admin's replay processes a body again, and each replay is in the audit log. Nothing but a
//! validated [`Version`](crate::domain::Version) reaches the fleet. These answers are the
//! webhook protocol, so their statuses are one table in [`answer`] rather than in
//! `http_error.rs`; the admin endpoints over the log return the API's errors.

mod answer;
mod policy;
pub mod providers;
pub mod signature;

use app::webhooks::{DeliveryOutcome, DeliveryPage, DeliveryView};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;

use crate::auth::{Access, Actor, Audit, ClientAddress, Guarded};
use crate::fleet::{DeployError, DeployRequest, Queued, Trigger};
use crate::settings::{ServiceSettings, WebhookSettings};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::deliveries::{Claim, DeliveryRow, NewDelivery};
pub use answer::response;
use answer::{Answer, Refusal, Verdict};
use policy::Decision;
use providers::{Credential, Envelope, EventKind, Provider};

/// The largest webhook body Baton reads: the same mebibyte as every other request (the router's
/// limit). Push payloads are far smaller (Bitbucket Cloud caps its own at 256 KB); GitHub can
/// send more for a push of thousands of commits, which is then refused with a 413 that says so.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The route deliveries from git hosts reach (the JSON API's routes over their log are in
/// `api.rs`). `/hooks/*` is public: each delivery proves itself with its signature instead.
pub fn routes() -> Guarded<AppState> {
    Guarded::new().post("/hooks/{service}", Access::Public, receive)
}

/// What is known about a delivery so far: what its log row and its answer say.
struct Delivery<'a> {
    service: &'a str,
    provider: Option<Provider>,
    event: Option<String>,
    delivery_id: Option<String>,
    git_ref: Option<String>,
    sha: Option<String>,
    verified: bool,
    /// The first delivery, when an operator replays it.
    replay_of: Option<i64>,
    /// The log row written for it.
    logged: Option<i64>,
}

impl<'a> Delivery<'a> {
    fn new(service: &'a str) -> Self {
        Self {
            service,
            provider: None,
            event: None,
            delivery_id: None,
            git_ref: None,
            sha: None,
            verified: false,
            replay_of: None,
            logged: None,
        }
    }

    fn provider_name(&self) -> &'static str {
        self.provider.map_or("unknown", Provider::as_str)
    }

    fn row<'b>(
        &'b self,
        answer: Answer,
        reason: &'b str,
        payload: Option<&'b [u8]>,
    ) -> NewDelivery<'b> {
        NewDelivery {
            service: self.service,
            provider: self.provider_name(),
            event: self.event.as_deref(),
            delivery_id: self.delivery_id.as_deref(),
            git_ref: self.git_ref.as_deref(),
            sha: self.sha.as_deref(),
            verdict: answer.verdict().as_str(),
            status: answer.status().as_u16(),
            reason,
            deployment_id: None,
            replay_of: self.replay_of,
            verified: self.verified,
            payload,
        }
    }

    fn outcome(&self, answer: Answer, reason: String) -> DeliveryOutcome {
        let (status, verdict) = (answer.status(), answer.verdict());
        let failed = status.is_client_error() || status.is_server_error();
        tracing::info!(
            service = self.service,
            provider = self.provider_name(),
            event = self.event.as_deref(),
            delivery_id = self.delivery_id.as_deref(),
            git_ref = self.git_ref.as_deref(),
            verdict = verdict.as_str(),
            status = status.as_u16(),
            replay_of = self.replay_of,
            %reason,
            "webhook delivery"
        );
        DeliveryOutcome {
            status: status.as_u16(),
            verdict: verdict.as_str().to_owned(),
            error: failed.then(|| reason.clone()),
            reason,
            service: self.service.to_owned(),
            delivery: self.logged,
            provider: self.provider.map(|p| p.as_str().to_owned()),
            event: self.event.clone(),
            delivery_id: self.delivery_id.clone(),
            git_ref: self.git_ref.clone(),
            sha: self.sha.clone(),
            version: None,
            rollout: None,
            rollout_status: None,
            coalesced: false,
            earlier: None,
        }
    }

    /// Logs a delivery whose signature did not hold (it claims no delivery id and keeps no
    /// body) and answers it.
    async fn log_unverified(
        mut self,
        state: &AppState,
        answer: Answer,
        reason: String,
    ) -> Result<DeliveryOutcome, StoreError> {
        let id = state
            .store
            .log_delivery(&self.row(answer, &reason, None))
            .await?;
        self.logged = Some(id);
        Ok(self.outcome(answer, reason))
    }

    /// Who asked for the rollout, as its history and the audit log name it.
    fn requested_by(&self, logged: i64) -> String {
        let label = self.provider.map_or("unknown", Provider::label);
        match (&self.delivery_id, self.replay_of) {
            (Some(delivery_id), None) => format!("{label} delivery {delivery_id}"),
            (None, None) => format!("{label} webhook (delivery #{logged})"),
            (_, Some(first)) => format!("replay of {label} delivery #{first}"),
        }
    }
}

async fn receive(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = receive_delivery(&state, &service, &headers, body).await;
    state
        .fleet
        .metrics()
        .delivery(verdict_label(&outcome.verdict));
    response(outcome)
}

/// The metrics' label for a delivery's verdict: the delivery log's word, from [`Verdict`].
fn verdict_label(word: &str) -> &'static str {
    [
        Verdict::Processing,
        Verdict::Deployed,
        Verdict::Ignored,
        Verdict::Ping,
        Verdict::Duplicate,
        Verdict::Rejected,
    ]
    .into_iter()
    .map(Verdict::as_str)
    .find(|known| *known == word)
    .unwrap_or("other")
}

/// Handles one delivery from a git host, from its headers and raw body.
pub async fn receive_delivery(
    state: &AppState,
    service: &str,
    headers: &HeaderMap,
    body: Body,
) -> DeliveryOutcome {
    match receive_checked(state, service, headers, body).await {
        Ok(outcome) => outcome,
        Err(error) => internal_error(service, error),
    }
}

fn internal_error(service: &str, error: StoreError) -> DeliveryOutcome {
    tracing::error!(service, %error, "database error while handling a webhook delivery");
    Delivery::new(service).outcome(
        Answer::Rejected(Refusal::Internal),
        "internal error; the server log has the details (the host may retry)".into(),
    )
}

/// The pipeline: verify, then (in [`process`]) parse, decide, record and act.
async fn receive_checked(
    state: &AppState,
    service: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<DeliveryOutcome, StoreError> {
    let Some(settings) = state.settings.service(service) else {
        // Not logged: the log is per service, and anyone can make up names.
        return Ok(Delivery::new(service).outcome(
            Answer::Rejected(Refusal::UnknownService),
            format!(
                "no service is named {service:?}: expected /hooks/SERVICE for a service in Baton's configuration"
            ),
        ));
    };
    let mut delivery = Delivery::new(settings.name.as_str());
    let (webhook, body) = match verify(settings, &mut delivery, headers, body).await {
        Ok(verified) => verified,
        Err((answer, reason)) => return delivery.log_unverified(state, answer, reason).await,
    };
    process(state, settings, webhook, delivery, &body, is_form(headers)).await
}

/// Stage 1, verify: the service takes webhooks, the headers are a known git host's, the body is
/// within [`BODY_LIMIT`], and its signature holds. Notes on `delivery` what the headers say.
/// Otherwise the answer to log: a refusal, or a ping whose host never signs them.
async fn verify<'s>(
    settings: &'s ServiceSettings,
    delivery: &mut Delivery<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(&'s WebhookSettings, Bytes), (Answer, String)> {
    let refused = |refusal, why| (Answer::Rejected(refusal), why);
    let envelope = providers::identify(headers);
    if let Ok(envelope) = &envelope {
        delivery.provider = Some(envelope.provider);
        delivery.event = Some(envelope.event.clone());
        delivery.delivery_id = envelope.delivery_id.clone();
    }
    let Some(webhook) = &settings.webhook else {
        let reason = format!(
            "service {} takes no webhooks: it has no webhook secret. Add to its [[service]] in \
             Baton's configuration a [service.webhook] table with secret_env = \"NAME\" (an environment \
             variable holding the secret you also give the git host) and branch = \"main\", set the \
             variable, and restart Baton",
            settings.name
        );
        return Err(refused(Refusal::WebhooksOff, reason));
    };
    let envelope = envelope.map_err(|why| refused(Refusal::UnknownHost, why))?;
    let body = read_body(headers, body)
        .await
        .map_err(|(refusal, why)| refused(refusal, why))?;
    if let Err(why) = check_signature(webhook, &envelope, &body) {
        // Bitbucket Data Center's "Test connection" is never signed. Answering its ping costs
        // nothing and shows the URL is right; a push still needs its signature.
        if envelope.provider.classify(&envelope.event) == EventKind::Ping
            && matches!(envelope.credential, Credential::Missing { .. })
        {
            let reason = format!(
                "{} ping received without a signature (its connection test is not signed): the URL is right, and pushes must be signed",
                envelope.provider.label()
            );
            return Err((Answer::Ping, reason));
        }
        return Err(refused(Refusal::NotSigned, why));
    }
    delivery.verified = true;
    Ok((webhook, body))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"))
}

/// Reads the whole body, refusing (413) one over [`BODY_LIMIT`] before reading it when the
/// sender said its length, and as soon as it grows past the limit otherwise.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, (Refusal, String)> {
    let too_large = |size: String| {
        (
            Refusal::TooLarge,
            format!(
                "the body is {size} bytes: expected at most {BODY_LIMIT} bytes (1 MiB) for a webhook delivery"
            ),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|length| *length > BODY_LIMIT as u64)
    {
        return Err(too_large(length.to_string()));
    }
    axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|error| {
            if is_length_limit(&error) {
                too_large(format!("more than {BODY_LIMIT}"))
            } else {
                (
                    Refusal::Malformed,
                    format!("cannot read the request body: {error}"),
                )
            }
        })
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether the delivery proves it knows the service's secret; the error says what was wrong
/// (never what the secret is, nor which variable holds it: the caller is not trusted yet).
fn check_signature(
    webhook: &WebhookSettings,
    envelope: &Envelope,
    body: &[u8],
) -> Result<(), String> {
    let label = envelope.provider.label();
    let secret = webhook.secret.expose();
    match &envelope.credential {
        Credential::Hmac { header, hex } => {
            if signature::hmac_sha256_matches(secret, body, hex) {
                Ok(())
            } else {
                Err(format!(
                    "the signature in {header} does not match the body: expected the hex HMAC-SHA256 of the \
                     raw body keyed with this service's webhook secret (check that {label} has the same \
                     secret, and that nothing between rewrites the body)"
                ))
            }
        }
        Credential::Token { header, value } => {
            if signature::token_matches(secret, value.as_bytes()) {
                Ok(())
            } else {
                Err(format!(
                    "the token in {header} is not this service's webhook secret: expected {label}'s \
                     secret token to be the same secret Baton has"
                ))
            }
        }
        Credential::Missing { expected } => Err(format!(
            "the delivery is not signed: expected a {expected} header (set the webhook's secret in {label} \
             to this service's webhook secret)"
        )),
        Credential::Malformed { header, why } => Err(format!("invalid {header}: {why}")),
    }
}

/// What a verified delivery leads to, before the delivery is logged.
enum Step {
    Answer(Answer, String),
    Deploy {
        version: crate::domain::Version,
        reason: String,
    },
}

impl Step {
    /// What the log says about the delivery when it is first recorded.
    fn answer(&self) -> (Answer, &str) {
        match self {
            Step::Answer(answer, reason) => (*answer, reason),
            Step::Deploy { reason, .. } => (Answer::Processing, reason),
        }
    }
}

/// Stages 2 to 5 for a verified delivery (a replay starts here): parse and decide, record, act.
async fn process(
    state: &AppState,
    settings: &ServiceSettings,
    webhook: &WebhookSettings,
    mut delivery: Delivery<'_>,
    body: &[u8],
    form: bool,
) -> Result<DeliveryOutcome, StoreError> {
    let step = decide(&mut delivery, webhook, body, form);
    shorten(&mut delivery);
    let logged = match record(state, &mut delivery, &step, body).await? {
        Recorded::Logged(id) => id,
        Recorded::Duplicate(outcome) => return Ok(*outcome),
    };
    match step {
        Step::Answer(answer, reason) => Ok(delivery.outcome(answer, reason)),
        Step::Deploy { version, reason } => {
            act(state, settings, delivery, logged, version, reason).await
        }
    }
}

/// Stages 2 and 3, parse and decide: what kind of event it is, what its payload says, and what
/// the service's webhook makes of it. No IO. Notes on `delivery` the ref and commit pushed.
fn decide(delivery: &mut Delivery<'_>, webhook: &WebhookSettings, body: &[u8], form: bool) -> Step {
    let provider = delivery
        .provider
        .expect("a verified delivery has a provider");
    let label = provider.label();
    let event = delivery.event.clone().unwrap_or_default();
    match provider.classify(&event) {
        EventKind::Ping => Step::Answer(
            Answer::Ping,
            format!("{label} ping received: the webhook reaches Baton and its signature holds"),
        ),
        EventKind::Other => Step::Answer(
            Answer::Ignored,
            format!(
                "{label} event {event:?} does not deploy: only push events do (the webhook may send push events only)"
            ),
        ),
        EventKind::Push => match provider.push(body) {
            Err(error) => Step::Answer(
                Answer::Rejected(Refusal::Malformed),
                format!(
                    "malformed {label} push payload: {error}; expected the JSON body of a {label} push event{}",
                    if form {
                        " (the webhook sends form data: set its content type to application/json)"
                    } else {
                        ""
                    }
                ),
            ),
            Ok(push) => follow(delivery, policy::decide(&push, webhook)),
        },
    }
}

/// The step the policy's decision leads to, noting on `delivery` the ref and commit it names.
fn follow(delivery: &mut Delivery<'_>, decision: Decision) -> Step {
    match decision {
        Decision::Deploy {
            version,
            git_ref,
            sha,
            reason,
        } => {
            delivery.git_ref = Some(git_ref);
            delivery.sha = sha;
            Step::Deploy { version, reason }
        }
        Decision::Ignore {
            git_ref,
            sha,
            reason,
        } => {
            delivery.git_ref = git_ref;
            delivery.sha = sha;
            Step::Answer(Answer::Ignored, reason)
        }
        Decision::Malformed {
            git_ref,
            sha,
            reason,
        } => {
            delivery.git_ref = Some(git_ref);
            delivery.sha = sha;
            Step::Answer(Answer::Rejected(Refusal::Malformed), reason)
        }
    }
}

/// Keeps only short values from the payload in the log (a ref can be long; the body is kept).
fn shorten(delivery: &mut Delivery<'_>) {
    for value in [&mut delivery.git_ref, &mut delivery.sha]
        .into_iter()
        .flatten()
    {
        if value.len() > 256 {
            *value = value.chars().take(256).collect();
        }
    }
}

/// Whether a delivery was logged as new, or answered as a repeat.
enum Recorded {
    Logged(i64),
    Duplicate(Box<DeliveryOutcome>),
}

/// Stage 4, record: logs the delivery before anything is acted on. A first delivery claims its
/// delivery id and body, so a repeat of either is answered as a duplicate; a replay is only
/// logged.
async fn record(
    state: &AppState,
    delivery: &mut Delivery<'_>,
    step: &Step,
    body: &[u8],
) -> Result<Recorded, StoreError> {
    let (answer, reason) = step.answer();
    let first = delivery.replay_of.is_none();
    let row = delivery.row(answer, reason, first.then_some(body));
    let id = if first {
        let repeat = match state.store.claim_delivery(&row).await? {
            Claim::First(id) => Ok(id),
            Claim::Redelivery(earlier) => Err((Repeat::DeliveryId, *earlier)),
            Claim::SameBody(earlier) => Err((Repeat::Body, *earlier)),
        };
        match repeat {
            Ok(id) => id,
            Err((repeat, earlier)) => {
                let outcome = duplicate(state, delivery, repeat, earlier).await?;
                return Ok(Recorded::Duplicate(Box::new(outcome)));
            }
        }
    } else {
        state.store.log_delivery(&row).await?
    };
    delivery.logged = Some(id);
    Ok(Recorded::Logged(id))
}

/// Stage 5, act: asks the fleet for the rollout (coalescing with one still queued), audits it,
/// and finishes the delivery's log row (`logged`) with what happened.
async fn act(
    state: &AppState,
    settings: &ServiceSettings,
    delivery: Delivery<'_>,
    logged: i64,
    version: crate::domain::Version,
    reason: String,
) -> Result<DeliveryOutcome, StoreError> {
    let requested_by = delivery.requested_by(logged);
    let requested = state
        .fleet
        .request(DeployRequest {
            service: settings.name.as_str(),
            version: version.as_str(),
            trigger: Trigger::Webhook,
            requested_by: Some(&requested_by),
            requester_user: None,
            coalesce: true,
        })
        .await;
    if let Ok(queued) = &requested {
        audit_rollout(state, settings, requested_by, &version, queued).await;
    }
    let (answer, reason, queued) = match requested_answer(requested, &version, reason) {
        Ok(answered) => answered,
        Err(error) => {
            release(state, logged).await;
            return Err(error);
        }
    };
    state
        .store
        .finish_delivery(
            logged,
            answer.verdict().as_str(),
            answer.status().as_u16(),
            &reason,
            queued.as_ref().map(|q| q.id),
        )
        .await?;
    let mut outcome = delivery.outcome(answer, reason);
    if let Some(queued) = queued {
        outcome.version = Some(version.to_string());
        outcome.rollout = Some(queued.id);
        outcome.rollout_status = Some(queued.status);
        outcome.coalesced = queued.coalesced;
    }
    Ok(outcome)
}

/// Writes the webhook's rollout to the audit log, naming the delivery that asked for it.
async fn audit_rollout(
    state: &AppState,
    settings: &ServiceSettings,
    requested_by: String,
    version: &crate::domain::Version,
    queued: &Queued,
) {
    crate::auth::record(
        &state.store,
        Audit {
            actor: &Actor::webhook(requested_by),
            action: "deploy",
            target: Some(settings.name.as_str()),
            address: None,
            detail: Some(&format!(
                "version {version}, rollout {}{}",
                queued.id,
                queued.audit_note()
            )),
        },
    )
    .await;
}

/// Finishes the log row `logged` as an internal error (status 500), which releases its delivery
/// id and body, so the host's retry is processed.
async fn release(state: &AppState, logged: i64) {
    let failed = Answer::Rejected(Refusal::Internal);
    let reason = "internal error; the server log has the details (the host may retry)";
    if let Err(second) = state
        .store
        .finish_delivery(
            logged,
            failed.verdict().as_str(),
            failed.status().as_u16(),
            reason,
            None,
        )
        .await
    {
        tracing::error!(%second, delivery = logged, "cannot record the failed delivery");
    }
}

/// The answer to a delivery whose rollout the fleet was asked for (`reason` says why it
/// deploys); a database error is returned for the caller to release the delivery.
fn requested_answer(
    requested: Result<Queued, DeployError>,
    version: &crate::domain::Version,
    reason: String,
) -> Result<(Answer, String, Option<Queued>), StoreError> {
    Ok(match requested {
        Ok(queued) => {
            let reason = if queued.coalesced {
                format!(
                    "{reason}: rollout #{} was still queued, and now deploys {version} instead",
                    queued.id
                )
            } else {
                format!("{reason} (rollout #{}, {})", queued.id, queued.status)
            };
            (Answer::Deployed, reason, Some(queued))
        }
        Err(DeployError::InvalidVersion(error)) => (
            Answer::Ignored,
            format!("{version} cannot be a version: {error}"),
            None,
        ),
        Err(error @ DeployError::UnknownService(_)) => (
            Answer::Rejected(Refusal::UnknownService),
            error.to_string(),
            None,
        ),
        Err(
            error @ (DeployError::Conflict(_)
            | DeployError::NothingToRollBackTo(_)
            | DeployError::UnknownDeployment(_)
            | DeployError::SelfApproval { .. }),
        ) => (Answer::Rejected(Refusal::Conflict), error.to_string(), None),
        Err(DeployError::Store(error)) => return Err(error),
    })
}

/// What a duplicate delivery repeats of an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Its delivery id, from the same host: the host redelivered it.
    DeliveryId,
    /// Its body, under another delivery id or none, or with another host's headers: a signed
    /// body sent again by someone who kept a copy, or a host that mints a new id per attempt.
    Body,
}

/// A delivery id or body seen before: nothing new starts; the answer names the earlier
/// decision.
async fn duplicate(
    state: &AppState,
    delivery: &mut Delivery<'_>,
    repeat: Repeat,
    earlier: DeliveryRow,
) -> Result<DeliveryOutcome, StoreError> {
    let then = match (earlier.verdict.as_str(), earlier.deployment_id) {
        ("processing", _) => "is still being processed".to_owned(),
        (verdict, Some(rollout)) => format!("was {verdict} (rollout #{rollout})"),
        (verdict, None) => format!("was {verdict}: {}", earlier.reason),
    };
    let reason = match repeat {
        Repeat::DeliveryId => format!(
            "redelivery of delivery {} (logged as #{}), which {then}; nothing new was started",
            earlier.delivery_id.as_deref().unwrap_or("?"),
            earlier.id
        ),
        Repeat::Body => format!(
            "the same body as {} (logged as #{}), which {then}; a body starts at most one rollout, \
             so nothing new was started (an admin can replay it)",
            match (
                Provider::parse(&earlier.provider),
                earlier.delivery_id.as_deref()
            ) {
                (Some(provider), Some(id)) => format!("{} delivery {id}", provider.label()),
                (Some(provider), None) => format!("a {} delivery", provider.label()),
                (None, _) => "an earlier delivery".to_owned(),
            },
            earlier.id
        ),
    };
    let mut row = delivery.row(Answer::Duplicate, &reason, None);
    row.deployment_id = earlier.deployment_id;
    let id = state.store.log_delivery(&row).await?;
    delivery.logged = Some(id);
    let mut outcome = delivery.outcome(Answer::Duplicate, reason);
    outcome.rollout = earlier.deployment_id;
    outcome.earlier = Some(Box::new(earlier.into()));
    Ok(outcome)
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no delivery has id {0}")]
    UnknownDelivery(i64),
    #[error("{0}")]
    NotReplayable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An admin's replay of delivery `id` (see [`replay`]), written to the audit log naming `actor`
/// when it ran. The one entry point of the API route and the UI's server function alike, both
/// of which are routed for admins only, so both leave the same audit entry.
pub async fn replay_by(
    state: &AppState,
    id: i64,
    actor: &Actor,
    address: &ClientAddress,
) -> Result<DeliveryOutcome, ReplayError> {
    let outcome = replay(state, id).await?;
    let detail = match outcome.rollout {
        Some(rollout) => format!("{}, rollout {rollout}", outcome.verdict),
        None => outcome.verdict.clone(),
    };
    crate::auth::record(
        &state.store,
        Audit {
            actor,
            action: "webhook_replay",
            target: Some(&format!("delivery {id}")),
            address: Some(address),
            detail: Some(&detail),
        },
    )
    .await;
    Ok(outcome)
}

/// Processes a logged delivery again as if it had just arrived, under the service's current
/// configuration, without the redelivery and same-body checks. It writes a new log row
/// (`replay_of` names the first delivery). Only deliveries whose signature held can be replayed.
/// Reached only through [`replay_by`], which audits it.
async fn replay(state: &AppState, id: i64) -> Result<DeliveryOutcome, ReplayError> {
    let row = state
        .store
        .delivery(id)
        .await?
        .ok_or(ReplayError::UnknownDelivery(id))?;
    let not_replayable =
        |why: String| ReplayError::NotReplayable(format!("cannot replay delivery {id}: {why}"));
    if !row.verified {
        return Err(not_replayable(
            "its signature did not hold when it arrived, so there is nothing trustworthy to replay"
                .into(),
        ));
    }
    let payload = state.store.delivery_payload(id).await?.ok_or_else(|| {
        not_replayable(if row.verdict == Verdict::Duplicate.as_str() {
            "it is a redelivery, which keeps no body of its own: replay the first delivery".into()
        } else {
            "its body was not kept".into()
        })
    })?;
    let provider = Provider::parse(&row.provider)
        .ok_or_else(|| not_replayable(format!("unknown provider {:?}", row.provider)))?;
    let Some(settings) = state.settings.service(&row.service) else {
        return Err(not_replayable(format!(
            "its service {:?} is no longer configured",
            row.service
        )));
    };
    let Some(webhook) = &settings.webhook else {
        return Err(not_replayable(format!(
            "service {} no longer has a [service.webhook]",
            row.service
        )));
    };
    let mut delivery = Delivery::new(settings.name.as_str());
    delivery.provider = Some(provider);
    delivery.event = row.event.clone();
    delivery.delivery_id = row.delivery_id.clone();
    delivery.verified = true;
    delivery.replay_of = Some(row.replay_of.unwrap_or(row.id));
    Ok(process(state, settings, webhook, delivery, &payload, false).await?)
}

/// One page of a service's delivery log.
pub async fn delivery_page(
    state: &AppState,
    service: &str,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<DeliveryPage, DeployError> {
    if state.settings.service(service).is_none() {
        return Err(DeployError::UnknownService(service.to_owned()));
    }
    let limit = limit.unwrap_or(50).clamp(1, 200) as usize;
    let mut rows = state
        .store
        .deliveries(service, before, limit as i64 + 1)
        .await?;
    let next_before = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map_or(0, |row| row.id)
    });
    Ok(DeliveryPage {
        deliveries: rows.into_iter().map(DeliveryView::from).collect(),
        next_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::WebhookSecret;

    const PUSH: &[u8] =
        include_bytes!("../../tests/fixtures/webhooks/github/push__with-new-branch.payload.json");

    fn webhook(branch: &str) -> WebhookSettings {
        WebhookSettings {
            secret_env: "S".into(),
            secret: WebhookSecret::new("x"),
            branch: Some(branch.into()),
            tags: None,
            repository: None,
        }
    }

    /// Decides about a verified GitHub delivery of `event` with `body`: the answer it would be
    /// logged with, and the ref it notes.
    fn decided(
        event: &str,
        body: &[u8],
        form: bool,
        branch: &str,
    ) -> (Answer, String, Option<String>) {
        let mut delivery = Delivery::new("api");
        delivery.provider = Some(Provider::GitHub);
        delivery.event = Some(event.into());
        let step = decide(&mut delivery, &webhook(branch), body, form);
        let (answer, reason) = step.answer();
        (answer, reason.to_owned(), delivery.git_ref)
    }

    #[test]
    fn the_decide_stage_needs_no_io_and_says_why() {
        let (answer, reason, _) = decided("ping", b"{}", false, "master");
        assert_eq!(answer, Answer::Ping);
        assert!(reason.contains("signature holds"), "{reason}");

        let (answer, reason, _) = decided("issues", b"{}", false, "master");
        assert_eq!(answer, Answer::Ignored);
        assert!(reason.contains("only push events do"), "{reason}");

        // A push to the configured branch is recorded as being processed until the fleet answers.
        let (answer, _, git_ref) = decided("push", PUSH, false, "master");
        assert_eq!(answer, Answer::Processing);
        assert_eq!(git_ref.as_deref(), Some("refs/heads/master"));
        let (answer, _, git_ref) = decided("push", PUSH, false, "main");
        assert_eq!(answer, Answer::Ignored);
        assert_eq!(git_ref.as_deref(), Some("refs/heads/master"));

        // A form-encoded body is malformed, and the answer says which setting to change.
        let (answer, reason, _) = decided("push", b"payload=%7B%7D", true, "master");
        assert_eq!(answer, Answer::Rejected(Refusal::Malformed));
        assert_eq!(answer.status().as_u16(), 400);
        assert!(
            reason.contains("set its content type to application/json"),
            "{reason}"
        );
    }
}
