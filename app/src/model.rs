//! The shapes the UI shows, shared by the server (which fills them) and the browser.
//!
//! These are views, already validated on the server, so plain strings are enough here. The JSON
//! API answers with the same shapes, so the UI and the API cannot drift apart. Times are Unix
//! milliseconds; the browser shows them in its own time zone.

use serde::{Deserialize, Serialize};

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// The version Baton last started on it.
    pub version: String,
    /// One entry per load-balancer node.
    pub load_balancer: Vec<NodeStatus>,
}

/// How one load-balancer node sees one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's runtime API address, as configured.
    pub node: String,
    /// HAProxy's word: `UP`, `DRAIN`, `MAINT`, `DOWN`, `UP 1/2`, `no check`, …
    pub status: String,
    /// The last health-check result, such as `L7OK` or `L4CON`.
    pub check: Option<String>,
    /// Open sessions.
    pub sessions: u64,
    /// A backup server (never counted as capacity).
    pub backup: bool,
}

/// Where a rollout in progress is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRollout {
    pub id: i64,
    pub status: String,
    pub to_version: String,
    /// The backends the current step acts on (empty for `prepare` or while queued).
    pub backends: Vec<String>,
    pub step: Option<String>,
    pub rolling_back: bool,
    /// Backends finished so far, out of `total`.
    pub done: u32,
    pub total: u32,
}

/// A rollout as the history lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub id: i64,
    pub service: String,
    /// `queued`, `running`, `paused`, `succeeded`, `failed`, `rolled_back` or `cancelled`.
    pub status: String,
    /// The version every backend ran before, when they agreed.
    pub from_version: Option<String>,
    pub to_version: String,
    /// `ui`, `api`, `cli`, `webhook` or `rollback`.
    pub trigger: String,
    /// Who asked: a user, a token's name, or a webhook delivery.
    pub requested_by: Option<String>,
    /// Why it failed, was rolled back or was cancelled, in words.
    pub reason: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One step on one backend (or on the whole rollout, for `prepare`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSummary {
    pub id: i64,
    pub backend: Option<String>,
    /// `prepare`, `check_capacity`, `drain`, `wait_sessions`, `cut_sessions`, `maint`, `stop`,
    /// `start`, `wait_healthy`, `lb_check`, `enable` or `confirm_up`.
    pub step: String,
    /// Part of putting a backend back on its previous version.
    pub rollback: bool,
    pub version: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `ok`, `failed`, `timed_out` or `interrupted`; `None` while it runs.
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

/// A rollout with its whole timeline: what the rollout page renders first, before it follows
/// the rollout's event stream from `last_event_id`.
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
}

/// A pause, resume or abort someone asked for that has not taken effect yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingControl {
    pub action: ControlAction,
    /// Who asked, as the request's `Control` event names them.
    pub by: Option<String>,
}

impl PendingControl {
    /// Whether a rollout now in `status` has done what was asked (or can no longer do it).
    pub fn fulfilled_by(&self, status: &str) -> bool {
        is_finished(status)
            || match self.action {
                ControlAction::Pause => status == "paused",
                ControlAction::Resume => status == "running",
                ControlAction::Abort => false,
            }
    }
}

/// Whether a rollout with this status has ended (nothing will change it any more).
pub fn is_finished(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "rolled_back" | "cancelled")
}

/// One page of the history, newest first.
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
    pub status: Option<String>,
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
}

/// What an operator can ask of a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Stop before the next backend (the current one finishes).
    Pause,
    Resume,
    /// Stop after the current step, leaving every backend serving.
    Abort,
}

impl ControlAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

/// What a signed-in person or token may do. Each role may do everything the roles before it
/// may: the derived order is the privilege order.
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

/// Who is asking, as the UI needs to know it (to hide what they may not do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}
