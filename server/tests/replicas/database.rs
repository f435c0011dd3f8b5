//! The database under the replicas: PostgreSQL restarted in the middle of a rollout, and two
//! replicas started at once on an empty database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_server::drivers::ServerState;
use baton_server::store::{LeaseRow, Store};

use crate::support::baton::{BatonProcess, ProcessOptions};
use crate::support::config::{Config, Server};
use crate::support::fleet::{assert_no_failures, load, steps_of};
use crate::support::postgres::{self, OwnPostgres};
use crate::support::process::free_port;
use crate::support::replicas::{LOG_FILTER, spawn_replicas};
use crate::{LEASE, slow_starts, wait_for_web1_starting};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_rollout_the_leader_waits_and_the_rollout_ends_with_every_backend_serving()
 {
    // A restart as `systemctl restart postgresql` does it: away for about a second.
    restart_postgres_mid_rollout(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_longer_than_the_lease_mid_rollout_a_new_term_leads_and_the_rollout_ends_with_every_backend_serving()
 {
    // Every replica loses the lease while the database is away.
    let (term, lease) = restart_postgres_mid_rollout(LEASE + Duration::from_secs(1)).await;
    assert!(lease.term > term, "{lease:?}");
}

/// Stops PostgreSQL in the middle of a rollout for `away` and starts it again; checks that the
/// rollout ends (succeeded, or rolled back) with every backend in rotation and no request
/// failed. Returns the term before, and the lease after.
async fn restart_postgres_mid_rollout(away: Duration) -> (i64, LeaseRow) {
    // A server of this test's own: restarting the shared one would pull it from under the
    // other tests.
    let mut database = OwnPostgres::start();
    let replicas = spawn_replicas(&database.fresh_database(), LEASE, slow_starts()).await;
    let term = replicas.leader().await.term;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&replicas.fleet, stop.clone());
    let (_, queued) = replicas.fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    wait_for_web1_starting(&replicas.fleet, id).await;

    let stopped = Instant::now();
    tokio::task::block_in_place(|| database.stop());
    tokio::time::sleep(away).await;
    tokio::task::block_in_place(|| database.start_again());
    let was_away = stopped.elapsed();

    let deployment = replicas.fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    // It continues (or, had a step failed for want of the database, rolls back): either way
    // it ends, and no backend is left drained or in maintenance.
    assert!(
        matches!(
            deployment["status"].as_str(),
            Some("succeeded" | "rolled_back")
        ),
        "{deployment:#}\n{}",
        replicas.logs()
    );
    let version = if deployment["status"] == "succeeded" {
        "v2"
    } else {
        "v1"
    };
    for server in replicas.fleet.haproxy_servers().await {
        assert_eq!(
            server.status,
            ServerState::Up { changing: None },
            "left out of rotation: {server:?}\n{:?}",
            steps_of(&deployment, false)
        );
    }
    for _ in 0..6 {
        let answer = replicas.fleet.through_haproxy().await.unwrap();
        assert!(answer.starts_with(&format!("{version} ")), "{answer}");
    }
    assert_no_failures(sent, &failures);
    let lease = replicas.leader().await;
    eprintln!(
        "PostgreSQL away for {was_away:?}: the rollout {}, {} leads under term {} (was {term}); \
         {sent} requests, 0 failed",
        deployment["status"], lease.holder, lease.term
    );
    (term, lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_at_once_on_an_empty_database_one_migrates_one_leads_and_neither_fails()
 {
    let url = postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let config = |replica: &str| {
        Config::edge().server(Server {
            database_url: Some(url.clone()),
            replica: Some(replica.to_owned()),
            lease: Some(LEASE),
        })
    };
    let options = ProcessOptions {
        nofile: None,
        log_filter: Some(LOG_FILTER),
    };
    let start = |replica: &str| {
        BatonProcess::start(
            &config(replica).write_as(dir.path(), &format!("baton-{replica}.toml")),
            &format!("127.0.0.1:{}", free_port()),
            options,
        )
    };
    let replicas = [start("a"), start("b")];
    let logs = || {
        replicas
            .iter()
            .map(BatonProcess::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for replica in &replicas {
        loop {
            let alive = client
                .get(format!("{}/alive", replica.url()))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if alive.is_ok_and(|response| response.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica never answered:\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let store = Store::connect(&url).await.unwrap();
    let first = loop {
        if let Some(lease) = store.lease().await.unwrap() {
            break lease;
        }
        assert!(Instant::now() < deadline, "nobody leads:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A few renewals later the same replica leads, under the first term.
    tokio::time::sleep(LEASE).await;
    let lease = store.lease().await.unwrap().unwrap();
    assert_eq!(
        (&lease.holder, lease.term),
        (&first.holder, 1),
        "{}",
        logs()
    );
    assert!(lease.expires_in_ms > 0, "{lease:?}");

    let (leader, follower) = if lease.holder == "a" {
        (&replicas[0], &replicas[1])
    } else {
        (&replicas[1], &replicas[0])
    };
    assert!(leader.log().contains("this replica leads"), "{}", logs());
    assert!(!follower.log().contains("this replica leads"), "{}", logs());
    assert!(follower.log().contains("to=Follower"), "{}", logs());
    for replica in &replicas {
        let log = replica.log();
        assert!(
            !log.contains("ERROR") && !log.contains(" WARN "),
            "a replica logged a problem:\n{log}"
        );
    }
}
