//! The server functions the UI calls, and the context through which the server answers them.

use leptos::prelude::*;

use crate::model::ServiceSummary;

/// What the server provides to the UI's server functions, through Leptos context.
///
/// The server crate implements [`FleetSource`]; the UI never sees configuration files, the
/// database or the load balancer directly.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct Fleet(pub std::sync::Arc<dyn FleetSource>);

#[cfg(feature = "ssr")]
pub trait FleetSource: Send + Sync + 'static {
    /// Every configured service, in configuration order.
    fn services(&self) -> Vec<ServiceSummary>;
}

/// Lists the configured services with their backends.
#[server(prefix = "/rpc", endpoint = "list_services")]
pub async fn list_services() -> Result<Vec<ServiceSummary>, ServerFnError> {
    let Fleet(fleet) = use_context::<Fleet>()
        .ok_or_else(|| ServerFnError::new("the fleet is not available on this server"))?;
    Ok(fleet.services())
}
