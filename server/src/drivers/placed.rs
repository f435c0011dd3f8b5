//! A service whose backends run in several places: this machine and `[[host]]`s.
//!
//! Each place has its own runtime (the local process or command runtime, or a remote one over
//! that host's connection); [`PlacedRuntime`] sends each backend's operations to its place's
//! runtime, and runs `prepare` once per place, on every place of the service at once, so a
//! rollout stages its version everywhere before it drains anything. A place that cannot prepare
//! (a host that cannot be reached, a failing `prepare`) fails the whole prepare, naming every
//! place that failed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::{BackendRun, BackendSpec, LogTail, Runtime, RuntimeError};
use crate::domain::{BackendName, HostName, Version};

/// Where a backend runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Place {
    /// Baton's own machine.
    Local,
    Host(HostName),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str(super::shell::THIS_MACHINE),
            Self::Host(name) => write!(f, "host {name}"),
        }
    }
}

/// A runtime per place, and which place each backend is in.
pub struct PlacedRuntime {
    places: Vec<(Place, Arc<dyn Runtime>)>,
    /// Index into `places`, by backend.
    backends: HashMap<BackendName, usize>,
}

impl PlacedRuntime {
    /// `places` holds each place's runtime once; `backends` says where each backend runs.
    ///
    /// # Panics
    /// If a backend names a place that `places` does not have (the settings check that every
    /// backend's host exists).
    pub fn new(
        places: Vec<(Place, Arc<dyn Runtime>)>,
        backends: impl IntoIterator<Item = (BackendName, Place)>,
    ) -> Self {
        let backends = backends
            .into_iter()
            .map(|(backend, place)| {
                let index = places
                    .iter()
                    .position(|(p, _)| *p == place)
                    .unwrap_or_else(|| panic!("no runtime for {place}, where {backend} runs"));
                (backend, index)
            })
            .collect();
        Self { places, backends }
    }

    fn runtime(&self, backend: &BackendSpec) -> Result<&dyn Runtime, RuntimeError> {
        self.backends
            .get(&backend.name)
            .map(|&index| &*self.places[index].1)
            .ok_or_else(|| {
                RuntimeError::Other(format!("{} is not a backend of this service", backend.name))
            })
    }
}

#[async_trait]
impl Runtime for PlacedRuntime {
    /// Prepares every place at once; fails if any place fails, naming each.
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        let results = futures::future::join_all(
            self.places
                .iter()
                .map(|(place, runtime)| async move { (place, runtime.prepare(version).await) }),
        )
        .await;
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(place, result)| {
                result.err().map(|error| match error {
                    RuntimeError::Prepare { reason, .. } => format!("on {place}: {reason}"),
                    other => format!("on {place}: {other}"),
                })
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Prepare {
                version: version.to_string(),
                reason: failures.join("; "),
            })
        }
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        self.runtime(backend)?.start(backend, version).await
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        self.runtime(backend)?.stop(backend).await
    }

    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        self.runtime(backend)?.status(backend).await
    }

    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        self.runtime(backend)?.log_tail(backend, lines).await
    }
}

/// A runtime whose `prepare` is another's: the process runtime on this machine with the
/// `prepare` command run as the command runtime runs it.
pub struct WithPrepare {
    pub prepare: Arc<dyn Runtime>,
    pub runtime: Arc<dyn Runtime>,
}

#[async_trait]
impl Runtime for WithPrepare {
    async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
        self.prepare.prepare(version).await?;
        self.runtime.prepare(version).await
    }

    async fn start(&self, backend: &BackendSpec, version: &Version) -> Result<(), RuntimeError> {
        self.runtime.start(backend, version).await
    }

    async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
        self.runtime.stop(backend).await
    }

    async fn status(&self, backend: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        self.runtime.status(backend).await
    }

    async fn log_tail(
        &self,
        backend: &BackendSpec,
        lines: usize,
    ) -> Result<Option<LogTail>, RuntimeError> {
        self.runtime.log_tail(backend, lines).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{BackendAddr, ServiceName};

    /// A runtime that records what it was asked and fails `prepare` when told to.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        failing_prepare: Option<&'static str>,
        gate: Option<Arc<tokio::sync::Barrier>>,
    }

    #[async_trait]
    impl Runtime for Recorder {
        async fn prepare(&self, version: &Version) -> Result<(), RuntimeError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("prepare {version}"));
            if let Some(gate) = &self.gate {
                // Every place must be preparing at once for all of them to pass.
                gate.wait().await;
            }
            match self.failing_prepare {
                Some(reason) => Err(RuntimeError::Prepare {
                    version: version.to_string(),
                    reason: reason.into(),
                }),
                None => Ok(()),
            }
        }
        async fn start(
            &self,
            backend: &BackendSpec,
            version: &Version,
        ) -> Result<(), RuntimeError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("start {} {version}", backend.name));
            Ok(())
        }
        async fn stop(&self, backend: &BackendSpec) -> Result<(), RuntimeError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("stop {}", backend.name));
            Ok(())
        }
        async fn status(&self, _: &BackendSpec) -> Result<BackendRun, RuntimeError> {
            Ok(BackendRun::Stopped { exit: None })
        }
    }

    fn host(name: &str) -> Place {
        Place::Host(HostName::parse(name).unwrap())
    }

    fn spec(name: &str) -> BackendSpec {
        BackendSpec {
            service: ServiceName::parse("web").unwrap(),
            name: BackendName::parse(name).unwrap(),
            address: BackendAddr::parse("127.0.0.1:18001").unwrap(),
            slot: crate::domain::Slot::Address,
        }
    }

    fn placed(runtimes: &[(Place, Arc<Recorder>)], backends: &[(&str, Place)]) -> PlacedRuntime {
        PlacedRuntime::new(
            runtimes
                .iter()
                .map(|(place, r)| (place.clone(), r.clone() as Arc<dyn Runtime>))
                .collect(),
            backends
                .iter()
                .map(|(name, place)| (BackendName::parse(name).unwrap(), place.clone())),
        )
    }

    #[tokio::test]
    async fn each_backend_goes_to_its_place_and_prepare_runs_once_per_place_all_at_once() {
        let gate = Arc::new(tokio::sync::Barrier::new(3));
        let recorder = || {
            Arc::new(Recorder {
                gate: Some(gate.clone()),
                ..Recorder::default()
            })
        };
        let (local, app1, app2) = (recorder(), recorder(), recorder());
        let runtime = placed(
            &[
                (Place::Local, local.clone()),
                (host("app1"), app1.clone()),
                (host("app2"), app2.clone()),
            ],
            &[
                ("web1", Place::Local),
                ("web2", host("app1")),
                ("web3", host("app1")),
                ("web4", host("app2")),
            ],
        );
        let v2 = Version::parse("v2").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), runtime.prepare(&v2))
            .await
            .expect("the places prepare at the same time, not one after the other")
            .unwrap();
        runtime.start(&spec("web3"), &v2).await.unwrap();
        runtime.stop(&spec("web4")).await.unwrap();
        runtime.start(&spec("web1"), &v2).await.unwrap();
        assert_eq!(
            *local.calls.lock().unwrap(),
            ["prepare v2", "start web1 v2"]
        );
        assert_eq!(*app1.calls.lock().unwrap(), ["prepare v2", "start web3 v2"]);
        assert_eq!(*app2.calls.lock().unwrap(), ["prepare v2", "stop web4"]);
        assert!(runtime.stop(&spec("web9")).await.is_err());
    }

    #[tokio::test]
    async fn a_place_that_cannot_prepare_fails_the_prepare_naming_it() {
        let ok = Arc::new(Recorder::default());
        let down = Arc::new(Recorder {
            failing_prepare: Some("host app2 is unreachable: Connection timed out"),
            ..Recorder::default()
        });
        let runtime = placed(
            &[(host("app1"), ok), (host("app2"), down)],
            &[("web1", host("app1")), ("web2", host("app2"))],
        );
        let error = runtime
            .prepare(&Version::parse("v2").unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "prepare for version v2 failed: on host app2: host app2 is unreachable: Connection timed out"
        );
    }
}
