//! The `baton` command: serve the web UI and API, or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
use baton_server::telemetry;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Baton: zero-downtime rolling deploys behind HAProxy.
#[derive(Parser)]
#[command(name = "baton", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web UI and the API.
    ///
    /// BATON_LISTEN and BATON_DATABASE_URL override the file's [server] listen and database_url.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Serve the demo fleet's configuration from a folder of its own (written there anew).
    Demo {
        /// Where the demo keeps its configuration and database.
        #[arg(long, default_value = "target/demo")]
        dir: PathBuf,
    },
    /// Roll out a version of a service through a running Baton's API.
    Deploy {
        service: String,
        version: String,
        /// Follow the rollout, print each step as it happens, and exit non-zero unless it
        /// succeeded.
        #[arg(long)]
        wait: bool,
        /// The Baton to ask.
        #[arg(long, env = "BATON_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Check a configuration file and print what it describes, without starting anything.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Demo { dir } => demo(dir),
        Command::CheckConfig { config } => check_config(config),
        Command::Deploy {
            service,
            version,
            wait,
            url,
        } => deploy(&url, &service, &version, wait),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baton: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: &PathBuf) -> anyhow::Result<Settings> {
    Ok(Settings::load(config, &EnvOverrides::from_process_env())?)
}

fn deploy(url: &str, service: &str, version: &str, wait: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let base = url.trim_end_matches('/');
        let response = client
            .post(format!("{base}/api/services/{service}/deployments"))
            .json(&serde_json::json!({ "version": version, "trigger": "cli" }))
            .send()
            .await
            .map_err(|error| anyhow::anyhow!("cannot reach Baton at {base}: {error}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!(
                "Baton refused the rollout ({status}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        let id = body["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("Baton answered without a rollout id: {body}"))?;
        println!(
            "rollout {id} of {service} to {version}: {}",
            body["status"].as_str().unwrap_or("?")
        );
        if !wait {
            return Ok(());
        }
        let mut printed = 0;
        loop {
            let deployment: serde_json::Value = client
                .get(format!("{base}/api/deployments/{id}"))
                .send()
                .await
                .map_err(|error| anyhow::anyhow!("lost Baton at {base}: {error}"))?
                .json()
                .await?;
            let steps = deployment["steps"].as_array().cloned().unwrap_or_default();
            // A step is printed once it has finished, so each line is final.
            while let Some(step) = steps.get(printed).filter(|step| !step["outcome"].is_null()) {
                let took = step["finished_at"].as_i64().unwrap_or(0)
                    - step["started_at"].as_i64().unwrap_or(0);
                println!(
                    "  {}{:<8} {:<15} {:<10} {:>6} ms{}",
                    if step["rollback"].as_bool() == Some(true) {
                        "rollback "
                    } else {
                        ""
                    },
                    step["backend"].as_str().unwrap_or("-"),
                    step["step"].as_str().unwrap_or("?"),
                    step["outcome"].as_str().unwrap_or("?"),
                    took,
                    step["detail"]
                        .as_str()
                        .map(|d| format!("  {d}"))
                        .unwrap_or_default()
                );
                printed += 1;
            }
            match deployment["status"].as_str() {
                Some("succeeded") => {
                    println!("rollout {id} succeeded: {service} runs {version}");
                    return Ok(());
                }
                Some(status @ ("failed" | "rolled_back" | "cancelled")) => {
                    anyhow::bail!(
                        "rollout {id} {status}: {}",
                        deployment["reason"]
                            .as_str()
                            .unwrap_or("no reason recorded")
                    );
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    })
}

fn check_config(config: PathBuf) -> anyhow::Result<()> {
    let settings = load(&config)?;
    println!("{}: ok", config.display());
    for service in &settings.services {
        println!(
            "service {}: {} backend(s) behind {}/{}",
            service.name,
            service.backends.len(),
            service.load_balancer,
            service.haproxy_backend
        );
    }
    Ok(())
}

/// The demo fleet: HAProxy on 127.0.0.1:8000 in front of three demo-app backends that Baton
/// starts itself. Everything lives in `dir`; HAProxy stops when Baton does, the backends do not
/// (as in production: a restarted Baton re-adopts them).
fn demo(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let socket = dir.join("haproxy.sock");
    let haproxy_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             frontend demo\n    bind 127.0.0.1:8000\n    default_backend web\n\
             backend web\n    option httpchk GET /alive\n    \
             default-server inter 500ms fastinter 100ms downinter 500ms rise 2 fall 2\n\
             {}",
            socket.display(),
            (1..=3)
                .map(|i| format!("    server web{i} 127.0.0.1:1808{i} check\n"))
                .collect::<String>()
        ),
    )?;
    let app = std::env::current_exe()?.with_file_name("baton-demo-app");
    let config = dir.join("baton.toml");
    std::fs::write(
        &config,
        include_str!("demo/baton.toml").replace(
            "\"baton-demo-app\"",
            &format!("{:?}", app.display().to_string()),
        ),
    )?;
    let _ = std::fs::remove_file(&socket);
    let mut haproxy = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&haproxy_cfg)
        .spawn()
        .map_err(|error| {
            anyhow::anyhow!("cannot start haproxy (apt-get install haproxy): {error}")
        })?;
    println!("Demo: HAProxy serves the demo app on http://127.0.0.1:8000");
    println!(
        "Demo: try `baton deploy web v2 --wait`, or a broken version: v3-unhealthy, v3-crash, v3-slowstart"
    );
    let result = serve(config);
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    result
}

fn serve(config: PathBuf) -> anyhow::Result<()> {
    let settings = load(&config)?;
    telemetry::init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let application = Application::build(settings).await?;
        let address = application.local_addr();
        tracing::info!(%address, config = %config.display(), "Baton is serving");
        // Scripts and tests read this line to find the port.
        println!("Baton is serving on http://{address}");
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            signals.cancel();
        });
        application.run_until_stopped(shutdown).await?;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
