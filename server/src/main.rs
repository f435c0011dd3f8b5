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

fn demo(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("baton.toml");
    std::fs::write(&config, include_str!("demo/baton.toml"))?;
    serve(config)
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
