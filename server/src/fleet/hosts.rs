//! Watching the `[[host]]`s: each is pinged when idle, so the fleet view knows whether it can be
//! reached, and when one comes back after being out of reach, the services with backends there
//! are asked to repair them (see `rollout::executor::Repairs`), if this replica leads: every
//! replica pings, only the leader repairs.

use std::sync::Arc;
use std::time::Duration;

use app::model::Reachability;
use tokio_util::sync::CancellationToken;

use super::Fleet;
use crate::hosts::Host;
use crate::replica::Leadership;

/// How often an idle host is asked whether it is still there. Commands of a rollout count as
/// being seen, so a busy host is not pinged.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Watches `host` until `shutdown`.
pub(super) async fn watch(
    fleet: Arc<Fleet>,
    host: Arc<Host>,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    let mut state = host.state();
    let mut was = state.borrow_and_update().reachability;
    loop {
        if host.quiet_for(PING_INTERVAL) {
            tokio::select! {
                _ = host.ping() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let now = state.borrow_and_update().reachability;
        if was == Reachability::Unreachable
            && now == Reachability::Reachable
            && leadership.is_leader()
        {
            fleet.repair_host(&host);
        }
        was = now;
        tokio::select! {
            _ = tokio::time::sleep(PING_INTERVAL) => {}
            _ = state.changed() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
