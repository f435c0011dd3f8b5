//! Rollout events: written in the same transaction as the change they report, then published
//! to live subscribers once committed.
//!
//! Invariant: an event reaches subscribers only after it is in the database, so a stream that
//! replays from the database and then follows the live feed (skipping ids it has sent) sees each
//! event exactly once.

use app::model::{Change, DeploymentEvent, PendingControl};
use sqlx::AnyConnection;

use super::{Store, StoreError, now_millis};

/// A committed event with its JSON, encoded once however many streams send it.
#[derive(Debug)]
pub struct Published {
    pub event: DeploymentEvent,
    pub json: Box<str>,
}

impl From<DeploymentEvent> for Published {
    fn from(event: DeploymentEvent) -> Self {
        let json = serde_json::to_string(&event)
            .expect("an event serializes")
            .into_boxed_str();
        Self { event, json }
    }
}

/// How many events the live feed holds for a slow subscriber before it must catch up from the
/// database.
pub const LIVE_BUFFER: usize = 4096;

fn kind_of(change: &Change) -> &'static str {
    match change {
        Change::Status { .. } => "status",
        Change::Step { .. } => "step",
        Change::Control { .. } => "control",
    }
}

/// Inserts an event for `deployment` inside the caller's transaction.
pub(super) async fn record(
    conn: &mut AnyConnection,
    deployment: i64,
    change: Change,
) -> Result<DeploymentEvent, StoreError> {
    let at = now_millis();
    let data = serde_json::to_string(&change).expect("a change serializes");
    let (id, service): (i64, String) = sqlx::query_as(
        "INSERT INTO deployment_events (deployment_id, service, at, kind, data)
         SELECT id, service, $1, $2, $3 FROM deployments WHERE id = $4
         RETURNING id, service",
    )
    .bind(at)
    .bind(kind_of(&change))
    .bind(&data)
    .bind(deployment)
    .fetch_one(&mut *conn)
    .await?;
    Ok(DeploymentEvent {
        id,
        deployment_id: deployment,
        service,
        at,
        change,
    })
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    deployment_id: i64,
    service: String,
    at: i64,
    data: String,
}

impl EventRow {
    fn into_event(self) -> Option<DeploymentEvent> {
        match serde_json::from_str(&self.data) {
            Ok(change) => Some(DeploymentEvent {
                id: self.id,
                deployment_id: self.deployment_id,
                service: self.service,
                at: self.at,
                change,
            }),
            Err(error) => {
                tracing::error!(event_id = self.id, %error, "skipping an unreadable event");
                None
            }
        }
    }
}

impl Store {
    /// Commits `tx`, then sends its events to live subscribers. Ids grow in commit order (SQLite
    /// has one writer at a time; on PostgreSQL a transaction that writes events waits for its
    /// turn, [`super::Turn::Events`]); holding the lock from commit to send keeps that order on
    /// the live feed too.
    pub(super) async fn commit_and_publish(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Any>,
        events: impl IntoIterator<Item = DeploymentEvent>,
    ) -> Result<(), StoreError> {
        let _order = self.publishing.lock().await;
        tx.commit().await?;
        for event in events {
            // No subscriber is fine: the database has it.
            let _ = self.live.send(std::sync::Arc::new(event.into()));
        }
        Ok(())
    }

    /// The live feed of every event, from now on. A subscriber that falls more than
    /// [`LIVE_BUFFER`] behind gets `Lagged` and catches up with [`Store::events_after`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<Published>> {
        self.live.subscribe()
    }

    /// Up to `limit` events with ids above `after`, oldest first: of one rollout, or of all.
    pub async fn events_after(
        &self,
        deployment: Option<i64>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeploymentEvent>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, deployment_id, service, at, data FROM deployment_events
             WHERE id > $1 AND ($2 IS NULL OR deployment_id = $3) ORDER BY id LIMIT $4",
        )
        .bind(after)
        .bind(deployment)
        .bind(deployment)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(EventRow::into_event).collect())
    }

    /// The newest pause, resume or abort asked of one rollout, with who asked; whether it has
    /// taken effect is for the caller to judge from the rollout's status.
    pub async fn newest_control(
        &self,
        deployment: i64,
    ) -> Result<Option<PendingControl>, StoreError> {
        let row = sqlx::query_as::<_, EventRow>(
            "SELECT id, deployment_id, service, at, data FROM deployment_events
             WHERE deployment_id = $1 AND kind = 'control' ORDER BY id DESC LIMIT 1",
        )
        .bind(deployment)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .and_then(EventRow::into_event)
            .and_then(|event| match event.change {
                Change::Control { action, by } => Some(PendingControl { action, by }),
                _ => None,
            }))
    }

    /// The newest event id of one rollout (0 if none).
    pub async fn last_event_id(&self, deployment: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(id), 0) FROM deployment_events WHERE deployment_id = $1",
        )
        .bind(deployment)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The newest event id of all (0 if none).
    pub async fn latest_event_id(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM deployment_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
