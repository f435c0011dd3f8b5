//! What the web UI's server functions reach: the fleet, the accounts and the webhooks, through the
//! same methods as the JSON API.

use std::sync::Arc;

use app::fleet::FleetSource;
use app::model::{
    BackendSummary, Caller, ControlAction, DeploymentDetail, DeploymentFilter, DeploymentPage,
    ReplicaView, ServiceStatus, ServiceSummary,
};

use app::auth::{AccountSource, AuditEntry, AuditFilter, AuditPage, NewToken, TokenView, UserView};
use app::model::{NotificationAttempt, Role, RolloutTraffic};
use app::webhooks::{
    DeliveryOutcome, DeliveryPage, WebhookConfigView, WebhookSetup, WebhookSource,
};

use crate::auth::accounts::{self, TokenRef};
use crate::auth::{self, Audit, AuthError, Password, Principal};
use crate::fleet::{DeployError, DeployRequest, Fleet, Trigger};
use crate::http_error::ApiError;
use crate::replica::Leadership;
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::Store;
use crate::store::auth::{AuditQuery, TokenRow, UserRow};
use crate::webhooks;

/// Answers the UI's server functions. The auth layer has checked the caller's role before a
/// server function runs; mutations here name the caller in the history and the audit log.
pub struct UiFleet {
    pub settings: Arc<Settings>,
    pub fleet: Arc<Fleet>,
    pub store: Store,
    pub leadership: Leadership,
}

/// The signed-in caller of the server function being answered.
fn signed_in() -> Result<Principal, String> {
    auth::principal().ok_or_else(|| "sign in first".to_owned())
}

impl UiFleet {
    async fn audit(&self, caller: &Principal, action: &str, target: &str, detail: Option<&str>) {
        auth::record(
            &self.store,
            Audit {
                actor: &caller.actor(),
                action,
                target: Some(target),
                address: Some(&auth::client_address()),
                detail,
            },
        )
        .await;
    }
}

/// A message for the operator; internal errors are logged and reported without detail.
fn message(error: impl Into<ApiError>) -> String {
    error.into().message()
}

#[async_trait::async_trait]
impl FleetSource for UiFleet {
    fn services(&self) -> Vec<ServiceSummary> {
        self.settings
            .services
            .iter()
            .map(|service| ServiceSummary {
                name: service.name.to_string(),
                load_balancer: service.load_balancer.to_string(),
                haproxy_backend: service.haproxy_backend.clone(),
                backends: service
                    .backends
                    .iter()
                    .map(|backend| BackendSummary {
                        name: backend.name.to_string(),
                        address: backend.address.to_string(),
                    })
                    .collect(),
            })
            .collect()
    }

    fn caller(&self) -> Option<Caller> {
        crate::auth::principal().map(|principal| Caller {
            name: principal.name.clone(),
            role: principal.role,
        })
    }

    fn replica(&self) -> ReplicaView {
        self.leadership.view()
    }

    async fn status(&self) -> Result<Vec<ServiceStatus>, String> {
        self.fleet.status().await.map_err(message)
    }

    async fn deployments(&self, filter: DeploymentFilter) -> Result<DeploymentPage, String> {
        self.fleet.deployments(&filter).await.map_err(message)
    }

    async fn deployment(&self, id: i64) -> Result<Option<DeploymentDetail>, String> {
        let role = auth::principal().map(|principal| principal.role);
        let detail = self.fleet.deployment(id).await.map_err(message)?;
        Ok(detail.map(|detail| detail.seen_by(role)))
    }

    async fn traffic(&self, id: i64) -> Result<Option<RolloutTraffic>, String> {
        self.fleet.traffic(id).await.map_err(message)
    }

    async fn deploy(&self, service: String, version: String) -> Result<i64, String> {
        let caller = signed_in()?;
        let queued = self
            .fleet
            .request(DeployRequest {
                service: &service,
                version: &version,
                trigger: Trigger::Ui,
                requested_by: Some(&caller.name),
                requester_user: caller.credential.user(),
                coalesce: false,
            })
            .await
            .map_err(message)?;
        let detail = format!(
            "version {version}, rollout {}{}",
            queued.id,
            queued.audit_note()
        );
        self.audit(&caller, "deploy", &service, Some(&detail)).await;
        Ok(queued.id)
    }

    async fn control(&self, id: i64, action: ControlAction) -> Result<(), String> {
        let caller = signed_in()?;
        let target = format!("rollout {id}");
        let asked = self
            .fleet
            .control(id, action, Some(&caller.name), caller.credential.user())
            .await;
        if let Err(refusal @ DeployError::SelfApproval { .. }) = &asked {
            let reason = refusal.to_string();
            self.audit(&caller, "approve_refused", &target, Some(&reason))
                .await;
        }
        asked.map_err(message)?;
        self.audit(&caller, action.as_str(), &target, None).await;
        Ok(())
    }

    async fn rollback(&self, service: String) -> Result<i64, String> {
        let caller = signed_in()?;
        let queued = self
            .fleet
            .rollback(&service, Some(&caller.name), caller.credential.user())
            .await
            .map_err(message)?;
        let detail = format!("rollout {}", queued.id);
        self.audit(&caller, "rollback", &service, Some(&detail))
            .await;
        Ok(queued.id)
    }
}

/// Answers the admin pages' server functions (the auth layer has checked the admin role).
pub struct UiAccounts {
    pub store: Store,
}

/// What the admin is told: internal errors are logged and reported without detail.
fn account_error(error: impl Into<AuthError>) -> String {
    let error = error.into();
    if matches!(error, AuthError::Store(_) | AuthError::Internal(_)) {
        tracing::error!(%error, "user management failed");
    }
    ApiError::from(error).message()
}

fn stored_role(text: &str) -> Result<Role, String> {
    text.parse().map_err(|e: String| {
        account_error(AuthError::Internal(format!(
            "the database holds a bad role: {e}"
        )))
    })
}

fn user_view(row: UserRow) -> Result<UserView, String> {
    Ok(UserView {
        role: stored_role(&row.role)?,
        name: row.name,
        created_by: row.created_by,
        created_at: row.created_at,
    })
}

fn token_view(row: TokenRow) -> Result<TokenView, String> {
    Ok(TokenView {
        role: stored_role(&row.role)?,
        id: row.id,
        name: row.name,
        created_by: row.created_by,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
    })
}

#[async_trait::async_trait]
impl AccountSource for UiAccounts {
    async fn audit(&self, filter: AuditFilter) -> Result<AuditPage, String> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(format!("invalid limit {limit}: expected 1 to 1000"));
        }
        let rows = self
            .store
            .audit(&AuditQuery {
                actor: filter.actor.as_deref().filter(|s| !s.is_empty()),
                action: filter.action.as_deref().filter(|s| !s.is_empty()),
                before: filter.before,
                limit: i64::from(limit),
            })
            .await
            .map_err(account_error)?;
        let next_before = (rows.len() == limit as usize)
            .then(|| rows.last().map(|row| row.id))
            .flatten();
        Ok(AuditPage {
            next_before,
            entries: rows
                .into_iter()
                .map(|row| AuditEntry {
                    id: row.id,
                    at: row.at,
                    actor: row.actor,
                    actor_kind: row.actor_kind,
                    action: row.action,
                    target: row.target,
                    address: row.address,
                    detail: row.detail,
                })
                .collect(),
        })
    }

    async fn users(&self) -> Result<Vec<UserView>, String> {
        self.store
            .users()
            .await
            .map_err(account_error)?
            .into_iter()
            .map(user_view)
            .collect()
    }

    async fn add_user(
        &self,
        name: String,
        role: Role,
        password: String,
    ) -> Result<UserView, String> {
        let caller = signed_in()?;
        let row = accounts::add_user(
            &self.store,
            &caller.actor(),
            Some(&auth::client_address()),
            &name,
            role,
            Password::new(password),
        )
        .await
        .map_err(account_error)?;
        user_view(row)
    }

    async fn delete_user(&self, name: String) -> Result<(), String> {
        let caller = signed_in()?;
        accounts::delete_user(
            &self.store,
            &caller.actor(),
            Some(&auth::client_address()),
            &name,
        )
        .await
        .map_err(account_error)
    }

    async fn tokens(&self) -> Result<Vec<TokenView>, String> {
        self.store
            .tokens()
            .await
            .map_err(account_error)?
            .into_iter()
            .map(token_view)
            .collect()
    }

    async fn create_token(&self, name: String, role: Role) -> Result<NewToken, String> {
        let caller = signed_in()?;
        if !caller.role.allows(role) {
            return Err(format!(
                "creating a token with the {role} role needs that role; {} is a {}",
                caller.name, caller.role
            ));
        }
        let (row, secret) = accounts::create_token(
            &self.store,
            &caller.actor(),
            Some(&auth::client_address()),
            &name,
            role,
        )
        .await
        .map_err(account_error)?;
        Ok(NewToken {
            token: token_view(row)?,
            secret: secret.expose().to_owned(),
        })
    }

    async fn revoke_token(&self, id: i64) -> Result<(), String> {
        let caller = signed_in()?;
        accounts::revoke_token(
            &self.store,
            &caller.actor(),
            Some(&auth::client_address()),
            &TokenRef::Id(id),
        )
        .await
        .map(|_| ())
        .map_err(account_error)
    }

    async fn notifications(&self) -> Result<Vec<NotificationAttempt>, String> {
        self.store
            .notification_attempts(crate::notify::ATTEMPTS_SHOWN)
            .await
            .map_err(account_error)
    }
}

/// Answers the UI's webhook server functions (provided as `app::webhooks::Webhooks`).
pub struct UiWebhooks(pub AppState);

impl UiWebhooks {
    /// `path` on Baton's own origin as the auth layer sees it (`[auth] public_origin`, else the
    /// request's host and scheme): the same origin the CSRF check expects. Only the path when
    /// there is no request to tell (the page is not being served).
    fn url(&self, path: &str) -> String {
        let config = &self.0.settings.auth;
        let origin = match leptos::prelude::use_context::<axum::http::request::Parts>() {
            Some(request) => crate::auth::own_origin(&request.headers, &request.uri, config),
            None => config.public_origin.clone(),
        };
        origin.map_or_else(|| path.to_owned(), |origin| origin.url(path))
    }
}

#[async_trait::async_trait]
impl WebhookSource for UiWebhooks {
    fn setup(&self, service: &str) -> Result<WebhookSetup, String> {
        let settings = self
            .0
            .settings
            .service(service)
            .ok_or_else(|| format!("no service is named {service:?}"))?;
        let path = format!("/hooks/{service}");
        Ok(WebhookSetup {
            service: service.to_owned(),
            url: self.url(&path),
            path,
            config: settings.webhook.as_ref().map(|webhook| WebhookConfigView {
                secret_env: webhook.secret_env.clone(),
                branch: webhook.branch.clone(),
                tags: webhook.tags.as_ref().map(ToString::to_string),
                repository: webhook.repository.as_ref().map(ToString::to_string),
            }),
        })
    }

    async fn deliveries(
        &self,
        service: String,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<DeliveryPage, String> {
        webhooks::delivery_page(&self.0, &service, before, limit)
            .await
            .map_err(message)
    }

    async fn replay(&self, id: i64) -> Result<DeliveryOutcome, String> {
        // Routed for admins only (like the API's route); named in the audit log as there.
        let caller = crate::auth::principal().ok_or_else(|| "sign in first".to_owned())?;
        webhooks::replay_by(&self.0, id, &caller.actor(), &crate::auth::client_address())
            .await
            .map_err(message)
    }
}
