//! The shapes the UI shows, shared by the server (which fills them) and the browser.
//!
//! These are views, already validated on the server, so plain strings are enough for names and
//! versions. Baton's own vocabulary (a rollout's status, a step, how it ended, what started it,
//! how a load balancer sees a server) is a closed enum instead, so adding a word is a compile
//! error wherever it must be handled. The JSON API answers with the same shapes, so the UI and
//! the API cannot drift apart. Times are Unix milliseconds; the browser shows them in its own
//! time zone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray, VariantNames};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub load_balancer: String,
    pub haproxy_backend: String,
    pub backends: Vec<BackendSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSummary {
    pub name: String,
    pub address: String,
}

/// The live state of every service: what `GET /api/services` answers and what the fleet-wide
/// event stream sends (as `event: fleet`) whenever something changes.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub load_balancer: String,
    pub haproxy_backend: String,
    pub backends: Vec<BackendStatus>,
    /// Set when HAProxy could not be asked; the backends then show no load-balancer status.
    pub load_balancer_error: Option<String>,
    /// The rollout running, paused or next in the queue, if any.
    pub active: Option<ActiveRollout>,
    /// How many rollouts wait behind the active one.
    pub queued: u32,
    /// What the Redeploy form offers: the version last requested (pushed or deployed).
    pub suggested_version: Option<String>,
    /// Whether a rollback has a previous good version to go back to.
    pub rollback_version: Option<String>,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// The version Baton last started on it.
    pub version: String,
    /// One entry per load-balancer node.
    pub load_balancer: Vec<NodeStatus>,
    /// The `[[host]]` it runs on, as Baton last reached it; `None`: Baton's own machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostView>,
    /// The backend's other instance while a surge overlaps the two (from the moment the new
    /// one is added to the load balancer until the old one is removed); `address` and
    /// `load_balancer` above are the current instance's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<OverlapView>,
}

/// The instance of a backend beside its current one during a surge: arriving (not yet UP and
/// current) or leaving (drained, kept for the overlap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct OverlapView {
    /// Its HAProxy server (`web1:surge` on the surge address).
    pub server: String,
    pub address: String,
    /// The version it runs, as the runtime reports it; `None` when it cannot tell (the
    /// process has ended, say).
    #[serde(default)]
    pub version: Option<String>,
    /// One entry per load-balancer node.
    pub load_balancer: Vec<NodeStatus>,
}

/// Which Baton replica answers, and which one leads (runs rollouts).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The replica that answered.
    pub replica: String,
    /// Its role.
    pub role: ReplicaRole,
    /// The replica that leads, when known (itself when it leads).
    pub leader: Option<String>,
    /// Since when it leads (Unix milliseconds).
    pub leader_since: Option<i64>,
}

/// A replica's part.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ReplicaRole {
    /// Not known yet.
    Starting,
    /// Runs rollouts and brings backends up.
    Leader,
    /// Serves the UI, API, event streams and webhooks; the leader runs what it queues.
    Follower,
}

/// A machine backends run on, reached over OpenSSH, as Baton last saw it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    /// How Baton logs in: `user@address:port`.
    pub ssh: String,
    pub reachable: Reachability,
    /// Why the last attempt to reach it failed (ssh's own words), while it is unreachable.
    pub last_error: Option<String>,
    /// When a command last ran there to its end; `None` before the first.
    pub last_seen: Option<i64>,
}

/// Whether Baton can reach a host now.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Reachability {
    /// Not tried yet since Baton started.
    Unknown,
    Reachable,
    Unreachable,
}

/// How one load-balancer node sees one backend.
///
/// On the wire `status` and `check` stay the load balancer's own words (`"UP 1/2"`, `"L7OK"`), as
/// the API has always answered; `state` and `check_passed` carry the parsed form the UI reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "NodeStatusWire", from = "NodeStatusWire")]
pub struct NodeStatus {
    /// The node's runtime API address, as configured.
    pub node: String,
    /// Whether it routes traffic to the backend, as the driver parsed it.
    pub status: ServerState,
    /// The last health-check result; `None` in maintenance or without checks.
    pub check: Option<CheckResult>,
    /// Open sessions.
    pub sessions: u64,
    /// A backup server (never counted as capacity).
    pub backup: bool,
}

/// [`NodeStatus`] as JSON: the words for people and scripts beside the parsed form.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize)]
struct NodeStatusWire {
    node: String,
    /// What the load balancer said (`UP`, `DRAIN 1/2`, `no check`…); read back from `state`
    /// (so what a client sends here is ignored). Not `skip_deserializing`: the API's
    /// description would leave the field out of the answers too.
    #[serde(default)]
    status: String,
    state: ServerState,
    /// The check result's code (`L7OK`, `L4CON`…).
    check: Option<String>,
    #[serde(default)]
    check_passed: Option<bool>,
    sessions: u64,
    backup: bool,
}

/// The API describes a node's status as it is sent: [`NodeStatusWire`]'s shape.
#[cfg(feature = "ssr")]
impl utoipa::PartialSchema for NodeStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <NodeStatusWire as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "ssr")]
impl utoipa::ToSchema for NodeStatus {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <NodeStatusWire as utoipa::ToSchema>::schemas(schemas);
    }
}

impl From<NodeStatus> for NodeStatusWire {
    fn from(node: NodeStatus) -> Self {
        Self {
            status: node.status.to_string(),
            state: node.status,
            check_passed: node.check.as_ref().map(CheckResult::passed),
            check: node.check.map(CheckResult::into_code),
            node: node.node,
            sessions: node.sessions,
            backup: node.backup,
        }
    }
}

impl From<NodeStatusWire> for NodeStatus {
    fn from(wire: NodeStatusWire) -> Self {
        Self {
            node: wire.node,
            status: wire.state,
            check: wire.check.map(|code| match wire.check_passed {
                Some(true) => CheckResult::Passed(code),
                Some(false) | None => CheckResult::Failed(code),
            }),
            sessions: wire.sessions,
            backup: wire.backup,
        }
    }
}

/// Where a load-balancer node's health check of a server stands on its way between two states:
/// HAProxy's `n/m` (`UP 1/2`: one failed check more and it goes down; `DOWN 1/2`: one passed
/// check more and it comes up).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub current: u32,
    pub of: u32,
}

/// Why a server is in maintenance.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintCause {
    /// Someone set it (`MAINT`): what Baton's `maint` step does.
    Admin,
    /// Its address could not be resolved (`MAINT (resolution)`).
    Resolution,
    /// It tracks another server, `backend/server`, which is in maintenance (`MAINT (via …)`).
    Via(String),
}

/// How a load-balancer node sees a server: whether it sends it traffic, and whether that is
/// settled. Only the driver reads the load balancer's words into this; everything else matches
/// variants.
///
/// `changing` is `Some` while the check health is between two states. Right after a server
/// leaves maintenance it is `Some` *with the check result from before maintenance*, which
/// proves nothing about what listens now (see `drivers/haproxy.rs`): only the settled `Up` and
/// `Drain` are fresh.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServerState {
    /// In rotation (`UP`, or `UP n/m` while `changing`).
    Up { changing: Option<Health> },
    /// In rotation, and the load balancer runs no check on it (`no check`).
    NoCheck,
    /// Stopping: no new traffic, though its checks pass (`NOLB`, `NOLB n/m`).
    Nolb { changing: Option<Health> },
    /// Drained: no new traffic, open sessions go on, checks pass (`DRAIN`, `DRAIN n/m`).
    Drain { changing: Option<Health> },
    /// Drained by an agent check (`DRAIN (agent)`); says nothing about the health check.
    AgentDrain,
    /// No traffic and no checks (`MAINT…`).
    Maint { cause: MaintCause },
    /// Its checks fail (`DOWN`, or `DOWN n/m` while passing checks bring it back).
    Down { changing: Option<Health> },
    /// An agent check took it down (`DOWN (agent)`).
    AgentDown,
    /// A status this version of Baton does not know, as the load balancer wrote it: counts as
    /// neither up nor drained.
    Other { word: String },
}

impl ServerState {
    /// Whether the node routes new requests to the server, settled or not.
    pub fn in_rotation(&self) -> bool {
        match self {
            Self::Up { .. } | Self::NoCheck => true,
            Self::Nolb { .. }
            | Self::Drain { .. }
            | Self::AgentDrain
            | Self::Maint { .. }
            | Self::Down { .. }
            | Self::AgentDown
            | Self::Other { .. } => false,
        }
    }

    /// How far its check health is between two states, if it is.
    pub fn changing(&self) -> Option<Health> {
        match self {
            Self::Up { changing }
            | Self::Nolb { changing }
            | Self::Drain { changing }
            | Self::Down { changing } => *changing,
            Self::NoCheck
            | Self::AgentDrain
            | Self::Maint { .. }
            | Self::AgentDown
            | Self::Other { .. } => None,
        }
    }
}

/// In HAProxy's own words (`UP 1/2`, `MAINT (via api/s1)`, `no check`), which is what an operator
/// compares with `show stat`.
impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with =
            |f: &mut fmt::Formatter<'_>, word: &str, changing: &Option<Health>| match changing {
                Some(Health { current, of }) => write!(f, "{word} {current}/{of}"),
                None => f.write_str(word),
            };
        match self {
            Self::Up { changing } => with(f, "UP", changing),
            Self::NoCheck => f.write_str("no check"),
            Self::Nolb { changing } => with(f, "NOLB", changing),
            Self::Drain { changing } => with(f, "DRAIN", changing),
            Self::AgentDrain => f.write_str("DRAIN (agent)"),
            Self::Maint {
                cause: MaintCause::Admin,
            } => f.write_str("MAINT"),
            Self::Maint {
                cause: MaintCause::Resolution,
            } => f.write_str("MAINT (resolution)"),
            Self::Maint {
                cause: MaintCause::Via(server),
            } => write!(f, "MAINT (via {server})"),
            Self::Down { changing } => with(f, "DOWN", changing),
            Self::AgentDown => f.write_str("DOWN (agent)"),
            Self::Other { word } => f.write_str(word),
        }
    }
}

/// A load balancer's last health-check result for a server, with its code (`L7OK`, `L4CON`, …)
/// as the load balancer wrote it, for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "code", rename_all = "snake_case")]
pub enum CheckResult {
    /// The check passed (at layer 4, 6 or 7, or an external check).
    Passed(String),
    /// It failed, timed out, or has not run yet.
    Failed(String),
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        match self {
            Self::Passed(_) => true,
            Self::Failed(_) => false,
        }
    }

    /// The load balancer's code for it.
    pub fn code(&self) -> &str {
        match self {
            Self::Passed(code) | Self::Failed(code) => code,
        }
    }

    fn into_code(self) -> String {
        match self {
            Self::Passed(code) | Self::Failed(code) => code,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Where a rollout in progress is.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRollout {
    pub id: i64,
    pub status: RolloutStatus,
    pub to_version: String,
    /// The backends the current step acts on (empty for `prepare` or while queued).
    pub backends: Vec<String>,
    pub step: Option<StepKind>,
    pub rolling_back: bool,
    /// Backends finished so far, out of `total`.
    pub done: u32,
    pub total: u32,
}

/// A rollout as the history lists it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub id: i64,
    pub service: String,
    pub status: RolloutStatus,
    /// The version every backend ran before, when they agreed.
    pub from_version: Option<String>,
    pub to_version: String,
    pub trigger: Trigger,
    /// Who asked: a user, a token's name, or a webhook delivery.
    pub requested_by: Option<String>,
    /// Why it failed, was rolled back or was cancelled, in words.
    pub reason: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One step on one backend (or on the whole rollout, for `prepare`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSummary {
    pub id: i64,
    pub backend: Option<String>,
    pub step: StepKind,
    /// Part of putting a backend back on its previous version.
    pub rollback: bool,
    pub version: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `None` while it runs.
    pub outcome: Option<StepOutcome>,
    pub detail: Option<String>,
}

/// A rollout with its whole timeline: what the rollout page renders first, before it follows
/// the rollout's event stream from `last_event_id`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: DeploymentSummary,
    /// The service's backends in rollout order.
    pub backends: Vec<String>,
    pub steps: Vec<StepSummary>,
    /// The id of the newest event already reflected here; the stream continues after it.
    pub last_event_id: i64,
    /// A pause, resume or abort asked for that has not taken effect yet; never set once the
    /// rollout has ended. Absent from older answers, which read as nothing pending.
    #[serde(default)]
    pub pending: Option<PendingControl>,
    /// Who approved it (a service with `approval = "start"`), as the approval names them.
    #[serde(default)]
    pub approved_by: Option<String>,
    /// Who promoted its canaries (a service with `canary`), as the promotion names them.
    #[serde(default)]
    pub promoted_by: Option<String>,
    /// The end of each backend's log as it was when a step on it failed, oldest step first.
    #[serde(default)]
    pub logs: Vec<StepLog>,
}

/// The last lines of a backend's log, read when a step on it failed. The log is what the
/// application printed, so only deployers and admins read its lines; a viewer learns that it
/// is there and how long it is (`withheld`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct StepLog {
    /// The failed step.
    pub step_id: i64,
    pub backend: String,
    /// Where the lines were read: a path, with the host when not on Baton's machine.
    pub source: String,
    pub line_count: u32,
    /// Oldest first; empty when withheld.
    pub lines: Vec<String>,
    pub withheld: bool,
}

/// What each backend served while a rollout ran, from HAProxy's counters as Baton sampled them
/// (`GET /api/deployments/{id}/traffic`): what the rollout page's traffic chart draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct RolloutTraffic {
    /// One series per backend that HAProxy reported, in the order first seen; every series has
    /// a point at every sample, so the lines share one time axis.
    pub backends: Vec<TrafficSeries>,
}

/// One backend's traffic, sample by sample (its surge server, while it had one, counts too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TrafficSeries {
    pub backend: String,
    /// Oldest first.
    pub points: Vec<TrafficPoint>,
}

/// What a backend served between the previous sample and `at`, summed over HAProxy's nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TrafficPoint {
    /// When the sample was taken, on the same clock as the steps' times.
    pub at: i64,
    /// How long the sample covers, in milliseconds (about a second; longer after a sample that
    /// HAProxy did not answer, and late in a long rollout, which is sampled less often).
    pub span_ms: i64,
    pub requests: u64,
    pub errors_5xx: u64,
    pub requests_per_s: f64,
    pub errors_5xx_per_s: f64,
}

impl StepLog {
    /// The same log as a viewer may see it: that it exists, not what it says.
    pub fn withhold(self) -> Self {
        Self {
            lines: Vec::new(),
            withheld: true,
            ..self
        }
    }
}

impl DeploymentDetail {
    /// This rollout as someone with `role` may see it: logs' lines only for deployers and
    /// admins.
    pub fn seen_by(mut self, role: Option<Role>) -> Self {
        if !role.is_some_and(|role| role.allows(Role::Deployer)) {
            self.logs = self.logs.into_iter().map(StepLog::withhold).collect();
        }
        self
    }
}

/// A pause, resume or abort someone asked for that has not taken effect yet.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingControl {
    pub action: ControlAction,
    /// Who asked, as the request's `Control` event names them.
    pub by: Option<String>,
}

impl PendingControl {
    /// Whether a rollout now in `status` has done what was asked (or can no longer do it).
    pub fn fulfilled_by(&self, status: RolloutStatus) -> bool {
        status.is_finished()
            || match self.action {
                ControlAction::Pause => status == RolloutStatus::Paused,
                ControlAction::Resume => status == RolloutStatus::Running,
                ControlAction::Abort => false,
                ControlAction::Approve => status != RolloutStatus::AwaitingApproval,
                ControlAction::Promote => status != RolloutStatus::AwaitingPromote,
            }
    }
}

/// One page of the history, newest first.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentPage {
    pub deployments: Vec<DeploymentSummary>,
    /// Pass as `before` to get the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
    /// Pass as `after` to get the previous (newer) page; `None` on the newest page.
    #[serde(default)]
    pub prev_after: Option<i64>,
}

/// Which rollouts the history shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFilter {
    pub service: Option<String>,
    pub status: Option<RolloutStatus>,
    /// Only rollouts with a smaller id (the next, older page).
    pub before: Option<i64>,
    /// Only rollouts with a larger id, the page nearest to it (the previous, newer page).
    #[serde(default)]
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

/// Something that happened to a rollout, persisted before it is sent. Event ids only grow, so a
/// stream that reconnects with `Last-Event-ID` gets exactly what it missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub id: i64,
    pub deployment_id: i64,
    pub service: String,
    pub at: i64,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The rollout's status (and reason) changed; `deployment` is the whole summary after it.
    Status { deployment: DeploymentSummary },
    /// A step began (no `finished_at`) or ended; the same step id comes twice. Upsert by id.
    Step { step: StepSummary },
    /// Someone asked to pause, resume or abort; it takes effect at the next safe point.
    Control {
        action: ControlAction,
        by: Option<String>,
    },
    /// Another replica took the rollout over (the one leading before was killed, frozen or cut
    /// off) and carries it on from its saved state, under lease `term`.
    Takeover { replica: String, term: i64 },
}

/// Where a rollout is. Stored and sent as its snake_case word (`rolled_back`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RolloutStatus {
    /// Waiting for its turn (rollouts of one service run one at a time, in order).
    Queued,
    Running,
    /// Stopped between backends by an operator.
    Paused,
    /// Its turn came; it waits for someone other than the requester to approve it.
    AwaitingApproval,
    /// The canaries run the new version; it waits for someone to promote it.
    AwaitingPromote,
    /// Every backend runs the new version.
    Succeeded,
    /// A step failed; see the reason for what was left.
    Failed,
    /// A step failed and every changed backend is back on its previous version.
    RolledBack,
    /// Aborted by an operator, or cancelled before it started.
    Cancelled,
}

impl RolloutStatus {
    /// Every status, in the order the history's filter lists them.
    pub const ALL: &'static [Self] = <Self as VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a rollout with this status has ended (nothing will change it any more).
    pub fn is_finished(self) -> bool {
        match self {
            Self::Queued
            | Self::Running
            | Self::Paused
            | Self::AwaitingApproval
            | Self::AwaitingPromote => false,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Cancelled => true,
        }
    }
}

/// One step of the safe procedure that replaces the version on a backend, declared in the order
/// the procedure runs them (the rollout engine compares steps by it). Stored and sent as its
/// snake_case word (`wait_sessions`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StepKind {
    /// Run the runtime's per-rollout preparation (once, before any backend).
    Prepare,
    /// Enough other backends are UP on every node to carry the traffic.
    CheckCapacity,
    /// Stop sending new traffic to the backend.
    Drain,
    /// Wait until the backend's open sessions finish (or the drain timeout).
    WaitSessions,
    /// The drain timed out: close the remaining sessions, and record how many.
    CutSessions,
    /// Take the backend out entirely (no traffic, no checks).
    Maint,
    Stop,
    Start,
    /// Baton's own probe of the health path passes `healthy_threshold` times in a row.
    WaitHealthy,
    /// The load balancer's own check passes (the server is drained, so checks run without traffic).
    LbCheck,
    /// Back into rotation.
    Enable,
    /// Every node reports the backend UP.
    ConfirmUp,
    /// Surge: start the new version beside the old one, on the backend's other address.
    SurgeStart,
    /// Surge: Baton's own probe of the new instance passes `healthy_threshold` times in a row.
    SurgeHealthy,
    /// Surge: the new instance's HAProxy server is added, drained, and its check passes.
    SurgeAdd,
    /// Surge: the new instance is in rotation and every node reports it UP; it is now the
    /// backend's current instance.
    SurgeEnable,
    /// Surge: the old instance, drained, keeps running for the strategy's `overlap`.
    Overlap,
    /// Surge: the old instance is stopped and its HAProxy server removed.
    Retire,
    /// Surge rollback: the new instance, never made current, is taken out of HAProxy and stopped.
    Discard,
    /// The batch, back in rotation on the new version, is watched for `[service.soak]
    /// duration`: too many 5xx answers, a failing health check, or leaving rotation fails it.
    Soak,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a step ended. Stored and sent as its snake_case word (`timed_out`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StepOutcome {
    Ok,
    Failed,
    /// The wait for open sessions reached the drain timeout (the sessions are cut next).
    TimedOut,
    /// Baton stopped during the step; it ran again after the restart.
    Interrupted,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What started a rollout. Stored and sent as its lowercase word.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Trigger {
    /// The Redeploy or Roll back form of the web UI.
    Ui,
    Api,
    /// `baton deploy`.
    Cli,
    /// A git host's push.
    Webhook,
    /// `POST /api/services/{service}/rollback`.
    Rollback,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A word that is not one of a vocabulary's, such as an unknown `?status=`; says which words are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownWord {
    /// What the word was meant to be: "rollout status".
    pub what: &'static str,
    pub word: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}: expected one of {}",
            self.what,
            self.word,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownWord {}

/// The variant whose word is `text`.
fn parse_word<T>(what: &'static str, text: &str) -> Result<T, UnknownWord>
where
    T: VariantArray + VariantNames + Copy + Into<&'static str>,
{
    <T as VariantArray>::VARIANTS
        .iter()
        .copied()
        .find(|variant| Into::<&'static str>::into(*variant) == text)
        .ok_or_else(|| UnknownWord {
            what,
            word: text.to_owned(),
            expected: <T as VariantNames>::VARIANTS,
        })
}

/// `FromStr` and `Display` by the word each variant is stored and sent as.
macro_rules! words {
    ($($name:ident: $what:literal),* $(,)?) => {$(
        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(text: &str) -> Result<Self, UnknownWord> {
                parse_word($what, text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}

words! {
    RolloutStatus: "rollout status",
    StepKind: "step",
    StepOutcome: "step outcome",
    Trigger: "trigger",
}

/// What an operator can ask of a running rollout.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Stop before the next backend (the current one finishes).
    Pause,
    Resume,
    /// Stop after the current step, leaving every backend serving (before a promotion: with
    /// the canaries back on their previous version).
    Abort,
    /// Let a rollout awaiting approval begin (someone other than its requester).
    Approve,
    /// Go on past the canaries.
    Promote,
}

impl ControlAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Approve => "approve",
            Self::Promote => "promote",
        }
    }
}

/// What a signed-in person or token may do. Each role may do everything the roles before it
/// may: the derived order is the privilege order.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything except secrets.
    Viewer,
    /// Also starts, pauses, resumes, aborts and rolls back rollouts.
    Deployer,
    /// Also manages users and tokens, replays webhooks and reads the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Whether a caller with this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected viewer, deployer or admin"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer of the JSON API: `{"error": "..."}`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, and what was expected.
    pub error: String,
}

/// Who is asking, as the UI needs to know it (to hide what they may not do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// What a notification says happened to a rollout (`[[notify]] events`). Stored and sent as its
/// snake_case word.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum NotificationEvent {
    /// The rollout began (it left the queue).
    Started,
    Succeeded,
    Failed,
    RolledBack,
    /// The watch after enable found errors. Accepted in the configuration now; sent once that
    /// watch (soak) exists.
    SoakTripped,
}

impl NotificationEvent {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every event, in the order a rollout reaches them.
    pub fn all() -> &'static [Self] {
        <Self as VariantArray>::VARIANTS
    }
}

/// Where a notification goes: Slack's incoming webhook, or any URL (signed).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum NotifyKind {
    Slack,
    Webhook,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How one attempt to send a notification ended.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AttemptVerdict {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed in a way worth trying again (no answer, a timeout, 429, 5xx), and another
    /// attempt is coming.
    WillRetry,
    /// It failed for good: an answer that another attempt would not change (4xx), or the
    /// last attempt.
    GaveUp,
}

impl AttemptVerdict {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

words! {
    NotificationEvent: "notification event",
    NotifyKind: "notification kind",
    AttemptVerdict: "attempt verdict",
}

/// One attempt to send a notification, as admins see it (`GET /api/notifications`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAttempt {
    pub id: i64,
    /// When the attempt ended, Unix milliseconds.
    pub at: i64,
    pub service: String,
    pub rollout: i64,
    pub event: NotificationEvent,
    pub kind: NotifyKind,
    /// The environment variable holding the URL: the URL itself is a secret.
    pub url_env: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    pub verdict: AttemptVerdict,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant against the word the API and the database have always used for it.
    fn assert_words<T>(old: &[&str])
    where
        T: VariantArray + Serialize + for<'de> Deserialize<'de> + FromStr<Err = UnknownWord>,
        T: Copy + fmt::Debug + fmt::Display + PartialEq + Into<&'static str>,
    {
        let variants = <T as VariantArray>::VARIANTS;
        assert_eq!(variants.len(), old.len(), "{variants:?} against {old:?}");
        for (variant, word) in variants.iter().zip(old) {
            let json = serde_json::to_value(variant).unwrap();
            assert_eq!(json, serde_json::json!(word), "{variant:?} on the wire");
            assert_eq!(
                serde_json::from_value::<T>(json).unwrap(),
                *variant,
                "{word} read back"
            );
            assert_eq!(
                Into::<&'static str>::into(*variant),
                *word,
                "{variant:?} stored"
            );
            assert_eq!(variant.to_string(), *word);
            assert_eq!(word.parse::<T>(), Ok(*variant));
        }
    }

    #[test]
    fn the_vocabulary_keeps_its_words_on_the_wire_and_in_the_database() {
        assert_words::<RolloutStatus>(&[
            "queued",
            "running",
            "paused",
            "awaiting_approval",
            "awaiting_promote",
            "succeeded",
            "failed",
            "rolled_back",
            "cancelled",
        ]);
        assert_words::<StepKind>(&[
            "prepare",
            "check_capacity",
            "drain",
            "wait_sessions",
            "cut_sessions",
            "maint",
            "stop",
            "start",
            "wait_healthy",
            "lb_check",
            "enable",
            "confirm_up",
            "surge_start",
            "surge_healthy",
            "surge_add",
            "surge_enable",
            "overlap",
            "retire",
            "discard",
            "soak",
        ]);
        assert_words::<StepOutcome>(&["ok", "failed", "timed_out", "interrupted"]);
        assert_words::<Trigger>(&["ui", "api", "cli", "webhook", "rollback"]);
    }

    #[test]
    fn an_unknown_word_names_what_it_should_have_been() {
        assert_eq!(
            "rolledback"
                .parse::<RolloutStatus>()
                .unwrap_err()
                .to_string(),
            "unknown rollout status \"rolledback\": expected one of queued, running, paused, \
             awaiting_approval, awaiting_promote, succeeded, failed, rolled_back, cancelled"
        );
        assert!(
            "Running".parse::<RolloutStatus>().is_err(),
            "words are exact"
        );
        assert!("".parse::<Trigger>().is_err());
        assert!(serde_json::from_str::<StepKind>("\"warm_up\"").is_err());
    }

    #[test]
    fn a_summary_reads_as_it_always_has() {
        let json = r#"{"id":3,"service":"web","status":"rolled_back","from_version":"v1",
            "to_version":"v2","trigger":"webhook","requested_by":null,"reason":"boom",
            "created_at":1,"started_at":2,"finished_at":3}"#;
        let summary: DeploymentSummary = serde_json::from_str(json).unwrap();
        assert_eq!(
            (summary.status, summary.trigger),
            (RolloutStatus::RolledBack, Trigger::Webhook)
        );
        let back = serde_json::to_value(&summary).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn a_node_status_answers_in_the_load_balancer_s_words_and_reads_back_its_state() {
        let node = NodeStatus {
            node: "unix:/run/haproxy.sock".into(),
            status: ServerState::Up {
                changing: Some(Health { current: 1, of: 2 }),
            },
            check: Some(CheckResult::Passed("L7OK".into())),
            sessions: 3,
            backup: false,
        };
        let json = serde_json::to_value(&node).unwrap();
        // What the API has always said, unchanged.
        assert_eq!(json["status"], "UP 1/2");
        assert_eq!(json["check"], "L7OK");
        assert_eq!(json["sessions"], 3);
        // What the browser reads the state back from.
        assert_eq!(
            json["state"],
            serde_json::json!({ "kind": "up", "changing": { "current": 1, "of": 2 } })
        );
        assert_eq!(json["check_passed"], true);
        assert_eq!(serde_json::from_value::<NodeStatus>(json).unwrap(), node);

        let maint = NodeStatus {
            status: ServerState::Maint {
                cause: MaintCause::Via("web/s1".into()),
            },
            check: None,
            ..node
        };
        let json = serde_json::to_value(&maint).unwrap();
        assert_eq!(json["status"], "MAINT (via web/s1)");
        assert_eq!(json["check"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<NodeStatus>(json).unwrap(), maint);
    }

    #[test]
    fn only_an_ended_rollout_is_finished() {
        let finished: Vec<RolloutStatus> = RolloutStatus::ALL
            .iter()
            .copied()
            .filter(|status| status.is_finished())
            .collect();
        assert_eq!(
            finished,
            [
                RolloutStatus::Succeeded,
                RolloutStatus::Failed,
                RolloutStatus::RolledBack,
                RolloutStatus::Cancelled
            ]
        );
    }
}
