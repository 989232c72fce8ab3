//! The server's small plain-HTTP endpoints (metrics and probes, OIDC discovery): one GET per
//! connection, a bounded request head, a bounded number of connections, a deadline per
//! request. Nothing here parses more than the request line.
//!
//! Invariants: at most [`MAX_CONNECTIONS`] connections are served at once (more wait in the
//! listen backlog); a request that does not finish within [`REQUEST_TIMEOUT`] is dropped;
//! accept errors (descriptors exhausted) back off and never end the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Most connections served at once per endpoint.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long one request may take, read and write together (a client that connects and sends
/// nothing, or reads nothing, is dropped).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// Status line text, e.g. `200 OK`.
    pub(crate) status: &'static str,
    /// `content-type`.
    pub(crate) content_type: &'static str,
    /// Extra header lines (`name: value`).
    pub(crate) headers: Vec<String>,
    /// The body.
    pub(crate) body: String,
}

impl Reply {
    /// A reply with no extra headers.
    pub(crate) fn new(status: &'static str, content_type: &'static str, body: String) -> Self {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// 404.
    pub(crate) fn not_found() -> Self {
        Reply::new("404 Not Found", "text/plain", "not found\n".into())
    }
}

/// What answers a GET for a path.
pub(crate) type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Serves `handler` on `addr` until the task is dropped; `name` is for logs.
pub(crate) async fn serve(
    addr: SocketAddr,
    name: &'static str,
    handler: Handler,
) -> std::io::Result<()> {
    serve_with(addr, name, handler, None).await
}

/// [`serve`] over TLS (the handshake counts against the request's deadline).
pub(crate) async fn serve_tls(
    addr: SocketAddr,
    name: &'static str,
    handler: Handler,
    tls: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    serve_with(addr, name, handler, Some(tls)).await
}

async fn serve_with(
    addr: SocketAddr,
    name: &'static str,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "{name} endpoint listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::conn::AcceptBackoff::new(name);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff.succeeded();
                sock
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let h = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async move {
                match tls {
                    None => answer(sock, &*h).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            answer(s, &*h).await;
                        }
                    }
                }
            })
            .await;
        });
    }
}

/// Reads one request head (at most 4 KiB) and answers it. Anything but `GET` is 405.
async fn answer<S>(mut sock: S, handler: &(dyn Fn(&str) -> Reply + Send + Sync))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // Read until the end of the request head or the buffer is full.
    while n < buf.len() {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let reply = match head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
    {
        // The query string never selects anything here.
        Some(path) => handler(path.split('?').next().unwrap_or("")),
        None => Reply::new("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let mut resp = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    for h in &reply.headers {
        resp += h;
        resp += "\r\n";
    }
    resp += "\r\n";
    resp += &reply.body;
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}
