//! Rollouts: the pure engine that decides, and the executor that carries out its decisions.

pub mod engine;
pub mod executor;
pub mod journal;
pub mod traffic;
