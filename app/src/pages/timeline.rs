//! A rollout's state as the rollout page holds it, and how each live event changes it.
//!
//! Pure (no IO, no signals) so the rules are tested here: events at or below the last applied
//! id are ignored, a step that begins and then ends is one row (upserted by id), and a control
//! request is shown until the status says it took effect (one asked for before the page loaded
//! comes with the rollout itself).

use crate::model::{
    Change, ControlAction, DeploymentDetail, DeploymentEvent, DeploymentSummary, PendingControl,
    StepLog, StepOutcome, StepSummary,
};

impl PendingControl {
    /// "Pause requested by alice", or without a name when the request carried none.
    pub fn describe(&self) -> String {
        let what = match self.action {
            ControlAction::Pause => "Pause requested",
            ControlAction::Resume => "Resume requested",
            ControlAction::Abort => "Abort requested",
            ControlAction::Approve => "Approved",
            ControlAction::Promote => "Promoted",
        };
        let when = match self.action {
            ControlAction::Pause => "it takes effect once the current backend has finished",
            ControlAction::Resume => "the rollout continues with the next backend",
            ControlAction::Abort => {
                "it takes effect after the current step; every backend is left serving"
            }
            ControlAction::Approve => "the rollout begins",
            ControlAction::Promote => "the rollout goes on past the canaries",
        };
        match &self.by {
            Some(by) => format!("{what} by {by}: {when}."),
            None => format!("{what}: {when}."),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub deployment: DeploymentSummary,
    /// The service's backends in rollout order (more may appear in steps).
    pub backends: Vec<String>,
    /// Ordered by start time, then id.
    pub steps: Vec<StepSummary>,
    /// The newest event reflected here.
    pub last_event_id: i64,
    pub pending: Option<PendingControl>,
    /// The ends of backends' logs kept with failed steps (fetched again when a step fails live).
    pub logs: Vec<StepLog>,
    /// Who approved the rollout and who promoted its canaries, once someone has.
    pub approved_by: Option<String>,
    pub promoted_by: Option<String>,
}

impl Timeline {
    pub fn new(detail: DeploymentDetail) -> Self {
        // The server leaves out what has taken effect; an ended rollout never shows one anyway.
        let pending = detail
            .pending
            .filter(|pending| !pending.fulfilled_by(detail.deployment.status));
        let mut timeline = Self {
            deployment: detail.deployment,
            backends: detail.backends,
            steps: detail.steps,
            last_event_id: detail.last_event_id,
            pending,
            logs: detail.logs,
            approved_by: detail.approved_by,
            promoted_by: detail.promoted_by,
        };
        timeline.sort();
        timeline
    }

    /// Applies one event of this rollout; returns whether anything changed.
    pub fn apply(&mut self, event: DeploymentEvent) -> bool {
        if event.id <= self.last_event_id || event.deployment_id != self.deployment.id {
            return false;
        }
        self.last_event_id = event.id;
        match event.change {
            Change::Status { deployment } => {
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|pending| pending.fulfilled_by(deployment.status))
                {
                    self.pending = None;
                }
                self.deployment = deployment;
            }
            Change::Step { step } => {
                if let Some(backend) = &step.backend
                    && !self.backends.contains(backend)
                {
                    self.backends.push(backend.clone());
                }
                match self.steps.iter_mut().find(|known| known.id == step.id) {
                    Some(known) => *known = step,
                    None => {
                        self.steps.push(step);
                        self.sort();
                    }
                }
            }
            Change::Control { action, by } => {
                // The server accepts an approval or a promotion only while the rollout
                // awaits one, so the request is the decision.
                match action {
                    ControlAction::Approve => self.approved_by.clone_from(&by),
                    ControlAction::Promote => self.promoted_by.clone_from(&by),
                    ControlAction::Pause | ControlAction::Resume | ControlAction::Abort => {}
                }
                if !self.deployment.status.is_finished() {
                    self.pending = Some(PendingControl { action, by });
                }
            }
            // Shown by the steps it interrupted, whose detail names the new leader.
            Change::Takeover { .. } => {}
        }
        true
    }

    fn sort(&mut self) {
        self.steps.sort_by_key(|step| (step.started_at, step.id));
    }

    /// How many steps have failed so far: when it grows, a log may have been kept.
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    pub fn failures(&self) -> usize {
        self.steps
            .iter()
            .filter(|step| step.outcome == Some(StepOutcome::Failed))
            .count()
    }

    /// The steps of one backend (or, with `None`, of the whole rollout), in order.
    pub fn steps_of(&self, backend: Option<&str>) -> Vec<StepSummary> {
        self.steps
            .iter()
            .filter(|step| step.backend.as_deref() == backend)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RolloutStatus, StepKind, StepOutcome, Trigger};

    fn summary(status: RolloutStatus) -> DeploymentSummary {
        DeploymentSummary {
            id: 7,
            service: "web".into(),
            status,
            from_version: Some("v1".into()),
            to_version: "v2".into(),
            trigger: Trigger::Ui,
            requested_by: None,
            reason: None,
            created_at: 1_000,
            started_at: Some(1_000),
            finished_at: None,
        }
    }

    fn step(id: i64, backend: &str, name: StepKind, finished: bool) -> StepSummary {
        StepSummary {
            id,
            backend: Some(backend.into()),
            step: name,
            rollback: false,
            version: "v2".into(),
            started_at: 1_000 + id,
            finished_at: finished.then_some(2_000 + id),
            outcome: finished.then_some(StepOutcome::Ok),
            detail: None,
        }
    }

    fn timeline() -> Timeline {
        Timeline::new(DeploymentDetail {
            deployment: summary(RolloutStatus::Running),
            backends: vec!["web1".into(), "web2".into()],
            steps: vec![step(2, "web1", StepKind::Drain, true)],
            last_event_id: 10,
            pending: None,
            logs: Vec::new(),
            approved_by: None,
            promoted_by: None,
        })
    }

    /// The rollout as a reload finds it: `status`, with `pending` still queued on the server.
    fn reloaded(status: RolloutStatus, pending: Option<PendingControl>) -> Timeline {
        Timeline::new(DeploymentDetail {
            deployment: summary(status),
            backends: vec!["web1".into(), "web2".into()],
            steps: vec![step(2, "web1", StepKind::Drain, true)],
            last_event_id: 10,
            pending,
            logs: Vec::new(),
            approved_by: None,
            promoted_by: None,
        })
    }

    fn event(id: i64, change: Change) -> DeploymentEvent {
        DeploymentEvent {
            id,
            deployment_id: 7,
            service: "web".into(),
            at: 5_000,
            change,
        }
    }

    #[test]
    fn a_step_that_begins_then_ends_is_one_row() {
        let mut timeline = timeline();
        assert!(timeline.apply(event(
            11,
            Change::Step {
                step: step(3, "web1", StepKind::WaitSessions, false)
            }
        )));
        assert!(timeline.apply(event(
            12,
            Change::Step {
                step: step(3, "web1", StepKind::WaitSessions, true)
            }
        )));
        let steps = timeline.steps_of(Some("web1"));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].outcome, Some(StepOutcome::Ok));
    }

    #[test]
    fn events_already_applied_are_ignored() {
        let mut timeline = timeline();
        let begun = Change::Step {
            step: step(3, "web1", StepKind::Maint, false),
        };
        assert!(
            !timeline.apply(event(10, begun.clone())),
            "at the initial id"
        );
        assert!(!timeline.apply(event(4, begun.clone())), "below it");
        assert!(timeline.apply(event(11, begun.clone())));
        assert!(!timeline.apply(event(11, begun)), "the same id twice");
        assert_eq!(timeline.steps.len(), 2);
        assert_eq!(timeline.last_event_id, 11);
    }

    #[test]
    fn events_of_another_rollout_are_ignored() {
        let mut timeline = timeline();
        let mut other = event(
            11,
            Change::Step {
                step: step(3, "web1", StepKind::Maint, false),
            },
        );
        other.deployment_id = 8;
        assert!(!timeline.apply(other));
        assert_eq!(timeline.steps.len(), 1);
    }

    #[test]
    fn a_pause_request_shows_until_the_rollout_is_paused() {
        let mut timeline = timeline();
        timeline.apply(event(
            11,
            Change::Control {
                action: ControlAction::Pause,
                by: Some("alice".into()),
            },
        ));
        assert_eq!(
            timeline
                .pending
                .as_ref()
                .map(PendingControl::describe)
                .unwrap(),
            "Pause requested by alice: it takes effect once the current backend has finished."
        );
        timeline.apply(event(
            12,
            Change::Step {
                step: step(3, "web1", StepKind::Enable, true),
            },
        ));
        assert!(
            timeline.pending.is_some(),
            "a step does not end the request"
        );
        timeline.apply(event(
            13,
            Change::Status {
                deployment: summary(RolloutStatus::Paused),
            },
        ));
        assert_eq!(timeline.pending, None);
        assert_eq!(timeline.deployment.status, RolloutStatus::Paused);
    }

    #[test]
    fn an_abort_request_shows_until_the_rollout_ends() {
        let mut timeline = timeline();
        timeline.apply(event(
            11,
            Change::Control {
                action: ControlAction::Abort,
                by: None,
            },
        ));
        timeline.apply(event(
            12,
            Change::Status {
                deployment: summary(RolloutStatus::Paused),
            },
        ));
        assert!(timeline.pending.is_some());
        timeline.apply(event(
            13,
            Change::Status {
                deployment: summary(RolloutStatus::Cancelled),
            },
        ));
        assert_eq!(timeline.pending, None);
    }

    #[test]
    fn a_request_made_before_a_reload_still_shows_until_it_takes_effect() {
        let mut timeline = reloaded(
            RolloutStatus::Running,
            Some(PendingControl {
                action: ControlAction::Pause,
                by: Some("alice".into()),
            }),
        );
        assert_eq!(
            timeline
                .pending
                .as_ref()
                .map(PendingControl::describe)
                .unwrap(),
            "Pause requested by alice: it takes effect once the current backend has finished."
        );
        timeline.apply(event(
            11,
            Change::Status {
                deployment: summary(RolloutStatus::Paused),
            },
        ));
        assert_eq!(timeline.pending, None);
    }

    #[test]
    fn a_request_already_in_effect_or_on_an_ended_rollout_is_not_shown_after_a_reload() {
        let pause = PendingControl {
            action: ControlAction::Pause,
            by: Some("alice".into()),
        };
        let abort = PendingControl {
            action: ControlAction::Abort,
            by: None,
        };
        assert_eq!(
            reloaded(RolloutStatus::Paused, Some(pause.clone())).pending,
            None
        );
        assert_eq!(
            reloaded(RolloutStatus::Paused, Some(abort.clone())).pending,
            Some(abort.clone()),
            "an abort of a paused rollout is still to come"
        );
        for ended in [
            RolloutStatus::Succeeded,
            RolloutStatus::Failed,
            RolloutStatus::RolledBack,
            RolloutStatus::Cancelled,
        ] {
            assert_eq!(
                reloaded(ended, Some(pause.clone())).pending,
                None,
                "{ended}"
            );
            assert_eq!(
                reloaded(ended, Some(abort.clone())).pending,
                None,
                "{ended}"
            );
        }
    }

    #[test]
    fn a_rollout_from_a_server_that_sends_no_pending_field_reads_as_nothing_pending() {
        let mut json = serde_json::to_value(DeploymentDetail {
            deployment: summary(RolloutStatus::Running),
            backends: vec!["web1".into()],
            steps: Vec::new(),
            last_event_id: 3,
            pending: None,
            logs: Vec::new(),
            approved_by: None,
            promoted_by: None,
        })
        .unwrap();
        json.as_object_mut().unwrap().remove("pending");
        let detail: DeploymentDetail = serde_json::from_value(json).unwrap();
        assert_eq!(detail.pending, None);
        assert_eq!(detail.deployment.status, RolloutStatus::Running);
    }

    #[test]
    fn steps_on_a_backend_not_listed_add_a_row() {
        let mut timeline = timeline();
        timeline.apply(event(
            11,
            Change::Step {
                step: step(3, "web9", StepKind::Drain, false),
            },
        ));
        assert_eq!(timeline.backends, ["web1", "web2", "web9"]);
    }

    #[test]
    fn an_approval_and_a_promotion_name_who_decided_and_show_until_they_take_effect() {
        let mut timeline = reloaded(RolloutStatus::AwaitingApproval, None);
        let approve = PendingControl {
            action: ControlAction::Approve,
            by: Some("bea".into()),
        };
        assert!(timeline.apply(event(
            11,
            Change::Control {
                action: ControlAction::Approve,
                by: Some("bea".into()),
            },
        )));
        assert_eq!(timeline.approved_by.as_deref(), Some("bea"));
        assert_eq!(timeline.pending, Some(approve));
        timeline.apply(event(
            12,
            Change::Status {
                deployment: summary(RolloutStatus::Running),
            },
        ));
        assert_eq!(timeline.pending, None, "approved: the rollout began");

        timeline.apply(event(
            13,
            Change::Status {
                deployment: summary(RolloutStatus::AwaitingPromote),
            },
        ));
        timeline.apply(event(
            14,
            Change::Control {
                action: ControlAction::Promote,
                by: Some("cy".into()),
            },
        ));
        assert_eq!(
            timeline
                .pending
                .as_ref()
                .map(PendingControl::describe)
                .as_deref(),
            Some("Promoted by cy: the rollout goes on past the canaries.")
        );
        timeline.apply(event(
            15,
            Change::Status {
                deployment: summary(RolloutStatus::Running),
            },
        ));
        assert_eq!(timeline.pending, None);
        assert_eq!(
            (
                timeline.approved_by.as_deref(),
                timeline.promoted_by.as_deref()
            ),
            (Some("bea"), Some("cy"))
        );
    }
}
