//! The traffic each backend served while a rollout ran: written once a sample by the leader's
//! rollout worker (`rollout/traffic.rs`), read back as per-backend series for the rollout page's
//! chart and `GET /api/deployments/{id}/traffic`.
//!
//! One row per sample with every backend in a compact JSON array, so a sample of 500 backends is
//! one insert of about 10 KB, not 500 rows.

use app::model::{RolloutTraffic, TrafficPoint, TrafficSeries};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, now_millis};

/// What one backend served during one sample, summed over HAProxy's nodes and its servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTraffic {
    pub backend: String,
    pub requests: u64,
    pub errors_5xx: u64,
}

/// A row's `counts` column: `[backend, requests, errors_5xx]` per backend.
type Counts = Vec<(String, u64, u64)>;

impl Store {
    /// Keeps one sample of rollout `deployment`'s traffic, covering the `span_ms` before now.
    /// Stamped with the clock the step rows use, so the chart's step marks line up with it.
    /// Fenced like every write of the leader's worker: a replica that no longer leads writes
    /// nothing.
    pub async fn save_traffic(
        &self,
        deployment: i64,
        span_ms: i64,
        backends: &[BackendTraffic],
    ) -> Result<(), StoreError> {
        let counts: Counts = backends
            .iter()
            .map(|b| (b.backend.clone(), b.requests, b.errors_5xx))
            .collect();
        let counts = serde_json::to_string(&counts).expect("counts serialize");
        let mut tx = self.begin_fenced().await?;
        sqlx::query(
            "INSERT INTO traffic_samples (deployment_id, at, span_ms, counts)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(deployment)
        .bind(now_millis())
        .bind(span_ms)
        .bind(counts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rollout `deployment`'s traffic, one series per backend in the order first sampled; every
    /// series has a point at every sample (0 where a sample did not name the backend).
    pub async fn traffic(&self, deployment: i64) -> Result<RolloutTraffic, StoreError> {
        let rows = sqlx::query(
            "SELECT at, span_ms, counts FROM traffic_samples
             WHERE deployment_id = $1 ORDER BY id",
        )
        .bind(deployment)
        .fetch_all(&self.pool)
        .await?;
        let mut samples = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: String = row.try_get("counts")?;
            let counts: Counts =
                serde_json::from_str(&text).map_err(|error| sqlx::Error::ColumnDecode {
                    index: "counts".into(),
                    source: Box::new(error),
                })?;
            let at: i64 = row.try_get("at")?;
            let span_ms: i64 = row.try_get("span_ms")?;
            samples.push((at, span_ms, counts));
        }
        Ok(series(&samples))
    }
}

/// The samples `(at, span_ms, counts)`, oldest first, as one series per backend.
fn series(samples: &[(i64, i64, Counts)]) -> RolloutTraffic {
    let mut names: Vec<&str> = Vec::new();
    for (_, _, counts) in samples {
        for (backend, _, _) in counts {
            if !names.contains(&backend.as_str()) {
                names.push(backend);
            }
        }
    }
    let backends = names
        .into_iter()
        .map(|name| TrafficSeries {
            backend: name.to_owned(),
            points: samples
                .iter()
                .map(|(at, span_ms, counts)| {
                    let (requests, errors_5xx) = counts
                        .iter()
                        .find(|(backend, _, _)| backend == name)
                        .map_or((0, 0), |&(_, requests, errors)| (requests, errors));
                    // A span is never 0 (the sampler waits between samples); guard anyway,
                    // so a rate is never infinite.
                    let seconds = (*span_ms).max(1) as f64 / 1000.0;
                    TrafficPoint {
                        at: *at,
                        span_ms: *span_ms,
                        requests,
                        errors_5xx,
                        requests_per_s: requests as f64 / seconds,
                        errors_5xx_per_s: errors_5xx as f64 / seconds,
                    }
                })
                .collect(),
        })
        .collect();
    RolloutTraffic { backends }
}

#[cfg(test)]
mod tests {
    use app::model::Trigger;

    use super::super::NewDeployment;
    use super::super::testing::{TestDatabase, on_both_databases};
    use super::*;

    on_both_databases!(
        samples_come_back_as_one_series_per_backend_with_rates_per_second,
        each_rollout_keeps_its_own_traffic,
    );

    fn served(backend: &str, requests: u64, errors_5xx: u64) -> BackendTraffic {
        BackendTraffic {
            backend: backend.to_owned(),
            requests,
            errors_5xx,
        }
    }

    async fn queued(store: &Store) -> i64 {
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

    async fn samples_come_back_as_one_series_per_backend_with_rates_per_second(db: TestDatabase) {
        let store = db.connect().await;
        let id = queued(&store).await;
        let before = now_millis();
        store
            .save_traffic(id, 1_000, &[served("s1", 40, 0), served("s2", 38, 2)])
            .await
            .unwrap();
        // A sample after one HAProxy did not answer covers both seconds; a backend missing
        // from it (its server was gone) served nothing then.
        store
            .save_traffic(id, 2_000, &[served("s2", 90, 0), served("s3", 10, 0)])
            .await
            .unwrap();
        let traffic = store.traffic(id).await.unwrap();
        let names: Vec<&str> = traffic
            .backends
            .iter()
            .map(|s| s.backend.as_str())
            .collect();
        assert_eq!(names, ["s1", "s2", "s3"]);
        let s2 = &traffic.backends[1].points;
        assert_eq!(s2.len(), 2);
        assert_eq!(
            (s2[0].requests, s2[0].errors_5xx, s2[0].requests_per_s),
            (38, 2, 38.0)
        );
        assert_eq!(s2[0].errors_5xx_per_s, 2.0);
        assert_eq!((s2[1].requests, s2[1].requests_per_s), (90, 45.0));
        assert!(s2[0].at >= before && s2[1].at >= s2[0].at, "{s2:?}");
        let s1 = &traffic.backends[0].points;
        assert_eq!((s1[1].requests, s1[1].requests_per_s), (0, 0.0));
        assert_eq!(s1[1].at, s2[1].at);
    }

    async fn each_rollout_keeps_its_own_traffic(db: TestDatabase) {
        let store = db.connect().await;
        let (first, second) = (queued(&store).await, queued(&store).await);
        store
            .save_traffic(first, 1_000, &[served("s1", 5, 0)])
            .await
            .unwrap();
        assert_eq!(
            store.traffic(second).await.unwrap(),
            RolloutTraffic::default()
        );
        assert_eq!(
            store.traffic(first).await.unwrap().backends[0].points.len(),
            1
        );
    }
}
