//! The rollout worker's journal with its metrics: each finished rollout and each step's
//! duration are counted where the executor records them, so the executor itself names no
//! metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use app::model::{PendingControl, RolloutStatus, StepKind, StepOutcome};
use async_trait::async_trait;
use tokio::time::Instant;

use super::Metrics;
use crate::domain::Slot;
use crate::rollout::journal::Journal;
use crate::store::{BackendTraffic, DeploymentRow, StoreError};

/// One service's [`Journal`], counting what passes through it into [`Metrics`]: a rollout when
/// its end is saved, a step's duration when its row is ended. Only what was recorded succeeds
/// is counted.
pub struct Metered {
    inner: Arc<dyn Journal>,
    service: String,
    metrics: Metrics,
    /// The step rows begun through this journal and not yet ended: their step and start.
    open: Mutex<HashMap<i64, (StepKind, Instant)>>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Journal>, service: &str, metrics: Metrics) -> Self {
        Self {
            inner,
            service: service.to_owned(),
            metrics,
            open: Mutex::default(),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (StepKind, Instant)>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Journal for Metered {
    async fn next_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError> {
        self.inner.next_deployment(service).await
    }

    async fn claim(&self, id: i64) -> Result<Option<Option<String>>, StoreError> {
        self.inner.claim(id).await
    }

    async fn begin(
        &self,
        id: i64,
        from_version: Option<&str>,
        state: &str,
    ) -> Result<(), StoreError> {
        self.inner.begin(id, from_version, state).await
    }

    async fn save_state(
        &self,
        id: i64,
        status: RolloutStatus,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner.save_state(id, status, state, reason).await?;
        // The executor saves a rollout's end once, after its last step.
        self.metrics.rollout_finished(&self.service, status);
        Ok(())
    }

    async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError> {
        self.inner.interrupt_open_steps(deployment).await
    }

    async fn newest_control(&self, deployment: i64) -> Result<Option<PendingControl>, StoreError> {
        self.inner.newest_control(deployment).await
    }

    async fn begin_steps(
        &self,
        deployment: i64,
        backends: &[Option<&str>],
        step: StepKind,
        rollback: bool,
        version: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let ids = self
            .inner
            .begin_steps(deployment, backends, step, rollback, version)
            .await?;
        let now = Instant::now();
        self.open().extend(ids.iter().map(|&id| (id, (step, now))));
        Ok(ids)
    }

    async fn finish_steps(
        &self,
        ids: &[i64],
        outcome: StepOutcome,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner.finish_steps(ids, outcome, detail).await?;
        let ended: Vec<(StepKind, Instant)> = {
            let mut open = self.open();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        // One trip fails every row of the watched batch: counted once.
        if outcome == StepOutcome::Failed && ended.iter().any(|(step, _)| *step == StepKind::Soak) {
            self.metrics.soak_tripped(&self.service);
        }
        for (step, began) in ended {
            self.metrics.step_took(step, began.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn backend_versions(&self, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.backend_versions(service).await
    }

    async fn newest_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError> {
        self.inner.newest_deployment(service).await
    }

    async fn set_backend_version(
        &self,
        service: &str,
        backend: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .set_backend_version(service, backend, version)
            .await
    }

    async fn save_step_log(
        &self,
        step_id: i64,
        backend: &str,
        source: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        self.inner
            .save_step_log(step_id, backend, source, lines)
            .await
    }

    async fn backend_slots(&self, service: &str) -> Result<Vec<(String, Slot)>, StoreError> {
        self.inner.backend_slots(service).await
    }

    async fn set_backend_current(
        &self,
        service: &str,
        backend: &str,
        version: &str,
        slot: Slot,
    ) -> Result<(), StoreError> {
        self.inner
            .set_backend_current(service, backend, version, slot)
            .await
    }

    async fn save_traffic(
        &self,
        deployment: i64,
        span_ms: i64,
        backends: &[BackendTraffic],
    ) -> Result<(), StoreError> {
        self.inner.save_traffic(deployment, span_ms, backends).await
    }
}
