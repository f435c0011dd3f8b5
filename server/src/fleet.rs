//! The fleet: each configured service with its load balancer and runtime, the rollout queue
//! in front of them, and what the API reports about them.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{InvalidValue, Version};
use crate::drivers::haproxy::{HaproxyDriver, HaproxyOptions};
use crate::drivers::process::{ProcessConfig, ProcessRuntime};
use crate::drivers::{BackendRun, BackendSpec, LoadBalancer, Runtime, ServerStatus};
use crate::rollout::engine::{Rollout, Target};
use crate::rollout::executor::ServiceRunner;
use crate::settings::{RuntimeKind, ServiceSettings, Settings};
use crate::store::{NewDeployment, Store, StoreError};

/// One service and the drivers that act on it.
pub struct ServiceHandle {
    pub settings: Arc<ServiceSettings>,
    pub lb: Arc<dyn LoadBalancer>,
    pub runtime: Arc<dyn Runtime>,
    wake: Arc<Notify>,
}

/// Every service Baton manages.
pub struct Fleet {
    services: Vec<ServiceHandle>,
    store: Store,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no service is named {0:?}")]
    UnknownService(String),
    #[error(transparent)]
    InvalidVersion(#[from] InvalidValue),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rollout accepted into the queue.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub id: i64,
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub haproxy_backend: String,
    pub backends: Vec<BackendView>,
    /// Set when HAProxy could not be asked.
    pub load_balancer_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub name: String,
    pub address: String,
    pub version: String,
    /// One entry per HAProxy node.
    pub load_balancer: Vec<ServerStatus>,
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
                    HaproxyOptions::default(),
                ));
                (lb.name.clone(), driver)
            })
            .collect();
        let services = settings
            .services
            .iter()
            .map(|service| {
                let runtime: Arc<dyn Runtime> = match &service.runtime.kind {
                    RuntimeKind::Process {
                        command,
                        stop_signal,
                        working_dir,
                    } => Arc::new(ProcessRuntime::new(ProcessConfig {
                        command: command.clone(),
                        env: service.runtime.env.clone(),
                        working_dir: working_dir.clone(),
                        stop_signal: *stop_signal,
                        stop_timeout: service.runtime.stop_timeout.get(),
                        state_dir: settings.server.state_dir.join(service.name.as_str()),
                    })),
                    RuntimeKind::Command { .. } => {
                        Arc::new(crate::drivers::command::CommandRuntime::new(
                            service,
                            settings.server.state_dir.join(service.name.as_str()),
                        ))
                    }
                };
                (
                    Arc::new(service.clone()),
                    lbs[&service.load_balancer].clone(),
                    runtime,
                )
            })
            .collect();
        Self::with_drivers(services, store)
    }

    /// A fleet over the given drivers (tests pass fakes here).
    pub fn with_drivers(
        services: Vec<(
            Arc<ServiceSettings>,
            Arc<dyn LoadBalancer>,
            Arc<dyn Runtime>,
        )>,
        store: Store,
    ) -> Self {
        let services = services
            .into_iter()
            .map(|(settings, lb, runtime)| ServiceHandle {
                settings,
                lb,
                runtime,
                wake: Arc::new(Notify::new()),
            })
            .collect();
        Self {
            services,
            store,
            http: reqwest::Client::new(),
        }
    }

    pub fn services(&self) -> &[ServiceHandle] {
        &self.services
    }

    fn handle(&self, service: &str) -> Result<&ServiceHandle, DeployError> {
        self.services
            .iter()
            .find(|handle| handle.settings.name.as_str() == service)
            .ok_or_else(|| DeployError::UnknownService(service.to_owned()))
    }

    /// Starts one rollout worker per service (each first brings up backends that are not
    /// running), tracked by `tasks` and stopped by `shutdown`.
    pub fn spawn(&self, tasks: &TaskTracker, shutdown: &CancellationToken) {
        for handle in &self.services {
            let runner = ServiceRunner {
                service: handle.settings.clone(),
                lb: handle.lb.clone(),
                runtime: handle.runtime.clone(),
                store: self.store.clone(),
                http: self.http.clone(),
                wake: handle.wake.clone(),
            };
            let shutdown = shutdown.clone();
            let store = self.store.clone();
            tasks.spawn(async move {
                if let Err(error) = bring_up(&runner, &store).await {
                    tracing::error!(service = %runner.service.name, %error, "cannot bring the service's backends up");
                }
                runner.run(shutdown).await;
            });
        }
    }

    /// Queues a rollout of `service` to `version`.
    pub async fn request(
        &self,
        service: &str,
        version: &str,
        trigger: &str,
        requested_by: Option<&str>,
    ) -> Result<Queued, DeployError> {
        let handle = self.handle(service)?;
        let version = Version::parse(version)?;
        let targets = self.current_versions(handle).await?;
        let from = common_version(&targets);
        let settings = &handle.settings;
        let rollout = Rollout::new(
            version.clone(),
            targets,
            settings.batch_size as usize,
            settings.auto_rollback,
        );
        let state = serde_json::to_string(&rollout).expect("a rollout serializes");
        let ahead = self.store.unfinished_count(service).await?;
        let id = self
            .store
            .insert_deployment(&NewDeployment {
                service,
                from_version: from.as_deref(),
                to_version: version.as_str(),
                trigger,
                requested_by,
                state: &state,
            })
            .await?;
        handle.wake.notify_one();
        tracing::info!(rollout_id = id, service, version = %version, trigger, "rollout queued");
        // With nothing ahead of it, the worker takes it at once.
        Ok(Queued {
            id,
            status: if ahead == 0 { "running" } else { "queued" },
        })
    }

    async fn current_versions(&self, handle: &ServiceHandle) -> Result<Vec<Target>, StoreError> {
        let recorded: HashMap<String, String> = self
            .store
            .backend_versions(handle.settings.name.as_str())
            .await?
            .into_iter()
            .collect();
        Ok(handle
            .settings
            .backends
            .iter()
            .map(|backend| Target {
                name: backend.name.clone(),
                previous: recorded
                    .get(backend.name.as_str())
                    .and_then(|v| Version::parse(v).ok())
                    .unwrap_or_else(|| handle.settings.runtime.initial_version.clone()),
            })
            .collect())
    }

    /// Every service with its backends: version, HAProxy status on each node, open sessions.
    pub async fn view(&self) -> Result<Vec<ServiceView>, StoreError> {
        let mut views = Vec::with_capacity(self.services.len());
        for handle in &self.services {
            let targets = self.current_versions(handle).await?;
            let (servers, load_balancer_error) =
                match handle.lb.servers(&handle.settings.haproxy_backend).await {
                    Ok(servers) => (servers, None),
                    Err(error) => (Vec::new(), Some(error.to_string())),
                };
            let backends = handle
                .settings
                .backends
                .iter()
                .zip(targets)
                .map(|(backend, target)| BackendView {
                    name: backend.name.to_string(),
                    address: backend.address.to_string(),
                    version: target.previous.to_string(),
                    load_balancer: servers
                        .iter()
                        .filter(|s| s.server == backend.name.as_str())
                        .cloned()
                        .collect(),
                })
                .collect();
            views.push(ServiceView {
                name: handle.settings.name.to_string(),
                haproxy_backend: handle.settings.haproxy_backend.clone(),
                backends,
                load_balancer_error,
            });
        }
        Ok(views)
    }
}

/// The version every target runs, if they agree.
fn common_version(targets: &[Target]) -> Option<String> {
    let first = &targets.first()?.previous;
    targets
        .iter()
        .all(|t| &t.previous == first)
        .then(|| first.to_string())
}

/// Starts every backend that is not running at its recorded version (or the initial one), unless
/// a rollout of the service is unfinished: that rollout knows better, and resumes first.
async fn bring_up(runner: &ServiceRunner, store: &Store) -> Result<(), StoreError> {
    let service = &runner.service;
    if store
        .next_deployment(service.name.as_str())
        .await?
        .is_some_and(|row| row.status == "running")
    {
        return Ok(());
    }
    let recorded: HashMap<String, String> = store
        .backend_versions(service.name.as_str())
        .await?
        .into_iter()
        .collect();
    for backend in &service.backends {
        let spec = BackendSpec {
            service: service.name.clone(),
            name: backend.name.clone(),
            address: backend.address,
        };
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
