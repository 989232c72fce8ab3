//! Prometheus metrics and the `/live`, `/ready`, `/metrics` HTTP endpoint.
//!
//! Counters are plain atomics rendered in the Prometheus text format; the endpoint is a minimal
//! HTTP/1.1 responder (GET only, one request per connection, 4 KiB request limit, 5 s per
//! request, at most 64 connections at once), enough for probes and scrapers without pulling in
//! an HTTP framework.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::http::Reply;

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
    /// Federated bundle fetches that failed (the last good bundle was kept).
    pub federation_fetch_failures: AtomicU64,
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
             writ_policy_denied_total {}\n\
             # TYPE writ_federation_fetch_failures_total counter\n\
             writ_federation_fetch_failures_total {}\n",
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
            c(&self.federation_fetch_failures),
        )
    }
}

/// Serves `/live`, `/ready` and `/metrics` on `addr` (see [`crate::http`]).
pub(crate) async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let handler: crate::http::Handler = Arc::new(move |path: &str| {
        let text = "text/plain; version=0.0.4";
        match path {
            "/live" => Reply::new("200 OK", text, "ok\n".into()),
            "/ready" if metrics.ready.load(Ordering::Relaxed) => {
                Reply::new("200 OK", text, "ready\n".into())
            }
            "/ready" => Reply::new("503 Service Unavailable", text, "not ready\n".into()),
            "/metrics" => Reply::new("200 OK", text, metrics.render()),
            _ => Reply::not_found(),
        }
    });
    crate::http::serve(addr, "metrics and health", handler).await
}
