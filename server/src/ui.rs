//! What the web UI's server functions reach: the fleet, through the same methods as the JSON API.

use std::sync::Arc;

use app::fleet::FleetSource;
use app::model::{
    BackendSummary, Caller, ControlAction, DeploymentDetail, DeploymentFilter, DeploymentPage,
    ServiceStatus, ServiceSummary,
};

use crate::auth::{self, Audit, Principal};
use crate::fleet::{DeployRequest, Fleet, Trigger};
use crate::settings::Settings;
use crate::store::Store;

/// Answers the UI's server functions. The auth layer has checked the caller's role before a
/// server function runs; mutations here name the caller in the history and the audit log.
pub struct UiFleet {
    pub settings: Arc<Settings>,
    pub fleet: Arc<Fleet>,
    pub store: Store,
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
fn message(error: impl Into<crate::api::ApiError>) -> String {
    error.into().message().to_owned()
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

    async fn status(&self) -> Result<Vec<ServiceStatus>, String> {
        self.fleet.status().await.map_err(message)
    }

    async fn deployments(&self, filter: DeploymentFilter) -> Result<DeploymentPage, String> {
        self.fleet.deployments(&filter).await.map_err(message)
    }

    async fn deployment(&self, id: i64) -> Result<Option<DeploymentDetail>, String> {
        self.fleet.deployment(id).await.map_err(message)
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
                coalesce: false,
            })
            .await
            .map_err(message)?;
        let detail = format!("version {version}, rollout {}", queued.id);
        self.audit(&caller, "deploy", &service, Some(&detail)).await;
        Ok(queued.id)
    }

    async fn control(&self, id: i64, action: ControlAction) -> Result<(), String> {
        let caller = signed_in()?;
        self.fleet
            .control(id, action, Some(&caller.name))
            .await
            .map_err(message)?;
        self.audit(&caller, action.as_str(), &format!("rollout {id}"), None)
            .await;
        Ok(())
    }

    async fn rollback(&self, service: String) -> Result<i64, String> {
        let caller = signed_in()?;
        let queued = self
            .fleet
            .rollback(&service, Some(&caller.name))
            .await
            .map_err(message)?;
        let detail = format!("rollout {}", queued.id);
        self.audit(&caller, "rollback", &service, Some(&detail))
            .await;
        Ok(queued.id)
    }
}
