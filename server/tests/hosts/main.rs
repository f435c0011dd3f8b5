//! Backends on other hosts: real OpenSSH servers, each in a network namespace of its own that
//! Baton and HAProxy (in the test's namespace) reach over a veth pair, or on a loopback address
//! of its own where namespaces cannot be made.

mod check;
mod harness;
mod rollouts;

#[path = "../support/mod.rs"]
mod support;
