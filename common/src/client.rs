//! HTTP client for the command-line tools and tests: the proxy's local API
//! (plain HTTP on loopback) and the operator API (mTLS). A request on a
//! connection of its own ([`send`], [`call`]), or many on one kept open
//! ([`connect`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Where to send.
#[derive(Clone)]
pub enum Target {
    /// Plain HTTP (loopback local API).
    Plain(SocketAddr),
    /// HTTPS with a client certificate; `base` is `https://host:port`.
    Tls {
        /// Base URL.
        base: String,
        /// Client config (CA + operator certificate).
        config: Arc<rustls::ClientConfig>,
    },
}

/// Sends one request; returns the response with its body still streaming.
///
/// # Errors
/// Connection, TLS or HTTP failures, as text for the user.
pub async fn send(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
    extra: &[(&str, String)],
) -> Result<Response<Incoming>, String> {
    let (headers, body) = match body {
        Some((ct, bytes)) => {
            let mut h = vec![(header::CONTENT_TYPE.as_str(), ct.to_string())];
            h.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
            (h, crate::http_util::full(bytes))
        }
        None => (
            extra.iter().map(|(k, v)| (*k, v.clone())).collect(),
            crate::http_util::full(Bytes::new()),
        ),
    };
    send_body(target, method, path, body, &headers).await
}

/// Sends one request whose body streams (a file of any size); returns the
/// response with its body still streaming.
///
/// # Errors
/// As [`send`].
pub async fn send_body(
    target: &Target,
    method: Method,
    path: &str,
    body: crate::http_util::Body,
    extra: &[(&str, String)],
) -> Result<Response<Incoming>, String> {
    connect(target)
        .await?
        .send_body(method, path, body, extra)
        .await
}

/// One connection to `target`, kept open for many requests (HTTP/1.1
/// keep-alive): a client that sends often saves a TCP and a TLS handshake
/// per request.
pub struct Connection {
    host: String,
    port: u16,
    send: hyper::client::conn::http1::SendRequest<crate::http_util::Body>,
}

/// Opens a [`Connection`].
///
/// # Errors
/// As [`send`].
pub async fn connect(target: &Target) -> Result<Connection, String> {
    let (host, port, stream): (String, u16, Box<dyn IoStream>) = match target {
        Target::Plain(addr) => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            // A request is written in pieces (head, body chunks): each goes now.
            let _ = tcp.set_nodelay(true);
            (addr.ip().to_string(), addr.port(), Box::new(tcp))
        }
        Target::Tls { base, config } => {
            let uri: Uri = base.parse().map_err(|e| format!("{base}: {e}"))?;
            let host = uri
                .host()
                .ok_or_else(|| format!("{base}: no host"))?
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connect {host}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
            (host, port, Box::new(tls))
        }
    };
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { host, port, send })
}

impl Connection {
    /// Sends one request once the previous one's response is done with;
    /// returns the response with its body still streaming.
    ///
    /// # Errors
    /// As [`send`]; a connection the server closed is an error here (open
    /// another).
    pub async fn send_body(
        &mut self,
        method: Method,
        path: &str,
        body: crate::http_util::Body,
        extra: &[(&str, String)],
    ) -> Result<Response<Incoming>, String> {
        self.send.ready().await.map_err(|e| e.to_string())?;
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port));
        for (k, v) in extra {
            b = b.header(*k, v);
        }
        let req = b.body(body).map_err(|e| e.to_string())?;
        self.send.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// Sends one request and reads the whole response body.
///
/// # Errors
/// As [`send`], plus body read failures.
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
) -> Result<(http::StatusCode, Bytes), String> {
    let resp = send(target, method, path, body, &[]).await?;
    let status = resp.status();
    let b = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, b))
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> IoStream for T {}
