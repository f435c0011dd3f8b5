//! Live streams (Server-Sent Events): a rollout's events, and the fleet-wide stream.
//!
//! Invariant: a stream first replays from the database everything after the id the client
//! already has (`Last-Event-ID`), then follows the live feed, skipping ids it already sent. The
//! store publishes in id order after commit, so nothing is sent twice and nothing is lost. A
//! subscriber that falls behind the live buffer catches up from the database. On PostgreSQL the
//! feed carries the events of every replica sharing the database, so a stream on any replica
//! shows a rollout that another one runs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use crate::fleet::Snapshot;
use axum::response::sse::Event;
use futures::{Stream, StreamExt, stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::WatchStream;

use crate::store::{Published, Store, StoreError};

/// How many events one database read replays.
const REPLAY_PAGE: i64 = 500;

struct Follow {
    store: Store,
    live: broadcast::Receiver<Arc<Published>>,
    deployment: Option<i64>,
    last: i64,
    pending: VecDeque<Arc<Published>>,
    /// The last replay filled a whole page, so the database may hold more.
    more: bool,
}

impl Follow {
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        let page = self
            .store
            .events_after(self.deployment, self.last, REPLAY_PAGE)
            .await?;
        self.more = page.len() as i64 == REPLAY_PAGE;
        self.pending
            .extend(page.into_iter().map(|event| Arc::new(event.into())));
        Ok(())
    }

    async fn next(&mut self) -> Option<Arc<Published>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last = event.event.id;
                if self.pending.is_empty() && self.more {
                    // A full page may have more behind it.
                    if let Err(error) = self.catch_up().await {
                        tracing::warn!(%error, "cannot replay events; ending the stream");
                        return None;
                    }
                }
                return Some(event);
            }
            match self.live.recv().await {
                Ok(published) => {
                    let event = &published.event;
                    let wanted = self.deployment.is_none_or(|id| id == event.deployment_id);
                    if wanted && event.id > self.last {
                        self.last = event.id;
                        return Some(published);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        "a live stream fell behind; replaying from the database"
                    );
                    if let Err(error) = self.catch_up().await {
                        tracing::warn!(%error, "cannot replay events; ending the stream");
                        return None;
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Every event of one rollout (or of all, with `None`) after the event id `after`, then live.
pub async fn events(
    store: Store,
    deployment: Option<i64>,
    after: i64,
) -> Result<impl Stream<Item = Arc<Published>> + use<>, StoreError> {
    // Subscribe before reading the backlog, so nothing committed in between is missed.
    let live = store.subscribe();
    let mut follow = Follow {
        store,
        live,
        deployment,
        last: after,
        pending: VecDeque::new(),
        more: false,
    };
    follow.catch_up().await?;
    Ok(stream::unfold(follow, |mut follow| async move {
        follow.next().await.map(|event| (event, follow))
    }))
}

/// An event as SSE: `event: deployment`, with the event id for `Last-Event-ID`.
pub fn deployment_sse(published: &Published) -> Event {
    Event::default()
        .id(published.event.id.to_string())
        .event("deployment")
        .data(&*published.json)
}

/// The fleet's state as SSE: `event: fleet`, without an id (it is state, not history: a client
/// that reconnects gets the current state at once).
pub fn fleet_sse(snapshot: &Snapshot) -> Event {
    Event::default().event("fleet").data(&*snapshot.json)
}

/// The fleet-wide stream: the fleet's state `now`, then whenever it changes, and every rollout
/// event after `after`.
pub fn fleet_stream(
    now: Snapshot,
    events: impl Stream<Item = Arc<Published>> + Send + 'static,
    changes: watch::Receiver<Arc<Snapshot>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = stream::once(async move { fleet_sse(&now) });
    let changes = WatchStream::from_changes(changes).map(|snapshot| fleet_sse(&snapshot));
    let events = events.map(|event| deployment_sse(&event));
    first.chain(stream::select(changes, events)).map(Ok)
}
