//! Two Batons sharing one PostgreSQL database in front of one fleet: `spawn_replicas()` starts
//! the fleet (HAProxy, demo-app backends) with replica `a` as a `baton serve` subprocess, waits
//! until it leads, then starts replica `b` beside it (`baton-b.toml`, the same file but for its
//! name, sharing the state folder, so either can adopt the backends the other started).
//!
//! The fleet's API calls go to `b`, the replica the tests keep alive; `a` is the leader they
//! kill, freeze or let fight over a restarted database. Everything is killed when dropped.

use std::time::{Duration, Instant};

use baton_server::store::{LeaseRow, Store};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::baton::{BatonProcess, ProcessOptions};
use super::config::Server;
use super::fleet::{Fleet, FleetOptions, spawn_fleet};
use super::process::free_port;

/// What the replicas log: the lease's and roles' lines are at `info`.
pub const LOG_FILTER: &str = "info,sqlx=warn,tower_http=warn";

// Fields drop in the order declared: `b` stops before the fleet (and `a`, HAProxy, the
// backends and the folder with it).
pub struct Replicas {
    pub b: BatonProcess,
    /// Its Baton is replica `a`; its requests go to `b`.
    pub fleet: Fleet,
    /// The replicas' database, to read the lease and the events as they are stored.
    pub store: Store,
    pub lease: Duration,
}

/// The fleet of `options` (its Baton a subprocess) led by replica `a` on `database_url`, with
/// `b` following; both with leases of `lease`.
pub async fn spawn_replicas(
    database_url: &str,
    lease: Duration,
    options: FleetOptions,
) -> Replicas {
    let server = |name: &str| Server {
        database_url: Some(database_url.to_owned()),
        replica: Some(name.to_owned()),
        lease: Some(lease),
    };
    let mut fleet = spawn_fleet(FleetOptions {
        baton_process: true,
        log_filter: Some(LOG_FILTER),
        server: Some(server("a")),
        ..options
    })
    .await;
    let store = Store::connect(database_url)
        .await
        .expect("the database opens");
    // `a` brought the backends up, so it leads; `b` starts after that, and follows.
    let b = BatonProcess::start(
        &fleet
            .config
            .clone()
            .server(server("b"))
            .write_as(fleet.dir.path(), "baton-b.toml"),
        &format!("127.0.0.1:{}", free_port()),
        ProcessOptions {
            nofile: None,
            log_filter: Some(LOG_FILTER),
        },
    );
    fleet.baton = b.url();
    let replicas = Replicas {
        b,
        fleet,
        store,
        lease,
    };
    replicas.fleet.wait_baton_alive().await;
    let leader = replicas.leader().await;
    assert_eq!(
        leader.holder,
        "a",
        "a leads the fleet it brought up: {leader:?}\n{}",
        replicas.logs()
    );
    replicas
}

impl Replicas {
    /// The lease as the database holds it now.
    pub async fn leader(&self) -> LeaseRow {
        self.store
            .lease()
            .await
            .expect("the lease can be read")
            .expect("a replica has taken the lease")
    }

    /// Waits until `replica` holds an unexpired lease, and returns it.
    pub async fn wait_leader(&self, replica: &str, within: Duration) -> LeaseRow {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(lease)) = self.store.lease().await
                && lease.holder == replica
                && lease.expires_in_ms > 0
            {
                return lease;
            }
            assert!(
                Instant::now() < deadline,
                "{replica} did not lead within {within:?}: {:?}\n{}",
                self.store.lease().await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Freezes replica `a` (SIGSTOP): it runs no code at all until [`Replicas::thaw_a`].
    pub fn freeze_a(&self) {
        kill(
            Pid::from_raw(self.fleet.baton_pid() as i32),
            Signal::SIGSTOP,
        )
        .expect("a can be stopped");
    }

    /// Lets replica `a` run again (SIGCONT), right where it was frozen.
    pub fn thaw_a(&self) {
        kill(
            Pid::from_raw(self.fleet.baton_pid() as i32),
            Signal::SIGCONT,
        )
        .expect("a can be continued");
    }

    pub fn log_a(&self) -> String {
        self.fleet.baton_log()
    }

    pub fn log_b(&self) -> String {
        self.b.log()
    }

    /// Both replicas' logs, for a failing assertion to show.
    pub fn logs(&self) -> String {
        format!(
            "--- a's log:\n{}\n--- b's log:\n{}",
            self.log_a(),
            self.log_b()
        )
    }

    /// The `(replica, term)` of each takeover stored in rollout `id`'s history, in order.
    pub async fn takeovers(&self, id: i64) -> Vec<(String, i64)> {
        self.store
            .events_after(Some(id), 0, 10_000)
            .await
            .expect("the events can be read")
            .into_iter()
            .filter_map(|event| match event.change {
                app::model::Change::Takeover { replica, term } => Some((replica, term)),
                _ => None,
            })
            .collect()
    }
}
