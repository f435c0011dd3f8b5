//! The surge strategy's steps: the new version starts beside the old one, on the backend's
//! other address, and is an HAProxy server of its own (a dynamic one, `add server`) in rotation
//! and UP before the old instance is drained, kept for the overlap, stopped and removed.
//!
//! Each step acts on two instances of a backend: the one the action *leaves* (`Action::slots`)
//! and the one *arriving* on the other address. Going forward the leaving one is the old
//! version; in a rollback it is the instance the rollout started (the engine says which), so
//! the same code surges a backend back. The switch from one to the other is recorded in the
//! journal (version and address together) once the arriving instance is UP, never before: a
//! restarted Baton adopts whichever is recorded.

use super::*;
use crate::settings::BackendSettings;

/// How long a retiring server may keep connections HAProxy will not let it be deleted with.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle surge service's worker checks that HAProxy still has each backend's
/// current server (see [`ServiceRunner::restore_forgotten`]).
pub(super) const RESTORE_EVERY: Duration = Duration::from_secs(1);

/// One instance of a backend: the process on one of its addresses, and its HAProxy server.
struct Instance {
    name: BackendName,
    slot: Slot,
    spec: BackendSpec,
    server: String,
}

impl ServiceRunner {
    fn instance(&self, backend: &BackendSettings, slot: Slot) -> Instance {
        Instance {
            name: backend.name.clone(),
            slot,
            spec: BackendSpec::of(&self.service.name, backend, slot),
            server: backend.haproxy_server(slot),
        }
    }

    /// Carries out one step of a surge (forward or back).
    pub(super) async fn carry_out_surge(
        &self,
        lb: &dyn LoadBalancer,
        action: &Action,
    ) -> (Event, Option<String>) {
        let (leaving, arriving): (Vec<Instance>, Vec<Instance>) = action
            .backends
            .iter()
            .zip(&action.slots)
            .map(|(name, slot)| {
                let backend = self.backend(name);
                (
                    self.instance(backend, *slot),
                    self.instance(backend, slot.other()),
                )
            })
            .unzip();
        let servers = |instances: &[Instance]| -> HashSet<String> {
            instances.iter().map(|i| i.server.clone()).collect()
        };
        let result = match action.step {
            Step::Prepare => self
                .runtime
                .prepare(&action.version)
                .await
                .map_err(|e| (None, e.to_string()))
                .map(|()| None),
            Step::CheckCapacity => self.check_surge(lb, &leaving).await.map(|()| None),
            Step::SurgeStart => self
                .start_beside(&arriving, &action.version)
                .await
                .map(|()| None),
            Step::SurgeHealthy => {
                let results = join_all(
                    arriving
                        .iter()
                        .map(|new| self.wait_instance_healthy(&new.name, &new.spec)),
                )
                .await;
                results
                    .into_iter()
                    .collect::<Result<(), _>>()
                    .map(|()| None)
            }
            Step::SurgeAdd => self.add(lb, &leaving, &arriving).await.map(|()| None),
            Step::SurgeEnable => self
                .switch(lb, &arriving, &action.version)
                .await
                .map(|()| None),
            Step::Drain => self
                .set_servers(lb, &leaving, AdminState::Drain)
                .await
                .map(|()| None),
            Step::WaitSessions => {
                let names = servers(&leaving);
                match self
                    .wait_servers_idle(lb, names.iter().map(String::as_str).collect())
                    .await
                {
                    Ok(Some(open_sessions)) => {
                        return (Event::DrainTimedOut { open_sessions }, None);
                    }
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                }
            }
            Step::CutSessions => self.cut(lb, &leaving).await.map(Some),
            Step::Overlap => {
                // Persisted before it began: a restarted Baton waits the whole overlap again,
                // which keeps the old instance longer, never shorter.
                let overlap = self.service.strategy.overlap;
                sleep(overlap.get()).await;
                Ok(Some(format!(
                    "kept the old instance, drained, for {overlap}"
                )))
            }
            Step::Retire => self.retire(lb, &leaving).await.map(|()| None),
            Step::Discard => self
                .discard(lb, &leaving, &action.version)
                .await
                .map(|()| None),
            Step::Maint
            | Step::Stop
            | Step::Start
            | Step::WaitHealthy
            | Step::LbCheck
            | Step::Enable
            | Step::ConfirmUp
            // Carried out by `carry_out`, for either strategy.
            | Step::Soak => Err((
                None,
                format!(
                    "{} is a step of a rolling rollout, and this rollout is a surge",
                    action.step.as_str()
                ),
            )),
        };
        match result {
            Ok(detail) => (Event::Done, detail),
            Err((backend, reason)) => (Event::Failed { backend, reason }, None),
        }
    }

    /// Every node has the leaving servers (so the arriving ones can copy their check
    /// settings) checked with `fall` 2 or more. Nothing leaves rotation before its successor
    /// is UP, so unlike a rolling rollout no other backend needs to be UP.
    async fn check_surge(
        &self,
        lb: &dyn LoadBalancer,
        leaving: &[Instance],
    ) -> Result<(), (Option<BackendName>, String)> {
        let servers = self.servers(lb).await?;
        let nodes: HashSet<&str> = servers.iter().map(|s| s.node.as_str()).collect();
        for old in leaving {
            for node in &nodes {
                let Some(found) = servers
                    .iter()
                    .find(|s| s.node == *node && s.server == old.server)
                else {
                    return Err((
                        Some(old.name.clone()),
                        format!(
                            "HAProxy node {node} has no server {}/{} for {}'s instance on {} ({}): check haproxy_backend and the backend names",
                            self.service.haproxy_backend,
                            old.server,
                            old.name,
                            old.slot.as_str(),
                            old.spec.address
                        ),
                    ));
                };
                if found.fall == Some(1) {
                    return Err((
                        Some(old.name.clone()),
                        format!(
                            "HAProxy node {node} checks {}/{} with `fall 1`, so a stale check cannot be told from a fresh one; set `fall 2` or more (the surge server copies it)",
                            self.service.haproxy_backend, old.server
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn start_beside(
        &self,
        arriving: &[Instance],
        version: &Version,
    ) -> Result<(), (Option<BackendName>, String)> {
        let results = join_all(arriving.iter().map(|new| async move {
            self.runtime
                .start(&new.spec, version)
                .await
                .map_err(|e| (Some(new.name.clone()), e.to_string()))
        }))
        .await;
        results.into_iter().collect()
    }

    /// Adds each arriving server (with the leaving one's check settings), drained, and waits
    /// for HAProxy's own check to pass on it without traffic.
    async fn add(
        &self,
        lb: &dyn LoadBalancer,
        leaving: &[Instance],
        arriving: &[Instance],
    ) -> Result<(), (Option<BackendName>, String)> {
        for (old, new) in leaving.iter().zip(arriving) {
            lb.add_server(
                &self.service.haproxy_backend,
                &new.server,
                new.spec.address,
                &old.server,
                self.service.strategy.check_inter.get(),
            )
            .await
            .map_err(|e| (Some(new.name.clone()), e.to_string()))?;
        }
        self.set_servers(lb, arriving, AdminState::Drain).await?;
        self.wait_lb_check(lb, arriving.iter().map(|i| i.server.as_str()).collect())
            .await
    }

    /// Puts the arriving servers in rotation, waits until every node reports them UP, and only
    /// then records each as its backend's current instance.
    async fn switch(
        &self,
        lb: &dyn LoadBalancer,
        arriving: &[Instance],
        version: &Version,
    ) -> Result<(), (Option<BackendName>, String)> {
        self.set_servers(lb, arriving, AdminState::Ready).await?;
        self.wait_up(lb, arriving.iter().map(|i| i.server.as_str()).collect())
            .await?;
        for new in arriving {
            self.store
                .set_backend_current(
                    self.service.name.as_str(),
                    new.name.as_str(),
                    version.as_str(),
                    new.slot,
                )
                .await
                .map_err(|e| (Some(new.name.clone()), e.to_string()))?;
        }
        Ok(())
    }

    async fn set_servers(
        &self,
        lb: &dyn LoadBalancer,
        instances: &[Instance],
        state: AdminState,
    ) -> Result<(), (Option<BackendName>, String)> {
        for instance in instances {
            lb.set_state(&self.service.haproxy_backend, &instance.server, state)
                .await
                .map_err(|e| (Some(instance.name.clone()), e.to_string()))?;
        }
        Ok(())
    }

    async fn cut(
        &self,
        lb: &dyn LoadBalancer,
        leaving: &[Instance],
    ) -> Result<String, (Option<BackendName>, String)> {
        let mut cut = 0;
        for old in leaving {
            cut += lb
                .shutdown_sessions(&self.service.haproxy_backend, &old.server)
                .await
                .map_err(|e| (Some(old.name.clone()), e.to_string()))?;
        }
        Ok(format!(
            "cut {cut} session(s) still open after the drain timeout of {}",
            self.service.drain.timeout
        ))
    }

    /// Stops the leaving processes, then removes their servers.
    async fn retire(
        &self,
        lb: &dyn LoadBalancer,
        leaving: &[Instance],
    ) -> Result<(), (Option<BackendName>, String)> {
        self.stop_instances(leaving).await?;
        self.remove(lb, leaving).await
    }

    /// Takes instances that never became current out of HAProxy and stops them; their
    /// backends' current instance (the other one, running `version`) is recorded again.
    async fn discard(
        &self,
        lb: &dyn LoadBalancer,
        leaving: &[Instance],
        version: &Version,
    ) -> Result<(), (Option<BackendName>, String)> {
        self.remove(lb, leaving).await?;
        self.stop_instances(leaving).await?;
        for new in leaving {
            self.store
                .set_backend_current(
                    self.service.name.as_str(),
                    new.name.as_str(),
                    version.as_str(),
                    new.slot.other(),
                )
                .await
                .map_err(|e| (Some(new.name.clone()), e.to_string()))?;
        }
        Ok(())
    }

    async fn stop_instances(
        &self,
        instances: &[Instance],
    ) -> Result<(), (Option<BackendName>, String)> {
        let results = join_all(instances.iter().map(|instance| async move {
            self.runtime
                .stop(&instance.spec)
                .await
                .map_err(|e| (Some(instance.name.clone()), e.to_string()))
        }))
        .await;
        results.into_iter().collect()
    }

    /// Removes the servers, asking again while HAProxy refuses because connections are still
    /// attached to one (idle keep-alive connections close shortly after maint).
    async fn remove(
        &self,
        lb: &dyn LoadBalancer,
        instances: &[Instance],
    ) -> Result<(), (Option<BackendName>, String)> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        for instance in instances {
            loop {
                match lb
                    .remove_server(&self.service.haproxy_backend, &instance.server)
                    .await
                {
                    Ok(()) => break,
                    Err(LbError::Refused { .. }) if Instant::now() < deadline => {
                        sleep(POLL * 10).await;
                    }
                    Err(error) => return Err((Some(instance.name.clone()), error.to_string())),
                }
            }
        }
        Ok(())
    }

    /// HAProxy forgets the servers Baton added (`add server`) when it reloads or restarts: a
    /// backend a surge left on its surge address then has only its configured server, at the
    /// address nothing listens on any more (DOWN). Between rollouts the worker puts the current
    /// instance's server back wherever a node lacks it, as a surge adds one (the configured
    /// server's check settings, drained until HAProxy's own check passes), in rotation and UP
    /// on every node, then takes the configured one out (maint, removed), as the surge did.
    /// Says what it restored; a backend it cannot restore now is tried again next time.
    pub(super) async fn restore_forgotten(&self) -> Result<Vec<String>, StoreError> {
        let slots: HashMap<String, Slot> = self
            .store
            .backend_slots(self.service.name.as_str())
            .await?
            .into_iter()
            .collect();
        let lb = &*self.lb;
        let Ok(servers) = self.servers(lb).await else {
            // HAProxy not answering is for the next rollout's checks to report.
            return Ok(Vec::new());
        };
        let nodes: HashSet<&str> = servers.iter().map(|s| s.node.as_str()).collect();
        let mut restored = Vec::new();
        for backend in &self.service.backends {
            let slot = slots
                .get(backend.name.as_str())
                .copied()
                .unwrap_or_default();
            let current = self.instance(backend, slot);
            let forgotten = nodes.iter().any(|node| {
                !servers
                    .iter()
                    .any(|s| s.node == *node && s.server == current.server)
            });
            if !forgotten {
                continue;
            }
            let configured = self.instance(backend, slot.other());
            let (current, configured) = (
                std::slice::from_ref(&current),
                std::slice::from_ref(&configured),
            );
            let put_back = async {
                self.add(lb, configured, current).await?;
                self.set_servers(lb, current, AdminState::Ready).await?;
                self.wait_up(lb, HashSet::from([current[0].server.as_str()]))
                    .await?;
                self.remove(lb, configured).await
            };
            match put_back.await {
                Ok(()) => {
                    tracing::warn!(service = %self.service.name, backend = %backend.name, server = %current[0].server, address = %current[0].spec.address, "HAProxy had forgotten the backend's server (reloaded or restarted?): added it back, in rotation and UP");
                    restored.push(current[0].server.clone());
                }
                Err((_, reason)) => {
                    tracing::error!(service = %self.service.name, backend = %backend.name, server = %current[0].server, %reason, "HAProxy has forgotten the backend's server and it cannot be added back yet");
                }
            }
        }
        Ok(restored)
    }

    /// A rolling rollout replaces the instance on `address` in place; a backend that a surge
    /// left on its `surge_address` must be rolled out by a surge again.
    pub(super) async fn refuse_surged(
        &self,
        batch: &[BackendName],
    ) -> Result<(), (Option<BackendName>, String)> {
        let slots: HashMap<String, Slot> = self
            .store
            .backend_slots(self.service.name.as_str())
            .await
            .map_err(|e| (None, e.to_string()))?
            .into_iter()
            .collect();
        for name in batch {
            if slots.get(name.as_str()) == Some(&Slot::SurgeAddress) {
                let backend = self.backend(name);
                return Err((
                    Some(name.clone()),
                    format!(
                        "{name} runs on its surge_address {} (HAProxy server {}) since a surge rollout, and a rolling rollout replaces the instance on `address` only: expected strategy.kind = \"surge\" for this service",
                        backend.address_of(Slot::SurgeAddress),
                        backend.haproxy_server(Slot::SurgeAddress)
                    ),
                ));
            }
        }
        Ok(())
    }
}
