//! One module per page.

mod deployments;
mod not_found;
mod services;

pub use deployments::DeploymentsPage;
pub use not_found::NotFound;
pub use services::ServicesPage;
