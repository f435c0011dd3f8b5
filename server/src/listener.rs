//! The HTTP listener: at most `[server] max_connections` client connections at once, with the
//! process's open-file limit raised as far as the system allows, so that clients (a flood, or a
//! thousand forgotten browser tabs) cannot take the file descriptors a rollout needs: HAProxy's
//! runtime socket, the database, a backend's log and process.
//!
//! A connection over the cap is not refused: it waits in the kernel's accept queue, holding no
//! descriptor of Baton's, and is served when another closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for Baton's own work whatever the clients do: database connections,
/// HAProxy sockets, health probes, backend processes' logs and pipes.
pub const RESERVED_FILES: u64 = 256;

/// Raises the soft limit on open files to the hard limit (a process may always do that) and
/// returns the soft limit in force afterwards.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// How many connections Baton serves at once: `configured`, unless the open-file limit leaves
/// fewer than [`RESERVED_FILES`] for everything else, in which case the cap comes down (and
/// Baton says so).
pub fn connection_cap(configured: usize) -> usize {
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; keeping max_connections as configured");
            return configured;
        }
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
    if room < configured {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = limit,
            cap = room,
            "the open-file limit is too low for max_connections; serving fewer connections at once (raise `ulimit -n` / LimitNOFILE)"
        );
        room
    } else {
        configured
    }
}

/// A TCP listener that holds a permit per open connection.
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl CappedListener {
    pub fn new(inner: TcpListener, max_connections: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

impl Listener for CappedListener {
    type Io = Capped;
    type Addr = SocketAddr;

    /// Waits for a free permit before accepting, so the kernel queues what is over the cap.
    /// Accept errors (EMFILE among them) are logged and retried by axum's listener.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        let (stream, address) = Listener::accept(&mut self.inner).await;
        (
            Capped {
                stream,
                _permit: permit,
            },
            address,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address as [`CappedListener`] hands it to axum. axum names the peer address
/// of its own listener types only; `startup` turns this into the usual
/// `ConnectInfo<SocketAddr>` for every handler.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, CappedListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A client connection; its permit returns when it closes.
pub struct Capped {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accepts with the listener and echoes one byte per connection, as a server would.
    async fn serve(mut listener: CappedListener) {
        loop {
            let (mut io, _) = listener.accept().await;
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                while io.read_exact(&mut byte).await.is_ok() {
                    if io.write_all(&byte).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    async fn answers(stream: &mut TcpStream) -> bool {
        stream.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut byte))
            .await
            .is_ok_and(|read| read.is_ok())
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_until_one_closes() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = inner.local_addr().unwrap();
        let server = tokio::spawn(serve(CappedListener::new(inner, 2)));

        let mut first = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        assert!(answers(&mut first).await);
        assert!(answers(&mut second).await);
        // The third connects (the kernel queues it) but is not served while two are open.
        let mut third = TcpStream::connect(address).await.unwrap();
        assert!(!answers(&mut third).await, "a third connection was served");
        drop(first);
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut byte))
            .await
            .expect("the third is served once the first closes")
            .unwrap();
        server.abort();
    }

    #[test]
    fn the_cap_leaves_room_for_baton_under_a_low_open_file_limit() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let room = usize::try_from(soft - RESERVED_FILES).unwrap();
        assert_eq!(connection_cap(room + 1000), room);
        assert_eq!(connection_cap(10), 10);
    }
}
