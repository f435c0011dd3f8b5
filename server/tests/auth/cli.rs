//! The `baton user` and `baton token` commands, run as the real binary against a configuration
//! file, and a server on the same database that accepts what they created.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::helpers::{Server, spawn};
use crate::support::config::one_web_service;

const PASSWORD: &str = "cli-test admin password 4a7c";

/// Runs `baton ARGS --config CONFIG` with `stdin` piped in (not a terminal).
fn baton(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("BATON_DATABASE_URL")
        .env_remove("BATON_LISTEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the baton binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn users_and_tokens_made_on_the_command_line_work_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_web_service().write(dir.path());

    let added = baton(
        &config,
        &["user", "add", "ada", "--role", "admin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_eq!(text(&added.stdout), "user ada added with the admin role\n");
    let weak = baton(
        &config,
        &["user", "add", "bob", "--role", "viewer"],
        "short\n",
    );
    assert!(!weak.status.success());
    assert!(
        text(&weak.stderr).contains("expected at least 10"),
        "{}",
        text(&weak.stderr)
    );
    let bad_role = baton(&config, &["user", "add", "bob", "--role", "root"], "");
    assert!(text(&bad_role.stderr).contains("expected viewer, deployer or admin"));

    let created = baton(
        &config,
        &["token", "create", "ci", "--role", "deployer"],
        "",
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let stdout = text(&created.stdout);
    let token = stdout
        .lines()
        .find(|line| line.starts_with("baton_"))
        .unwrap_or_else(|| panic!("the token is printed: {stdout}"))
        .to_owned();

    // One line per user and per token: name, role, who created it (and when a token was last
    // used).
    let users = text(&baton(&config, &["user", "list"], "").stdout);
    let ada: Vec<&str> = users
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        (ada[..2].to_vec(), ada[ada.len() - 2..].to_vec()),
        (vec!["ada", "admin"], vec!["by", "cli"]),
        "{users}"
    );
    let tokens = text(&baton(&config, &["token", "list"], "").stdout);
    let ci: Vec<&str> = tokens
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some("ci"))
        .unwrap_or_else(|| panic!("the token ci is listed: {tokens}"))
        .split_whitespace()
        .collect();
    assert_eq!(ci[2], "deployer", "{tokens}");
    assert!(
        ci.ends_with(&["by", "cli,", "last", "used", "never"]),
        "{tokens}"
    );
    for output in [&added, &created] {
        assert!(!text(&output.stderr).contains(PASSWORD));
    }
    assert!(!users.contains(PASSWORD) && !tokens.contains(&token));

    // A server on the same database accepts both.
    let server = spawn(&dir.path().join("baton.db")).await;
    let me: Value = server
        .client
        .get(server.url("/api/me"))
        .headers(Server::bearer(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "ci");
    assert_eq!(me["role"], "deployer");
    server.login("ada", PASSWORD).await;

    // `baton deploy` sends BATON_TOKEN; without one it says how to get one.
    let deploy = async |token: Option<&str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(["deploy", "web", "v2", "--url", &server.url])
            .env_remove("BATON_TOKEN");
        if let Some(token) = token {
            command.env("BATON_TOKEN", token);
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
            .await
            .expect("baton deploy finishes within a minute")
            .unwrap()
    };
    let anonymous = deploy(None).await;
    assert!(!anonymous.status.success());
    let stderr = text(&anonymous.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("set BATON_TOKEN"),
        "{stderr}"
    );
    let deployed = deploy(Some(&token)).await;
    assert!(deployed.status.success(), "{}", text(&deployed.stderr));
    assert_eq!(text(&deployed.stdout), "rollout 7 of web to v2: queued\n");

    let revoked = baton(&config, &["token", "revoke", "ci"], "");
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let refused = server
        .client
        .get(server.url("/api/me"))
        .headers(Server::bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let missing = baton(&config, &["token", "revoke", "ci"], "");
    assert!(text(&missing.stderr).contains("no live token is named \"ci\""));

    let audit = server
        .store
        .audit(&baton_server::store::auth::AuditQuery {
            actor: Some("cli"),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit
        .iter()
        .rev()
        .map(|entry| entry.action.as_str())
        .collect();
    assert_eq!(actions, ["user_create", "token_create", "token_revoke"]);
    assert!(audit.iter().all(|entry| entry.actor_kind == "cli"));
}
