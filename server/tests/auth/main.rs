//! Integration tests of login, roles, API tokens, CSRF, security headers and the audit log:
//! the real auth layer and endpoints over real HTTP and SQLite, and the real `baton` binary.

mod access;
mod accounts;
mod cli;
mod helpers;
mod login;
mod logs;
mod pages;

#[path = "../support/mod.rs"]
mod support;
