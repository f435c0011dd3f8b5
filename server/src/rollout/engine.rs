//! The rollout engine: given a rollout's state and what just happened, decides what happens next.
//!
//! Invariant: no IO and no clock. The executor carries out each [`Action`] and reports back an
//! [`Event`]; waits with deadlines are actions too, so the engine never needs the time. Every
//! state is serializable, so the executor persists it before each side effect and a restarted
//! Baton resumes by running the current action again (every action is idempotent).

use serde::{Deserialize, Serialize};

use crate::domain::{BackendName, Slot, StrategyKind, Version};

/// One step of the safe procedure that replaces the version on a backend: the vocabulary the
/// API, the database and the UI share, declared in the order the procedure runs the steps.
pub use app::model::StepKind as Step;

/// Why a rollout is being put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Undo {
    /// A step failed.
    #[default]
    Failure,
    /// An operator aborted it: only the batch in the middle of the procedure is put back.
    Abort,
    /// An operator aborted it before promoting the canaries: the canaries are put back too.
    Canary,
}

/// The step after `step` in the replacement procedure.
fn next_step(step: Step) -> Option<Step> {
    use Step::*;
    match step {
        Prepare => Some(CheckCapacity),
        CheckCapacity => Some(Drain),
        Drain => Some(WaitSessions),
        WaitSessions | CutSessions => Some(Maint),
        Maint => Some(Stop),
        Stop => Some(Start),
        Start => Some(WaitHealthy),
        WaitHealthy => Some(LbCheck),
        LbCheck => Some(Enable),
        Enable => Some(ConfirmUp),
        ConfirmUp => None,
        // Surge steps: not part of a rolling replacement (see `next_surge_step`). The watch
        // follows either procedure (see `Rollout::next_forward`).
        SurgeStart | SurgeHealthy | SurgeAdd | SurgeEnable | Overlap | Retire | Discard | Soak => {
            None
        }
    }
}

/// The step after `step` in the surge procedure: the new instance starts beside the old one and
/// is in rotation, UP, before the old one is drained, kept for the overlap and retired. A
/// rollback of a surged backend runs the same procedure in reverse (the previous version starts
/// on the address it left), except before the switch, where the new instance is discarded.
fn next_surge_step(step: Step) -> Option<Step> {
    use Step::*;
    match step {
        Prepare => Some(CheckCapacity),
        CheckCapacity => Some(SurgeStart),
        SurgeStart => Some(SurgeHealthy),
        SurgeHealthy => Some(SurgeAdd),
        SurgeAdd => Some(SurgeEnable),
        SurgeEnable => Some(Drain),
        Drain => Some(WaitSessions),
        WaitSessions | CutSessions => Some(Overlap),
        Overlap => Some(Retire),
        Retire | Discard | Soak => None,
        // Rolling steps: not part of a surge.
        Maint | Stop | Start | WaitHealthy | LbCheck | Enable | ConfirmUp => next_step(step),
    }
}

/// Whether the old version has possibly been stopped once `step` was attempted.
fn touches_the_process(step: Step) -> bool {
    step >= Step::Stop
}

/// A backend in a rollout, with the version it ran before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: BackendName,
    pub previous: Version,
    /// The address the backend's instance ran on when the rollout began.
    #[serde(default)]
    pub slot: Slot,
}

/// The version every target runs, if they agree (a fleet left mixed has none).
pub fn common_version(targets: &[Target]) -> Option<&Version> {
    let first = &targets.first()?.previous;
    targets
        .iter()
        .all(|t| &t.previous == first)
        .then_some(first)
}

/// Why a rollout, or one backend's rollback, failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: Step,
    /// The backend the step failed on; `None` for steps of the whole rollout (prepare).
    pub backend: Option<BackendName>,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Some(backend) => write!(
                f,
                "{} failed on {backend}: {}",
                self.step.as_str(),
                self.reason
            ),
            None => write!(f, "{} failed: {}", self.step.as_str(), self.reason),
        }
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Every backend runs the new version and is UP.
    Succeeded,
    /// A step failed and every changed backend is back on its previous version, UP.
    RolledBack { failure: Failure },
    /// A step failed. Backends already done keep the new version (no automatic rollback), or a
    /// rollback step failed too (`problems`: those backends need an operator).
    Failed {
        failure: Failure,
        problems: Vec<Failure>,
    },
    /// An operator aborted it. Backends already done keep the new version; the one in the
    /// middle of the procedure was put back (or finished, once both health checks had passed).
    Cancelled { at: Option<Step> },
    /// An operator aborted it before promoting the canaries: they are back on their previous
    /// version, so no backend runs the new one.
    CanaryAborted,
}

/// A backend to put back, and the step its restoration starts at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    pub index: usize,
    pub from: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Queued: nothing done yet.
    Pending,
    /// Moving batch `batch` to the new version; `step` is being carried out.
    Forward {
        batch: usize,
        step: Step,
    },
    /// Stopped between batches by an operator; `batch` is next.
    Paused {
        batch: usize,
    },
    /// Its turn came, but it waits for someone other than the requester to approve it; nothing
    /// has been touched.
    AwaitingApproval,
    /// The canaries (batch 0) run the new version and serve; `batch` is next once someone
    /// promotes the rollout.
    AwaitingPromote {
        batch: usize,
    },
    /// Putting backends back on their previous versions, one at a time: `queue[0]` is at `step`.
    RollingBack {
        queue: Vec<Restore>,
        step: Step,
        cause: Failure,
        problems: Vec<Failure>,
        #[serde(default)]
        undo: Undo,
    },
    Finished {
        outcome: Outcome,
    },
}

/// The whole state of one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub to: Version,
    /// The service's backends in configuration order.
    pub targets: Vec<Target>,
    pub batch_size: usize,
    /// How many of `targets`, at the end, are HAProxy `backup` servers: they are not capacity
    /// but the fleet's last resort, so they are rolled after every other backend, in batches
    /// of their own (see [`Rollout::order_backups_last`]).
    #[serde(default)]
    pub backups: usize,
    pub auto_rollback: bool,
    pub phase: Phase,
    /// Pause once the current batch is back in rotation.
    #[serde(default)]
    pub pause_requested: bool,
    /// Stop once the current batch (already proven healthy) is back in rotation.
    #[serde(default)]
    pub abort_requested: bool,
    /// How many backends go first, as batch 0, and then wait for a promotion; 0 (or as many
    /// as there are backends, which leaves nothing to promote) means no canary.
    #[serde(default)]
    pub canary: usize,
    /// Wait for an approval before beginning.
    #[serde(default)]
    pub needs_approval: bool,
    /// How each backend is replaced; fixed when the rollout begins.
    #[serde(default)]
    pub strategy: StrategyKind,
    /// Watch each batch once it is back in rotation (`Step::Soak`) before going on; fixed
    /// when the rollout begins.
    #[serde(default)]
    pub soak: bool,
}

/// What happened when the executor carried out the current action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The rollout's turn came: begin.
    Begin,
    /// The current action succeeded.
    Done,
    /// `WaitSessions` reached its deadline with sessions still open.
    DrainTimedOut { open_sessions: u64 },
    /// The current action failed.
    Failed {
        backend: Option<BackendName>,
        reason: String,
    },
    /// An operator asked to pause before the next batch.
    Pause,
    /// An operator asked to go on after a pause (or withdrew a pause not yet taken).
    Resume,
    /// An operator asked to stop, leaving every backend serving.
    Abort,
    /// Someone other than the requester approved the rollout.
    Approve,
    /// An operator asked to go on past the canaries.
    Promote,
}

/// The next thing to do: `step` on `backends`, toward `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub step: Step,
    pub backends: Vec<BackendName>,
    /// The version the step works toward: the new one going forward, the previous one in a
    /// rollback.
    pub version: Version,
    pub rollback: bool,
    /// The address of the instance each backend's step leaves (drains, stops, retires, or
    /// discards), in `backends`' order. A surge's arriving instance is on the other one.
    pub slots: Vec<Slot>,
    pub strategy: StrategyKind,
}

impl Rollout {
    /// A queued rollout of `targets` to `to`.
    pub fn new(to: Version, targets: Vec<Target>, batch_size: usize, auto_rollback: bool) -> Self {
        Self {
            to,
            targets,
            batch_size: batch_size.max(1),
            backups: 0,
            auto_rollback,
            phase: Phase::Pending,
            pause_requested: false,
            abort_requested: false,
            canary: 0,
            needs_approval: false,
            strategy: StrategyKind::Rolling,
            soak: false,
        }
    }

    /// The same rollout, watching each batch once it is back in rotation.
    pub fn with_soak(mut self, soak: bool) -> Self {
        self.soak = soak;
        self
    }

    /// The same rollout with `strategy`.
    pub fn with_strategy(mut self, strategy: StrategyKind) -> Self {
        self.strategy = strategy;
        self
    }

    /// The step after `step` in this rollout's procedure.
    fn next(&self, step: Step) -> Option<Step> {
        match self.strategy {
            StrategyKind::Rolling => next_step(step),
            StrategyKind::Surge => next_surge_step(step),
        }
    }

    /// The step after `step` going forward: the procedure's, then the watch, if any.
    fn next_forward(&self, step: Step) -> Option<Step> {
        self.next(step)
            .or_else(|| (self.soak && step == self.procedure_end()).then_some(Step::Soak))
    }

    /// Whether a backend may have changed once `step` was attempted on it: for a rolling
    /// rollout, once its old process may have been stopped; for a surge, once anything was
    /// started beside it.
    fn touched(&self, step: Step) -> bool {
        match self.strategy {
            StrategyKind::Rolling => touches_the_process(step),
            StrategyKind::Surge => !matches!(step, Step::Prepare | Step::CheckCapacity),
        }
    }

    /// The last step of a batch going forward: the watch, if any, else the procedure's end.
    fn last_step(&self) -> Step {
        if self.soak {
            Step::Soak
        } else {
            self.procedure_end()
        }
    }

    /// The last step of the procedure that replaces a backend (forward or back).
    fn procedure_end(&self) -> Step {
        match self.strategy {
            StrategyKind::Rolling => Step::ConfirmUp,
            StrategyKind::Surge => Step::Retire,
        }
    }

    /// The first `canary` backends go first and wait for a promotion.
    pub fn with_canary(mut self, canary: usize) -> Self {
        self.canary = canary;
        self
    }

    /// The rollout waits for an approval when its turn comes.
    pub fn with_approval(mut self, needs_approval: bool) -> Self {
        self.needs_approval = needs_approval;
        self
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.phase, Phase::Paused { .. })
    }

    /// Stopped until someone acts: paused, awaiting approval or awaiting promotion.
    pub fn is_waiting(&self) -> bool {
        match self.phase {
            Phase::Paused { .. } | Phase::AwaitingApproval | Phase::AwaitingPromote { .. } => true,
            Phase::Pending
            | Phase::Forward { .. }
            | Phase::RollingBack { .. }
            | Phase::Finished { .. } => false,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished { .. })
    }

    /// How many backends already run the new version and are back in rotation.
    pub fn backends_done(&self) -> usize {
        match &self.phase {
            Phase::Forward { batch, .. }
            | Phase::Paused { batch }
            | Phase::AwaitingPromote { batch } => self.batch(*batch).start,
            Phase::Finished {
                outcome: Outcome::Succeeded,
            } => self.targets.len(),
            Phase::Pending
            | Phase::AwaitingApproval
            | Phase::RollingBack { .. }
            | Phase::Finished {
                outcome:
                    Outcome::RolledBack { .. }
                    | Outcome::Failed { .. }
                    | Outcome::Cancelled { .. }
                    | Outcome::CanaryAborted,
            } => 0,
        }
    }

    /// How many backends batch 0 holds as canaries; 0 without a canary, or when the canary
    /// would be every active backend (there would be nothing left to promote).
    pub fn canaries(&self) -> usize {
        if self.canary < self.active() {
            self.canary
        } else {
            0
        }
    }

    /// Puts the targets that `is_backup` names after every other, each group keeping its
    /// order, and remembers how many they are. Only before the rollout begins: batches are
    /// positions in `targets`.
    pub fn order_backups_last(&mut self, is_backup: impl Fn(&BackendName) -> bool) {
        let (backups, mut targets): (Vec<Target>, Vec<Target>) = std::mem::take(&mut self.targets)
            .into_iter()
            .partition(|target| is_backup(&target.name));
        self.backups = backups.len();
        targets.extend(backups);
        self.targets = targets;
    }

    /// The targets that are not backup servers come first, `0..active`.
    fn active(&self) -> usize {
        self.targets.len().saturating_sub(self.backups)
    }

    /// Every batch, in order: the canaries (if any), then the other active backends in
    /// batches of `batch_size`, then the backup servers in batches of their own, so a batch
    /// never mixes the two and a backup is only taken out while every active backend serves.
    fn batches(&self) -> Vec<std::ops::Range<usize>> {
        let mut batches = Vec::new();
        let canaries = self.canaries();
        if canaries > 0 {
            batches.push(0..canaries);
        }
        let mut chunk = |from: usize, to: usize| {
            let mut start = from;
            while start < to {
                let end = (start + self.batch_size).min(to);
                batches.push(start..end);
                start = end;
            }
        };
        chunk(canaries, self.active());
        chunk(self.active(), self.targets.len());
        batches
    }

    /// Whether `batch` is the canaries.
    fn is_canary(&self, batch: usize) -> bool {
        batch == 0 && self.canaries() > 0
    }

    fn batch_count(&self) -> usize {
        self.batches().len()
    }

    /// The backends of `batch` (see [`Rollout::batches`]).
    fn batch(&self, batch: usize) -> std::ops::Range<usize> {
        self.batches().get(batch).cloned().unwrap_or(0..0)
    }

    /// The batch the backend at `index` belongs to.
    fn batch_of(&self, index: usize) -> usize {
        self.batches()
            .iter()
            .position(|batch| batch.contains(&index))
            .unwrap_or(0)
    }

    /// What the executor must do now; `None` once finished.
    pub fn action(&self) -> Option<Action> {
        match &self.phase {
            Phase::Pending
            | Phase::Paused { .. }
            | Phase::AwaitingApproval
            | Phase::AwaitingPromote { .. }
            | Phase::Finished { .. } => None,
            Phase::Forward { batch, step } => Some(Action {
                step: *step,
                backends: match step {
                    Step::Prepare => Vec::new(),
                    Step::CheckCapacity
                    | Step::Drain
                    | Step::WaitSessions
                    | Step::CutSessions
                    | Step::Maint
                    | Step::Stop
                    | Step::Start
                    | Step::WaitHealthy
                    | Step::LbCheck
                    | Step::Enable
                    | Step::ConfirmUp
                    | Step::SurgeStart
                    | Step::SurgeHealthy
                    | Step::SurgeAdd
                    | Step::SurgeEnable
                    | Step::Overlap
                    | Step::Retire
                    | Step::Discard
                    | Step::Soak => self.targets[self.batch(*batch)]
                        .iter()
                        .map(|t| t.name.clone())
                        .collect(),
                },
                slots: match step {
                    Step::Prepare => Vec::new(),
                    _ => self.targets[self.batch(*batch)]
                        .iter()
                        .map(|t| t.slot)
                        .collect(),
                },
                version: self.to.clone(),
                rollback: false,
                strategy: self.strategy,
            }),
            Phase::RollingBack { queue, step, .. } => {
                let target = &self.targets[queue[0].index];
                Some(Action {
                    step: *step,
                    backends: vec![target.name.clone()],
                    version: target.previous.clone(),
                    rollback: true,
                    // A surge rollback leaves the instance the rollout started (discarded, or
                    // retired once the previous version is back where it was).
                    slots: vec![match self.strategy {
                        StrategyKind::Rolling => target.slot,
                        StrategyKind::Surge => target.slot.other(),
                    }],
                    strategy: self.strategy,
                })
            }
        }
    }

    /// Advances the rollout by one event. Every pair of phase and event is decided here, so a
    /// new event or phase does not compile until someone says what it does in each case; the
    /// pairs that change nothing are listed too, with why.
    pub fn step(mut self, event: Event) -> (Self, Option<Action>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Pending);
        self.phase = match (phase, event) {
            (Phase::Pending, Event::Begin) if self.needs_approval => Phase::AwaitingApproval,
            (Phase::Pending, Event::Begin) => Phase::Forward {
                batch: 0,
                step: Step::Prepare,
            },
            // Already begun (a restarted Baton resumes the saved state instead).
            (
                phase @ (Phase::Forward { .. }
                | Phase::Paused { .. }
                | Phase::AwaitingApproval
                | Phase::AwaitingPromote { .. }
                | Phase::RollingBack { .. }
                | Phase::Finished { .. }),
                Event::Begin,
            ) => phase,

            (Phase::Forward { batch, step }, Event::Done) => self.forward_after(batch, step),
            (
                Phase::Forward {
                    batch,
                    step: Step::WaitSessions,
                },
                Event::DrainTimedOut { .. },
            ) => Phase::Forward {
                batch,
                step: Step::CutSessions,
            },
            // Only waiting for sessions has a drain deadline.
            (phase @ Phase::Forward { .. }, Event::DrainTimedOut { .. }) => phase,
            (Phase::Forward { batch, step }, Event::Failed { backend, reason }) => self
                .fail_forward(
                    batch,
                    Failure {
                        step,
                        backend,
                        reason,
                    },
                ),

            (
                Phase::RollingBack {
                    queue,
                    step,
                    cause,
                    problems,
                    undo,
                },
                Event::Done,
            ) => match self.next(step) {
                Some(next) => Phase::RollingBack {
                    queue,
                    step: next,
                    cause,
                    problems,
                    undo,
                },
                None => self.next_restore(queue, cause, problems, undo),
            },
            (
                Phase::RollingBack {
                    queue,
                    step: Step::WaitSessions,
                    cause,
                    problems,
                    undo,
                },
                Event::DrainTimedOut { .. },
            ) => Phase::RollingBack {
                queue,
                step: Step::CutSessions,
                cause,
                problems,
                undo,
            },
            // Only waiting for sessions has a drain deadline.
            (phase @ Phase::RollingBack { .. }, Event::DrainTimedOut { .. }) => phase,
            (
                Phase::RollingBack {
                    queue,
                    step,
                    cause,
                    mut problems,
                    undo,
                },
                Event::Failed { backend, reason },
            ) => {
                let backend = backend.or_else(|| Some(self.targets[queue[0].index].name.clone()));
                problems.push(Failure {
                    step,
                    backend,
                    reason,
                });
                if self.strategy == StrategyKind::Surge {
                    // Whichever instance is current keeps serving (the switch is one step,
                    // made only once the arriving one is UP); the other one, possibly still
                    // running or in HAProxy, needs an operator, as the outcome says.
                    self.next_restore(queue, cause, problems, undo)
                } else if touches_the_process(step) {
                    // The old version is not serving on this backend: it stays out of
                    // rotation, and the outcome says it needs an operator.
                    self.next_restore(queue, cause, problems, undo)
                } else if step < Step::Enable {
                    // Draining for the rollback failed while the backend still serves the
                    // new version: keep it serving rather than leave it drained.
                    Phase::RollingBack {
                        queue,
                        step: Step::Enable,
                        cause,
                        problems,
                        undo,
                    }
                } else {
                    self.next_restore(queue, cause, problems, undo)
                }
            }

            // No action is out while queued, waiting or finished, so no result can come back.
            (
                phase @ (Phase::Pending
                | Phase::Paused { .. }
                | Phase::AwaitingApproval
                | Phase::AwaitingPromote { .. }
                | Phase::Finished { .. }),
                Event::Done | Event::DrainTimedOut { .. } | Event::Failed { .. },
            ) => phase,

            // A pause takes effect between batches: at once if the next batch has not begun,
            // else once the current one is back in rotation.
            (
                Phase::Forward {
                    batch,
                    step: Step::CheckCapacity,
                },
                Event::Pause,
            ) => Phase::Paused { batch },
            (phase @ Phase::Forward { .. }, Event::Pause) => {
                self.pause_requested = true;
                phase
            }
            // Nothing to pause: not started (only an abort stops a queued rollout), already
            // stopped (paused, or waiting for an approval or a promotion), putting backends
            // back (which must finish), or over.
            (
                phase @ (Phase::Pending
                | Phase::Paused { .. }
                | Phase::AwaitingApproval
                | Phase::AwaitingPromote { .. }
                | Phase::RollingBack { .. }
                | Phase::Finished { .. }),
                Event::Pause,
            ) => phase,

            (Phase::Paused { batch }, Event::Resume) => {
                self.pause_requested = false;
                Phase::Forward {
                    batch,
                    step: Step::CheckCapacity,
                }
            }
            // Not paused: withdraws a pause asked for and not yet taken, if any. Resuming is
            // not approving, nor promoting: those are asked for by name.
            (
                phase @ (Phase::Pending
                | Phase::Forward { .. }
                | Phase::AwaitingApproval
                | Phase::AwaitingPromote { .. }
                | Phase::RollingBack { .. }
                | Phase::Finished { .. }),
                Event::Resume,
            ) => {
                self.pause_requested = false;
                phase
            }

            (Phase::AwaitingApproval, Event::Approve) => Phase::Forward {
                batch: 0,
                step: Step::Prepare,
            },
            // Approval is given when the rollout's turn has come and it waits for one; any
            // other time there is nothing to approve.
            (
                phase @ (Phase::Pending
                | Phase::Forward { .. }
                | Phase::Paused { .. }
                | Phase::AwaitingPromote { .. }
                | Phase::RollingBack { .. }
                | Phase::Finished { .. }),
                Event::Approve,
            ) => phase,

            // A pause asked for during the canaries is spent: promoting is asking to go on.
            (Phase::AwaitingPromote { batch }, Event::Promote) => {
                self.pause_requested = false;
                Phase::Forward {
                    batch,
                    step: Step::CheckCapacity,
                }
            }
            // Only canaries that are done and serving can be promoted.
            (
                phase @ (Phase::Pending
                | Phase::Forward { .. }
                | Phase::Paused { .. }
                | Phase::AwaitingApproval
                | Phase::RollingBack { .. }
                | Phase::Finished { .. }),
                Event::Promote,
            ) => phase,

            // Nothing was touched: cancelled at once.
            (Phase::Pending | Phase::AwaitingApproval, Event::Abort) => Phase::Finished {
                outcome: Outcome::Cancelled { at: None },
            },
            // Unlike any other abort, the canaries go back: the point of a canary is that an
            // abort leaves the service as it was.
            (Phase::AwaitingPromote { .. }, Event::Abort) => self.withdraw_canaries(),
            // Between batches: the next one had not begun.
            (Phase::Paused { .. }, Event::Abort) => Phase::Finished {
                outcome: Outcome::Cancelled {
                    at: Some(Step::CheckCapacity),
                },
            },
            (Phase::Forward { batch, step }, Event::Abort) => self.abort_forward(batch, step),
            // A rollback already under way carries on: it is what leaves the backends serving.
            (phase @ (Phase::RollingBack { .. } | Phase::Finished { .. }), Event::Abort) => phase,
        };
        let action = self.action();
        (self, action)
    }

    /// Stops a rollout going forward at the next safe point, leaving every backend serving: a
    /// batch whose old process still runs goes back into rotation; one whose new process has
    /// passed both health checks is finished; one in between goes back to its previous version.
    fn abort_forward(&mut self, batch: usize, step: Step) -> Phase {
        if step == Step::Soak {
            // The batch is back in rotation on the new version: the watch ends here.
            self.abort_requested = true;
            return self.forward_after(batch, step);
        }
        if self.strategy == StrategyKind::Surge {
            return self.abort_surge(batch, step);
        }
        let from = match step {
            Step::Prepare | Step::CheckCapacity => {
                return Phase::Finished {
                    outcome: Outcome::Cancelled { at: Some(step) },
                };
            }
            Step::Enable | Step::ConfirmUp => {
                self.abort_requested = true;
                return Phase::Forward { batch, step };
            }
            // The old process has not been stopped yet (the step is about to run).
            Step::Drain | Step::WaitSessions | Step::CutSessions | Step::Maint | Step::Stop => {
                Step::Enable
            }
            Step::Start | Step::WaitHealthy | Step::LbCheck => Step::Drain,
            // Surge steps: a rolling rollout never runs them. The watch is handled above.
            Step::SurgeStart
            | Step::SurgeHealthy
            | Step::SurgeAdd
            | Step::SurgeEnable
            | Step::Overlap
            | Step::Retire
            | Step::Discard
            | Step::Soak => Step::Drain,
        };
        let queue = self
            .batch(batch)
            .rev()
            .map(|index| Restore { index, from })
            .collect();
        let cause = Failure {
            step,
            backend: None,
            reason: "aborted by an operator".to_owned(),
        };
        self.next_restore_from(queue, cause, Vec::new(), Undo::Abort)
    }

    /// A surge stopped by an operator: an arriving instance not yet in rotation is discarded
    /// (the old one never left); once it is in rotation the batch finishes (its old instance
    /// drained, kept for the overlap and retired), since both are then serving or drained.
    fn abort_surge(&mut self, batch: usize, step: Step) -> Phase {
        match step {
            Step::Prepare | Step::CheckCapacity => Phase::Finished {
                outcome: Outcome::Cancelled { at: Some(step) },
            },
            Step::SurgeStart | Step::SurgeHealthy | Step::SurgeAdd => {
                let queue = self
                    .batch(batch)
                    .rev()
                    .map(|index| Restore {
                        index,
                        from: Step::Discard,
                    })
                    .collect();
                let cause = Failure {
                    step,
                    backend: None,
                    reason: "aborted by an operator".to_owned(),
                };
                self.next_restore_from(queue, cause, Vec::new(), Undo::Abort)
            }
            Step::SurgeEnable
            | Step::Drain
            | Step::WaitSessions
            | Step::CutSessions
            | Step::Overlap
            | Step::Retire
            // Rolling steps: a surge never runs them.
            | Step::Maint
            | Step::Stop
            | Step::Start
            | Step::WaitHealthy
            | Step::LbCheck
            | Step::Enable
            | Step::ConfirmUp
            | Step::Discard
            // Handled by `abort_forward`.
            | Step::Soak => {
                self.abort_requested = true;
                Phase::Forward { batch, step }
            }
        }
    }

    fn forward_after(&self, batch: usize, step: Step) -> Phase {
        match self.next_forward(step) {
            Some(next) => Phase::Forward { batch, step: next },
            None if self.abort_requested && self.is_canary(batch) => self.withdraw_canaries(),
            None if self.abort_requested => Phase::Finished {
                outcome: Outcome::Cancelled {
                    at: Some(self.last_step()),
                },
            },
            // `is_canary` implies a batch after this one.
            None if self.is_canary(batch) => Phase::AwaitingPromote { batch: batch + 1 },
            None if batch + 1 < self.batch_count() && self.pause_requested => {
                Phase::Paused { batch: batch + 1 }
            }
            None if batch + 1 < self.batch_count() => Phase::Forward {
                batch: batch + 1,
                step: Step::CheckCapacity,
            },
            None => Phase::Finished {
                outcome: Outcome::Succeeded,
            },
        }
    }

    /// Puts the canaries back on their previous versions, last first, as an abort asks before
    /// they were promoted.
    fn withdraw_canaries(&self) -> Phase {
        let queue = self
            .batch(0)
            .rev()
            .map(|index| Restore {
                index,
                // A finished backend is put back by its strategy's procedure from the start.
                from: self.restore_start(),
            })
            .collect();
        let cause = Failure {
            step: self.last_step(),
            backend: None,
            reason: "aborted by an operator before the canaries were promoted".to_owned(),
        };
        self.next_restore_from(queue, cause, Vec::new(), Undo::Canary)
    }

    fn fail_forward(&self, batch: usize, cause: Failure) -> Phase {
        if self.strategy == StrategyKind::Surge {
            return self.fail_surge(batch, cause);
        }
        // The failed batch first, last backend first: out of rotation now, so restore them
        // before touching backends that still serve. Backends whose process was never touched
        // only need to go back into rotation.
        let from = match cause.step {
            Step::Prepare | Step::CheckCapacity => None,
            Step::Drain | Step::WaitSessions | Step::CutSessions | Step::Maint => {
                Some(Step::Enable)
            }
            Step::Stop
            | Step::Start
            | Step::WaitHealthy
            | Step::LbCheck
            | Step::Enable
            | Step::ConfirmUp
            // The watch saw the new version misbehave: the batch goes back like a finished one.
            | Step::Soak => Some(Step::Drain),
            // Surge steps: a rolling rollout never runs them.
            Step::SurgeStart
            | Step::SurgeHealthy
            | Step::SurgeAdd
            | Step::SurgeEnable
            | Step::Overlap
            | Step::Retire
            | Step::Discard => Some(Step::Drain),
        };
        self.roll_back_failed_batch(batch, from, cause)
    }

    /// A surge step failed. Before the switch (the arriving instance made current once UP), the
    /// old instance still serves and the new one is discarded; after it, the backend is surged
    /// back: the previous version starts again where it was (or is found still running there),
    /// goes back in rotation, and the instance the rollout started is drained and retired.
    /// Backends of earlier batches, with auto-rollback, are surged back the same way.
    fn fail_surge(&self, batch: usize, cause: Failure) -> Phase {
        let from = match cause.step {
            Step::Prepare | Step::CheckCapacity => None,
            Step::SurgeStart | Step::SurgeHealthy | Step::SurgeAdd | Step::SurgeEnable => {
                Some(Step::Discard)
            }
            Step::Drain
            | Step::WaitSessions
            | Step::CutSessions
            | Step::Overlap
            | Step::Retire
            // Rolling steps: a surge never runs them.
            | Step::Maint
            | Step::Stop
            | Step::Start
            | Step::WaitHealthy
            | Step::LbCheck
            | Step::Enable
            | Step::ConfirmUp
            | Step::Discard
            // The watch saw the new version misbehave: surged back like a finished backend.
            | Step::Soak => Some(Step::SurgeStart),
        };
        self.roll_back_failed_batch(batch, from, cause)
    }

    /// Puts back the failed `batch` (each backend from `from`; `None` when nothing on it was
    /// touched) and, with auto-rollback, every backend done before it from the start of its
    /// strategy's procedure, last first.
    fn roll_back_failed_batch(&self, batch: usize, from: Option<Step>, cause: Failure) -> Phase {
        let failed = from.into_iter().flat_map(|from| {
            self.batch(batch)
                .rev()
                .map(move |index| Restore { index, from })
        });
        let done = (0..self.batch(batch).start)
            .rev()
            .filter(|_| self.auto_rollback)
            .map(|index| Restore {
                index,
                from: self.restore_start(),
            });
        let queue = failed.chain(done).collect();
        self.next_restore_from(queue, cause, Vec::new(), Undo::Failure)
    }

    /// Where putting back a backend that finished its procedure begins.
    fn restore_start(&self) -> Step {
        match self.strategy {
            StrategyKind::Rolling => Step::Drain,
            StrategyKind::Surge => Step::SurgeStart,
        }
    }

    fn next_restore(
        &self,
        mut queue: Vec<Restore>,
        cause: Failure,
        problems: Vec<Failure>,
        undo: Undo,
    ) -> Phase {
        queue.remove(0);
        self.next_restore_from(queue, cause, problems, undo)
    }

    fn next_restore_from(
        &self,
        queue: Vec<Restore>,
        cause: Failure,
        problems: Vec<Failure>,
        undo: Undo,
    ) -> Phase {
        match queue.first() {
            Some(first) => Phase::RollingBack {
                step: first.from,
                queue,
                cause,
                problems,
                undo,
            },
            None if undo == Undo::Abort && problems.is_empty() => Phase::Finished {
                outcome: Outcome::Cancelled {
                    at: Some(cause.step),
                },
            },
            None if undo == Undo::Canary && problems.is_empty() => Phase::Finished {
                outcome: Outcome::CanaryAborted,
            },
            None => {
                let changed_any = self.auto_rollback
                    && (self.touched(cause.step) || self.batch_index_of(&cause) > 0);
                let outcome = if problems.is_empty() && self.auto_rollback && changed_any {
                    Outcome::RolledBack { failure: cause }
                } else {
                    Outcome::Failed {
                        failure: cause,
                        problems,
                    }
                };
                Phase::Finished { outcome }
            }
        }
    }

    fn batch_index_of(&self, failure: &Failure) -> usize {
        failure
            .backend
            .as_ref()
            .and_then(|name| self.targets.iter().position(|t| &t.name == name))
            .map_or(0, |index| self.batch_of(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }
    fn b(s: &str) -> BackendName {
        BackendName::parse(s).unwrap()
    }

    fn rollout(backends: &[&str], batch_size: usize, auto_rollback: bool) -> Rollout {
        let targets = backends
            .iter()
            .map(|name| Target {
                name: b(name),
                previous: v("v1"),
                slot: Slot::Address,
            })
            .collect();
        Rollout::new(v("v2"), targets, batch_size, auto_rollback)
    }

    /// Runs events through the engine, recording each action as "step backends@version".
    fn run(
        mut rollout: Rollout,
        events: impl IntoIterator<Item = Event>,
    ) -> (Rollout, Vec<String>) {
        let mut log = Vec::new();
        for event in std::iter::once(Event::Begin).chain(events) {
            let (next, action) = rollout.step(event);
            rollout = next;
            if let Some(action) = action {
                let names: Vec<&str> = action.backends.iter().map(|b| b.as_str()).collect();
                log.push(format!(
                    "{}{} {}@{}",
                    if action.rollback { "rollback " } else { "" },
                    action.step.as_str(),
                    names.join(","),
                    action.version
                ));
            }
        }
        (rollout, log)
    }

    fn done(n: usize) -> Vec<Event> {
        vec![Event::Done; n]
    }

    fn fail(backend: &str, reason: &str) -> Event {
        Event::Failed {
            backend: Some(b(backend)),
            reason: reason.into(),
        }
    }

    const PROCEDURE: [&str; 10] = [
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
    ];

    #[test]
    fn a_clean_rollout_walks_every_backend_through_the_whole_procedure_in_order() {
        let (rollout, log) = run(rollout(&["s1", "s2"], 1, true), done(1 + 20));
        let mut expected = vec!["prepare @v2".to_string()];
        for backend in ["s1", "s2"] {
            expected.extend(PROCEDURE.iter().map(|step| format!("{step} {backend}@v2")));
        }
        assert_eq!(log, expected);
        assert_eq!(
            rollout.phase,
            Phase::Finished {
                outcome: Outcome::Succeeded
            }
        );
        assert_eq!(rollout.action(), None);
    }

    #[test]
    fn batches_move_together_and_the_last_batch_may_be_short() {
        let (rollout, log) = run(rollout(&["s1", "s2", "s3"], 2, true), done(1 + 20));
        assert_eq!(log[1], "check_capacity s1,s2@v2");
        assert_eq!(log[11], "check_capacity s3@v2");
        assert!(rollout.is_finished());
    }

    #[test]
    fn backup_servers_are_rolled_last_in_batches_of_their_own() {
        let mut with_backup = rollout(&["b1", "s1", "s2", "b2", "s3"], 2, true);
        with_backup.order_backups_last(|name| name.as_str().starts_with('b'));
        let (rollout, log) = run(with_backup, done(1 + 50));
        let batches: Vec<&str> = log
            .iter()
            .filter(|action| action.starts_with("check_capacity"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            batches,
            [
                "check_capacity s1,s2@v2",
                "check_capacity s3@v2",
                "check_capacity b1,b2@v2"
            ],
            "config order within each group, and no batch mixes a backup with an active server"
        );
        assert!(rollout.is_finished());
    }

    #[test]
    fn a_failure_on_the_backup_rolls_back_the_active_backends_done_before_it() {
        let mut with_backup = rollout(&["b1", "s1"], 2, true);
        with_backup.order_backups_last(|name| name.as_str() == "b1");
        let events = [
            done(1 + 10),
            vec![fail("b1", "no other backend is UP")],
            done(20),
        ]
        .concat();
        let (rollout, log) = run(with_backup, events);
        assert_eq!(log[11], "check_capacity b1@v2");
        assert_eq!(log[12], "rollback drain s1@v1", "{log:#?}");
        assert!(matches!(
            rollout.phase,
            Phase::Finished {
                outcome: Outcome::RolledBack { .. }
            }
        ));
    }

    #[test]
    fn a_drain_timeout_cuts_the_sessions_then_continues() {
        let events = [
            done(3),
            vec![Event::DrainTimedOut { open_sessions: 3 }],
            done(1),
        ]
        .concat();
        let (_, log) = run(rollout(&["s1", "s2"], 1, true), events);
        assert_eq!(
            &log[3..],
            ["wait_sessions s1@v2", "cut_sessions s1@v2", "maint s1@v2"]
        );
    }

    #[test]
    fn a_version_that_never_gets_healthy_on_the_second_backend_rolls_both_back_in_reverse() {
        // prepare, s1 complete (10 steps), s2 up to start (6 steps), then wait_healthy fails.
        let events = [
            done(1 + 10 + 6),
            vec![fail("s2", "not healthy after 60s")],
            done(20),
        ]
        .concat();
        let (rollout, log) = run(rollout(&["s1", "s2", "s3"], 1, true), events);
        let rollback: Vec<&str> = log
            .iter()
            .filter(|l| l.starts_with("rollback"))
            .map(String::as_str)
            .collect();
        let mut expected = Vec::new();
        for backend in ["s2", "s1"] {
            expected.extend(
                PROCEDURE[1..]
                    .iter()
                    .map(|step| format!("rollback {step} {backend}@v1")),
            );
        }
        assert_eq!(rollback, expected);
        assert!(
            !log.iter().any(|l| l.contains("s3")),
            "s3 is never touched: {log:?}"
        );
        let Phase::Finished {
            outcome: Outcome::RolledBack { failure },
        } = rollout.phase
        else {
            panic!("expected a rollback, got {:?}", rollout.phase)
        };
        assert_eq!(
            failure.to_string(),
            "wait_healthy failed on s2: not healthy after 60s"
        );
    }

    #[test]
    fn without_auto_rollback_only_the_failed_backend_is_restored() {
        let events = [done(1 + 10 + 6), vec![fail("s2", "crashed")], done(9)].concat();
        let (rollout, log) = run(rollout(&["s1", "s2", "s3"], 1, false), events);
        let rollback: Vec<&String> = log.iter().filter(|l| l.starts_with("rollback")).collect();
        assert_eq!(rollback.len(), 9);
        assert!(
            rollback.iter().all(|l| l.ends_with("s2@v1")),
            "{rollback:?}"
        );
        assert!(
            matches!(rollout.phase, Phase::Finished { outcome: Outcome::Failed { ref problems, .. } } if problems.is_empty())
        );
    }

    #[test]
    fn a_failure_before_the_process_is_touched_only_re_enables_it() {
        // The HAProxy socket dies while draining s1: s1 still runs v1, so it only goes back in.
        let events = [
            done(2),
            vec![fail("s1", "HAProxy node unix:/x did not answer")],
            done(2),
        ]
        .concat();
        let (rollout, log) = run(rollout(&["s1", "s2"], 1, true), events);
        assert_eq!(
            &log[3..],
            ["rollback enable s1@v1", "rollback confirm_up s1@v1"]
        );
        assert!(
            matches!(
                rollout.phase,
                Phase::Finished {
                    outcome: Outcome::Failed { .. }
                }
            ),
            "{:?}",
            rollout.phase
        );
    }

    #[test]
    fn a_capacity_failure_on_the_first_batch_changes_nothing() {
        let (rollout, log) = run(
            rollout(&["s1", "s2"], 1, true),
            [Event::Done, fail("s1", "no other backend is UP")],
        );
        assert_eq!(log, ["prepare @v2", "check_capacity s1@v2"]);
        assert!(matches!(
            rollout.phase,
            Phase::Finished {
                outcome: Outcome::Failed { .. }
            }
        ));
    }

    #[test]
    fn a_prepare_failure_changes_nothing() {
        let (rollout, log) = run(
            rollout(&["s1"], 1, true),
            [Event::Failed {
                backend: None,
                reason: "exit 1".into(),
            }],
        );
        assert_eq!(log, ["prepare @v2"]);
        let Phase::Finished {
            outcome: Outcome::Failed { failure, .. },
        } = rollout.phase
        else {
            panic!()
        };
        assert_eq!(failure.to_string(), "prepare failed: exit 1");
    }

    #[test]
    fn a_rollback_that_cannot_start_the_old_version_is_reported_and_the_rest_continues() {
        let events = [
            done(1 + 10 + 5),                            // s2 reaches start
            vec![fail("s2", "crashed at start")],        // forward failure
            done(4),                                     // rollback s2: drain..stop
            vec![fail("s2", "old version crashed too")], // rollback start fails
            done(9),                                     // rollback s1 completes
        ]
        .concat();
        let (rollout, log) = run(rollout(&["s1", "s2"], 1, true), events);
        assert_eq!(log.last().unwrap(), "rollback confirm_up s1@v1");
        let Phase::Finished {
            outcome: Outcome::Failed { failure, problems },
        } = rollout.phase
        else {
            panic!()
        };
        assert_eq!(failure.step, Start);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "start failed on s2: old version crashed too"
        );
    }

    #[test]
    fn events_that_do_not_fit_change_nothing() {
        let queued = rollout(&["s1"], 1, true);
        let (same, action) = queued.clone().step(Event::Done);
        assert_eq!((same, action), (queued.clone(), None));
        let (started, _) = queued.step(Event::Begin);
        let (same, _) = started
            .clone()
            .step(Event::DrainTimedOut { open_sessions: 1 });
        assert_eq!(same, started);
    }

    #[test]
    fn every_event_that_does_not_fit_its_phase_changes_nothing() {
        let pending = rollout(&["s1", "s2"], 1, true);
        let (forward, _) = run(pending.clone(), done(2)); // s1 at drain
        let (paused, _) = run(pending.clone(), [done(1 + 10), vec![Event::Pause]].concat());
        let (rolling_back, _) = run(
            pending.clone(),
            [done(1 + 6), vec![fail("s1", "unhealthy")]].concat(),
        );
        let (finished, _) = run(rollout(&["s1"], 1, true), done(1 + 10));
        assert!(matches!(forward.phase, Phase::Forward { step: Drain, .. }));
        assert!(matches!(paused.phase, Phase::Paused { .. }));
        assert!(matches!(
            rolling_back.phase,
            Phase::RollingBack { step: Drain, .. }
        ));
        assert!(finished.is_finished());

        let timed_out = || Event::DrainTimedOut { open_sessions: 2 };
        let cases: [(&str, &Rollout, Vec<Event>); 5] = [
            (
                "queued",
                &pending,
                vec![
                    Event::Done,
                    timed_out(),
                    fail("s1", "x"),
                    Event::Pause,
                    Event::Resume,
                ],
            ),
            // Drain has no deadline; only wait_sessions times out.
            (
                "forward",
                &forward,
                vec![Event::Begin, timed_out(), Event::Resume],
            ),
            (
                "paused",
                &paused,
                vec![
                    Event::Begin,
                    Event::Done,
                    timed_out(),
                    fail("s2", "x"),
                    Event::Pause,
                ],
            ),
            (
                "rolling back",
                &rolling_back,
                vec![
                    Event::Begin,
                    timed_out(),
                    Event::Pause,
                    Event::Resume,
                    Event::Abort,
                ],
            ),
            (
                "finished",
                &finished,
                vec![
                    Event::Begin,
                    Event::Done,
                    timed_out(),
                    fail("s1", "x"),
                    Event::Pause,
                    Event::Resume,
                    Event::Abort,
                ],
            ),
        ];
        for (phase, before, events) in cases {
            for event in events {
                let (after, action) = before.clone().step(event.clone());
                assert_eq!(&after, before, "{event:?} while {phase}");
                assert_eq!(action, before.action(), "{event:?} while {phase}");
            }
        }
    }

    #[test]
    fn the_state_survives_a_round_trip_through_json() {
        let events = [done(1 + 10 + 6), vec![fail("s2", "x")], done(3)].concat();
        let (rollout, _) = run(rollout(&["s1", "s2"], 1, true), events);
        let json = serde_json::to_string(&rollout).unwrap();
        let back: Rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rollout);
        assert_eq!(back.action(), rollout.action());
    }

    fn outcome(rollout: &Rollout) -> &Outcome {
        match &rollout.phase {
            Phase::Finished { outcome } => outcome,
            phase => panic!("not finished: {phase:?}"),
        }
    }

    #[test]
    fn a_pause_takes_effect_once_the_current_backend_is_back_and_resume_goes_on() {
        // Pause arrives while s1 is starting.
        let events = [done(1 + 5), vec![Event::Pause], done(5)].concat();
        let (paused, log) = run(rollout(&["s1", "s2", "s3"], 1, true), events);
        assert_eq!(log.last().unwrap(), "confirm_up s1@v2", "s1 finished first");
        assert_eq!(paused.phase, Phase::Paused { batch: 1 });
        assert_eq!(paused.action(), None, "nothing happens while paused");
        assert_eq!(paused.backends_done(), 1);

        let (resumed, action) = paused.step(Event::Resume);
        assert_eq!(action.unwrap().step, CheckCapacity);
        assert!(!resumed.pause_requested);
        let (finished, _) = run_on(resumed, done(20));
        assert_eq!(outcome(&finished), &Outcome::Succeeded);
    }

    /// Like `run`, from a rollout already under way.
    fn run_on(mut rollout: Rollout, events: Vec<Event>) -> (Rollout, Vec<String>) {
        let mut log = Vec::new();
        for event in events {
            let (next, action) = rollout.step(event);
            rollout = next;
            if let Some(action) = action {
                log.push(format!("{} {:?}", action.step.as_str(), action.backends));
            }
        }
        (rollout, log)
    }

    #[test]
    fn a_pause_between_backends_is_immediate_and_on_the_last_backend_is_moot() {
        // Right after s1 is confirmed, before s2's capacity check.
        let (paused, _) = run(
            rollout(&["s1", "s2"], 1, true),
            [done(1 + 10), vec![Event::Pause]].concat(),
        );
        assert_eq!(paused.phase, Phase::Paused { batch: 1 });
        // During the last backend: the rollout simply finishes.
        let (finished, _) = run(
            rollout(&["s1"], 1, true),
            [done(3), vec![Event::Pause], done(8)].concat(),
        );
        assert_eq!(outcome(&finished), &Outcome::Succeeded);
    }

    #[test]
    fn resume_before_the_pause_took_effect_withdraws_it() {
        let events = [done(1 + 3), vec![Event::Pause, Event::Resume], done(7 + 10)].concat();
        let (rollout, _) = run(rollout(&["s1", "s2"], 1, true), events);
        assert_eq!(outcome(&rollout), &Outcome::Succeeded);
    }

    #[test]
    fn abort_while_draining_puts_the_backend_back_into_rotation_and_keeps_done_ones() {
        // s1 done; s2 is at wait_sessions when the abort arrives.
        let events = [done(1 + 10 + 2), vec![Event::Abort], done(2)].concat();
        let (rollout, log) = run(rollout(&["s1", "s2", "s3"], 1, true), events);
        assert_eq!(
            log[log.len() - 2..],
            ["rollback enable s2@v1", "rollback confirm_up s2@v1"],
            "{log:?}"
        );
        assert_eq!(
            outcome(&rollout),
            &Outcome::Cancelled {
                at: Some(WaitSessions)
            }
        );
        assert!(!log.iter().any(|l| l.contains("s3")), "s3 never touched");
        assert!(
            !log.iter().any(|l| l.contains("s1@v1")),
            "s1 keeps the new version"
        );
    }

    #[test]
    fn abort_while_the_new_version_starts_restores_the_old_one_on_that_backend() {
        // s1 is at wait_healthy (stopped, new one started) when the abort arrives.
        let events = [done(1 + 6), vec![Event::Abort]].concat();
        let (aborting, log) = run(rollout(&["s1", "s2"], 1, true), events);
        assert_eq!(log.last().unwrap(), "rollback drain s1@v1");
        let (rollout, _) = run_on(aborting, done(10));
        assert_eq!(
            outcome(&rollout),
            &Outcome::Cancelled {
                at: Some(WaitHealthy)
            }
        );
    }

    #[test]
    fn abort_once_both_checks_passed_finishes_that_backend_then_stops() {
        // s1's lb_check passed; enable is next.
        let events = [done(1 + 8), vec![Event::Abort], done(2)].concat();
        let (rollout, log) = run(rollout(&["s1", "s2"], 1, true), events);
        assert_eq!(log.last().unwrap(), "confirm_up s1@v2");
        assert_eq!(
            outcome(&rollout),
            &Outcome::Cancelled {
                at: Some(ConfirmUp)
            }
        );
    }

    #[test]
    fn abort_when_queued_or_paused_cancels_at_once_and_during_a_rollback_is_ignored() {
        let (cancelled, action) = rollout(&["s1"], 1, true).step(Event::Abort);
        assert_eq!(
            (outcome(&cancelled), action),
            (&Outcome::Cancelled { at: None }, None)
        );
        let (paused, _) = run(
            rollout(&["s1", "s2"], 1, true),
            [done(1 + 10), vec![Event::Pause]].concat(),
        );
        let (cancelled, _) = paused.step(Event::Abort);
        assert_eq!(
            outcome(&cancelled),
            &Outcome::Cancelled {
                at: Some(CheckCapacity)
            }
        );

        let (rolling_back, _) = run(
            rollout(&["s1"], 1, true),
            [done(1 + 6), vec![fail("s1", "unhealthy")]].concat(),
        );
        let (same, _) = rolling_back.clone().step(Event::Abort);
        assert_eq!(same, rolling_back, "the rollback carries on");
    }

    /// Like `run`, from a rollout already under way (no `Begin`), logging the same way.
    fn resume(mut rollout: Rollout, events: Vec<Event>) -> (Rollout, Vec<String>) {
        let mut log = Vec::new();
        for event in events {
            let (next, _) = rollout.step(event);
            rollout = next;
            if let Some(action) = rollout.action() {
                let names: Vec<&str> = action.backends.iter().map(|b| b.as_str()).collect();
                log.push(format!(
                    "{}{} {}@{}",
                    if action.rollback { "rollback " } else { "" },
                    action.step.as_str(),
                    names.join(","),
                    action.version
                ));
            }
        }
        (rollout, log)
    }

    fn canary(backends: &[&str], canary: usize) -> Rollout {
        rollout(backends, 1, true).with_canary(canary)
    }

    #[test]
    fn a_canary_rollout_waits_after_the_canaries_and_promote_goes_on() {
        let (waiting, log) = run(canary(&["s1", "s2", "s3"], 1), done(1 + 10));
        assert_eq!(log.last().unwrap(), "confirm_up s1@v2");
        assert_eq!(waiting.phase, Phase::AwaitingPromote { batch: 1 });
        assert_eq!(waiting.action(), None, "nothing happens until promoted");
        assert_eq!(waiting.backends_done(), 1);
        assert!(waiting.is_waiting());

        let (promoted, log) = resume(waiting, [vec![Event::Promote], done(20)].concat());
        assert_eq!(log[0], "check_capacity s2@v2");
        assert_eq!(outcome(&promoted), &Outcome::Succeeded);
    }

    #[test]
    fn the_canaries_are_their_own_batch_whatever_the_batch_size() {
        // Two canaries, then batches of two: s1,s2 | s3,s4 | s5.
        let two = rollout(&["s1", "s2", "s3", "s4", "s5"], 2, true).with_canary(2);
        let (waiting, log) = run(two, done(1 + 10));
        assert_eq!(log[1], "check_capacity s1,s2@v2");
        assert_eq!(waiting.phase, Phase::AwaitingPromote { batch: 1 });
        let (_, log) = resume(waiting, [vec![Event::Promote], done(20)].concat());
        assert_eq!(log[0], "check_capacity s3,s4@v2");
        assert_eq!(log[10], "check_capacity s5@v2");

        // One canary with batches of two: s1 | s2,s3.
        let one = rollout(&["s1", "s2", "s3"], 2, true).with_canary(1);
        let (waiting, log) = run(one, done(1 + 10));
        assert_eq!(log[1], "check_capacity s1@v2");
        let (finished, log) = resume(waiting, [vec![Event::Promote], done(10)].concat());
        assert_eq!(log[0], "check_capacity s2,s3@v2");
        assert_eq!(outcome(&finished), &Outcome::Succeeded);
    }

    #[test]
    fn abort_while_awaiting_promotion_puts_the_canaries_back() {
        let two = rollout(&["s1", "s2", "s3"], 1, true).with_canary(2);
        let (waiting, _) = run(two, done(1 + 10));
        assert_eq!(waiting.phase, Phase::AwaitingPromote { batch: 1 });
        let (aborting, log) = resume(waiting, [vec![Event::Abort], done(20)].concat());
        let mut expected = Vec::new();
        for backend in ["s2", "s1"] {
            expected.extend(
                PROCEDURE[1..]
                    .iter()
                    .map(|step| format!("rollback {step} {backend}@v1")),
            );
        }
        assert_eq!(log, expected, "the last canary first, from drain on");
        assert_eq!(outcome(&aborting), &Outcome::CanaryAborted);
        assert_eq!(aborting.backends_done(), 0);
    }

    #[test]
    fn abort_while_a_canary_finishes_puts_it_back_too() {
        // s1 passed both checks (enable is next) when the abort arrives: a normal rollout
        // would keep it, a canary's is put back.
        let (rollout, log) = run(
            canary(&["s1", "s2"], 1),
            [done(1 + 8), vec![Event::Abort], done(2 + 9)].concat(),
        );
        assert_eq!(log[11], "confirm_up s1@v2");
        assert_eq!(log[12], "rollback drain s1@v1");
        assert_eq!(log.last().unwrap(), "rollback confirm_up s1@v1");
        assert_eq!(outcome(&rollout), &Outcome::CanaryAborted);
        assert!(!log.iter().any(|l| l.contains("s2")), "s2 never touched");
    }

    #[test]
    fn a_canary_that_cannot_be_put_back_is_reported() {
        let (waiting, _) = run(canary(&["s1", "s2"], 1), done(1 + 10));
        let events = [
            vec![Event::Abort],
            done(4),
            vec![fail("s1", "old version crashed")],
        ]
        .concat();
        let (rollout, _) = resume(waiting, events);
        let Outcome::Failed { problems, .. } = outcome(&rollout) else {
            panic!("{:?}", rollout.phase)
        };
        assert_eq!(
            problems[0].to_string(),
            "start failed on s1: old version crashed"
        );
    }

    #[test]
    fn a_canary_of_every_backend_is_no_canary() {
        for size in [2, 3] {
            let (rollout, log) = run(canary(&["s1", "s2"], size), done(1 + 20));
            assert_eq!(outcome(&rollout), &Outcome::Succeeded, "canary = {size}");
            assert_eq!(log.len(), 21, "one backend at a time, no wait");
        }
    }

    #[test]
    fn a_failure_after_promotion_rolls_the_canaries_back_too() {
        let (waiting, _) = run(canary(&["s1", "s2"], 1), done(1 + 10));
        let events = [
            vec![Event::Promote],
            done(6),
            vec![fail("s2", "unhealthy")],
            done(18),
        ]
        .concat();
        let (rollout, log) = resume(waiting, events);
        assert_eq!(log.last().unwrap(), "rollback confirm_up s1@v1");
        assert!(
            matches!(outcome(&rollout), Outcome::RolledBack { .. }),
            "{:?}",
            rollout.phase
        );
    }

    #[test]
    fn a_pause_during_the_canaries_is_spent_by_the_promotion() {
        let events = [done(1 + 3), vec![Event::Pause], done(7)].concat();
        let (waiting, _) = run(canary(&["s1", "s2", "s3"], 1), events);
        assert_eq!(waiting.phase, Phase::AwaitingPromote { batch: 1 });
        let (promoted, _) = waiting.step(Event::Promote);
        assert!(!promoted.pause_requested);
        let (finished, _) = resume(promoted, done(20));
        assert_eq!(outcome(&finished), &Outcome::Succeeded);
    }

    fn approval(backends: &[&str]) -> Rollout {
        rollout(backends, 1, true).with_approval(true)
    }

    #[test]
    fn a_rollout_that_needs_approval_waits_at_its_turn_and_approve_begins_it() {
        let (waiting, log) = run(approval(&["s1", "s2"]), []);
        assert!(log.is_empty(), "nothing is done: {log:?}");
        assert_eq!(waiting.phase, Phase::AwaitingApproval);
        assert!(waiting.is_waiting());
        let (approved, action) = waiting.step(Event::Approve);
        assert_eq!(action.unwrap().step, Prepare);
        let (finished, _) = resume(approved, done(1 + 20));
        assert_eq!(outcome(&finished), &Outcome::Succeeded);
    }

    #[test]
    fn abort_while_awaiting_approval_cancels_with_nothing_touched() {
        let (waiting, _) = run(approval(&["s1"]), []);
        let (cancelled, action) = waiting.step(Event::Abort);
        assert_eq!(
            (outcome(&cancelled), action),
            (&Outcome::Cancelled { at: None }, None)
        );
    }

    #[test]
    fn approval_and_canary_together_wait_twice() {
        let both = canary(&["s1", "s2"], 1).with_approval(true);
        let (waiting, _) = run(both, [Event::Approve]);
        let (waiting, _) = resume(waiting, done(1 + 10));
        assert_eq!(waiting.phase, Phase::AwaitingPromote { batch: 1 });
    }

    #[test]
    fn a_restarted_baton_keeps_waiting_where_it_was() {
        let (approving, _) = run(approval(&["s1", "s2"]), []);
        let (promoting, _) = run(canary(&["s1", "s2"], 1), done(1 + 10));
        for waiting in [approving, promoting] {
            let json = serde_json::to_string(&waiting).unwrap();
            let back: Rollout = serde_json::from_str(&json).unwrap();
            assert_eq!(back, waiting);
            // The resumed worker has nothing to do until someone acts, and a stray `Begin`
            // does not start it.
            assert_eq!(back.action(), None);
            let (same, _) = back.clone().step(Event::Begin);
            assert_eq!(same, back);
        }
        // A state saved before canaries and approvals existed reads as neither.
        let mut old = serde_json::to_value(rollout(&["s1"], 1, true)).unwrap();
        old.as_object_mut().unwrap().remove("canary");
        old.as_object_mut().unwrap().remove("needs_approval");
        let old: Rollout = serde_json::from_value(old).unwrap();
        assert_eq!((old.canary, old.needs_approval), (0, false));
    }

    #[test]
    fn approve_and_promote_change_nothing_where_they_do_not_fit_and_waits_ignore_the_rest() {
        let pending = canary(&["s1", "s2"], 1);
        let (forward, _) = run(pending.clone(), done(2));
        let (paused, _) = run(
            rollout(&["s1", "s2"], 1, true),
            [done(1 + 10), vec![Event::Pause]].concat(),
        );
        let (awaiting_approval, _) = run(approval(&["s1", "s2"]), []);
        let (awaiting_promote, _) = run(pending.clone(), done(1 + 10));
        let (rolling_back, _) = run(
            pending.clone(),
            [done(1 + 6), vec![fail("s1", "unhealthy")]].concat(),
        );
        let (finished, _) = run(rollout(&["s1"], 1, true), done(1 + 10));
        let timed_out = || Event::DrainTimedOut { open_sessions: 2 };
        let cases: [(&str, &Rollout, Vec<Event>); 7] = [
            ("queued", &pending, vec![Event::Approve, Event::Promote]),
            ("forward", &forward, vec![Event::Approve, Event::Promote]),
            ("paused", &paused, vec![Event::Approve, Event::Promote]),
            (
                "awaiting approval",
                &awaiting_approval,
                vec![
                    Event::Begin,
                    Event::Done,
                    timed_out(),
                    fail("s1", "x"),
                    Event::Pause,
                    Event::Resume,
                    Event::Promote,
                ],
            ),
            (
                "awaiting promotion",
                &awaiting_promote,
                vec![
                    Event::Begin,
                    Event::Done,
                    timed_out(),
                    fail("s1", "x"),
                    Event::Pause,
                    Event::Resume,
                    Event::Approve,
                ],
            ),
            (
                "rolling back",
                &rolling_back,
                vec![Event::Approve, Event::Promote],
            ),
            ("finished", &finished, vec![Event::Approve, Event::Promote]),
        ];
        for (phase, before, events) in cases {
            for event in events {
                let (after, action) = before.clone().step(event.clone());
                assert_eq!(&after, before, "{event:?} while {phase}");
                assert_eq!(action, before.action(), "{event:?} while {phase}");
            }
        }
    }

    const SURGE: [&str; 9] = [
        "check_capacity",
        "surge_start",
        "surge_healthy",
        "surge_add",
        "surge_enable",
        "drain",
        "wait_sessions",
        "overlap",
        "retire",
    ];

    fn surge(backends: &[&str], auto_rollback: bool) -> Rollout {
        rollout(backends, 1, auto_rollback).with_strategy(StrategyKind::Surge)
    }

    /// Like `run`, recording each action as "step backends@version leaving-slots".
    fn run_surge(
        mut rollout: Rollout,
        events: impl IntoIterator<Item = Event>,
    ) -> (Rollout, Vec<String>) {
        let mut log = Vec::new();
        let begun = matches!(rollout.phase, Phase::Pending);
        let first = begun.then_some(Event::Begin);
        for event in first.into_iter().chain(events) {
            let (next, action) = rollout.step(event);
            rollout = next;
            if let Some(action) = action {
                let names: Vec<&str> = action.backends.iter().map(|b| b.as_str()).collect();
                let slots: Vec<&str> = action.slots.iter().map(|s| s.as_str()).collect();
                log.push(format!(
                    "{}{} {}@{} {}",
                    if action.rollback { "rollback " } else { "" },
                    action.step.as_str(),
                    names.join(","),
                    action.version,
                    slots.join(",")
                ));
            }
        }
        (rollout, log)
    }

    #[test]
    fn a_surge_puts_each_new_instance_in_rotation_before_the_old_one_is_drained_then_retires_it() {
        let (rollout, log) = run_surge(surge(&["s1", "s2"], true), done(1 + 18));
        let mut expected = vec!["prepare @v2 ".to_string()];
        for backend in ["s1", "s2"] {
            expected.extend(
                SURGE
                    .iter()
                    .map(|step| format!("{step} {backend}@v2 address")),
            );
        }
        assert_eq!(log, expected);
        assert_eq!(outcome(&rollout), &Outcome::Succeeded);
        assert_eq!(rollout.backends_done(), 2);
    }

    #[test]
    fn a_surge_leaves_the_address_each_backend_runs_on_so_the_two_alternate() {
        let mut rollout = surge(&["s1", "s2"], true);
        rollout.targets[1].slot = Slot::SurgeAddress;
        let (_, log) = run_surge(rollout, done(1 + 18));
        assert_eq!(log[1], "check_capacity s1@v2 address");
        assert_eq!(log[10], "check_capacity s2@v2 surge_address");
        assert_eq!(log[18], "retire s2@v2 surge_address");
    }

    #[test]
    fn a_surge_drain_timeout_cuts_the_old_sessions_then_keeps_it_for_the_overlap() {
        let events = [
            done(1 + 6),
            vec![Event::DrainTimedOut { open_sessions: 2 }],
            done(1),
        ]
        .concat();
        let (_, log) = run_surge(surge(&["s1"], true), events);
        assert_eq!(
            &log[7..],
            [
                "wait_sessions s1@v2 address",
                "cut_sessions s1@v2 address",
                "overlap s1@v2 address"
            ]
        );
    }

    #[test]
    fn a_new_instance_that_never_gets_healthy_is_discarded_and_surged_backends_are_surged_back() {
        // s1 done (9 steps); s2's new instance fails Baton's probe.
        let events = [
            done(1 + 9 + 2),
            vec![fail("s2", "not healthy after 60s")],
            done(1 + 8),
        ]
        .concat();
        let (rollout, log) = run_surge(surge(&["s1", "s2", "s3"], true), events);
        let rollback: Vec<&str> = log
            .iter()
            .filter(|l| l.starts_with("rollback"))
            .map(String::as_str)
            .collect();
        // The rollback leaves the instance the rollout started, on the other address.
        let mut expected = vec!["rollback discard s2@v1 surge_address".to_string()];
        expected.extend(
            SURGE[1..]
                .iter()
                .map(|step| format!("rollback {step} s1@v1 surge_address")),
        );
        assert_eq!(rollback, expected);
        assert!(!log.iter().any(|l| l.contains("s3")), "s3 never touched");
        let Outcome::RolledBack { failure } = outcome(&rollout) else {
            panic!("expected a rollback, got {:?}", rollout.phase)
        };
        assert_eq!(
            failure.to_string(),
            "surge_healthy failed on s2: not healthy after 60s"
        );
    }

    #[test]
    fn a_failure_after_the_switch_surges_that_backend_back_in_reverse() {
        // s1's new instance is UP and current; draining the old one fails (HAProxy went away).
        let events = [
            done(1 + 5),
            vec![fail("s1", "HAProxy did not answer")],
            done(8),
        ]
        .concat();
        let (rollout, log) = run_surge(surge(&["s1", "s2"], false), events);
        let rollback: Vec<&String> = log.iter().filter(|l| l.starts_with("rollback")).collect();
        let expected: Vec<String> = SURGE[1..]
            .iter()
            .map(|step| format!("rollback {step} s1@v1 surge_address"))
            .collect();
        assert_eq!(rollback, expected.iter().collect::<Vec<_>>());
        assert!(
            matches!(outcome(&rollout), Outcome::Failed { problems, .. } if problems.is_empty()),
            "without auto-rollback the outcome is a failure: {:?}",
            rollout.phase
        );
    }

    #[test]
    fn a_surge_rollback_step_that_fails_is_reported_and_the_next_backend_is_still_restored() {
        let events = [
            done(1 + 9 + 2),                                // s2 at surge_healthy
            vec![fail("s2", "crashed")],                    // forward failure
            vec![fail("s2", "HAProxy refused del server")], // discard s2 fails
            done(8),                                        // s1 surged back
        ]
        .concat();
        let (rollout, log) = run_surge(surge(&["s1", "s2"], true), events);
        assert_eq!(log.last().unwrap(), "rollback retire s1@v1 surge_address");
        let Outcome::Failed { failure, problems } = outcome(&rollout) else {
            panic!("{:?}", rollout.phase)
        };
        assert_eq!(failure.step, SurgeHealthy);
        assert_eq!(
            problems[0].to_string(),
            "discard failed on s2: HAProxy refused del server"
        );
    }

    #[test]
    fn abort_during_the_overlap_finishes_that_backend_and_touches_no_other() {
        // s1 is in its overlap (the new instance UP, the old one drained) when the abort comes.
        let events = [done(1 + 7), vec![Event::Abort], done(2)].concat();
        let (rollout, log) = run_surge(surge(&["s1", "s2"], true), events);
        assert_eq!(
            &log[log.len() - 2..],
            ["overlap s1@v2 address", "retire s1@v2 address"]
        );
        assert!(!log.iter().any(|l| l.starts_with("rollback")), "{log:?}");
        assert!(!log.iter().any(|l| l.contains("s2")), "s2 never touched");
        assert_eq!(outcome(&rollout), &Outcome::Cancelled { at: Some(Retire) });
    }

    #[test]
    fn abort_before_the_new_instance_is_in_rotation_discards_it() {
        // s2's new instance is being added to HAProxy when the abort comes.
        let events = [done(1 + 9 + 3), vec![Event::Abort], done(1)].concat();
        let (rollout, log) = run_surge(surge(&["s1", "s2"], true), events);
        assert_eq!(log.last().unwrap(), "rollback discard s2@v1 surge_address");
        assert!(
            !log.iter().any(|l| l.contains("s1@v1")),
            "s1 keeps the new version"
        );
        assert_eq!(
            outcome(&rollout),
            &Outcome::Cancelled { at: Some(SurgeAdd) }
        );
    }

    #[test]
    fn a_surge_pauses_between_backends_and_resumes_with_the_next_one() {
        let (paused, _) = run_surge(
            surge(&["s1", "s2"], true),
            [done(1 + 4), vec![Event::Pause], done(5)].concat(),
        );
        assert_eq!(paused.phase, Phase::Paused { batch: 1 });
        let (resumed, log) = run_surge(paused, [vec![Event::Resume], done(9)].concat());
        assert_eq!(log[0], "check_capacity s2@v2 address");
        assert_eq!(outcome(&resumed), &Outcome::Succeeded);
    }

    #[test]
    fn a_surge_state_survives_json_and_a_state_saved_before_surges_reads_as_rolling() {
        let mut rollout = surge(&["s1", "s2"], true);
        rollout.targets[0].slot = Slot::SurgeAddress;
        let (rollout, _) = run_surge(rollout, done(1 + 7));
        let json = serde_json::to_string(&rollout).unwrap();
        let back: Rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rollout);
        assert_eq!(back.action(), rollout.action());

        let old = r#"{"to":"v2","targets":[{"name":"s1","previous":"v1"}],"batch_size":1,
            "auto_rollback":true,"phase":{"phase":"forward","batch":0,"step":"drain"}}"#;
        let old: Rollout = serde_json::from_str(old).unwrap();
        assert_eq!(old.strategy, StrategyKind::Rolling);
        assert_eq!(old.targets[0].slot, Slot::Address);
    }

    #[test]
    fn abort_while_surged_canaries_await_promotion_surges_them_back() {
        let canary = surge(&["s1", "s2"], true).with_canary(1);
        let (rollout, log) = run_surge(canary, done(1 + SURGE.len()));
        assert!(
            matches!(rollout.phase, Phase::AwaitingPromote { batch: 1 }),
            "{:?}",
            rollout.phase
        );
        assert_eq!(log.len(), 1 + SURGE.len(), "{log:#?}");
        let (rollout, _) = rollout.step(Event::Abort);
        let action = rollout.action().expect("the canary is put back");
        assert_eq!(
            (action.step, action.rollback, action.backends[0].as_str()),
            (Step::SurgeStart, true, "s1")
        );
        assert_eq!(action.version.as_str(), "v1");
    }

    #[test]
    fn with_a_watch_each_batch_is_watched_before_the_next_and_the_last_before_success() {
        let watched = rollout(&["s1", "s2"], 1, true).with_soak(true);
        let (rollout, log) = run(watched, done(1 + 22));
        assert_eq!(
            &log[10..13],
            ["confirm_up s1@v2", "soak s1@v2", "check_capacity s2@v2"]
        );
        assert_eq!(log.last().unwrap(), "soak s2@v2");
        assert_eq!(outcome(&rollout), &Outcome::Succeeded);
    }

    #[test]
    fn a_tripped_watch_rolls_the_batch_back_from_drain_and_the_batches_before_it() {
        let watched = rollout(&["s1", "s2", "s3"], 1, true).with_soak(true);
        let events = [
            done(1 + 11 + 10),
            vec![fail("s2", "s2 answered 12 5xx of 40 request(s)")],
            done(18),
        ]
        .concat();
        let (rollout, log) = run(watched, events);
        let rollback: Vec<&str> = log
            .iter()
            .filter(|l| l.starts_with("rollback"))
            .map(String::as_str)
            .collect();
        let mut expected = Vec::new();
        for backend in ["s2", "s1"] {
            expected.extend(
                PROCEDURE[1..]
                    .iter()
                    .map(|step| format!("rollback {step} {backend}@v1")),
            );
        }
        assert_eq!(rollback, expected, "no rollback step is watched");
        assert!(!log.iter().any(|l| l.contains("s3")), "s3 never touched");
        let Outcome::RolledBack { failure } = outcome(&rollout) else {
            panic!("expected a rollback, got {:?}", rollout.phase)
        };
        assert_eq!(failure.step, Soak);
        assert_eq!(failure.backend, Some(b("s2")));
    }

    #[test]
    fn an_abort_during_the_watch_ends_it_keeping_the_batch_and_a_watched_canary_awaits_promotion() {
        let watched = rollout(&["s1", "s2"], 1, true).with_soak(true);
        let (aborted, log) = run(watched, [done(1 + 10), vec![Event::Abort]].concat());
        assert_eq!(log.last().unwrap(), "soak s1@v2");
        assert_eq!(
            outcome(&aborted),
            &Outcome::Cancelled { at: Some(Soak) },
            "s1 serves v2, proven by both checks; s2 untouched"
        );

        let canary = canary(&["s1", "s2"], 1).with_soak(true);
        let (waiting, log) = run(canary, done(1 + 11));
        assert_eq!(
            log.last().unwrap(),
            "soak s1@v2",
            "the canary is watched first"
        );
        assert_eq!(waiting.phase, Phase::AwaitingPromote { batch: 1 });
    }

    #[test]
    fn a_surge_is_watched_after_the_old_instance_retires_and_a_trip_surges_the_batch_back() {
        let watched = surge(&["s1"], true).with_soak(true);
        let events = [
            done(1 + 9),
            vec![fail("s1", "s1:surge answered 3 5xx")],
            done(8),
        ]
        .concat();
        let (rollout, log) = run_surge(watched, events);
        assert_eq!(log[9], "retire s1@v2 address");
        assert_eq!(log[10], "soak s1@v2 address");
        assert_eq!(log[11], "rollback surge_start s1@v1 surge_address");
        assert!(
            matches!(outcome(&rollout), Outcome::RolledBack { failure } if failure.step == Soak)
        );
    }
}
