//! Logging: `tracing` everywhere, filtered by `RUST_LOG` (default `info`).
//!
//! Log lines go to standard output through a background writer with a bounded buffer. Baton
//! never waits for its output: a pipe whose reader died (`baton serve | head`) or stopped reading
//! (a stuck log collector) costs lost lines, never a stuck request, rollout or shutdown.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines buffered for a slow reader before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

/// Installs the global subscriber. Call once, from the binary, and keep the guard until the
/// end: dropping it writes out what is buffered (waiting at most about a second).
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("baton-log")
        .finish(std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer)
        // A failed write would otherwise be reported with `eprintln!`, which panics when
        // standard error is a closed pipe.
        .log_internal_errors(false)
        .init();
    guard
}
