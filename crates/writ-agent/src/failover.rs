//! Which server the agent talks to. `server_address` lists one or more `host:port`; each name is
//! resolved to all of its addresses, and every address counts as a server (a name with three
//! addresses is three servers). All servers share one trust domain and bundle, so each is
//! authenticated the same way ([`crate::node_client::connect`]) and any of them can resume the
//! entry sync from the revision the agent holds.
//!
//! Servers are tried round robin from a random start, so a fleet of agents spreads over them.
//! A server that goes away (connect fails, a stream or a call ends with `Unavailable` or a
//! transport error: [`server_gone`]) is left at once for the next one; the agent sleeps only when
//! every server of a pass has failed, with exponential back-off ([`FIRST_BACKOFF`] to
//! [`MAX_BACKOFF`]) and jitter, and resolves the names again then (addresses change).
//!
//! Invariants: only a session that lasted [`STABLE_AFTER`] resets the failure count and the
//! back-off, so servers that accept an agent and drop it at once cannot make it spin; nothing
//! here touches the cache, which keeps serving while no server is reachable; a [`ServerGone`]
//! belongs to one session, so a late failure of an old session's call cannot end the next one.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Status};

/// The first pause after a whole pass over the servers failed.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between passes: short, because the cache's SVIDs age while it lasts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a session must last to count as good (resetting the failure count and back-off).
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest wait for one name to resolve (the system resolver can hang on a dead DNS server).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One server: an address and the configured name it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// The `server_address` entry (`host:port`).
    pub(crate) name: String,
    /// One of its addresses.
    pub(crate) addr: SocketAddr,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr.to_string();
        if self.name == addr {
            f.write_str(&addr)
        } else {
            write!(f, "{} ({addr})", self.name)
        }
    }
}

/// After the current server failed: where the agent goes next, and after how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failover {
    /// The server that failed.
    pub(crate) from: Server,
    /// The next server (None: no name resolves now).
    pub(crate) to: Option<Server>,
    /// Zero unless a whole pass failed.
    pub(crate) wait: Duration,
}

/// The server list, the current server and the failure count of the current pass.
#[derive(Debug)]
pub(crate) struct Servers {
    names: Vec<String>,
    list: Vec<Server>,
    at: usize,
    /// Servers that failed one after another since the last good session (or pass).
    failed: usize,
    backoff: Duration,
    connected_at: Option<Instant>,
}

impl Servers {
    /// The configured `host:port` names (validated by the config, at least one).
    pub(crate) fn new(names: Vec<String>) -> Self {
        Servers {
            names,
            list: Vec::new(),
            at: 0,
            failed: 0,
            backoff: FIRST_BACKOFF,
            connected_at: None,
        }
    }

    /// The server to use now. Resolves the names first when there is no list yet (start, or no
    /// name resolved last time); `random_below(n)` picks the starting position.
    pub(crate) async fn current(
        &mut self,
        random_below: impl Fn(u64) -> u64,
    ) -> Result<Server, String> {
        if self.list.is_empty() {
            let list = resolve(&self.names).await;
            self.set_list(list, None, random_below);
        }
        self.list
            .get(self.at)
            .cloned()
            .ok_or_else(|| format!("no address for {}", self.names.join(", ")))
    }

    /// The session with the current server is up.
    pub(crate) fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// The current server is gone: moves to the next one. When that completes a pass in which
    /// every server failed, resolves the names again and asks for a jittered pause.
    pub(crate) async fn failed(&mut self, random_below: impl Fn(u64) -> u64) -> Option<Failover> {
        let from = self.list.get(self.at).cloned()?;
        self.ended();
        self.failed += 1;
        if self.failed < self.list.len() {
            self.at = (self.at + 1) % self.list.len();
            return Some(Failover {
                to: self.list.get(self.at).cloned(),
                from,
                wait: Duration::ZERO,
            });
        }
        let wait = self.pass_failed(&random_below);
        let list = resolve(&self.names).await;
        self.set_list(list, Some(&from), random_below);
        Some(Failover {
            from,
            to: self.list.get(self.at).cloned(),
            wait,
        })
    }

    /// The current server answered but the session could not go on (the caller backs off on
    /// its own): moves to the next server without counting it as gone. Returns the servers
    /// left and taken.
    pub(crate) fn skip(&mut self) -> Option<(Server, Server)> {
        self.ended();
        let from = self.list.get(self.at).cloned()?;
        self.at = (self.at + 1) % self.list.len();
        let to = self.list.get(self.at).cloned()?;
        Some((from, to))
    }

    /// A pass failed (or nothing resolved): the jittered pause before the next, which doubles
    /// up to [`MAX_BACKOFF`].
    pub(crate) fn pass_failed(&mut self, random_below: impl Fn(u64) -> u64) -> Duration {
        self.failed = 0;
        let wait = jitter(self.backoff, random_below);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// The session with the current server ended (the agent stays with it, or [`Self::failed`]
    /// and [`Self::skip`] move on): one that lasted [`STABLE_AFTER`] resets the pass.
    pub(crate) fn ended(&mut self) {
        if self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
        {
            self.failed = 0;
            self.backoff = FIRST_BACKOFF;
        }
    }

    /// Installs a freshly resolved list, continuing after `after` when it is still there,
    /// else at a random position.
    fn set_list(
        &mut self,
        list: Vec<Server>,
        after: Option<&Server>,
        random_below: impl Fn(u64) -> u64,
    ) {
        self.failed = 0;
        self.list = list;
        let n = self.list.len();
        self.at = match after.and_then(|a| self.list.iter().position(|s| s == a)) {
            Some(i) => (i + 1) % n.max(1),
            None => (random_below(n as u64) as usize).min(n.saturating_sub(1)),
        };
    }
}

/// The pause for `backoff`: drawn at random between half of it and all of it, so agents that
/// lost their servers together do not come back together.
fn jitter(backoff: Duration, random_below: impl Fn(u64) -> u64) -> Duration {
    let ms = backoff.as_millis() as u64;
    Duration::from_millis(ms / 2 + random_below(ms / 2 + 1))
}

/// Every address of every name, in the configured order, each address once. A name that does
/// not resolve is logged and left out (the others may still be reachable).
async fn resolve(names: &[String]) -> Vec<Server> {
    let mut out: Vec<Server> = Vec::new();
    for name in names {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.as_str())).await {
            Ok(Ok(addrs)) => {
                for addr in addrs {
                    if !out.iter().any(|s| s.addr == addr) {
                        out.push(Server {
                            name: name.clone(),
                            addr,
                        });
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(server = %name, error = %e, "cannot resolve server address")
            }
            Err(_) => tracing::warn!(server = %name, "resolving the server address timed out"),
        }
    }
    out
}

/// Whether `s` means the server is gone: `Unavailable` (a server shutting down or unable to
/// reach its store says so; tonic says so when a connection cannot be made), or any status
/// tonic made from a transport failure, which carries that failure as its source (statuses
/// sent by the server carry none).
pub(crate) fn server_gone(s: &Status) -> bool {
    s.code() == Code::Unavailable || std::error::Error::source(s).is_some()
}

/// Raised by a call of one session that finds the server gone (the signer, the delivery
/// reporter, JWT and WIT minting); the session loop then fails over.
#[derive(Debug, Clone)]
pub(crate) struct ServerGone(mpsc::Sender<String>);

impl ServerGone {
    /// A signal for one session, and its receiving end.
    pub(crate) fn new() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(1);
        (ServerGone(tx), rx)
    }

    /// Raises the signal if `s` says the server is gone; `call` names the call for the log.
    pub(crate) fn check(&self, call: &str, s: &Status) {
        if server_gone(s) {
            // Full: the session already knows, and one reason is enough.
            let _ = self
                .0
                .try_send(format!("{call}: {:?}: {}", s.code(), s.message()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(i: u8) -> Server {
        Server {
            name: format!("10.0.0.{i}:8081"),
            addr: SocketAddr::from(([10, 0, 0, i], 8081)),
        }
    }

    /// A list of `n` servers without DNS, starting at `start`.
    fn servers(n: u8, start: u64) -> Servers {
        let mut s = Servers::new((1..=n).map(|i| server(i).name).collect());
        s.set_list((1..=n).map(server).collect(), None, |_| start);
        s
    }

    #[tokio::test]
    async fn fails_over_round_robin_and_waits_only_after_a_whole_pass() {
        let mut s = servers(3, 1);
        assert_eq!(s.current(|_| 0).await.unwrap(), server(2));
        let f = s.failed(|_| 0).await.unwrap();
        assert_eq!(
            (f.from, f.to, f.wait),
            (server(2), Some(server(3)), Duration::ZERO)
        );
        let f = s.failed(|_| 0).await.unwrap();
        assert_eq!((f.to, f.wait), (Some(server(1)), Duration::ZERO));
        // The third failure completes the pass: a pause, then on round robin (the names are
        // IP literals, so resolving again gives the same list).
        let f = s.failed(|n| n - 1).await.unwrap();
        assert_eq!(f.from, server(1));
        assert_eq!(f.to, Some(server(2)));
        assert_eq!(f.wait, FIRST_BACKOFF);
        // Every failed pass doubles the pause, up to the cap.
        let mut last = Duration::ZERO;
        for _ in 0..30 {
            last = s.failed(|n| n - 1).await.unwrap().wait.max(last);
        }
        assert_eq!(last, MAX_BACKOFF);
    }

    /// Marks the session with the current server as up since `ago`.
    fn connected_for(s: &mut Servers, ago: Duration) {
        s.connected();
        s.connected_at = s.connected_at.and_then(|t| t.checked_sub(ago));
        assert!(s.connected_at.is_some());
    }

    #[tokio::test]
    async fn only_a_lasting_session_resets_the_back_off() {
        let mut s = servers(1, 0);
        assert_eq!(s.failed(|n| n - 1).await.unwrap().wait, FIRST_BACKOFF);
        // A session dropped at once is no success: the pause keeps growing.
        s.connected();
        assert_eq!(s.failed(|n| n - 1).await.unwrap().wait, FIRST_BACKOFF * 2);
        connected_for(&mut s, STABLE_AFTER);
        assert_eq!(s.failed(|n| n - 1).await.unwrap().wait, FIRST_BACKOFF);
    }

    #[tokio::test]
    async fn after_a_good_session_the_next_server_is_tried_at_once() {
        let mut s = servers(2, 0);
        s.failed(|_| 0).await.unwrap();
        connected_for(&mut s, STABLE_AFTER);
        // Server 2 served for a while: its loss is the first failure of a new pass.
        let f = s.failed(|_| 0).await.unwrap();
        assert_eq!(
            (f.from, f.to, f.wait),
            (server(2), Some(server(1)), Duration::ZERO)
        );
    }

    #[tokio::test]
    async fn skip_moves_on_without_counting_a_failure() {
        let mut s = servers(2, 0);
        assert_eq!(s.skip(), Some((server(1), server(2))));
        assert_eq!(s.skip(), Some((server(2), server(1))));
        // Still a whole pass to go before any pause.
        assert_eq!(s.failed(|_| 0).await.unwrap().wait, Duration::ZERO);
    }

    #[tokio::test]
    async fn names_resolve_to_every_address_once() {
        let names = vec![
            "127.0.0.1:8081".to_owned(),
            "[::1]:8081".to_owned(),
            "127.0.0.1:8081".to_owned(),
            "127.0.0.2:9".to_owned(),
        ];
        let list = resolve(&names).await;
        let addrs: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8081", "[::1]:8081", "127.0.0.2:9"]);
        // A name shows with its address in logs.
        let named = Server {
            name: "writ.example.org:8081".into(),
            addr: SocketAddr::from(([10, 0, 0, 1], 8081)),
        };
        assert_eq!(named.to_string(), "writ.example.org:8081 (10.0.0.1:8081)");
    }

    #[tokio::test]
    async fn no_address_is_an_error_not_a_panic() {
        let mut s = Servers::new(Vec::new());
        assert!(s.current(|_| 0).await.is_err());
        assert_eq!(s.failed(|_| 0).await, None);
        assert_eq!(s.skip(), None);
    }

    #[test]
    fn gone_means_unavailable_or_a_transport_failure() {
        assert!(server_gone(&Status::unavailable("shutting down")));
        assert!(!server_gone(&Status::internal("store")));
        assert!(!server_gone(&Status::permission_denied("banned")));
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "connection reset",
        )));
        assert!(server_gone(&broken), "{broken:?}");
    }

    #[tokio::test]
    async fn the_signal_carries_only_gone_statuses() {
        let (gone, mut rx) = ServerGone::new();
        gone.check("sign", &Status::internal("no"));
        assert!(rx.try_recv().is_err());
        gone.check("sign", &Status::unavailable("bye"));
        gone.check("sign", &Status::unavailable("again"));
        assert!(rx.try_recv().unwrap().contains("bye"));
    }
}
