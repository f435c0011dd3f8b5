//! At most a few argon2 password checks at once, so parallel logins cannot exhaust memory.
//!
//! Each check takes argon2's 19 MiB for its whole run, and tokio's blocking pool would run up
//! to 512 of them side by side: about 10 GB, from logins anyone can send (the login throttle
//! counts per name and per address, so many names or addresses get past it). The gate lets
//! [`PasswordChecks::at_once`] checks run, lets [`PasswordChecks::queue`] more wait for a turn
//! (waiting costs no argon2 memory), and refuses the rest at once. A waiter that has not had a
//! turn after [`PasswordChecks::wait`] is refused too. Refused means [`Busy`]: the caller
//! answers 503 with `Retry-After`.
//!
//! Invariant: a check's permits move into the blocking task, so a client that hangs up while its
//! check runs does not free a turn before the check's memory is freed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::settings::PasswordChecks;

/// Too many password checks are running or waiting; try again in a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks are running or waiting")]
pub struct Busy;

/// How long a refused caller is told to wait (`Retry-After`): a check takes well under a
/// second, so the line is usually gone by then.
pub const RETRY_AFTER_SECS: u64 = 1;

/// See the module's documentation.
pub(super) struct PasswordGate {
    /// A turn to run a check.
    running: Arc<Semaphore>,
    /// A place in the building: running or waiting for a turn.
    admitted: Arc<Semaphore>,
    wait: Duration,
}

impl PasswordGate {
    pub fn new(limits: PasswordChecks) -> Self {
        let at_once = limits.at_once.max(1) as usize;
        Self {
            running: Arc::new(Semaphore::new(at_once)),
            admitted: Arc::new(Semaphore::new(at_once + limits.queue as usize)),
            wait: limits.wait,
        }
    }

    /// Runs `check` on the blocking pool once it has a turn, or refuses at once when the line
    /// is full, or after waiting [`PasswordChecks::wait`] for a turn.
    ///
    /// Cancellation-safe: dropping the future while it waits gives its place up; once the check
    /// runs, it keeps its turn until the check is done.
    pub async fn check<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, tokio::task::JoinError>, Busy> {
        let place = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let turn = tokio::time::timeout(self.wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .expect("the gate's semaphore is never closed");
        Ok(tokio::task::spawn_blocking(move || {
            let _held: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (place, turn);
            check()
        })
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, mpsc};
    use std::task::Poll;

    /// Checks that block until the test releases them, and count how many run at once.
    #[derive(Default)]
    struct Probe {
        running: AtomicUsize,
        most: AtomicUsize,
    }

    #[tokio::test]
    async fn two_checks_run_at_once_a_few_wait_and_the_rest_are_refused_at_once() {
        let gate = PasswordGate::new(PasswordChecks {
            at_once: 2,
            queue: 3,
            wait: Duration::from_secs(600),
        });
        let probe = Arc::new(Probe::default());
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let (started_tx, started) = mpsc::channel::<()>();

        let mut admitted = Vec::new();
        let mut refused = 0;
        for _ in 0..10 {
            let (probe, released, started_tx) =
                (probe.clone(), released.clone(), started_tx.clone());
            let mut attempt = Box::pin(gate.check(move || {
                let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
                probe.most.fetch_max(now, Ordering::SeqCst);
                started_tx.send(()).unwrap();
                released.lock().unwrap().recv().unwrap();
                probe.running.fetch_sub(1, Ordering::SeqCst);
            }));
            // The first poll admits the attempt (it runs or waits) or refuses it.
            match futures::poll!(attempt.as_mut()) {
                Poll::Ready(outcome) => {
                    assert_eq!(outcome.unwrap_err(), Busy);
                    refused += 1;
                }
                Poll::Pending => admitted.push(attempt),
            }
        }
        assert_eq!(
            refused, 5,
            "2 running and 3 waiting are admitted, the rest refused"
        );
        for _ in 0..2 {
            started
                .recv_timeout(Duration::from_secs(10))
                .expect("two checks start");
        }
        assert_eq!(probe.running.load(Ordering::SeqCst), 2);

        for _ in 0..admitted.len() {
            release.send(()).unwrap();
        }
        let outcomes =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(admitted))
                .await
                .expect("every admitted check ends");
        assert!(outcomes.iter().all(|outcome| matches!(outcome, Ok(Ok(())))));
        assert_eq!(
            probe.most.load(Ordering::SeqCst),
            2,
            "never more than two checks at once"
        );
        // The line is empty again: a check gets its turn.
        assert_eq!(gate.check(|| "checked").await.unwrap().unwrap(), "checked");
    }

    // On the wall clock: tokio's paused clock does not advance while a blocking task runs.
    #[tokio::test]
    async fn a_check_that_waits_too_long_for_a_turn_is_refused() {
        let gate = PasswordGate::new(PasswordChecks {
            at_once: 1,
            queue: 5,
            wait: Duration::from_millis(100),
        });
        let (release, released) = mpsc::channel::<()>();
        let mut first = Box::pin(gate.check(move || released.recv().unwrap()));
        assert!(futures::poll!(first.as_mut()).is_pending(), "runs");
        let waited = std::time::Instant::now();
        assert_eq!(gate.check(|| ()).await.unwrap_err(), Busy);
        assert!(waited.elapsed() >= Duration::from_millis(100));
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
    }
}
