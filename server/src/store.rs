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

    pub async fn close(&self) {
        self.pool.close().await;
    }
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
