//! Baton's Prometheus metrics: what `GET /metrics` shows, and the calls that count it.
//!
//! One [`Metrics`] per Baton (the fleet owns it), on an explicit `prometheus-client` registry
//! rather than a process-wide one, so two Batons in one process (the tests) count apart. Each
//! replica counts what it did itself: rollouts and steps on the leader that ran them, requests
//! and streams on the replica that served them; sum over replicas for the whole.
//!
//! Label values come from Baton's vocabulary enums (`RolloutStatus`, `StepKind`, a server's
//! state) through functions that match every variant, or from the configuration (service names,
//! route templates): never from what a client sent, so no caller can grow the label sets.

mod metered;

use std::fmt::Write as _;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use app::model::{RolloutStatus, ServerState, ServiceStatus, StepKind};
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use metered::Metered;

/// What `GET /metrics` answers with: the OpenMetrics text format, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Baton's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    rollouts: Family<RolloutLabels, Counter>,
    steps: Family<StepLabels, Histogram, fn() -> Histogram>,
    backends: Family<BackendLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    streams: Family<StreamLabels, Gauge<i64, AtomicI64>>,
    soak_trips: Family<ServiceLabel, Counter>,
    /// Refreshing the backend gauges and encoding them is one step, so two scrapes at once
    /// never show a half-refreshed family.
    scrape: Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    /// The matched route's template (`/api/deployments/{id}`), or `unmatched`.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// Which live event stream a subscriber follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStream {
    /// `GET /api/events`: the whole fleet.
    Fleet,
    /// `GET /api/deployments/{id}/events`: one rollout.
    Deployment,
}

impl EventStream {
    fn label(self) -> &'static str {
        match self {
            EventStream::Fleet => "fleet",
            EventStream::Deployment => "deployment",
        }
    }
}

/// How long steps take, in seconds: from 10 ms (a `maint`) to about 20 minutes (a long drain).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

impl Metrics {
    /// Fresh metrics for a fleet of `services`: their soak-trip counters exist from the start,
    /// at 0.
    pub fn new<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
        let mut registry = Registry::with_prefix("baton");
        let rollouts = Family::<RolloutLabels, Counter>::default();
        registry.register(
            "rollouts",
            "Rollouts this replica finished, by service and outcome (succeeded, failed, \
             rolled_back, cancelled)",
            rollouts.clone(),
        );
        let steps = Family::<StepLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            step_histogram,
        );
        registry.register_with_unit(
            "step_duration",
            "How long each backend's rollout steps took, by step",
            prometheus_client::registry::Unit::Seconds,
            steps.clone(),
        );
        let backends = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backends",
            "Backends by service and state, one per backend and load-balancer node, as the \
             fleet's last snapshot saw them (unknown: the load balancer did not answer)",
            backends.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries received, by verdict",
            deliveries.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route template and status",
            requests.clone(),
        );
        let streams = Family::<StreamLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "event_stream_subscribers",
            "Event streams (Server-Sent Events) open now, by stream",
            streams.clone(),
        );
        for stream in [EventStream::Fleet, EventStream::Deployment] {
            let _zero = streams.get_or_create(&StreamLabels {
                stream: stream.label(),
            });
        }
        let soak_trips = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "soak_trips",
            "Post-enable watches (soak) that tripped and failed a rollout, by service",
            soak_trips.clone(),
        );
        for service in services {
            let _zero = soak_trips.get_or_create(&ServiceLabel {
                service: service.to_owned(),
            });
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                rollouts,
                steps,
                backends,
                deliveries,
                requests,
                streams,
                soak_trips,
                scrape: Mutex::new(()),
            }),
        }
    }

    /// A rollout of `service` ended with `status`. Statuses that are not an end are ignored.
    pub fn rollout_finished(&self, service: &str, status: RolloutStatus) {
        let outcome = match status {
            RolloutStatus::Queued
            | RolloutStatus::Running
            | RolloutStatus::Paused
            | RolloutStatus::AwaitingApproval
            | RolloutStatus::AwaitingPromote => return,
            RolloutStatus::Succeeded
            | RolloutStatus::Failed
            | RolloutStatus::RolledBack
            | RolloutStatus::Cancelled => status.as_str(),
        };
        self.inner
            .rollouts
            .get_or_create(&RolloutLabels {
                service: service.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A step on one backend (or the whole rollout, for `prepare`) took `seconds`.
    pub fn step_took(&self, step: StepKind, seconds: f64) {
        self.inner
            .steps
            .get_or_create(&StepLabels {
                step: step.as_str(),
            })
            .observe(seconds);
    }

    /// A webhook delivery was answered with `verdict` (the delivery log's word for it).
    pub fn delivery(&self, verdict: &'static str) {
        self.inner
            .deliveries
            .get_or_create(&DeliveryLabels { verdict })
            .inc();
    }

    /// The soak watch of `service` tripped and failed a rollout.
    pub fn soak_tripped(&self, service: &str) {
        self.inner
            .soak_trips
            .get_or_create(&ServiceLabel {
                service: service.to_owned(),
            })
            .inc();
    }

    /// Counts an open event stream until the returned guard drops (the stream ends or the
    /// client goes away).
    pub fn subscribed(&self, stream: EventStream) -> Subscribed {
        let gauge = self
            .inner
            .streams
            .get_or_create(&StreamLabels {
                stream: stream.label(),
            })
            .clone();
        gauge.inc();
        Subscribed(gauge)
    }

    /// The metrics in the OpenMetrics text format, with the backend gauges taken from `fleet`.
    pub fn render(&self, fleet: &[ServiceStatus]) -> String {
        let _one_at_a_time = self
            .inner
            .scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.inner.backends.clear();
        for service in fleet {
            for backend in &service.backends {
                let states: Vec<&'static str> = if backend.load_balancer.is_empty() {
                    vec!["unknown"]
                } else {
                    backend
                        .load_balancer
                        .iter()
                        .map(|node| state_label(&node.status))
                        .collect()
                };
                for state in states {
                    self.inner
                        .backends
                        .get_or_create(&BackendLabels {
                            service: service.name.clone(),
                            state,
                        })
                        .inc();
                }
            }
        }
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            // Writing to a String fails only if an encoder does; say so rather than half a page.
            text.clear();
            let _ = writeln!(text, "# the metrics could not be encoded: {error}\n# EOF");
        }
        text
    }

    fn request(&self, method: &Method, route: Option<&str>, status: u16) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                route: route.unwrap_or("unmatched").to_owned(),
                status,
            })
            .inc();
    }

    /// `events`, counted as an open `stream` for as long as it lives.
    pub fn counted<S: futures::Stream>(
        &self,
        stream: EventStream,
        events: S,
    ) -> impl futures::Stream<Item = S::Item> + use<S> {
        use futures::StreamExt;
        let subscribed = self.subscribed(stream);
        // The guard moves into the stream: dropping the stream (the client went away, the
        // stream ended) counts it down.
        events.map(move |event| {
            let _open = &subscribed;
            event
        })
    }
}

/// An open event stream, counted until it drops.
pub struct Subscribed(Gauge<i64, AtomicI64>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts every request by method, matched route template and status (a layer on the router,
/// so the refusals of the auth layer are counted too).
pub async fn count_requests(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.request(&method, route.as_deref(), response.status().as_u16());
    response
}

/// The methods Baton serves by name; any other a client invents is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A server's state as a label: HAProxy's word for it, without the check's progress.
fn state_label(state: &ServerState) -> &'static str {
    match state {
        ServerState::Up { .. } => "up",
        ServerState::NoCheck => "no_check",
        ServerState::Nolb { .. } => "nolb",
        ServerState::Drain { .. } => "drain",
        ServerState::AgentDrain => "agent_drain",
        ServerState::Maint { .. } => "maint",
        ServerState::Down { .. } => "down",
        ServerState::AgentDown => "agent_down",
        ServerState::Other { .. } => "other",
    }
}

#[cfg(test)]
mod tests {
    use app::model::{BackendStatus, MaintCause, NodeStatus};

    use super::*;

    fn backend(name: &str, states: &[ServerState]) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            version: "v1".into(),
            load_balancer: states
                .iter()
                .map(|state| NodeStatus {
                    node: "unix:haproxy.sock".into(),
                    status: state.clone(),
                    check: None,
                    sessions: 0,
                    backup: false,
                })
                .collect(),
            host: None,
            overlap: None,
        }
    }

    fn service(name: &str, backends: Vec<BackendStatus>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            load_balancer: "edge".into(),
            haproxy_backend: name.into(),
            backends,
            load_balancer_error: None,
            active: None,
            queued: 0,
            suggested_version: None,
            rollback_version: None,
        }
    }

    #[test]
    fn the_backend_gauges_follow_the_latest_snapshot_only() {
        let metrics = Metrics::new(["api"]);
        let up = ServerState::Up { changing: None };
        let maint = ServerState::Maint {
            cause: MaintCause::Admin,
        };
        let text = metrics.render(&[service(
            "api",
            vec![
                backend("s1", std::slice::from_ref(&up)),
                backend("s2", std::slice::from_ref(&maint)),
                backend("s3", &[]),
            ],
        )]);
        assert!(
            text.contains("baton_backends{service=\"api\",state=\"up\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_backends{service=\"api\",state=\"maint\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_backends{service=\"api\",state=\"unknown\"} 1\n"),
            "{text}"
        );

        let text = metrics.render(&[service(
            "api",
            vec![
                backend("s1", std::slice::from_ref(&up)),
                backend("s2", &[up]),
            ],
        )]);
        assert!(
            text.contains("baton_backends{service=\"api\",state=\"up\"} 2\n"),
            "{text}"
        );
        assert!(
            !text.contains("state=\"maint\""),
            "a state no backend is in is gone: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn soak_trips_and_streams_exist_at_zero_and_streams_count_down_when_they_end() {
        let metrics = Metrics::new(["api", "worker"]);
        let text = metrics.render(&[]);
        assert!(
            text.contains("baton_soak_trips_total{service=\"api\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_soak_trips_total{service=\"worker\"} 0\n"),
            "{text}"
        );
        let open = metrics.subscribed(EventStream::Fleet);
        let text = metrics.render(&[]);
        assert!(
            text.contains("baton_event_stream_subscribers{stream=\"fleet\"} 1\n"),
            "{text}"
        );
        drop(open);
        let text = metrics.render(&[]);
        assert!(
            text.contains("baton_event_stream_subscribers{stream=\"fleet\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn only_ends_of_rollouts_are_counted() {
        let metrics = Metrics::new(["api"]);
        for status in RolloutStatus::ALL {
            metrics.rollout_finished("api", *status);
        }
        let text = metrics.render(&[]);
        for outcome in ["succeeded", "failed", "rolled_back", "cancelled"] {
            assert!(
                text.contains(&format!(
                    "baton_rollouts_total{{service=\"api\",outcome=\"{outcome}\"}} 1\n"
                )),
                "{outcome}: {text}"
            );
        }
        for status in ["queued", "running", "paused"] {
            assert!(!text.contains(&format!("outcome=\"{status}\"")), "{text}");
        }
    }
}
