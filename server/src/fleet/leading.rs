//! Leading: the rollout workers, bringing backends up and repairs run on the replica that leads,
//! from the moment it leads until the moment it stops.
//!
//! Each term gets workers of its own, cancelled when the role changes. On a shared database they
//! act under the term's [`Tenure`]: their store is fenced with it (every write checks the lease
//! in its own transaction) and their drivers are [`Guarded`] by it (every side effect first
//! checks, on this machine's monotonic clock, that the lease cannot have run out). So a leader
//! that was frozen or cut off, and runs again after another replica took over, refuses its next
//! side effect and its next write; what is left is the instant between that check and the
//! side effect itself, which only a load balancer and runtime that take fencing tokens could
//! close. A worker that finds itself fenced stops at once, recording nothing (the new leader
//! runs the step again: every step is idempotent).
//!
//! A rollout queued, or a pause, resume or abort asked, on another replica wakes no worker
//! here, so while leading on a shared database the queue and the control events are polled
//! every [`QUEUE_POLL`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Fleet, bring_up};
use crate::domain::Version;
use crate::drivers::{
    AdminState, BackendRun, BackendSpec, LbError, LoadBalancer, LogTail, Runtime, RuntimeError,
    ServerStatus,
};
use crate::metrics::Metered;
use crate::replica::{Leadership, Mandate, Role};
use crate::rollout::executor::ServiceRunner;
use crate::store::Tenure;

/// How often a leader on a shared database looks for rollouts queued, and controls asked, on
/// other replicas.
pub const QUEUE_POLL: Duration = Duration::from_millis(500);

impl Fleet {
    /// Runs the workers while this replica leads, until `shutdown`: started when it becomes
    /// the leader (of each new term), cancelled and awaited the moment it is not.
    pub(super) async fn lead(self: Arc<Self>, leadership: Leadership, shutdown: CancellationToken) {
        let mut role = leadership.role();
        loop {
            let (term, mandate) = loop {
                let leading = match *role.borrow_and_update() {
                    Role::Leader { term, .. } => Some(term),
                    Role::Starting | Role::Follower { .. } => None,
                };
                if let Some(term) = leading
                    && let Some(mandate) = leadership.mandate(term)
                {
                    break (term, mandate);
                }
                tokio::select! {
                    changed = role.changed() => if changed.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
            };
            tracing::info!(term, "leading: the rollout workers start");
            let stop = shutdown.child_token();
            let workers = TaskTracker::new();
            self.spawn_workers(&workers, &stop, &mandate);
            workers.close();
            loop {
                tokio::select! {
                    changed = role.changed() => {
                        let still = changed.is_ok() && matches!(
                            *role.borrow_and_update(),
                            Role::Leader { term: now, .. } if now == term
                        );
                        if !still {
                            break;
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
            stop.cancel();
            workers.wait().await;
            if shutdown.is_cancelled() {
                return;
            }
            tracing::info!(term, "no longer leading: the rollout workers have stopped");
        }
    }

    /// One rollout worker per service (each first brings up backends that are not running),
    /// and on a shared database the queue's poller, all stopped by `stop`.
    fn spawn_workers(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
        mandate: &Mandate,
    ) {
        let store = match mandate {
            Mandate::Alone => self.store.clone(),
            Mandate::Lease(tenure) => self.store.fenced(tenure.clone()),
        };
        for handle in &self.services {
            let (lb, runtime): (Arc<dyn LoadBalancer>, Arc<dyn Runtime>) = match mandate {
                Mandate::Alone => (handle.lb.clone(), handle.runtime.clone()),
                Mandate::Lease(tenure) => (
                    Arc::new(Guarded {
                        inner: handle.lb.clone(),
                        tenure: tenure.clone(),
                    }),
                    Arc::new(Guarded {
                        inner: handle.runtime.clone(),
                        tenure: tenure.clone(),
                    }),
                ),
            };
            let runner = ServiceRunner {
                service: handle.settings.clone(),
                lb,
                runtime,
                store: Arc::new(Metered::new(
                    Arc::new(store.clone()),
                    handle.settings.name.as_str(),
                    self.metrics().clone(),
                )),
                probe: Arc::new(self.http.clone()),
                wake: handle.wake.clone(),
                controls: handle.controls.clone(),
                repairs: handle.repairs.clone(),
                notify: self.notifier.outbox(),
            };
            let stop = stop.clone();
            let store = store.clone();
            tasks.spawn(async move {
                tokio::select! {
                    brought = bring_up(&runner, &store) => {
                        if let Err(error) = brought {
                            tracing::error!(service = %runner.service.name, %error, "cannot bring the service's backends up");
                        }
                    }
                    _ = stop.cancelled() => return,
                }
                runner.run(stop).await;
            });
        }
        if let Mandate::Lease(_) = mandate {
            tasks.spawn(self.clone().poll(stop.clone()));
        }
    }

    /// Every [`QUEUE_POLL`] until `stop`: wakes the worker of each service with a queued
    /// rollout, and hands each worker the pause, resume and abort requests recorded since the
    /// last look. (Those recorded before this term began are the resumed rollout's business:
    /// it applies the newest one that has not taken effect.)
    async fn poll(self: Arc<Self>, stop: CancellationToken) {
        let mut looked: Option<i64> = self.store.latest_event_id().await.ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(QUEUE_POLL) => {}
                _ = stop.cancelled() => return,
            }
            match self.store.services_with_queued().await {
                Ok(queued) => {
                    for handle in &self.services {
                        if queued
                            .iter()
                            .any(|name| name == handle.settings.name.as_str())
                        {
                            handle.wake.notify_one();
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read the rollout queue"),
            }
            let latest = match self.store.latest_event_id().await {
                Ok(latest) => latest,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the rollout events");
                    continue;
                }
            };
            let Some(after) = looked.replace(latest) else {
                continue;
            };
            match self.store.controls_between(after, latest).await {
                Ok(controls) => {
                    for control in controls {
                        let Some(handle) = self
                            .services
                            .iter()
                            .find(|handle| handle.settings.name.as_str() == control.service)
                        else {
                            continue;
                        };
                        handle.controls.push_recorded(
                            control.event,
                            control.deployment,
                            control.action,
                        );
                        handle.wake.notify_one();
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the control requests");
                    looked = Some(after);
                }
            }
        }
    }
}

/// A driver that acts only while `tenure` holds; reading (servers, a backend's status) is
/// always allowed, since it changes nothing.
struct Guarded<T: ?Sized> {
    inner: Arc<T>,
    tenure: Tenure,
}

impl<T: ?Sized> Guarded<T> {
    /// `Ok` while the tenure holds, else `refused(replica, term)`.
    fn may_act<E>(&self, refused: impl FnOnce(String, i64) -> E) -> Result<(), E> {
        if self.tenure.holds() {
            Ok(())
        } else {
            Err(refused(
                self.tenure.replica().to_owned(),
                self.tenure.term(),
            ))
        }
    }
}

fn lb_refused(replica: String, term: i64) -> LbError {
    LbError::NotLeading { replica, term }
}

fn runtime_refused(replica: String, term: i64) -> RuntimeError {
    RuntimeError::NotLeading { replica, term }
}

#[async_trait]
impl LoadBalancer for Guarded<dyn LoadBalancer> {
    async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), LbError> {
        self.may_act(lb_refused)?;
        self.inner.set_state(backend, server, state).await
    }

    async fn servers(&self, backend: &str) -> Result<Vec<ServerStatus>, LbError> {
        self.inner.servers(backend).await
    }

    async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<u64, LbError> {
        self.may_act(lb_refused)?;
        self.inner.shutdown_sessions(backend, server).await
    }

    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: crate::domain::BackendAddr,
        like: &str,
        inter: std::time::Duration,
    ) -> Result<(), LbError> {
        self.may_act(lb_refused)?;
        self.inner
            .add_server(backend, server, address, like, inter)
            .await
    }

    async fn remove_server(&self, backend: &str, server: &str) -> Result<(), LbError> {
        self.may_act(lb_refused)?;
        self.inner.remove_server(backend, server).await
    }
}

#[async_trait]
impl Runtime for Guarded<dyn Runtime> {
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        self.may_act(runtime_refused)?;
        self.inner.prepare(version).await
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        self.may_act(runtime_refused)?;
        self.inner.start(backend, version).await
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        self.may_act(runtime_refused)?;
        self.inner.stop(backend).await
    }

    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        self.inner.status(backend).await
    }

    /// Reading is not a side effect: allowed after the lease lapsed too.
    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        self.inner.log_tail(backend, lines).await
    }
}

#[cfg(test)]
mod tests {
    use app::model::{ControlAction, RolloutStatus, Trigger};
    use tokio::time::Instant;

    use super::*;
    use crate::drivers::fake::{CallLog, Checks, FakeLb, FakeRuntime};
    use crate::fleet::DeployRequest;
    use crate::settings::{EnvOverrides, Settings};
    use crate::store::{Lease, Store};

    /// Three backends of `web`, their health path at `ADDRESS`.
    const CONFIG: &str = r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "web"
load_balancer = "edge"
[service.health]
path = "/health"
interval = "50ms"
timeout = "1s"
healthy_threshold = 1
start_timeout = "1s"
[service.drain]
timeout = "1s"
[service.runtime]
kind = "process"
command = ["true"]
initial_version = "v1"
[[service.backend]]
name = "s1"
address = "ADDRESS"
[[service.backend]]
name = "s2"
address = "ADDRESS"
[[service.backend]]
name = "s3"
address = "ADDRESS"
"#;

    struct Harness {
        fleet: Arc<Fleet>,
        store: Store,
        log: Arc<CallLog>,
        _dir: tempfile::TempDir,
    }

    /// Nothing answers there: no new version ever becomes healthy, so a rollout waits in s1's
    /// `wait_healthy` for the start timeout (1 s).
    const NEVER_HEALTHY: &str = "127.0.0.1:9";

    /// Answers every request after 400 ms: the backends' health path, for rollouts that go
    /// through, slowly enough that a leader polling every half second sees them under way.
    async fn healthy() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let ok = axum::Router::new().fallback(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "ok"
            });
            axum::serve(listener, ok).await.unwrap();
        });
        (address, server)
    }

    /// The fleet, its health paths at `health`, with s1 and s2 running v1 (and UP on the load
    /// balancer) and s3 not running.
    async fn harness(health: &str) -> Harness {
        harness_with(health, "").await
    }

    /// Like [`harness`], with more keys of `[[service]]` (`canary = 1`, say).
    async fn harness_with(health: &str, service_keys: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = CONFIG.replace("ADDRESS", health).replace(
            "load_balancer = \"edge\"\n[service.health]",
            &format!("load_balancer = \"edge\"\n{service_keys}\n[service.health]"),
        );
        let settings = Settings::parse(
            &config,
            &dir.path().join("baton.toml"),
            &EnvOverrides::default(),
        )
        .unwrap();
        let store = Store::connect(&settings.server.database_url).await.unwrap();
        let log = CallLog::new();
        let runtime = Arc::new(FakeRuntime::new(log.clone()));
        let service = &settings.services[0];
        for backend in &service.backends[..2] {
            let spec = BackendSpec {
                service: service.name.clone(),
                name: backend.name.clone(),
                address: backend.address,
                slot: crate::domain::Slot::Address,
            };
            runtime.running(&spec, &service.runtime.initial_version);
        }
        let lb = Arc::new(FakeLb::new(
            runtime.clone(),
            "web",
            &["n1"],
            &["s1", "s2", "s3"],
            Checks::default(),
        ));
        let fleet = Arc::new(Fleet::with_drivers(
            vec![(Arc::new(settings.services[0].clone()), lb, runtime)],
            store.clone(),
        ));
        Harness {
            fleet,
            store,
            log,
            _dir: dir,
        }
    }

    /// Replica `a` of [`Harness::replica_a`]: its lease task and its fleet's tasks.
    struct Replica {
        leadership: Leadership,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        leasing: CancellationToken,
        lease: tokio::task::JoinHandle<()>,
    }

    impl Replica {
        /// Stops the fleet's tasks, then the lease task (which gives the lease up).
        async fn stop(self) {
            self.shutdown.cancel();
            self.tasks.close();
            self.tasks.wait().await;
            self.leasing.cancel();
            self.lease.await.unwrap();
        }
    }

    impl Harness {
        /// Runs the fleet as replica `a`, with a 60 s lease it takes as soon as it is free.
        fn replica_a(&self) -> Replica {
            let (leadership, lease) =
                Leadership::leased(self.store.clone(), "a".into(), Duration::from_secs(60));
            let (tasks, shutdown, leasing) = (
                TaskTracker::new(),
                CancellationToken::new(),
                CancellationToken::new(),
            );
            let lease = tokio::spawn(lease.run(leasing.clone()));
            self.fleet.spawn(&tasks, &shutdown, &leadership);
            Replica {
                leadership,
                tasks,
                shutdown,
                leasing,
                lease,
            }
        }

        /// The calls that changed something, as text.
        fn acts(&self) -> Vec<String> {
            self.log
                .calls()
                .into_iter()
                .filter(|call| call.what.acts())
                .map(|call| call.what.to_string())
                .collect()
        }

        async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done(self) {
                if Instant::now() >= deadline {
                    let rows = self
                        .store
                        .deployments(&crate::store::DeploymentQuery {
                            limit: 5,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let steps = match rows.first() {
                        Some(r) => self.store.steps(r.id).await.unwrap(),
                        None => vec![],
                    };
                    panic!("never {what}: {:?} {rows:?} {steps:?}", self.acts());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn wait_status(&self, id: i64, status: RolloutStatus) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let row = self.store.deployment(id).await.unwrap().unwrap();
                if row.status == status {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "rollout {id} is {} and never {status}: {:?}",
                    row.status,
                    self.store.steps(id).await.unwrap()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn deploy(&self) -> i64 {
            self.fleet
                .request(DeployRequest {
                    service: "web",
                    version: "v2",
                    trigger: Trigger::Api,
                    requested_by: None,
                    requester_user: None,
                    coalesce: false,
                })
                .await
                .unwrap()
                .id
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_brings_nothing_up_and_runs_nothing_until_it_takes_the_lease() {
        let h = harness(NEVER_HEALTHY).await;
        // Another replica holds the lease for a while.
        let Lease::Held { term, .. } = h
            .store
            .acquire_lease("b", None, Duration::from_millis(1500))
            .await
            .unwrap()
        else {
            panic!("b takes a free lease");
        };
        let a = h.replica_a();
        let mut role = a.leadership.role();
        role.wait_for(
            |role| matches!(role, Role::Follower { leader: Some(leader) } if leader.replica == "b"),
        )
        .await
        .unwrap();
        // A rollout queued meanwhile (on any replica) waits for a leader.
        let id = h.deploy().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(h.acts().is_empty(), "a follower acted: {:?}", h.acts());
        assert_eq!(
            h.store.deployment(id).await.unwrap().unwrap().status,
            RolloutStatus::Queued
        );

        // b stops renewing: a takes the lease over, brings s3 up and runs the rollout it finds
        // queued (no one woke its worker: it polls the queue).
        role.wait_for(|role| matches!(role, Role::Leader { term: now, .. } if *now == term + 1))
            .await
            .unwrap();
        h.wait_until("brought s3 up", |h| {
            h.acts().contains(&"start s3 v1".to_owned())
        })
        .await;
        h.wait_until("started the rollout", |h| {
            h.acts().contains(&"s1 drain".to_owned())
        })
        .await;

        a.stop().await;
        // Stopping gave the lease up.
        assert!(h.store.lease().await.unwrap().unwrap().expires_in_ms <= 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_approval_and_a_promotion_asked_of_another_replica_reach_the_leaders_worker() {
        let (address, server) = healthy().await;
        let h = harness_with(&address, "canary = 1\napproval = \"start\"").await;
        assert_eq!(
            h.fleet.services()[0].settings.canary,
            1,
            "the keys were read"
        );
        let a = h.replica_a();
        a.leadership
            .role()
            .wait_for(|role| matches!(role, Role::Leader { .. }))
            .await
            .unwrap();
        let id = h.deploy().await;
        h.wait_status(id, RolloutStatus::AwaitingApproval).await;
        // Asked of other replicas: in the database, and nowhere in this one's memory.
        h.store
            .record_control(id, ControlAction::Approve, Some("bea"))
            .await
            .unwrap();
        h.wait_status(id, RolloutStatus::AwaitingPromote).await;
        h.store
            .record_control(id, ControlAction::Promote, Some("cy"))
            .await
            .unwrap();
        h.wait_status(id, RolloutStatus::Succeeded).await;

        a.stop().await;
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_and_a_resume_asked_of_another_replica_reach_the_leaders_worker() {
        let (address, server) = healthy().await;
        let h = harness(&address).await;
        let a = h.replica_a();
        a.leadership
            .role()
            .wait_for(|role| matches!(role, Role::Leader { .. }))
            .await
            .unwrap();
        let id = h.deploy().await;
        h.wait_until("drained s1", |h| h.acts().contains(&"s1 drain".to_owned()))
            .await;
        // Asked of another replica: in the database, and nowhere in this one's memory.
        h.store
            .record_control(id, ControlAction::Pause, Some("ops"))
            .await
            .unwrap();
        h.wait_status(id, RolloutStatus::Paused).await;
        h.store
            .record_control(id, ControlAction::Resume, Some("ops"))
            .await
            .unwrap();
        h.wait_status(id, RolloutStatus::Succeeded).await;

        a.stop().await;
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_whose_tenure_lapsed_act_and_record_nothing_more_even_before_the_role_changes()
    {
        let h = harness(NEVER_HEALTHY).await;
        let Lease::Held { term, .. } = h
            .store
            .acquire_lease("a", None, Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("a takes a free lease");
        };
        // The lease task (not run here) took the lease; its role never changes in this test,
        // as if it were the part of a frozen replica that has not run yet.
        let tenure = Tenure::new("a", term, Instant::now() + Duration::from_secs(60));
        let (_role, leadership) = Leadership::leading_under(tenure.clone());
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        h.fleet.spawn(&tasks, &shutdown, &leadership);
        let id = h.deploy().await;
        // s1's new version is started and never becomes healthy.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !h
            .store
            .steps(id)
            .await
            .unwrap()
            .iter()
            .any(|step| step.step == app::model::StepKind::WaitHealthy && step.outcome.is_none())
        {
            assert!(
                Instant::now() < deadline,
                "never waited for s1: {:?}",
                h.acts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        tenure.end();
        let acted = h.acts();
        // The start timeout passes: a worker that still led would record the failure and roll
        // s1 back.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(h.acts(), acted, "a side effect after the tenure lapsed");
        let steps = h.store.steps(id).await.unwrap();
        let last = steps.last().unwrap();
        assert_eq!(
            (last.backend.as_deref(), last.step, last.outcome),
            (Some("s1"), app::model::StepKind::WaitHealthy, None),
            "the step it was in is left for the next leader to run again"
        );
        assert!(steps.iter().all(|step| !step.rollback));
        assert_eq!(
            h.store.deployment(id).await.unwrap().unwrap().status,
            RolloutStatus::Running
        );
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
