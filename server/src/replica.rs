//! Which Baton replica leads: the one that runs rollouts and brings backends up.
//!
//! On SQLite there is one replica, and it leads from the start ([`Leadership::single`]). On
//! PostgreSQL several `baton serve` share the database and one leads at a time (the lease and
//! the fencing live in the store); the others serve the UI, the API, event streams and webhooks.
//!
//! Every part of Baton that needs to know reads it here: the rollout workers (act only while
//! leading), `/ready` and the UI (which replica leads, and since when).

use std::time::{SystemTime, UNIX_EPOCH};

use app::model::{ReplicaRole, ReplicaView};
use tokio::sync::watch;

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
    /// A single replica's role never changes: its sender is kept here, unused.
    _fixed: Option<std::sync::Arc<watch::Sender<Role>>>,
}

impl Leadership {
    /// A replica whose role comes from `role` (the lease task sends to its sender).
    pub fn new(replica: String, role: watch::Receiver<Role>) -> Self {
        Self {
            replica,
            role,
            _fixed: None,
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
            _fixed: Some(std::sync::Arc::new(sender)),
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
