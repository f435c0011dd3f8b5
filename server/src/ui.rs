//! What the web UI's server functions reach: the fleet, through the same methods as the JSON API.

use std::sync::Arc;

use app::fleet::FleetSource;
use app::model::{
    BackendSummary, ControlAction, DeploymentDetail, DeploymentFilter, DeploymentPage,
    ServiceStatus, ServiceSummary,
};

use crate::fleet::{DeployRequest, Fleet, Trigger};
use crate::settings::Settings;

/// Answers the UI's server functions.
pub struct UiFleet {
    pub settings: Arc<Settings>,
    pub fleet: Arc<Fleet>,
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
        self.fleet
            .request(DeployRequest {
                service: &service,
                version: &version,
                trigger: Trigger::Ui,
                requested_by: None,
                coalesce: false,
            })
            .await
            .map(|queued| queued.id)
            .map_err(message)
    }

    async fn control(&self, id: i64, action: ControlAction) -> Result<(), String> {
        self.fleet.control(id, action, None).await.map_err(message)
    }

    async fn rollback(&self, service: String) -> Result<i64, String> {
        self.fleet
            .rollback(&service, None)
            .await
            .map(|queued| queued.id)
            .map_err(message)
    }
}
