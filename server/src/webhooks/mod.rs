//! Git push webhooks: `POST /hooks/{service}` from GitHub, GitLab, Gitea, Forgejo and Bitbucket
//! (Cloud and Data Center) starts a rollout of the pushed commit, and the delivery log with its
//! replay for operators.
//!
//! A delivery goes: service known (404) → webhook configured (403) → host recognised (400) →
//! body within [`BODY_LIMIT`] (413) → signature over the raw body holds (401) → event and
//! payload read (400) → [`policy`] decides (another repository, branch or tag: "ignored") →
//! neither its delivery id nor its body seen before for the service (else "duplicate", 202) →
//! the fleet queues (or coalesces) the rollout (202). Every step's answer is JSON that says why,
//! and every delivery past the service lookup is logged.
//!
//! Invariants: secrets never reach the log, the database or an answer (no header of a delivery
//! is stored; GitLab's token is the secret and is only compared). Only verified deliveries claim
//! a delivery id and a body, so a forged request cannot block a real one; a signed body starts
//! at most one rollout, however often and under whichever host's headers it is sent again. Only
//! an admin's replay processes a body again, and each replay is in the audit log. Nothing but a
//! validated [`Version`](crate::domain::Version) reaches the fleet. These answers are the
//! webhook protocol, so their statuses are decided here rather than in `api.rs`.

mod policy;
pub mod providers;
pub mod signature;
mod ui;

pub use ui::UiWebhooks;

use app::webhooks::{DeliveryOutcome, DeliveryPage, DeliveryView};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::{Access, Actor, Audit, ClientAddress, Guarded, Principal, Role};
use crate::fleet::{DeployError, DeployRequest, Trigger};
use crate::http_error::{ApiError, RequestError};
use crate::settings::{ServiceSettings, WebhookSettings};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::deliveries::{Claim, DeliveryRow, NewDelivery};
use policy::Decision;
use providers::{Credential, Envelope, EventKind, Provider};

/// The largest webhook body Baton reads: the same mebibyte as every other request (the router's
/// limit). Push payloads are far smaller (Bitbucket Cloud caps its own at 256 KB); GitHub can
/// send more for a push of thousands of commits, which is then refused with a 413 that says so.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The routes: deliveries from git hosts, and the admin endpoints over their log.
/// `/hooks/*` is public: each delivery proves itself with its signature instead.
pub fn routes() -> Guarded<AppState> {
    Guarded::new()
        .post("/hooks/{service}", Access::Public, receive)
        .get(
            "/api/services/{service}/deliveries",
            Role::Viewer,
            list_deliveries,
        )
        .post("/api/deliveries/{id}/replay", Role::Admin, replay_delivery)
}

/// What Baton decided about a delivery (stored as text in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Verified and deploying: the rollout is being queued.
    Processing,
    Deployed,
    Ignored,
    Ping,
    /// A redelivery of a delivery id, or a body, already processed.
    Duplicate,
    Rejected,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Deployed => "deployed",
            Self::Ignored => "ignored",
            Self::Ping => "ping",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
        }
    }
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
        verdict: Verdict,
        status: StatusCode,
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
            verdict: verdict.as_str(),
            status: status.as_u16(),
            reason,
            deployment_id: None,
            replay_of: self.replay_of,
            verified: self.verified,
            payload,
        }
    }

    fn outcome(&self, status: StatusCode, verdict: Verdict, reason: String) -> DeliveryOutcome {
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

    /// Logs a refusal (unverified: it claims no delivery id) and answers it.
    async fn refuse(
        mut self,
        state: &AppState,
        status: StatusCode,
        reason: String,
    ) -> Result<DeliveryOutcome, StoreError> {
        let id = state
            .store
            .log_delivery(&self.row(Verdict::Rejected, status, &reason, None))
            .await?;
        self.logged = Some(id);
        Ok(self.outcome(status, Verdict::Rejected, reason))
    }
}

async fn receive(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(receive_delivery(&state, &service, &headers, body).await)
}

/// The HTTP answer for an outcome: its status, and the outcome as JSON.
fn answer(outcome: DeliveryOutcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(outcome)).into_response()
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
        StatusCode::INTERNAL_SERVER_ERROR,
        Verdict::Rejected,
        "internal error; the server log has the details (the host may retry)".into(),
    )
}

async fn receive_checked(
    state: &AppState,
    service: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<DeliveryOutcome, StoreError> {
    let Some(settings) = state.settings.service(service) else {
        // Not logged: the log is per service, and anyone can make up names.
        return Ok(Delivery::new(service).outcome(
            StatusCode::NOT_FOUND,
            Verdict::Rejected,
            format!(
                "no service is named {service:?}: expected /hooks/SERVICE for a service in Baton's configuration"
            ),
        ));
    };
    let mut delivery = Delivery::new(settings.name.as_str());
    let envelope = providers::identify(headers);
    if let Ok(envelope) = &envelope {
        delivery.provider = Some(envelope.provider);
        delivery.event = Some(envelope.event.clone());
        delivery.delivery_id = envelope.delivery_id.clone();
    }
    let Some(webhook) = &settings.webhook else {
        let reason = format!(
            "service {service} takes no webhooks: it has no webhook secret. Add to its [[service]] in \
             Baton's configuration a [service.webhook] table with secret_env = \"NAME\" (an environment \
             variable holding the secret you also give the git host) and branch = \"main\", set the \
             variable, and restart Baton"
        );
        return delivery.refuse(state, StatusCode::FORBIDDEN, reason).await;
    };
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(why) => return delivery.refuse(state, StatusCode::BAD_REQUEST, why).await,
    };
    let body = match read_body(headers, body).await {
        Ok(body) => body,
        Err((status, why)) => return delivery.refuse(state, status, why).await,
    };
    if let Err(why) = verify(webhook, &envelope, &body) {
        // Bitbucket Data Center's "Test connection" is never signed. Answering its ping costs
        // nothing and shows the URL is right; a push still needs its signature.
        if envelope.provider.classify(&envelope.event) == EventKind::Ping
            && matches!(envelope.credential, Credential::Missing { .. })
        {
            let reason = format!(
                "{} ping received without a signature (its connection test is not signed): the URL is right, and pushes must be signed",
                envelope.provider.label()
            );
            let id = state
                .store
                .log_delivery(&delivery.row(Verdict::Ping, StatusCode::OK, &reason, None))
                .await?;
            delivery.logged = Some(id);
            return Ok(delivery.outcome(StatusCode::OK, Verdict::Ping, reason));
        }
        return delivery.refuse(state, StatusCode::UNAUTHORIZED, why).await;
    }
    delivery.verified = true;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    process(state, settings, webhook, delivery, &body, form).await
}

/// Reads the whole body, refusing (413) one over [`BODY_LIMIT`] before reading it when the
/// sender said its length, and as soon as it grows past the limit otherwise.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, (StatusCode, String)> {
    let too_large = |size: String| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
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
                    StatusCode::BAD_REQUEST,
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
fn verify(webhook: &WebhookSettings, envelope: &Envelope, body: &[u8]) -> Result<(), String> {
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
    Answer(StatusCode, Verdict, String),
    Deploy {
        version: crate::domain::Version,
        reason: String,
    },
}

/// Decides about a verified delivery, logs it (claiming its delivery id and body unless it is a
/// replay), and queues the rollout it asks for.
async fn process(
    state: &AppState,
    settings: &ServiceSettings,
    webhook: &WebhookSettings,
    mut delivery: Delivery<'_>,
    body: &[u8],
    form: bool,
) -> Result<DeliveryOutcome, StoreError> {
    let provider = delivery
        .provider
        .expect("a verified delivery has a provider");
    let label = provider.label();
    let event = delivery.event.clone().unwrap_or_default();
    let step = match provider.classify(&event) {
        EventKind::Ping => Step::Answer(
            StatusCode::OK,
            Verdict::Ping,
            format!("{label} ping received: the webhook reaches Baton and its signature holds"),
        ),
        EventKind::Other => Step::Answer(
            StatusCode::ACCEPTED,
            Verdict::Ignored,
            format!(
                "{label} event {event:?} does not deploy: only push events do (the webhook may send push events only)"
            ),
        ),
        EventKind::Push => match provider.push(body) {
            Err(error) => Step::Answer(
                StatusCode::BAD_REQUEST,
                Verdict::Rejected,
                format!(
                    "malformed {label} push payload: {error}; expected the JSON body of a {label} push event{}",
                    if form {
                        " (the webhook sends form data: set its content type to application/json)"
                    } else {
                        ""
                    }
                ),
            ),
            Ok(push) => match policy::decide(&push, webhook) {
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
                    Step::Answer(StatusCode::ACCEPTED, Verdict::Ignored, reason)
                }
                Decision::Malformed {
                    git_ref,
                    sha,
                    reason,
                } => {
                    delivery.git_ref = Some(git_ref);
                    delivery.sha = sha;
                    Step::Answer(StatusCode::BAD_REQUEST, Verdict::Rejected, reason)
                }
            },
        },
    };
    // Keep only short values from the payload in the log (a ref can be long; the body is kept).
    for value in [&mut delivery.git_ref, &mut delivery.sha]
        .into_iter()
        .flatten()
    {
        if value.len() > 256 {
            *value = value.chars().take(256).collect();
        }
    }

    let (status, verdict, reason) = match &step {
        Step::Answer(status, verdict, reason) => (*status, *verdict, reason.clone()),
        Step::Deploy { reason, .. } => (StatusCode::ACCEPTED, Verdict::Processing, reason.clone()),
    };
    let first = delivery.replay_of.is_none();
    let row = delivery.row(verdict, status, &reason, first.then_some(body));
    let id = if first {
        match state.store.claim_delivery(&row).await? {
            Claim::First(id) => id,
            Claim::Redelivery(earlier) => {
                return duplicate(state, delivery, Repeat::DeliveryId, *earlier).await;
            }
            Claim::SameBody(earlier) => {
                return duplicate(state, delivery, Repeat::Body, *earlier).await;
            }
        }
    } else {
        state.store.log_delivery(&row).await?
    };
    delivery.logged = Some(id);

    let Step::Deploy { version, reason } = step else {
        return Ok(delivery.outcome(status, verdict, reason));
    };
    let requested_by = match (&delivery.delivery_id, delivery.replay_of) {
        (Some(delivery_id), None) => format!("{label} delivery {delivery_id}"),
        (None, None) => format!("{label} webhook (delivery #{id})"),
        (_, Some(first)) => format!("replay of {label} delivery #{first}"),
    };
    let requested = state
        .fleet
        .request(DeployRequest {
            service: settings.name.as_str(),
            version: version.as_str(),
            trigger: Trigger::Webhook,
            requested_by: Some(&requested_by),
            coalesce: true,
        })
        .await;
    if let Ok(queued) = &requested {
        crate::auth::record(
            &state.store,
            Audit {
                actor: &Actor::webhook(requested_by.clone()),
                action: "deploy",
                target: Some(settings.name.as_str()),
                address: None,
                detail: Some(&format!("version {version}, rollout {}", queued.id)),
            },
        )
        .await;
    }
    let (status, verdict, reason, queued) = match requested {
        Ok(queued) => {
            let reason = if queued.coalesced {
                format!(
                    "{reason}: rollout #{} was still queued, and now deploys {version} instead",
                    queued.id
                )
            } else {
                format!("{reason} (rollout #{}, {})", queued.id, queued.status)
            };
            (
                StatusCode::ACCEPTED,
                Verdict::Deployed,
                reason,
                Some(queued),
            )
        }
        Err(DeployError::InvalidVersion(error)) => (
            StatusCode::ACCEPTED,
            Verdict::Ignored,
            format!("{version} cannot be a version: {error}"),
            None,
        ),
        Err(error @ DeployError::UnknownService(_)) => (
            StatusCode::NOT_FOUND,
            Verdict::Rejected,
            error.to_string(),
            None,
        ),
        Err(
            error @ (DeployError::Conflict(_)
            | DeployError::NothingToRollBackTo(_)
            | DeployError::UnknownDeployment(_)),
        ) => (
            StatusCode::CONFLICT,
            Verdict::Rejected,
            error.to_string(),
            None,
        ),
        Err(DeployError::Store(error)) => {
            // Releases the delivery id (status 500), so the host's retry is processed.
            let reason = "internal error; the server log has the details (the host may retry)";
            if let Err(second) = state
                .store
                .finish_delivery(id, Verdict::Rejected.as_str(), 500, reason, None)
                .await
            {
                tracing::error!(%second, delivery = id, "cannot record the failed delivery");
            }
            return Err(error);
        }
    };
    state
        .store
        .finish_delivery(
            id,
            verdict.as_str(),
            status.as_u16(),
            &reason,
            queued.as_ref().map(|q| q.id),
        )
        .await?;
    let mut outcome = delivery.outcome(status, verdict, reason);
    if let Some(queued) = queued {
        outcome.version = Some(version.to_string());
        outcome.rollout = Some(queued.id);
        outcome.rollout_status = Some(queued.status);
        outcome.coalesced = queued.coalesced;
    }
    Ok(outcome)
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
    mut delivery: Delivery<'_>,
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
    let mut row = delivery.row(Verdict::Duplicate, StatusCode::ACCEPTED, &reason, None);
    row.deployment_id = earlier.deployment_id;
    let id = state.store.log_delivery(&row).await?;
    delivery.logged = Some(id);
    let mut outcome = delivery.outcome(StatusCode::ACCEPTED, Verdict::Duplicate, reason);
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

async fn replay_delivery(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id.parse::<i64>().map_err(|_| RequestError::Id {
        what: "delivery",
        text: id,
    })?;
    let outcome = replay_by(&state, id, &principal.actor(), &address).await?;
    Ok(answer(outcome))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    before: Option<i64>,
    limit: Option<u32>,
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

async fn list_deliveries(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| RequestError::Query {
        rejection: rejection.body_text(),
        expected: "?before=ID&limit=N",
    })?;
    Ok(Json(
        delivery_page(&state, &service, query.before, query.limit).await?,
    ))
}
