//! The shapes the UI shows, shared by the server (which fills them) and the browser.
//!
//! These are views, already validated on the server, so plain strings are enough here.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub load_balancer: String,
    pub haproxy_backend: String,
    pub backends: Vec<BackendSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSummary {
    pub name: String,
    pub address: String,
}
