//! What every test binary and benchmark needs to run Baton for real: a typed builder of its
//! configuration, HAProxy in front of backends, Baton in this process or as `baton serve`, a
//! fleet of all three, webhook deliveries signed the way each git host signs them, a private
//! PostgreSQL server (`postgres`, also used by the store's unit tests), and two Baton replicas
//! sharing one (`replicas`).
//!
//! Included by path (`#[path = "../support/mod.rs"] mod support;`, from a bench
//! `#[path = "../tests/support/mod.rs"]`) rather than built as a crate, so that
//! `env!("CARGO_BIN_EXE_baton")` still names this package's binaries and no workspace member is
//! added for tests alone. Every process started here is killed by PID when the value that
//! started it is dropped, also when a test fails.

// Each binary uses its own part of this module; the rest is dead code there.
#![allow(dead_code)]

pub mod baton;
pub mod bench;
pub mod config;
pub mod fleet;
pub mod haproxy;
pub mod hosts;
pub mod postgres;
pub mod process;
pub mod replicas;
pub mod socket_proxy;
pub mod webhooks;
