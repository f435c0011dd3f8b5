//! The fleet: each configured service with its load balancer and runtime, the rollout queue
//! in front of them, and what the API reports about them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use app::model::Trigger;
use app::model::{
    ActiveRollout, BackendStatus, ControlAction, DeploymentDetail, DeploymentFilter,
    DeploymentPage, NodeStatus, OverlapView, RolloutStatus, RolloutTraffic, ServiceStatus,
};
use serde::Serialize;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{InvalidValue, Version};
use crate::drivers::haproxy::{HaproxyDriver, HaproxyOptions};
use crate::hosts::{Host, Hosts};
use crate::metrics::Metrics;
use crate::notify::Notifier;

use crate::drivers::{BackendRun, BackendSpec, LoadBalancer, LogTail, Runtime};
use crate::replica::Leadership;
use crate::rollout::engine::{self, Rollout, Target};
use crate::rollout::executor::{Controls, Repairs, ServiceRunner, recorded_targets};
use crate::settings::{Approval, LoadBalancerSettings, ServiceSettings, Settings};

mod hosts;
mod leading;
mod runtimes;
use crate::store::{DeploymentQuery, DeploymentRow, NewDeployment, Store, StoreError};

/// One service and the drivers that act on it.
pub struct ServiceHandle {
    pub settings: Arc<ServiceSettings>,
    pub lb: Arc<dyn LoadBalancer>,
    pub runtime: Arc<dyn Runtime>,
    wake: Arc<Notify>,
    /// Pause, resume and abort requests for the service's worker, taken at the next step.
    controls: Controls,
    /// Backends whose host came back, for the service's worker to repair between rollouts.
    repairs: Repairs,
}

/// A service's settings with the load balancer and runtime that act on it.
pub type ServiceDrivers = (
    Arc<ServiceSettings>,
    Arc<dyn LoadBalancer>,
    Arc<dyn Runtime>,
);

/// The fleet's state as the live streams send it, encoded once for every browser that watches.
pub struct Snapshot {
    pub services: Vec<ServiceStatus>,
    pub json: Box<str>,
}

impl Snapshot {
    pub fn new(services: Vec<ServiceStatus>) -> Self {
        let json = serde_json::to_string(&services)
            .expect("a fleet serializes")
            .into_boxed_str();
        Self { services, json }
    }
}

/// Every service Baton manages.
pub struct Fleet {
    services: Vec<ServiceHandle>,
    store: Store,
    http: reqwest::Client,
    /// The fleet's state as last seen, for the live streams.
    snapshots: watch::Sender<Arc<Snapshot>>,
    hosts: Hosts,
    /// What `GET /metrics` shows; the rollout workers count into it.
    metrics: Metrics,
    /// The notifications' queue: the leader's rollout workers put notices on it.
    notifier: Notifier,
}

/// How often the fleet's state is refreshed for live streams when nothing else happens.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// The least time between two refreshes that rollout events ask for. Each one asks HAProxy for
/// every server and sends every watching browser the whole fleet (116 KiB for 500 backends).
const SNAPSHOT_SPACING: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no service is named {0:?}")]
    UnknownService(String),
    #[error(transparent)]
    InvalidVersion(#[from] InvalidValue),
    #[error("no deployment has id {0}")]
    UnknownDeployment(i64),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} has no earlier successful version to roll back to")]
    NothingToRollBackTo(String),
    #[error(
        "rollout {id} was requested by {requester}: it needs the approval of another deployer or admin"
    )]
    SelfApproval { id: i64, requester: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a backend's log cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("no service is named {0:?}")]
    UnknownService(String),
    #[error("service {service} has no backend named {backend:?}")]
    UnknownBackend { service: String, backend: String },
    /// The runtime could not read it (its host is unreachable, say).
    #[error("{0}")]
    Unreadable(String),
}

/// A rollout accepted into the queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Queued {
    pub id: i64,
    pub status: RolloutStatus,
    /// A queued rollout took the new version instead of a new rollout being queued.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub coalesced: bool,
    /// The service's rollouts wait for another deployer's approval when their turn comes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub needs_approval: bool,
}

/// A request to roll a service out to a version.
#[derive(Debug, Clone, Copy)]
pub struct DeployRequest<'a> {
    pub service: &'a str,
    /// Unvalidated: [`Fleet::request`] checks it against the version pattern.
    pub version: &'a str,
    pub trigger: Trigger,
    /// A user, a token's name, or a webhook delivery.
    pub requested_by: Option<&'a str>,
    /// The user account behind the request (signed in, or the owner of the token used).
    pub requester_user: Option<i64>,
    /// Replace the version of a rollout still queued for the service rather than queue
    /// another one (pushes do this: only the newest commit matters).
    pub coalesce: bool,
}

impl Queued {
    /// What the audit line of the request adds: whether the rollout waits for an approval.
    pub fn audit_note(&self) -> &'static str {
        if self.needs_approval {
            ", awaiting approval"
        } else {
            ""
        }
    }
}

impl Fleet {
    /// Builds the real drivers for every service in `settings`.
    pub fn from_settings(settings: &Settings, store: Store) -> Self {
        let lbs: HashMap<_, Arc<dyn LoadBalancer>> = settings
            .load_balancers
            .iter()
            .map(|lb| {
                let driver: Arc<dyn LoadBalancer> = Arc::new(HaproxyDriver::new(
                    lb.runtime_api.clone(),
                    haproxy_options(lb),
                ));
                (lb.name.clone(), driver)
            })
            .collect();
        let hosts = Hosts::new(&settings.hosts, &settings.server.state_dir.join("ssh"));
        let services = settings
            .services
            .iter()
            .map(|service| {
                (
                    Arc::new(service.clone()),
                    lbs[&service.load_balancer].clone(),
                    runtimes::runtime_for(service, settings, &hosts),
                )
            })
            .collect();
        Self::with_drivers(services, store).with_hosts(hosts)
    }

    /// The `[[host]]`s the services' backends run on: their state shows in the fleet view, and
    /// one that comes back after being unreachable has its backends reconciled.
    pub fn with_hosts(mut self, hosts: Hosts) -> Self {
        self.hosts = hosts;
        self
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// A fleet over the given drivers (tests pass fakes here).
    pub fn with_drivers(services: Vec<ServiceDrivers>, store: Store) -> Self {
        let metrics = Metrics::new(
            services
                .iter()
                .map(|(settings, _, _)| settings.name.as_str()),
        );
        let services = services
            .into_iter()
            .map(|(settings, lb, runtime)| ServiceHandle {
                settings,
                lb,
                runtime,
                wake: Arc::new(Notify::new()),
                controls: Controls::default(),
                repairs: Repairs::default(),
            })
            .collect();
        let notifier = Notifier::new(store.clone());
        Self {
            services,
            store,
            http: reqwest::Client::new(),
            snapshots: watch::Sender::new(Arc::new(Snapshot::new(Vec::new()))),
            hosts: Hosts::default(),
            metrics,
            notifier,
        }
    }

    /// This Baton's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn services(&self) -> &[ServiceHandle] {
        &self.services
    }

    /// The last `lines` lines of a backend's log as its runtime reads it now (`None`: the
    /// runtime keeps none, or nothing was written yet).
    pub async fn backend_log(
        &self,
        service: &str,
        backend: &str,
        lines: usize,
    ) -> Result<Option<LogTail>, LogError> {
        let handle = self
            .handle(service)
            .map_err(|_| LogError::UnknownService(service.to_owned()))?;
        let unknown = || LogError::UnknownBackend {
            service: service.to_owned(),
            backend: backend.to_owned(),
        };
        let settings = handle
            .settings
            .backends
            .iter()
            .find(|b| b.name.as_str() == backend)
            .ok_or_else(unknown)?;
        // The instance the backend runs as now (a surge may have left it on its other address).
        let slot = self
            .store
            .backend_slots(service)
            .await
            .map_err(|error| LogError::Unreadable(error.to_string()))?
            .into_iter()
            .find_map(|(name, slot)| (name == backend).then_some(slot))
            .unwrap_or_default();
        let spec = BackendSpec::of(&handle.settings.name, settings, slot);
        handle
            .runtime
            .log_tail(&spec, lines)
            .await
            .map_err(|error| LogError::Unreadable(error.to_string()))
    }

    fn handle(&self, service: &str) -> Result<&ServiceHandle, DeployError> {
        self.services
            .iter()
            .find(|handle| handle.settings.name.as_str() == service)
            .ok_or_else(|| DeployError::UnknownService(service.to_owned()))
    }

    /// Starts the fleet's watchers and, while this replica leads, one rollout worker per
    /// service (each first brings up backends that are not running; see `leading.rs`), tracked
    /// by `tasks` and stopped by `shutdown`.
    pub fn spawn(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        leadership: &Leadership,
    ) {
        tasks.spawn(self.clone().watch(shutdown.clone()));
        if let Some(worker) = self.notifier.take_worker() {
            tasks.spawn(worker.run(shutdown.clone()));
        }
        for host in self.hosts.iter() {
            tasks.spawn(hosts::watch(
                self.clone(),
                host.clone(),
                leadership.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(self.clone().lead(leadership.clone(), shutdown.clone()));
    }

    /// Stops every backend of every service, all at once. `baton demo` does this when it ends,
    /// since it started the fleet; `baton serve` never does: there backends outlive Baton and
    /// a restarted Baton adopts them.
    pub async fn stop_backends(&self) {
        let stops = self.services.iter().flat_map(|handle| {
            // Both instances of each backend: a surge may have left either one current.
            let instances = handle.settings.backends.iter().flat_map(|backend| {
                let surge = backend
                    .surge_address
                    .map(|_| crate::domain::Slot::SurgeAddress);
                std::iter::once(crate::domain::Slot::Address)
                    .chain(surge)
                    .map(move |slot| (backend, slot))
            });
            instances.map(move |(backend, slot)| async move {
                let spec = BackendSpec::of(&handle.settings.name, backend, slot);
                match handle.runtime.stop(&spec).await {
                    Ok(()) => tracing::info!(service = %spec.service, backend = %spec.name, "backend stopped"),
                    Err(error) => tracing::warn!(service = %spec.service, backend = %spec.name, %error, "cannot stop the backend"),
                }
            })
        });
        futures::future::join_all(stops).await;
    }

    /// Asks every service with backends on `host` to repair them (their host came back).
    fn repair_host(&self, host: &Host) {
        for handle in &self.services {
            let there: Vec<_> = handle
                .settings
                .backends
                .iter()
                .filter(|backend| backend.host.as_ref() == Some(host.host_name()))
                .map(|backend| backend.name.clone())
                .collect();
            if !there.is_empty() {
                tracing::info!(host = %host.host_name(), service = %handle.settings.name, backends = there.len(), "host is back; repairing its backends");
                handle.repairs.request(there);
                handle.wake.notify_one();
            }
        }
    }

    /// The fleet's state, refreshed every [`SNAPSHOT_INTERVAL`] and after rollout events (at most
    /// once per [`SNAPSHOT_SPACING`] while they keep coming).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut events = self.store.subscribe();
        loop {
            let refreshed = tokio::time::Instant::now();
            match self.status().await {
                Ok(status) => {
                    self.snapshots.send_if_modified(|current| {
                        let changed = current.services != status;
                        if changed {
                            *current = Arc::new(Snapshot::new(status));
                        }
                        changed
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot refresh the fleet's state"),
            }
            tokio::select! {
                _ = tokio::time::sleep(SNAPSHOT_INTERVAL) => continue,
                _ = events.recv() => {}
                _ = shutdown.cancelled() => return,
            }
            // A rollout writes events in bursts (two per backend and step: a thousand a batch
            // of 50): one refresh shows them all. An event after a quiet spell is shown at
            // once; within a burst, refreshes are at least SNAPSHOT_SPACING apart.
            tokio::select! {
                _ = tokio::time::sleep_until(refreshed + SNAPSHOT_SPACING) => {}
                _ = shutdown.cancelled() => return,
            }
            while !matches!(
                events.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
        }
    }

    /// Asks the worker running rollout `id` to pause, resume, abort, approve or promote it. A
    /// queued rollout can only be aborted (it is then cancelled at once). Approving is refused
    /// to whoever requested the rollout: the same user account (`user`: signed in, or owning
    /// the token used), or the same name (`by`) when an account is missing on either side. A
    /// webhook's rollout has no person behind it, so any deployer may approve it.
    pub async fn control(
        &self,
        id: i64,
        action: ControlAction,
        by: Option<&str>,
        user: Option<i64>,
    ) -> Result<(), DeployError> {
        let row = self
            .store
            .deployment(id)
            .await?
            .ok_or(DeployError::UnknownDeployment(id))?;
        let conflict = |why: String| Err(DeployError::Conflict(why));
        match (row.status, action) {
            (RolloutStatus::Queued, ControlAction::Abort) => {
                let reason = format!(
                    "cancelled before it started{}",
                    by.map(|by| format!(" by {by}")).unwrap_or_default()
                );
                if self.store.cancel_queued(id, &reason).await? {
                    self.metrics
                        .rollout_finished(&row.service, RolloutStatus::Cancelled);
                    self.store.record_control(id, action, by).await?;
                    return Ok(());
                }
                // The worker claimed it meanwhile: abort it like a running one.
            }
            (
                RolloutStatus::Queued,
                ControlAction::Pause
                | ControlAction::Resume
                | ControlAction::Approve
                | ControlAction::Promote,
            ) => {
                return conflict(format!(
                    "rollout {id} has not started yet; a queued rollout can only be aborted"
                ));
            }
            (RolloutStatus::AwaitingApproval, ControlAction::Approve) => {
                let same_account = row.requester_user.is_some() && row.requester_user == user;
                if let Some(requester) = row.requested_by.as_deref()
                    && row.trigger != Trigger::Webhook
                    && (same_account || by == Some(requester))
                {
                    return Err(DeployError::SelfApproval {
                        id,
                        requester: requester.to_owned(),
                    });
                }
            }
            (RolloutStatus::AwaitingApproval, ControlAction::Abort)
            | (RolloutStatus::AwaitingPromote, ControlAction::Promote | ControlAction::Abort) => {}
            (
                RolloutStatus::AwaitingApproval,
                ControlAction::Pause | ControlAction::Resume | ControlAction::Promote,
            ) => {
                return conflict(format!(
                    "rollout {id} is awaiting approval: approve it to begin, or abort it"
                ));
            }
            (
                RolloutStatus::AwaitingPromote,
                ControlAction::Pause | ControlAction::Resume | ControlAction::Approve,
            ) => {
                return conflict(format!(
                    "rollout {id} is awaiting promotion: promote it to go on past the canaries, or abort it to put them back"
                ));
            }
            (RolloutStatus::Running | RolloutStatus::Paused, ControlAction::Approve) => {
                return conflict(format!("rollout {id} is not awaiting approval"));
            }
            (RolloutStatus::Running | RolloutStatus::Paused, ControlAction::Promote) => {
                return conflict(format!(
                    "rollout {id} is not awaiting promotion (only canaries that are done and serving can be promoted)"
                ));
            }
            (RolloutStatus::Running, ControlAction::Resume) => {
                return conflict(format!("rollout {id} is running, not paused"));
            }
            (RolloutStatus::Paused, ControlAction::Pause) => {
                return conflict(format!("rollout {id} is already paused"));
            }
            (RolloutStatus::Running, ControlAction::Pause | ControlAction::Abort)
            | (RolloutStatus::Paused, ControlAction::Resume | ControlAction::Abort) => {}
            (
                status @ (RolloutStatus::Succeeded
                | RolloutStatus::Failed
                | RolloutStatus::RolledBack
                | RolloutStatus::Cancelled),
                _,
            ) => {
                return conflict(format!("rollout {id} has already ended ({status})"));
            }
        }
        let handle = self.handle(&row.service)?;
        let event = self.store.record_control(id, action, by).await?;
        handle.controls.push_recorded(event, id, action);
        handle.wake.notify_one();
        tracing::info!(
            rollout_id = id,
            action = action.as_str(),
            "control requested"
        );
        Ok(())
    }

    /// Queues a rollout (or, with `coalesce`, replaces the version of one still queued).
    pub async fn request(&self, request: DeployRequest<'_>) -> Result<Queued, DeployError> {
        let service = request.service;
        let handle = self.handle(service)?;
        let version = Version::parse(request.version)?;
        // The targets and `from_version` are worked out again when the rollout begins (see the
        // executor); until then `from_version` is only known when nothing is ahead of it.
        let ahead = self.store.unfinished_count(service).await?;
        let targets = recorded_targets(&self.store, &handle.settings).await?;
        let from = common_version(&targets).filter(|_| ahead == 0);
        let settings = &handle.settings;
        let rollout = Rollout::new(
            version.clone(),
            targets,
            settings.batch_size as usize,
            settings.auto_rollback,
        )
        .with_canary(settings.canary as usize)
        .with_approval(settings.approval.is_some());
        let state = serde_json::to_string(&rollout).expect("a rollout serializes");
        let trigger = request.trigger;
        let new = NewDeployment {
            service,
            from_version: from.as_deref(),
            to_version: version.as_str(),
            trigger,
            requested_by: request.requested_by,
            state: &state,
        };
        if request.coalesce
            && let Some(id) = self.store.replace_queued(&new).await?
        {
            tracing::info!(rollout_id = id, service, version = %version, %trigger, "a newer request replaced the queued rollout's version");
            return Ok(Queued {
                id,
                status: RolloutStatus::Queued,
                coalesced: true,
                needs_approval: settings.approval.is_some(),
            });
        }
        let id = self
            .store
            .insert_deployment_by(&new, request.requester_user)
            .await?;
        handle.wake.notify_one();
        tracing::info!(rollout_id = id, service, version = %version, %trigger, "rollout queued");
        // With nothing ahead of it, the worker takes it at once.
        Ok(Queued {
            id,
            status: match (ahead, settings.approval) {
                (0, Some(Approval::Start)) => RolloutStatus::AwaitingApproval,
                (0, None) => RolloutStatus::Running,
                (_, _) => RolloutStatus::Queued,
            },
            coalesced: false,
            needs_approval: settings.approval.is_some(),
        })
    }

    /// Every service with its backends (version, HAProxy status on each node, open sessions)
    /// and its rollout in progress.
    pub async fn status(&self) -> Result<Vec<ServiceStatus>, StoreError> {
        let mut views = Vec::with_capacity(self.services.len());
        for handle in &self.services {
            let settings = &handle.settings;
            let service = settings.name.as_str();
            let targets = recorded_targets(&self.store, &handle.settings).await?;
            let current = common_version(&targets);
            let (servers, load_balancer_error) =
                match handle.lb.servers(&settings.haproxy_backend).await {
                    Ok(servers) => (servers, None),
                    Err(error) => (Vec::new(), Some(error.to_string())),
                };
            // Each server's entries by name, in node order: one pass, not one per backend.
            let mut by_server: HashMap<String, Vec<NodeStatus>> = HashMap::new();
            for s in servers {
                by_server.entry(s.server).or_default().push(NodeStatus {
                    node: s.node,
                    status: s.status,
                    check: s.check,
                    sessions: s.sessions,
                    backup: s.backup,
                });
            }
            let backends = settings
                .backends
                .iter()
                .zip(targets)
                .map(|(backend, target)| {
                    // The instance recorded as current, and the other one while a surge has
                    // both in the load balancer.
                    let other = target.slot.other();
                    let overlap =
                        by_server
                            .remove(&backend.haproxy_server(other))
                            .map(|load_balancer| OverlapView {
                                server: backend.haproxy_server(other),
                                address: backend.address_of(other).to_string(),
                                version: None,
                                load_balancer,
                            });
                    let status = BackendStatus {
                        name: backend.name.to_string(),
                        address: backend.address_of(target.slot).to_string(),
                        version: target.previous.to_string(),
                        load_balancer: by_server
                            .remove(&backend.haproxy_server(target.slot))
                            .unwrap_or_default(),
                        host: backend
                            .host
                            .as_ref()
                            .and_then(|name| self.hosts.get(name))
                            .map(|host| host.view()),
                        overlap,
                    };
                    (status, backend, other)
                })
                .collect::<Vec<_>>();
            let mut statuses = Vec::with_capacity(backends.len());
            for (mut status, backend, other) in backends {
                // What the other instance runs: asked only while a surge has both in HAProxy.
                if let Some(overlap) = &mut status.overlap {
                    let spec = BackendSpec::of(&settings.name, backend, other);
                    if let Ok(BackendRun::Running { version, .. }) =
                        handle.runtime.status(&spec).await
                    {
                        overlap.version = Some(version.to_string());
                    }
                }
                statuses.push(status);
            }
            let backends = statuses;
            let active = self.store.next_deployment(service).await?;
            let unfinished = self.store.unfinished_count(service).await?;
            let suggested_version = self
                .store
                .recent_versions(service, None, 1)
                .await?
                .into_iter()
                .next()
                .map(|(to_version, _)| to_version)
                .or_else(|| current.clone());
            views.push(ServiceStatus {
                name: service.to_owned(),
                load_balancer: settings.load_balancer.to_string(),
                haproxy_backend: settings.haproxy_backend.clone(),
                backends,
                load_balancer_error,
                active: active.as_ref().map(active_rollout),
                queued: u32::try_from((unfinished - 1).max(0)).unwrap_or(u32::MAX),
                suggested_version,
                rollback_version: self.rollback_version(handle, current.as_deref()).await?,
            });
        }
        Ok(views)
    }

    /// The version a rollback goes to: the newest version a rollout reached (or left) with
    /// success that is not the one running now, else the initial version.
    async fn rollback_version(
        &self,
        handle: &ServiceHandle,
        current: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let succeeded = self
            .store
            .recent_versions(
                handle.settings.name.as_str(),
                Some(RolloutStatus::Succeeded),
                50,
            )
            .await?;
        let initial = handle.settings.runtime.initial_version.to_string();
        Ok(succeeded
            .into_iter()
            .flat_map(|(to_version, from_version)| [Some(to_version), from_version])
            .flatten()
            .chain(std::iter::once(initial))
            .find(|version| Some(version.as_str()) != current))
    }

    /// Queues a rollout of the service back to its previous good version.
    pub async fn rollback(
        &self,
        service: &str,
        requested_by: Option<&str>,
        requester_user: Option<i64>,
    ) -> Result<Queued, DeployError> {
        let handle = self.handle(service)?;
        let targets = recorded_targets(&self.store, &handle.settings).await?;
        let current = common_version(&targets);
        let version = self
            .rollback_version(handle, current.as_deref())
            .await?
            .ok_or_else(|| DeployError::NothingToRollBackTo(service.to_owned()))?;
        self.request(DeployRequest {
            service,
            version: &version,
            trigger: Trigger::Rollback,
            requested_by,
            requester_user,
            coalesce: false,
        })
        .await
    }

    /// One page of the history, newest first: the newest, the one below `before` (older), or
    /// the one just above `after` (newer), with the cursors to the pages on either side.
    pub async fn deployments(
        &self,
        filter: &DeploymentFilter,
    ) -> Result<DeploymentPage, StoreError> {
        let limit = filter.limit.unwrap_or(50).clamp(1, 200) as usize;
        let query = |before, after, limit: usize| DeploymentQuery {
            service: filter.service.as_deref(),
            status: filter.status,
            before,
            after,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        // One row more than a page, on the side away from the cursor, says whether there is
        // another page that way.
        let mut rows = self
            .store
            .deployments(&query(filter.before, filter.after, limit + 1))
            .await?;
        let more = rows.len() > limit;
        if more && filter.after.is_some() {
            rows.drain(..rows.len() - limit);
        } else {
            rows.truncate(limit);
        }
        // The other way, whether anything at all lies beyond this page.
        let (newer, older) = if filter.after.is_some() {
            let older = match rows.last() {
                Some(last) => !self
                    .store
                    .deployments(&query(Some(last.id), None, 1))
                    .await?
                    .is_empty(),
                None => false,
            };
            (more, older)
        } else {
            let newer = match (filter.before, rows.first()) {
                (Some(_), Some(first)) => !self
                    .store
                    .deployments(&query(None, Some(first.id), 1))
                    .await?
                    .is_empty(),
                _ => false,
            };
            (newer, more)
        };
        Ok(DeploymentPage {
            next_before: rows.last().filter(|_| older).map(|row| row.id),
            prev_after: rows.first().filter(|_| newer).map(|row| row.id),
            deployments: rows.into_iter().map(Into::into).collect(),
        })
    }

    /// What each backend served while rollout `id` ran, as sampled; `None` if no rollout has
    /// that id.
    pub async fn traffic(&self, id: i64) -> Result<Option<RolloutTraffic>, StoreError> {
        if self.store.deployment(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.store.traffic(id).await?))
    }

    /// A rollout with its whole timeline.
    pub async fn deployment(&self, id: i64) -> Result<Option<DeploymentDetail>, StoreError> {
        // The event id first: whatever changes after it is read is sent again by the stream
        // (applying an event twice changes nothing), while an id read last could claim a
        // change the rows read before it do not show yet.
        let last_event_id = self.store.last_event_id(id).await?;
        let Some(row) = self.store.deployment(id).await? else {
            return Ok(None);
        };
        let steps = self.store.steps(id).await?;
        let handle = self.handle(&row.service).ok();
        let mut backends: Vec<String> = match handle {
            Some(handle) => handle
                .settings
                .backends
                .iter()
                .map(|b| b.name.to_string())
                .collect(),
            None => Vec::new(),
        };
        // What was asked and has not taken effect, by the same rule the page applies to the
        // live events, so a reload shows what the stream showed.
        let pending = self
            .store
            .newest_control(id)
            .await?
            .filter(|pending| !pending.fulfilled_by(row.status));
        for step in &steps {
            if let Some(backend) = &step.backend
                && !backends.contains(backend)
            {
                backends.push(backend.clone());
            }
        }
        let logs = self.store.step_logs(id).await?;
        // Approving and promoting are accepted only while the rollout awaits them, so who
        // asked is who decided.
        let approved_by = self
            .store
            .last_asked(id, ControlAction::Approve)
            .await?
            .flatten();
        let promoted_by = self
            .store
            .last_asked(id, ControlAction::Promote)
            .await?
            .flatten();
        Ok(Some(DeploymentDetail {
            deployment: row.into(),
            backends,
            steps: steps.into_iter().map(Into::into).collect(),
            last_event_id,
            pending,
            logs,
            approved_by,
            promoted_by,
        }))
    }
}

/// Where the rollout in `row` is, from its saved engine state.
fn active_rollout(row: &DeploymentRow) -> ActiveRollout {
    let rollout = row
        .state
        .as_deref()
        .and_then(|state| serde_json::from_str::<Rollout>(state).ok());
    let action = rollout.as_ref().and_then(Rollout::action);
    ActiveRollout {
        id: row.id,
        status: row.status,
        to_version: row.to_version.clone(),
        backends: action
            .as_ref()
            .map(|a| a.backends.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        step: action.as_ref().map(|a| a.step),
        rolling_back: action.as_ref().is_some_and(|a| a.rollback),
        done: rollout.as_ref().map_or(0, |r| r.backends_done() as u32),
        total: rollout.as_ref().map_or(0, |r| r.targets.len() as u32),
    }
}

/// The version every target runs, if they agree.
fn common_version(targets: &[Target]) -> Option<String> {
    engine::common_version(targets).map(ToString::to_string)
}

/// The `[[load_balancer]]`'s timeouts and retries, the driver's defaults where it sets none.
fn haproxy_options(lb: &LoadBalancerSettings) -> HaproxyOptions {
    let defaults = HaproxyOptions::default();
    HaproxyOptions {
        command_timeout: lb
            .command_timeout
            .map_or(defaults.command_timeout, |timeout| timeout.get()),
        attempts: lb.attempts.unwrap_or(defaults.attempts),
        backoff: lb.backoff.map_or(defaults.backoff, |backoff| backoff.get()),
    }
}

/// Starts every backend that is not running at its recorded version (or the initial one), unless
/// a rollout of the service is unfinished: that rollout knows better, and resumes first.
async fn bring_up(runner: &ServiceRunner, store: &Store) -> Result<(), StoreError> {
    let service = &runner.service;
    if store
        .next_deployment(service.name.as_str())
        .await?
        .is_some_and(|row| row.status != RolloutStatus::Queued)
    {
        return Ok(());
    }
    let recorded: HashMap<String, String> = store
        .backend_versions(service.name.as_str())
        .await?
        .into_iter()
        .collect();
    // The instance recorded as current: a surge may have left it on the surge address.
    let slots: HashMap<String, crate::domain::Slot> = store
        .backend_slots(service.name.as_str())
        .await?
        .into_iter()
        .collect();
    for backend in &service.backends {
        let slot = slots
            .get(backend.name.as_str())
            .copied()
            .unwrap_or_default();
        let spec = BackendSpec::of(&service.name, backend, slot);
        let version = recorded
            .get(backend.name.as_str())
            .and_then(|v| Version::parse(v).ok())
            .unwrap_or_else(|| service.runtime.initial_version.clone());
        match runner.runtime.status(&spec).await {
            Ok(BackendRun::Running {
                version: running,
                pid,
            }) => {
                tracing::info!(service = %service.name, backend = %backend.name, version = %running, ?pid, "adopted a running backend");
                store
                    .set_backend_version(
                        service.name.as_str(),
                        backend.name.as_str(),
                        running.as_str(),
                    )
                    .await?;
            }
            Ok(BackendRun::Stopped { .. }) => {
                tracing::info!(service = %service.name, backend = %backend.name, %version, "starting a backend that is not running");
                match runner.runtime.start(&spec, &version).await {
                    Ok(()) => {
                        store
                            .set_backend_version(
                                service.name.as_str(),
                                backend.name.as_str(),
                                version.as_str(),
                            )
                            .await?
                    }
                    Err(error) => {
                        tracing::error!(service = %service.name, backend = %backend.name, %error, "cannot start the backend")
                    }
                }
            }
            Err(error) => {
                tracing::error!(service = %service.name, backend = %backend.name, %error, "cannot tell whether the backend runs")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use app::model::StepKind;

    use super::*;
    use crate::drivers::fake::{CallLog, Checks, FakeLb, FakeRuntime, What};
    use crate::settings::EnvOverrides;

    const CONFIG: &str = r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "web"
load_balancer = "edge"
[service.runtime]
kind = "process"
command = ["true"]
initial_version = "v1"
[[service.backend]]
name = "s1"
address = "127.0.0.1:18001"
"#;

    /// A rollout of 500 backends writes a thousand events a step. The fleet's state follows
    /// them, but each refresh asks HAProxy for every server and sends every watching browser
    /// the whole fleet, so a burst costs a couple of refreshes, not one per event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_rollout_events_refreshes_the_fleet_a_few_times_not_once_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::parse(
            CONFIG,
            &dir.path().join("baton.toml"),
            &EnvOverrides::default(),
        )
        .unwrap();
        let store = Store::connect(&settings.server.database_url).await.unwrap();
        let log = CallLog::new();
        let runtime = Arc::new(FakeRuntime::new(log.clone()));
        let lb = Arc::new(FakeLb::new(
            runtime.clone(),
            "web",
            &["n1"],
            &["s1"],
            Checks::default(),
        ));
        let fleet = Arc::new(Fleet::with_drivers(
            vec![(Arc::new(settings.services[0].clone()), lb, runtime)],
            store.clone(),
        ));
        let asked = || {
            log.calls()
                .iter()
                .filter(|call| call.what == What::Servers)
                .count()
        };
        let mut snapshots = fleet.snapshots();
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(fleet.clone().watch(shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(5), snapshots.changed())
            .await
            .expect("a first snapshot")
            .unwrap();

        let before = asked();
        let id = store
            .insert_deployment(&NewDeployment {
                service: "web",
                from_version: Some("v1"),
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "{}",
            })
            .await
            .unwrap();
        let backends = vec![Some("s1"); 500];
        for step in [
            StepKind::Drain,
            StepKind::Maint,
            StepKind::Stop,
            StepKind::Start,
        ] {
            let rows = store
                .begin_steps(id, &backends, step, false, "v2")
                .await
                .unwrap();
            store
                .finish_steps(&rows, app::model::StepOutcome::Ok, None)
                .await
                .unwrap();
        }
        // The watcher shows the rollout...
        let shown = tokio::time::timeout(
            Duration::from_secs(5),
            snapshots.wait_for(|snapshot| {
                snapshot.services[0]
                    .active
                    .as_ref()
                    .is_some_and(|active| active.id == id)
            }),
        )
        .await
        // Let go of the watch channel's read lock at once: the watcher needs it to write.
        .is_ok_and(|seen| seen.is_ok());
        assert!(shown, "the fleet's state shows the queued rollout");
        // ...and has taken in the whole burst once a spacing has passed.
        tokio::time::sleep(SNAPSHOT_SPACING + Duration::from_millis(100)).await;
        let refreshes = asked() - before;
        assert!(
            (1..=4).contains(&refreshes),
            "4,001 events caused {refreshes} refreshes"
        );
        shutdown.cancel();
        watcher.await.unwrap();
    }
}
