//! A unix-socket proxy in front of HAProxy's runtime API that a test can switch to "accept and
//! never answer", the way a hung or overloaded HAProxy looks to Baton.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct SocketProxy {
    silent: Arc<AtomicBool>,
    /// Connections accepted while silent (each one a command that got no answer).
    unanswered: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl SocketProxy {
    /// Listens on `listen` and forwards every connection to `upstream`. Needs a tokio runtime;
    /// the proxy and every connection it holds end when it is dropped.
    pub fn start(listen: PathBuf, upstream: PathBuf) -> Self {
        let listener = UnixListener::bind(&listen)
            .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", listen.display()));
        let silent = Arc::new(AtomicBool::new(false));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let (is_silent, count) = (silent.clone(), unanswered.clone());
        let accept = tokio::spawn(async move {
            // Dropped with this task (on abort), which aborts every connection too.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                if is_silent.load(Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(hold(client));
                } else {
                    connections.spawn(forward(client, upstream.clone()));
                }
            }
        });
        Self {
            silent,
            unanswered,
            accept,
        }
    }

    /// From now on, new connections are accepted and never answered (or forwarded again).
    /// Connections already open carry on as they were.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// How many connections got no answer because the proxy was silent.
    pub fn unanswered(&self) -> usize {
        self.unanswered.load(Ordering::SeqCst)
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads and discards what the client sends until it gives up and closes.
async fn hold(mut client: UnixStream) {
    let mut sink = [0u8; 1024];
    while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn forward(mut client: UnixStream, upstream: PathBuf) {
    // If HAProxy is gone, closing the client's connection unanswered is what it would see.
    if let Ok(mut upstream) = UnixStream::connect(&upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}
