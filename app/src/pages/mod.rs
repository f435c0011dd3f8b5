//! One module per page, and the pieces they share.

mod deployments;
mod format;
mod live;
mod not_found;
mod redeploy;
mod rollout;
mod services;
mod timeline;
mod widgets;

pub use deployments::DeploymentsPage;
pub use not_found::NotFound;
pub use rollout::RolloutPage;
pub use services::ServicesPage;
pub use widgets::{provide_clock, provide_hydrated};
