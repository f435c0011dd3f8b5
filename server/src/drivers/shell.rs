//! Where a runtime's programs run: this machine, or a host reached over OpenSSH.
//!
//! The runtimes for backends on other hosts (`remote.rs`) do all their work by running Baton's
//! agent script (`agent.sh`) through a [`Shell`]. [`LocalShell`] runs the same argument vector on
//! this machine, so the agent's tests run real processes without an ssh server; the OpenSSH one
//! is `hosts::Host`.

use std::fmt;
use std::process::{Output, Stdio};
use std::time::Duration;

use async_trait::async_trait;

/// Why a program could not be run to its end on a host. A program that ran and failed is not an
/// error here: its exit status is in the [`Output`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// The host cannot be reached now (no route, refused, the connection was lost): `reason` is
    /// ssh's own words.
    #[error("host {host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    /// The host answered with a key its `known_hosts` does not pin; `reason` says how to fix it.
    #[error("host {host}'s key is not the one Baton trusts: {reason}")]
    HostKey { host: String, reason: String },
    /// The program did not finish within its time limit (it may still run on the host).
    #[error("`{program}` did not finish within {} on {host}", humantime::format_duration(*.after))]
    TimedOut {
        host: String,
        program: String,
        after: Duration,
    },
    /// The program could not be started at all (on this machine: no such file, say).
    #[error("cannot run `{program}` on {host}: {reason}")]
    Spawn {
        host: String,
        program: String,
        reason: String,
    },
}

impl ShellError {
    /// Whether the host itself is out of reach (rather than a program misbehaving on it).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::HostKey { .. })
    }
}

/// A place where programs run.
#[async_trait]
pub trait Shell: Send + Sync + fmt::Debug {
    /// The place's name in messages: a `[[host]]`'s name, or "this machine".
    fn name(&self) -> &str;

    /// Runs `argv[0]` with the rest as its arguments (each passed as one word, however many
    /// spaces or quotes it holds), stdin empty, and collects its exit status, stdout and stderr.
    /// The program inherits the place's login environment (over ssh, the remote user's).
    /// Gives up after `limit`. Cancellation-safe for Baton; a program given up on (or
    /// cancelled) may go on running at the place, so callers bound their programs' own time there
    /// too.
    ///
    /// # Panics
    /// If `argv` is empty.
    async fn run(&self, argv: &[String], limit: Duration) -> Result<Output, ShellError>;
}

/// Runs programs on this machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalShell;

/// What [`LocalShell::name`] says.
pub const THIS_MACHINE: &str = "this machine";

#[async_trait]
impl Shell for LocalShell {
    fn name(&self) -> &str {
        THIS_MACHINE
    }

    async fn run(&self, argv: &[String], limit: Duration) -> Result<Output, ShellError> {
        let (program, args) = argv.split_first().expect("a program to run");
        let spawn_error = |reason: String| ShellError::Spawn {
            host: THIS_MACHINE.into(),
            program: program.clone(),
            reason,
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| spawn_error(error.to_string()))?;
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(output) => output.map_err(|error| spawn_error(error.to_string())),
            Err(_) => Err(ShellError::TimedOut {
                host: THIS_MACHINE.into(),
                program: program.clone(),
                after: limit,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_local_program_gets_each_argument_as_one_word_and_reports_its_exit() {
        let output = LocalShell
            .run(
                &argv(&[
                    "sh",
                    "-c",
                    "printf '%s|' \"$@\"; exit 3",
                    "sh",
                    "a b",
                    "'c'",
                    "$HOME",
                ]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "a b|'c'|$HOME|");
        assert_eq!(output.status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_local_program_past_its_limit_is_a_timeout_naming_it() {
        let error = LocalShell
            .run(&argv(&["sleep", "5"]), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "`sleep` did not finish within 100ms on this machine"
        );
        let missing = LocalShell
            .run(&argv(&["baton-no-such-program"]), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(missing, ShellError::Spawn { .. }), "{missing}");
    }
}
