//! Baton's database: every SQL statement lives in this module.
//!
//! Invariant: nothing outside `store` names sqlx or writes SQL. Every change to a rollout writes
//! its event in the same transaction (see [`events`]). Statuses, steps, outcomes and triggers are
//! stored as their words (`rolled_back`) and read back through [`word`], so a word the enum does
//! not know is an error, never a panic.
//!
//! Two databases, one set of statements: SQLite (the default, a file beside Baton) and
//! PostgreSQL (a server several Batons can share), through sqlx's `Any` driver. So that every
//! statement runs on both, they use `$1`-style parameters (SQLite reads them too), every integer
//! column is 64-bit (`BIGINT` on PostgreSQL, where `INTEGER` is 32-bit), a flag is an integer 0
//! or 1 and is read through [`Flag`], and nothing SQLite-only (`UPDATE OR IGNORE`) or
//! PostgreSQL-only is written. Each database has its own migrations (`migrations/sqlite`,
//! `migrations/postgres`) with the same versions and schema. Where SQLite's single writer made
//! concurrent writers take turns and PostgreSQL would not, a transaction waits for its [`Turn`].

pub mod auth;
pub mod deliveries;
mod events;
pub mod lease;
mod logs;
pub mod notifications;
mod traffic;

pub use events::{LIVE_BUFFER, Published};
pub use lease::{Lease, LeaseRow, Tenure};
pub use traffic::BackendTraffic;

use std::str::FromStr;
use std::time::Duration;

use app::model::{
    Change, ControlAction, DeploymentEvent, DeploymentSummary, RolloutStatus, StepKind,
    StepOutcome, StepSummary, Trigger, UnknownWord,
};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow, AnyTypeInfo, AnyTypeInfoKind};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, Executor, Row};

use crate::domain::Slot;

#[cfg(test)]
pub(crate) mod testing;

/// How long a caller waits for a connection (also the first one, at start) before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long PostgreSQL lets a connection sit idle inside a transaction before it ends the
/// session. Baton's transactions never wait on anything between their statements, so only a
/// Baton that stopped running (frozen, or its machine cut off) leaves one open that long, and
/// whatever locks it holds (the lease row a fenced write locks, a [`Turn`]) must not keep the
/// other replicas waiting: not past the lease, for a takeover.
const IDLE_IN_TRANSACTION: &str = "SET idle_in_transaction_session_timeout = 1000";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names neither SQLite nor PostgreSQL.
    #[error(
        "unsupported database URL {url}: expected \"sqlite://path/to/baton.db\", \
         \"postgres://user:password@host:port/database\" or \"postgresql://…\""
    )]
    Unsupported { url: String },
    /// `url` has its password masked.
    #[error("cannot open the database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// No connection to the server at `url` (password masked) within the acquire timeout.
    #[error(
        "cannot reach the database {url}: no connection within {}s (is the server running and \
         reachable from here?)",
        timeout.as_secs()
    )]
    Unreachable { url: String, timeout: Duration },
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A write through a fenced store (a leader's rollout worker) found that this replica no
    /// longer holds the lease under the term it works for: nothing was written, and nothing
    /// more may be done under that term (see `lease.rs`).
    #[error(
        "replica {replica} no longer leads under term {term} (its lease lapsed or another \
         replica took over): nothing more is written or done under that term"
    )]
    Fenced { replica: String, term: i64 },
}

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:…`: a file beside Baton (the default), for one Baton.
    Sqlite,
    /// `postgres://…` or `postgresql://…`: a server that several Batons may share.
    Postgres,
}

impl Backend {
    /// The database `url` names, by its scheme; `None` for any other.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// `url` as messages and logs show it: a PostgreSQL URL with its password (in the authority or
/// a `password=` parameter) replaced by `***`, a SQLite URL as it is (a path), and anything else
/// by its scheme only, since there is no telling where its secrets are.
pub fn masked_url(url: &str) -> String {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    let parsed = url::Url::parse(url).ok();
    match (Backend::of(url), parsed) {
        (Some(Backend::Sqlite), _) => url.to_owned(),
        (Some(Backend::Postgres), Some(mut parsed)) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query_pairs().any(|(key, _)| key == "password") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if key == "password" {
                            "***".to_owned()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        _ => format!("{scheme}:…"),
    }
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Where committed events are published (see [`events`]).
    feed: events::Feed,
    /// Tells open streams that access was taken away (see `auth.rs`).
    auth_changes: auth::AuthChanges,
    /// The tenure every transaction of this store checks first ([`Store::fenced`]); `None`
    /// for a store that is not a leader's rollout worker's.
    fence: Option<Tenure>,
}

/// What a PostgreSQL transaction waits its turn for (a transaction-scoped advisory lock), where
/// SQLite's single writer already puts concurrent writers one after the other.
#[derive(Debug, Clone, Copy)]
enum Turn {
    /// Writing rollout events: so their ids grow in commit order, as the live feed and
    /// `Last-Event-ID` replay assume (a sequence hands out ids at insert, not at commit).
    Events,
    /// Recording a login attempt: so that counting the attempts with lower ids counts every one
    /// that came first (the throttle's limit holds for attempts sent in parallel).
    Logins,
    /// Deleting a user, or creating a token that belongs to one: so two admins deleting each
    /// other cannot both pass the last-admin check, and no token outlives its user.
    Users,
}

impl Turn {
    /// The lock's key, the same for every Baton on the database ("baton" and a number).
    fn key(self) -> i64 {
        match self {
            Self::Events => 0x6261_746f_6e01,
            Self::Logins => 0x6261_746f_6e02,
            Self::Users => 0x6261_746f_6e03,
        }
    }
}

impl Store {
    /// Opens the database at `url` and applies the migrations: a SQLite file (created, readable by
    /// Baton's user only, if missing) or a PostgreSQL database (which must exist). Several
    /// Batons may start at once on one empty PostgreSQL database: the migrator holds an advisory
    /// lock while it works, so one migrates and the others find the schema. Errors never show
    /// the URL's password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let masked = || masked_url(url);
        let open = |source| StoreError::Open {
            url: masked(),
            source,
        };
        let backend = Backend::of(url).ok_or_else(|| StoreError::Unsupported { url: masked() })?;
        let options = match backend {
            Backend::Sqlite => sqlite_options(url).map_err(open)?,
            Backend::Postgres => AnyConnectOptions::from_str(url).map_err(open)?,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match backend {
                        // Per connection, as SQLite keeps them (WAL is also kept by the file).
                        Backend::Sqlite => {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                            )
                            .await?;
                        }
                        Backend::Postgres => {
                            conn.execute(IDLE_IN_TRANSACTION).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|error| match error {
                sqlx::Error::PoolTimedOut => StoreError::Unreachable {
                    url: masked(),
                    timeout: ACQUIRE_TIMEOUT,
                },
                error => open(error),
            })?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
        }
        let feed = events::Feed::new(backend, url, &pool).await?;
        let store = Self {
            pool,
            backend,
            feed,
            auth_changes: Default::default(),
            fence: None,
        };
        store.hash_kept_bodies().await?;
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that waits for its `turn` first (on PostgreSQL; see [`Turn`]), and
    /// on a fenced store checks the fence (see [`Store::fenced`]).
    async fn begin_turn(&self, turn: Turn) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(turn.key())
                .execute(&mut *tx)
                .await?;
        }
        self.check_fence(&mut tx).await?;
        Ok(tx)
    }

    /// Begins a transaction that needs no turn, checking the fence on a fenced store.
    async fn begin_fenced(&self) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        self.check_fence(&mut tx).await?;
        Ok(tx)
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Queues a rollout; returns its id.
    pub async fn insert_deployment(&self, new: &NewDeployment<'_>) -> Result<i64, StoreError> {
        self.insert_deployment_by(new, None).await
    }

    /// Queues a rollout requested by the user account `requester_user` (`None`: no account,
    /// such as a webhook's); returns its id.
    pub async fn insert_deployment_by(
        &self,
        new: &NewDeployment<'_>,
        requester_user: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_turn(Turn::Events).await?;
        let id = sqlx::query_scalar(
            "INSERT INTO deployments (service, from_version, to_version, status, trigger, requested_by, state, created_at, requester_user)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(new.service)
        .bind(new.from_version)
        .bind(new.to_version)
        .bind(new.trigger.as_str())
        .bind(new.requested_by)
        .bind(new.state)
        .bind(now_millis())
        .bind(requester_user)
        .fetch_one(&mut *tx)
        .await?;
        let event = status_event(&mut tx, id).await?;
        self.commit_and_publish(tx, [event]).await?;
        Ok(id)
    }

    /// Gives the newest rollout of the service that is still queued the version and state of
    /// `new`, if the same kind of trigger queued it (a push replaces only a push, never what a
    /// person or a rollback asked for); returns its id, or `None` when there is no such rollout
    /// (nothing queued, a worker just claimed it, or someone else queued the newest).
    pub async fn replace_queued(&self, new: &NewDeployment<'_>) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_turn(Turn::Events).await?;
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE deployments SET from_version = $1, to_version = $2, trigger = $3, requested_by = $4, state = $5
             WHERE id = (SELECT MAX(id) FROM deployments WHERE service = $6 AND status = 'queued')
               AND status = 'queued' AND trigger = $7
             RETURNING id",
        )
        .bind(new.from_version)
        .bind(new.to_version)
        .bind(new.trigger.as_str())
        .bind(new.requested_by)
        .bind(new.state)
        .bind(new.service)
        .bind(new.trigger.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else { return Ok(None) };
        let event = status_event(&mut tx, id).await?;
        self.commit_and_publish(tx, [event]).await?;
        Ok(Some(id))
    }

    /// Moves a queued rollout to running and returns its state as it is now (a coalescing
    /// request may have replaced it since the worker read the row); `None` if it is no longer
    /// queued (cancelled meanwhile).
    pub async fn claim(&self, id: i64) -> Result<Option<Option<String>>, StoreError> {
        let mut tx = self.begin_turn(Turn::Events).await?;
        let state: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE deployments SET status = 'running', started_at = COALESCE(started_at, $1)
             WHERE id = $2 AND status = 'queued' RETURNING state",
        )
        .bind(now_millis())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if state.is_none() {
            return Ok(None);
        }
        let event = status_event(&mut tx, id).await?;
        self.commit_and_publish(tx, [event]).await?;
        Ok(state)
    }

    /// Records where a claimed rollout starts from: the version the backends run as it begins
    /// (`None` when they differ) and the engine state planned from them.
    pub async fn begin(
        &self,
        id: i64,
        from_version: Option<&str>,
        state: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_turn(Turn::Events).await?;
        sqlx::query("UPDATE deployments SET from_version = $1, state = $2 WHERE id = $3")
            .bind(from_version)
            .bind(state)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let event = status_event(&mut tx, id).await?;
        self.commit_and_publish(tx, [event]).await?;
        Ok(())
    }

    /// Cancels a rollout that has not started; `false` if it is no longer queued.
    pub async fn cancel_queued(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_turn(Turn::Events).await?;
        let done = sqlx::query(
            "UPDATE deployments SET status = 'cancelled', reason = $1, finished_at = $2
             WHERE id = $3 AND status = 'queued'",
        )
        .bind(reason)
        .bind(now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let event = status_event(&mut tx, id).await?;
        self.commit_and_publish(tx, [event]).await?;
        Ok(true)
    }

    /// Records that someone asked to pause, resume or abort a rollout; returns the event's id.
    pub async fn record_control(
        &self,
        id: i64,
        action: ControlAction,
        by: Option<&str>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_turn(Turn::Events).await?;
        let event = events::record(
            &mut tx,
            id,
            Change::Control {
                action,
                by: by.map(str::to_owned),
            },
        )
        .await?;
        let event_id = event.id;
        self.commit_and_publish(tx, [event]).await?;
        Ok(event_id)
    }

    /// The pause, resume and abort requests recorded as events with ids above `after` and up to
    /// `upto`, oldest first (a leader polls for those asked of other replicas).
    pub async fn controls_between(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<Vec<RecordedControl>, StoreError> {
        let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT id, deployment_id, service, data FROM deployment_events
             WHERE id > $1 AND id <= $2 AND kind = 'control' ORDER BY id",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(event, deployment, service, data)| match serde_json::from_str(&data) {
                    Ok(Change::Control { action, .. }) => Some(RecordedControl {
                        event,
                        deployment,
                        service,
                        action,
                    }),
                    _ => {
                        tracing::error!(event_id = event, "skipping an unreadable control event");
                        None
                    }
                },
            )
            .collect())
    }

    /// The deployment a service's worker should carry on with: a started one first (interrupted
    /// when Baton stopped in the middle, paused, or awaiting an approval or a promotion: each
    /// holds the service's queue), else the oldest queued one.
    pub async fn next_deployment(
        &self,
        service: &str,
    ) -> Result<Option<DeploymentRow>, StoreError> {
        let row = sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE service = $1 AND status IN ('running', 'paused', 'awaiting_approval', 'awaiting_promote', 'queued')
             ORDER BY status = 'queued' ASC, id ASC LIMIT 1",
        )
        .bind(service)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// How many rollouts of the service are running, paused, awaiting someone or queued.
    pub async fn unfinished_count(&self, service: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments WHERE service = $1 AND status IN ('running', 'paused', 'awaiting_approval', 'awaiting_promote', 'queued')",
        )
        .bind(service)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The services with a rollout queued (for a leader polling for ones queued elsewhere).
    pub async fn services_with_queued(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT service FROM deployments WHERE status = 'queued'")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Saves the engine state (and the status it implies) before its next side effect. A change
    /// of status or reason is an event.
    pub async fn save_state(
        &self,
        id: i64,
        status: RolloutStatus,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let finished = status.is_finished();
        // Read before the transaction: a transaction that reads first and writes later fails
        // at once (SQLITE_BUSY, no retry) if another connection wrote meanwhile. Only the
        // service's worker changes a started rollout's status, so this read cannot go stale.
        let before: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, reason FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let mut tx = self.begin_turn(Turn::Events).await?;
        sqlx::query(
            "UPDATE deployments SET status = $1, state = $2, reason = COALESCE($3, reason),
                started_at = COALESCE(started_at, $4), finished_at = CASE WHEN $5 THEN $6 ELSE NULL END
             WHERE id = $7",
        )
        .bind(status.as_str())
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(finished)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let changed = before.is_none_or(|(old_status, old_reason)| {
            old_status != status.as_str() || (reason.is_some() && old_reason.as_deref() != reason)
        });
        let event = if changed {
            Some(status_event(&mut tx, id).await?)
        } else {
            None
        };
        self.commit_and_publish(tx, event).await?;
        Ok(())
    }

    pub async fn deployment(&self, id: i64) -> Result<Option<DeploymentRow>, StoreError> {
        Ok(
            sqlx::query_as::<_, DeploymentRow>("SELECT * FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Deployments, newest first: the newest `limit` that match, or with `after`, the `limit`
    /// just above it (the page before, towards the newest).
    pub async fn deployments(
        &self,
        query: &DeploymentQuery<'_>,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        const NEWEST: &str = "SELECT * FROM deployments
             WHERE ($1 IS NULL OR service = $2) AND ($3 IS NULL OR status = $4)
                AND ($5 IS NULL OR id < $6) AND ($7 IS NULL OR id > $8)
             ORDER BY id DESC LIMIT $9";
        const NEAREST_ABOVE: &str = "SELECT * FROM deployments
             WHERE ($1 IS NULL OR service = $2) AND ($3 IS NULL OR status = $4)
                AND ($5 IS NULL OR id < $6) AND ($7 IS NULL OR id > $8)
             ORDER BY id ASC LIMIT $9";
        let sql = if query.after.is_some() {
            NEAREST_ABOVE
        } else {
            NEWEST
        };
        let mut rows = sqlx::query_as::<_, DeploymentRow>(sql)
            .bind(query.service)
            .bind(query.service)
            .bind(query.status.map(RolloutStatus::as_str))
            .bind(query.status.map(RolloutStatus::as_str))
            .bind(query.before)
            .bind(query.before)
            .bind(query.after)
            .bind(query.after)
            .bind(query.limit)
            .fetch_all(&self.pool)
            .await?;
        if query.after.is_some() {
            rows.reverse();
        }
        Ok(rows)
    }

    /// The versions of the service's newest `limit` rollouts (only those with `status`, if
    /// given), newest first: `(to_version, from_version)`. Reads no saved engine state, which
    /// grows with the number of backends.
    pub async fn recent_versions(
        &self,
        service: &str,
        status: Option<RolloutStatus>,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT to_version, from_version FROM deployments
             WHERE service = $1 AND ($2 IS NULL OR status = $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(service)
        .bind(status.map(RolloutStatus::as_str))
        .bind(status.map(RolloutStatus::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that a step begins on each of `backends` (`None`: a step of the whole rollout),
    /// before its side effect; returns the steps' ids in the same order. One transaction, so a
    /// batch of 50 backends costs one commit, not 50.
    pub async fn begin_steps(
        &self,
        deployment: i64,
        backends: &[Option<&str>],
        step: StepKind,
        rollback: bool,
        version: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_millis();
        let mut tx = self.begin_turn(Turn::Events).await?;
        let mut ids = Vec::with_capacity(backends.len());
        let mut events = Vec::with_capacity(backends.len());
        for backend in backends {
            let row = sqlx::query_as::<_, StepRow>(
                "INSERT INTO deployment_steps (deployment_id, backend, step, rollback, version, started_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            )
            .bind(deployment)
            .bind(backend)
            .bind(step.as_str())
            .bind(i64::from(rollback))
            .bind(version)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(row.id);
            events.push(
                events::record(&mut tx, deployment, Change::Step { step: row.into() }).await?,
            );
        }
        self.commit_and_publish(tx, events).await?;
        Ok(ids)
    }

    /// Records that the steps `ids` ended, all with the same outcome and detail, in one
    /// transaction.
    pub async fn finish_steps(
        &self,
        ids: &[i64],
        outcome: StepOutcome,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.begin_turn(Turn::Events).await?;
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query_as::<_, StepRow>(
                "UPDATE deployment_steps SET finished_at = $1, outcome = $2, detail = $3 WHERE id = $4 RETURNING *",
            )
            .bind(now)
            .bind(outcome.as_str())
            .bind(detail)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let deployment = row.deployment_id;
            events.push(
                events::record(&mut tx, deployment, Change::Step { step: row.into() }).await?,
            );
        }
        self.commit_and_publish(tx, events).await?;
        Ok(())
    }

    /// Marks steps left open by a Baton that stopped mid-step; they are about to run again.
    ///
    /// On a fenced store (a leader's worker) resuming a rollout is a takeover: a `takeover`
    /// event names this replica and its term, once per term, and the interrupted steps say
    /// who ran them again.
    pub async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError> {
        // Read before the transaction (see `save_state`); only this term's worker writes it.
        let takeover = match &self.fence {
            Some(tenure) => {
                let newest: Option<String> = sqlx::query_scalar(
                    "SELECT data FROM deployment_events
                     WHERE deployment_id = $1 AND kind = 'takeover' ORDER BY id DESC LIMIT 1",
                )
                .bind(deployment)
                .fetch_optional(&self.pool)
                .await?;
                let recorded = newest
                    .and_then(|data| serde_json::from_str::<Change>(&data).ok())
                    .is_some_and(|change| {
                        matches!(change, Change::Takeover { ref replica, term }
                            if replica == tenure.replica() && term == tenure.term())
                    });
                (!recorded).then(|| (tenure.replica().to_owned(), tenure.term()))
            }
            None => None,
        };
        let detail = match &takeover {
            Some((replica, term)) => format!(
                "the leading replica stopped during this step; {replica} took over (term {term}) \
                 and ran it again"
            ),
            None => "Baton stopped during this step; it ran again after the restart".to_owned(),
        };
        let mut tx = self.begin_turn(Turn::Events).await?;
        let mut events = Vec::new();
        if let Some((replica, term)) = takeover {
            events.push(
                events::record(&mut tx, deployment, Change::Takeover { replica, term }).await?,
            );
        }
        let rows = sqlx::query_as::<_, StepRow>(
            "UPDATE deployment_steps SET finished_at = $1, outcome = $2, detail = $3
             WHERE deployment_id = $4 AND finished_at IS NULL RETURNING *",
        )
        .bind(now_millis())
        .bind(StepOutcome::Interrupted.as_str())
        .bind(&detail)
        .bind(deployment)
        .fetch_all(&mut *tx)
        .await?;
        let count = rows.len() as u64;
        for row in rows {
            events.push(
                events::record(&mut tx, deployment, Change::Step { step: row.into() }).await?,
            );
        }
        self.commit_and_publish(tx, events).await?;
        Ok(count)
    }

    pub async fn steps(&self, deployment: i64) -> Result<Vec<StepRow>, StoreError> {
        Ok(sqlx::query_as::<_, StepRow>(
            "SELECT * FROM deployment_steps WHERE deployment_id = $1 ORDER BY id",
        )
        .bind(deployment)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The version each backend of the service runs, as last recorded.
    pub async fn backend_versions(
        &self,
        service: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT backend, version FROM backend_versions WHERE service = $1")
                .bind(service)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn set_backend_version(
        &self,
        service: &str,
        backend: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced().await?;
        sqlx::query(
            "INSERT INTO backend_versions (service, backend, version, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (service, backend) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(service)
        .bind(backend)
        .bind(version)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The address each backend's current instance runs on, as last recorded (a backend never
    /// recorded runs on its `address`).
    pub async fn backend_slots(&self, service: &str) -> Result<Vec<(String, Slot)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT backend, slot FROM backend_versions WHERE service = $1")
                .bind(service)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(backend, slot)| {
                let slot = Slot::parse(&slot).map_err(|error| sqlx::Error::ColumnDecode {
                    index: "slot".to_owned(),
                    source: Box::new(error),
                })?;
                Ok((backend, slot))
            })
            .collect()
    }

    /// Records that the backend's current instance runs `version` on `slot`: a surge's switch
    /// from the old instance to the new one, in one write.
    pub async fn set_backend_current(
        &self,
        service: &str,
        backend: &str,
        version: &str,
        slot: Slot,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced().await?;
        sqlx::query(
            "INSERT INTO backend_versions (service, backend, version, updated_at, slot) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (service, backend) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at, slot = excluded.slot",
        )
        .bind(service)
        .bind(backend)
        .bind(version)
        .bind(now_millis())
        .bind(slot.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The pool's options for the SQLite database at `url`: created if missing (unless the URL asks
/// for another `mode`), and then created 0600 first. SQLite would create a missing file with
/// the umask's mode (often 0644), and gives the -wal and -shm files the database file's mode, so
/// none of them is ever readable by other users. (Not for an in-memory or read-only database.)
fn sqlite_options(url: &str) -> Result<AnyConnectOptions, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?;
    let (location, query) = url.split_once('?').unwrap_or((url, ""));
    let mode = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "mode")
        .map(|(_, mode)| mode.into_owned());
    if location.ends_with(":memory:") || mode.as_deref() == Some("memory") {
        // The `Any` driver reads the URL again for each connection, and each reading of
        // `:memory:` is a new database: name this one, so that every connection shares it.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let process = std::process::id();
        return AnyConnectOptions::from_str(&format!(
            "sqlite:file:baton-memory-{process}-{number}?mode=memory&cache=shared"
        ));
    }
    let url = match &mode {
        None if query.is_empty() => format!("{url}?mode=rwc"),
        None => format!("{url}&mode=rwc"),
        Some(_) => url.to_owned(),
    };
    if mode.as_deref().is_none_or(|mode| mode == "rwc") {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(options.get_filename())
            .map_err(sqlx::Error::Io)?;
    }
    AnyConnectOptions::from_str(&url)
}

/// A 0/1 column (both databases store flags as integers, see the migrations), or a condition
/// (`EXISTS …`: an integer on SQLite, a boolean on PostgreSQL), read as a bool.
struct Flag(bool);

impl sqlx::Type<Any> for Flag {
    fn type_info() -> AnyTypeInfo {
        <i64 as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        ty.kind() == AnyTypeInfoKind::Bool || ty.kind().is_integer()
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match <bool as sqlx::Decode<Any>>::decode(value.clone()) {
            Ok(flag) => Ok(Self(flag)),
            Err(_) => <i64 as sqlx::Decode<Any>>::decode(value).map(|number| Self(number != 0)),
        }
    }
}

impl From<Flag> for bool {
    fn from(flag: Flag) -> Self {
        flag.0
    }
}

/// Which deployments to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeploymentQuery<'a> {
    pub service: Option<&'a str>,
    pub status: Option<RolloutStatus>,
    /// Only ids below this one (the next, older page).
    pub before: Option<i64>,
    /// Only ids above this one, the nearest first (the previous, newer page); the rows still
    /// come back newest first.
    pub after: Option<i64>,
    pub limit: i64,
}

/// A pause, resume or abort request as its event recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedControl {
    pub event: i64,
    pub deployment: i64,
    pub service: String,
    pub action: ControlAction,
}

/// What a new rollout records.
pub struct NewDeployment<'a> {
    pub service: &'a str,
    pub from_version: Option<&'a str>,
    pub to_version: &'a str,
    pub trigger: Trigger,
    pub requested_by: Option<&'a str>,
    pub state: &'a str,
}

#[derive(Debug, Clone)]
pub struct DeploymentRow {
    pub id: i64,
    pub service: String,
    pub from_version: Option<String>,
    pub to_version: String,
    pub status: RolloutStatus,
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    /// The user account behind the request, when there is one.
    pub requester_user: Option<i64>,
    pub reason: Option<String>,
    pub state: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl sqlx::FromRow<'_, AnyRow> for DeploymentRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            service: row.try_get("service")?,
            from_version: row.try_get("from_version")?,
            to_version: row.try_get("to_version")?,
            status: word(row, "status")?,
            trigger: word(row, "trigger")?,
            requested_by: row.try_get("requested_by")?,
            requester_user: row.try_get("requester_user")?,
            reason: row.try_get("reason")?,
            state: row.try_get("state")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub id: i64,
    pub deployment_id: i64,
    pub backend: Option<String>,
    pub step: StepKind,
    pub rollback: bool,
    pub version: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<StepOutcome>,
    pub detail: Option<String>,
}

impl sqlx::FromRow<'_, AnyRow> for StepRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            deployment_id: row.try_get("deployment_id")?,
            backend: row.try_get("backend")?,
            step: word(row, "step")?,
            rollback: row.try_get::<Flag, _>("rollback")?.into(),
            version: row.try_get("version")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            outcome: optional_word(row, "outcome")?,
            detail: row.try_get("detail")?,
        })
    }
}

/// A vocabulary column read back as its enum (each is written with the enum's `as_str`). A word
/// the enum does not know is a decode error naming the column and the word.
fn word<T>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error>
where
    T: FromStr<Err = UnknownWord>,
{
    let text: String = row.try_get(column)?;
    parse_column(column, &text)
}

/// Like [`word`], for a column that may be NULL.
fn optional_word<T>(row: &AnyRow, column: &str) -> Result<Option<T>, sqlx::Error>
where
    T: FromStr<Err = UnknownWord>,
{
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| parse_column(column, &text)).transpose()
}

fn parse_column<T>(column: &str, text: &str) -> Result<T, sqlx::Error>
where
    T: FromStr<Err = UnknownWord>,
{
    text.parse()
        .map_err(|error: UnknownWord| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(error),
        })
}

/// The rollout's summary as an event, inside the transaction that changed it.
async fn status_event(
    conn: &mut sqlx::AnyConnection,
    id: i64,
) -> Result<DeploymentEvent, StoreError> {
    let row = sqlx::query_as::<_, DeploymentRow>("SELECT * FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    events::record(
        conn,
        id,
        Change::Status {
            deployment: row.into(),
        },
    )
    .await
}

impl From<DeploymentRow> for DeploymentSummary {
    fn from(row: DeploymentRow) -> Self {
        Self {
            id: row.id,
            service: row.service,
            status: row.status,
            from_version: row.from_version,
            to_version: row.to_version,
            trigger: row.trigger,
            requested_by: row.requested_by,
            reason: row.reason,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

impl From<StepRow> for StepSummary {
    fn from(row: StepRow) -> Self {
        Self {
            id: row.id,
            backend: row.backend,
            step: row.step,
            rollback: row.rollback,
            version: row.version,
            started_at: row.started_at,
            finished_at: row.finished_at,
            outcome: row.outcome,
            detail: row.detail,
        }
    }
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use app::model::StepLog;

    use super::testing::{TestDatabase, on_both_databases};
    use super::*;

    on_both_databases!(
        queued_deployments_come_out_in_order_after_an_interrupted_one,
        deployments_page_both_ways_newest_first_within_the_filters,
        a_word_the_enums_do_not_know_is_an_error_naming_it_not_a_panic,
        a_batch_of_steps_begins_and_ends_together_with_an_event_per_backend_in_order,
        recent_versions_are_newest_first_within_the_status,
        event_ids_grow_in_the_order_transactions_commit,
        a_failed_steps_log_is_kept_with_its_rollout_line_for_line,
        the_address_a_backend_runs_on_is_recorded_with_its_version,
    );

    async fn a_failed_steps_log_is_kept_with_its_rollout_line_for_line(db: TestDatabase) {
        let store = db.connect().await;
        let new = NewDeployment {
            service: "api",
            from_version: Some("v1"),
            to_version: "v2",
            trigger: Trigger::Api,
            requested_by: None,
            state: "{}",
        };
        let first = store.insert_deployment(&new).await.unwrap();
        let other = store.insert_deployment(&new).await.unwrap();
        let steps = store
            .begin_steps(
                first,
                &[Some("s1"), Some("s2")],
                StepKind::Start,
                false,
                "v2",
            )
            .await
            .unwrap();
        let lines = vec![
            "panic: \"quoted\", ünïcode".to_owned(),
            String::new(),
            "exit 3".to_owned(),
        ];
        store
            .save_step_log(steps[1], "s2", "/var/lib/baton/api/s2.log", &lines)
            .await
            .unwrap();
        let logs = store.step_logs(first).await.unwrap();
        assert_eq!(
            logs,
            [StepLog {
                step_id: steps[1],
                backend: "s2".into(),
                source: "/var/lib/baton/api/s2.log".into(),
                line_count: 3,
                lines,
                withheld: false,
            }]
        );
        assert_eq!(store.step_logs(other).await.unwrap(), []);
    }

    async fn the_address_a_backend_runs_on_is_recorded_with_its_version(db: TestDatabase) {
        let store = db.connect().await;
        // Recorded before surges existed: on its address.
        store.set_backend_version("api", "s1", "v1").await.unwrap();
        assert_eq!(
            store.backend_slots("api").await.unwrap(),
            [("s1".to_owned(), Slot::Address)]
        );
        store
            .set_backend_current("api", "s1", "v2", Slot::SurgeAddress)
            .await
            .unwrap();
        assert_eq!(
            store.backend_slots("api").await.unwrap(),
            [("s1".to_owned(), Slot::SurgeAddress)]
        );
        assert_eq!(
            store.backend_versions("api").await.unwrap(),
            [("s1".to_owned(), "v2".to_owned())]
        );
        // A rolling rollout's start records the version and leaves the address as it was.
        store.set_backend_version("api", "s1", "v3").await.unwrap();
        assert_eq!(
            store.backend_slots("api").await.unwrap(),
            [("s1".to_owned(), Slot::SurgeAddress)]
        );
    }

    #[tokio::test]
    async fn creates_the_file_and_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested-ok.db");
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        store.ping().await.unwrap();
        assert!(path.exists());
        // The database and SQLite's files beside it are readable by Baton's user only.
        for name in ["nested-ok.db", "nested-ok.db-wal", "nested-ok.db-shm"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // A second start finds the schema already there.
        store.close().await;
        Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
    }

    async fn queued_deployments_come_out_in_order_after_an_interrupted_one(db: TestDatabase) {
        let store = db.connect().await;
        let new = |to| NewDeployment {
            service: "api",
            from_version: Some("v1"),
            to_version: to,
            trigger: Trigger::Api,
            requested_by: None,
            state: "{}",
        };
        let first = store.insert_deployment(&new("v2")).await.unwrap();
        let second = store.insert_deployment(&new("v3")).await.unwrap();
        assert_eq!(
            store.next_deployment("api").await.unwrap().unwrap().id,
            first
        );
        store
            .save_state(second, RolloutStatus::Running, "{}", None)
            .await
            .unwrap();
        assert_eq!(
            store.next_deployment("api").await.unwrap().unwrap().id,
            second
        );
        assert_eq!(store.unfinished_count("api").await.unwrap(), 2);
        assert!(store.next_deployment("other").await.unwrap().is_none());
        let listed: Vec<i64> = store
            .deployments(&DeploymentQuery {
                limit: 10,
                ..DeploymentQuery::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(listed, [second, first]);
        store
            .save_state(
                second,
                RolloutStatus::Failed,
                "{}",
                Some("start failed on s1: boom"),
            )
            .await
            .unwrap();
        let row = store.deployment(second).await.unwrap().unwrap();
        assert_eq!(row.reason.as_deref(), Some("start failed on s1: boom"));
        assert!(row.finished_at.is_some());
    }

    async fn deployments_page_both_ways_newest_first_within_the_filters(db: TestDatabase) {
        let store = db.connect().await;
        let mut api = Vec::new();
        for i in 0..7 {
            let service = if i % 2 == 0 { "api" } else { "worker" };
            let id = store
                .insert_deployment(&NewDeployment {
                    service,
                    from_version: Some("v1"),
                    to_version: "v2",
                    trigger: Trigger::Api,
                    requested_by: None,
                    state: "{}",
                })
                .await
                .unwrap();
            if service == "api" {
                api.push(id);
            }
        }
        // api has ids a0 < a1 < a2 < a3 (with worker's in between).
        let ids = |rows: Vec<DeploymentRow>| rows.iter().map(|d| d.id).collect::<Vec<_>>();
        let page = |before, after| DeploymentQuery {
            service: Some("api"),
            before,
            after,
            limit: 2,
            ..DeploymentQuery::default()
        };
        let newest = ids(store.deployments(&page(None, None)).await.unwrap());
        assert_eq!(newest, [api[3], api[2]]);
        let older = ids(store.deployments(&page(Some(api[2]), None)).await.unwrap());
        assert_eq!(older, [api[1], api[0]]);
        // Back from the older page: the rows just above its newest, still newest first.
        let newer = ids(store.deployments(&page(None, Some(api[1]))).await.unwrap());
        assert_eq!(newer, newest);
        let nearest = ids(store.deployments(&page(None, Some(api[0]))).await.unwrap());
        assert_eq!(
            nearest,
            [api[2], api[1]],
            "the nearest above, not the newest"
        );
        let top = ids(store.deployments(&page(None, Some(api[3]))).await.unwrap());
        assert!(top.is_empty(), "nothing is newer than the newest");
        let between = ids(store
            .deployments(&page(Some(api[3]), Some(api[0])))
            .await
            .unwrap());
        assert_eq!(between, [api[2], api[1]], "both bounds hold");
    }

    async fn a_word_the_enums_do_not_know_is_an_error_naming_it_not_a_panic(db: TestDatabase) {
        let store = db.connect().await;
        let id = store
            .insert_deployment(&NewDeployment {
                service: "api",
                from_version: Some("v1"),
                to_version: "v2",
                trigger: Trigger::Webhook,
                requested_by: None,
                state: "{}",
            })
            .await
            .unwrap();
        let step = store
            .begin_steps(id, &[Some("s1")], StepKind::WaitSessions, false, "v2")
            .await
            .unwrap()[0];
        store
            .finish_steps(&[step], StepOutcome::TimedOut, None)
            .await
            .unwrap();
        // What was written reads back as the same words.
        let row = store.deployment(id).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.trigger),
            (RolloutStatus::Queued, Trigger::Webhook)
        );
        let steps = store.steps(id).await.unwrap();
        assert_eq!(
            (steps[0].step, steps[0].outcome),
            (StepKind::WaitSessions, Some(StepOutcome::TimedOut))
        );

        // A word written by something else (a newer Baton, a hand edit) is refused on reading.
        sqlx::query("UPDATE deployments SET status = 'paused_forever' WHERE id = $1")
            .bind(id)
            .execute(&store.pool)
            .await
            .unwrap();
        let error = store.deployment(id).await.unwrap_err().to_string();
        assert!(
            error.contains("column status")
                && error.contains("unknown rollout status \"paused_forever\"")
                && error.contains("rolled_back"),
            "{error}"
        );
        sqlx::query("UPDATE deployment_steps SET outcome = 'skipped' WHERE id = $1")
            .bind(step)
            .execute(&store.pool)
            .await
            .unwrap();
        let error = store.steps(id).await.unwrap_err().to_string();
        assert!(
            error.contains("unknown step outcome \"skipped\": expected one of ok, failed, timed_out, interrupted"),
            "{error}"
        );
    }

    async fn a_batch_of_steps_begins_and_ends_together_with_an_event_per_backend_in_order(
        db: TestDatabase,
    ) {
        let store = db.connect().await;
        let id = store
            .insert_deployment(&NewDeployment {
                service: "api",
                from_version: Some("v1"),
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "{}",
            })
            .await
            .unwrap();
        let mut live = store.subscribe();
        let rows = store
            .begin_steps(
                id,
                &[Some("s1"), Some("s2"), Some("s3")],
                StepKind::Stop,
                false,
                "v2",
            )
            .await
            .unwrap();
        store
            .finish_steps(&rows, StepOutcome::Ok, None)
            .await
            .unwrap();

        let steps = store.steps(id).await.unwrap();
        let backends: Vec<_> = steps.iter().map(|s| s.backend.as_deref()).collect();
        assert_eq!(backends, [Some("s1"), Some("s2"), Some("s3")]);
        assert_eq!(steps.iter().map(|s| s.id).collect::<Vec<_>>(), rows);
        assert!(steps.iter().all(|s| s.outcome == Some(StepOutcome::Ok)));
        // Each row began, then each ended: six events, in that order.
        let mut seen = Vec::new();
        while let Ok(published) = live.try_recv() {
            if let Change::Step { step } = &published.event.change {
                seen.push((step.backend.clone().unwrap(), step.finished_at.is_some()));
            }
        }
        let expected: Vec<(String, bool)> = [false, true]
            .into_iter()
            .flat_map(|ended| ["s1", "s2", "s3"].map(|b| (b.to_owned(), ended)))
            .collect();
        assert_eq!(seen, expected);
    }

    async fn recent_versions_are_newest_first_within_the_status(db: TestDatabase) {
        let store = db.connect().await;
        for (to, status) in [
            ("v2", RolloutStatus::Succeeded),
            ("v3", RolloutStatus::Failed),
            ("v4", RolloutStatus::Succeeded),
        ] {
            let id = store
                .insert_deployment(&NewDeployment {
                    service: "api",
                    from_version: Some("v1"),
                    to_version: to,
                    trigger: Trigger::Api,
                    requested_by: None,
                    state: "{}",
                })
                .await
                .unwrap();
            store.save_state(id, status, "{}", None).await.unwrap();
        }
        let versions = |status, limit| {
            let store = store.clone();
            async move {
                store
                    .recent_versions("api", status, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(to, _)| to)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(versions(None, 1).await, ["v4"]);
        assert_eq!(
            versions(Some(RolloutStatus::Succeeded), 50).await,
            ["v4", "v2"]
        );
        assert!(
            store
                .recent_versions("other", None, 5)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn an_unopenable_database_names_the_url() {
        let error = Store::connect("sqlite:///nonexistent-dir/x/baton.db")
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent-dir/x/baton.db"),
            "{error}"
        );
    }

    async fn event_ids_grow_in_the_order_transactions_commit(db: TestDatabase) {
        let store = db.connect().await;
        let id = store
            .insert_deployment(&NewDeployment {
                service: "api",
                from_version: Some("v1"),
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "{}",
            })
            .await
            .unwrap();
        let mut live = store.subscribe();
        // Many writers at once, each in its own transaction on its own connection.
        let writers = (0..200).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .record_control(id, ControlAction::Pause, Some("ops"))
                    .await
                    .unwrap()
            })
        });
        for writer in futures::future::join_all(writers).await {
            writer.unwrap();
        }
        let mut sent = Vec::new();
        while let Ok(published) = live.try_recv() {
            sent.push(published.event.id);
        }
        assert_eq!(sent.len(), 200);
        // A stream that resumes after the last id it sent (`Last-Event-ID`) misses nothing only
        // if no event with a lower id is sent after it.
        assert!(
            sent.windows(2).all(|pair| pair[0] < pair[1]),
            "events sent out of id order: {sent:?}"
        );
        let stored: Vec<i64> = store
            .events_after(Some(id), 0, 1000)
            .await
            .unwrap()
            .iter()
            .map(|event| event.id)
            .skip(1)
            .collect();
        assert_eq!(stored, sent);
    }

    #[tokio::test]
    async fn an_in_memory_sqlite_database_is_one_database_for_every_connection() {
        for url in ["sqlite::memory:", "sqlite://:memory:"] {
            let store = Store::connect(url)
                .await
                .unwrap_or_else(|error| panic!("{url}: {error}"));
            // Every connection of the pool sees the schema the first one migrated.
            let mut connections = Vec::new();
            for _ in 0..3 {
                connections.push(store.pool.acquire().await.unwrap());
            }
            for conn in &mut connections {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployments")
                    .fetch_one(&mut **conn)
                    .await
                    .unwrap_or_else(|error| panic!("{url}: {error}"));
                assert_eq!(count, 0);
            }
        }
    }

    #[tokio::test]
    async fn sqlite_connections_use_wal_normal_sync_foreign_keys_and_a_busy_timeout() {
        let db = TestDatabase::sqlite();
        let store = db.connect().await;
        // Every connection of the pool, not only the first.
        let mut connections = Vec::new();
        for _ in 0..3 {
            connections.push(store.pool.acquire().await.unwrap());
        }
        /// The value of a pragma (its table's one column) as text.
        async fn pragma(conn: &mut sqlx::AnyConnection, name: &str, column: &str) -> String {
            sqlx::query_scalar(&format!("SELECT CAST({column} AS TEXT) FROM pragma_{name}"))
                .fetch_one(conn)
                .await
                .unwrap()
        }
        for conn in &mut connections {
            assert_eq!(pragma(conn, "journal_mode", "journal_mode").await, "wal");
            // 1 is NORMAL.
            assert_eq!(pragma(conn, "synchronous", "synchronous").await, "1");
            assert_eq!(pragma(conn, "foreign_keys", "foreign_keys").await, "1");
            assert_eq!(pragma(conn, "busy_timeout", "timeout").await, "5000");
        }
    }

    #[tokio::test]
    async fn two_stores_started_at_once_on_an_empty_postgres_database_both_open() {
        let db = TestDatabase::postgres();
        // As two replicas starting together (four, to make a collision likely): the migrator's
        // advisory lock lets one migrate while the others wait, then find the schema.
        let stores = futures::future::join_all((0..4).map(|_| Store::connect(&db.url))).await;
        let stores: Vec<Store> = stores
            .into_iter()
            .map(|store| store.unwrap_or_else(|error| panic!("a replica fails to start: {error}")))
            .collect();
        // Each works on the one schema.
        for store in &stores {
            store
                .record_audit(&auth::NewAudit {
                    actor: "cli",
                    actor_kind: "cli",
                    action: "deploy",
                    target: None,
                    address: None,
                    detail: None,
                })
                .await
                .unwrap();
        }
        let audit = stores[0]
            .audit(&auth::AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 4);
        // And a later start finds the schema already there.
        db.connect().await.ping().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_postgres_fails_within_the_acquire_timeout_naming_the_host_not_the_password()
     {
        // Nothing listens on the first port; the second accepts connections and never answers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        for port in [closed_port, silent_port] {
            let url = format!("postgres://baton:s3cret-pw@127.0.0.1:{port}/baton");
            let started = tokio::time::Instant::now();
            let error = Store::connect(&url).await.unwrap_err().to_string();
            assert!(
                started.elapsed() <= ACQUIRE_TIMEOUT + Duration::from_secs(1),
                "gave up after {:?}",
                started.elapsed()
            );
            assert!(
                error.contains(&format!("127.0.0.1:{port}"))
                    && error.contains("no connection within 5s"),
                "{error}"
            );
            assert!(!error.contains("s3cret-pw"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_database_url_that_names_no_known_database_is_refused_without_its_password() {
        let error = Store::connect("mysql://baton:s3cret-pw@db/baton")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("unsupported database URL mysql:…: expected \"sqlite://"),
            "{error}"
        );
        assert!(
            error.contains("\"postgres://") && error.contains("\"postgresql://"),
            "{error}"
        );
    }

    /// `sslmode=verify-full`: the connection is encrypted, and a server whose certificate the
    /// given CA did not sign is refused, saying so.
    #[tokio::test]
    async fn postgres_over_tls_is_encrypted_and_checks_the_servers_certificate() {
        let url = testing::postgres::fresh_tls_database();
        let store = Store::connect(&url).await.unwrap();
        let (encrypted,): (bool,) =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert!(encrypted, "the connection to {url} is not encrypted");
        // The store works over it, LISTEN/NOTIFY included.
        assert!(store.next_deployment("web").await.unwrap().is_none());

        let ca = testing::postgres::server().other_ca();
        let (start, _) = url.split_once("sslrootcert=").unwrap();
        let untrusted = format!("{start}sslrootcert={}", ca.display());
        let error = Store::connect(&untrusted).await.err().unwrap().to_string();
        assert!(
            error.contains("cannot open the database") && error.contains("certificate"),
            "{error}"
        );
    }

    #[test]
    fn a_database_url_is_shown_with_its_password_masked() {
        for (url, shown) in [
            (
                "postgres://baton:s3cret@db:5432/baton",
                "postgres://baton:***@db:5432/baton",
            ),
            (
                "postgresql://db/baton?user=b&password=s3cret&sslmode=require",
                "postgresql://db/baton?user=b&password=***&sslmode=require",
            ),
            ("postgres://baton@db/baton", "postgres://baton@db/baton"),
            (
                "sqlite:///var/lib/baton/baton.db",
                "sqlite:///var/lib/baton/baton.db",
            ),
            ("baton:s3cret@db", "baton:…"),
            ("postgres://baton:s3cret@db:port/baton", "postgres:…"),
        ] {
            assert_eq!(masked_url(url), shown);
        }
        assert_eq!(
            Backend::of("postgresql://db/baton"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of("postgres://db/baton"), Some(Backend::Postgres));
        assert_eq!(Backend::of("sqlite:baton.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres:db"), None);
    }
}
