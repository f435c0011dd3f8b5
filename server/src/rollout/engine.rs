//! The rollout engine: given a rollout's state and what just happened, decides what happens next.
//!
//! Invariant: no IO and no clock. The executor carries out each [`Action`] and reports back an
//! [`Event`]; waits with deadlines are actions too, so the engine never needs the time. Every
//! state is serializable, so the executor persists it before each side effect and a restarted
//! Baton resumes by running the current action again (every action is idempotent).

use serde::{Deserialize, Serialize};

use crate::domain::{BackendName, Version};

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
        }
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.phase, Phase::Paused { .. })
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished { .. })
    }

    /// How many backends already run the new version and are back in rotation.
    pub fn backends_done(&self) -> usize {
        match &self.phase {
            Phase::Forward { batch, .. } | Phase::Paused { batch } => self.batch(*batch).start,
            Phase::Finished {
                outcome: Outcome::Succeeded,
            } => self.targets.len(),
            Phase::Pending
            | Phase::RollingBack { .. }
            | Phase::Finished {
                outcome:
                    Outcome::RolledBack { .. } | Outcome::Failed { .. } | Outcome::Cancelled { .. },
            } => 0,
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

    /// Batches of `batch_size` active backends, then batches of backups: a batch never mixes
    /// the two, so a backup is only taken out while every active backend is back in rotation.
    fn batch_count(&self) -> usize {
        self.active().div_ceil(self.batch_size) + self.backups.div_ceil(self.batch_size)
    }

    fn batch(&self, batch: usize) -> std::ops::Range<usize> {
        let (active, active_batches) = (self.active(), self.active().div_ceil(self.batch_size));
        if batch < active_batches {
            let start = batch * self.batch_size;
            start..(start + self.batch_size).min(active)
        } else {
            let start = active + (batch - active_batches) * self.batch_size;
            start..(start + self.batch_size).min(self.targets.len())
        }
    }

    /// The batch that the target at `index` belongs to.
    fn batch_of(&self, index: usize) -> usize {
        let active = self.active();
        if index < active {
            index / self.batch_size
        } else {
            active.div_ceil(self.batch_size) + (index - active) / self.batch_size
        }
    }

    /// What the executor must do now; `None` once finished.
    pub fn action(&self) -> Option<Action> {
        match &self.phase {
            Phase::Pending | Phase::Paused { .. } | Phase::Finished { .. } => None,
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
                    | Step::ConfirmUp => self.targets[self.batch(*batch)]
                        .iter()
                        .map(|t| t.name.clone())
                        .collect(),
                },
                version: self.to.clone(),
                rollback: false,
            }),
            Phase::RollingBack { queue, step, .. } => {
                let target = &self.targets[queue[0].index];
                Some(Action {
                    step: *step,
                    backends: vec![target.name.clone()],
                    version: target.previous.clone(),
                    rollback: true,
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
            (Phase::Pending, Event::Begin) => Phase::Forward {
                batch: 0,
                step: Step::Prepare,
            },
            // Already begun (a restarted Baton resumes the saved state instead).
            (
                phase @ (Phase::Forward { .. }
                | Phase::Paused { .. }
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
            ) => match next_step(step) {
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
                if touches_the_process(step) {
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

            // No action is out while queued, paused or finished, so no result can come back.
            (
                phase @ (Phase::Pending | Phase::Paused { .. } | Phase::Finished { .. }),
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
            // paused, putting backends back (which must finish), or over.
            (
                phase @ (Phase::Pending
                | Phase::Paused { .. }
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
            // Not paused: withdraws a pause asked for and not yet taken, if any.
            (
                phase @ (Phase::Pending
                | Phase::Forward { .. }
                | Phase::RollingBack { .. }
                | Phase::Finished { .. }),
                Event::Resume,
            ) => {
                self.pause_requested = false;
                phase
            }

            (Phase::Pending, Event::Abort) => Phase::Finished {
                outcome: Outcome::Cancelled { at: None },
            },
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

    fn forward_after(&self, batch: usize, step: Step) -> Phase {
        match next_step(step) {
            Some(next) => Phase::Forward { batch, step: next },
            None if self.abort_requested => Phase::Finished {
                outcome: Outcome::Cancelled {
                    at: Some(Step::ConfirmUp),
                },
            },
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

    fn fail_forward(&self, batch: usize, cause: Failure) -> Phase {
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
            | Step::ConfirmUp => Some(Step::Drain),
        };
        let mut queue: Vec<Restore> = match from {
            Some(from) => self
                .batch(batch)
                .rev()
                .map(|index| Restore { index, from })
                .collect(),
            None => Vec::new(),
        };
        if self.auto_rollback {
            queue.extend((0..self.batch(batch).start).rev().map(|index| Restore {
                index,
                from: Step::Drain,
            }));
        }
        self.next_restore_from(queue, cause, Vec::new(), Undo::Failure)
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
            None => {
                let changed_any = self.auto_rollback
                    && (touches_the_process(cause.step) || self.batch_index_of(&cause) > 0);
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
}
