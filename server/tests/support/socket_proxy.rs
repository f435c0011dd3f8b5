//! A unix-socket proxy in front of HAProxy's runtime API that a test can switch to "accept and
//! never answer", the way a hung or overloaded HAProxy looks to Baton. It also counts what goes
//! through: each command by its first words, and the bytes of HAProxy's answers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct SocketProxy {
    silent: Arc<AtomicBool>,
    /// Connections accepted while silent (each one a command that got no answer).
    unanswered: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
    accept: JoinHandle<()>,
}

/// What went through the proxy so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Commands by their first two words (`show stat`, `set server`, `shutdown sessions`).
    pub commands: BTreeMap<String, u64>,
    /// Bytes HAProxy answered.
    pub answer_bytes: u64,
}

impl Forwarded {
    pub fn total_commands(&self) -> u64 {
        self.commands.values().sum()
    }

    /// `self - earlier`, for the traffic of a window.
    pub fn since(&self, earlier: &Forwarded) -> Forwarded {
        Forwarded {
            commands: self
                .commands
                .iter()
                .map(|(verb, count)| {
                    let before = earlier.commands.get(verb).copied().unwrap_or(0);
                    (verb.clone(), count - before)
                })
                .collect(),
            answer_bytes: self.answer_bytes - earlier.answer_bytes,
        }
    }

    /// How many commands began with `verb`.
    pub fn count(&self, verb: &str) -> u64 {
        self.commands.get(verb).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct Traffic {
    commands: Mutex<BTreeMap<String, u64>>,
    answer_bytes: AtomicU64,
}

impl SocketProxy {
    /// Listens on `listen` and forwards every connection to `upstream`. Needs a tokio runtime;
    /// the proxy and every connection it holds end when it is dropped.
    pub fn start(listen: PathBuf, upstream: PathBuf) -> Self {
        let listener = UnixListener::bind(&listen)
            .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", listen.display()));
        let silent = Arc::new(AtomicBool::new(false));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let traffic = Arc::new(Traffic::default());
        let (is_silent, count, counted) = (silent.clone(), unanswered.clone(), traffic.clone());
        let accept = tokio::spawn(async move {
            // Dropped with this task (on abort), which aborts every connection too.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                if is_silent.load(Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(hold(client));
                } else {
                    connections.spawn(forward(client, upstream.clone(), counted.clone()));
                }
            }
        });
        Self {
            silent,
            unanswered,
            traffic,
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

    /// The commands forwarded and the bytes answered so far.
    pub fn forwarded(&self) -> Forwarded {
        Forwarded {
            commands: self
                .traffic
                .commands
                .lock()
                .expect("the proxy's counts")
                .clone(),
            answer_bytes: self.traffic.answer_bytes.load(Ordering::SeqCst),
        }
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

/// Forwards one connection both ways; its first line (Baton sends one command per connection)
/// is counted by its first two words.
async fn forward(mut client: UnixStream, upstream: PathBuf, traffic: Arc<Traffic>) {
    // If HAProxy is gone, closing the client's connection unanswered is what it would see.
    let Ok(mut upstream) = UnixStream::connect(&upstream).await else {
        return;
    };
    let mut first = Vec::new();
    let mut buffer = [0u8; 1024];
    while !first.contains(&b'\n') && first.len() < 64 * 1024 {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => first.extend_from_slice(&buffer[..n]),
        }
    }
    if first.is_empty() || upstream.write_all(&first).await.is_err() {
        return;
    }
    let line = String::from_utf8_lossy(&first);
    let verb: Vec<&str> = line.split_whitespace().take(2).collect();
    *traffic
        .commands
        .lock()
        .expect("the proxy's counts")
        .entry(verb.join(" "))
        .or_default() += 1;
    if let Ok((_, answered)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        traffic.answer_bytes.fetch_add(answered, Ordering::SeqCst);
    }
}
