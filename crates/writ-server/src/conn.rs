//! Accepting connections without letting peers exhaust the server.
//!
//! - [`AcceptBackoff`]: when `accept` fails (EMFILE/ENFILE when descriptors run out, ENOBUFS,
//!   ...) the loop sleeps, 10 ms doubling to 1 s, instead of retrying at once: a failing accept
//!   returns immediately, so retrying at once spun a core for as long as descriptors were
//!   short, and a loop that gave up on the first error (the metrics endpoint) died for good.
//! - Connection caps: each listener holds a semaphore permit per open connection and takes one
//!   *before* accepting, so at the cap new connections wait in the kernel's backlog instead of
//!   costing descriptors.
//! - [`Guarded`]: wraps an accepted stream, keeps its permit until the connection closes, and
//!   closes it when nothing has been read from the peer for an idle timeout (a peer that went
//!   away without closing, or one that connects and never speaks).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// First pause after a failed accept.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause after failed accepts.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per this interval while accepts keep failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The pause between failing accepts of one listener.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    what: &'static str,
    pause: Duration,
    logged: Option<Instant>,
    failures: u64,
}

impl AcceptBackoff {
    /// A backoff for the listener described by `what` (used in logs).
    pub(crate) fn new(what: &'static str) -> Self {
        AcceptBackoff {
            what,
            pause: FIRST_PAUSE,
            logged: None,
            failures: 0,
        }
    }

    /// An accept succeeded: the next failure pauses briefly again.
    pub(crate) fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
        self.failures = 0;
    }

    /// An accept failed with `e`: logs (rate-limited) and sleeps before the next attempt.
    pub(crate) async fn failed(&mut self, e: &io::Error) {
        self.failures += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(listener = self.what, error = %e, failures = self.failures, pause_ms = self.pause.as_millis() as u64, "accept failed; backing off");
            self.logged = Some(Instant::now());
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
    }
}

/// An accepted connection: holds its listener's permit until dropped, and fails its reads once
/// nothing came from the peer for the idle timeout, if it has one.
pub(crate) struct Guarded<S> {
    inner: S,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, holding `permit` until the connection is dropped; `idle`: cut the
    /// connection off after that long without a byte from the peer (`None`: never).
    pub(crate) fn new(inner: S, permit: OwnedSemaphorePermit, idle: Option<Duration>) -> Self {
        Guarded {
            inner,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            _permit: permit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some((d, deadline)) = &mut this.idle {
                    if buf.filled().len() > before {
                        deadline.as_mut().reset(tokio::time::Instant::now() + *d);
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some((d, deadline)) = &mut this.idle {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("nothing received for {}s", d.as_secs()),
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_off_and_its_permit_returned() {
        let limit = Arc::new(Semaphore::new(1));
        let (ours, mut theirs) = tokio::io::duplex(64);
        let permit = limit.clone().try_acquire_owned().unwrap();
        let mut g = Guarded::new(ours, permit, Some(Duration::from_secs(120)));
        // Bytes keep it alive...
        theirs.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        g.read_exact(&mut buf).await.unwrap();
        tokio::time::advance(Duration::from_secs(100)).await;
        theirs.write_all(b"ping").await.unwrap();
        g.read_exact(&mut buf).await.unwrap();
        // ...silence ends it.
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(limit.available_permits(), 0);
        drop(g);
        assert_eq!(limit.available_permits(), 1);
    }
}
