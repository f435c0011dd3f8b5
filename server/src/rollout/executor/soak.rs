//! The watch after a batch is back in rotation (`[service.soak]`): a version can pass `/alive`
//! and still answer 500s to real users, so before the next batch (and before a rollout
//! succeeds) Baton reads HAProxy's counters of the batch's servers for `duration`.
//!
//! The watch trips when one backend answers more than `max_5xx` 5xx responses, when its health
//! check takes it DOWN, or when it leaves rotation on any node; the step then fails with the
//! numbers, and the engine rolls back as for any failed step. Each backend's counters are
//! compared with their values as the watch began, per node, so traffic before the batch
//! rejoined does not count. A restarted Baton watches the whole `duration` again.

use super::*;
use crate::drivers::ServerCounters;
use crate::settings::SoakSettings;

/// How often the watch reads HAProxy's counters.
const SOAK_POLL: Duration = Duration::from_millis(250);

/// One backend under watch: the HAProxy server its current instance serves as.
struct Watched {
    name: BackendName,
    server: String,
}

/// A server's counters on each node, by node.
type Baseline = HashMap<(String, String), ServerCounters>;

impl ServiceRunner {
    /// Watches the action's backends for the service's `[service.soak] duration`. An abort
    /// asked for meanwhile ends the watch at once (the batch is serving: there is nothing to
    /// put back), as [`Event::Abort`].
    pub(super) async fn soak(
        &self,
        lb: &dyn LoadBalancer,
        deployment: i64,
        action: &Action,
    ) -> (Event, Option<String>) {
        let Some(soak) = self.service.soak else {
            // The configuration changed while Baton was stopped mid-watch.
            return (
                Event::Done,
                Some("not watched: [service.soak] is no longer configured".to_owned()),
            );
        };
        let watched: Vec<Watched> = action
            .backends
            .iter()
            .zip(&action.slots)
            .map(|(name, slot)| {
                // After a surge the instance the rollout started is the current one.
                let slot = match action.strategy {
                    StrategyKind::Rolling => *slot,
                    StrategyKind::Surge => slot.other(),
                };
                Watched {
                    name: name.clone(),
                    server: self.backend(name).haproxy_server(slot),
                }
            })
            .collect();
        let began = Instant::now();
        let baseline: Baseline = match self.servers(lb).await {
            Ok(servers) => servers
                .into_iter()
                .map(|s| ((s.node, s.server), s.counters))
                .collect(),
            Err((_, reason)) => {
                return (
                    Event::Failed {
                        backend: None,
                        reason: format!("cannot begin the watch: {reason}"),
                    },
                    None,
                );
            }
        };
        let duration = soak.duration;
        loop {
            tokio::select! {
                _ = sleep(SOAK_POLL) => {}
                // A control request (an abort, say) wakes the worker.
                _ = self.wake.notified() => {}
            }
            let elapsed = began.elapsed();
            if self.controls.asks_abort(deployment) {
                return (
                    Event::Abort,
                    Some(format!(
                        "the watch ended after {} of {duration}: aborted by an operator",
                        seconds(elapsed)
                    )),
                );
            }
            let servers = match self.servers(lb).await {
                Ok(servers) => servers,
                Err((_, reason)) => {
                    return (
                        Event::Failed {
                            backend: None,
                            reason: format!(
                                "cannot watch the batch {} into the {duration} watch: {reason}",
                                seconds(elapsed)
                            ),
                        },
                        None,
                    );
                }
            };
            let mut seen = Vec::new();
            for backend in &watched {
                match trip(&backend.server, &servers, &baseline, &soak) {
                    Ok(counted) => seen.push((backend, counted)),
                    Err(why) => {
                        return (
                            Event::Failed {
                                backend: Some(backend.name.clone()),
                                reason: format!(
                                    "{why} {} into the {duration} watch",
                                    seconds(elapsed)
                                ),
                            },
                            None,
                        );
                    }
                }
            }
            if elapsed >= duration.get() {
                let counted: Vec<String> = seen
                    .iter()
                    .map(|(backend, c)| {
                        format!(
                            "{} {} request(s), {} 5xx",
                            backend.name, c.requests, c.errors_5xx
                        )
                    })
                    .collect();
                return (
                    Event::Done,
                    Some(format!("watched for {duration}: {}", counted.join("; "))),
                );
            }
        }
    }
}

/// What `server` counted since the watch began, summed over the nodes; `Err` with why the
/// watch trips on it.
fn trip(
    server: &str,
    servers: &[ServerStatus],
    baseline: &Baseline,
    soak: &SoakSettings,
) -> Result<ServerCounters, String> {
    let mut counted = ServerCounters::default();
    let mut nodes = 0;
    for status in servers.iter().filter(|s| s.server == server) {
        nodes += 1;
        if !status.is_up() {
            return Err(format!(
                "HAProxy node {} reports {server} {} (it left rotation)",
                status.node, status.status
            ));
        }
        let before = baseline
            .get(&(status.node.clone(), status.server.clone()))
            .copied()
            .unwrap_or_default();
        counted = counted + status.counters.since(before);
    }
    if nodes == 0 {
        return Err(format!("HAProxy no longer has a server {server}"));
    }
    if counted.check_downs > 0 {
        return Err(format!(
            "{server}'s health check took it DOWN {} time(s)",
            counted.check_downs
        ));
    }
    if counted.errors_5xx > soak.allowed_5xx(counted.requests) {
        let limit = match soak.max_5xx_ratio {
            Some(ratio) => format!(
                "more than max_5xx = {} or max_5xx_ratio = {ratio} of them",
                soak.max_5xx
            ),
            None => format!("more than max_5xx = {}", soak.max_5xx),
        };
        return Err(format!(
            "{server} answered {} 5xx of {} request(s), {limit},",
            counted.errors_5xx, counted.requests
        ));
    }
    Ok(counted)
}

/// `elapsed` as a reader wants it in a reason: "4.2s".
fn seconds(elapsed: Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ServerState;

    fn status(node: &str, state: ServerState, requests: u64, errors_5xx: u64) -> ServerStatus {
        ServerStatus {
            node: node.into(),
            server: "web1".into(),
            status: state,
            check: None,
            sessions: 0,
            backup: false,
            fall: Some(2),
            counters: ServerCounters {
                requests,
                errors_5xx,
                check_downs: 0,
            },
        }
    }

    #[test]
    fn counts_since_the_watch_began_on_every_node_and_trips_past_max_5xx() {
        let up = || ServerState::Up { changing: None };
        let baseline: Baseline = [
            (
                ("a".into(), "web1".into()),
                status("a", up(), 100, 7).counters,
            ),
            (
                ("b".into(), "web1".into()),
                status("b", up(), 50, 0).counters,
            ),
        ]
        .into();
        let now = [status("a", up(), 130, 8), status("b", up(), 70, 1)];
        let soak = |max_5xx, max_5xx_ratio| SoakSettings {
            duration: crate::domain::Duration::from_millis(1000),
            max_5xx,
            max_5xx_ratio,
        };
        // 50 requests on the two nodes; the 7 errors from before the watch do not count.
        assert_eq!(
            trip("web1", &now, &baseline, &soak(2, None)),
            Ok(ServerCounters {
                requests: 50,
                errors_5xx: 2,
                check_downs: 0
            })
        );
        let tripped = trip("web1", &now, &baseline, &soak(1, None)).unwrap_err();
        assert_eq!(
            tripped,
            "web1 answered 2 5xx of 50 request(s), more than max_5xx = 1,"
        );
        // 4 % of 50 requests is 2 errors: allowed; 2 % is 1: not.
        assert!(trip("web1", &now, &baseline, &soak(0, Some(0.04))).is_ok());
        assert_eq!(
            trip("web1", &now, &baseline, &soak(0, Some(0.02))).unwrap_err(),
            "web1 answered 2 5xx of 50 request(s), more than max_5xx = 0 or max_5xx_ratio = 0.02 of them,"
        );
    }

    #[test]
    fn trips_when_the_server_leaves_rotation_or_goes_down_or_is_gone() {
        let baseline = Baseline::new();
        let none = SoakSettings {
            duration: crate::domain::Duration::from_millis(1000),
            max_5xx: 0,
            max_5xx_ratio: None,
        };
        let drained = [status("a", ServerState::Drain { changing: None }, 0, 0)];
        assert!(
            trip("web1", &drained, &baseline, &none)
                .unwrap_err()
                .contains("HAProxy node a reports web1 DRAIN")
        );
        let mut flapped = status("a", ServerState::Up { changing: None }, 0, 0);
        flapped.counters.check_downs = 1;
        assert!(
            trip("web1", &[flapped], &baseline, &none)
                .unwrap_err()
                .contains("health check took it DOWN 1 time(s)")
        );
        assert_eq!(
            trip("web1", &[], &baseline, &none),
            Err("HAProxy no longer has a server web1".to_owned())
        );
    }
}
