//! The lease task: takes the leadership lease when it is free and renews it while it holds it,
//! a third of a lease apart, and tells the rest of Baton (the role) as it changes.
//!
//! A tenure ends when the database says another replica holds the lease, or when this
//! machine's clock says the lease may have run out (measured from before the renewal that last
//! answered, so it is never later than the expiry the database holds): then, even while the
//! database does not answer, this replica steps down on time. A lease that lapsed is taken
//! again under a new term, by whichever replica asks first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::{LeaderInfo, Role};
use crate::store::{Lease, Store, Tenure};

/// The least wait between two attempts, so a lease about to run out is not asked for in a
/// tight loop.
const LEAST_WAIT: Duration = Duration::from_millis(10);
/// How long giving the lease up at shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes and renews this replica's lease until stopped (see [`super::Leadership::leased`]).
pub struct LeaseTask {
    store: Store,
    replica: String,
    lease: Duration,
    role: watch::Sender<Role>,
    /// The tenure held now, for [`super::Leadership::mandate`].
    current: Arc<Mutex<Option<Tenure>>>,
    /// The tenure held now, as this task knows it.
    held: Option<Tenure>,
    /// How long after the last attempt the next one is due.
    next_wait: Duration,
}

impl LeaseTask {
    pub(super) fn new(
        store: Store,
        replica: String,
        lease: Duration,
        role: watch::Sender<Role>,
        current: Arc<Mutex<Option<Tenure>>>,
    ) -> Self {
        Self {
            store,
            replica,
            lease,
            role,
            current,
            held: None,
            next_wait: Duration::ZERO,
        }
    }

    /// The first attempt, before Baton serves, so that its role is known from its first answer
    /// (`Starting` only if the database did not answer in time).
    pub async fn first_attempt(&mut self) {
        self.next_wait = self.attempt().await;
    }

    /// Renews or takes the lease every third of a lease until `stop`, then gives it up so that
    /// another replica takes over at once. Stop it after the workers acting under it have
    /// stopped.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            // Wake at the tenure's deadline to step down on time.
            let wait = self
                .held
                .as_ref()
                .and_then(Tenure::remaining)
                .map_or(self.next_wait, |left| self.next_wait.min(left));
            tokio::select! {
                _ = sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
            tokio::select! {
                wait = self.attempt() => self.next_wait = wait,
                _ = stop.cancelled() => break,
            }
        }
        if let Some(tenure) = self.held.clone() {
            let term = tenure.term();
            self.step_down(None);
            match timeout(
                RELEASE_TIMEOUT,
                self.store.release_lease(&self.replica, term),
            )
            .await
            {
                Ok(Ok(())) => {
                    tracing::info!(replica = %self.replica, term, "gave the leadership lease up")
                }
                Ok(Err(error)) => {
                    tracing::warn!(replica = %self.replica, %error, "cannot give the lease up; it runs out by itself")
                }
                Err(_) => {
                    tracing::warn!(replica = %self.replica, "giving the lease up took too long; it runs out by itself")
                }
            }
        }
    }

    /// One attempt to take or renew the lease, and what it makes of the answer; returns how
    /// long to wait before the next one.
    async fn attempt(&mut self) -> Duration {
        let every = self.lease / 3;
        // Room for the two clocks running at slightly different rates.
        let margin = self.lease / 10;
        if self.held.as_ref().is_some_and(|tenure| !tenure.holds()) {
            tracing::warn!(
                replica = %self.replica,
                "the lease was not renewed in time; this replica stops leading"
            );
            self.step_down(None);
        }
        let asked = Instant::now();
        // An attempt that outlasts the tenure cannot keep it: step down first.
        let budget = self
            .held
            .as_ref()
            .and_then(Tenure::remaining)
            .map_or(every, |left| left.min(every));
        let holding = self.held.as_ref().map(Tenure::term);
        let attempt = timeout(
            budget,
            self.store.acquire_lease(&self.replica, holding, self.lease),
        )
        .await;
        match attempt {
            Ok(Ok(Lease::Held { term, acquired_at })) => {
                let until = asked + self.lease.saturating_sub(margin);
                match &self.held {
                    Some(tenure) if tenure.term() == term => tenure.extend(until),
                    _ => {
                        self.end_tenure();
                        let tenure = Tenure::new(&self.replica, term, until);
                        *self.current.lock().expect("tenure lock") = Some(tenure.clone());
                        self.held = Some(tenure);
                        tracing::info!(replica = %self.replica, term, "this replica leads");
                    }
                }
                self.set_role(Role::Leader {
                    term,
                    since: acquired_at,
                });
                every
            }
            Ok(Ok(Lease::Taken {
                holder,
                term,
                acquired_at,
                expires_in,
            })) => {
                let leader = LeaderInfo {
                    replica: holder,
                    since: acquired_at,
                };
                if self.held.is_some() {
                    tracing::warn!(replica = %self.replica, leader = %leader.replica, term, "another replica took the lease over; this replica stops leading");
                }
                self.step_down(Some(leader));
                // Ask again as soon as it may have run out.
                expires_in.min(every).max(LEAST_WAIT)
            }
            Ok(Err(error)) => {
                tracing::warn!(replica = %self.replica, %error, "cannot take or renew the leadership lease");
                every
            }
            Err(_) => {
                tracing::warn!(replica = %self.replica, waited = ?budget, "the database did not answer the lease in time");
                LEAST_WAIT
            }
        }
    }

    /// Ends the tenure held (if any) and follows `leader` (`None`: not known).
    fn step_down(&mut self, leader: Option<LeaderInfo>) {
        self.end_tenure();
        self.set_role(Role::Follower { leader });
    }

    /// Ends the tenure held, if any: nothing more is done or written under it.
    fn end_tenure(&mut self) {
        if let Some(tenure) = self.held.take() {
            tenure.end();
            *self.current.lock().expect("tenure lock") = None;
        }
    }

    fn set_role(&self, role: Role) {
        self.role.send_if_modified(|current| {
            if *current == role {
                return false;
            }
            tracing::info!(replica = %self.replica, from = ?*current, to = ?role, "role changed");
            *current = role;
            true
        });
    }
}
