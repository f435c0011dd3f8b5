//! `baton check-config` and Baton's fleet view against real hosts: what each host answers, a
//! host that cannot be reached, and a host whose key is not the pinned one.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::baton::spawn_app_with;
use crate::support::config::{Config, Host, Runtime, Service};
use crate::support::hosts::TestHosts;

/// Service `web` with one backend `web<n>` on each host, run by `command` (never started).
fn config(hosts: &TestHosts, known_hosts: &Path, command: &str) -> Config {
    let mut web = Service::new("web").runtime(Runtime::process([command]));
    let mut config = Config::edge();
    for (i, host) in hosts.hosts().iter().enumerate() {
        web = web.backend_on(
            &format!("web{}", i + 1),
            std::net::SocketAddr::new(host.address, 8080),
            &host.name,
        );
        config = config.host(Host {
            name: host.name.clone(),
            ssh: format!("{}@{}:{}", host.ssh_user, host.address, host.ssh_port),
            identity_file: hosts.identity_file().to_owned(),
            known_hosts: known_hosts.to_owned(),
            state_dir: host.state_dir.clone(),
        });
    }
    config.service(web)
}

fn check_config(dir: &Path, config: &Config) -> (bool, String) {
    let path = config.write(dir);
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn check_config_reports_each_host_and_fails_on_one_out_of_reach() {
    let hosts = TestHosts::start(2);
    let dir = tempfile::tempdir().unwrap();
    let demo_app = env!("CARGO_BIN_EXE_baton-demo-app");
    let (ok, output) = check_config(dir.path(), &config(&hosts, hosts.known_hosts(), demo_app));
    assert!(ok, "{output}");
    for (i, host) in hosts.hosts().iter().enumerate() {
        let state = host.state_dir.join("web");
        let expected = format!(
            "host app{n} ({user}@{address}:{port}): reachable, host key ok\n  service web: state dir {state} writable, command {demo_app} found at {demo_app}",
            n = i + 1,
            user = host.ssh_user,
            address = host.address,
            port = host.ssh_port,
            state = state.display(),
        );
        assert!(
            output.contains(&expected),
            "expected {expected:?} in:\n{output}"
        );
        assert!(
            state.is_dir(),
            "the state directory was created on the host"
        );
    }

    // A command the hosts do not have, and a host out of reach.
    hosts.cut(1);
    let (ok, output) = check_config(
        dir.path(),
        &config(&hosts, hosts.known_hosts(), "baton-no-such-program"),
    );
    assert!(!ok, "{output}");
    assert!(
        output.contains("service web: PROBLEM: ") && output.contains("baton-no-such-program"),
        "{output}"
    );
    assert!(
        output.contains("host app2 (") && output.contains("not usable: host app2 is unreachable"),
        "{output}"
    );
    assert!(
        output.contains("2 of 2 host(s) cannot run their backends"),
        "{output}"
    );
    hosts.restore(1);
}

#[test]
fn a_host_whose_key_is_not_the_pinned_one_is_refused_with_how_to_pin_the_right_one() {
    let hosts = TestHosts::start(1);
    let dir = tempfile::tempdir().unwrap();
    let wrong = hosts.wrong_known_hosts();
    let (ok, output) = check_config(dir.path(), &config(&hosts, &wrong, "true"));
    assert!(!ok, "{output}");
    assert!(
        output.contains("host key refused: host app1's key is not the one Baton trusts"),
        "{output}"
    );
    assert!(output.contains("ssh-keyscan -p"), "{output}");
    assert!(
        output.contains(&format!("ssh-keygen -R '[{}]:", hosts.hosts()[0].address))
            || output.contains(&format!("ssh-keygen -R {}", hosts.hosts()[0].address)),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_a_host_with_a_wrong_key_as_unreachable_with_the_reason() {
    let hosts = Arc::new(TestHosts::start(1));
    let wrong = hosts.wrong_known_hosts();
    let app = spawn_app_with(&config(&hosts, &wrong, "true").toml(), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let services: serde_json::Value = app.get("/api/services").await.json().await.unwrap();
        let host = &services[0]["backends"][0]["host"];
        if host["reachable"] == "unreachable" {
            let error = host["last_error"].as_str().unwrap();
            assert!(
                error.contains("key is not the one Baton trusts") && error.contains("ssh-keyscan"),
                "{error}"
            );
            // The server-rendered fleet view groups the backend under its host and says why
            // nothing is known of it, rather than showing a version from before.
            let page = app.get("/").await.text().await.unwrap();
            for shown in [
                "data-host=\"app1\"",
                "data-testid=\"host-reachability\"",
                "host-bad\">unreachable</span>",
                "data-testid=\"host-error\"",
                "unknown: host app1 is unreachable",
            ] {
                assert!(
                    page.contains(shown),
                    "{shown:?} is not on the page:\n{page}"
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "{services:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}
