//! `baton deploy --wait`: what someone at a terminal sees while a rollout runs.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use baton_server::auth::Role;

use crate::support::baton::create_token;
use crate::support::fleet::{Fleet, FleetOptions, spawn_fleet};

/// `baton deploy web <version> --wait` against the fleet's Baton, output piped.
fn deploy_and_wait(fleet: &Fleet, version: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["deploy", "web", version, "--wait"])
        .env("BATON_URL", &fleet.baton)
        .env("BATON_TOKEN", &fleet.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Reads the rest of the output and the exit status, within a minute.
async fn finish(child: Child, mut lines: Vec<String>) -> (bool, Vec<String>, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("baton deploy --wait ends within a minute")
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned),
    );
    (
        output.status.success(),
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The step lines printed, as "backend step outcome" (with "rollback " in front when so).
fn printed_steps(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line.starts_with("  "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[0] {
                "rollback" => format!("rollback {} {} {}", words[1], words[2], words[3]),
                _ => format!("{} {} {}", words[0], words[1], words[2]),
            }
        })
        .collect()
}

/// Every ended step of the rollout as the API records it, in the form of `printed_steps`.
fn recorded_steps(deployment: &Value) -> Vec<String> {
    deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}{} {} {}",
                if s["rollback"] == true {
                    "rollback "
                } else {
                    ""
                },
                s["backend"].as_str().unwrap_or("-"),
                s["step"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_prints_each_step_while_the_rollout_runs_and_exits_zero_on_success() {
    let fleet = spawn_fleet(FleetOptions {
        backend_env: &[("DEMO_START_DELAY_MS", "300")],
        ..FleetOptions::default()
    })
    .await;
    let mut child = deploy_and_wait(&fleet, "v2");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let queued = stdout.next_line().await.unwrap().unwrap();
    let id: i64 = queued
        .strip_prefix("rollout ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the first line names the rollout: {queued:?}"));
    let first_step = stdout.next_line().await.unwrap().unwrap();
    let while_printing = fleet.get(&format!("/api/deployments/{id}")).await.unwrap();
    assert_eq!(
        while_printing["status"], "running",
        "the first step ({first_step:?}) was printed while the rollout still ran"
    );

    let mut lines = vec![queued, first_step];
    while let Some(line) = stdout.next_line().await.unwrap() {
        lines.push(line);
    }
    child.stdout = None;
    let (success, lines, stderr) = finish(child, lines).await;
    assert!(success, "{lines:#?}\n{stderr}");
    assert_eq!(
        lines.last().unwrap(),
        &format!("rollout {id} succeeded: web runs v2")
    );
    let deployment = fleet.finished(id).await;
    assert_eq!(
        sorted(printed_steps(&lines)),
        sorted(recorded_steps(&deployment)),
        "each step printed once: {lines:#?}"
    );
    assert!(printed_steps(&lines).contains(&"web3 confirm_up ok".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_exits_non_zero_with_the_reason_when_the_rollout_is_rolled_back() {
    let fleet = spawn_fleet(FleetOptions {
        start_timeout: Duration::from_secs(2),
        ..FleetOptions::default()
    })
    .await;
    let (success, lines, stderr) = finish(deploy_and_wait(&fleet, "v2-unhealthy"), vec![]).await;
    assert!(!success, "{lines:#?}");
    assert!(
        stderr.contains(
            "rolled_back: wait_healthy failed on web1: not healthy within the start timeout of 2s"
        ),
        "{stderr}"
    );
    let steps = printed_steps(&lines);
    assert!(
        steps.contains(&"web1 wait_healthy failed".to_owned()),
        "{steps:#?}"
    );
    assert_eq!(
        steps.last().unwrap(),
        "rollback web1 confirm_up ok",
        "{steps:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_follows_the_rollout_across_a_baton_restart_without_repeating_a_step() {
    let mut fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        backend_env: &[("DEMO_START_DELAY_MS", "1500")],
        ..FleetOptions::default()
    })
    .await;
    let mut child = deploy_and_wait(&fleet, "v2");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let queued = stdout.next_line().await.unwrap().unwrap();
    let id: i64 = queued.split_whitespace().nth(1).unwrap().parse().unwrap();
    fleet
        .wait_for_step(id, "web1 wait_healthy", |s| {
            s["backend"] == "web1" && s["step"] == "wait_healthy"
        })
        .await;
    fleet.kill_baton();
    tokio::time::sleep(Duration::from_millis(700)).await;
    fleet.restart_baton().await;

    let mut lines = vec![queued];
    while let Some(line) = stdout.next_line().await.unwrap() {
        lines.push(line);
    }
    child.stdout = None;
    let (success, lines, stderr) = finish(child, lines).await;
    assert!(success, "{lines:#?}\n{stderr}\n{}", fleet.baton_log());
    let deployment = fleet.finished(id).await;
    assert_eq!(
        sorted(printed_steps(&lines)),
        sorted(recorded_steps(&deployment)),
        "each step printed once, the interrupted one too: {lines:#?}"
    );
    assert!(
        printed_steps(&lines).contains(&"web1 wait_healthy interrupted".to_owned()),
        "{lines:#?}"
    );
}

/// `baton <approve|promote> web` with `token`; returns (success, stdout, stderr).
async fn decide(fleet: &Fleet, command: &str, token: &str) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args([command, "web"])
            .env("BATON_URL", &fleet.baton)
            .env("BATON_TOKEN", token)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("baton approve or promote ends within 30 s")
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_says_when_the_canary_awaits_promotion_and_baton_promote_goes_on() {
    let fleet = spawn_fleet(FleetOptions {
        canary: Some(1),
        ..FleetOptions::default()
    })
    .await;
    let (success, _, stderr) = decide(&fleet, "promote", &fleet.token).await;
    assert!(!success);
    assert!(
        stderr.contains("web has no rollout awaiting promotion"),
        "{stderr}"
    );

    let mut child = deploy_and_wait(&fleet, "v2");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    while let Some(line) = stdout.next_line().await.unwrap() {
        let waiting = line.contains("awaits promotion");
        lines.push(line);
        if waiting {
            break;
        }
    }
    let id: i64 = lines[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        lines.last().unwrap(),
        &format!("rollout {id} awaits promotion: `baton promote web` goes on, an abort cancels"),
        "{lines:#?}"
    );
    assert!(
        printed_steps(&lines)
            .iter()
            .all(|step| step.starts_with("web1 ") || step.starts_with("- prepare")),
        "only the canary's steps so far: {lines:#?}"
    );

    let (success, out, stderr) = decide(&fleet, "promote", &fleet.token).await;
    assert!(success, "{stderr}");
    assert_eq!(
        out.trim(),
        format!("rollout {id} of web: promoted; the other backends follow")
    );
    while let Some(line) = stdout.next_line().await.unwrap() {
        lines.push(line);
    }
    child.stdout = None;
    let (success, lines, stderr) = finish(child, lines).await;
    assert!(success, "{lines:#?}\n{stderr}");
    assert!(printed_steps(&lines).contains(&"web3 confirm_up ok".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_approve_refuses_the_requester_and_lets_another_deployer_approve() {
    let fleet = spawn_fleet(FleetOptions {
        backends: 2,
        approval: Some("start"),
        ..FleetOptions::default()
    })
    .await;
    let (_, queued) = fleet.deploy("v2").await;
    let id = queued["id"].as_i64().unwrap();
    fleet
        .wait_until(id, "awaiting approval", |d| {
            d["status"] == "awaiting_approval"
        })
        .await;
    let (success, _, stderr) = decide(&fleet, "promote", &fleet.token).await;
    assert!(!success);
    assert!(
        stderr.contains(&format!(
            "web has no rollout awaiting promotion (rollout {id} is awaiting_approval)"
        )),
        "{stderr}"
    );
    let (success, _, stderr) = decide(&fleet, "approve", &fleet.token).await;
    assert!(!success, "the requester cannot approve");
    assert!(
        stderr.contains(&format!(
            "(403 Forbidden): rollout {id} was requested by tests: it needs the approval of another deployer or admin"
        )),
        "{stderr}"
    );

    let reviewer = create_token(&fleet.database_url, "reviewer", Role::Deployer).await;
    let (success, out, stderr) = decide(&fleet, "approve", &reviewer).await;
    assert!(success, "{stderr}");
    assert_eq!(
        out.trim(),
        format!("rollout {id} of web: approved; it begins")
    );
    let done = fleet.finished(id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["approved_by"], "reviewer");
}
