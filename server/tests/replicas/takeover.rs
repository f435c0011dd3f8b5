//! The leader lost in the middle of a rollout: SIGKILLed (the follower takes over within the
//! lease and finishes the rollout) or frozen with SIGSTOP until the follower took over (once it
//! runs again it does nothing more, and follows).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::fleet::{assert_all_serving, assert_no_failures, load, steps_of};
use crate::support::postgres;
use crate::support::replicas::spawn_replicas;
use crate::{LEASE, assert_each_backend_replaced_once, slow_starts, wait_for_web1_starting};

/// The takeover detail the steps a new leader ran again carry.
fn taken_over_by(replica: &str, term: i64) -> String {
    format!(
        "the leading replica stopped during this step; {replica} took over (term {term}) and ran it again"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_rollout_is_replaced_within_the_lease_and_the_rollout_finishes_with_no_failed_request()
 {
    let mut replicas = spawn_replicas(&postgres::fresh_database(), LEASE, slow_starts()).await;
    let term = replicas.leader().await.term;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&replicas.fleet, stop.clone());
    // Asked of the follower, b: the leader, a, finds it in the queue and runs it.
    let (status, queued) = replicas.fleet.deploy("v2").await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_i64().unwrap();
    wait_for_web1_starting(&replicas.fleet, id).await;

    replicas.fleet.kill_baton();
    let killed = Instant::now();
    let lease = replicas
        .wait_leader("b", LEASE + Duration::from_secs(2))
        .await;
    let took = killed.elapsed();
    assert_eq!(lease.term, term + 1);
    // The lease a renewed last ran out at most a lease after the kill; b asked at once.
    assert!(
        took <= LEASE + Duration::from_millis(500),
        "b took over {took:?} after a was killed, with a lease of {LEASE:?}"
    );

    let deployment = replicas.fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    assert_eq!(
        deployment["status"],
        "succeeded",
        "{deployment:#}\n{}",
        replicas.logs()
    );
    assert_no_failures(sent, &failures);
    assert_each_backend_replaced_once(&replicas.fleet);
    assert_all_serving(&replicas.fleet, "v2").await;

    // The history shows the takeover: an event, and the step b ran again.
    assert_eq!(replicas.takeovers(id).await, [("b".to_owned(), term + 1)]);
    let interrupted: Vec<&serde_json::Value> = deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "interrupted")
        .collect();
    assert_eq!(interrupted.len(), 1, "{:?}", steps_of(&deployment, false));
    assert_eq!(
        (&interrupted[0]["backend"], &interrupted[0]["step"]),
        (&"web1".into(), &"wait_healthy".into())
    );
    assert_eq!(interrupted[0]["detail"], taken_over_by("b", term + 1));
    eprintln!(
        "leader SIGKILLed: b took over after {took:?} (lease {LEASE:?}); {sent} requests, 0 failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_until_the_follower_took_over_does_nothing_more_when_it_runs_again_and_follows()
 {
    let replicas = spawn_replicas(&postgres::fresh_database(), LEASE, slow_starts()).await;
    let term = replicas.leader().await.term;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&replicas.fleet, stop.clone());
    let (_, queued) = replicas.fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    wait_for_web1_starting(&replicas.fleet, id).await;

    // a stops in the middle of web1's wait_healthy, holding what it knew then.
    replicas.freeze_a();
    replicas
        .wait_leader("b", LEASE + Duration::from_secs(2))
        .await;
    // b carries the rollout on; a runs again while b is at web2.
    replicas
        .fleet
        .wait_for_step(id, "b working on web2", |s| s["backend"] == "web2")
        .await;
    let a_before = replicas.log_a().len();
    replicas.thaw_a();

    let deployment = replicas.fleet.finished(id).await;
    // a has had time to do whatever it would (it renews every third of a lease).
    let deadline = Instant::now() + LEASE;
    while !replicas.log_a()[a_before..].contains("to=Follower") {
        assert!(
            Instant::now() < deadline,
            "a did not become a follower once it ran again\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(LEASE / 2).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(
        deployment["status"],
        "succeeded",
        "{deployment:#}\n{}",
        replicas.logs()
    );
    let lease = replicas.leader().await;
    assert_eq!((lease.holder.as_str(), lease.term), ("b", term + 1));
    // a did not act once it ran again: no step of its own was recorded or changed (the step
    // it was in stays interrupted, as b left it), it logged none, and HAProxy and the
    // backends show only b's rollout: each backend replaced once, all in rotation on v2.
    let a_after = replicas.log_a()[a_before..].to_owned();
    assert!(
        !a_after.contains("rollout step") && !a_after.contains("rollout finished"),
        "a went on with the rollout after it ran again:\n{a_after}"
    );
    let web1_healthy: Vec<(String, String)> = deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["backend"] == "web1" && s["step"] == "wait_healthy" && s["rollback"] == false)
        .map(|s| {
            (
                s["outcome"].as_str().unwrap_or("running").to_owned(),
                s["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        web1_healthy,
        [
            ("interrupted".to_owned(), taken_over_by("b", term + 1)),
            ("ok".to_owned(), String::new())
        ]
    );
    assert_eq!(replicas.takeovers(id).await, [("b".to_owned(), term + 1)]);
    assert_each_backend_replaced_once(&replicas.fleet);
    assert_all_serving(&replicas.fleet, "v2").await;
    assert_no_failures(sent, &failures);
    eprintln!("leader frozen: {sent} requests, 0 failed; a stood down when it ran again");
}
