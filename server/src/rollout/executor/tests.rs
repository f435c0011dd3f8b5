//! The executor on tokio's paused clock: the drivers are the in-memory fakes, the database a real
//! SQLite file. Every wait is virtual, so each test is exact to the millisecond and still takes
//! only milliseconds.
//!
//! The times asserted follow from the settings: Baton probes a process that does not answer yet
//! every `POLL` (10 ms) and one that does every `interval` (50 ms), and the fake HAProxy checks
//! every `inter` (100 ms), the first check after maint coming exactly `inter` after it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::drivers::fake::{Behaviour, CallLog, Checks, Cut, FakeLb, FakeRuntime, Fault};
use crate::settings::{EnvOverrides, Settings};
use crate::store::{NewDeployment, Store};
use app::model::{StepKind, Trigger};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Longer than any test's rollout, in virtual time: a wait that gets this far is stuck, and on a
/// paused clock it fails at once instead of hanging.
const STUCK: Duration = Duration::from_secs(24 * 3600);

/// The database's own runtime, on the real clock: one worker thread, shared by every test here.
fn db_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the database's runtime")
    })
}

/// Runs `work` (a database call) on the database's runtime. sqlx's timers then run on the real
/// clock, and the paused clock stands still meanwhile: tokio does not advance it while a
/// blocking task runs. So a database call takes no virtual time.
async fn db<T, F>(work: F) -> T
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let runtime = db_runtime().handle().clone();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
        .await
        .expect("a database call panicked")
}

/// The real [`Store`] as the executor's [`Journal`], each call run by [`db`]. The first `.1`
/// reads of the queue fail, as they do while the database does not answer.
struct OffClock(Store, Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Journal for OffClock {
    async fn next_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError> {
        let unanswered = self
            .1
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            });
        if unanswered.is_ok() {
            return Err(StoreError::Query(sqlx::Error::PoolTimedOut));
        }
        let (store, service) = (self.0.clone(), service.to_owned());
        db(async move { store.next_deployment(&service).await }).await
    }

    async fn newest_deployment(&self, service: &str) -> Result<Option<DeploymentRow>, StoreError> {
        let (store, service) = (self.0.clone(), service.to_owned());
        db(async move { Journal::newest_deployment(&store, &service).await }).await
    }

    async fn claim(&self, id: i64) -> Result<Option<Option<String>>, StoreError> {
        let store = self.0.clone();
        db(async move { store.claim(id).await }).await
    }

    async fn begin(
        &self,
        id: i64,
        from_version: Option<&str>,
        state: &str,
    ) -> Result<(), StoreError> {
        let (store, from, state) = (
            self.0.clone(),
            from_version.map(str::to_owned),
            state.to_owned(),
        );
        db(async move { store.begin(id, from.as_deref(), &state).await }).await
    }

    async fn save_state(
        &self,
        id: i64,
        status: RolloutStatus,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let (store, status, state, reason) = (
            self.0.clone(),
            status,
            state.to_owned(),
            reason.map(str::to_owned),
        );
        db(async move {
            store
                .save_state(id, status, &state, reason.as_deref())
                .await
        })
        .await
    }

    async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError> {
        let store = self.0.clone();
        db(async move { store.interrupt_open_steps(deployment).await }).await
    }

    async fn newest_control(
        &self,
        deployment: i64,
    ) -> Result<Option<app::model::PendingControl>, StoreError> {
        let store = self.0.clone();
        db(async move { store.newest_control(deployment).await }).await
    }

    async fn begin_steps(
        &self,
        deployment: i64,
        backends: &[Option<&str>],
        step: StepKind,
        rollback: bool,
        version: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let (store, backends, version) = (
            self.0.clone(),
            backends
                .iter()
                .map(|backend| backend.map(str::to_owned))
                .collect::<Vec<_>>(),
            version.to_owned(),
        );
        db(async move {
            let backends: Vec<Option<&str>> = backends.iter().map(Option::as_deref).collect();
            store
                .begin_steps(deployment, &backends, step, rollback, &version)
                .await
        })
        .await
    }

    async fn finish_steps(
        &self,
        ids: &[i64],
        outcome: StepOutcome,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let (store, ids, detail) = (self.0.clone(), ids.to_vec(), detail.map(str::to_owned));
        db(async move { store.finish_steps(&ids, outcome, detail.as_deref()).await }).await
    }

    async fn save_step_log(
        &self,
        step_id: i64,
        backend: &str,
        source: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        let (store, backend, source, lines) = (
            self.0.clone(),
            backend.to_owned(),
            source.to_owned(),
            lines.to_vec(),
        );
        db(async move {
            store
                .save_step_log(step_id, &backend, &source, &lines)
                .await
        })
        .await
    }

    async fn backend_versions(&self, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        let (store, service) = (self.0.clone(), service.to_owned());
        db(async move { store.backend_versions(&service).await }).await
    }

    async fn set_backend_version(
        &self,
        service: &str,
        backend: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        let (store, service, backend, version) = (
            self.0.clone(),
            service.to_owned(),
            backend.to_owned(),
            version.to_owned(),
        );
        db(async move {
            store
                .set_backend_version(&service, &backend, &version)
                .await
        })
        .await
    }

    async fn backend_slots(
        &self,
        service: &str,
    ) -> Result<Vec<(String, crate::domain::Slot)>, StoreError> {
        let (store, service) = (self.0.clone(), service.to_owned());
        db(async move { store.backend_slots(&service).await }).await
    }

    async fn set_backend_current(
        &self,
        service: &str,
        backend: &str,
        version: &str,
        slot: crate::domain::Slot,
    ) -> Result<(), StoreError> {
        let (store, service, backend, version) = (
            self.0.clone(),
            service.to_owned(),
            backend.to_owned(),
            version.to_owned(),
        );
        db(async move {
            store
                .set_backend_current(&service, &backend, &version, slot)
                .await
        })
        .await
    }

    async fn save_traffic(
        &self,
        deployment: i64,
        span_ms: i64,
        backends: &[crate::store::BackendTraffic],
    ) -> Result<(), StoreError> {
        let (store, backends) = (self.0.clone(), backends.to_vec());
        db(async move { store.save_traffic(deployment, span_ms, &backends).await }).await
    }
}

/// The service under test: `web`, backends `web1`… on one HAProxy node `n1`, health probed
/// every 50 ms with a threshold of 2, as in the real-HAProxy tests.
struct Setup {
    backends: usize,
    drain_timeout: &'static str,
    start_timeout: &'static str,
    /// More keys of `[[service]]`, such as `canary = 1`.
    service_keys: &'static str,
    /// `[service.strategy] kind = "surge"` with this overlap (the surge server checked every
    /// 100 ms, as the others), each backend with a surge address; `None`: rolling.
    surge: Option<&'static str>,
    /// `[service.soak]` with this duration and `max_5xx`; `None`: no watch.
    soak: Option<(&'static str, u64)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            backends: 3,
            drain_timeout: "10s",
            start_timeout: "5s",
            service_keys: "",
            surge: None,
            soak: None,
        }
    }
}

/// A service with fake drivers and a real database, and a clock that starts at zero.
struct Rig {
    service: Arc<ServiceSettings>,
    store: Store,
    log: Arc<CallLog>,
    runtime: Arc<FakeRuntime>,
    lb: Arc<FakeLb>,
    wake: Arc<Notify>,
    controls: Controls,
    repairs: Repairs,
    /// How many of the worker's next reads of the queue fail.
    queue_unanswered: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Every backend runs v1, and HAProxy (checks every 100 ms, rise 2, fall 2) has it UP.
    async fn new(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backends: String = (1..=setup.backends)
            .map(|i| {
                let surge = match setup.surge {
                    Some(_) => format!("surge_address = \"127.0.0.1:{}\"\n", 18100 + i),
                    None => String::new(),
                };
                format!(
                    "[[service.backend]]\nname = \"web{i}\"\naddress = \"127.0.0.1:{}\"\n{surge}",
                    18000 + i
                )
            })
            .collect();
        let strategy = match setup.surge {
            Some(overlap) => format!(
                "[service.strategy]\nkind = \"surge\"\noverlap = \"{overlap}\"\ncheck_inter = \"100ms\"\n"
            ),
            None => String::new(),
        };
        let soak = match setup.soak {
            Some((duration, max_5xx)) => {
                format!("[service.soak]\nduration = \"{duration}\"\nmax_5xx = {max_5xx}\n")
            }
            None => String::new(),
        };
        let config = format!(
            r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "web"
load_balancer = "edge"
haproxy_backend = "web"
{keys}
[service.health]
interval = "50ms"
timeout = "1s"
healthy_threshold = 2
start_timeout = "{start}"
[service.drain]
timeout = "{drain}"
{strategy}{soak}[service.runtime]
kind = "process"
command = ["true"]
initial_version = "v1"
{backends}"#,
            start = setup.start_timeout,
            drain = setup.drain_timeout,
            keys = setup.service_keys,
        );
        let settings = Settings::parse(
            &config,
            &dir.path().join("baton.toml"),
            &EnvOverrides::default(),
        )
        .unwrap();
        let url = settings.server.database_url.clone();
        let store = db(async move { Store::connect(&url).await }).await.unwrap();
        let service = Arc::new(settings.services[0].clone());

        let log = CallLog::new();
        let runtime = Arc::new(FakeRuntime::new(log.clone()));
        let v1 = Version::parse("v1").unwrap();
        let names: Vec<&str> = service.backends.iter().map(|b| b.name.as_str()).collect();
        let lb = Arc::new(FakeLb::new(
            runtime.clone(),
            "web",
            &["n1"],
            &names,
            Checks::default(),
        ));
        let rig = Self {
            service: service.clone(),
            store,
            log,
            runtime,
            lb,
            wake: Arc::new(Notify::new()),
            controls: Controls::default(),
            repairs: Repairs::default(),
            queue_unanswered: Arc::default(),
            _dir: dir,
        };
        for backend in &service.backends {
            rig.runtime.running(&rig.spec(backend.name.as_str()), &v1);
        }
        rig
    }

    fn spec(&self, backend: &str) -> BackendSpec {
        let found = self
            .service
            .backends
            .iter()
            .find(|b| b.name.as_str() == backend)
            .unwrap();
        BackendSpec {
            service: self.service.name.clone(),
            name: found.name.clone(),
            address: found.address,
            slot: crate::domain::Slot::Address,
        }
    }

    /// Starts the service's worker; it stops when the returned handle is stopped or dropped.
    fn start_worker(&self) -> Worker {
        self.start_worker_with(self.service.clone())
    }

    /// [`Rig::start_worker`] with the service's settings changed (as a restarted Baton reads
    /// an edited file).
    fn start_worker_with(&self, service: Arc<ServiceSettings>) -> Worker {
        self.start_worker_told(service, crate::notify::Outbox::default())
    }

    /// [`Rig::start_worker_with`], the rollouts' notices handed to `notify`.
    fn start_worker_told(
        &self,
        service: Arc<ServiceSettings>,
        notify: crate::notify::Outbox,
    ) -> Worker {
        let runner = ServiceRunner {
            service,
            lb: self.lb.clone(),
            runtime: self.runtime.clone(),
            store: Arc::new(OffClock(self.store.clone(), self.queue_unanswered.clone())),
            probe: self.runtime.clone(),
            wake: self.wake.clone(),
            controls: self.controls.clone(),
            repairs: self.repairs.clone(),
            notify,
        };
        let shutdown = CancellationToken::new();
        Worker {
            task: Some(tokio::spawn(runner.run(shutdown.clone()))),
            shutdown,
        }
    }

    /// Queues a rollout to `version`, as the API does.
    async fn queue(&self, version: &str) -> i64 {
        let targets =
            recorded_targets(&OffClock(self.store.clone(), Arc::default()), &self.service)
                .await
                .unwrap();
        let rollout = Rollout::new(
            Version::parse(version).unwrap(),
            targets,
            self.service.batch_size as usize,
            self.service.auto_rollback,
        )
        .with_canary(self.service.canary as usize)
        .with_approval(self.service.approval.is_some());
        let state = serde_json::to_string(&rollout).unwrap();
        let (store, version) = (self.store.clone(), version.to_owned());
        let id = db(async move {
            store
                .insert_deployment(&NewDeployment {
                    service: "web",
                    from_version: None,
                    to_version: &version,
                    trigger: Trigger::Api,
                    requested_by: None,
                    state: &state,
                })
                .await
        })
        .await
        .unwrap();
        self.wake.notify_one();
        id
    }

    /// Asks the worker to pause, resume or abort rollout `id`, as the API does.
    fn control(&self, id: i64, action: ControlAction) {
        self.controls.push(id, action);
        self.wake.notify_one();
    }

    async fn deployment(&self, id: i64) -> DeploymentRow {
        let store = self.store.clone();
        db(async move { store.deployment(id).await })
            .await
            .unwrap()
            .expect("the rollout exists")
    }

    /// Waits until rollout `id` has a status for which `wanted` holds, and returns it.
    async fn status(&self, id: i64, wanted: impl Fn(RolloutStatus) -> bool) -> DeploymentRow {
        let mut feed = self.store.subscribe();
        let waited = timeout(STUCK, async {
            loop {
                let row = self.deployment(id).await;
                if wanted(row.status) {
                    return row;
                }
                // Every status change is published on the feed.
                let _ = feed.recv().await;
            }
        })
        .await;
        match waited {
            Ok(row) => row,
            Err(_) => panic!(
                "rollout {id} is still {} after a day of virtual time; steps: {:#?}",
                self.deployment(id).await.status,
                self.steps(id).await
            ),
        }
    }

    /// Waits until rollout `id` has ended, and returns it.
    async fn ended(&self, id: i64) -> DeploymentRow {
        self.status(id, RolloutStatus::is_finished).await
    }

    /// Every step of the rollout as "backend step outcome", rollback steps marked "(rollback)".
    async fn steps(&self, id: i64) -> Vec<String> {
        let store = self.store.clone();
        db(async move { store.steps(id).await })
            .await
            .unwrap()
            .into_iter()
            .map(|step| {
                format!(
                    "{} {} {}{}",
                    step.backend.as_deref().unwrap_or("-"),
                    step.step,
                    step.outcome.map_or("running", StepOutcome::as_str),
                    if step.rollback { " (rollback)" } else { "" }
                )
            })
            .collect()
    }

    /// The detail of the one step `step` on `backend` (forward, not rollback).
    async fn detail(&self, id: i64, backend: &str, step: &str) -> Option<String> {
        let store = self.store.clone();
        let steps = db(async move { store.steps(id).await }).await.unwrap();
        let found: Vec<_> = steps
            .into_iter()
            .filter(|s| {
                s.backend.as_deref() == Some(backend) && s.step.as_str() == step && !s.rollback
            })
            .collect();
        assert_eq!(found.len(), 1, "one {step} step on {backend}: {found:#?}");
        found[0].detail.clone()
    }

    /// The logs kept with the rollout's failed steps: (backend, step, lines).
    async fn logs(&self, id: i64) -> Vec<(String, String, Vec<String>)> {
        let store = self.store.clone();
        let (steps, logs) = db(async move {
            (
                store.steps(id).await.unwrap(),
                store.step_logs(id).await.unwrap(),
            )
        })
        .await;
        logs.into_iter()
            .map(|log| {
                let step = steps.iter().find(|s| s.id == log.step_id).unwrap();
                (log.backend, step.step.as_str().to_owned(), log.lines)
            })
            .collect()
    }

    /// Waits until the `n`th call shown as `action` (from 1) has been made; returns when.
    async fn call(&self, action: &str, n: usize) -> Duration {
        match timeout(STUCK, self.log.wait_for_nth(action, n)).await {
            Ok(at) => at,
            Err(_) => panic!(
                "no call {n} of {action:?} in a day of virtual time; calls: {:#?}",
                self.log.timed_actions()
            ),
        }
    }

    /// The acting calls made from `from` on, with their times.
    fn actions_from(&self, from: Duration) -> Vec<(Duration, String)> {
        self.log
            .timed_actions()
            .into_iter()
            .filter(|(at, _)| *at >= from)
            .collect()
    }

    /// What the runtime runs on each backend, and what HAProxy's node reports for it.
    fn fleet(&self) -> Vec<(String, String)> {
        self.service
            .backends
            .iter()
            .map(|b| {
                let name = b.name.as_str();
                (
                    self.runtime.version_of(name).unwrap_or_default(),
                    self.lb.status("n1", name).status.to_string(),
                )
            })
            .collect()
    }
}

/// The step rows of one backend's successful replacement.
fn steps_ok(backend: &str) -> Vec<String> {
    [
        "check_capacity",
        "drain",
        "wait_sessions",
        "maint",
        "stop",
        "start",
        "wait_healthy",
        "lb_check",
        "enable",
        "confirm_up",
    ]
    .iter()
    .map(|step| format!("{backend} {step} ok"))
    .collect()
}

fn owned(pairs: &[(u64, &str)]) -> Vec<(Duration, String)> {
    pairs
        .iter()
        .map(|(at, what)| (ms(*at), (*what).to_owned()))
        .collect()
}

fn serving(version: &str, count: usize) -> Vec<(String, String)> {
    vec![(version.to_owned(), "UP".to_owned()); count]
}

/// The running worker of a test.
struct Worker {
    task: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Worker {
    /// Stops the worker, as Baton's shutdown does, and waits until it has.
    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        timeout(STUCK, task)
            .await
            .expect("the worker stops at shutdown")
            .expect("the worker did not panic");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A pause asked of the leader reaches its worker twice: from the request, and from the
/// database when the leader polls for requests taken by other replicas. It applies once, so a
/// resume that came between is not undone.
#[test]
fn a_control_handed_over_twice_applies_once() {
    let controls = Controls::default();
    controls.push_recorded(7, 1, ControlAction::Pause);
    controls.push_recorded(8, 1, ControlAction::Resume);
    controls.push_recorded(7, 1, ControlAction::Pause);
    assert_eq!(
        controls.take(1),
        [ControlAction::Pause, ControlAction::Resume]
    );
}

/// A database that does not answer (restarting, say) is waited for: the worker tries the queue
/// again rather than wait for a wake-up that a rollout already under way, or one queued on
/// another replica, never sends.
#[tokio::test(start_paused = true)]
async fn a_worker_that_cannot_read_the_queue_tries_again_and_runs_what_it_finds_unwoken() {
    let rig = Rig::new(Setup::default()).await;
    let id = rig.queue("v2").await;
    rig.queue_unanswered.store(2, Ordering::SeqCst);
    let _worker = rig.start_worker();
    assert_eq!(rig.ended(id).await.status, RolloutStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_rollout_replaces_one_backend_at_a_time_waiting_for_baton_then_haproxy() {
    let rig = Rig::new(Setup::default()).await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: ms(300) });
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::Succeeded,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(done.from_version.as_deref(), Some("v1"));
    // Per backend: the new process answers at 300 ms, Baton's second passing probe comes one
    // interval (50 ms) later; HAProxy's first fresh check, `inter` (100 ms) after the drain
    // that ends maint. Nothing else takes time.
    assert_eq!(
        rig.log.timed_actions(),
        owned(&[
            (0, "prepare v2"),
            (0, "web1 drain"),
            (0, "web1 maint"),
            (0, "stop web1"),
            (0, "start web1 v2"),
            (350, "web1 drain"),
            (450, "web1 ready"),
            (450, "web2 drain"),
            (450, "web2 maint"),
            (450, "stop web2"),
            (450, "start web2 v2"),
            (800, "web2 drain"),
            (900, "web2 ready"),
            (900, "web3 drain"),
            (900, "web3 maint"),
            (900, "stop web3"),
            (900, "start web3 v2"),
            (1250, "web3 drain"),
            (1350, "web3 ready"),
        ])
    );
    let mut expected = vec!["- prepare ok".to_owned()];
    for backend in ["web1", "web2", "web3"] {
        expected.extend(steps_ok(backend));
    }
    assert_eq!(rig.steps(id).await, expected);
    assert_eq!(rig.fleet(), serving("v2", 3));
    let store = rig.store.clone();
    let recorded = db(async move { store.backend_versions("web").await })
        .await
        .unwrap();
    assert_eq!(
        recorded,
        ["web1", "web2", "web3"].map(|b| (b.to_owned(), "v2".to_owned()))
    );
}

/// Which servers are backups is HAProxy's configuration: the worker asks it as the rollout
/// begins, and the backup goes last.
#[tokio::test(start_paused = true)]
async fn the_server_haproxy_calls_a_backup_is_rolled_after_the_others() {
    let rig = Rig::new(Setup::default()).await;
    rig.lb.set_backup("web1");
    let _worker = rig.start_worker();
    let id = rig.queue("v2").await;
    assert_eq!(rig.ended(id).await.status, RolloutStatus::Succeeded);

    let mut expected = vec!["- prepare ok".to_owned()];
    for backend in ["web2", "web3", "web1"] {
        expected.extend(steps_ok(backend));
    }
    assert_eq!(rig.steps(id).await, expected);
    assert_eq!(rig.fleet(), serving("v2", 3));
}

/// With the other active server down, taking the last one out would leave only the backup.
#[tokio::test(start_paused = true)]
async fn a_step_that_would_leave_only_the_backup_up_is_refused_and_says_so() {
    let rig = Rig::new(Setup {
        backends: 2,
        ..Setup::default()
    })
    .await;
    rig.lb.set_backup("web2");
    let _worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;

    assert_eq!(done.status, RolloutStatus::Failed);
    assert_eq!(
        done.reason.as_deref(),
        Some(
            "check_capacity failed on web1: no other backend is UP on n1 (backup servers do not count): taking web1 out would leave only the backup server(s) web2 UP, and a backup is not capacity"
        )
    );
    assert_eq!(rig.fleet(), serving("v1", 2), "nothing was touched");
}

#[tokio::test(start_paused = true)]
async fn a_surge_serves_the_new_instance_before_draining_the_old_one_and_retires_it_after_the_overlap()
 {
    let rig = Rig::new(Setup {
        backends: 1,
        surge: Some("5s"),
        ..Setup::default()
    })
    .await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: ms(300) });
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    // One backend is enough: nothing leaves rotation before its successor is UP. The new
    // instance answers at 300 ms and passes Baton's second probe at 350; HAProxy's first
    // check of the added server comes `inter` (100 ms) after it leaves maint, then it is put
    // in rotation; the old one is drained, kept 5 s, stopped and removed.
    assert_eq!(
        done.status,
        RolloutStatus::Succeeded,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(
        rig.log.timed_actions(),
        owned(&[
            (0, "prepare v2"),
            (0, "start web1:surge v2"),
            (350, "add server web1:surge 127.0.0.1:18101"),
            (350, "web1:surge drain"),
            (450, "web1:surge ready"),
            (450, "web1 drain"),
            (5450, "stop web1"),
            (5450, "del server web1"),
        ])
    );
    assert_eq!(rig.runtime.version_of("web1:surge").as_deref(), Some("v2"));
    assert_eq!(
        rig.runtime.version_of("web1"),
        None,
        "the old one was stopped"
    );
    let store = rig.store.clone();
    let slots = db(async move { store.backend_slots("web").await })
        .await
        .unwrap();
    assert_eq!(
        slots,
        [("web1".to_owned(), crate::domain::Slot::SurgeAddress)]
    );
}

#[tokio::test(start_paused = true)]
async fn abort_during_the_overlap_retires_the_old_instance_when_the_overlap_ends() {
    let rig = Rig::new(Setup {
        backends: 2,
        surge: Some("5s"),
        ..Setup::default()
    })
    .await;
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let drained = rig.call("web1 drain", 1).await;
    rig.control(id, ControlAction::Abort);
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::Cancelled,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(
        rig.actions_from(drained + ms(1)),
        owned(&[
            (drained.as_millis() as u64 + 5000, "stop web1"),
            (drained.as_millis() as u64 + 5000, "del server web1")
        ]),
        "web1's old instance is retired after the whole overlap; web2 is not touched"
    );
    assert_eq!(rig.runtime.version_of("web1:surge").as_deref(), Some("v2"));
    assert_eq!(rig.runtime.version_of("web2").as_deref(), Some("v1"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_surge_surges_the_backends_already_done_back_to_their_first_address() {
    let rig = Rig::new(Setup {
        backends: 2,
        surge: Some("1s"),
        ..Setup::default()
    })
    .await;
    // web2's host stops answering Baton: its new instance cannot start.
    rig.runtime.cut("web2", Some(Cut::Now));
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    let steps = rig.steps(id).await;
    let rollback: Vec<&String> = steps.iter().filter(|s| s.ends_with("(rollback)")).collect();
    assert_eq!(
        rollback,
        [
            "web2 discard failed (rollback)",
            "web1 surge_start ok (rollback)",
            "web1 surge_healthy ok (rollback)",
            "web1 surge_add ok (rollback)",
            "web1 surge_enable ok (rollback)",
            "web1 drain ok (rollback)",
            "web1 wait_sessions ok (rollback)",
            "web1 overlap ok (rollback)",
            "web1 retire ok (rollback)",
        ]
    );
    assert_eq!(
        done.status,
        RolloutStatus::Failed,
        "web2 needs an operator: {steps:#?}"
    );
    // web1 runs v1 again on its address, as the configured server; the v2 instance is gone.
    assert_eq!(rig.runtime.version_of("web1").as_deref(), Some("v1"));
    assert_eq!(rig.runtime.version_of("web1:surge"), None);
    let servers: Vec<String> = rig
        .lb
        .servers("web")
        .await
        .unwrap()
        .into_iter()
        .map(|s| format!("{} {}", s.server, s.status))
        .collect();
    assert_eq!(servers, ["web2 UP", "web1 UP"]);
    let store = rig.store.clone();
    let (versions, slots) = db(async move {
        (
            store.backend_versions("web").await.unwrap(),
            store.backend_slots("web").await.unwrap(),
        )
    })
    .await;
    assert!(
        versions.contains(&("web1".to_owned(), "v1".to_owned())),
        "{versions:?}"
    );
    assert!(
        slots.contains(&("web1".to_owned(), crate::domain::Slot::Address)),
        "{slots:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rolling_rollout_refuses_a_backend_a_surge_left_on_its_surge_address() {
    let rig = Rig::new(Setup {
        backends: 2,
        surge: Some("1s"),
        ..Setup::default()
    })
    .await;
    let worker = rig.start_worker();
    let surged = rig.queue("v2").await;
    assert_eq!(rig.ended(surged).await.status, RolloutStatus::Succeeded);
    worker.stop().await;

    let mut rolling = (*rig.service).clone();
    rolling.strategy.kind = StrategyKind::Rolling;
    let worker = rig.start_worker_with(Arc::new(rolling));
    let before = rig.log.actions().len();
    let id = rig.queue("v3").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(done.status, RolloutStatus::Failed);
    let reason = done.reason.unwrap();
    assert!(
        reason.starts_with("check_capacity failed on web1: web1 runs on its surge_address 127.0.0.1:18101 (HAProxy server web1:surge) since a surge rollout"),
        "{reason}"
    );
    assert_eq!(
        rig.log.actions()[before..],
        ["prepare v3"],
        "nothing was touched"
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_still_open_at_the_drain_timeout_are_cut_and_counted() {
    let rig = Rig::new(Setup {
        backends: 2,
        drain_timeout: "10s",
        ..Setup::default()
    })
    .await;
    // Two sessions on web1 that would never end; one on web2 that ends at 12 s.
    rig.lb.open_session("n1", "web1", None);
    rig.lb.open_session("n1", "web1", None);
    rig.lb.open_session("n1", "web2", Some(secs(12)));
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::Succeeded,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(
        rig.detail(id, "web1", "wait_sessions").await.as_deref(),
        Some("drain timed out after 10s with 2 session(s) still open")
    );
    assert_eq!(
        rig.detail(id, "web1", "cut_sessions").await.as_deref(),
        Some("cut 2 session(s) still open after the drain timeout of 10s")
    );
    let steps = rig.steps(id).await;
    assert!(
        steps.contains(&"web1 wait_sessions timed_out".to_owned()),
        "{steps:#?}"
    );
    assert!(
        !steps.iter().any(|s| s.starts_with("web2 cut_sessions")),
        "web2's session ended by itself: {steps:#?}"
    );
    // web1 is cut exactly at the timeout; web2 (drained at 10.15 s) waits for its session to
    // end at 12 s, and not a poll longer.
    let timed = rig.log.timed_actions();
    assert_eq!(
        timed[..4],
        owned(&[
            (0, "prepare v2"),
            (0, "web1 drain"),
            (10_000, "web1 shutdown sessions"),
            (10_000, "web1 maint"),
        ])
    );
    assert_eq!(rig.log.first("web2 maint"), Some(secs(12)));
    assert_eq!(rig.lb.status("n1", "web1").sessions, 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_version_that_never_listens_fails_at_the_start_timeout_and_is_rolled_back() {
    let rig = Rig::new(Setup {
        start_timeout: "5s",
        ..Setup::default()
    })
    .await;
    rig.runtime.script(
        "v2",
        Behaviour::Answers {
            after: Duration::from_secs(3600),
        },
    );
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::RolledBack,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(
        done.reason.as_deref(),
        Some(
            "wait_healthy failed on web1: not healthy within the start timeout of 5s (0/2 \
             passes; last: http://127.0.0.1:18001/alive: connection refused); every changed \
             backend was rolled back"
        )
    );
    // The start at 0 s, given up at exactly 5 s; web1 back on v1 by the same procedure, the
    // others never touched.
    assert_eq!(rig.log.first("start web1 v2"), Some(Duration::ZERO));
    assert_eq!(
        rig.actions_from(ms(1)),
        owned(&[
            (5000, "web1 drain"),
            (5000, "web1 maint"),
            (5000, "stop web1"),
            (5000, "start web1 v1"),
            (5050, "web1 drain"),
            (5150, "web1 ready"),
        ])
    );
    assert_eq!(rig.fleet(), serving("v1", 3));
}

#[tokio::test(start_paused = true)]
async fn a_new_version_that_crashes_fails_when_it_exits_not_at_the_start_timeout() {
    let rig = Rig::new(Setup::default()).await;
    rig.runtime.script(
        "v2",
        Behaviour::Crashes {
            after: ms(1500),
            exit: "exit status 3".into(),
        },
    );
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(done.status, RolloutStatus::RolledBack);
    assert_eq!(
        rig.detail(id, "web1", "wait_healthy").await.as_deref(),
        Some("the new process stopped before it became healthy: it exited (exit status 3)")
    );
    // What the crashed version's run left in its log is kept with the failed step, and only
    // there: the rollback's steps all passed.
    let logs = rig.logs(id).await;
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let (backend, step, lines) = &logs[0];
    assert_eq!((backend.as_str(), step.as_str()), ("web1", "wait_healthy"));
    let last: Vec<&str> = lines
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert!(
        last[0].starts_with("[fake] starting version v2 "),
        "{lines:#?}"
    );
    assert_eq!(last[1], "[fake] v2 ended: exit status 3");
    assert_eq!(rig.log.first("stop web1"), Some(Duration::ZERO));
    // The probe loop sees the exit at its first look after 1.5 s.
    assert_eq!(
        rig.actions_from(ms(1)),
        owned(&[
            (1500, "web1 drain"),
            (1500, "web1 maint"),
            (1500, "stop web1"),
            (1500, "start web1 v1"),
            (1550, "web1 drain"),
            (1650, "web1 ready"),
        ])
    );
    assert_eq!(rig.fleet(), serving("v1", 3));
}

#[tokio::test(start_paused = true)]
async fn haproxys_check_must_pass_afresh_the_stale_result_from_before_maint_does_not_count() {
    let rig = Rig::new(Setup::default()).await;
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    // From web1's start on, HAProxy's checks cannot reach it (they time out) while Baton's
    // probe can.
    rig.call("start web1 v2", 1).await;
    rig.lb.set_reachable("web1", false);
    let lb_check = rig.call("web1 drain", 2).await;
    assert_eq!(lb_check, ms(50), "Baton's probe passed twice, 50 ms apart");
    let stale = rig.lb.status("n1", "web1");
    assert_eq!(
        (
            stale.status.to_string(),
            stale.check.map(|check| check.to_string())
        ),
        ("DRAIN 1/2".to_owned(), Some("L7OK".to_owned())),
        "what HAProxy shows until its first check after maint"
    );
    // Reachable again after the step has failed, so the rollback can finish.
    sleep(secs(6)).await;
    rig.lb.set_reachable("web1", true);
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::RolledBack,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(
        rig.detail(id, "web1", "lb_check").await.as_deref(),
        Some("HAProxy's health check did not pass on n1 within 5s (status DOWN, check L4TOUT)")
    );
    // Failed exactly 5 s after the drain; web1 went back into rotation only on v1, after two
    // fresh passing checks once HAProxy reached it again (at 6.1 s and 6.2 s).
    assert_eq!(
        rig.actions_from(ms(51)),
        owned(&[
            (5050, "web1 drain"),
            (5050, "web1 maint"),
            (5050, "stop web1"),
            (5050, "start web1 v1"),
            (5100, "web1 drain"),
            (6200, "web1 ready"),
        ])
    );
    assert_eq!(rig.fleet(), serving("v1", 3));
}

#[tokio::test(start_paused = true)]
async fn a_silent_haproxy_fails_the_step_after_the_drivers_attempts_and_the_rollback_waits_for_it()
{
    let rig = Rig::new(Setup::default()).await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: secs(1) });
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    // Silent from web1's start on, until 30 s.
    rig.call("start web1 v2", 1).await;
    rig.lb.set_fault("n1", Some(Fault::Silent));
    sleep(secs(29)).await;
    assert_eq!(
        rig.deployment(id).await.status,
        RolloutStatus::Running,
        "the rollback still waits for HAProxy at 29 s: {:#?}",
        rig.steps(id).await
    );
    sleep(secs(1)).await;
    rig.lb.set_fault("n1", None);
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::RolledBack,
        "{:#?}",
        rig.steps(id).await
    );
    assert_eq!(
        rig.detail(id, "web1", "lb_check").await.as_deref(),
        Some("HAProxy node n1 did not answer after 4 attempts: no answer within 2s")
    );
    // lb_check asks at 1.05 s and fails after four attempts of 2 s with backoffs of 0.1, 0.2
    // and 0.4 s between them: at 9.75 s. The rollback asks again one second after each such
    // failure (9.7 s apart), and goes on at 31.25 s: the first attempt begun after HAProxy
    // answers again at 30 s.
    assert_eq!(
        rig.actions_from(ms(1)),
        owned(&[
            (1050, "web1 drain"),
            (9750, "web1 drain"),
            (19_450, "web1 drain"),
            (29_150, "web1 drain"),
            (31_250, "web1 maint"),
            (31_250, "stop web1"),
            (31_250, "start web1 v1"),
            (31_300, "web1 drain"),
            (31_400, "web1 ready"),
        ])
    );
    assert_eq!(rig.fleet(), serving("v1", 3));
}

#[tokio::test(start_paused = true)]
async fn a_paused_rollout_finishes_the_backend_in_progress_then_does_nothing_until_resumed() {
    let rig = Rig::new(Setup::default()).await;
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    rig.call("web1 drain", 1).await;
    rig.control(id, ControlAction::Pause);
    rig.status(id, |s| s == RolloutStatus::Paused).await;
    let paused_at = rig.log.elapsed();
    let calls_when_paused = rig.log.asked();
    assert_eq!(
        rig.log.actions().last().map(String::as_str),
        Some("web1 ready"),
        "web1 was finished first"
    );
    assert_eq!(
        rig.fleet(),
        [("v2", "UP"), ("v1", "UP"), ("v1", "UP")].map(|(v, s)| (v.to_owned(), s.to_owned())),
        "while paused every backend serves"
    );

    sleep(secs(3600)).await;
    assert_eq!(
        rig.log.asked(),
        calls_when_paused,
        "nothing asked of HAProxy or the runtime in an hour paused"
    );
    assert_eq!(rig.deployment(id).await.status, RolloutStatus::Paused);

    rig.control(id, ControlAction::Resume);
    let done = rig.ended(id).await;
    worker.stop().await;
    assert_eq!(done.status, RolloutStatus::Succeeded);
    assert_eq!(rig.log.first("web2 drain"), Some(paused_at + secs(3600)));
    assert_eq!(rig.fleet(), serving("v2", 3));
}

#[tokio::test(start_paused = true)]
async fn a_canary_rollout_holds_the_queue_across_a_restart_until_promoted() {
    let rig = Rig::new(Setup {
        service_keys: "canary = 1",
        ..Setup::default()
    })
    .await;
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let next = rig.queue("v3").await;
    rig.status(id, |s| s == RolloutStatus::AwaitingPromote)
        .await;
    let calls_when_waiting = rig.log.asked();
    assert_eq!(
        rig.fleet(),
        [("v2", "UP"), ("v1", "UP"), ("v1", "UP")].map(|(v, s)| (v.to_owned(), s.to_owned())),
        "only the canary runs the new version, and every backend serves"
    );

    // An hour later, and after a restart, it still waits, and so does the rollout behind it.
    sleep(secs(3600)).await;
    worker.stop().await;
    let worker = rig.start_worker();
    sleep(secs(60)).await;
    assert_eq!(
        rig.log.asked(),
        calls_when_waiting,
        "nothing asked of HAProxy or the runtime while awaiting promotion"
    );
    assert_eq!(
        rig.deployment(id).await.status,
        RolloutStatus::AwaitingPromote
    );
    assert_eq!(rig.deployment(next).await.status, RolloutStatus::Queued);

    rig.control(id, ControlAction::Promote);
    let done = rig.ended(id).await;
    assert_eq!(done.status, RolloutStatus::Succeeded);
    // The next rollout's canary waits in turn.
    rig.status(next, |s| s == RolloutStatus::AwaitingPromote)
        .await;
    rig.control(next, ControlAction::Abort);
    let aborted = rig.ended(next).await;
    worker.stop().await;
    assert_eq!(aborted.status, RolloutStatus::Cancelled);
    assert_eq!(
        aborted.reason.as_deref(),
        Some(
            "aborted by an operator before the canaries were promoted; web1 went back to v2, \
             and every backend is serving"
        )
    );
    assert_eq!(rig.fleet(), serving("v2", 3));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_awaiting_approval_touches_nothing_and_holds_the_queue_across_a_restart() {
    let rig = Rig::new(Setup {
        service_keys: "approval = \"start\"",
        ..Setup::default()
    })
    .await;
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let next = rig.queue("v3").await;
    rig.status(id, |s| s == RolloutStatus::AwaitingApproval)
        .await;
    sleep(secs(3600)).await;
    worker.stop().await;
    let worker = rig.start_worker();
    sleep(secs(60)).await;
    assert!(
        rig.log.actions().is_empty(),
        "nothing touched: {:?}",
        rig.log.actions()
    );
    assert!(rig.steps(id).await.is_empty());
    assert_eq!(
        rig.deployment(id).await.status,
        RolloutStatus::AwaitingApproval
    );
    assert_eq!(rig.deployment(next).await.status, RolloutStatus::Queued);

    rig.control(id, ControlAction::Approve);
    assert_eq!(rig.ended(id).await.status, RolloutStatus::Succeeded);
    assert_eq!(rig.fleet(), serving("v2", 3));
    // The next one waits for its own approval; an abort cancels it with nothing touched.
    rig.status(next, |s| s == RolloutStatus::AwaitingApproval)
        .await;
    let calls = rig.log.asked();
    rig.control(next, ControlAction::Abort);
    let cancelled = rig.ended(next).await;
    worker.stop().await;
    assert_eq!(cancelled.status, RolloutStatus::Cancelled);
    assert!(rig.steps(next).await.is_empty());
    assert_eq!(rig.log.asked(), calls);
}

#[tokio::test(start_paused = true)]
async fn an_abort_puts_the_backend_in_progress_back_and_leaves_the_rest_serving() {
    let rig = Rig::new(Setup::default()).await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: secs(3) });
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    // While web2's new version is starting (Baton probes it): the abort applies once that
    // step ends.
    let aborted_at = rig.call("probe web2", 1).await;
    rig.control(id, ControlAction::Abort);
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::Cancelled,
        "{:#?}",
        rig.steps(id).await
    );
    // Asked during wait_healthy, the abort applies when that step ends, before lb_check.
    assert_eq!(
        done.reason.as_deref(),
        Some(
            "aborted by an operator at lb_check; backends already done keep the new version, \
             and every backend is serving"
        )
    );
    // web2's new process answers at 6.15 s and passes Baton's probe at 6.2 s; then web2 goes
    // back to v1 by the whole procedure.
    assert_eq!(aborted_at, ms(3150));
    assert_eq!(
        rig.actions_from(aborted_at + ms(1)),
        owned(&[
            (6200, "web2 drain"),
            (6200, "web2 maint"),
            (6200, "stop web2"),
            (6200, "start web2 v1"),
            (6250, "web2 drain"),
            (6350, "web2 ready"),
        ])
    );
    assert!(
        rig.log.first("web3 drain").is_none(),
        "web3 was never touched"
    );
    assert_eq!(
        rig.fleet(),
        [("v2", "UP"), ("v1", "UP"), ("v1", "UP")].map(|(v, s)| (v.to_owned(), s.to_owned()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_cancelled_while_queued_never_runs() {
    let rig = Rig::new(Setup::default()).await;
    let first = rig.queue("v2").await;
    let second = rig.queue("v3").await;
    let store = rig.store.clone();
    let cancelled = db(async move { store.cancel_queued(second, "cancelled by a test").await })
        .await
        .unwrap();
    assert!(cancelled);
    let worker = rig.start_worker();
    assert_eq!(rig.ended(first).await.status, RolloutStatus::Succeeded);
    sleep(secs(3600)).await;
    worker.stop().await;

    assert_eq!(
        rig.deployment(second).await.status,
        RolloutStatus::Cancelled
    );
    assert!(rig.steps(second).await.is_empty());
    assert!(
        !rig.log.actions().iter().any(|a| a.contains("v3")),
        "{:#?}",
        rig.log.actions()
    );
    assert_eq!(rig.fleet(), serving("v2", 3));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_worker_even_while_haproxy_hangs_and_leaves_the_step_open() {
    let rig = Rig::new(Setup::default()).await;
    rig.lb.set_fault("n1", Some(Fault::Hangs));
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    rig.status(id, |s| s == RolloutStatus::Running).await;
    sleep(secs(60)).await;
    let stopping = rig.log.elapsed();
    worker.stop().await;

    assert_eq!(rig.log.elapsed(), stopping, "the worker stopped at once");
    assert_eq!(
        rig.steps(id).await,
        ["- prepare ok", "web1 check_capacity running"],
        "the step a restart runs again"
    );
    assert_eq!(rig.deployment(id).await.status, RolloutStatus::Running);
}

#[test]
fn the_next_rollout_drops_what_was_asked_of_an_ended_one() {
    let controls = Controls::default();
    controls.push(7, ControlAction::Abort);
    controls.push(8, ControlAction::Pause);
    assert_eq!(controls.take(8), [ControlAction::Pause]);
    assert!(controls.take(7).is_empty(), "dropped, not kept for later");
}

#[test]
fn only_a_fresh_passing_check_of_a_drained_server_passes_the_lb_check() {
    use crate::drivers::{CheckResult, Health, MaintCause};
    let server = |status| ServerStatus {
        node: "n".into(),
        server: "s1".into(),
        status,
        check: Some(CheckResult::Passed("L7OK".into())),
        sessions: 0,
        backup: false,
        fall: Some(2),
        counters: Default::default(),
    };
    let stale = Some(Health { current: 1, of: 2 });
    assert!(lb_check_passed(&server(ServerState::Drain {
        changing: None
    })));
    assert!(lb_check_passed(&server(ServerState::NoCheck)));
    for status in [
        // Just out of maint: the L7OK is from before.
        ServerState::Drain { changing: stale },
        ServerState::AgentDrain,
        ServerState::Up { changing: None },
        ServerState::Up { changing: stale },
        ServerState::Maint {
            cause: MaintCause::Admin,
        },
        ServerState::Down { changing: None },
        ServerState::Other {
            word: "STARTING".into(),
        },
    ] {
        assert!(!lb_check_passed(&server(status.clone())), "{status}");
    }
}

/// Waits until `done` holds for the fleet, as the runtime and HAProxy's node show it.
async fn fleet_becomes(rig: &Rig, what: &str, done: impl Fn(&[(String, String)]) -> bool) {
    let waited = timeout(STUCK, async {
        while !done(&rig.fleet()) {
            sleep(ms(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never {what}: {:?}", rig.fleet());
}

#[tokio::test(start_paused = true)]
async fn a_backend_whose_host_is_cut_while_it_stops_is_left_out_then_adopted_when_it_returns() {
    let rig = Rig::new(Setup::default()).await;
    rig.runtime.cut("web2", Some(Cut::Now));
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;

    // web1 went back to v1, web3 was never touched, web2 waits out of rotation.
    assert_eq!(
        done.status,
        RolloutStatus::Failed,
        "{:#?}",
        rig.steps(id).await
    );
    let reason = done.reason.unwrap();
    assert!(
        reason.contains("stop failed on web2") && reason.contains("unreachable"),
        "{reason}"
    );
    assert_eq!(
        rig.fleet(),
        [
            ("v1".to_owned(), "UP".to_owned()),
            ("v1".to_owned(), "MAINT".to_owned()),
            ("v1".to_owned(), "UP".to_owned()),
        ]
    );

    // Back: its process never stopped, so it is adopted, checked and put back in rotation.
    let back = rig.log.actions().len();
    rig.runtime.cut("web2", None);
    rig.repairs.request([BackendName::parse("web2").unwrap()]);
    rig.wake.notify_one();
    fleet_becomes(&rig, "all v1 and UP", |fleet| fleet == serving("v1", 3)).await;
    worker.stop().await;
    let acted = rig.log.actions().split_off(back);
    assert_eq!(
        acted,
        ["web2 drain", "web2 ready"],
        "adopted, not restarted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_whose_host_is_cut_after_its_stop_gets_its_recorded_version_started_when_it_returns()
 {
    let rig = Rig::new(Setup::default()).await;
    rig.runtime.cut("web2", Some(Cut::AfterStop));
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let done = rig.ended(id).await;
    assert_eq!(
        done.status,
        RolloutStatus::Failed,
        "{:#?}",
        rig.steps(id).await
    );
    assert!(done.reason.unwrap().contains("start failed on web2"));
    assert_eq!(
        rig.runtime.version_of("web2"),
        None,
        "stopped, and nothing started"
    );

    let back = rig.log.actions().len();
    rig.runtime.cut("web2", None);
    rig.repairs.request([BackendName::parse("web2").unwrap()]);
    rig.wake.notify_one();
    fleet_becomes(&rig, "all v1 and UP", |fleet| fleet == serving("v1", 3)).await;
    worker.stop().await;
    let acted = rig.log.actions().split_off(back);
    assert_eq!(acted, ["start web2 v1", "web2 drain", "web2 ready"]);
}

#[tokio::test(start_paused = true)]
async fn a_repair_of_a_backend_baton_did_not_leave_out_keeps_an_operators_maint() {
    let rig = Rig::new(Setup::default()).await;
    rig.lb
        .set_state("web", "web3", AdminState::Maint)
        .await
        .unwrap();
    let worker = rig.start_worker();
    rig.repairs.request([BackendName::parse("web3").unwrap()]);
    rig.wake.notify_one();
    rig.call("status web3", 1).await;
    sleep(Duration::from_secs(5)).await;
    worker.stop().await;
    assert_eq!(rig.fleet()[2], ("v1".to_owned(), "MAINT".to_owned()));
}

/// Each batch is watched for `[service.soak] duration` once UP: web1's 2 5xx are within
/// `max_5xx`, web2's 3 are not, and the rollout goes back, web2 and web1 alike.
#[tokio::test(start_paused = true)]
async fn a_watched_batch_holds_the_next_for_the_watch_and_5xx_past_the_limit_roll_it_back() {
    let rig = Rig::new(Setup {
        backends: 3,
        soak: Some(("10s", 2)),
        ..Setup::default()
    })
    .await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: ms(300) });
    // Every event told to a webhook, to see the trip announced.
    let mut service = (*rig.service).clone();
    service.notify = vec![crate::settings::NotifySettings {
        kind: app::model::NotifyKind::Webhook,
        url_env: "HOOK_URL".into(),
        url: crate::settings::NotifyUrl::parse("http://127.0.0.1:9/hook").unwrap(),
        secret: None,
        events: vec![
            NotificationEvent::Started,
            NotificationEvent::Succeeded,
            NotificationEvent::Failed,
            NotificationEvent::RolledBack,
            NotificationEvent::SoakTripped,
        ],
    }];
    let (outbox, mut told) = crate::notify::Outbox::recording();
    let worker = rig.start_worker_told(Arc::new(service), outbox);
    let id = rig.queue("v2").await;
    let web1_up = rig.call("web1 ready", 1).await;
    // Once the watch began (confirm_up takes no time here): what the watch counts.
    sleep(secs(1)).await;
    rig.lb.serve("n1", "web1", 100, 2);
    let web2_drained = rig.call("web2 drain", 1).await;
    assert!(
        web2_drained >= web1_up + secs(10),
        "web2 waited for web1's watch: web1 ready at {web1_up:?}, web2 drained at {web2_drained:?}"
    );
    rig.call("web2 ready", 1).await;
    sleep(secs(1)).await;
    rig.lb.serve("n1", "web2", 40, 3);
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::RolledBack,
        "{:#?}",
        rig.steps(id).await
    );
    let reason = done.reason.unwrap_or_default();
    assert!(
        reason.starts_with(
            "soak failed on web2: web2 answered 3 5xx of 40 request(s), more than max_5xx = 2, \
             1.0s into the 10s watch"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("into the 10s watch; every changed backend was rolled back"),
        "{reason}"
    );
    assert_eq!(
        rig.detail(id, "web1", "soak").await.as_deref(),
        Some("watched for 10s: web1 100 request(s), 2 5xx")
    );
    assert!(
        rig.log.first("web3 drain").is_none(),
        "web3 was never touched"
    );
    assert_eq!(rig.fleet(), serving("v1", 3));
    let mut events = Vec::new();
    while let Ok(job) = told.try_recv() {
        let notice = job.notice();
        events.push((notice.event, notice.reason.clone().unwrap_or_default()));
    }
    assert_eq!(
        events.iter().map(|(event, _)| *event).collect::<Vec<_>>(),
        [
            NotificationEvent::Started,
            NotificationEvent::SoakTripped,
            NotificationEvent::RolledBack
        ]
    );
    assert!(
        events[1]
            .1
            .starts_with("web2: web2 answered 3 5xx of 40 request(s)"),
        "{events:?}"
    );
}

/// An abort during a long watch ends it at once: the batch already serves the new version.
#[tokio::test(start_paused = true)]
async fn an_abort_ends_the_watch_at_once_and_the_watched_batch_keeps_the_new_version() {
    let rig = Rig::new(Setup {
        backends: 2,
        soak: Some(("10m", 0)),
        ..Setup::default()
    })
    .await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: ms(300) });
    let started = tokio::time::Instant::now();
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    let web1_up = rig.call("web1 ready", 1).await;
    sleep(secs(5)).await;
    rig.control(id, ControlAction::Abort);
    let done = rig.ended(id).await;
    let ended_after = started.elapsed();
    worker.stop().await;

    assert_eq!(done.status, RolloutStatus::Cancelled);
    assert_eq!(
        done.reason.as_deref(),
        Some(
            "aborted by an operator at soak; backends already done keep the new version, \
             and every backend is serving"
        )
    );
    assert!(
        ended_after < web1_up + secs(6),
        "ended at {ended_after:?}, not after the 10m watch"
    );
    let detail = rig.detail(id, "web1", "soak").await.unwrap_or_default();
    assert!(
        detail.starts_with("the watch ended after 5.")
            && detail.ends_with("of 10m: aborted by an operator"),
        "{detail}"
    );
    assert_eq!(
        rig.fleet(),
        [("v2", "UP"), ("v1", "UP")].map(|(v, s)| (v.to_owned(), s.to_owned()))
    );
}

/// After a surge the watch reads the server the new instance serves as (`web1:surge`), and a
/// trip surges the backend back to the address it began on.
#[tokio::test(start_paused = true)]
async fn a_surged_backend_is_watched_as_its_new_server_and_a_trip_surges_it_back() {
    let rig = Rig::new(Setup {
        backends: 2,
        surge: Some("1s"),
        soak: Some(("5s", 0)),
        ..Setup::default()
    })
    .await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: ms(300) });
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    rig.call("del server web1", 1).await;
    sleep(secs(1)).await;
    // The old server is gone: only the new one can have served these.
    rig.lb.serve("n1", "web1:surge", 10, 1);
    let done = rig.ended(id).await;
    worker.stop().await;

    assert_eq!(
        done.status,
        RolloutStatus::RolledBack,
        "{:#?}",
        rig.steps(id).await
    );
    let reason = done.reason.unwrap_or_default();
    assert!(
        reason.starts_with(
            "soak failed on web1: web1:surge answered 1 5xx of 10 request(s), more than max_5xx = 0,"
        ),
        "{reason}"
    );
    assert_eq!(rig.runtime.version_of("web1").as_deref(), Some("v1"));
    assert_eq!(rig.runtime.version_of("web1:surge"), None, "retired");
    assert!(
        rig.log.first("web2 drain").is_none(),
        "web2 was never touched"
    );
}

/// A reload makes HAProxy forget the servers a surge added: the idle worker adds each current
/// instance's server back, in rotation once its check passes, and takes out the configured one
/// at the address nothing listens on.
#[tokio::test(start_paused = true)]
async fn after_haproxy_forgets_the_surge_servers_the_idle_worker_puts_them_back() {
    let rig = Rig::new(Setup {
        backends: 2,
        surge: Some("1s"),
        ..Setup::default()
    })
    .await;
    rig.runtime
        .script("v2", Behaviour::Answers { after: ms(300) });
    let worker = rig.start_worker();
    let id = rig.queue("v2").await;
    assert_eq!(rig.ended(id).await.status, RolloutStatus::Succeeded);
    assert_eq!(rig.lb.server_names("n1"), ["web1:surge", "web2:surge"]);

    rig.lb.reload();
    let reloaded = tokio::time::Instant::now();
    assert_eq!(rig.lb.server_names("n1"), ["web1", "web2"]);
    let restored = timeout(secs(10), async {
        loop {
            let names = rig.lb.server_names("n1");
            let up = |server: &str| rig.lb.status("n1", server).is_up();
            if names == ["web1:surge", "web2:surge"] && up("web1:surge") && up("web2:surge") {
                return;
            }
            sleep(ms(10)).await;
        }
    })
    .await;
    worker.stop().await;
    assert!(
        restored.is_ok(),
        "not restored within 10 s: {:?}",
        rig.lb.server_names("n1")
    );
    // Noticed within a second, then HAProxy's check of the added server (`inter` 100 ms).
    assert!(reloaded.elapsed() <= ms(1500), "{:?}", reloaded.elapsed());
    assert_eq!(rig.runtime.version_of("web1:surge").as_deref(), Some("v2"));
}
