//! Baton's database: every SQL statement lives in this module.
//!
//! Invariant: nothing outside `store` names sqlx or writes SQL, so another database (PostgreSQL
//! for two replicas) changes this module only. Every change to a rollout writes its event in
//! the same transaction (see [`events`]). Statuses, steps, outcomes and triggers are stored as
//! their words (`rolled_back`) and read back through [`word`], so a word the enum does not know
//! is an error, never a panic.

pub mod auth;
pub mod deliveries;
mod events;

pub use events::{LIVE_BUFFER, Published};

use std::str::FromStr;
use std::time::Duration;

use app::model::{
    Change, ControlAction, DeploymentEvent, DeploymentSummary, RolloutStatus, StepKind,
    StepOutcome, StepSummary, Trigger, UnknownWord,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    live: tokio::sync::broadcast::Sender<std::sync::Arc<Published>>,
    /// Held from commit to publish, so subscribers get events in id order.
    publishing: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Tells open streams that access was taken away (see `auth.rs`).
    auth_changes: auth::AuthChanges,
}

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open {
            url: url.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // SQLite would create a missing file with the umask's mode (often 0644), and gives the
        // -wal and -shm files the database file's mode: create it 0600 first, so none of them is
        // ever readable by other users. (Not for an in-memory or read-only database.)
        if sqlx::ConnectOptions::to_url_lossy(&options)
            .query_pairs()
            .any(|(key, value)| key == "mode" && value == "rwc")
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(options.get_filename())
                .map_err(|error| open(sqlx::Error::Io(error)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(open)?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        let store = Self {
            pool,
            live,
            publishing: Default::default(),
            auth_changes: Default::default(),
        };
        store.hash_kept_bodies().await?;
        Ok(store)
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Queues a rollout; returns its id.
    pub async fn insert_deployment(&self, new: &NewDeployment<'_>) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id = sqlx::query_scalar(
            "INSERT INTO deployments (service, from_version, to_version, status, trigger, requested_by, state, created_at)
             VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING id",
        )
        .bind(new.service)
        .bind(new.from_version)
        .bind(new.to_version)
        .bind(new.trigger.as_str())
        .bind(new.requested_by)
        .bind(new.state)
        .bind(now_millis())
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
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE deployments SET from_version = ?, to_version = ?, trigger = ?, requested_by = ?, state = ?
             WHERE id = (SELECT MAX(id) FROM deployments WHERE service = ? AND status = 'queued')
               AND status = 'queued' AND trigger = ?
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
        let mut tx = self.pool.begin().await?;
        let state: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE deployments SET status = 'running', started_at = COALESCE(started_at, ?)
             WHERE id = ? AND status = 'queued' RETURNING state",
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE deployments SET from_version = ?, state = ? WHERE id = ?")
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE deployments SET status = 'cancelled', reason = ?, finished_at = ?
             WHERE id = ? AND status = 'queued'",
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

    /// Records that someone asked to pause, resume or abort a rollout.
    pub async fn record_control(
        &self,
        id: i64,
        action: ControlAction,
        by: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let event = events::record(
            &mut tx,
            id,
            Change::Control {
                action,
                by: by.map(str::to_owned),
            },
        )
        .await?;
        self.commit_and_publish(tx, [event]).await?;
        Ok(())
    }

    /// The deployment a service's worker should carry on with: a started one first (interrupted
    /// when Baton stopped in the middle, or paused), else the oldest queued one.
    pub async fn next_deployment(
        &self,
        service: &str,
    ) -> Result<Option<DeploymentRow>, StoreError> {
        let row = sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE service = ? AND status IN ('running', 'paused', 'queued')
             ORDER BY status = 'queued' ASC, id ASC LIMIT 1",
        )
        .bind(service)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// How many rollouts of the service are running, paused or queued.
    pub async fn unfinished_count(&self, service: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments WHERE service = ? AND status IN ('running', 'paused', 'queued')",
        )
        .bind(service)
        .fetch_one(&self.pool)
        .await?)
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
            sqlx::query_as("SELECT status, reason FROM deployments WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE deployments SET status = ?, state = ?, reason = COALESCE(?, reason),
                started_at = COALESCE(started_at, ?), finished_at = CASE WHEN ? THEN ? ELSE NULL END
             WHERE id = ?",
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
            sqlx::query_as::<_, DeploymentRow>("SELECT * FROM deployments WHERE id = ?")
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
             WHERE (? IS NULL OR service = ?) AND (? IS NULL OR status = ?)
                AND (? IS NULL OR id < ?) AND (? IS NULL OR id > ?)
             ORDER BY id DESC LIMIT ?";
        const NEAREST_ABOVE: &str = "SELECT * FROM deployments
             WHERE (? IS NULL OR service = ?) AND (? IS NULL OR status = ?)
                AND (? IS NULL OR id < ?) AND (? IS NULL OR id > ?)
             ORDER BY id ASC LIMIT ?";
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
             WHERE service = ? AND (? IS NULL OR status = ?)
             ORDER BY id DESC LIMIT ?",
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
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(backends.len());
        let mut events = Vec::with_capacity(backends.len());
        for backend in backends {
            let row = sqlx::query_as::<_, StepRow>(
                "INSERT INTO deployment_steps (deployment_id, backend, step, rollback, version, started_at)
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
            )
            .bind(deployment)
            .bind(backend)
            .bind(step.as_str())
            .bind(rollback)
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
        let mut tx = self.pool.begin().await?;
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query_as::<_, StepRow>(
                "UPDATE deployment_steps SET finished_at = ?, outcome = ?, detail = ? WHERE id = ? RETURNING *",
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
    pub async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as::<_, StepRow>(
            "UPDATE deployment_steps SET finished_at = ?, outcome = ?,
                detail = 'Baton stopped during this step; it ran again after the restart'
             WHERE deployment_id = ? AND finished_at IS NULL RETURNING *",
        )
        .bind(now_millis())
        .bind(StepOutcome::Interrupted.as_str())
        .bind(deployment)
        .fetch_all(&mut *tx)
        .await?;
        let count = rows.len() as u64;
        let mut events = Vec::with_capacity(rows.len());
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
            "SELECT * FROM deployment_steps WHERE deployment_id = ? ORDER BY id",
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
            sqlx::query_as("SELECT backend, version FROM backend_versions WHERE service = ?")
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
        sqlx::query(
            "INSERT INTO backend_versions (service, backend, version, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (service, backend) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(service)
        .bind(backend)
        .bind(version)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
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
    pub reason: Option<String>,
    pub state: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl sqlx::FromRow<'_, SqliteRow> for DeploymentRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            service: row.try_get("service")?,
            from_version: row.try_get("from_version")?,
            to_version: row.try_get("to_version")?,
            status: word(row, "status")?,
            trigger: word(row, "trigger")?,
            requested_by: row.try_get("requested_by")?,
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

impl sqlx::FromRow<'_, SqliteRow> for StepRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            deployment_id: row.try_get("deployment_id")?,
            backend: row.try_get("backend")?,
            step: word(row, "step")?,
            rollback: row.try_get("rollback")?,
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
fn word<T>(row: &SqliteRow, column: &str) -> Result<T, sqlx::Error>
where
    T: FromStr<Err = UnknownWord>,
{
    let text: String = row.try_get(column)?;
    parse_column(column, &text)
}

/// Like [`word`], for a column that may be NULL.
fn optional_word<T>(row: &SqliteRow, column: &str) -> Result<Option<T>, sqlx::Error>
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
    conn: &mut sqlx::SqliteConnection,
    id: i64,
) -> Result<DeploymentEvent, StoreError> {
    let row = sqlx::query_as::<_, DeploymentRow>("SELECT * FROM deployments WHERE id = ?")
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
    use super::*;

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

    #[tokio::test]
    async fn queued_deployments_come_out_in_order_after_an_interrupted_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("b.db").display()))
            .await
            .unwrap();
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

    #[tokio::test]
    async fn deployments_page_both_ways_newest_first_within_the_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("p.db").display()))
            .await
            .unwrap();
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

    #[tokio::test]
    async fn a_word_the_enums_do_not_know_is_an_error_naming_it_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("w.db").display()))
            .await
            .unwrap();
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
        sqlx::query("UPDATE deployments SET status = 'paused_forever' WHERE id = ?")
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
        sqlx::query("UPDATE deployment_steps SET outcome = 'skipped' WHERE id = ?")
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

    #[tokio::test]
    async fn a_batch_of_steps_begins_and_ends_together_with_an_event_per_backend_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
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

    #[tokio::test]
    async fn recent_versions_are_newest_first_within_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("v.db").display()))
            .await
            .unwrap();
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
}
