//! What a service's rollout worker reads and writes in the database: its queue, each rollout's
//! saved state and step rows, and the version each backend runs.
//!
//! The executor reaches the database only through [`Journal`], and the [`Store`] is the one
//! implementation Baton runs. It is a trait so that the executor's tests can run on tokio's
//! paused clock: sqlx arms tokio timers around every query (the pool's acquire timeout, a ping
//! when a connection goes back), and a paused clock fires them at once while SQLite's worker
//! thread is still answering. The tests hand the executor the same `Store`, run on a runtime
//! of its own.

use async_trait::async_trait;

use app::model::{PendingControl, RolloutStatus, StepKind, StepOutcome};

use crate::domain::Slot;
use crate::store::{BackendTraffic, DeploymentQuery, DeploymentRow, Store, StoreError};

/// The store as the executor uses it; each method is the [`Store`] method of the same name.
#[async_trait]
pub trait Journal: Send + Sync {
    /// The service's rollout to work on: the unfinished one, else the oldest queued.
    async fn next_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError>;
    /// Moves a queued rollout to running and returns its state; `None` if it was cancelled.
    async fn claim(&self, id: i64) -> Result<Option<Option<String>>, StoreError>;
    /// The rollout begins: its `from` version and the state planned from what runs now.
    async fn begin(
        &self,
        id: i64,
        from_version: Option<&str>,
        state: &str,
    ) -> Result<(), StoreError>;
    async fn save_state(
        &self,
        id: i64,
        status: RolloutStatus,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Ends the step rows a stopped Baton left open; returns how many.
    async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError>;
    async fn newest_control(&self, deployment: i64) -> Result<Option<PendingControl>, StoreError>;
    /// One step row per backend (`None`: the whole rollout), in one transaction; their ids.
    async fn begin_steps(
        &self,
        deployment: i64,
        backends: &[Option<&str>],
        step: StepKind,
        rollback: bool,
        version: &str,
    ) -> Result<Vec<i64>, StoreError>;
    /// Ends the step rows `ids` with one outcome, in one transaction.
    async fn finish_steps(
        &self,
        ids: &[i64],
        outcome: StepOutcome,
        detail: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Keeps the end of `backend`'s log with the failed step `step_id`.
    async fn save_step_log(
        &self,
        step_id: i64,
        backend: &str,
        source: &str,
        lines: &[String],
    ) -> Result<(), StoreError>;
    async fn backend_versions(&self, service: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// The service's newest rollout, finished or not.
    async fn newest_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError>;
    async fn set_backend_version(
        &self,
        service: &str,
        backend: &str,
        version: &str,
    ) -> Result<(), StoreError>;
    async fn backend_slots(&self, service: &str) -> Result<Vec<(String, Slot)>, StoreError>;
    async fn set_backend_current(
        &self,
        service: &str,
        backend: &str,
        version: &str,
        slot: Slot,
    ) -> Result<(), StoreError>;
    /// Keeps one sample of the rollout's traffic, covering the `span_ms` before now.
    async fn save_traffic(
        &self,
        deployment: i64,
        span_ms: i64,
        backends: &[BackendTraffic],
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl Journal for Store {
    async fn next_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError> {
        Store::next_deployment(self, service).await
    }

    async fn claim(&self, id: i64) -> Result<Option<Option<String>>, StoreError> {
        Store::claim(self, id).await
    }

    async fn begin(
        &self,
        id: i64,
        from_version: Option<&str>,
        state: &str,
    ) -> Result<(), StoreError> {
        Store::begin(self, id, from_version, state).await
    }

    async fn save_state(
        &self,
        id: i64,
        status: RolloutStatus,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        Store::save_state(self, id, status, state, reason).await
    }

    async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError> {
        Store::interrupt_open_steps(self, deployment).await
    }

    async fn newest_control(&self, deployment: i64) -> Result<Option<PendingControl>, StoreError> {
        Store::newest_control(self, deployment).await
    }

    async fn begin_steps(
        &self,
        deployment: i64,
        backends: &[Option<&str>],
        step: StepKind,
        rollback: bool,
        version: &str,
    ) -> Result<Vec<i64>, StoreError> {
        Store::begin_steps(self, deployment, backends, step, rollback, version).await
    }

    async fn finish_steps(
        &self,
        ids: &[i64],
        outcome: StepOutcome,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        Store::finish_steps(self, ids, outcome, detail).await
    }

    async fn save_step_log(
        &self,
        step_id: i64,
        backend: &str,
        source: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        Store::save_step_log(self, step_id, backend, source, lines).await
    }

    async fn newest_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError> {
        let query = DeploymentQuery {
            service: Some(service),
            status: None,
            before: None,
            after: None,
            limit: 1,
        };
        Ok(self.deployments(&query).await?.into_iter().next())
    }

    async fn backend_versions(&self, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        Store::backend_versions(self, service).await
    }

    async fn set_backend_version(
        &self,
        service: &str,
        backend: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        Store::set_backend_version(self, service, backend, version).await
    }

    async fn backend_slots(&self, service: &str) -> Result<Vec<(String, Slot)>, StoreError> {
        Store::backend_slots(self, service).await
    }

    async fn set_backend_current(
        &self,
        service: &str,
        backend: &str,
        version: &str,
        slot: Slot,
    ) -> Result<(), StoreError> {
        Store::set_backend_current(self, service, backend, version, slot).await
    }

    async fn save_traffic(
        &self,
        deployment: i64,
        span_ms: i64,
        backends: &[BackendTraffic],
    ) -> Result<(), StoreError> {
        Store::save_traffic(self, deployment, span_ms, backends).await
    }
}
