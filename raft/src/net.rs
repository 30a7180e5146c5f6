//! How a node listens and connects: real TCP in production, the simulation's network under turmoil.
//! Both the Raft transport and the HTTP API (including forwarding to the leader) go through [`Net`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::tcp::Connector;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Stream for T {}

/// A boxed byte stream.
pub type BoxStream = Box<dyn Stream>;

/// Accepts connections.
pub trait Listener: Send + 'static {
    /// The next connection and its peer's address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>>;
    /// The address it listens on.
    fn local_addr(&self) -> io::Result<String>;
}

/// Accepts the next connection on `listener`, never failing: an error (out of descriptors, a connection
/// aborted before it was accepted) is logged and followed by a pause that doubles from 10 ms up to 1 s,
/// then `accept` is tried again. `backoff` carries the pause between calls (start it at `None`).
pub async fn accept_retrying(
    listener: &mut dyn Listener,
    backoff: &mut Option<std::time::Duration>,
    server: &'static str,
) -> (BoxStream, String) {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const MOST: std::time::Duration = std::time::Duration::from_secs(1);
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                *backoff = None;
                return accepted;
            }
            Err(e) => {
                let pause = backoff.map_or(FIRST, |b| (b * 2).min(MOST));
                *backoff = Some(pause);
                tracing::warn!(server, error = %e, pause_ms = pause.as_millis() as u64, "accept failed");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// A network: listen on an address, connect to one.
pub trait Net: Send + Sync + 'static {
    /// Listens on `addr`.
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>>;
    /// Connects to `addr`.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>>;
}

/// The operating system's TCP (no Nagle delay on any stream).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioNet;

struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as BoxStream, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        self.0.local_addr().map(|a| a.to_string())
    }
}

impl Net for TokioNet {
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TokioListener(listener)) as Box<dyn Listener>)
        })
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// The Raft transport's connector over any [`Net`].
#[derive(Clone)]
pub struct NetConnector(pub Arc<dyn Net>);

impl Connector for NetConnector {
    type Stream = BoxStream;

    async fn connect(&self, addr: &str) -> io::Result<BoxStream> {
        self.0.connect(addr).await
    }
}

/// A bound tokio listener as a [`Listener`].
pub fn tcp_listener(listener: tokio::net::TcpListener) -> Box<dyn Listener> {
    Box::new(TokioListener(listener))
}
