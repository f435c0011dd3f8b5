//! The webhook delivery log: every delivery Baton answered, what it decided and why.
//!
//! Invariant: no secret reaches this table. A row keeps the raw body only of a delivery whose
//! signature held, so that an operator can replay it; headers are never stored. A row that
//! keeps a body also keeps the body's SHA-256, and claims it (as it claims its delivery id)
//! for as long as the log keeps the row.

use app::webhooks::DeliveryView;
use sha2::{Digest, Sha256};

use super::{Store, StoreError, now_millis};

/// How many unverified deliveries (bad signatures, unknown senders) each service keeps in its
/// log. Anyone can send those, so each one logged prunes its own service's to the newest; verified
/// deliveries are kept.
const UNVERIFIED_KEPT: i64 = 500;

/// A delivery to write into the log.
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub service: &'a str,
    pub provider: &'a str,
    pub event: Option<&'a str>,
    pub delivery_id: Option<&'a str>,
    pub git_ref: Option<&'a str>,
    pub sha: Option<&'a str>,
    pub verdict: &'a str,
    pub status: u16,
    pub reason: &'a str,
    pub deployment_id: Option<i64>,
    pub replay_of: Option<i64>,
    /// Whether the signature (or token) held.
    pub verified: bool,
    /// The raw body of a verified first delivery, kept for replays; never stored unverified.
    /// A kept body is claimed by its SHA-256: see [`Store::claim_delivery`].
    pub payload: Option<&'a [u8]>,
}

impl NewDelivery<'_> {
    /// The body this row keeps: only a verified delivery's.
    fn kept_payload(&self) -> Option<&[u8]> {
        self.payload.filter(|_| self.verified)
    }
}

/// The lowercase hex SHA-256 of a body, as `body_sha256` holds it.
fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A delivery as the log shows it (without its body).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub service: String,
    pub provider: String,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
    #[sqlx(rename = "ref")]
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    pub verdict: String,
    pub status: i64,
    pub reason: String,
    pub deployment_id: Option<i64>,
    pub replay_of: Option<i64>,
    #[sqlx(try_from = "super::Flag")]
    pub verified: bool,
    pub received_at: i64,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(row: DeliveryRow) -> Self {
        Self {
            id: row.id,
            service: row.service,
            provider: row.provider,
            event: row.event,
            delivery_id: row.delivery_id,
            git_ref: row.git_ref,
            sha: row.sha,
            verdict: row.verdict,
            status: u16::try_from(row.status).unwrap_or(500),
            reason: row.reason,
            rollout: row.deployment_id,
            replay_of: row.replay_of,
            verified: row.verified,
            received_at: row.received_at,
        }
    }
}

/// What [`Store::claim_delivery`] found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The first delivery with this id and this body: the new row's id.
    First(i64),
    /// A verified delivery with the same id, from the same host, was logged before.
    Redelivery(Box<DeliveryRow>),
    /// A verified delivery with the same body was logged before for the service: under
    /// another delivery id or none, or from another host (the same HMAC holds for any of them).
    SameBody(Box<DeliveryRow>),
}

/// The rows that claim their delivery id and body: the conditions of the unique indexes
/// `webhook_deliveries_once` and `webhook_deliveries_body_once`.
const CLAIMED: &str =
    "verified = 1 AND replay_of IS NULL AND verdict <> 'duplicate' AND status < 500";

const COLUMNS: &str = "id, service, provider, event, delivery_id, ref, sha, verdict, status, reason, \
     deployment_id, replay_of, verified, received_at";

impl Store {
    /// Logs a delivery, unless it is a verified first delivery whose id or body was logged
    /// before for its service: then nothing is written and the earlier row is returned (the
    /// delivery id is looked for first). Only verified first deliveries (not replays, which keep
    /// no body) claim their id and body, so a forged request cannot block the real delivery; a
    /// row Baton failed (status 5xx) releases both, so the host's retry is processed.
    pub async fn claim_delivery(&self, new: &NewDelivery<'_>) -> Result<Claim, StoreError> {
        let body_sha256 = new.kept_payload().map(body_sha256);
        // The earlier delivery may release its claim (it failed) between the two statements:
        // then the insert is tried once more.
        for _ in 0..2 {
            if let Some(id) = self.insert_delivery(new, body_sha256.as_deref()).await? {
                if !new.verified {
                    self.prune_unverified(new.service).await?;
                }
                return Ok(Claim::First(id));
            }
            if new.delivery_id.is_some() {
                let earlier = sqlx::query_as::<_, DeliveryRow>(&format!(
                    "SELECT {COLUMNS} FROM webhook_deliveries
                     WHERE service = $1 AND provider = $2 AND delivery_id = $3 AND {CLAIMED}"
                ))
                .bind(new.service)
                .bind(new.provider)
                .bind(new.delivery_id)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(earlier) = earlier {
                    return Ok(Claim::Redelivery(Box::new(earlier)));
                }
            }
            if let Some(hash) = &body_sha256 {
                let earlier = sqlx::query_as::<_, DeliveryRow>(&format!(
                    "SELECT {COLUMNS} FROM webhook_deliveries
                     WHERE service = $1 AND body_sha256 = $2 AND {CLAIMED}"
                ))
                .bind(new.service)
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(earlier) = earlier {
                    return Ok(Claim::SameBody(Box::new(earlier)));
                }
            }
        }
        Err(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// The new row's id, or `None` when a verified first delivery already holds its id or
    /// its body (either unique index: `ON CONFLICT` without a target covers both).
    async fn insert_delivery(
        &self,
        new: &NewDelivery<'_>,
        body_sha256: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (service, provider, event, delivery_id, ref, sha, verdict, status,
                 reason, deployment_id, replay_of, verified, payload, body_sha256, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(new.service)
        .bind(new.provider)
        .bind(new.event)
        .bind(new.delivery_id)
        .bind(new.git_ref)
        .bind(new.sha)
        .bind(new.verdict)
        .bind(i64::from(new.status))
        .bind(new.reason)
        .bind(new.deployment_id)
        .bind(new.replay_of)
        .bind(i64::from(new.verified))
        .bind(new.kept_payload())
        .bind(body_sha256)
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Logs a delivery that claims no id: an unverified request, a redelivery (verdict
    /// `duplicate`) or a replay. Returns the row's id.
    pub async fn log_delivery(&self, new: &NewDelivery<'_>) -> Result<i64, StoreError> {
        match self.claim_delivery(new).await? {
            Claim::First(id) => Ok(id),
            Claim::Redelivery(row) | Claim::SameBody(row) => Ok(row.id),
        }
    }

    /// Records the outcome of a delivery that was `processing` while its rollout was requested.
    pub async fn finish_delivery(
        &self,
        id: i64,
        verdict: &str,
        status: u16,
        reason: &str,
        deployment_id: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET verdict = $1, status = $2, reason = $3, deployment_id = $4
             WHERE id = $5",
        )
        .bind(verdict)
        .bind(i64::from(status))
        .bind(reason)
        .bind(deployment_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A service's deliveries, newest first; `before` pages on to older ones.
    pub async fn deliveries(
        &self,
        service: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE service = $1 AND id < $2
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(service)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delivery(&self, id: i64) -> Result<Option<DeliveryRow>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The raw body of a verified delivery, or of the delivery a replay replayed; `None` if
    /// there is none (an unverified request, or a redelivery, which keeps no body of its own).
    pub async fn delivery_payload(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let payload: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "SELECT COALESCE(d.payload, o.payload) FROM webhook_deliveries d
             LEFT JOIN webhook_deliveries o ON o.id = d.replay_of AND o.verified = 1
             WHERE d.id = $1 AND d.verified = 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(payload.flatten())
    }

    /// Keeps `service`'s newest [`UNVERIFIED_KEPT`] unverified deliveries, and no other
    /// service's rows are touched: what one service is sent never pushes out another's log.
    /// Run after each unverified delivery is logged, so no pattern of deliveries (they are
    /// anyone's to send, and share one id sequence) can keep a service's log growing.
    async fn prune_unverified(&self, service: &str) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE service = $1 AND verified = 0 AND id <= (
                 SELECT id FROM webhook_deliveries WHERE service = $2 AND verified = 0
                 ORDER BY id DESC LIMIT 1 OFFSET $3)",
        )
        .bind(service)
        .bind(service)
        .bind(UNVERIFIED_KEPT)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives the bodies kept before `body_sha256` existed (migration 0005) their hash, oldest
    /// first, so they are claimed as a body logged today is. A body an older row already
    /// claims (the same body was accepted twice before) stays without one. Idempotent; run when
    /// the store opens.
    pub(super) async fn hash_kept_bodies(&self) -> Result<(), StoreError> {
        let mut after = 0_i64;
        loop {
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT id, payload FROM webhook_deliveries
                 WHERE id > $1 AND verified = 1 AND payload IS NOT NULL AND body_sha256 IS NULL
                 ORDER BY id LIMIT 100",
            )
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            let Some((last, _)) = rows.last() else {
                return Ok(());
            };
            after = *last;
            let mut tx = self.pool.begin().await?;
            for (id, payload) in &rows {
                // What SQLite's `UPDATE OR IGNORE` did, on both databases: no hash where it
                // would break `webhook_deliveries_body_once` (both rows claiming the body).
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET body_sha256 = $1 WHERE id = $2 AND NOT (
                         {CLAIMED} AND EXISTS (
                             SELECT 1 FROM webhook_deliveries AS o
                             WHERE o.service = webhook_deliveries.service AND o.body_sha256 = $1
                               AND o.id <> $2 AND o.verified = 1 AND o.replay_of IS NULL
                               AND o.verdict <> 'duplicate' AND o.status < 500))"
                ))
                .bind(body_sha256(payload))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TestDatabase, on_both_databases};

    on_both_databases!(
        a_delivery_id_is_claimed_once_and_only_by_a_verified_delivery,
        a_body_is_claimed_once_per_service_under_any_id_or_host,
        bodies_kept_before_their_hash_was_stored_are_claimed_once_hashed,
        each_service_keeps_its_own_newest_unverified_deliveries,
    );

    fn verified<'a>(delivery_id: Option<&'a str>, payload: &'a [u8]) -> NewDelivery<'a> {
        NewDelivery {
            service: "api",
            provider: "github",
            event: Some("push"),
            delivery_id,
            git_ref: Some("refs/heads/main"),
            sha: Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"),
            verdict: "ignored",
            status: 202,
            reason: "push to another branch",
            deployment_id: None,
            replay_of: None,
            verified: true,
            payload: Some(payload),
        }
    }

    async fn a_delivery_id_is_claimed_once_and_only_by_a_verified_delivery(db: TestDatabase) {
        let store = db.connect().await;
        // A forged request with the id comes first: it is logged, but claims nothing.
        let forged = NewDelivery {
            verified: false,
            verdict: "rejected",
            status: 401,
            ..verified(Some("d-1"), b"")
        };
        store.log_delivery(&forged).await.unwrap();
        let Claim::First(first) = store
            .claim_delivery(&verified(Some("d-1"), b"{}"))
            .await
            .unwrap()
        else {
            panic!("the first verified delivery claims its id");
        };
        let Claim::Redelivery(earlier) = store
            .claim_delivery(&verified(Some("d-1"), b"{}"))
            .await
            .unwrap()
        else {
            panic!("the same id again is a redelivery");
        };
        assert_eq!(earlier.id, first);
        assert_eq!(earlier.verdict, "ignored");
        // Without an id, only the body can be recognised: other bodies are first deliveries.
        for body in [b"{\"n\":1}", b"{\"n\":2}"] {
            assert!(matches!(
                store.claim_delivery(&verified(None, body)).await.unwrap(),
                Claim::First(_)
            ));
        }
        store
            .finish_delivery(first, "deployed", 202, "deploying", None)
            .await
            .unwrap();
        let listed = store.deliveries("api", None, 10).await.unwrap();
        assert_eq!(listed.len(), 4);
        assert!(listed.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(
            store.delivery(first).await.unwrap().unwrap().verdict,
            "deployed"
        );
        assert_eq!(store.delivery_payload(first).await.unwrap().unwrap(), b"{}");
        assert_eq!(store.delivery_payload(listed[3].id).await.unwrap(), None);
    }

    fn claimed(claim: Claim) -> i64 {
        match claim {
            Claim::First(id) => id,
            other => panic!("expected a first delivery, got {other:?}"),
        }
    }

    fn same_body(claim: Claim) -> i64 {
        match claim {
            Claim::SameBody(earlier) => earlier.id,
            other => panic!("expected the same body as an earlier delivery, got {other:?}"),
        }
    }

    async fn a_body_is_claimed_once_per_service_under_any_id_or_host(db: TestDatabase) {
        let store = db.connect().await;
        let body = b"{\"ref\":\"refs/heads/main\"}";
        // A forged request with the body comes first: it is logged, but claims nothing.
        store
            .log_delivery(&NewDelivery {
                verified: false,
                verdict: "rejected",
                status: 401,
                ..verified(Some("forged"), body)
            })
            .await
            .unwrap();
        let first = claimed(
            store
                .claim_delivery(&verified(Some("d-1"), body))
                .await
                .unwrap(),
        );
        // The same body under a new id, under none, and as another host with the same id.
        for again in [
            verified(Some("d-2"), body),
            verified(None, body),
            NewDelivery {
                provider: "gitea",
                ..verified(Some("d-1"), body)
            },
        ] {
            assert_eq!(
                same_body(store.claim_delivery(&again).await.unwrap()),
                first,
                "{again:?}"
            );
        }
        // The same id from the same host is still named a redelivery.
        assert!(matches!(
            store.claim_delivery(&verified(Some("d-1"), body)).await.unwrap(),
            Claim::Redelivery(earlier) if earlier.id == first
        ));
        // Another service's log, another body, and a replay (which keeps no body) are first.
        claimed(
            store
                .claim_delivery(&NewDelivery {
                    service: "worker",
                    ..verified(Some("d-1"), body)
                })
                .await
                .unwrap(),
        );
        claimed(
            store
                .claim_delivery(&verified(Some("d-3"), b"{}"))
                .await
                .unwrap(),
        );
        claimed(
            store
                .claim_delivery(&NewDelivery {
                    replay_of: Some(first),
                    payload: None,
                    ..verified(Some("d-1"), body)
                })
                .await
                .unwrap(),
        );
        // A delivery Baton failed (5xx) releases its body, so the host's retry is processed.
        store
            .finish_delivery(first, "rejected", 500, "internal error", None)
            .await
            .unwrap();
        let retried = claimed(
            store
                .claim_delivery(&verified(Some("d-4"), body))
                .await
                .unwrap(),
        );
        assert_eq!(
            same_body(
                store
                    .claim_delivery(&verified(Some("d-5"), body))
                    .await
                    .unwrap()
            ),
            retried
        );
    }

    async fn bodies_kept_before_their_hash_was_stored_are_claimed_once_hashed(db: TestDatabase) {
        let store = db.connect().await;
        // Two deliveries of one body as Baton logged them before migration 0005 (no hash).
        let body: &[u8] = b"{\"after\":\"6113728f27ae82c7b1a177c8d03f9e96e0adf246\"}";
        let mut old = Vec::new();
        for delivery_id in ["old-1", "old-2"] {
            let placeholder = format!("placeholder {delivery_id}");
            let id = claimed(
                store
                    .claim_delivery(&verified(Some(delivery_id), placeholder.as_bytes()))
                    .await
                    .unwrap(),
            );
            sqlx::query(
                "UPDATE webhook_deliveries SET payload = $1, body_sha256 = NULL WHERE id = $2",
            )
            .bind(body)
            .bind(id)
            .execute(&store.pool)
            .await
            .unwrap();
            old.push(id);
        }
        store.close().await;
        // Opening the store hashes them; the older claims the body, the newer cannot.
        let store = db.connect().await;
        assert_eq!(
            same_body(
                store
                    .claim_delivery(&verified(Some("new"), body))
                    .await
                    .unwrap()
            ),
            old[0]
        );
        assert_eq!(store.delivery_payload(old[1]).await.unwrap().unwrap(), body);
    }

    /// Logs an unverified delivery to `service`; returns its id.
    async fn forged(store: &Store, service: &str) -> i64 {
        store
            .log_delivery(&NewDelivery {
                service,
                verified: false,
                delivery_id: None,
                verdict: "rejected",
                status: 401,
                ..verified(None, b"")
            })
            .await
            .unwrap()
    }

    /// `service`'s log holds exactly the newest [`UNVERIFIED_KEPT`] of the unverified
    /// deliveries `sent` to it (oldest first).
    async fn assert_newest_kept(store: &Store, service: &str, sent: &[i64]) {
        let mut kept: Vec<i64> = store
            .deliveries(service, None, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|row| !row.verified)
            .map(|row| row.id)
            .collect();
        kept.sort_unstable();
        let newest = &sent[sent.len().saturating_sub(UNVERIFIED_KEPT as usize)..];
        assert_eq!(
            kept.len(),
            newest.len(),
            "{service} keeps {} of the {} unverified deliveries sent to it",
            kept.len(),
            sent.len()
        );
        assert_eq!(kept, newest, "{service} keeps its newest");
    }

    async fn each_service_keeps_its_own_newest_unverified_deliveries(db: TestDatabase) {
        let store = db.connect().await;
        let kept_a = claimed(
            store
                .claim_delivery(&verified(Some("real"), b"{}"))
                .await
                .unwrap(),
        );
        let kept_b = claimed(
            store
                .claim_delivery(&NewDelivery {
                    service: "worker",
                    ..verified(Some("real"), b"{}")
                })
                .await
                .unwrap(),
        );
        // A flood at `api`, with every fiftieth id (all rows share one sequence) sent to
        // `worker` instead: whatever the pattern of ids, `api` keeps its newest only.
        let (mut sent_a, mut sent_b) = (Vec::new(), Vec::new());
        let mut next = kept_b + 1;
        for _ in 0..(UNVERIFIED_KEPT * 3) {
            if next % 50 == 0 {
                sent_b.push(forged(&store, "worker").await);
            } else {
                sent_a.push(forged(&store, "api").await);
            }
            next += 1;
        }
        assert_eq!(
            sent_a.last().max(sent_b.last()),
            Some(&(next - 1)),
            "ids are sequential"
        );
        assert_newest_kept(&store, "api", &sent_a).await;
        assert!(sent_b.len() < UNVERIFIED_KEPT as usize);
        assert_newest_kept(&store, "worker", &sent_b).await;

        // Then `worker` is flooded: it keeps its own newest, and api's stay as they were.
        for _ in 0..UNVERIFIED_KEPT {
            sent_b.push(forged(&store, "worker").await);
        }
        assert_newest_kept(&store, "worker", &sent_b).await;
        assert_newest_kept(&store, "api", &sent_a).await;
        for (service, kept) in [("api", kept_a), ("worker", kept_b)] {
            let rows = store.deliveries(service, None, 100_000).await.unwrap();
            assert!(rows.iter().any(|row| row.id == kept), "verified rows stay");
        }
    }
}
