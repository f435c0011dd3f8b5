//! Which Baton replica leads: the one that runs rollouts and brings backends up.
//!
//! On SQLite there is one replica, and it leads from the start ([`Leadership::single`]). On
//! PostgreSQL several `baton serve` share the database and one leads at a time (the lease and
//! the fencing live in the store); the others serve the UI, the API, event streams and webhooks.
//!
//! Every part of Baton that needs to know reads it here: the rollout workers (act only while
//! leading), `/ready` and the UI (which replica leads, and since when).
//!
//! On PostgreSQL the role comes from the lease task ([`LeaseTask`], in `replica/lease.rs`),
//! and a leader acts under a [`Tenure`]: the store its workers write through is fenced with
//! it and the drivers they act through refuse once it has lapsed (`fleet/leading.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::model::{ReplicaRole, ReplicaView};
use tokio::sync::watch;

use crate::store::{Store, Tenure};

mod lease;
pub use lease::LeaseTask;

/// What this replica is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not known yet: the first attempt to lead has not answered.
    Starting,
    /// This replica leads, under lease `term` (a number that only grows), since `since` (Unix
    /// milliseconds).
    Leader { term: i64, since: i64 },
    /// Another replica leads (`None`: none does right now, or it is not known which).
    Follower { leader: Option<LeaderInfo> },
}

/// The replica that leads, as a follower sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub replica: String,
    /// Unix milliseconds.
    pub since: i64,
}

/// This replica's name and role, as it changes.
#[derive(Debug, Clone)]
pub struct Leadership {
    replica: String,
    role: watch::Receiver<Role>,
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    /// Leads alone, from the start. The role never changes: its sender is kept here, unused.
    Single { _fixed: Arc<watch::Sender<Role>> },
    /// By a lease: the tenure the lease task holds now, if any.
    Leased(Arc<Mutex<Option<Tenure>>>),
}

/// What a leading replica's workers act under.
#[derive(Debug, Clone)]
pub enum Mandate {
    /// The one replica of its database: nothing to check.
    Alone,
    /// A term of the lease: their writes are fenced with it and their drivers refuse once it
    /// has lapsed.
    Lease(Tenure),
}

impl Leadership {
    /// A replica whose role comes from `role`, with no lease behind it: whatever `role` says,
    /// it never gets a [`Mandate`] to act (for tests of what replicas show).
    pub fn new(replica: String, role: watch::Receiver<Role>) -> Self {
        Self {
            replica,
            role,
            mode: Mode::Leased(Arc::default()),
        }
    }

    /// The one replica of a database no other Baton shares (SQLite): it leads from now on.
    pub fn single(replica: String) -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let (sender, role) = watch::channel(Role::Leader { term: 0, since });
        Self {
            replica,
            role,
            mode: Mode::Single {
                _fixed: Arc::new(sender),
            },
        }
    }

    /// A replica of a database other Batons share (PostgreSQL): it leads while it holds the
    /// lease (`lease` long), which the returned task takes and renews; `Starting` until the
    /// task's first attempt answers.
    pub fn leased(store: Store, replica: String, lease: Duration) -> (Self, LeaseTask) {
        let (sender, role) = watch::channel(Role::Starting);
        let tenure = Arc::new(Mutex::new(None));
        let task = LeaseTask::new(store, replica.clone(), lease, sender, tenure.clone());
        let leadership = Self {
            replica,
            role,
            mode: Mode::Leased(tenure),
        };
        (leadership, task)
    }

    /// A replica that leads under `tenure` until the test changes the role it returns (the
    /// lease task is not run): for tests of what acting under a lapsed tenure does.
    #[cfg(test)]
    pub(crate) fn leading_under(tenure: Tenure) -> (watch::Sender<Role>, Self) {
        let (sender, role) = watch::channel(Role::Leader {
            term: tenure.term(),
            since: 0,
        });
        let leadership = Self {
            replica: tenure.replica().to_owned(),
            role,
            mode: Mode::Leased(Arc::new(Mutex::new(Some(tenure)))),
        };
        (sender, leadership)
    }

    /// What this replica may act under as the leader of `term`: `None` unless it holds that
    /// term now.
    pub fn mandate(&self, term: i64) -> Option<Mandate> {
        match &self.mode {
            Mode::Single { .. } => Some(Mandate::Alone),
            Mode::Leased(tenure) => tenure
                .lock()
                .expect("tenure lock")
                .clone()
                .filter(|tenure| tenure.term() == term && tenure.holds())
                .map(Mandate::Lease),
        }
    }

    /// The name of this process among replicas when none is configured: `<hostname>:<pid>`.
    pub fn default_name() -> String {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "baton".to_owned());
        format!("{host}:{}", std::process::id())
    }

    /// This replica's name (`[server] replica`, else `<hostname>:<pid>`).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The role now, and every change.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader { .. })
    }

    /// What the UI and `/ready` show.
    pub fn view(&self) -> ReplicaView {
        let (role, leader, since) = match &*self.role.borrow() {
            Role::Starting => (ReplicaRole::Starting, None, None),
            Role::Leader { since, .. } => (
                ReplicaRole::Leader,
                Some(self.replica.clone()),
                Some(*since),
            ),
            Role::Follower { leader } => (
                ReplicaRole::Follower,
                leader.as_ref().map(|l| l.replica.clone()),
                leader.as_ref().map(|l| l.since),
            ),
        };
        ReplicaView {
            replica: self.replica.clone(),
            role,
            leader,
            leader_since: since,
        }
    }
}
