//! The notification attempts: each try to tell a `[[notify]]` target about a rollout, and how
//! it ended, for admins to read.
//!
//! Invariant: no URL or secret reaches this table; a target is named by the variable that
//! holds its URL.

use app::model::{AttemptVerdict, NotificationAttempt, NotificationEvent, NotifyKind};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_millis, word};

/// How many attempts the table keeps: each one written prunes older ones beyond this.
const KEPT: i64 = 10_000;

/// An attempt to record.
#[derive(Debug, Clone, Copy)]
pub struct NewAttempt<'a> {
    pub service: &'a str,
    pub deployment_id: i64,
    pub event: NotificationEvent,
    pub kind: NotifyKind,
    pub url_env: &'a str,
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub verdict: AttemptVerdict,
}

const COLUMNS: &str =
    "id, at, service, deployment_id, event, kind, url_env, attempt, status, error, verdict";

fn attempt(row: &AnyRow) -> Result<NotificationAttempt, sqlx::Error> {
    Ok(NotificationAttempt {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        service: row.try_get("service")?,
        rollout: row.try_get("deployment_id")?,
        event: word(row, "event")?,
        kind: word(row, "kind")?,
        url_env: row.try_get("url_env")?,
        attempt: u32::try_from(row.try_get::<i64, _>("attempt")?).unwrap_or(u32::MAX),
        status: row
            .try_get::<Option<i64>, _>("status")?
            .and_then(|status| u16::try_from(status).ok()),
        error: row.try_get("error")?,
        verdict: word(row, "verdict")?,
    })
}

impl Store {
    /// Records one attempt, and prunes the oldest beyond the newest [`KEPT`].
    pub async fn record_notification_attempt(
        &self,
        new: &NewAttempt<'_>,
    ) -> Result<i64, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO notification_attempts
                 (at, service, deployment_id, event, kind, url_env, attempt, status, error, verdict)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING id",
        )
        .bind(now_millis())
        .bind(new.service)
        .bind(new.deployment_id)
        .bind(new.event.as_str())
        .bind(new.kind.as_str())
        .bind(new.url_env)
        .bind(i64::from(new.attempt))
        .bind(new.status.map(i64::from))
        .bind(new.error)
        .bind(new.verdict.as_str())
        .fetch_one(&self.pool)
        .await?;
        sqlx::query("DELETE FROM notification_attempts WHERE id <= $1")
            .bind(id - KEPT)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// The newest `limit` attempts, newest first.
    pub async fn notification_attempts(
        &self,
        limit: i64,
    ) -> Result<Vec<NotificationAttempt>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notification_attempts ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(attempt).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewDeployment;
    use crate::store::testing::{TestDatabase, on_both_databases};
    use app::model::Trigger;

    on_both_databases!(attempts_are_read_back_newest_first_with_their_words);

    async fn attempts_are_read_back_newest_first_with_their_words(db: TestDatabase) {
        let store = db.connect().await;
        let deployment = store
            .insert_deployment(&NewDeployment {
                service: "web",
                from_version: None,
                to_version: "v2",
                trigger: Trigger::Api,
                requested_by: None,
                state: "null",
            })
            .await
            .unwrap();
        let first = NewAttempt {
            service: "web",
            deployment_id: deployment,
            event: NotificationEvent::RolledBack,
            kind: NotifyKind::Webhook,
            url_env: "HOOK_URL",
            attempt: 1,
            status: Some(503),
            error: Some("HTTP 503"),
            verdict: AttemptVerdict::WillRetry,
        };
        store.record_notification_attempt(&first).await.unwrap();
        store
            .record_notification_attempt(&NewAttempt {
                attempt: 2,
                status: Some(200),
                error: None,
                verdict: AttemptVerdict::Delivered,
                ..first
            })
            .await
            .unwrap();

        let read = store.notification_attempts(10).await.unwrap();
        let summary: Vec<_> = read
            .iter()
            .map(|a| (a.attempt, a.status, a.verdict, a.event, a.kind))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    2,
                    Some(200),
                    AttemptVerdict::Delivered,
                    NotificationEvent::RolledBack,
                    NotifyKind::Webhook
                ),
                (
                    1,
                    Some(503),
                    AttemptVerdict::WillRetry,
                    NotificationEvent::RolledBack,
                    NotifyKind::Webhook
                ),
            ]
        );
        assert_eq!(read[1].error.as_deref(), Some("HTTP 503"));
        assert_eq!(read[0].rollout, deployment);
        assert_eq!(store.notification_attempts(1).await.unwrap().len(), 1);
    }
}
