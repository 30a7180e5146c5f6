//! bop's one HTTP/1.1 client, on hyper's connection API: forwarding to the leader, the `bop` client
//! subcommands and `bop bench` all send their requests through [`HttpConn`].

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

use crate::net::BoxStream;

/// Largest head of an answer (and read buffer).
pub const HEAD_BYTES_MAX: usize = 64 << 10;

/// A kept-alive HTTP/1.1 connection to one address (requests go one after another).
pub struct HttpConn {
    sender: SendRequest<OutgoingBody>,
    host: String,
    /// Sent with every request (HTTP Basic credentials).
    authorization: Option<String>,
}

/// A request's body: bytes in memory, or a stream (an upload passed on as it arrives).
pub type OutgoingBody = UnsyncBoxBody<Bytes, io::Error>;

/// `bytes` as a request body.
pub fn bytes_body(bytes: Bytes) -> OutgoingBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// How a client reaches a node: its credentials, and TLS.
#[derive(Clone, Default)]
pub struct ClientSettings {
    /// The `Authorization` header sent with every request ([`crate::auth::basic_header`]).
    pub authorization: Option<String>,
    /// HTTPS with this client configuration (`None`: plain HTTP).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("authorization", &self.authorization.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl HttpConn {
    /// Speaks HTTP over `stream`, a connection to `host`. The connection is driven by a task of its own,
    /// which ends when the connection closes or this value is dropped.
    pub async fn over(stream: BoxStream, host: &str) -> io::Result<HttpConn> {
        // A bounded read buffer bounds an answer's head (and what one read may hold).
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(HEAD_BYTES_MAX)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpConn { sender, host: host.to_owned(), authorization: None })
    }

    /// Connects to `addr` over TCP, within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<HttpConn> {
        HttpConn::connect_with(addr, timeout, &ClientSettings::default()).await
    }

    /// Connects to `addr` over TCP (and TLS when `settings` say so), within `timeout`; every request
    /// carries `settings`' credentials.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        settings: &ClientSettings,
    ) -> io::Result<HttpConn> {
        let connecting = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            match &settings.tls {
                None => Ok::<BoxStream, io::Error>(Box::new(stream)),
                Some(tls) => Ok(Box::new(crate::https::connect(tls, stream, addr).await?) as BoxStream),
            }
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
        let mut conn = HttpConn::over(stream, addr).await?;
        conn.authorization = settings.authorization.clone();
        Ok(conn)
    }

    /// Sends one request (a JSON body unless `headers` name another content type) and returns the
    /// answer's head; its body arrives as it is read.
    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> io::Result<Response<Incoming>> {
        self.send_body(method, path_and_query, headers, bytes_body(body)).await
    }

    /// [`HttpConn::send`] with any body (sent as it is produced).
    pub async fn send_body(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: OutgoingBody,
    ) -> io::Result<Response<Incoming>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, self.host.as_str());
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization.as_str());
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request.body(body).map_err(io::Error::other)?;
        self.sender.ready().await.map_err(io::Error::other)?;
        self.sender.send_request(request).await.map_err(io::Error::other)
    }

    /// Sends one request and reads the whole answer, at most `answer_bytes_max` bytes of it.
    pub async fn call(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        answer_bytes_max: usize,
    ) -> io::Result<(u16, Bytes)> {
        let response = self.send(method, path_and_query, &[], body).await?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), answer_bytes_max)
            .collect()
            .await
            .map_err(|e| io::Error::other(format!("answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}

/// One request on a new connection, from outside an async runtime (the `bop` client subcommands): the
/// status and the body as text. Bounded by `timeout` as a whole.
pub fn call_blocking(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
    settings: &ClientSettings,
) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method {method:?}: {e}"))?;
    runtime.block_on(async {
        let exchange = async {
            let mut conn = HttpConn::connect_with(addr, timeout, settings).await?;
            conn.call(method, path, Bytes::from(body.to_owned()), 64 << 20).await
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{addr} did not answer within {timeout:?}"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}
