//! One module per page, and the pieces they share.

mod accounts;
mod address;
mod audit;
mod deployments;
mod format;
mod gantt;
mod live;
mod login;
mod logs;
mod not_found;
mod redeploy;
mod replica;
mod rollout;
mod services;
mod timeline;
mod traffic;
mod widgets;

pub use accounts::{TokensPage, UsersPage};
pub use audit::AuditLogPage;
pub use deployments::DeploymentsPage;
pub use login::LoginPage;
pub use not_found::NotFound;
pub use replica::{ReplicaBadge, provide_replica, use_replica};
pub use rollout::RolloutPage;
pub use services::ServicesPage;
pub use widgets::{LocalTime, provide_clock, provide_hydrated};
