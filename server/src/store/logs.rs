//! The ends of backends' logs kept with the history: read by the executor when a step failed,
//! shown on the rollout page.

use app::model::StepLog;
use sqlx::Row;

use super::{Store, StoreError, now_millis};

impl Store {
    /// Keeps `lines` of `backend`'s log (read from `source`) with the failed step `step_id`.
    /// Written before the step's outcome, so a page that sees the failure finds the log.
    pub async fn save_step_log(
        &self,
        step_id: i64,
        backend: &str,
        source: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        let lines = serde_json::to_string(lines).expect("strings serialize");
        let mut tx = self.begin_fenced().await?;
        sqlx::query(
            "INSERT INTO step_logs (step_id, deployment_id, backend, source, lines, captured_at)
             SELECT id, deployment_id, $2, $3, $4, $5 FROM deployment_steps WHERE id = $1",
        )
        .bind(step_id)
        .bind(backend)
        .bind(source)
        .bind(lines)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The logs kept with a rollout's steps, oldest step first.
    pub async fn step_logs(&self, deployment: i64) -> Result<Vec<StepLog>, StoreError> {
        let rows = sqlx::query(
            "SELECT step_id, backend, source, lines FROM step_logs
             WHERE deployment_id = $1 ORDER BY step_id",
        )
        .bind(deployment)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("lines")?;
                let lines: Vec<String> =
                    serde_json::from_str(&text).map_err(|error| sqlx::Error::ColumnDecode {
                        index: "lines".into(),
                        source: Box::new(error),
                    })?;
                Ok(StepLog {
                    step_id: row.try_get("step_id")?,
                    backend: row.try_get("backend")?,
                    source: row.try_get("source")?,
                    line_count: lines.len() as u32,
                    lines,
                    withheld: false,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
