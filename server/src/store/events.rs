//! Rollout events: written in the same transaction as the change they report, then published
//! to live subscribers once committed.
//!
//! Invariant: an event reaches subscribers only after it is in the database, each event once and
//! in id order, so a stream that replays from the database and then follows the live feed
//! (skipping ids it has sent) sees each event exactly once.
//!
//! On SQLite one Baton writes, and it sends its events as it commits them. On PostgreSQL several
//! replicas write to one database, and each must show the events of all: every transaction that
//! writes events also sends `NOTIFY baton_events` (delivered at commit), and each replica then
//! reads from the database every event after the last one it published and publishes those, in
//! id order. Ids grow in commit order (event writers take turns, [`super::Turn::Events`]), so
//! "after the last one published" misses nothing. The same read runs right after this replica's
//! own commits (its streams do not wait for a notification), on each notification, after the
//! listening connection comes back, and every [`SAFETY_NET`] in case a notification was lost.

use std::sync::Arc;
use std::time::Duration;

use app::model::{Change, ControlAction, DeploymentEvent, PendingControl};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::{Backend, Store, StoreError, masked_url, now_millis};

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

/// The PostgreSQL channel that event writers notify (the payload is the newest event's id).
const CHANNEL: &str = "baton_events";

/// How often a replica on PostgreSQL looks for events it was not notified of (a notification
/// sent while its listening connection was down is lost).
pub const SAFETY_NET: Duration = Duration::from_secs(1);

/// How long a replica waits before listening again after its connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// How long one attempt to open the listening connection may take (it is retried while the
/// database is down, with a backoff of at most a fifth of this).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How many events one read publishes (more are read in further pages).
const PUBLISH_PAGE: i64 = 500;

/// Where committed events are published; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Feed {
    live: broadcast::Sender<Arc<Published>>,
    /// The id of the last event published, held from reading (PostgreSQL) or committing
    /// (SQLite) to sending, so that events go out once each and in id order.
    published: Arc<Mutex<i64>>,
    /// On PostgreSQL, the database to listen on for other replicas' events.
    listen: Option<ListenUrl>,
}

/// A PostgreSQL URL, which may hold a password: printed masked.
#[derive(Clone)]
struct ListenUrl(Arc<str>);

impl std::fmt::Debug for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&masked_url(&self.0))
    }
}

impl Feed {
    /// The feed of the database at `url`, publishing from the newest event stored now on (older
    /// ones are history: streams replay them from the database).
    pub(super) async fn new(
        backend: Backend,
        url: &str,
        pool: &AnyPool,
    ) -> Result<Self, StoreError> {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let (published, listen) = match backend {
            Backend::Sqlite => (0, None),
            Backend::Postgres => {
                let newest: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM deployment_events")
                        .fetch_one(pool)
                        .await?;
                (newest, Some(ListenUrl(url.into())))
            }
        };
        Ok(Self {
            live,
            published: Arc::new(Mutex::new(published)),
            listen,
        })
    }
}

fn kind_of(change: &Change) -> &'static str {
    match change {
        Change::Status { .. } => "status",
        Change::Step { .. } => "step",
        Change::Control { .. } => "control",
        Change::Takeover { .. } => "takeover",
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

/// Listens on `url` until the connection fails for good; wakes the publisher once listening
/// (events may have been committed while it was not) and on every notification.
async fn listen_once(pool: &PgPool, wake: &Notify, failing: &mut bool) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    if std::mem::take(failing) {
        tracing::info!("listening for other replicas' events again");
    }
    wake.notify_one();
    loop {
        // `None`: the connection was lost and made again (what was sent meanwhile is lost).
        match listener.try_recv().await? {
            Some(_) | None => wake.notify_one(),
        }
    }
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
    /// Commits `tx`, then sends its events to live subscribers.
    ///
    /// On SQLite, ids grow in commit order (one writer at a time), and holding the feed's lock
    /// from commit to send keeps that order on the live feed too. On PostgreSQL the transaction
    /// notifies the other replicas, and once it is committed this replica publishes everything
    /// after the last event it published, its own events among them ([`Store::publish_committed`]):
    /// an event another replica committed just before has a lower id and goes out first.
    pub(super) async fn commit_and_publish(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        events: impl IntoIterator<Item = DeploymentEvent>,
    ) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let mut published = self.feed.published.lock().await;
                tx.commit().await?;
                for event in events {
                    *published = event.id;
                    // No subscriber is fine: the database has it.
                    let _ = self.feed.live.send(Arc::new(event.into()));
                }
            }
            Backend::Postgres => {
                let Some(newest) = events.into_iter().map(|event| event.id).max() else {
                    tx.commit().await?;
                    return Ok(());
                };
                // Delivered to every listening replica when (and only if) the transaction
                // commits. The payload is a number Baton made, so it is safe to write inline
                // (NOTIFY takes no parameters).
                sqlx::query(&format!("NOTIFY {CHANNEL}, '{newest}'"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                // The change is committed: failing to publish now is not the caller's error.
                // The events are in the database, where the next notification or the safety
                // net finds them, and where every stream replays from.
                if let Err(error) = self.publish_committed().await {
                    tracing::warn!(event_id = newest, %error, "cannot publish a committed event yet; it goes out with the next read");
                }
            }
        }
        Ok(())
    }

    /// Publishes, in id order, every committed event after the last one published (PostgreSQL);
    /// returns how many.
    ///
    /// Cancellation-safe: an event counts as published only once it is sent.
    async fn publish_committed(&self) -> Result<usize, StoreError> {
        let mut published = self.feed.published.lock().await;
        let mut count = 0;
        loop {
            let rows = sqlx::query_as::<_, EventRow>(
                "SELECT id, deployment_id, service, at, data FROM deployment_events
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(*published)
            .bind(PUBLISH_PAGE)
            .fetch_all(&self.pool)
            .await?;
            let full = rows.len() as i64 == PUBLISH_PAGE;
            for row in rows {
                *published = row.id;
                if let Some(event) = row.into_event() {
                    let _ = self.feed.live.send(Arc::new(event.into()));
                    count += 1;
                }
            }
            if !full {
                return Ok(count);
            }
        }
    }

    /// On PostgreSQL, publishes on this replica's live feed the events every replica commits
    /// (this one's too), until `shutdown`: listens for `NOTIFY baton_events` on a connection of
    /// its own, and reads the new events on each notification, after each reconnection, and
    /// every [`SAFETY_NET`]. Returns at once on SQLite, where this Baton is the only writer.
    ///
    /// Cancellation-safe (Baton runs it as a task until shutdown).
    pub async fn follow_other_replicas(self, shutdown: CancellationToken) {
        let Some(url) = self.feed.listen.clone() else {
            return;
        };
        // One connection, held open; made again (within LISTEN_TIMEOUT, else after LISTEN_RETRY)
        // when it breaks.
        let options = match url.0.parse::<PgConnectOptions>() {
            Ok(options) => options,
            Err(error) => {
                tracing::error!(url = ?url, %error, "cannot listen for other replicas' events");
                return;
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(LISTEN_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let wake = Notify::new();
        // Two loops on one task: the listener only wakes the publisher, so a read of the
        // database never stands between the listening connection and its next notification.
        let listen = async {
            let mut failing = false;
            loop {
                match listen_once(&pool, &wake, &mut failing).await {
                    Ok(()) => {}
                    Err(error) if failing => {
                        tracing::debug!(%error, "still cannot listen for other replicas' events");
                    }
                    Err(error) => {
                        failing = true;
                        tracing::warn!(%error, "cannot listen for other replicas' events; retrying every {LISTEN_RETRY:?}");
                    }
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        };
        let publish = async {
            let mut safety_net = tokio::time::interval(SAFETY_NET);
            safety_net.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = safety_net.tick() => {}
                }
                match self.publish_committed().await {
                    Ok(0) => {}
                    Ok(count) => tracing::trace!(count, "published committed events"),
                    Err(error) => tracing::debug!(%error, "cannot read new events yet"),
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = listen => {}
            _ = publish => {}
        }
    }
    /// The live feed of every event, from now on. A subscriber that falls more than
    /// [`LIVE_BUFFER`] behind gets `Lagged` and catches up with [`Store::events_after`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.feed.live.subscribe()
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

    /// Who last asked for `action` of one rollout (`None` inside when the request named no
    /// one); `None` if no one did.
    pub async fn last_asked(
        &self,
        deployment: i64,
        action: ControlAction,
    ) -> Result<Option<Option<String>>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, deployment_id, service, at, data FROM deployment_events
             WHERE deployment_id = $1 AND kind = 'control' ORDER BY id DESC",
        )
        .bind(deployment)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(EventRow::into_event)
            .find_map(|event| match event.change {
                Change::Control { action: asked, by } if asked == action => Some(by),
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

#[cfg(test)]
mod tests {
    use app::model::{ControlAction, Trigger};

    use super::super::NewDeployment;
    use super::super::testing::TestDatabase;
    use super::*;

    /// Two replicas' stores on one fresh PostgreSQL database, the second following the first.
    async fn two_replicas() -> (Store, Store, CancellationToken, tokio::task::JoinHandle<()>) {
        let db = TestDatabase::postgres();
        let a = db.connect().await;
        let b = db.connect().await;
        let stop = CancellationToken::new();
        let following = tokio::spawn(b.clone().follow_other_replicas(stop.clone()));
        (a, b, stop, following)
    }

    super::super::testing::on_both_databases!(the_last_approval_and_promotion_name_who_asked);

    async fn the_last_approval_and_promotion_name_who_asked(db: TestDatabase) {
        let store = db.connect().await;
        let id = queue(&store).await;
        assert_eq!(
            store.last_asked(id, ControlAction::Approve).await.unwrap(),
            None
        );
        for (action, by) in [
            (ControlAction::Approve, Some("bea")),
            (ControlAction::Pause, Some("ops")),
            (ControlAction::Promote, None),
            (ControlAction::Promote, Some("cy")),
        ] {
            store.record_control(id, action, by).await.unwrap();
        }
        assert_eq!(
            store.last_asked(id, ControlAction::Approve).await.unwrap(),
            Some(Some("bea".to_owned()))
        );
        assert_eq!(
            store.last_asked(id, ControlAction::Promote).await.unwrap(),
            Some(Some("cy".to_owned()))
        );
        assert_eq!(
            store.last_asked(id, ControlAction::Abort).await.unwrap(),
            None
        );
        let other = queue(&store).await;
        assert_eq!(
            store
                .last_asked(other, ControlAction::Promote)
                .await
                .unwrap(),
            None
        );
    }

    async fn queue(store: &Store) -> i64 {
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

    /// The next `count` ids on `feed`, within 10 s.
    async fn received(feed: &mut broadcast::Receiver<Arc<Published>>, count: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while ids.len() < count {
                ids.push(feed.recv().await.expect("the feed is open").event.id);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {count} events arrived: {ids:?}", ids.len()));
        ids
    }

    #[tokio::test]
    async fn on_postgres_a_replica_publishes_every_replicas_events_once_in_id_order() {
        let (a, b, stop, following) = two_replicas().await;
        let mut feed = b.subscribe();
        let id = queue(&a).await;
        received(&mut feed, 1).await;
        // Both replicas write at once, each event in its own transaction.
        let writers = (0..100).map(|n| {
            let store = if n % 2 == 0 { a.clone() } else { b.clone() };
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
        let ids = received(&mut feed, 100).await;
        let stored: Vec<i64> = b
            .events_after(Some(id), 0, 1000)
            .await
            .unwrap()
            .iter()
            .skip(1)
            .map(|event| event.id)
            .collect();
        assert_eq!(ids, stored, "B's feed has every event of both, in id order");
        // Nothing more comes: each event went out once.
        let more = tokio::time::timeout(SAFETY_NET * 2, feed.recv()).await;
        assert!(more.is_err(), "an event was sent twice: {more:?}");
        stop.cancel();
        following.await.unwrap();
    }

    #[tokio::test]
    async fn on_postgres_an_event_whose_notification_was_lost_still_arrives() {
        let (a, b, stop, following) = two_replicas().await;
        let mut feed = b.subscribe();
        let id = queue(&a).await;
        received(&mut feed, 1).await;
        // Written as a replica does, but without the notification (as when B's listening
        // connection was down at the time).
        let mut tx = a.begin_turn(super::super::Turn::Events).await.unwrap();
        let event = record(
            &mut tx,
            id,
            Change::Control {
                action: ControlAction::Abort,
                by: None,
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(received(&mut feed, 1).await, [event.id]);
        assert!(
            started.elapsed() < SAFETY_NET * 3,
            "found by the safety net within {SAFETY_NET:?} (took {:?})",
            started.elapsed()
        );
        stop.cancel();
        following.await.unwrap();
    }

    /// How many connections to the server listen for events now.
    async fn listening(store: &Store) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%baton_events%'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap_or(0)
    }

    /// Waits (up to 20 s) until some connection listens for events.
    async fn until_listening(store: &Store) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while listening(store).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nobody listens after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn on_postgres_a_replica_listens_again_after_the_server_restarts() {
        let mut server = super::super::testing::postgres::OwnPostgres::start();
        let url = server.fresh_database();
        let a = Store::connect(&url).await.unwrap();
        let b = Store::connect(&url).await.unwrap();
        let stop = CancellationToken::new();
        let following = tokio::spawn(b.clone().follow_other_replicas(stop.clone()));
        until_listening(&a).await;

        server.stop();
        server.start_again();
        // A fast shutdown ended every connection: whoever listens now listens again.
        until_listening(&a).await;
        let mut feed = b.subscribe();
        let id = queue(&a).await;
        assert_eq!(
            received(&mut feed, 1).await,
            a.events_after(Some(id), 0, 1)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        );
        stop.cancel();
        following.await.unwrap();
    }

    #[test]
    fn the_url_listened_on_prints_without_its_password() {
        let url = ListenUrl("postgres://baton:s3cret@db.internal:5432/baton".into());
        let printed = format!("{url:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("db.internal:5432/baton"), "{printed}");
    }

    #[tokio::test]
    async fn on_sqlite_following_other_replicas_ends_at_once() {
        let db = TestDatabase::sqlite();
        let store = db.connect().await;
        tokio::time::timeout(
            Duration::from_secs(1),
            store.follow_other_replicas(CancellationToken::new()),
        )
        .await
        .expect("nothing to follow: one Baton writes a SQLite file");
    }
}
