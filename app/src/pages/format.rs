//! Words and numbers as the UI shows them: status and step labels, durations, UTC timestamps.
//!
//! Pure functions, the same on the server and in the browser, so what the server renders is what
//! the hydrated page starts from.

use leptos::prelude::ServerFnError;

use crate::model::{
    CheckResult, Reachability, RolloutStatus, ServerState, StepKind, StepOutcome, Trigger,
};

/// A rollout's status in words.
pub fn status_label(status: RolloutStatus) -> &'static str {
    match status {
        RolloutStatus::Queued => "Queued",
        RolloutStatus::Running => "Running",
        RolloutStatus::Paused => "Paused",
        RolloutStatus::AwaitingApproval => "Awaiting approval",
        RolloutStatus::AwaitingPromote => "Awaiting promotion",
        RolloutStatus::Succeeded => "Succeeded",
        RolloutStatus::Failed => "Failed",
        RolloutStatus::RolledBack => "Rolled back",
        RolloutStatus::Cancelled => "Cancelled",
    }
}

/// A step of the replacement procedure in words.
pub fn step_label(step: StepKind) -> &'static str {
    match step {
        StepKind::Prepare => "Prepare",
        StepKind::CheckCapacity => "Capacity check",
        StepKind::Drain => "Drain",
        StepKind::WaitSessions => "Wait for sessions",
        StepKind::CutSessions => "Cut sessions",
        StepKind::Maint => "Maintenance",
        StepKind::Stop => "Stop",
        StepKind::Start => "Start",
        StepKind::WaitHealthy => "Healthy",
        StepKind::LbCheck => "LB check",
        StepKind::Enable => "Enabled",
        StepKind::ConfirmUp => "Confirmed UP",
        StepKind::SurgeStart => "Started beside",
        StepKind::SurgeHealthy => "New one healthy",
        StepKind::SurgeAdd => "Added to the LB",
        StepKind::SurgeEnable => "New one UP",
        StepKind::Overlap => "Overlap",
        StepKind::Retire => "Old one retired",
        StepKind::Discard => "New one discarded",
        StepKind::Soak => "Watched",
    }
}

/// A step in progress, in words ("Draining", "Waiting until healthy").
pub fn step_doing(step: StepKind) -> &'static str {
    match step {
        StepKind::Prepare => "Preparing",
        StepKind::CheckCapacity => "Checking capacity",
        StepKind::Drain => "Draining",
        StepKind::WaitSessions => "Waiting for sessions to finish",
        StepKind::CutSessions => "Cutting sessions",
        StepKind::Maint => "Entering maintenance",
        StepKind::Stop => "Stopping",
        StepKind::Start => "Starting",
        StepKind::WaitHealthy => "Waiting until healthy",
        StepKind::LbCheck => "Waiting for the LB check",
        StepKind::Enable => "Enabling",
        StepKind::ConfirmUp => "Confirming UP",
        StepKind::SurgeStart => "Starting beside the old one",
        StepKind::SurgeHealthy => "Waiting until the new one is healthy",
        StepKind::SurgeAdd => "Adding the new one to the LB",
        StepKind::SurgeEnable => "Putting the new one in rotation",
        StepKind::Overlap => "Overlapping: the old one drained",
        StepKind::Retire => "Retiring the old one",
        StepKind::Discard => "Discarding the new one",
        StepKind::Soak => "Watching its traffic",
    }
}

/// What started a rollout, in words.
pub fn trigger_label(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Ui => "UI",
        Trigger::Api => "API",
        Trigger::Cli => "CLI",
        Trigger::Webhook => "Webhook",
        Trigger::Rollback => "Rollback",
    }
}

/// How a step ended, in words; `None` while it runs.
pub fn outcome_label(outcome: Option<StepOutcome>) -> &'static str {
    match outcome {
        None => "Running",
        Some(StepOutcome::Ok) => "Done",
        Some(StepOutcome::Failed) => "Failed",
        Some(StepOutcome::TimedOut) => "Timed out",
        Some(StepOutcome::Interrupted) => "Interrupted",
    }
}

/// The CSS class of a load-balancer status. The status itself is always shown too (in HAProxy's
/// words, see [`ServerState`]'s `Display`): colour is never the only signal.
pub fn lb_class(status: &ServerState) -> &'static str {
    if status.changing().is_some() {
        return "lb-changing";
    }
    match status {
        ServerState::Up { .. } => "lb-up",
        ServerState::Drain { .. } | ServerState::AgentDrain | ServerState::Nolb { .. } => {
            "lb-drain"
        }
        ServerState::Maint { .. } => "lb-maint",
        ServerState::Down { .. } | ServerState::AgentDown => "lb-down",
        ServerState::NoCheck | ServerState::Other { .. } => "lb-other",
    }
}

/// A health-check result as the dashboard shows it: its CSS class and the word for it.
pub fn check_label(check: &CheckResult) -> (&'static str, &'static str) {
    match check {
        CheckResult::Passed(_) => ("check check-ok", "passing"),
        CheckResult::Failed(_) => ("check check-bad", "failing"),
    }
}

/// A host's reachability as a badge: its class and word.
pub fn reachability_label(reachability: Reachability) -> (&'static str, &'static str) {
    match reachability {
        Reachability::Unknown => ("host host-unknown", "not reached yet"),
        Reachability::Reachable => ("host host-ok", "reachable"),
        Reachability::Unreachable => ("host host-bad", "unreachable"),
    }
}

/// A length of time for people: `350 ms`, `4.2 s`, `1 min 05 s`, `2 h 03 min`.
pub fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        format!("{}.{} s", ms / 1_000, (ms % 1_000) / 100)
    } else if ms < 60_000 {
        format!("{} s", ms / 1_000)
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A Unix time in milliseconds as `(ISO 8601 in UTC, readable UTC text)`: the server renders
/// these, and the browser replaces the text with its own time zone once it has hydrated.
pub fn utc_timestamp(ms: i64) -> (String, String) {
    let seconds = ms.div_euclid(1_000);
    let millis = ms.rem_euclid(1_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (of_day / 3_600, of_day % 3_600 / 60, of_day % 60);
    (
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"),
        format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC"),
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A server function's error as the operator should read it: the server's own message,
/// without the framework's prefix.
pub fn error_message(error: &ServerFnError) -> String {
    match error {
        ServerFnError::ServerError(message) => message.clone(),
        ServerFnError::Request(_) => {
            "Baton could not be reached; check that it is running and try again".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        for (ms, expected) in [
            (-5, "0 ms"),
            (0, "0 ms"),
            (350, "350 ms"),
            (1_000, "1.0 s"),
            (4_250, "4.2 s"),
            (12_900, "12 s"),
            (65_000, "1 min 05 s"),
            (3_600_000 + 180_000, "1 h 03 min"),
        ] {
            assert_eq!(format_duration(ms), expected, "for {ms} ms");
        }
    }

    #[test]
    fn timestamps_are_rendered_in_utc() {
        assert_eq!(
            utc_timestamp(0),
            (
                "1970-01-01T00:00:00.000Z".into(),
                "1970-01-01 00:00:00 UTC".into()
            )
        );
        // 2024-02-29 23:59:59.123 UTC, a leap day.
        assert_eq!(
            utc_timestamp(1_709_251_199_123),
            (
                "2024-02-29T23:59:59.123Z".into(),
                "2024-02-29 23:59:59 UTC".into()
            )
        );
        assert_eq!(
            utc_timestamp(1_735_689_600_000).1,
            "2025-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn load_balancer_states_get_a_class_each() {
        use crate::model::{Health, MaintCause};
        let settling = Some(Health { current: 1, of: 2 });
        for (state, class) in [
            (ServerState::Up { changing: None }, "lb-up"),
            (ServerState::Drain { changing: None }, "lb-drain"),
            (ServerState::Nolb { changing: None }, "lb-drain"),
            (ServerState::AgentDrain, "lb-drain"),
            (
                ServerState::Maint {
                    cause: MaintCause::Admin,
                },
                "lb-maint",
            ),
            (ServerState::Down { changing: None }, "lb-down"),
            (ServerState::AgentDown, "lb-down"),
            (ServerState::Up { changing: settling }, "lb-changing"),
            (ServerState::Drain { changing: settling }, "lb-changing"),
            (ServerState::Down { changing: settling }, "lb-changing"),
            (ServerState::NoCheck, "lb-other"),
        ] {
            assert_eq!(lb_class(&state), class, "{state}");
        }
    }

    #[test]
    fn check_results_pass_or_fail() {
        assert_eq!(
            check_label(&CheckResult::Passed("L7OK".into())),
            ("check check-ok", "passing")
        );
        assert_eq!(
            check_label(&CheckResult::Failed("L4CON".into())),
            ("check check-bad", "failing")
        );
    }

    #[test]
    fn every_status_and_step_has_a_label() {
        use strum::VariantArray;
        assert_eq!(status_label(RolloutStatus::RolledBack), "Rolled back");
        for status in RolloutStatus::VARIANTS {
            assert!(!status_label(*status).contains('_'), "{status}");
        }
        for step in StepKind::VARIANTS {
            assert!(!step_label(*step).contains('_'), "{step}");
            assert!(!step_doing(*step).contains('_'), "{step}");
        }
        assert_eq!(step_label(StepKind::WaitSessions), "Wait for sessions");
        assert_eq!(step_label(StepKind::LbCheck), "LB check");
    }

    #[test]
    fn server_errors_lose_the_framework_prefix() {
        let error = ServerFnError::new("invalid version \"a b\"");
        assert_eq!(error_message(&error), "invalid version \"a b\"");
    }
}
