//! The server functions the UI calls, and the context through which the server answers them.
//!
//! Every mutation here goes through the same fleet methods as the JSON API, so the UI and the
//! API cannot behave differently.

use leptos::prelude::*;

use crate::model::{
    Caller, ControlAction, DeploymentDetail, DeploymentFilter, DeploymentPage, ReplicaView,
    RolloutTraffic, ServiceStatus, ServiceSummary,
};

/// What the server provides to the UI's server functions, through Leptos context.
///
/// The server crate implements [`FleetSource`]; the UI never sees configuration files, the
/// database or the load balancer directly.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct Fleet(pub std::sync::Arc<dyn FleetSource>);

/// Errors are messages meant for the operator: they say what was wrong and what was expected.
#[cfg(feature = "ssr")]
#[async_trait::async_trait]
pub trait FleetSource: Send + Sync + 'static {
    /// Every configured service, in configuration order.
    fn services(&self) -> Vec<ServiceSummary>;
    /// Who is asking (from the request being answered); `None` when nobody signed in.
    fn caller(&self) -> Option<Caller>;
    /// Every service with its backends' live state and its rollout in progress.
    async fn status(&self) -> Result<Vec<ServiceStatus>, String>;
    async fn deployments(&self, filter: DeploymentFilter) -> Result<DeploymentPage, String>;
    async fn deployment(&self, id: i64) -> Result<Option<DeploymentDetail>, String>;
    /// What each backend served while the rollout ran; `None` if no rollout has that id.
    async fn traffic(&self, id: i64) -> Result<Option<RolloutTraffic>, String>;
    /// Queues a rollout started from the UI; returns its id.
    async fn deploy(&self, service: String, version: String) -> Result<i64, String>;
    async fn control(&self, id: i64, action: ControlAction) -> Result<(), String>;
    /// Queues a rollout back to the service's previous good version; returns its id.
    async fn rollback(&self, service: String) -> Result<i64, String>;
    /// The replica answering, and which one leads (as `GET /api/replica` answers).
    fn replica(&self) -> ReplicaView;
}

#[cfg(feature = "ssr")]
fn fleet() -> Result<std::sync::Arc<dyn FleetSource>, ServerFnError> {
    use_context::<Fleet>()
        .map(|Fleet(fleet)| fleet)
        .ok_or_else(|| ServerFnError::new("the fleet is not available on this server"))
}

/// Who is signed in, so the UI can hide what they may not do (the server enforces it anyway).
#[server(prefix = "/rpc", endpoint = "current_user")]
pub async fn current_user() -> Result<Option<Caller>, ServerFnError> {
    Ok(fleet()?.caller())
}

/// Which replica answers, and which one leads and since when.
#[server(prefix = "/rpc", endpoint = "replica_status")]
pub async fn replica_status() -> Result<ReplicaView, ServerFnError> {
    Ok(fleet()?.replica())
}

/// Lists the configured services with their backends.
#[server(prefix = "/rpc", endpoint = "list_services")]
pub async fn list_services() -> Result<Vec<ServiceSummary>, ServerFnError> {
    Ok(fleet()?.services())
}

/// The live state of every service.
#[server(prefix = "/rpc", endpoint = "fleet_status")]
pub async fn fleet_status() -> Result<Vec<ServiceStatus>, ServerFnError> {
    fleet()?.status().await.map_err(ServerFnError::new)
}

/// One page of the deployment history, newest first.
#[server(prefix = "/rpc", endpoint = "list_deployments")]
pub async fn list_deployments(filter: DeploymentFilter) -> Result<DeploymentPage, ServerFnError> {
    fleet()?
        .deployments(filter)
        .await
        .map_err(ServerFnError::new)
}

/// A rollout with its whole timeline; `None` if no rollout has that id.
#[server(prefix = "/rpc", endpoint = "get_deployment")]
pub async fn get_deployment(id: i64) -> Result<Option<DeploymentDetail>, ServerFnError> {
    fleet()?.deployment(id).await.map_err(ServerFnError::new)
}

/// What each backend served while the rollout ran (the traffic chart); `None` if no rollout
/// has that id.
#[server(prefix = "/rpc", endpoint = "get_traffic")]
pub async fn get_traffic(id: i64) -> Result<Option<RolloutTraffic>, ServerFnError> {
    fleet()?.traffic(id).await.map_err(ServerFnError::new)
}

/// Starts a rollout of `service` to `version`; returns the rollout's id.
#[server(prefix = "/rpc", endpoint = "deploy")]
pub async fn deploy(service: String, version: String) -> Result<i64, ServerFnError> {
    fleet()?
        .deploy(service, version)
        .await
        .map_err(ServerFnError::new)
}

/// Pauses, resumes or aborts a rollout.
#[server(prefix = "/rpc", endpoint = "control_deployment")]
pub async fn control_deployment(id: i64, action: ControlAction) -> Result<(), ServerFnError> {
    fleet()?
        .control(id, action)
        .await
        .map_err(ServerFnError::new)
}

/// Rolls `service` back to its previous good version; returns the new rollout's id.
#[server(prefix = "/rpc", endpoint = "rollback_service")]
pub async fn rollback_service(service: String) -> Result<i64, ServerFnError> {
    fleet()?.rollback(service).await.map_err(ServerFnError::new)
}
