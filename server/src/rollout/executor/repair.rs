//! Repairs: bringing backends back to their recorded version after their host was out of reach.
//!
//! When a host's network is cut in the middle of a rollout, the steps on its backends fail and
//! the rollback cannot reach them either, so they stay out of rotation with whatever the cut
//! left running there. When the host answers again, the fleet asks the service's worker to
//! repair its backends there. The worker does it between rollouts (never beside one, so the two
//! never act on the same backend): each backend runs its recorded version again (the running
//! process is adopted when it is that version; otherwise what runs is stopped and the recorded
//! version started), passes Baton's health check, and, if Baton's own rollout left it out of
//! rotation, passes HAProxy's check and is put back in rotation.

use std::collections::{BTreeSet, HashMap};

use super::*;

/// Backends waiting for a repair by the service's worker.
#[derive(Clone, Default)]
pub struct Repairs(Arc<std::sync::Mutex<BTreeSet<BackendName>>>);

impl Repairs {
    /// Asks for `backends` to be repaired; the worker must be woken to see it.
    pub fn request(&self, backends: impl IntoIterator<Item = BackendName>) {
        self.0.lock().expect("repairs lock").extend(backends);
    }

    fn take(&self) -> BTreeSet<BackendName> {
        std::mem::take(&mut *self.0.lock().expect("repairs lock"))
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("repairs lock").is_empty()
    }
}

impl ServiceRunner {
    /// Repairs the backends asked for, all at once. One that cannot be repaired now (its host
    /// went away again) is asked for again the next time its host comes back.
    pub(super) async fn repair_requested(&self) -> Result<(), StoreError> {
        let backends = self.repairs.take();
        if backends.is_empty() {
            return Ok(());
        }
        let recorded: HashMap<String, String> = self
            .store
            .backend_versions(self.service.name.as_str())
            .await?
            .into_iter()
            .collect();
        let left_out = self.left_out().await?;
        let results = join_all(backends.iter().map(|name| {
            let version = recorded
                .get(name.as_str())
                .and_then(|v| Version::parse(v).ok())
                .unwrap_or_else(|| self.service.runtime.initial_version.clone());
            let left_out = left_out.contains(name);
            async move { (name, self.repair(name, &version, left_out).await) }
        }))
        .await;
        for (name, result) in results {
            match result {
                Ok(what) => {
                    tracing::info!(service = %self.service.name, backend = %name, "{what}");
                }
                Err(error) => {
                    tracing::warn!(service = %self.service.name, backend = %name, %error, "cannot repair the backend yet");
                }
            }
        }
        Ok(())
    }

    /// The backends the service's newest rollout could not put back: they stay out of rotation
    /// until an operator, or a repair, puts them back.
    async fn left_out(&self) -> Result<HashSet<BackendName>, StoreError> {
        let Some(row) = self
            .store
            .newest_deployment(self.service.name.as_str())
            .await?
        else {
            return Ok(HashSet::new());
        };
        let rollout = row
            .state
            .as_deref()
            .and_then(|state| serde_json::from_str::<Rollout>(state).ok());
        Ok(match rollout.map(|rollout| rollout.phase) {
            Some(Phase::Finished {
                outcome: Outcome::Failed { problems, .. },
            }) => problems
                .into_iter()
                .filter_map(|problem| problem.backend)
                .collect(),
            _ => HashSet::new(),
        })
    }

    /// Brings `name` to `version` and, if `left_out`, back into rotation. Says what it did.
    async fn repair(
        &self,
        name: &BackendName,
        version: &Version,
        left_out: bool,
    ) -> Result<String, String> {
        let spec = self.spec(name);
        let mut did = match self.runtime.status(&spec).await {
            Ok(BackendRun::Running {
                version: running, ..
            }) if running == *version => format!("adopted version {version}, which still runs"),
            Ok(BackendRun::Running {
                version: running, ..
            }) => {
                self.runtime
                    .stop(&spec)
                    .await
                    .map_err(|error| error.to_string())?;
                self.start_recorded(&spec, version).await?;
                format!("stopped version {running} and started the recorded version {version}")
            }
            Ok(BackendRun::Stopped { .. }) => {
                self.start_recorded(&spec, version).await?;
                format!("started the recorded version {version}")
            }
            // A runtime that cannot see its processes (the command runtime after a restart of
            // Baton): starting the recorded version is what it would do at Baton's start.
            Err(error) => {
                self.start_recorded(&spec, version).await?;
                format!("started the recorded version {version} ({error})")
            }
        };
        self.wait_one_healthy(name)
            .await
            .map_err(|(_, reason)| reason)?;
        if left_out {
            let backends = std::slice::from_ref(name);
            let lb = &*self.lb;
            self.lb_check(lb, backends).await.map_err(|(_, r)| r)?;
            self.set_state(lb, backends, AdminState::Ready)
                .await
                .map_err(|(_, r)| r)?;
            self.confirm_up(lb, backends).await.map_err(|(_, r)| r)?;
            did.push_str(", and put it back in rotation");
        }
        Ok(format!("repaired after its host came back: {did}"))
    }

    async fn start_recorded(&self, spec: &BackendSpec, version: &Version) -> Result<(), String> {
        self.runtime
            .start(spec, version)
            .await
            .map_err(|error| error.to_string())?;
        self.store
            .set_backend_version(
                self.service.name.as_str(),
                spec.name.as_str(),
                version.as_str(),
            )
            .await
            .map_err(|error| error.to_string())
    }
}
