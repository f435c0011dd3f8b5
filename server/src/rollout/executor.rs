//! The executor: carries out the engine's actions against the load balancer and the runtime,
//! persisting every step before its side effect, and feeds the results back to the engine.
//!
//! Invariant: the executor decides nothing about order or rollback; it only performs one
//! action and reports what happened. Every action is idempotent, so a restarted Baton runs the
//! interrupted one again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use app::model::PendingControl;
use app::model::{ControlAction, NotificationEvent, RolloutStatus, StepOutcome};

use crate::domain::{BackendName, Slot, StrategyKind, Version};
use crate::drivers::{
    AdminState, BackendRun, BackendSpec, HealthProbe, LOG_TAIL_MAX, LbError, LoadBalancer,
    ProbeFailure, Runtime, ServerState, ServerStatus,
};
use crate::notify::{self, Notice, Outbox};
use crate::rollout::engine::{
    Action, Event, Outcome, Phase, Rollout, Step, Target, common_version,
};
use crate::rollout::journal::Journal;
use crate::rollout::traffic;
use crate::settings::ServiceSettings;
use crate::store::{DeploymentRow, StoreError};

/// How often waits look at HAProxy again.
const POLL: Duration = Duration::from_millis(10);
/// How long HAProxy may take to report a server UP after `state ready`.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading a failed backend's log may take (over ssh, say) before the rollout goes on
/// without it.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a rollout waits, as it begins, to learn from HAProxy which servers are backups.
const BACKUPS_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause, resume and abort requests waiting for a service's worker, by rollout id. Each is also
/// a `Control` event in the database: a worker resuming a rollout after a restart queues again
/// the newest one that has not taken effect ([`PendingControl::fulfilled_by`]), and a leader
/// hands over those asked of other replicas as it finds them (`fleet/leading.rs`).
#[derive(Clone, Default)]
pub struct Controls(Arc<std::sync::Mutex<PendingControls>>);

#[derive(Default)]
struct PendingControls {
    requests: Vec<(i64, ControlAction)>,
    /// The control events handed over so far (by the replica that took the request, or by the
    /// leader that found it in the database), so that each applies once.
    handed: HashSet<i64>,
}

impl Controls {
    pub fn push(&self, id: i64, action: ControlAction) {
        self.0
            .lock()
            .expect("controls lock")
            .requests
            .push((id, action));
    }

    /// Hands over the request recorded as control event `event`, unless it already was.
    pub fn push_recorded(&self, event: i64, id: i64, action: ControlAction) {
        let mut pending = self.0.lock().expect("controls lock");
        if pending.handed.insert(event) {
            pending.requests.push((id, action));
        }
    }

    /// Whether an abort of rollout `id` waits to be applied (a long wait ends early for it).
    fn asks_abort(&self, id: i64) -> bool {
        self.0
            .lock()
            .expect("controls lock")
            .requests
            .iter()
            .any(|(for_id, action)| *for_id == id && *action == ControlAction::Abort)
    }

    /// The requests for rollout `id`, in order; requests for any other rollout are stale (it
    /// ended before they could apply) and are dropped.
    fn take(&self, id: i64) -> Vec<ControlAction> {
        let taken = std::mem::take(&mut self.0.lock().expect("controls lock").requests);
        taken
            .into_iter()
            .filter_map(|(for_id, action)| (for_id == id).then_some(action))
            .collect()
    }
}

/// Everything needed to roll out one service.
pub struct ServiceRunner {
    pub service: Arc<ServiceSettings>,
    pub lb: Arc<dyn LoadBalancer>,
    pub runtime: Arc<dyn Runtime>,
    /// The database (the `Store`; see [`Journal`] for why a trait).
    pub store: Arc<dyn Journal>,
    /// Baton's own health check of a backend (HTTP; see [`HealthProbe`] for why a trait).
    pub probe: Arc<dyn HealthProbe>,
    /// Woken when a rollout is queued for this service or a control request arrives.
    pub wake: Arc<Notify>,
    pub controls: Controls,
    /// Backends to bring back once their host answers again, between rollouts.
    pub repairs: Repairs,
    /// Where the rollout's start and end are announced (`[[notify]]`); never waits.
    pub notify: Outbox,
}

/// Each configured backend with the version it runs now (the one recorded by the last rollout
/// or start that touched it, else the service's initial version) and the address it runs on.
pub async fn recorded_targets(
    store: &dyn Journal,
    service: &ServiceSettings,
) -> Result<Vec<Target>, StoreError> {
    let recorded: HashMap<String, String> = store
        .backend_versions(service.name.as_str())
        .await?
        .into_iter()
        .collect();
    let slots: HashMap<String, Slot> = store
        .backend_slots(service.name.as_str())
        .await?
        .into_iter()
        .collect();
    Ok(service
        .backends
        .iter()
        .map(|backend| Target {
            name: backend.name.clone(),
            previous: recorded
                .get(backend.name.as_str())
                .and_then(|v| Version::parse(v).ok())
                .unwrap_or_else(|| service.runtime.initial_version.clone()),
            slot: slots
                .get(backend.name.as_str())
                .copied()
                .unwrap_or_default(),
        })
        .collect())
}

/// The status the API and the database show for a rollout's state.
pub fn status_of(rollout: &Rollout) -> RolloutStatus {
    match &rollout.phase {
        Phase::Pending => RolloutStatus::Queued,
        Phase::Paused { .. } => RolloutStatus::Paused,
        Phase::AwaitingApproval => RolloutStatus::AwaitingApproval,
        Phase::AwaitingPromote { .. } => RolloutStatus::AwaitingPromote,
        Phase::Forward { .. } | Phase::RollingBack { .. } => RolloutStatus::Running,
        Phase::Finished {
            outcome: Outcome::Succeeded,
        } => RolloutStatus::Succeeded,
        Phase::Finished {
            outcome: Outcome::RolledBack { .. },
        } => RolloutStatus::RolledBack,
        Phase::Finished {
            outcome: Outcome::Failed { .. },
        } => RolloutStatus::Failed,
        Phase::Finished {
            outcome: Outcome::Cancelled { .. } | Outcome::CanaryAborted,
        } => RolloutStatus::Cancelled,
    }
}

fn reason_of(rollout: &Rollout) -> Option<String> {
    match &rollout.phase {
        Phase::Finished {
            outcome: Outcome::RolledBack { failure },
        } => Some(format!("{failure}; every changed backend was rolled back")),
        Phase::Finished {
            outcome: Outcome::Failed { failure, problems },
        } if problems.is_empty() => Some(failure.to_string()),
        Phase::Finished {
            outcome: Outcome::Failed { failure, problems },
        } => {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Some(format!(
                "{failure}; the rollback also failed ({}): those backends are out of rotation and need an operator",
                problems.join("; ")
            ))
        }
        Phase::Finished {
            outcome: Outcome::Cancelled { at: None },
        } => Some("aborted by an operator before any backend was touched".to_owned()),
        Phase::Finished {
            outcome: Outcome::Cancelled { at: Some(step) },
        } => Some(format!(
            "aborted by an operator at {}; backends already done keep the new version, and every backend is serving",
            step.as_str()
        )),
        Phase::Finished {
            outcome: Outcome::CanaryAborted,
        } => Some(format!(
            "aborted by an operator before the canaries were promoted; {} went back to {}, and every backend is serving",
            rollout.targets[..rollout.canaries()]
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            common_version(&rollout.targets[..rollout.canaries()])
                .map_or("their previous versions", Version::as_str),
        )),
        Phase::Pending
        | Phase::Forward { .. }
        | Phase::Paused { .. }
        | Phase::AwaitingApproval
        | Phase::AwaitingPromote { .. }
        | Phase::RollingBack { .. }
        | Phase::Finished {
            outcome: Outcome::Succeeded,
        } => None,
    }
}

impl ServiceRunner {
    /// Runs this service's rollouts one at a time, in order, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let next = match self.store.next_deployment(self.service.name.as_str()).await {
                Ok(next) => next,
                Err(error) => {
                    // Not idle: a rollout may be under way, and nothing would wake the worker
                    // for it once the database answers again.
                    tracing::error!(service = %self.service.name, %error, "cannot read the rollout queue; trying again in a second");
                    tokio::select! {
                        _ = sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            match next {
                Some(row) => {
                    if let Err(error) = self.run_deployment(row, &shutdown).await {
                        if let StoreError::Fenced { .. } = error {
                            tracing::warn!(service = %self.service.name, %error, "the rollout is left to the replica that leads now");
                            return;
                        }
                        tracing::error!(service = %self.service.name, %error, "rollout bookkeeping failed");
                        tokio::select! {
                            _ = sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
                None => {
                    match self.repair_requested().await {
                        Ok(()) => {}
                        Err(error @ StoreError::Fenced { .. }) => {
                            tracing::warn!(service = %self.service.name, %error, "repairs are left to the replica that leads now");
                            return;
                        }
                        Err(error) => {
                            tracing::error!(service = %self.service.name, %error, "cannot read what to repair");
                        }
                    }
                    // Only a surge adds servers to HAProxy, which a reload forgets.
                    let surge = self.service.strategy.kind == StrategyKind::Surge;
                    if surge && let Err(error) = self.restore_forgotten().await {
                        tracing::error!(service = %self.service.name, %error, "cannot read which address each backend runs on");
                    }
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = sleep(surge::RESTORE_EVERY), if surge => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(rollout_id = row.id, service = %row.service))]
    async fn run_deployment(
        &self,
        row: DeploymentRow,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let state = if row.status == RolloutStatus::Queued {
            match self.store.claim(row.id).await? {
                Some(state) => state,
                // Cancelled between the read and the claim.
                None => return Ok(()),
            }
        } else {
            row.state.clone()
        };
        let Some(mut rollout) = state
            .as_deref()
            .and_then(|state| serde_json::from_str::<Rollout>(state).ok())
        else {
            tracing::error!("the rollout's saved state is unreadable; marking it failed");
            self.store
                .save_state(
                    row.id,
                    RolloutStatus::Failed,
                    "null",
                    Some("the saved rollout state could not be read"),
                )
                .await?;
            return Ok(());
        };
        let mut action = rollout.action();
        if matches!(rollout.phase, Phase::Pending) {
            // What each backend runs is read now, as the rollout begins, not when it was
            // queued: a rollout queued behind another must return to what that one left.
            // Nothing is touched before `Begin`, so a restart here simply reads them again.
            rollout.targets = recorded_targets(&*self.store, &self.service).await?;
            // Like the targets, the strategy is the configuration's as the rollout begins.
            rollout.strategy = self.service.strategy.kind;
            rollout.soak = self.service.soak.is_some();
            let backups = tokio::select! {
                backups = self.backup_servers() => backups,
                _ = shutdown.cancelled() => return Ok(()),
            };
            rollout.order_backups_last(|name| backups.contains(name.as_str()));
            let from = common_version(&rollout.targets).map(Version::as_str);
            let state = serde_json::to_string(&rollout).expect("a rollout serializes");
            self.store.begin(row.id, from, &state).await?;
            self.announce(&row, &rollout, NotificationEvent::Started, None);
            (rollout, action) = rollout.step(Event::Begin);
        } else {
            let interrupted = self.store.interrupt_open_steps(row.id).await?;
            tracing::warn!(
                interrupted,
                "resuming a rollout that Baton left in the middle"
            );
            // A pause, resume or abort asked for just before Baton stopped may not have reached
            // the saved state; applying it again is harmless if it had.
            if let Some(asked) = self.store.newest_control(row.id).await?
                && !asked.fulfilled_by(row.status)
            {
                tracing::info!(action = ?asked.action, "applying what was asked before the restart");
                self.controls.push(row.id, asked.action);
            }
        }
        // The traffic chart's samples, until the rollout ends or the worker stops.
        let _sampling =
            traffic::Sampler::new(&self.service, self.lb.clone(), self.store.clone(), row.id)
                .start(shutdown.child_token());
        loop {
            // Pause, resume, abort, approve and promote apply between steps.
            for control in self.controls.take(row.id) {
                (rollout, action) = rollout.step(match control {
                    ControlAction::Pause => Event::Pause,
                    ControlAction::Resume => Event::Resume,
                    ControlAction::Abort => Event::Abort,
                    ControlAction::Approve => Event::Approve,
                    ControlAction::Promote => Event::Promote,
                });
                tracing::info!(
                    action = control.as_str(),
                    to = status_of(&rollout).as_str(),
                    "operator request applied"
                );
            }
            let state = serde_json::to_string(&rollout).expect("a rollout serializes");
            let Some(current) = action.clone() else {
                // Paused, or awaiting an approval or a promotion: the rollout holds the
                // service's queue until someone acts.
                if !rollout.is_waiting() {
                    break;
                }
                self.store
                    .save_state(row.id, status_of(&rollout), &state, None)
                    .await?;
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = shutdown.cancelled() => return Ok(()),
                }
            };
            // Persist before the side effect: a restart runs this action again.
            self.store
                .save_state(row.id, status_of(&rollout), &state, None)
                .await?;
            let event = tokio::select! {
                event = self.perform(row.id, &current) => event?,
                _ = shutdown.cancelled() => {
                    tracing::info!(step = current.step.as_str(), "the worker stops (Baton is stopping, or this replica no longer leads); the rollout resumes at this step");
                    return Ok(());
                }
            };
            let from = current.step.as_str();
            let tripped = match (&current.step, &event) {
                (Step::Soak, Event::Failed { backend, reason }) => Some(match backend {
                    Some(backend) => format!("{backend}: {reason}"),
                    None => reason.clone(),
                }),
                _ => None,
            };
            (rollout, action) = rollout.step(event);
            if let Some(reason) = tripped {
                self.announce(&row, &rollout, NotificationEvent::SoakTripped, Some(reason));
            }
            tracing::info!(
                from,
                to = action.as_ref().map_or("finished", |a| a.step.as_str()),
                "rollout step"
            );
        }
        let state = serde_json::to_string(&rollout).expect("a rollout serializes");
        let status = status_of(&rollout);
        let reason = reason_of(&rollout);
        self.store
            .save_state(row.id, status, &state, reason.as_deref())
            .await?;
        tracing::info!(status = status.as_str(), "rollout finished");
        if let Some(event) = notify::ending(status) {
            self.announce(&row, &rollout, event, reason);
        }
        Ok(())
    }

    /// Hands `event` to the notifications' queue (it never waits).
    fn announce(
        &self,
        row: &DeploymentRow,
        rollout: &Rollout,
        event: NotificationEvent,
        reason: Option<String>,
    ) {
        self.notify.send(
            &self.service.notify,
            Notice {
                rollout: row.id,
                service: row.service.clone(),
                event,
                from_version: common_version(&rollout.targets).map(ToString::to_string),
                to_version: rollout.to.to_string(),
                trigger: row.trigger,
                requested_by: row.requested_by.clone(),
                reason,
            },
        );
    }

    /// Carries out one action, recording a step row per backend around it.
    async fn perform(&self, deployment: i64, action: &Action) -> Result<Event, StoreError> {
        let step = action.step;
        let backends: Vec<Option<&str>> = if action.backends.is_empty() {
            vec![None]
        } else {
            action.backends.iter().map(|b| Some(b.as_str())).collect()
        };
        let rows = self
            .store
            .begin_steps(
                deployment,
                &backends,
                step,
                action.rollback,
                action.version.as_str(),
            )
            .await?;
        let (event, detail) = self.carry_out(deployment, action).await;
        let outcome = match &event {
            Event::Begin
            | Event::Done
            | Event::Pause
            | Event::Resume
            | Event::Abort
            | Event::Approve
            | Event::Promote => StepOutcome::Ok,
            Event::DrainTimedOut { .. } => StepOutcome::TimedOut,
            Event::Failed { .. } => StepOutcome::Failed,
        };
        let detail = match &event {
            Event::Failed { reason, .. } => Some(reason.clone()),
            Event::DrainTimedOut { open_sessions } => Some(format!(
                "drain timed out after {} with {open_sessions} session(s) still open",
                self.service.drain.timeout
            )),
            _ => detail,
        };
        if let Event::Failed { backend, .. } = &event {
            self.keep_logs(action, &rows, backend.as_ref()).await?;
        }
        self.store
            .finish_steps(&rows, outcome, detail.as_deref())
            .await?;
        Ok(event)
    }

    /// Keeps the end of the log of each backend a failed step concerns (the one it failed on,
    /// or every backend of the batch when it does not say), when the step got as far as the
    /// processes: what the rollout page shows under the failure. A log that cannot be read in
    /// [`LOG_TIMEOUT`] is left out; the rollout goes on regardless.
    async fn keep_logs(
        &self,
        action: &Action,
        rows: &[i64],
        failed_on: Option<&BackendName>,
    ) -> Result<(), StoreError> {
        // A surge's arriving instance runs on the other address than the one the action leaves.
        let arriving = matches!(
            action.step,
            Step::SurgeStart | Step::SurgeHealthy | Step::SurgeAdd | Step::SurgeEnable
        );
        if action.step < Step::Stop {
            // Draining and the load balancer's own steps: the application's log says nothing.
            return Ok(());
        }
        let concerned = action
            .backends
            .iter()
            .zip(rows)
            .zip(action.slots.iter().copied())
            .filter(|((backend, _), _)| failed_on.is_none_or(|failed| failed == *backend));
        for ((backend, &row), leaves) in concerned {
            let slot = if arriving { leaves.other() } else { leaves };
            let spec = BackendSpec::of(&self.service.name, self.backend(backend), slot);
            let read =
                tokio::time::timeout(LOG_TIMEOUT, self.runtime.log_tail(&spec, LOG_TAIL_MAX)).await;
            match read {
                Ok(Ok(Some(tail))) => {
                    self.store
                        .save_step_log(row, backend.as_str(), &tail.source, &tail.lines)
                        .await?;
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%backend, %error, "cannot read the failed backend's log");
                }
                Err(_) => {
                    tracing::warn!(%backend, "reading the failed backend's log took too long");
                }
            }
        }
        Ok(())
    }

    async fn carry_out(&self, deployment: i64, action: &Action) -> (Event, Option<String>) {
        let backends = &action.backends;
        let patient = Patient(self.lb.clone());
        let lb: &dyn LoadBalancer = if action.rollback { &patient } else { &*self.lb };
        if action.step == Step::Soak {
            return self.soak(lb, deployment, action).await;
        }
        if action.strategy == StrategyKind::Surge {
            return self.carry_out_surge(lb, action).await;
        }
        let result = match action.step {
            Step::Prepare => self
                .runtime
                .prepare(&action.version)
                .await
                .map_err(|e| (None, e.to_string()))
                .map(|()| None),
            Step::CheckCapacity => self.check_capacity(lb, backends).await.map(|()| None),
            Step::Drain => self
                .set_state(lb, backends, AdminState::Drain)
                .await
                .map(|()| None),
            Step::WaitSessions => match self.wait_sessions(lb, backends).await {
                Ok(Some(open_sessions)) => return (Event::DrainTimedOut { open_sessions }, None),
                Ok(None) => Ok(None),
                Err(error) => Err(error),
            },
            Step::CutSessions => self.cut_sessions(lb, backends).await.map(Some),
            Step::Maint => self
                .set_state(lb, backends, AdminState::Maint)
                .await
                .map(|()| None),
            Step::Stop => self.stop(backends).await.map(|()| None),
            Step::Start => self.start(backends, &action.version).await.map(|()| None),
            Step::WaitHealthy => self.wait_healthy(backends).await.map(|()| None),
            Step::LbCheck => self.lb_check(lb, backends).await.map(|()| None),
            Step::Enable => self
                .set_state(lb, backends, AdminState::Ready)
                .await
                .map(|()| None),
            Step::ConfirmUp => self.confirm_up(lb, backends).await.map(|()| None),
            Step::SurgeStart
            | Step::SurgeHealthy
            | Step::SurgeAdd
            | Step::SurgeEnable
            | Step::Overlap
            | Step::Retire
            | Step::Discard
            // Carried out above, for either strategy.
            | Step::Soak => Err((
                None,
                format!(
                    "{} is a step of a surge, and this rollout is rolling",
                    action.step.as_str()
                ),
            )),
        };
        match result {
            Ok(detail) => (Event::Done, detail),
            Err((backend, reason)) => (Event::Failed { backend, reason }, None),
        }
    }

    /// The configured backend `name` (the engine only names configured backends).
    fn backend(&self, name: &BackendName) -> &crate::settings::BackendSettings {
        self.service
            .backends
            .iter()
            .find(|b| &b.name == name)
            .expect("the engine only names configured backends")
    }

    /// The instance a rolling rollout replaces: the one on the backend's `address`.
    fn spec(&self, name: &BackendName) -> BackendSpec {
        BackendSpec::of(&self.service.name, self.backend(name), Slot::Address)
    }

    /// The service's HAProxy servers that are `backup` on any node, as the rollout begins.
    /// HAProxy's configuration is what makes a server a backup, so it is asked, not Baton's.
    /// If it does not answer within [`BACKUPS_TIMEOUT`], the rollout keeps configuration
    /// order: its first capacity check asks again, and fails before anything is touched if
    /// HAProxy still does not answer. Cancellation-safe (it only reads).
    async fn backup_servers(&self) -> HashSet<String> {
        let asked = tokio::time::timeout(
            BACKUPS_TIMEOUT,
            self.lb.servers(&self.service.haproxy_backend),
        );
        match asked.await {
            Ok(Ok(servers)) => servers
                .into_iter()
                .filter(|s| s.backup)
                .map(|s| s.server)
                .collect(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot tell which servers are backups; rolling in configuration order");
                HashSet::new()
            }
            Err(_) => {
                tracing::warn!(timeout = ?BACKUPS_TIMEOUT, "HAProxy did not say which servers are backups in time; rolling in configuration order");
                HashSet::new()
            }
        }
    }

    async fn servers(
        &self,
        lb: &dyn LoadBalancer,
    ) -> Result<Vec<ServerStatus>, (Option<BackendName>, String)> {
        lb.servers(&self.service.haproxy_backend)
            .await
            .map_err(|e| (None, e.to_string()))
    }

    async fn check_capacity(
        &self,
        lb: &dyn LoadBalancer,
        batch: &[BackendName],
    ) -> Result<(), (Option<BackendName>, String)> {
        let servers = self.servers(lb).await?;
        let leaving: HashSet<&str> = batch.iter().map(BackendName::as_str).collect();
        let nodes: HashSet<&str> = servers.iter().map(|s| s.node.as_str()).collect();
        self.refuse_surged(batch).await?;
        for name in batch {
            for node in &nodes {
                if !servers
                    .iter()
                    .any(|s| s.node == *node && s.server == name.as_str())
                {
                    return Err((
                        Some(name.clone()),
                        format!(
                            "HAProxy node {node} has no server {}/{name}: check haproxy_backend and the backend names",
                            self.service.haproxy_backend
                        ),
                    ));
                }
            }
        }
        if let Some(quick) = servers
            .iter()
            .find(|s| s.fall == Some(1) && leaving.contains(s.server.as_str()))
        {
            return Err((
                BackendName::parse(&quick.server).ok(),
                format!(
                    "HAProxy node {} checks {}/{} with `fall 1`, so a stale check cannot be told from a fresh one and a backend that does not answer could be put in rotation; set `fall 2` or more (recommended: inter 200ms fastinter 100ms downinter 500ms rise 2 fall 2)",
                    quick.node, self.service.haproxy_backend, quick.server
                ),
            ));
        }
        for node in nodes {
            let staying = || {
                servers
                    .iter()
                    .filter(|s| s.node == node && !leaving.contains(s.server.as_str()) && s.is_up())
            };
            if staying().any(|s| !s.backup) {
                continue;
            }
            let names: Vec<&str> = batch.iter().map(BackendName::as_str).collect();
            let backups: Vec<&str> = staying().map(|s| s.server.as_str()).collect();
            let what = if backups.is_empty() {
                "nothing serving".to_owned()
            } else {
                format!(
                    "only the backup server(s) {} UP, and a backup is not capacity",
                    backups.join(", ")
                )
            };
            return Err((
                Some(batch[0].clone()),
                format!(
                    "no other backend is UP on {node} (backup servers do not count): taking {} out would leave {what}",
                    names.join(", ")
                ),
            ));
        }
        Ok(())
    }

    async fn set_state(
        &self,
        lb: &dyn LoadBalancer,
        backends: &[BackendName],
        state: AdminState,
    ) -> Result<(), (Option<BackendName>, String)> {
        for name in backends {
            lb.set_state(&self.service.haproxy_backend, name.as_str(), state)
                .await
                .map_err(|e| (Some(name.clone()), e.to_string()))?;
        }
        Ok(())
    }

    /// `Ok(None)` once no session is open; `Ok(Some(open))` at the drain timeout.
    async fn wait_sessions(
        &self,
        lb: &dyn LoadBalancer,
        backends: &[BackendName],
    ) -> Result<Option<u64>, (Option<BackendName>, String)> {
        self.wait_servers_idle(lb, names(backends)).await
    }

    /// [`Self::wait_sessions`] for HAProxy servers named `batch`.
    async fn wait_servers_idle(
        &self,
        lb: &dyn LoadBalancer,
        batch: HashSet<&str>,
    ) -> Result<Option<u64>, (Option<BackendName>, String)> {
        let deadline = Instant::now() + self.service.drain.timeout.get();
        loop {
            let servers = self.servers(lb).await?;
            let open: u64 = servers
                .iter()
                .filter(|s| batch.contains(s.server.as_str()))
                .map(|s| s.sessions)
                .sum();
            if open == 0 {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Ok(Some(open));
            }
            sleep(POLL).await;
        }
    }

    async fn cut_sessions(
        &self,
        lb: &dyn LoadBalancer,
        backends: &[BackendName],
    ) -> Result<String, (Option<BackendName>, String)> {
        let mut cut = 0;
        for name in backends {
            cut += lb
                .shutdown_sessions(&self.service.haproxy_backend, name.as_str())
                .await
                .map_err(|e| (Some(name.clone()), e.to_string()))?;
        }
        Ok(format!(
            "cut {cut} session(s) still open after the drain timeout of {}",
            self.service.drain.timeout
        ))
    }

    async fn stop(&self, backends: &[BackendName]) -> Result<(), (Option<BackendName>, String)> {
        let results = join_all(backends.iter().map(|name| async move {
            self.runtime
                .stop(&self.spec(name))
                .await
                .map_err(|e| (Some(name.clone()), e.to_string()))
        }))
        .await;
        results.into_iter().collect()
    }

    async fn start(
        &self,
        backends: &[BackendName],
        version: &Version,
    ) -> Result<(), (Option<BackendName>, String)> {
        let results = join_all(backends.iter().map(|name| async move {
            self.runtime
                .start(&self.spec(name), version)
                .await
                .map_err(|e| (Some(name.clone()), e.to_string()))?;
            self.store
                .set_backend_version(self.service.name.as_str(), name.as_str(), version.as_str())
                .await
                .map_err(|e| (Some(name.clone()), e.to_string()))
        }))
        .await;
        results.into_iter().collect()
    }

    async fn wait_healthy(
        &self,
        backends: &[BackendName],
    ) -> Result<(), (Option<BackendName>, String)> {
        let results = join_all(backends.iter().map(|name| self.wait_one_healthy(name))).await;
        results.into_iter().collect()
    }

    /// Probes the health path until `healthy_threshold` passes in a row, failing fast if the
    /// process exits.
    async fn wait_one_healthy(
        &self,
        name: &BackendName,
    ) -> Result<(), (Option<BackendName>, String)> {
        self.wait_instance_healthy(name, &self.spec(name)).await
    }

    /// [`Self::wait_one_healthy`] for the instance `spec` of backend `name`.
    async fn wait_instance_healthy(
        &self,
        name: &BackendName,
        spec: &BackendSpec,
    ) -> Result<(), (Option<BackendName>, String)> {
        let health = &self.service.health;
        let url = format!("http://{}{}", spec.address, health.path);
        let deadline = Instant::now() + health.start_timeout.get();
        let mut passes = 0;
        let mut last = String::from("no answer yet");
        loop {
            match self
                .probe
                .probe(spec.address, &health.path, health.timeout.get())
                .await
            {
                Ok(()) => passes += 1,
                Err(failure) => {
                    // Only a backend that does not answer may have exited; asking the runtime
                    // costs an ssh round trip on another host, so a healthy one is not asked.
                    if let Ok(BackendRun::Stopped { exit }) = self.runtime.status(spec).await {
                        let how = exit.map_or_else(
                            || "it is not running".to_owned(),
                            |exit| format!("it exited ({exit})"),
                        );
                        return Err((
                            Some(name.clone()),
                            format!("the new process stopped before it became healthy: {how}"),
                        ));
                    }
                    passes = 0;
                    last = match failure {
                        ProbeFailure::Status(status) => format!("{url} answered {status}"),
                        ProbeFailure::TimedOut => format!("{url}: timed out"),
                        ProbeFailure::Unanswered(error) => format!("{url}: {error}"),
                    };
                }
            }
            if passes >= health.healthy_threshold {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err((
                    Some(name.clone()),
                    format!(
                        "not healthy within the start timeout of {} ({passes}/{} passes; last: {last})",
                        health.start_timeout, health.healthy_threshold
                    ),
                ));
            }
            // Until the new process first answers, look often: it is usually ready long
            // before a whole interval has passed.
            sleep(if passes == 0 {
                health.interval.get().min(POLL)
            } else {
                health.interval.get()
            })
            .await;
        }
    }

    /// Lets HAProxy's own check run without traffic (drain), then waits until every node
    /// sees the server pass it.
    async fn lb_check(
        &self,
        lb: &dyn LoadBalancer,
        backends: &[BackendName],
    ) -> Result<(), (Option<BackendName>, String)> {
        self.set_state(lb, backends, AdminState::Drain).await?;
        self.wait_lb_check(lb, names(backends)).await
    }

    /// Waits until every node sees HAProxy's check pass on the drained servers named `batch`.
    async fn wait_lb_check(
        &self,
        lb: &dyn LoadBalancer,
        batch: HashSet<&str>,
    ) -> Result<(), (Option<BackendName>, String)> {
        let deadline = Instant::now() + self.service.health.start_timeout.get();
        loop {
            let servers = self.servers(lb).await?;
            let pending: Vec<&ServerStatus> = servers
                .iter()
                .filter(|s| batch.contains(s.server.as_str()))
                .filter(|s| !lb_check_passed(s))
                .collect();
            let Some(first) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err((
                    backend_of(&first.server),
                    format!(
                        "HAProxy's health check did not pass on {} within {} (status {}, check {})",
                        first.node,
                        self.service.health.start_timeout,
                        first.status,
                        first.check.as_ref().map_or("none", |check| check.code())
                    ),
                ));
            }
            sleep(POLL).await;
        }
    }

    async fn confirm_up(
        &self,
        lb: &dyn LoadBalancer,
        backends: &[BackendName],
    ) -> Result<(), (Option<BackendName>, String)> {
        self.wait_up(lb, names(backends)).await
    }

    /// Waits until every node reports the servers named `batch` UP.
    async fn wait_up(
        &self,
        lb: &dyn LoadBalancer,
        batch: HashSet<&str>,
    ) -> Result<(), (Option<BackendName>, String)> {
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        loop {
            let servers = self.servers(lb).await?;
            let down = servers
                .iter()
                .find(|s| batch.contains(s.server.as_str()) && !s.is_up());
            let Some(down) = down else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err((
                    backend_of(&down.server),
                    format!(
                        "HAProxy node {} still reports {} as {} after {:?}",
                        down.node, down.server, down.status, CONFIRM_TIMEOUT
                    ),
                ));
            }
            sleep(POLL).await;
        }
    }
}

/// The backend an HAProxy server belongs to: its name, or the part before `:surge`.
fn backend_of(server: &str) -> Option<BackendName> {
    BackendName::parse(server.split(':').next().unwrap_or(server)).ok()
}

/// The batch's names, to pick its servers out of every server of the backend in one pass.
fn names(backends: &[BackendName]) -> HashSet<&str> {
    backends.iter().map(BackendName::as_str).collect()
}

/// How long a rollback waits before asking an HAProxy node that did not answer again.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);

/// The load balancer as a rollback sees it: a node that does not answer is asked again, every
/// [`UNREACHABLE_RETRY`], until it does (or Baton stops: the wait runs inside the executor's
/// shutdown `select!`). Giving up would leave a backend drained or in maint. Going forward, a
/// silent node fails the step instead, and the rollback that follows is patient.
struct Patient(Arc<dyn LoadBalancer>);

impl Patient {
    async fn retry<T, F, Fut>(call: F) -> Result<T, LbError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, LbError>>,
    {
        loop {
            match call().await {
                Err(LbError::Unreachable { node, reason, .. }) => {
                    tracing::warn!(%node, %reason, "HAProxy does not answer; the rollback waits for it");
                    sleep(UNREACHABLE_RETRY).await;
                }
                other => return other,
            }
        }
    }
}

#[async_trait::async_trait]
impl LoadBalancer for Patient {
    async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), LbError> {
        Self::retry(|| self.0.set_state(backend, server, state)).await
    }

    async fn servers(&self, backend: &str) -> Result<Vec<ServerStatus>, LbError> {
        Self::retry(|| self.0.servers(backend)).await
    }

    async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<u64, LbError> {
        Self::retry(|| self.0.shutdown_sessions(backend, server)).await
    }

    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: crate::domain::BackendAddr,
        like: &str,
        inter: Duration,
    ) -> Result<(), LbError> {
        Self::retry(|| self.0.add_server(backend, server, address, like, inter)).await
    }

    async fn remove_server(&self, backend: &str, server: &str) -> Result<(), LbError> {
        Self::retry(|| self.0.remove_server(backend, server)).await
    }
}

/// A drained server whose fresh HAProxy check passes is the settled `Drain` (HAProxy's bare
/// `DRAIN`). Right after maint it is `Drain` while `changing` (`DRAIN 1/2`) with the check result
/// from before maint, which proves nothing; with `fall >= 2` that ends only after a new check.
/// Without checks HAProxy says `no check` and Baton's own probe is what counted. A drain by an
/// agent check hides the health check's state, so it never counts.
fn lb_check_passed(server: &ServerStatus) -> bool {
    match &server.status {
        ServerState::Drain { changing: None } | ServerState::NoCheck => true,
        ServerState::Drain { changing: Some(_) }
        | ServerState::Up { .. }
        | ServerState::Nolb { .. }
        | ServerState::AgentDrain
        | ServerState::Maint { .. }
        | ServerState::Down { .. }
        | ServerState::AgentDown
        | ServerState::Other { .. } => false,
    }
}

mod repair;
pub use repair::Repairs;
mod soak;
mod surge;

#[cfg(test)]
mod tests;
