//! The leadership lease and the fence, on a database several Batons share.
//!
//! One row (`leadership`) says which replica leads, under which term, and until when. All its
//! times are the database's own clock, so the replicas' clocks never matter. A replica renews
//! its lease before it runs out; any replica may take a lease that has run out, and the term
//! then grows by one. A leader's rollout worker writes through a store fenced with its
//! [`Tenure`] ([`Store::fenced`]): every transaction such a store begins first checks, in that
//! same transaction, that this replica still holds the lease under that term and that it has
//! not expired, and fails with [`StoreError::Fenced`] otherwise. The check updates the row (to
//! itself), so on PostgreSQL it holds the row's lock until the commit: a replica taking over
//! waits for a fenced write in flight to commit, and then reads what it wrote.
//!
//! A [`Tenure`] also carries how long this replica may act by its own monotonic clock (which a
//! SIGSTOP does not stop): the deadline is measured from *before* each renewal was sent, so it
//! always falls before the expiry the database recorded, and a replica that was frozen past it
//! refuses to act the moment it runs again, before it could even ask the database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Backend, Store, StoreError};

/// One term of leadership as this replica holds it. Cheap to clone; every clone sees the same
/// deadline. Once it stops holding, it never holds again: a lease that lapsed is taken again
/// under a new term.
#[derive(Clone, Debug)]
pub struct Tenure(Arc<TenureState>);

#[derive(Debug)]
struct TenureState {
    replica: String,
    term: i64,
    /// Until when this replica may act; `None` once the tenure has ended.
    until: Mutex<Option<Instant>>,
}

impl Tenure {
    /// `replica` holds term `term` until `until` (this machine's monotonic clock).
    pub fn new(replica: &str, term: i64, until: Instant) -> Self {
        Self(Arc::new(TenureState {
            replica: replica.to_owned(),
            term,
            until: Mutex::new(Some(until)),
        }))
    }

    pub fn replica(&self) -> &str {
        &self.0.replica
    }

    pub fn term(&self) -> i64 {
        self.0.term
    }

    /// Whether this replica may still act under this term: not ended, and its deadline not
    /// passed. Once `false`, always `false`.
    pub fn holds(&self) -> bool {
        self.remaining().is_some()
    }

    /// How long it still holds; `None` once it does not (and from then on).
    pub fn remaining(&self) -> Option<Duration> {
        let mut until = self.0.until.lock().expect("tenure lock");
        let now = Instant::now();
        match *until {
            Some(deadline) if now < deadline => Some(deadline - now),
            _ => {
                *until = None;
                None
            }
        }
    }

    /// Moves the deadline to `until` after a renewal, unless the tenure has already ended (a
    /// renewal that answers late cannot revive it).
    pub fn extend(&self, until: Instant) {
        if self.holds() {
            let mut current = self.0.until.lock().expect("tenure lock");
            if let Some(deadline) = current.as_mut() {
                *deadline = until.max(*deadline);
            }
        }
    }

    /// Ends the tenure now: nothing more is done or written under it.
    pub fn end(&self) {
        *self.0.until.lock().expect("tenure lock") = None;
    }
}

/// The lease as one attempt to take or renew it found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This replica holds it, under `term`, since `acquired_at` (Unix milliseconds, the
    /// database's clock), for the whole lease from now.
    Held { term: i64, acquired_at: i64 },
    /// Another replica holds it (or this one, under a term it no longer claims) for
    /// `expires_in` more.
    Taken {
        holder: String,
        term: i64,
        acquired_at: i64,
        expires_in: Duration,
    },
}

/// The lease row as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: String,
    pub term: i64,
    pub acquired_at: i64,
    /// Negative once it has expired.
    pub expires_in_ms: i64,
}

impl Store {
    /// The database's clock in Unix milliseconds, as SQL: the one expression that differs
    /// between the two databases here. (On SQLite, where one Baton leads alone, only the
    /// tests use the lease.)
    fn clock(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Takes the lease for `replica` or renews it, for `lease` from now. `holding` is the term
    /// this replica holds (`None`: it holds none): only that term is renewed; a lease that ran
    /// out, or that was never taken, is taken under the next term. Returns who holds it now.
    pub async fn acquire_lease(
        &self,
        replica: &str,
        holding: Option<i64>,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let clock = self.clock();
        let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        // `excluded.acquired_at` is the database's "now" for the whole statement.
        let renewal = "leadership.holder = excluded.holder AND leadership.term = $3 \
                       AND leadership.expires_at > excluded.acquired_at";
        let held: Option<(i64, i64)> = sqlx::query_as(&format!(
            "INSERT INTO leadership (id, holder, term, acquired_at, expires_at)
             VALUES (1, $1, 1, {clock}, {clock} + $2)
             ON CONFLICT (id) DO UPDATE SET
                 term = CASE WHEN {renewal} THEN leadership.term ELSE leadership.term + 1 END,
                 acquired_at = CASE WHEN {renewal} THEN leadership.acquired_at
                                    ELSE excluded.acquired_at END,
                 holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE ({renewal}) OR leadership.expires_at <= excluded.acquired_at
             RETURNING term, acquired_at"
        ))
        .bind(replica)
        .bind(millis)
        .bind(holding)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((term, acquired_at)) = held {
            return Ok(Lease::Held { term, acquired_at });
        }
        // Another replica holds it. (It may have changed since: the next attempt will see.)
        let row = self.lease().await?.ok_or_else(|| {
            StoreError::Query(sqlx::Error::Protocol(
                "the leadership row vanished between two statements".into(),
            ))
        })?;
        Ok(Lease::Taken {
            holder: row.holder,
            term: row.term,
            acquired_at: row.acquired_at,
            expires_in: Duration::from_millis(u64::try_from(row.expires_in_ms).unwrap_or(0)),
        })
    }

    /// Gives up the lease of `term` now (Baton is stopping), so that another replica takes over
    /// at its next attempt rather than when the lease would have run out.
    pub async fn release_lease(&self, replica: &str, term: i64) -> Result<(), StoreError> {
        let clock = self.clock();
        sqlx::query(&format!(
            "UPDATE leadership SET expires_at = {clock} WHERE id = 1 AND holder = $1 AND term = $2"
        ))
        .bind(replica)
        .bind(term)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who holds the lease now, if anyone ever took it.
    pub async fn lease(&self) -> Result<Option<LeaseRow>, StoreError> {
        let clock = self.clock();
        let row: Option<(String, i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT holder, term, acquired_at, expires_at - {clock} FROM leadership WHERE id = 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(holder, term, acquired_at, expires_in_ms)| LeaseRow {
                holder,
                term,
                acquired_at,
                expires_in_ms,
            }),
        )
    }

    /// This store, with every transaction it begins checking first that `tenure` still holds
    /// (see the module's documentation). What a leader's rollout worker writes through.
    pub fn fenced(&self, tenure: Tenure) -> Store {
        Store {
            fence: Some(tenure),
            ..self.clone()
        }
    }

    /// The fence's check, first in each transaction of a fenced store (nothing on others).
    /// A tenure found lost is ended, so this replica's drivers refuse to act under it too.
    pub(super) async fn check_fence(
        &self,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<(), StoreError> {
        let Some(tenure) = &self.fence else {
            return Ok(());
        };
        let fenced = || StoreError::Fenced {
            replica: tenure.replica().to_owned(),
            term: tenure.term(),
        };
        if !tenure.holds() {
            return Err(fenced());
        }
        let clock = self.clock();
        let held = sqlx::query(&format!(
            "UPDATE leadership SET holder = holder
             WHERE id = 1 AND holder = $1 AND term = $2 AND expires_at > {clock}"
        ))
        .bind(tenure.replica())
        .bind(tenure.term())
        .execute(&mut *conn)
        .await?;
        if held.rows_affected() != 1 {
            tenure.end();
            return Err(fenced());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use app::model::{Change, RolloutStatus, StepKind, StepOutcome, Trigger};

    use super::super::testing::{TestDatabase, on_both_databases};
    use super::*;
    use crate::rollout::journal::Journal;
    use crate::store::NewDeployment;

    on_both_databases!(
        a_lease_is_renewed_by_its_holder_and_taken_by_another_replica_only_once_it_has_run_out,
        a_fenced_store_refuses_every_journal_write_once_another_replica_took_over,
        a_tenure_that_lapsed_on_this_machine_refuses_to_write_before_asking_the_database,
        resuming_a_rollout_under_a_new_term_records_the_takeover_once,
    );

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_leader_frozen_in_the_middle_of_a_fenced_write_does_not_hold_a_takeover_up() {
        let db = TestDatabase::postgres();
        let (a, b) = (db.connect().await, db.connect().await);
        let short = Duration::from_millis(300);
        let term = take_when_free(&a, "a", short).await;
        let fenced = a.fenced(Tenure::new("a", term, Instant::now() + short));
        // a's worker passed the fence and stopped running before its commit: its connection
        // sits in the transaction, holding the lease row's lock.
        let mut frozen = fenced.pool.begin().await.unwrap();
        fenced.check_fence(&mut frozen).await.unwrap();
        let began = Instant::now();
        let taken = tokio::time::timeout(Duration::from_secs(5), take_when_free(&b, "b", LONG))
            .await
            .expect("b's takeover waits for a's transaction to end");
        assert_eq!(taken, term + 1);
        // PostgreSQL ended a's session after a second idle in its transaction.
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "the takeover waited {:?}",
            began.elapsed()
        );
        // When a runs again, its write does not commit.
        assert!(frozen.commit().await.is_err());
    }

    /// Asks for the lease for `replica` until it has it (a bounded wait for another's to run
    /// out); returns its term.
    async fn take_when_free(store: &Store, replica: &str, lease: Duration) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match store.acquire_lease(replica, None, lease).await.unwrap() {
                Lease::Held { term, .. } => return term,
                Lease::Taken { expires_in, .. } => {
                    assert!(Instant::now() < deadline, "{replica} never got the lease");
                    tokio::time::sleep(expires_in.max(Duration::from_millis(5))).await;
                }
            }
        }
    }

    async fn a_lease_is_renewed_by_its_holder_and_taken_by_another_replica_only_once_it_has_run_out(
        db: TestDatabase,
    ) {
        // Two replicas: two stores on one database.
        let (a, b) = (db.connect().await, db.connect().await);
        assert_eq!(a.lease().await.unwrap(), None);
        let short = Duration::from_millis(300);
        let Lease::Held {
            term: 1,
            acquired_at,
        } = a.acquire_lease("a", None, short).await.unwrap()
        else {
            panic!("the first replica to ask takes the lease under term 1");
        };
        match b.acquire_lease("b", None, short).await.unwrap() {
            Lease::Taken {
                holder,
                term: 1,
                acquired_at: since,
                expires_in,
            } => {
                assert_eq!((holder.as_str(), since), ("a", acquired_at));
                assert!(expires_in <= short, "{expires_in:?}");
            }
            other => panic!("b took a lease a holds: {other:?}"),
        }
        // Renewing keeps the term and the time a began to lead.
        assert_eq!(
            a.acquire_lease("a", Some(1), short).await.unwrap(),
            Lease::Held {
                term: 1,
                acquired_at
            }
        );
        // Once a stops renewing, b takes it over under the next term...
        assert_eq!(take_when_free(&b, "b", LONG).await, 2);
        let row = a.lease().await.unwrap().unwrap();
        assert_eq!((row.holder.as_str(), row.term), ("b", 2));
        assert!(row.acquired_at > acquired_at);
        // ...and a, waking up, cannot renew the term it held.
        assert!(matches!(
            a.acquire_lease("a", Some(1), short).await.unwrap(),
            Lease::Taken { ref holder, term: 2, .. } if holder == "b"
        ));
        // Given up, it is free at once, and taken under a term greater again.
        b.release_lease("b", 2).await.unwrap();
        assert!(matches!(
            a.acquire_lease("a", None, LONG).await.unwrap(),
            Lease::Held { term: 3, .. }
        ));
    }

    /// A queued rollout of `api`, for the journal's writes to work on.
    async fn queued(store: &Store) -> i64 {
        store
            .insert_deployment(&NewDeployment {
                service: "api",
                from_version: Some("v1"),
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "{}",
            })
            .await
            .unwrap()
    }

    /// Every write the executor makes, through `journal`, each with what it returned.
    async fn every_journal_write(
        journal: &dyn Journal,
        id: i64,
        step: i64,
    ) -> Vec<(&'static str, Result<(), StoreError>)> {
        vec![
            ("claim", journal.claim(id).await.map(drop)),
            ("begin", journal.begin(id, Some("v1"), "{}").await),
            (
                "save_state",
                journal
                    .save_state(id, RolloutStatus::Running, "{}", None)
                    .await,
            ),
            (
                "interrupt_open_steps",
                journal.interrupt_open_steps(id).await.map(drop),
            ),
            (
                "begin_steps",
                journal
                    .begin_steps(id, &[Some("s1")], StepKind::Drain, false, "v2")
                    .await
                    .map(drop),
            ),
            (
                "finish_steps",
                journal.finish_steps(&[step], StepOutcome::Ok, None).await,
            ),
            (
                "set_backend_version",
                journal.set_backend_version("api", "s1", "v2").await,
            ),
            (
                "save_traffic",
                journal
                    .save_traffic(
                        id,
                        1_000,
                        &[crate::store::BackendTraffic {
                            backend: "s1".to_owned(),
                            requests: 10,
                            errors_5xx: 0,
                        }],
                    )
                    .await,
            ),
        ]
    }

    async fn a_fenced_store_refuses_every_journal_write_once_another_replica_took_over(
        db: TestDatabase,
    ) {
        let (a, b) = (db.connect().await, db.connect().await);
        let term = take_when_free(&a, "a", LONG).await;
        let id = queued(&a).await;
        let step = a
            .begin_steps(id, &[Some("s1")], StepKind::Stop, false, "v2")
            .await
            .unwrap()[0];
        let a_leads = a.fenced(Tenure::new("a", term, Instant::now() + LONG));
        // While a holds the lease, its worker's writes go through.
        for (write, result) in every_journal_write(&a_leads, id, step).await {
            assert!(result.is_ok(), "{write}: {result:?}");
        }

        // b takes over (a gave the lease up; a lease that ran out is the same to the fence).
        a.release_lease("a", term).await.unwrap();
        assert_eq!(take_when_free(&b, "b", LONG).await, term + 1);
        let events = a.latest_event_id().await.unwrap();
        let before = (
            a.deployment(id).await.unwrap().unwrap(),
            a.steps(id).await.unwrap(),
            a.traffic(id).await.unwrap(),
        );
        for (write, result) in every_journal_write(&a_leads, id, step).await {
            assert!(
                matches!(result, Err(StoreError::Fenced { ref replica, term: t }) if replica == "a" && t == term),
                "{write} went through after b took over: {result:?}"
            );
        }
        // Nothing was written: no event, no change to the rollout or its steps.
        assert_eq!(a.latest_event_id().await.unwrap(), events);
        let after = (
            a.deployment(id).await.unwrap().unwrap(),
            a.steps(id).await.unwrap(),
            a.traffic(id).await.unwrap(),
        );
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
        assert_eq!(
            a.backend_versions("api").await.unwrap(),
            [("s1".to_owned(), "v2".to_owned())]
        );
        // The error says who and what.
        let error = a_leads
            .save_state(id, RolloutStatus::Running, "{}", None)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "replica a no longer leads under term {term} (its lease lapsed or another replica took over): nothing more is written or done under that term"
            )
        );
    }

    async fn a_tenure_that_lapsed_on_this_machine_refuses_to_write_before_asking_the_database(
        db: TestDatabase,
    ) {
        let store = db.connect().await;
        let term = take_when_free(&store, "a", LONG).await;
        let id = queued(&store).await;
        // The database still says a leads for a minute, but a was frozen past its own deadline.
        let tenure = Tenure::new("a", term, Instant::now() + Duration::from_millis(50));
        let fenced = store.fenced(tenure.clone());
        assert!(tenure.holds());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!tenure.holds());
        assert!(matches!(
            fenced.claim(id).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(
            store.deployment(id).await.unwrap().unwrap().status,
            RolloutStatus::Queued
        );
        // A renewal that answers late does not revive it.
        tenure.extend(Instant::now() + LONG);
        assert!(!tenure.holds());
    }

    async fn resuming_a_rollout_under_a_new_term_records_the_takeover_once(db: TestDatabase) {
        let (a, b) = (db.connect().await, db.connect().await);
        let term = take_when_free(&a, "a", LONG).await;
        let id = queued(&a).await;
        let a_leads = a.fenced(Tenure::new("a", term, Instant::now() + LONG));
        a_leads.claim(id).await.unwrap();
        a_leads
            .begin_steps(id, &[Some("s1")], StepKind::WaitHealthy, false, "v2")
            .await
            .unwrap();

        a.release_lease("a", term).await.unwrap();
        let term = take_when_free(&b, "b", LONG).await;
        let b_leads = b.fenced(Tenure::new("b", term, Instant::now() + LONG));
        assert_eq!(b_leads.interrupt_open_steps(id).await.unwrap(), 1);
        // Resumed again in the same term (after a failed write, say): no second takeover.
        assert_eq!(b_leads.interrupt_open_steps(id).await.unwrap(), 0);

        let takeovers: Vec<Change> = b
            .events_after(Some(id), 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|event| event.change)
            .filter(|change| matches!(change, Change::Takeover { .. }))
            .collect();
        assert_eq!(
            takeovers,
            [Change::Takeover {
                replica: "b".into(),
                term
            }]
        );
        let steps = b.steps(id).await.unwrap();
        assert_eq!(steps[0].outcome, Some(StepOutcome::Interrupted));
        assert_eq!(
            steps[0].detail.as_deref(),
            Some(
                format!(
                    "the leading replica stopped during this step; b took over (term {term}) and ran it again"
                )
                .as_str()
            )
        );
    }
}
