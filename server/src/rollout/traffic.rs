//! The traffic sampler: while a rollout runs, it reads the service's HAProxy counters every
//! second and keeps, with the rollout, what each backend served since the previous read. The
//! rollout page draws it (requests/s and 5xx/s per backend, with the steps marked), so a reader
//! sees that traffic moved off each batch and back, and that nothing failed meanwhile.
//!
//! Invariant: the sampler never holds up or fails the rollout. It runs beside the executor on a
//! task of its own ([`Sampling`], ended when the rollout ends or the worker stops); a load
//! balancer that does not answer costs a sample (the next one covers the gap), and a sample the
//! database refuses is lost. Only the leader's worker starts one, and its writes are fenced like
//! the step rows, so a replica that stopped leading stops writing.
//!
//! Storage is bounded: one row per sample with every backend's two counts, every second for the
//! first [`FINE_SAMPLES`] (ten minutes), every [`COARSE_EVERY`] after. An hour-long rollout of
//! 500 backends keeps about 900 rows of about 10 KB: some 9 MB.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::domain::Slot;
use crate::drivers::{LoadBalancer, ServerCounters, ServerStatus};
use crate::rollout::journal::Journal;
use crate::settings::ServiceSettings;
use crate::store::{BackendTraffic, StoreError};

/// How often a rollout's traffic is sampled at first.
pub const EVERY: Duration = Duration::from_secs(1);
/// How many samples are taken every [`EVERY`] before sampling slows to [`COARSE_EVERY`].
pub const FINE_SAMPLES: u32 = 600;
/// How often a rollout's traffic is sampled after its first [`FINE_SAMPLES`].
pub const COARSE_EVERY: Duration = Duration::from_secs(10);

/// A server's counters by HAProxy node and server name, as read at one moment.
type Reading = HashMap<(String, String), ServerCounters>;

/// Samples one rollout's traffic.
pub struct Sampler {
    lb: Arc<dyn LoadBalancer>,
    store: Arc<dyn Journal>,
    deployment: i64,
    haproxy_backend: String,
    /// Each configured backend, in configuration order, with its HAProxy servers: its own and
    /// its surge server (which counts toward it while a surge has it).
    backends: Vec<(String, [String; 2])>,
    every: Duration,
    coarse_every: Duration,
}

impl Sampler {
    pub fn new(
        service: &ServiceSettings,
        lb: Arc<dyn LoadBalancer>,
        store: Arc<dyn Journal>,
        deployment: i64,
    ) -> Self {
        Self {
            lb,
            store,
            deployment,
            haproxy_backend: service.haproxy_backend.clone(),
            backends: service
                .backends
                .iter()
                .map(|backend| {
                    (
                        backend.name.to_string(),
                        [
                            backend.haproxy_server(Slot::Address),
                            backend.haproxy_server(Slot::SurgeAddress),
                        ],
                    )
                })
                .collect(),
            every: EVERY,
            coarse_every: COARSE_EVERY,
        }
    }

    /// Starts sampling on a task of its own, until `stop` is cancelled or the returned
    /// [`Sampling`] is dropped, whichever comes first.
    pub fn start(self, stop: CancellationToken) -> Sampling {
        let task = tokio::spawn(self.run(stop.clone()));
        Sampling { stop, task }
    }

    /// Samples until `stop`. Cancellation-safe: it only reads HAProxy and appends samples.
    async fn run(self, stop: CancellationToken) {
        let mut previous: Option<(Instant, Reading)> = None;
        let mut taken = 0;
        let mut warned = false;
        loop {
            let read = tokio::select! {
                read = self.lb.servers(&self.haproxy_backend) => read,
                _ = stop.cancelled() => return,
            };
            match read {
                Ok(servers) => {
                    let now = Instant::now();
                    let reading = reading(servers);
                    if let Some((then, earlier)) = &previous {
                        let span_ms = now.duration_since(*then).as_millis() as i64;
                        let served = self.served(earlier, &reading);
                        let saved = tokio::select! {
                            saved = self.store.save_traffic(self.deployment, span_ms, &served) => saved,
                            _ = stop.cancelled() => return,
                        };
                        match saved {
                            Ok(()) => taken += 1,
                            Err(error @ StoreError::Fenced { .. }) => {
                                tracing::debug!(%error, "traffic sampling stops: this replica no longer leads");
                                return;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "a traffic sample could not be kept; the chart has a gap");
                            }
                        }
                    }
                    previous = Some((now, reading));
                }
                // Said once per rollout: the executor reports HAProxy's silence where it matters.
                Err(error) if !warned => {
                    warned = true;
                    tracing::warn!(%error, "cannot read HAProxy's counters for the traffic chart; skipping samples until it answers");
                }
                Err(error) => {
                    tracing::debug!(%error, "traffic sample skipped");
                }
            }
            let wait = if taken < FINE_SAMPLES {
                self.every
            } else {
                self.coarse_every
            };
            tokio::select! {
                _ = sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// What each configured backend served between `earlier` and `now`, summed over nodes and
    /// over its own and its surge server. A server that was not there before was added since
    /// (its counters start at 0), and one whose counters went back was reloaded.
    fn served(&self, earlier: &Reading, now: &Reading) -> Vec<BackendTraffic> {
        let mut by_server: HashMap<&str, ServerCounters> = HashMap::new();
        for (key, counters) in now {
            let delta = counters.since(earlier.get(key).copied().unwrap_or_default());
            let total = by_server.entry(key.1.as_str()).or_default();
            *total = *total + delta;
        }
        self.backends
            .iter()
            .map(|(backend, servers)| {
                let total = servers
                    .iter()
                    .filter_map(|server| by_server.get(server.as_str()))
                    .fold(ServerCounters::default(), |sum, counters| sum + *counters);
                BackendTraffic {
                    backend: backend.clone(),
                    requests: total.requests,
                    errors_5xx: total.errors_5xx,
                }
            })
            .collect()
    }
}

fn reading(servers: Vec<ServerStatus>) -> Reading {
    servers
        .into_iter()
        .map(|s| ((s.node, s.server), s.counters))
        .collect()
}

/// A rollout's sampler at work; dropping it stops the sampler.
pub struct Sampling {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Sampling {
    fn drop(&mut self) {
        self.stop.cancel();
        // Stopping is immediate at its next await; aborting too makes sure a sample being
        // written for a rollout that just ended is not waited for.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::fake::{CallLog, Checks, FakeLb, FakeRuntime, Fault, What};
    use crate::store::Store;
    use crate::store::testing::TestDatabase;
    use app::model::{RolloutTraffic, Trigger};

    fn sampler(lb: Arc<FakeLb>, store: Store, deployment: i64) -> Sampler {
        Sampler {
            lb,
            store: Arc::new(store),
            deployment,
            haproxy_backend: "web".to_owned(),
            backends: ["web1", "web2"]
                .iter()
                .map(|name| {
                    (
                        name.to_string(),
                        [name.to_string(), format!("{name}:surge")],
                    )
                })
                .collect(),
            every: Duration::from_millis(20),
            coarse_every: Duration::from_millis(20),
        }
    }

    fn fake_lb(servers: &[&str]) -> Arc<FakeLb> {
        let runtime = Arc::new(FakeRuntime::new(CallLog::new()));
        Arc::new(FakeLb::new(
            runtime,
            "web",
            &["lb1", "lb2"],
            servers,
            Checks::default(),
        ))
    }

    async fn rollout(store: &Store) -> i64 {
        store
            .insert_deployment(&crate::store::NewDeployment {
                service: "web",
                from_version: Some("v1"),
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "{}",
            })
            .await
            .unwrap()
    }

    /// Waits (a bounded while) until `done` holds of the rollout's stored traffic.
    async fn kept(
        store: &Store,
        id: i64,
        done: impl Fn(&RolloutTraffic) -> bool,
    ) -> RolloutTraffic {
        for _ in 0..500 {
            let traffic = store.traffic(id).await.unwrap();
            if done(&traffic) {
                return traffic;
            }
            sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the traffic never got there: {:?}",
            store.traffic(id).await.unwrap()
        );
    }

    fn total(traffic: &RolloutTraffic, backend: &str) -> (u64, u64) {
        traffic
            .backends
            .iter()
            .find(|s| s.backend == backend)
            .map_or((0, 0), |s| {
                s.points
                    .iter()
                    .fold((0, 0), |(r, e), p| (r + p.requests, e + p.errors_5xx))
            })
    }

    #[tokio::test]
    async fn each_backend_is_charged_what_its_servers_served_on_every_node_since_sampling_began() {
        let db = TestDatabase::sqlite();
        let store = db.connect().await;
        let id = rollout(&store).await;
        let lb = fake_lb(&["web1", "web2", "web1:surge", "other"]);
        // Served before the rollout began: not the rollout's traffic.
        lb.serve("lb1", "web1", 1_000, 7);
        let sampling = sampler(lb.clone(), store.clone(), id).start(CancellationToken::new());
        kept(&store, id, |t| !t.backends.is_empty()).await;
        lb.serve("lb1", "web1", 30, 0);
        lb.serve("lb2", "web1", 12, 0);
        lb.serve("lb1", "web1:surge", 5, 1);
        lb.serve("lb2", "web2", 40, 2);
        lb.serve("lb1", "other", 99, 99);
        let traffic = kept(&store, id, |t| {
            total(t, "web1").0 == 47 && total(t, "web2").0 == 40
        })
        .await;
        drop(sampling);
        assert_eq!(total(&traffic, "web1"), (47, 1));
        assert_eq!(total(&traffic, "web2"), (40, 2));
        // Only configured backends are charted, in configuration order.
        let names: Vec<&str> = traffic
            .backends
            .iter()
            .map(|s| s.backend.as_str())
            .collect();
        assert_eq!(names, ["web1", "web2"]);
    }

    #[tokio::test]
    async fn a_load_balancer_that_does_not_answer_costs_samples_not_counts_and_sampling_goes_on() {
        let db = TestDatabase::sqlite();
        let store = db.connect().await;
        let id = rollout(&store).await;
        let lb = fake_lb(&["web1", "web2"]);
        let sampling = sampler(lb.clone(), store.clone(), id).start(CancellationToken::new());
        kept(&store, id, |t| !t.backends.is_empty()).await;
        lb.set_fault("lb2", Some(Fault::Refuses));
        lb.serve("lb1", "web1", 10, 0);
        // Several samples skipped: five more reads of HAProxy (20 ms apart), each refused by lb2.
        let reads = || {
            lb.log()
                .calls()
                .iter()
                .filter(|c| c.what == What::Servers)
                .count()
        };
        let before = reads();
        for _ in 0..500 {
            if reads() >= before + 5 {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert!(reads() >= before + 5, "the sampler kept reading");
        assert_eq!(total(&store.traffic(id).await.unwrap(), "web1").0, 0);
        lb.set_fault("lb2", None);
        let traffic = kept(&store, id, |t| total(t, "web1").0 == 10).await;
        drop(sampling);
        let gap = traffic.backends[0]
            .points
            .iter()
            .find(|p| p.requests == 10)
            .unwrap();
        assert!(
            gap.span_ms >= 100,
            "the sample after the gap covers it: {gap:?}"
        );
    }

    #[tokio::test]
    async fn sampling_stops_when_the_rollout_ends_or_the_worker_stops() {
        let db = TestDatabase::sqlite();
        let store = db.connect().await;
        let id = rollout(&store).await;
        let lb = fake_lb(&["web1", "web2"]);
        let stop = CancellationToken::new();
        let sampling = sampler(lb.clone(), store.clone(), id).start(stop.child_token());
        kept(&store, id, |t| !t.backends.is_empty()).await;
        stop.cancel();
        // The task ends by itself, before its handle is dropped.
        for _ in 0..500 {
            if sampling.task.is_finished() {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert!(sampling.task.is_finished());
        let after = store.traffic(id).await.unwrap().backends[0].points.len();
        sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.traffic(id).await.unwrap().backends[0].points.len(),
            after
        );
    }
}
