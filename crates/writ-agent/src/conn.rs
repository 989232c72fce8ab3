//! Accepting Workload API connections: caps, accept back-off, a deadline for the first request,
//! and attestation bound to the connection.
//!
//! Invariants:
//! - At most `max_connections` connections are open, and at most `max_connections_per_uid` per
//!   caller UID; a connection over either cap is closed at once (a local user cannot take every
//!   descriptor of the agent). Each open connection holds a [`Slot`] that gives its place back
//!   when hyper drops the connection.
//! - Accept errors (out of descriptors, above all) never spin: the loop backs off from 10 ms up
//!   to 1 s and says so in the log at most every 10 s.
//! - A connection that has not sent a complete request header block within
//!   `first_request_timeout` is closed (idle sockets opened to exhaust descriptors).
//! - The caller is attested when its connection is accepted, not when a request arrives, and the
//!   result is bound to the connection together with the caller's [`ProcessMark`]. Every request
//!   first checks that the connecting PID still has that mark: once the process has exec'd
//!   another binary, exited, or had its PID reused, the connection is refused. Before this,
//!   `/proc/<pid>` was read per request, and a process could connect, fork, exec a trusted binary
//!   in the connecting PID and have the child ask for the trusted binary's SVID over the
//!   inherited connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use writ_core::Selector;
use writ_h2_authority::AuthorityFix;

use crate::workload_attest::{
    Caller, KindFilter, ProcessMark, WorkloadAttestError, WorkloadAttestor,
};

/// Connection limits of the Workload API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections per caller UID.
    pub max_connections_per_uid: usize,
    /// Time a new connection has to send its first request headers.
    pub first_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_uid: 512,
            first_request_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts open connections, in all and per UID.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// A connection's place under the caps; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

/// What attestation bound to a connection.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    /// The caller's selectors.
    pub selectors: Vec<Selector>,
    /// The process as it was when attested.
    pub mark: ProcessMark,
}

/// How a connection's caller is attested: the attestors, and which selector kinds the agent's
/// entries use right now.
pub(crate) struct Attestation {
    /// The workload attestors, in order.
    pub attestors: Vec<Arc<dyn WorkloadAttestor>>,
    /// Selector kinds in use (read when a connection is attested).
    pub kinds: Arc<dyn Fn() -> Box<dyn KindFilter + Send> + Send + Sync>,
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attestation")
    }
}

impl Attestation {
    /// Attests `caller` (blocking: reads `/proc`, may hash a binary). The process mark is read
    /// before and after the selectors are gathered and must not change in between.
    fn run(&self, caller: Caller) -> Result<Bound, WorkloadAttestError> {
        let mark = ProcessMark::read(caller.pid)?;
        if mark.euid != caller.uid {
            return Err(WorkloadAttestError::UidMismatch {
                pid: caller.pid,
                proc_uid: mark.euid,
                sock_uid: caller.uid,
            });
        }
        let wanted = (self.kinds)();
        let mut selectors = Vec::new();
        for a in &self.attestors {
            let got = a.attest(&caller, wanted.as_ref()).inspect_err(|e| {
                tracing::debug!(attestor = a.name(), pid = caller.pid, error = %e, "workload attestation failed");
            })?;
            selectors.extend(got);
        }
        if ProcessMark::read(caller.pid)? != mark {
            return Err(WorkloadAttestError::Changed(caller.pid));
        }
        Ok(Bound { selectors, mark })
    }
}

/// The caller of one connection and its attestation, computed once.
#[derive(Debug)]
pub(crate) struct ConnIdentity {
    /// The caller as `SO_PEERCRED` reported it at connect time.
    pub caller: Caller,
    attestation: Arc<Attestation>,
    bound: OnceCell<Result<Bound, String>>,
}

impl ConnIdentity {
    /// Starts attesting `caller` in the background; requests wait for the result.
    fn start(caller: Caller, attestation: Arc<Attestation>) -> Arc<Self> {
        let id = Arc::new(ConnIdentity {
            caller,
            attestation,
            bound: OnceCell::new(),
        });
        let bg = id.clone();
        tokio::spawn(async move {
            let _ = bg.bound().await;
        });
        id
    }

    async fn bound(&self) -> &Result<Bound, String> {
        self.bound
            .get_or_init(|| async {
                let (a, caller) = (self.attestation.clone(), self.caller);
                tokio::task::spawn_blocking(move || a.run(caller).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|_| Err("workload attestation task failed".into()))
            })
            .await
    }

    /// The selectors bound to this connection, after checking that the connecting process is
    /// still the one that was attested.
    pub(crate) async fn selectors(&self) -> Result<Vec<Selector>, String> {
        let b = self.bound().await.clone()?;
        self.check(&b.mark).await?;
        Ok(b.selectors)
    }

    /// Whether the connecting process still has the mark it was attested with.
    pub(crate) async fn still_same(&self) -> Result<(), String> {
        match self.bound().await {
            Ok(b) => self.check(&b.mark).await,
            Err(e) => Err(e.clone()),
        }
    }

    async fn check(&self, mark: &ProcessMark) -> Result<(), String> {
        let pid = self.caller.pid;
        let now = tokio::task::spawn_blocking(move || ProcessMark::read(pid))
            .await
            .map_err(|_| "workload attestation task failed".to_owned())?;
        match now {
            Ok(m) if m == *mark => Ok(()),
            Ok(_) => Err(WorkloadAttestError::Changed(pid).to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What tonic hands to each request of a Workload API connection.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadConnInfo {
    /// The connection's caller and attestation.
    pub identity: Arc<ConnIdentity>,
}

/// An accepted Workload API connection: the `:authority` shim, its slot under the caps, the
/// first-request deadline and the bound identity.
pub(crate) struct WorkloadConn {
    io: AuthorityFix,
    _slot: Slot,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    identity: Arc<ConnIdentity>,
}

impl std::fmt::Debug for WorkloadConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadConn")
            .field("caller", &self.identity.caller)
            .finish()
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut() {
            if this.io.requests_seen() > 0 {
                this.deadline = None;
            } else if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request on a new Workload API connection in time",
                )));
            }
        }
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.deadline.is_some() && this.io.requests_seen() > 0 {
            this.deadline = None;
        }
        r
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for WorkloadConn {
    type ConnectInfo = WorkloadConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        WorkloadConnInfo {
            identity: self.identity.clone(),
        }
    }
}

/// Accepts Workload API connections under `limits`, attesting each caller at once.
pub(crate) fn workload_incoming(
    listener: UnixListener,
    limits: Limits,
    attestation: Arc<Attestation>,
) -> ReceiverStream<io::Result<WorkloadConn>> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    accept_loop(listener, "Workload API", move |s: UnixStream| {
        let cred = s.peer_cred().ok()?;
        let uid = cred.uid();
        let slot = {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
            if c.total >= limits.max_connections || mine >= limits.max_connections_per_uid {
                refused_log(uid, c.total, mine);
                return None;
            }
            c.total += 1;
            *c.per_uid.entry(uid).or_default() += 1;
            Slot {
                counts: counts.clone(),
                uid,
            }
        };
        let caller = Caller {
            pid: cred.pid().unwrap_or(0),
            uid,
            gid: cred.gid(),
        };
        Some(WorkloadConn {
            io: AuthorityFix::new(s),
            _slot: slot,
            deadline: Some(Box::pin(tokio::time::sleep(limits.first_request_timeout))),
            identity: ConnIdentity::start(caller, attestation.clone()),
        })
    })
}

/// Accepts connections on `listener` and hands the ones `admit` keeps to the server. Accept
/// errors back off instead of spinning; the channel is small so that a server that stops
/// taking connections stops the accepting too.
pub(crate) fn accept_loop<T, F>(
    listener: UnixListener,
    what: &'static str,
    mut admit: F,
) -> ReceiverStream<io::Result<T>>
where
    T: Send + 'static,
    F: FnMut(UnixStream) -> Option<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        let mut last_log: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((s, _)) => {
                    backoff = Duration::ZERO;
                    if let Some(c) = admit(s) {
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(socket = what, error = %e, retry_in = ?backoff, "cannot accept connections");
                        last_log = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Logs refused connections at most once every 10 s.
fn refused_log(uid: u32, total: usize, mine: usize) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
        tracing::warn!(
            uid,
            open = total,
            open_for_uid = mine,
            "Workload API connection refused: too many open connections"
        );
        *last = Some(Instant::now());
    }
}
