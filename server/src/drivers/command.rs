//! The command runtime: the user's own shell commands prepare, start and stop backends.
//!
//! Invariant: values from outside (versions, names) reach the commands only as environment
//! variables (`BATON_VERSION`, `BATON_BACKEND`, `BATON_PORT`, `BATON_SERVICE`), never pasted into
//! the shell text, which comes from the configuration file alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;

use super::{BackendRun, BackendSpec, Runtime, RuntimeError};
use crate::domain::Version;
use crate::settings::{RuntimeKind, ServiceSettings};

pub struct CommandRuntime {
    prepare: Option<String>,
    start: String,
    stop: String,
    env: BTreeMap<String, String>,
    service: String,
    /// Each command's time limit (the configured stop timeout, at least a minute for prepare).
    timeout: Duration,
    working_dir: PathBuf,
    /// What this Baton started, by backend; a command runtime cannot see processes itself.
    started: Mutex<BTreeMap<String, Version>>,
}

impl CommandRuntime {
    /// # Panics
    /// If `service`'s runtime is not of kind `command` (settings guarantee which it is).
    pub fn new(service: &ServiceSettings, working_dir: PathBuf) -> Self {
        let RuntimeKind::Command {
            prepare,
            start,
            stop,
        } = &service.runtime.kind
        else {
            panic!("CommandRuntime needs a service with runtime kind = \"command\"");
        };
        Self {
            prepare: prepare.clone(),
            start: start.clone(),
            stop: stop.clone(),
            env: service.runtime.env.clone(),
            service: service.name.to_string(),
            timeout: service.runtime.stop_timeout.get(),
            working_dir,
            started: Mutex::new(BTreeMap::new()),
        }
    }

    async fn run(
        &self,
        script: &str,
        env: &[(&str, String)],
        limit: Duration,
    ) -> Result<(), String> {
        std::fs::create_dir_all(&self.working_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.working_dir.display()))?;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .current_dir(&self.working_dir)
            .env_clear()
            .envs(&self.env)
            .env("BATON_SERVICE", &self.service)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| format!("`{script}` did not finish within {limit:?}"))?
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr
                .trim()
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(format!("`{script}` ended with {}: {tail}", output.status))
        }
    }

    fn backend_env(
        backend: &BackendSpec,
        version: Option<&Version>,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("BATON_BACKEND", backend.name.to_string()),
            ("BATON_PORT", backend.address.port().to_string()),
        ];
        if let Some(version) = version {
            env.push(("BATON_VERSION", version.to_string()));
        }
        env
    }
}

#[async_trait]
impl Runtime for CommandRuntime {
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        let Some(script) = &self.prepare else {
            return Ok(());
        };
        self.run(
            script,
            &[("BATON_VERSION", version.to_string())],
            self.timeout.max(Duration::from_secs(60)),
        )
        .await
        .map_err(|reason| RuntimeError::Prepare {
            version: version.to_string(),
            reason,
        })
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        self.run(
            &self.start,
            &Self::backend_env(backend, Some(version)),
            self.timeout,
        )
        .await
        .map_err(|reason| RuntimeError::Start {
            backend: backend.name.to_string(),
            reason,
        })?;
        self.started
            .lock()
            .expect("not poisoned")
            .insert(backend.name.to_string(), version.clone());
        Ok(())
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        let version = self
            .started
            .lock()
            .expect("not poisoned")
            .get(backend.name.as_str())
            .cloned();
        self.run(
            &self.stop,
            &Self::backend_env(backend, version.as_ref()),
            self.timeout,
        )
        .await
        .map_err(|reason| RuntimeError::Stop {
            backend: backend.name.to_string(),
            reason,
        })?;
        self.started
            .lock()
            .expect("not poisoned")
            .remove(backend.name.as_str());
        Ok(())
    }

    /// A command runtime cannot see the processes: it reports what it last started, and
    /// otherwise assumes the backend runs (its health check tells the truth).
    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        let version = self
            .started
            .lock()
            .expect("not poisoned")
            .get(backend.name.as_str())
            .cloned();
        match version {
            Some(version) => Ok(BackendRun::Running { version, pid: None }),
            None => Err(RuntimeError::Other(
                "the command runtime does not know what runs on this backend".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{EnvOverrides, Settings};

    /// A configuration of one service `api` with one backend `s1` and this `[service.runtime]`
    /// body (after `kind = "command"`).
    fn config(runtime: &str) -> String {
        format!(
            r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:/x"]
[[service]]
name = "api"
load_balancer = "edge"
[service.runtime]
kind = "command"
initial_version = "v1"
{runtime}
[[service.backend]]
name = "s1"
address = "127.0.0.1:18001"
"#
        )
    }

    fn runtime(dir: &std::path::Path) -> CommandRuntime {
        let text = config(&format!(
            r#"prepare = 'echo "prepared $BATON_VERSION" >> {log}'
start = 'printf "%s\n" "start $BATON_BACKEND $BATON_PORT $BATON_VERSION" >> {log}'
stop = 'echo "stop $BATON_BACKEND" >> {log}; test "$BATON_BACKEND" != s2 || {{ echo nope >&2; exit 4; }}'"#,
            log = dir.join("log").display()
        ));
        let settings =
            Settings::parse(&text, &dir.join("baton.toml"), &EnvOverrides::default()).unwrap();
        CommandRuntime::new(&settings.services[0], dir.join("work"))
    }

    fn spec(name: &str) -> BackendSpec {
        BackendSpec {
            service: crate::domain::ServiceName::parse("api").unwrap(),
            name: crate::domain::BackendName::parse(name).unwrap(),
            address: crate::domain::BackendAddr::parse("127.0.0.1:18001").unwrap(),
        }
    }

    #[tokio::test]
    async fn commands_see_values_only_through_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let version = Version::parse("v2.1").unwrap();
        runtime.prepare(&version).await.unwrap();
        runtime.start(&spec("s1"), &version).await.unwrap();
        assert!(
            matches!(runtime.status(&spec("s1")).await.unwrap(), BackendRun::Running { version: v, .. } if v.as_str() == "v2.1")
        );
        runtime.stop(&spec("s1")).await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "prepared v2.1\nstart s1 18001 v2.1\nstop s1\n");
    }

    #[tokio::test]
    async fn commands_get_only_the_environment_the_settings_give() {
        // Cargo sets this for every test process: it stands for whatever Baton's own
        // environment holds (its token, webhook secrets) that no backend should see.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let text = config(&format!(
            r#"start = 'env | sort > {out}'
stop = 'true'
pass_env = ["SHARED_CACHE"]
env = {{ APP_MODE = "prod" }}"#,
            out = out.display()
        ));
        let baton_env = |name: &str| match name {
            "PATH" => Some("/usr/bin:/bin".to_owned()),
            "SHARED_CACHE" => Some("/var/cache/x".to_owned()),
            "API_WEBHOOK_SECRET" => Some("hush".to_owned()),
            _ => None,
        };
        let settings = Settings::parse_with_secrets(
            &text,
            &dir.path().join("baton.toml"),
            &EnvOverrides::default(),
            &baton_env,
        )
        .unwrap();
        let runtime = CommandRuntime::new(&settings.services[0], dir.path().join("work"));
        runtime
            .start(&spec("s1"), &Version::parse("v2").unwrap())
            .await
            .unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        let names: Vec<&str> = env
            .lines()
            .filter_map(|line| line.split('=').next())
            .filter(|name| !["PWD", "SHLVL", "_"].contains(name))
            .collect();
        assert_eq!(
            names,
            [
                "APP_MODE",
                "BATON_BACKEND",
                "BATON_PORT",
                "BATON_SERVICE",
                "BATON_VERSION",
                "PATH",
                "SHARED_CACHE"
            ],
            "{env}"
        );
        assert!(env.contains("SHARED_CACHE=/var/cache/x\n"), "{env}");
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let error = runtime(dir.path())
            .stop(&spec("s2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot stop s2"), "{error}");
        assert!(
            error.contains("exit status: 4") && error.contains("nope"),
            "{error}"
        );
    }
}
