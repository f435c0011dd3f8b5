//! Integration tests: Baton served on port 0 with a fresh SQLite file, asked over real HTTP.

mod access;
mod auth_config;
mod lifecycle;
mod metrics;
mod notifications;
mod openapi;
mod pages;
mod replicas;
mod streams;
mod webhooks;

#[path = "../support/mod.rs"]
mod support;
