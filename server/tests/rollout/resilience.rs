//! What a user notices when a rollout meets the unexpected: a slow request in flight, a drain
//! that times out, Baton killed in the middle, an HAProxy runtime socket that stops answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_server::drivers::AdminState;
use baton_server::drivers::haproxy::HaproxyOptions;
use serde_json::Value;

use crate::support::fleet::{
    Fleet, FleetOptions, assert_all_serving, assert_no_failures, load, spawn_fleet, steps_of,
};
use crate::support::process::process_alive;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The rollout's steps named `step` on `backend`.
fn steps<'a>(deployment: &'a Value, backend: &str, step: &str, rollback: bool) -> Vec<&'a Value> {
    deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["backend"] == backend && s["step"] == step && s["rollback"] == rollback)
        .collect()
}

/// How long a finished step took, in milliseconds.
fn took_ms(step: &Value) -> i64 {
    step["finished_at"].as_i64().unwrap() - step["started_at"].as_i64().unwrap()
}

/// What a slow request answered: status (or the error), body, and when it was sent and when
/// the answer was complete (Unix ms).
struct SlowAnswer {
    status: Result<u16, String>,
    body: String,
    sent_at: i64,
    answered_at: i64,
}

/// Opens `GET /slow?ms=<ms>` through HAProxy on web1 alone: the other servers are drained (by
/// hand, straight on HAProxy) until web1 holds the session, then put back.
async fn slow_request_on_web1(fleet: &Fleet, ms: u64) -> tokio::task::JoinHandle<SlowAnswer> {
    let others: Vec<String> = fleet
        .haproxy_servers()
        .await
        .into_iter()
        .map(|s| s.server)
        .filter(|s| s != "web1")
        .collect();
    for server in &others {
        fleet.haproxy_set(server, AdminState::Drain).await;
    }
    let url = format!("{}/slow?ms={ms}", fleet.frontend);
    let client = fleet.client.clone();
    let slow = tokio::spawn(async move {
        let sent_at = unix_ms();
        let answer = client
            .get(url)
            .timeout(Duration::from_millis(ms + 10_000))
            .send()
            .await;
        let (status, body) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(body) => (Ok(status), body),
                    Err(error) => (Err(format!("HTTP {status}, then {error}")), String::new()),
                }
            }
            Err(error) => (Err(error.to_string()), String::new()),
        };
        SlowAnswer {
            status,
            body,
            sent_at,
            answered_at: unix_ms(),
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let web1 = fleet
            .haproxy_servers()
            .await
            .into_iter()
            .find(|s| s.server == "web1")
            .unwrap();
        if web1.sessions == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow request never reached web1: {web1:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for server in &others {
        fleet.haproxy_set(server, AdminState::Ready).await;
    }
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_when_its_backend_is_drained_completes_on_the_old_version() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let slow = slow_request_on_web1(&fleet, 1500).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    let slow = slow.await.unwrap();

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert_eq!(
        (slow.status, slow.body.as_str()),
        (Ok(200), "v1 web1\n"),
        "the slow request in flight during the drain must complete on the old version"
    );
    assert_no_failures(sent, &failures);

    // Baton waited for it: the wait ended once the request was done, not before (it cannot
    // have been done before 1500 ms after it was sent) and not much after it was answered.
    let wait = steps(&deployment, "web1", "wait_sessions", false);
    assert_eq!(wait.len(), 1, "{deployment:#}");
    assert_eq!(wait[0]["outcome"], "ok", "{deployment:#}");
    let (began, ended) = (
        wait[0]["started_at"].as_i64().unwrap(),
        wait[0]["finished_at"].as_i64().unwrap(),
    );
    assert!(
        ended >= slow.sent_at + 1500 && ended <= slow.answered_at + 500,
        "wait_sessions on web1 ended at {ended}; the slow request was sent at {} to take \
         1500 ms, and answered at {}",
        slow.sent_at,
        slow.answered_at
    );
    assert!(
        !steps_of(&deployment, false)
            .iter()
            .any(|s| s.contains("cut_sessions")),
        "nothing was cut: {:?}",
        steps_of(&deployment, false)
    );
    assert_all_serving(&fleet, "v2").await;
    eprintln!(
        "slow request: {sent} requests, 0 failed; wait_sessions on web1 took {} ms, \
         the request had {} ms to go when it began",
        ended - began,
        slow.sent_at + 1500 - began
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_timeout_the_open_sessions_are_cut_and_counted_and_the_rollout_goes_on() {
    let fleet = spawn_fleet(FleetOptions {
        drain_timeout: Duration::from_secs(1),
        ..FleetOptions::default()
    })
    .await;
    let slow = slow_request_on_web1(&fleet, 20_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let deployed = Instant::now();
    let (_, queued) = fleet.deploy("v2").await;
    let SlowAnswer { status, body, .. } = slow.await.unwrap();
    let cut_after = deployed.elapsed();
    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert!(
        cut_after < Duration::from_secs(5),
        "the 20 s request was cut after the 1 s drain timeout, not after {cut_after:?}"
    );
    assert_ne!(
        (status.clone(), body.as_str()),
        (Ok(200), "v1 web1\n"),
        "the request still open at the drain timeout was cut, not completed"
    );
    assert_no_failures(sent, &failures);

    let wait = steps(&deployment, "web1", "wait_sessions", false);
    assert_eq!(wait.len(), 1, "{deployment:#}");
    assert_eq!(wait[0]["outcome"], "timed_out", "{deployment:#}");
    assert_eq!(
        wait[0]["detail"], "drain timed out after 1s with 1 session(s) still open",
        "{deployment:#}"
    );
    // Exactly the timeout on a paused clock (the executor's tests); on the wall clock at least
    // that, and the request was cut well before it would have ended (above).
    let waited = took_ms(wait[0]);
    assert!(
        waited >= 1000,
        "wait_sessions took {waited} ms with a drain timeout of 1 s"
    );
    let cut = steps(&deployment, "web1", "cut_sessions", false);
    assert_eq!(cut.len(), 1, "{deployment:#}");
    assert_eq!(cut[0]["outcome"], "ok");
    assert_eq!(
        cut[0]["detail"],
        "cut 1 session(s) still open after the drain timeout of 1s"
    );
    for other in ["web2", "web3"] {
        assert_eq!(
            steps(&deployment, other, "wait_sessions", false)[0]["outcome"],
            "ok",
            "{other} had nothing open"
        );
        assert!(steps(&deployment, other, "cut_sessions", false).is_empty());
    }
    assert_all_serving(&fleet, "v2").await;
    eprintln!(
        "drain timeout: {sent} requests, 0 failed; the slow request ended after {cut_after:?} with {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_killed_mid_rollout_leaves_the_backends_running_and_finishes_the_rollout_after_a_restart()
 {
    let mut fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        // Each start takes 1.5 s, so the rollout is surely in web1's wait_healthy when killed.
        backend_env: &[("DEMO_START_DELAY_MS", "1500")],
        ..FleetOptions::default()
    })
    .await;
    let before: Vec<(i32, String)> = ["web1", "web2", "web3"]
        .iter()
        .map(|b| fleet.recorded_process(b).unwrap())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_for_step(id, "web1 wait_healthy", |s| {
            s["backend"] == "web1" && s["step"] == "wait_healthy" && s["outcome"].is_null()
        })
        .await;
    let (new_web1, version) = fleet.recorded_process("web1").unwrap();
    assert_eq!(version, "v2");
    assert_ne!(new_web1, before[0].0);

    fleet.kill_baton();
    let killed = Instant::now();
    // Without Baton the backends carry on: web2 and web3 serve v1, web1's v2 keeps starting.
    assert!(
        process_alive(new_web1),
        "web1's new process died with Baton"
    );
    for (pid, _) in &before[1..] {
        assert!(process_alive(*pid), "a backend died with Baton");
    }
    let answer = fleet.through_haproxy().await.unwrap();
    assert!(answer.starts_with("v1 "), "{answer}");

    fleet.restart_baton().await;
    let dead_for = killed.elapsed();
    // Restarting Baton stopped or restarted nothing: the same processes still run (web2 and
    // web3 until the resumed rollout itself comes to stop them).
    let after_restart = ["web2", "web3"].map(|b| fleet.recorded_process(b));
    let resumed = fleet.get(&format!("/api/deployments/{id}")).await.unwrap();
    assert_eq!(
        fleet.recorded_process("web1").unwrap(),
        (new_web1, "v2".into())
    );
    assert!(process_alive(new_web1));
    for (index, backend) in ["web2", "web3"].into_iter().enumerate() {
        if steps(&resumed, backend, "stop", false).is_empty() {
            assert_eq!(
                after_restart[index].as_ref(),
                Some(&before[index + 1]),
                "{backend}"
            );
            assert!(process_alive(before[index + 1].0), "{backend}");
        }
    }

    let deployment = fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    assert_eq!(
        deployment["status"],
        "succeeded",
        "{deployment:#}\nBaton's log:\n{}",
        fleet.baton_log()
    );
    let interrupted: Vec<String> = steps_of(&deployment, false)
        .into_iter()
        .filter(|s| s.ends_with(" interrupted"))
        .collect();
    assert_eq!(interrupted, ["web1 wait_healthy interrupted"]);
    let healthy = steps(&deployment, "web1", "wait_healthy", false);
    assert_eq!(healthy.len(), 2, "the interrupted step ran again");
    assert_eq!(healthy[1]["outcome"], "ok");
    // The resumed rollout adopted web1's new process rather than starting another, and each
    // backend was started and stopped only by the rollout's own steps: its log shows one start
    // of v1 (before the rollout), one stop of it, and one start of v2.
    assert_eq!(fleet.recorded_process("web1").unwrap().0, new_web1);
    for backend in ["web1", "web2", "web3"] {
        let log =
            std::fs::read_to_string(fleet.state_dir().join("web").join(format!("{backend}.log")))
                .unwrap();
        let count = |what: &str| log.matches(what).count();
        assert_eq!(
            (
                count("[baton] starting version v1 "),
                count(" got SIGTERM"),
                count("[baton] starting version v2 ")
            ),
            (1, 1, 1),
            "{backend}'s log:\n{log}"
        );
    }
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v2").await;
    eprintln!(
        "Baton SIGKILLed: {sent} requests through HAProxy, 0 failed; Baton was down for {dead_for:?}"
    );
}

/// HAProxy's runtime API as the silent-socket tests configure it: a command that gets no answer
/// fails after 3 × 500 ms and backoffs of 100 and 200 ms, 1.8 s in all (the defaults take 8.7 s).
const IMPATIENT: HaproxyOptions = HaproxyOptions {
    command_timeout: Duration::from_millis(500),
    attempts: 3,
    backoff: Duration::from_millis(100),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_socket_that_stops_answering_fails_the_rollout_naming_the_node_and_nothing_stays_out()
 {
    let fleet = spawn_fleet(FleetOptions {
        socket_proxy: true,
        // web1's new version starts in 1 s: time to silence the socket during wait_healthy.
        backend_env: &[("DEMO_START_DELAY_MS", "1000")],
        haproxy: Some(IMPATIENT),
        ..FleetOptions::default()
    })
    .await;
    let proxy = fleet.proxy.as_ref().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_for_step(id, "web1 wait_healthy", |s| {
            s["backend"] == "web1" && s["step"] == "wait_healthy" && s["outcome"].is_null()
        })
        .await;

    // The next HAProxy command (lb_check's drain) gets no answer; once that step has failed,
    // the socket answers again and the rollback can put web1 back.
    proxy.set_silent(true);
    let silenced = Instant::now();
    let failed = fleet
        .wait_for_step(id, "a failed step", |s| s["outcome"] == "failed")
        .await;
    let silent_for = silenced.elapsed();
    proxy.set_silent(false);
    let deployment = fleet.finished(id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();

    let step = steps(&failed, "web1", "lb_check", false);
    assert_eq!(step.len(), 1, "{failed:#}");
    assert_eq!(step[0]["outcome"], "failed", "{failed:#}");
    // The paused-clock tests (the executor's, and the fake HAProxy's against the driver) pin
    // this timing exactly; on the wall clock it is at least the attempts' 1.8 s.
    let took = took_ms(step[0]);
    assert!(
        took >= 1_800,
        "three attempts of 500 ms with backoff take 1.8 s, not {took} ms"
    );
    assert!(proxy.unanswered() >= 3, "{} unanswered", proxy.unanswered());

    assert_eq!(deployment["status"], "rolled_back", "{deployment:#}");
    let node = format!("unix:{}", fleet.dir.path().join("proxy.sock").display());
    let reason = deployment["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "lb_check failed on web1: HAProxy node {node} did not answer after 3 attempts: no answer within 500ms"
        )),
        "{reason}"
    );
    assert_eq!(
        steps_of(&deployment, true).last().unwrap(),
        "web1 confirm_up ok"
    );
    assert_no_failures(sent, &failures);
    assert_all_serving(&fleet, "v1").await;
    eprintln!(
        "silent socket: {sent} requests, 0 failed; the failed step took {took} ms, the rollout failed {silent_for:?} after the socket went silent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_waits_for_a_silent_haproxy_instead_of_leaving_a_backend_out() {
    let fleet = spawn_fleet(FleetOptions {
        socket_proxy: true,
        backend_env: &[("DEMO_START_DELAY_MS", "1000")],
        haproxy: Some(IMPATIENT),
        ..FleetOptions::default()
    })
    .await;
    let proxy = fleet.proxy.as_ref().unwrap();
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_for_step(id, "web1 wait_healthy", |s| {
            s["backend"] == "web1" && s["step"] == "wait_healthy" && s["outcome"].is_null()
        })
        .await;
    proxy.set_silent(true);
    fleet
        .wait_for_step(id, "a failed step", |s| s["outcome"] == "failed")
        .await;
    // HAProxy stays silent until the rollback's first step has outlasted a whole round of the
    // driver's attempts and the second the rollback waits before asking again (1.8 s + 1 s):
    // a rollback without patience would have failed after that round, leaving web1 in maint.
    let during = fleet
        .wait_until(
            id,
            "a rollback step waiting 2.8 s for HAProxy",
            |deployment| {
                deployment["steps"].as_array().is_some_and(|steps| {
                    steps.iter().any(|s| {
                        s["rollback"] == true
                            && s["outcome"].is_null()
                            && unix_ms() - s["started_at"].as_i64().unwrap() > 2_800
                    })
                })
            },
        )
        .await;
    assert_eq!(
        during["status"], "running",
        "the rollback is still waiting: {during:#}"
    );
    assert!(
        !steps_of(&during, true)
            .iter()
            .any(|s| s.ends_with(" failed")),
        "no rollback step gave up: {during:#}"
    );
    proxy.set_silent(false);

    let deployment = fleet.finished(id).await;
    assert_eq!(deployment["status"], "rolled_back", "{deployment:#}");
    assert_eq!(
        steps_of(&deployment, true).last().unwrap(),
        "web1 confirm_up ok"
    );
    assert_all_serving(&fleet, "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_does_not_starve_a_running_rollout_of_file_descriptors() {
    // The flood's sockets are this process's too.
    baton_server::listener::raise_open_file_limit().unwrap();
    let fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        // Like `ulimit -n 512`: without a cap on connections, a few hundred clients would take
        // every descriptor Baton has.
        nofile_limit: Some(512),
        backend_env: &[("DEMO_START_DELAY_MS", "700")],
        ..FleetOptions::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&fleet, stop.clone());
    let (status, queued) = fleet.deploy("v2-slowstart").await;
    assert_eq!(status, 202, "{queued}");

    // Idle connections to Baton, as many as it and the kernel's accept queue take (at most
    // 800), held while the rollout runs.
    let address = fleet.baton.trim_start_matches("http://").to_owned();
    let mut flood = Vec::new();
    while flood.len() < 800 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(&address),
        )
        .await
        {
            Ok(Ok(stream)) => flood.push(stream),
            // The accept queue is full.
            _ => break,
        }
    }
    // Baton keeps 256 of its 512 descriptors for itself: it serves 256 connections at once.
    assert!(
        flood.len() > 256,
        "only {} connections opened: the flood must exceed what Baton serves at once",
        flood.len()
    );
    // Watched on HAProxy's socket and in the backends' records: Baton's API waits behind the
    // flood like any other client.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let versions: Vec<Option<String>> = ["web1", "web2", "web3"]
            .iter()
            .map(|backend| fleet.recorded_process(backend).map(|(_, version)| version))
            .collect();
        let servers = fleet.haproxy_servers().await;
        let all_up = servers.len() == 3 && servers.iter().all(|s| s.is_up());
        if all_up
            && versions
                .iter()
                .all(|v| v.as_deref() == Some("v2-slowstart"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish while {} connections were open: versions {versions:?}, servers {servers:?}\nBaton's log:\n{}",
            flood.len(),
            fleet.baton_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(flood);

    let deployment = fleet.finished(queued["id"].as_i64().unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.await.unwrap();
    assert_eq!(deployment["status"], "succeeded", "{deployment:#}");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
