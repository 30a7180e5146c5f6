//! bop's [`Net`] over turmoil's simulated TCP: the node's Raft transport and HTTP API run unchanged.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use bop_raft::net::{BoxFuture, BoxStream, Listener, Net};

/// turmoil's network, for code running inside a turmoil host.
#[derive(Debug, Default, Clone, Copy)]
pub struct TurmoilNet;

struct TurmoilListener {
    listener: turmoil::net::TcpListener,
    addr: String,
}

impl Listener for TurmoilListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (stream, peer) = self.listener.accept().await?;
            Ok((Box::new(stream) as BoxStream, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.addr.clone())
    }
}

fn port_of(addr: &str) -> io::Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no port in {addr:?}")))
}

impl Net for TurmoilNet {
    /// Listens on the port of `addr` (`HOST:PORT`, the host being this turmoil host's name); the listener
    /// reports `addr` itself as its address, which is what peers dial.
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let port = port_of(addr)?;
            let listener = turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
            Ok(Box::new(TurmoilListener { listener, addr: addr.to_owned() }) as Box<dyn Listener>)
        })
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr.to_owned()).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}
