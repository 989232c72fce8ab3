//! Prometheus metrics and the `/live`, `/ready`, `/metrics` HTTP endpoint.
//!
//! Counters are plain atomics rendered in the Prometheus text format; the endpoint is a minimal
//! HTTP/1.1 responder (GET only, one request per connection, 4 KiB request limit, 5 s per
//! request, at most 64 connections at once), enough for probes and scrapers without pulling in
//! an HTTP framework.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The server's counters and gauges.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Successful attestations.
    pub attest_ok: AtomicU64,
    /// Refused or failed attestations.
    pub attest_failed: AtomicU64,
    /// Attestations refused by the rate limiter.
    pub attest_rate_limited: AtomicU64,
    /// X509-SVIDs signed (workloads, agents, server).
    pub x509_signed: AtomicU64,
    /// JWT-SVIDs signed.
    pub jwt_signed: AtomicU64,
    /// Requests refused as InvalidArgument (bad input).
    pub invalid_argument: AtomicU64,
    /// Requests refused as PermissionDenied.
    pub permission_denied: AtomicU64,
    /// Entry sync streams open now.
    pub sync_streams: AtomicI64,
    /// Entries in the registry.
    pub entries: AtomicI64,
    /// CA rotations performed.
    pub ca_rotations: AtomicU64,
    /// Break-glass uses: entries created and SVIDs issued under break-glass.
    pub break_glass: AtomicU64,
    /// Credentials revoked.
    pub revoked: AtomicU64,
    /// Issuances denied by policy.
    pub policy_denied: AtomicU64,
    /// Set once both listeners accept connections.
    pub ready: AtomicBool,
}

impl Metrics {
    /// Counts a refused call (or a refused item of a batch) by its status code. Calls are
    /// counted by the edge layer (`grpc::edge`), once each, from the status they end with.
    pub(crate) fn count_code(&self, code: tonic::Code) {
        match code {
            tonic::Code::InvalidArgument => self.invalid_argument.fetch_add(1, Ordering::Relaxed),
            tonic::Code::PermissionDenied => self.permission_denied.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE writ_attestations_total counter\n\
             writ_attestations_total{{result=\"ok\"}} {}\n\
             writ_attestations_total{{result=\"failed\"}} {}\n\
             writ_attestations_total{{result=\"rate_limited\"}} {}\n\
             # TYPE writ_x509_svids_signed_total counter\n\
             writ_x509_svids_signed_total {}\n\
             # TYPE writ_jwt_svids_signed_total counter\n\
             writ_jwt_svids_signed_total {}\n\
             # TYPE writ_requests_refused_total counter\n\
             writ_requests_refused_total{{code=\"invalid_argument\"}} {}\n\
             writ_requests_refused_total{{code=\"permission_denied\"}} {}\n\
             # TYPE writ_sync_streams gauge\n\
             writ_sync_streams {}\n\
             # TYPE writ_entries gauge\n\
             writ_entries {}\n\
             # TYPE writ_ca_rotations_total counter\n\
             writ_ca_rotations_total {}\n\
             # TYPE writ_break_glass_total counter\n\
             writ_break_glass_total {}\n\
             # TYPE writ_revocations_total counter\n\
             writ_revocations_total {}\n\
             # TYPE writ_policy_denied_total counter\n\
             writ_policy_denied_total {}\n",
            c(&self.attest_ok),
            c(&self.attest_failed),
            c(&self.attest_rate_limited),
            c(&self.x509_signed),
            c(&self.jwt_signed),
            c(&self.invalid_argument),
            c(&self.permission_denied),
            g(&self.sync_streams),
            g(&self.entries),
            c(&self.ca_rotations),
            c(&self.break_glass),
            c(&self.revoked),
            c(&self.policy_denied),
        )
    }
}

/// Most `/metrics` and probe connections served at once; more wait in the listen backlog.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long one request may take, read and write together (a client that connects and sends
/// nothing, or reads nothing, is dropped).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/live`, `/ready` and `/metrics` on `addr` until the task is dropped. Accept errors
/// (descriptors exhausted) back off and never end the endpoint.
pub(crate) async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health endpoint listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::conn::AcceptBackoff::new("metrics");
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
        let m = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(sock, &m)).await;
        });
    }
}

/// Reads one request head (at most 4 KiB) and answers it.
async fn answer(mut sock: tokio::net::TcpStream, m: &Metrics) {
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
    let path = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("");
    let (status, body) = match path {
        "/live" => ("200 OK", "ok\n".to_owned()),
        "/ready" if m.ready.load(Ordering::Relaxed) => ("200 OK", "ready\n".to_owned()),
        "/ready" => ("503 Service Unavailable", "not ready\n".to_owned()),
        "/metrics" => ("200 OK", m.render()),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}
