//! Baton's server: configuration, storage, HTTP, and (later) the rollout executor and drivers.

pub mod api;
pub mod auth;
pub mod client;
pub mod domain;
pub mod drivers;
pub mod fleet;
pub mod hosts;
pub mod http;
pub mod http_error;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod origin;
pub mod replica;
pub mod rollout;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod webhooks;

#[cfg(test)]
mod tidy;
