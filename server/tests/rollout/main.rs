//! Rollouts end to end: a real HAProxy, real demo-app backend processes, and Baton between them,
//! with traffic flowing through HAProxy the whole time.

mod backups;
mod cli;
mod controls;
mod demo;
mod events;
mod metrics;
mod resilience;
mod rollouts;
mod soak;
mod strategies;
mod surge;

#[path = "../support/mod.rs"]
mod support;
