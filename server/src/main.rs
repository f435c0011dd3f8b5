//! The `baton` command: serve the web UI and API, check a configuration, roll out through a
//! running Baton, and manage users and API tokens directly in the database.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use app::model::{ControlAction, RolloutStatus};
use baton_server::auth::accounts::{self, TokenRef};
use baton_server::auth::{Actor, Password, Role};
use baton_server::client::{self, Client};
use baton_server::hosts::check::check_hosts;
use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
use baton_server::store::Store;
use baton_server::{listener, telemetry};
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
        /// The API token to send as `Authorization: Bearer` (a deployer's or an admin's).
        /// Prefer the environment variable: other users can see a flag in `ps`.
        #[arg(long, env = "BATON_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Approve the rollout of a service that awaits approval (`approval = "start"`); someone
    /// other than the person or token that requested it must.
    Approve {
        service: String,
        #[command(flatten)]
        api: Api,
    },
    /// Promote the rollout of a service whose canaries await promotion (`canary = N`): the
    /// rest of the backends follow.
    Promote {
        service: String,
        #[command(flatten)]
        api: Api,
    },
    /// Manage the users who sign in to the web UI (directly in the configured database).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API tokens for the CLI and CI (directly in the configured database).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check a configuration file and print what it describes, without starting anything.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
}

/// Which Baton to ask, and with what token.
#[derive(clap::Args)]
struct Api {
    /// The Baton to ask.
    #[arg(long, env = "BATON_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The API token to send as `Authorization: Bearer` (a deployer's or an admin's).
    /// Prefer the environment variable: other users can see a flag in `ps`.
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user. The password is asked for without echo, or read from standard input (one
    /// line) when that is not a terminal.
    Add {
        name: String,
        /// viewer, deployer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The configuration file (its database is the one changed).
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Give a user a new password (read like `user add` does); ends the user's sessions.
    Passwd {
        name: String,
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Delete a user and end its sessions.
    Delete {
        name: String,
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// List the users and their roles.
    List {
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token and print it (the only time it is shown).
    Create {
        name: String,
        /// viewer, deployer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// List the tokens (never their secrets), with when each was last used.
    List {
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Revoke a token by name or id; it stops working at once.
    Revoke {
        name_or_id: String,
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
}

/// `println!` that gives up quietly when standard output is gone (a closed pipe), rather than
/// panicking with a fleet half started.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config, Backends::Outlive),
        Command::Demo { dir } => demo(dir),
        Command::CheckConfig { config } => check_config(config),
        Command::Deploy {
            service,
            version,
            wait,
            url,
            token,
        } => deploy(&url, token.as_deref(), &service, &version, wait),
        Command::Approve { service, api } => decide(&api, &service, ControlAction::Approve),
        Command::Promote { service, api } => decide(&api, &service, ControlAction::Promote),
        Command::User { command } => user(command),
        Command::Token { command } => token(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "baton: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(config, &EnvOverrides::from_process_env())?)
}

fn deploy(
    url: &str,
    token: Option<&str>,
    service: &str,
    version: &str,
    wait: bool,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = Client::new(url, token)?;
        let queued = client.deploy(service, version).await?;
        let id = queued.id;
        say!("rollout {id} of {service} to {version}: {}", queued.status);
        if !wait {
            return Ok(());
        }
        let ended = client
            .follow(
                id,
                |step| {
                    // Each line is printed as its step ends, so piped output is live too.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", client::step_line(step));
                    let _ = out.flush();
                },
                |waiting| {
                    if let Some(line) = client::waiting_line(waiting) {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                },
            )
            .await?;
        if ended.status == RolloutStatus::Succeeded {
            say!("rollout {id} succeeded: {service} runs {version}");
            return Ok(());
        }
        anyhow::bail!(
            "rollout {id} {}: {}",
            ended.status,
            ended.reason.as_deref().unwrap_or("no reason recorded")
        )
    })
}

/// `baton approve` and `baton promote`.
fn decide(api: &Api, service: &str, action: ControlAction) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = Client::new(&api.url, api.token.as_deref())?;
        let id = client.decide(service, action).await?;
        let done = match action {
            ControlAction::Approve => "approved; it begins",
            ControlAction::Promote => "promoted; the other backends follow",
            ControlAction::Pause | ControlAction::Resume | ControlAction::Abort => "asked",
        };
        say!("rollout {id} of {service}: {done}");
        Ok(())
    })
}

fn check_config(config: PathBuf) -> anyhow::Result<()> {
    let settings = load(&config)?;
    say!("{}: ok", config.display());
    for service in &settings.services {
        say!(
            "service {}: {} backend(s) behind {}/{}",
            service.name,
            service.backends.len(),
            service.load_balancer,
            service.haproxy_backend
        );
    }
    if settings.hosts.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reports = runtime.block_on(check_hosts(&settings));
    for report in &reports {
        say!("{report}");
    }
    let failed = reports.iter().filter(|report| !report.passed()).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} host(s) cannot run their backends (see above)",
            reports.len()
        );
    }
    Ok(())
}

/// The demo fleet: HAProxy on 127.0.0.1:8000 in front of three demo-app backends that Baton
/// starts itself. Everything lives in `dir`. The demo owns its fleet: when it ends (Ctrl-C or
/// SIGTERM), HAProxy and the backends end too, unlike `baton serve`, whose backends outlive it.
fn demo(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let socket = dir.join("haproxy.sock");
    let haproxy_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout check 1s\n\
             frontend demo\n    bind 127.0.0.1:8000\n    default_backend web\n\
             backend web\n    option httpchk GET /alive\n    http-check expect status 200\n    \
             default-server inter 200ms fastinter 100ms downinter 500ms rise 2 fall 2\n\
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
    let (password, token) = demo_credentials(&config)?;
    let _ = std::fs::remove_file(&socket);
    let mut haproxy = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&haproxy_cfg)
        .spawn()
        .map_err(|error| {
            anyhow::anyhow!("cannot start haproxy (apt-get install haproxy): {error}")
        })?;
    say!("Demo: HAProxy serves the demo app on http://127.0.0.1:8000");
    let listen = load(&config)?.server.listen;
    say!(
        "Demo: sign in at http://{listen}/login as {DEMO_ADMIN} with the password {}",
        password.expose()
    );
    say!(
        "Demo: a deployer token for the CLI: export BATON_TOKEN={}",
        token.expose()
    );
    say!(
        "Demo: then try `baton deploy web v2 --wait`, or a broken version: v3-unhealthy, v3-crash, v3-slowstart"
    );
    // Ctrl-C reaches HAProxy too (same process group); a SIGTERM to Baton alone does not.
    let result = serve(config, Backends::StopOnExit);
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    result
}

/// The demo's admin user and API token.
const DEMO_ADMIN: &str = "admin";
const DEMO_TOKEN: &str = "demo-deployer";

/// Gives the demo's admin a fresh random password (adding the user the first time) and
/// replaces the demo's deployer token, so both can be printed: Baton keeps only hashes, so a
/// secret from an earlier run cannot be shown again.
fn demo_credentials(config: &Path) -> anyhow::Result<(Password, baton_server::auth::SecretToken)> {
    let settings = load(config)?;
    on_database(&settings, |store| async move {
        let cli = Actor::cli();
        let password = Password::generate();
        if store.user(DEMO_ADMIN).await?.is_some() {
            accounts::set_password(&store, &cli, None, DEMO_ADMIN, password.clone()).await?;
        } else {
            accounts::add_user(
                &store,
                &cli,
                None,
                DEMO_ADMIN,
                Role::Admin,
                password.clone(),
            )
            .await?;
        }
        if store
            .tokens()
            .await?
            .iter()
            .any(|token| token.name == DEMO_TOKEN && token.revoked_at.is_none())
        {
            accounts::revoke_token(&store, &cli, None, &TokenRef::Name(DEMO_TOKEN.into())).await?;
        }
        let (_, token) =
            accounts::create_token(&store, &cli, None, DEMO_TOKEN, Role::Deployer).await?;
        Ok((password, token))
    })
}

/// Runs `work` against the configuration's database, then closes it.
fn on_database<T, F, Fut>(settings: &Settings, work: F) -> anyhow::Result<T>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::connect(&settings.server.database_url).await?;
        let result = work(store.clone()).await;
        store.close().await;
        result
    })
}

/// A new password: asked twice without echo on a terminal, else one line of standard input.
fn read_password(name: &str) -> anyhow::Result<Password> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: "))?;
        let again = rpassword::prompt_password("The same password again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ: expected the same password twice");
        }
        Password::new(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        Password::new(line.strip_suffix('\r').unwrap_or(line))
    };
    password.check_strength().map_err(anyhow::Error::msg)?;
    Ok(password)
}

fn user(command: UserCommand) -> anyhow::Result<()> {
    let cli = Actor::cli();
    match command {
        UserCommand::Add { name, role, config } => {
            let settings = load(&config)?;
            let password = read_password(&name)?;
            on_database(&settings, |store| async move {
                accounts::add_user(&store, &cli, None, &name, role, password).await?;
                say!("user {name} added with the {role} role");
                Ok(())
            })
        }
        UserCommand::Passwd { name, config } => {
            let settings = load(&config)?;
            let password = read_password(&name)?;
            on_database(&settings, |store| async move {
                accounts::set_password(&store, &cli, None, &name, password).await?;
                say!("user {name} has a new password; their sessions have ended");
                Ok(())
            })
        }
        UserCommand::Delete { name, config } => {
            let settings = load(&config)?;
            on_database(&settings, |store| async move {
                accounts::delete_user(&store, &cli, None, &name).await?;
                say!("user {name} deleted");
                Ok(())
            })
        }
        UserCommand::List { config } => {
            let settings = load(&config)?;
            on_database(&settings, |store| async move {
                let users = store.users().await?;
                if users.is_empty() {
                    say!("no users yet: add one with `baton user add NAME --role admin`");
                }
                for user in users {
                    say!(
                        "{:<24} {:<9} created {} by {}",
                        user.name,
                        user.role,
                        time(user.created_at),
                        user.created_by
                    );
                }
                Ok(())
            })
        }
    }
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    let cli = Actor::cli();
    match command {
        TokenCommand::Create { name, role, config } => {
            let settings = load(&config)?;
            on_database(&settings, |store| async move {
                let (row, token) = accounts::create_token(&store, &cli, None, &name, role).await?;
                say!(
                    "token {} (id {}, {}) created; it is shown only this once:",
                    row.name,
                    row.id,
                    row.role
                );
                say!("{}", token.expose());
                Ok(())
            })
        }
        TokenCommand::List { config } => {
            let settings = load(&config)?;
            on_database(&settings, |store| async move {
                let tokens = store.tokens().await?;
                if tokens.is_empty() {
                    say!(
                        "no tokens yet: create one with `baton token create NAME --role deployer`"
                    );
                }
                for token in tokens {
                    say!(
                        "{:>4} {:<24} {:<9} created {} by {}, last used {}{}",
                        token.id,
                        token.name,
                        token.role,
                        time(token.created_at),
                        token.created_by,
                        token.last_used_at.map_or_else(|| "never".into(), time),
                        token
                            .revoked_at
                            .map(|at| format!(", revoked {}", time(at)))
                            .unwrap_or_default()
                    );
                }
                Ok(())
            })
        }
        TokenCommand::Revoke { name_or_id, config } => {
            let settings = load(&config)?;
            on_database(&settings, |store| async move {
                let row = accounts::revoke_token(&store, &cli, None, &TokenRef::parse(&name_or_id))
                    .await?;
                say!("token {} (id {}) revoked", row.name, row.id);
                Ok(())
            })
        }
    }
}

/// A Unix-milliseconds time as RFC 3339, to the second.
fn time(millis: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Whether the backends outlive Baton.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backends {
    /// `baton serve`: they keep running, and the next Baton adopts them.
    Outlive,
    /// `baton demo`: it started the fleet, so it stops it.
    StopOnExit,
}

fn serve(config: PathBuf, backends: Backends) -> anyhow::Result<()> {
    let settings = load(&config)?;
    let _log = telemetry::init();
    match listener::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut application = Application::build(settings).await?;
        if backends == Backends::StopOnExit {
            application = application.stopping_backends_on_exit();
        }
        let address = application.local_addr();
        tracing::info!(%address, config = %config.display(), "Baton is serving");
        // Scripts and tests read this line to find the port. Not `println!`: it panics when
        // standard output is a closed pipe.
        let _ = writeln!(std::io::stdout(), "Baton is serving on http://{address}");
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            // Stop first: nothing may stand between the signal and the shutdown.
            signals.cancel();
            tracing::info!("shutting down");
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
