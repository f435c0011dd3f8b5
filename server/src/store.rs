//! Baton's database: every SQL statement lives in this module.
//!
//! Invariant: nothing outside `store` names sqlx or writes SQL, so another database (PostgreSQL
//! for two replicas) changes this module only.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(open)?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Queues a rollout; returns its id.
    pub async fn insert_deployment(&self, new: &NewDeployment<'_>) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO deployments (service, from_version, to_version, status, trigger, requested_by, state, created_at)
             VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING id",
        )
        .bind(new.service)
        .bind(new.from_version)
        .bind(new.to_version)
        .bind(new.trigger)
        .bind(new.requested_by)
        .bind(new.state)
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The deployment a service's worker should carry on with: an interrupted one first (Baton
    /// stopped in the middle), else the oldest queued one.
    pub async fn next_deployment(
        &self,
        service: &str,
    ) -> Result<Option<DeploymentRow>, StoreError> {
        let row = sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE service = ? AND status IN ('running', 'queued')
             ORDER BY status = 'running' DESC, id ASC LIMIT 1",
        )
        .bind(service)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// How many rollouts of the service are running or queued.
    pub async fn unfinished_count(&self, service: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments WHERE service = ? AND status IN ('running', 'queued')",
        )
        .bind(service)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Saves the engine state (and the status it implies) before its next side effect.
    pub async fn save_state(
        &self,
        id: i64,
        status: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let finished = matches!(status, "succeeded" | "failed" | "rolled_back" | "cancelled");
        sqlx::query(
            "UPDATE deployments SET status = ?, state = ?, reason = COALESCE(?, reason),
                started_at = COALESCE(started_at, ?), finished_at = CASE WHEN ? THEN ? ELSE NULL END
             WHERE id = ?",
        )
        .bind(status)
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(finished)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
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

    /// Deployments, newest first.
    pub async fn deployments(
        &self,
        service: Option<&str>,
        limit: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        Ok(sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE (? IS NULL OR service = ?) AND (? IS NULL OR id < ?)
             ORDER BY id DESC LIMIT ?",
        )
        .bind(service)
        .bind(service)
        .bind(before_id)
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that a step begins on a backend (before its side effect); returns the step's id.
    pub async fn begin_step(
        &self,
        deployment: i64,
        backend: Option<&str>,
        step: &str,
        rollback: bool,
        version: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO deployment_steps (deployment_id, backend, step, rollback, version, started_at)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(deployment)
        .bind(backend)
        .bind(step)
        .bind(rollback)
        .bind(version)
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn finish_step(
        &self,
        step: i64,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployment_steps SET finished_at = ?, outcome = ?, detail = ? WHERE id = ?",
        )
        .bind(now_millis())
        .bind(outcome)
        .bind(detail)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks steps left open by a Baton that stopped mid-step; they are about to run again.
    pub async fn interrupt_open_steps(&self, deployment: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE deployment_steps SET finished_at = ?, outcome = 'interrupted',
                detail = 'Baton stopped during this step; it ran again after the restart'
             WHERE deployment_id = ? AND finished_at IS NULL",
        )
        .bind(now_millis())
        .bind(deployment)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
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

/// What a new rollout records.
pub struct NewDeployment<'a> {
    pub service: &'a str,
    pub from_version: Option<&'a str>,
    pub to_version: &'a str,
    pub trigger: &'a str,
    pub requested_by: Option<&'a str>,
    pub state: &'a str,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentRow {
    pub id: i64,
    pub service: String,
    pub from_version: Option<String>,
    pub to_version: String,
    pub status: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
    pub state: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub id: i64,
    pub deployment_id: i64,
    pub backend: Option<String>,
    pub step: String,
    pub rollback: bool,
    pub version: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
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
            trigger: "api",
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
            .save_state(second, "running", "{}", None)
            .await
            .unwrap();
        assert_eq!(
            store.next_deployment("api").await.unwrap().unwrap().id,
            second
        );
        assert_eq!(store.unfinished_count("api").await.unwrap(), 2);
        assert!(store.next_deployment("other").await.unwrap().is_none());
        let listed: Vec<i64> = store
            .deployments(None, 10, None)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(listed, [second, first]);
        store
            .save_state(second, "failed", "{}", Some("start failed on s1: boom"))
            .await
            .unwrap();
        let row = store.deployment(second).await.unwrap().unwrap();
        assert_eq!(row.reason.as_deref(), Some("start failed on s1: boom"));
        assert!(row.finished_at.is_some());
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
