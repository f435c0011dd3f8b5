//! `baton check-config`'s look at each `[[host]]`: can Baton reach it, is its key the pinned one,
//! can it keep its records and logs there, and is each service's command found.

use std::fmt;

use super::{Host, Hosts};
use crate::drivers::remote;
use crate::drivers::shell::ShellError;
use crate::settings::{RuntimeKind, Settings};

/// What one host answered.
pub struct HostReport {
    pub host: String,
    pub ssh: String,
    pub outcome: Result<Vec<ServiceCheck>, ShellError>,
}

/// One service's backends on a host.
pub struct ServiceCheck {
    pub service: String,
    /// What is fine, one short phrase each.
    pub facts: Vec<String>,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

impl HostReport {
    /// Whether Baton can run this host's backends.
    pub fn passed(&self) -> bool {
        self.outcome
            .as_ref()
            .is_ok_and(|services| services.iter().all(|s| s.problems.is_empty()))
    }
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} ({}): ", self.host, self.ssh)?;
        match &self.outcome {
            Err(error @ ShellError::HostKey { .. }) => write!(f, "host key refused: {error}"),
            Err(error) => write!(f, "not usable: {error}"),
            Ok(services) => {
                f.write_str("reachable, host key ok")?;
                for service in services {
                    write!(
                        f,
                        "\n  service {}: {}",
                        service.service,
                        service.facts.join(", ")
                    )?;
                    for problem in &service.problems {
                        write!(f, "\n  service {}: PROBLEM: {problem}", service.service)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Connects to every host of `settings` at once and checks it for each service with backends
/// there; disconnects after. Its connections' control sockets are its own (`<state_dir>/ssh-check`),
/// so a check never disturbs a Baton serving from the same state directory.
pub async fn check_hosts(settings: &Settings) -> Vec<HostReport> {
    let hosts = Hosts::new(
        &settings.hosts,
        &settings.server.state_dir.join("ssh-check"),
    );
    let reports =
        futures::future::join_all(hosts.iter().map(|host| check_host(settings, host))).await;
    hosts.disconnect_all().await;
    reports
}

async fn check_host(settings: &Settings, host: &Host) -> HostReport {
    let report = |outcome| HostReport {
        host: host.host_name().to_string(),
        ssh: host.settings().ssh.to_string(),
        outcome,
    };
    if let Err(error) = host.ping().await {
        return report(Err(error));
    }
    let mut services = Vec::new();
    for service in settings.services.iter().filter(|service| {
        service
            .backends
            .iter()
            .any(|backend| backend.host.as_ref() == Some(host.host_name()))
    }) {
        let state_dir = host.settings().state_dir.join(service.name.as_str());
        let program = match &service.runtime.kind {
            RuntimeKind::Process { command, .. } => command.first().map(String::as_str),
            RuntimeKind::Command { .. } => None,
        };
        let (facts, problems) = match remote::check(host, &state_dir, program).await {
            Err(error) => (Vec::new(), vec![error.to_string()]),
            Ok(check) => {
                let mut facts = Vec::new();
                if let Ok(dir) = &check.state_dir {
                    facts.push(format!("state dir {dir} writable"));
                }
                if let (Some(program), Some(Ok(found))) = (program, &check.program) {
                    facts.push(format!("command {program} found at {found}"));
                }
                (facts, check.problems())
            }
        };
        services.push(ServiceCheck {
            service: service.name.to_string(),
            facts,
            problems,
        });
    }
    report(Ok(services))
}
