//! The runtimes for backends on other hosts: Baton's agent script run through a [`Shell`].
//!
//! Placeholder: written in the hosts work (issue 12).
// TEMPORARY STUB (not to be committed)
use super::{BackendRun, BackendSpec, Runtime, RuntimeError, shell::Shell};
use crate::domain::{ServiceName, Version};
use crate::settings::StopSignal;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub struct RemoteProcessConfig {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub stop_signal: StopSignal,
    pub stop_timeout: Duration,
    pub state_dir: PathBuf,
    pub prepare: Option<String>,
}
pub struct RemoteCommandConfig {
    pub prepare: Option<String>,
    pub start: String,
    pub stop: String,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub service: ServiceName,
    pub timeout: Duration,
    pub state_dir: PathBuf,
}
pub struct RemoteProcessRuntime;
pub struct RemoteCommandRuntime;
impl RemoteProcessRuntime {
    pub fn new(_s: Arc<dyn Shell>, _c: RemoteProcessConfig) -> Self {
        Self
    }
}
impl RemoteCommandRuntime {
    pub fn new(_s: Arc<dyn Shell>, _c: RemoteCommandConfig) -> Self {
        Self
    }
}
#[async_trait]
impl Runtime for RemoteProcessRuntime {
    async fn prepare(&self, _v: &Version) -> Result<(), RuntimeError> {
        todo!()
    }
    async fn start(&self, _b: &BackendSpec, _v: &Version) -> Result<(), RuntimeError> {
        todo!()
    }
    async fn stop(&self, _b: &BackendSpec) -> Result<(), RuntimeError> {
        todo!()
    }
    async fn status(&self, _b: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        todo!()
    }
}
#[async_trait]
impl Runtime for RemoteCommandRuntime {
    async fn prepare(&self, _v: &Version) -> Result<(), RuntimeError> {
        todo!()
    }
    async fn start(&self, _b: &BackendSpec, _v: &Version) -> Result<(), RuntimeError> {
        todo!()
    }
    async fn stop(&self, _b: &BackendSpec) -> Result<(), RuntimeError> {
        todo!()
    }
    async fn status(&self, _b: &BackendSpec) -> Result<BackendRun, RuntimeError> {
        todo!()
    }
}
