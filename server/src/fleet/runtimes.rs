//! Each service's runtime, built from the settings: one per place its backends run in (this
//! machine, or a `[[host]]` over its OpenSSH connection).

use std::sync::Arc;

use crate::drivers::Runtime;
use crate::drivers::command::CommandRuntime;
use crate::drivers::placed::{Place, PlacedRuntime, WithPrepare};
use crate::drivers::process::{ProcessConfig, ProcessRuntime};
use crate::drivers::remote::{
    RemoteCommandConfig, RemoteCommandRuntime, RemoteProcessConfig, RemoteProcessRuntime,
};
use crate::hosts::{Host, Hosts};
use crate::settings::{RuntimeKind, ServiceSettings, Settings};

/// The runtime of `service`: its kind's runtime on this machine when every backend runs here,
/// else a [`PlacedRuntime`] with one runtime per place.
pub fn runtime_for(
    service: &ServiceSettings,
    settings: &Settings,
    hosts: &Hosts,
) -> Arc<dyn Runtime> {
    let place_of = |host: &Option<crate::domain::HostName>| match host {
        None => Place::Local,
        Some(name) => Place::Host(name.clone()),
    };
    let mut places: Vec<Place> = Vec::new();
    for backend in &service.backends {
        let place = place_of(&backend.host);
        if !places.contains(&place) {
            places.push(place);
        }
    }
    if places == [Place::Local] {
        return local(service, settings);
    }
    let runtimes = places
        .into_iter()
        .map(|place| {
            let runtime = match &place {
                Place::Local => local(service, settings),
                Place::Host(name) => {
                    let host = hosts
                        .get(name)
                        .expect("settings check that every backend's host exists");
                    remote(service, host)
                }
            };
            (place, runtime)
        })
        .collect();
    Arc::new(PlacedRuntime::new(
        runtimes,
        service
            .backends
            .iter()
            .map(|backend| (backend.name.clone(), place_of(&backend.host))),
    ))
}

/// The runtime for the service's backends on this machine.
fn local(service: &ServiceSettings, settings: &Settings) -> Arc<dyn Runtime> {
    let state_dir = settings.server.state_dir.join(service.name.as_str());
    match &service.runtime.kind {
        RuntimeKind::Process {
            command,
            stop_signal,
            working_dir,
            prepare,
        } => {
            let runtime = Arc::new(ProcessRuntime::new(ProcessConfig {
                command: command.clone(),
                env: service.runtime.env.clone(),
                working_dir: working_dir.clone(),
                stop_signal: *stop_signal,
                stop_timeout: service.runtime.stop_timeout.get(),
                state_dir: state_dir.clone(),
            }));
            match prepare {
                None => runtime,
                Some(prepare) => Arc::new(WithPrepare {
                    prepare: Arc::new(CommandRuntime::for_prepare(
                        service,
                        state_dir,
                        prepare.clone(),
                    )),
                    runtime,
                }),
            }
        }
        RuntimeKind::Command { .. } => Arc::new(CommandRuntime::new(service, state_dir)),
    }
}

/// The runtime for the service's backends on `host`: its records and logs under the host's
/// state directory, one folder per service.
fn remote(service: &ServiceSettings, host: &Arc<Host>) -> Arc<dyn Runtime> {
    let state_dir = host.settings().state_dir.join(service.name.as_str());
    let runtime = &service.runtime;
    match &runtime.kind {
        RuntimeKind::Process {
            command,
            stop_signal,
            working_dir,
            prepare,
        } => Arc::new(RemoteProcessRuntime::new(
            host.clone(),
            RemoteProcessConfig {
                command: command.clone(),
                env: runtime.explicit_env.clone(),
                working_dir: working_dir.clone(),
                stop_signal: *stop_signal,
                stop_timeout: runtime.stop_timeout.get(),
                state_dir,
                prepare: prepare.clone(),
                service: service.name.clone(),
            },
        )),
        RuntimeKind::Command {
            prepare,
            start,
            stop,
        } => {
            Arc::new(RemoteCommandRuntime::new(
                host.clone(),
                RemoteCommandConfig {
                    prepare: prepare.clone(),
                    start: start.clone(),
                    stop: stop.clone(),
                    env: runtime.explicit_env.clone(),
                    // Put in masking order by the runtime.
                    secrets: runtime.explicit_env.values().cloned().collect(),
                    service: service.name.clone(),
                    timeout: runtime.stop_timeout.get(),
                    state_dir,
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::domain::Version;
    use crate::settings::EnvOverrides;

    #[tokio::test]
    async fn a_process_runtime_on_this_machine_runs_its_prepare_before_a_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let config = r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "web"
load_balancer = "edge"
[service.runtime]
kind = "process"
command = ["true"]
prepare = 'echo "$BATON_SERVICE $BATON_VERSION" > staged; [ "$BATON_VERSION" != v3 ] || exit 5'
initial_version = "v1"
[[service.backend]]
name = "web1"
address = "127.0.0.1:18001"
"#;
        let settings = Settings::parse(
            config,
            &dir.path().join("baton.toml"),
            &EnvOverrides::default(),
        )
        .unwrap();
        let runtime = runtime_for(
            &settings.services[0],
            &settings,
            &Hosts::new(&[], Path::new("/nonexistent")),
        );
        runtime
            .prepare(&Version::parse("v2").unwrap())
            .await
            .unwrap();
        let staged = dir.path().join("state/web/staged");
        assert_eq!(std::fs::read_to_string(staged).unwrap(), "web v2\n");
        let error = runtime
            .prepare(&Version::parse("v3").unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "prepare for version v3 failed: prepare exited with status 5, with nothing on stderr"
        );
    }
}
