//! The agent's session loop: attest (or resume a persisted identity), open an mTLS session with
//! one server, and inside it run the entry sync and bundle streams ([`crate::sync`]), the signer
//! ([`crate::signer`]) and the agent SVID renewal.
//!
//! Servers come from `server_address` ([`crate::failover`]). When the current server goes away
//! (connect fails, a stream or call ends with `Unavailable` or a transport error) the loop fails
//! over to the next one at once, pausing (250 ms to 5 s, jittered) only after a whole pass over
//! the servers failed. When a server answers but the session cannot go on, the loop backs off
//! (250 ms to 30 s, jittered) and tries the next server. The new session resumes the entry sync
//! from the revision the agent holds (all servers share one revision log; a server behind that
//! revision sends a snapshot instead); a snapshot cut off part-way is dropped with its session,
//! never mixed with another server's pages. Throughout, the cache keeps serving.
//! PermissionDenied from the server means the identity is gone (evicted or banned): it is
//! forgotten and the agent attests again (x509pop can; a used join token cannot, and the log
//! says so).

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use writ_ca::{KeyType, PrivateKey};
use writ_proto::v1 as pb;

use crate::failover::{self, Server, ServerGone, Servers};
use crate::node_client::{self, Node, NodeClientError};
use crate::state::AgentState;

/// How a session (or an attestation) ended.
enum SessionEnd {
    /// Reconnect at once (e.g. after renewing the agent SVID).
    Reconnect,
    /// The server no longer knows us: forget the identity.
    Evicted(String),
    /// The server is gone (unreachable, Unavailable, transport failure): fail over.
    Gone(String),
    /// The server answered but the session cannot go on: back off, then the next server.
    Failed(String),
}

fn status_end(s: tonic::Status) -> SessionEnd {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            SessionEnd::Evicted(s.message().to_owned())
        }
        _ if failover::server_gone(&s) => {
            SessionEnd::Gone(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => SessionEnd::Failed(format!("{}: {}", s.code(), s.message())),
    }
}

/// A failed connection or exchange: no connection (including a server whose certificate does
/// not verify as the server's SPIFFE ID) is a server gone.
fn node_end(e: NodeClientError) -> SessionEnd {
    match e {
        NodeClientError::Connect { .. } => SessionEnd::Gone(e.to_string()),
        NodeClientError::Status(s) => status_end(s),
        e => SessionEnd::Failed(e.to_string()),
    }
}

impl AgentState {
    /// Attests with `server`. A refusal is `Failed`, never `Evicted`: there is no identity yet.
    async fn attest(&self, server: &Server) -> Result<(), SessionEnd> {
        let refused = |e: NodeClientError| match node_end(e) {
            SessionEnd::Evicted(why) => SessionEnd::Failed(why),
            end => end,
        };
        let mut client = node_client::connect(
            &server.addr.to_string(),
            self.td(),
            self.trust.clone(),
            None,
        )
        .await
        .map_err(refused)?;
        let key =
            PrivateKey::generate(KeyType::EcP256).map_err(|e| SessionEnd::Failed(e.to_string()))?;
        let svid = node_client::attest(&mut client, self.td(), &*self.node_attestor, &key)
            .await
            .map_err(refused)?;
        tracing::info!(agent = %svid.spiffe_id, expires_at = svid.expires_at, server = %server, "attested");
        self.set_identity(&svid, key)
            .map_err(|e| SessionEnd::Failed(e.to_string()))
    }

    /// Runs forever: pick a server, attest/resume, session, fail over or back off.
    pub async fn run(self: Arc<Self>) {
        // The back-off after a server refused or failed us; a server gone is `failover`'s.
        let mut backoff = Duration::from_millis(250);
        let mut servers = Servers::new(self.cfg.server_addresses.clone());
        loop {
            // An SVID that expired while the server was unreachable cannot open a session:
            // forget it and attest again.
            let expired = self
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|i| i.expires_at <= writ_core::now_unix());
            if expired {
                tracing::warn!("agent SVID expired while disconnected; attesting again");
                self.forget_identity();
            }
            let have_identity = self
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            let server = match servers.current(|n| self.random_below(n)).await {
                Ok(s) => s,
                Err(why) => {
                    let wait = servers.pass_failed(|n| self.random_below(n));
                    tracing::warn!(reason = %why, retry_in = ?wait, "no server address resolves; serving from cache");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let end = if have_identity {
                self.clone()
                    .session(&server, &mut servers, &mut backoff)
                    .await
            } else {
                match self.attest(&server).await {
                    Ok(()) => continue,
                    Err(SessionEnd::Failed(why)) => {
                        tracing::warn!(server = %server, error = %why, "attestation failed");
                        backoff = self.sleep_backoff(backoff).await;
                        self.next_server(&mut servers);
                        continue;
                    }
                    Err(end) => end,
                }
            };
            self.view.set_connected(false);
            self.view.jwt.set_client(None);
            match end {
                SessionEnd::Reconnect => servers.ended(),
                SessionEnd::Evicted(why) => {
                    servers.ended();
                    tracing::warn!(server = %server, reason = %why, "server refused the agent identity; attesting again");
                    self.forget_identity();
                    backoff = self.sleep_backoff(backoff).await;
                }
                SessionEnd::Gone(why) => self.fail_over(&mut servers, &why).await,
                SessionEnd::Failed(why) => {
                    tracing::warn!(server = %server, reason = %why, "server session ended; serving from cache and reconnecting");
                    backoff = self.sleep_backoff(backoff).await;
                    self.next_server(&mut servers);
                }
            }
        }
    }

    /// The current server is gone: on to the next one (after a pause if a whole pass failed).
    async fn fail_over(&self, servers: &mut Servers, why: &str) {
        let Some(f) = servers.failed(|n| self.random_below(n)).await else {
            return;
        };
        match &f.to {
            Some(to) if *to != f.from => tracing::warn!(
                from = %f.from, to = %to, reason = %why, wait = ?f.wait,
                "server gone; failing over to the next server, serving from cache meanwhile"
            ),
            _ => tracing::warn!(
                server = %f.from, reason = %why, retry_in = ?f.wait,
                "server gone; serving from cache and reconnecting"
            ),
        }
        tokio::time::sleep(f.wait).await;
    }

    /// The current server answered but could not serve us: try the next one next time.
    fn next_server(&self, servers: &mut Servers) {
        if let Some((from, to)) = servers.skip() {
            if from != to {
                tracing::warn!(from = %from, to = %to, "failing over to the next server");
            }
        }
    }

    /// Sleeps a random time up to `backoff` ("full jitter") and returns the next backoff.
    async fn sleep_backoff(&self, backoff: Duration) -> Duration {
        let ms = backoff.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(
            ms / 2 + self.random_below(ms / 2 + 1),
        ))
        .await;
        (backoff * 2).min(Duration::from_secs(30))
    }

    async fn session(
        self: Arc<Self>,
        server: &Server,
        servers: &mut Servers,
        backoff: &mut Duration,
    ) -> SessionEnd {
        let resolver = self
            .resolver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(resolver) = resolver else {
            return SessionEnd::Evicted("no identity".into());
        };
        let client = match node_client::connect(
            &server.addr.to_string(),
            self.td(),
            self.trust.clone(),
            Some(resolver),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return node_end(e),
        };
        // Resume from our revision only when we hold a complete snapshot.
        let after = {
            let c = self.view.read();
            if c.synced {
                c.revision
            } else {
                0
            }
        };
        let mut sync = match client
            .clone()
            .sync_entries(pb::SyncEntriesRequest {
                after_revision: after,
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return status_end(s),
        };
        let mut bundles = match client
            .clone()
            .watch_bundles(pb::WatchBundlesRequest {})
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return status_end(s),
        };
        // Calls of this session that find the server gone end it (streams end it themselves).
        let (gone, mut gone_rx) = ServerGone::new();
        self.view
            .jwt
            .set_client(Some((client.clone(), gone.clone())));
        self.view.set_connected(true);
        servers.connected();
        *backoff = Duration::from_millis(250);
        tracing::info!(server = %server, resume_after = after, "connected to server");

        let signer = tokio::spawn(self.clone().signer(client.clone(), gone.clone()));
        let reporter = {
            let (d, c, g) = (self.view.deliveries.clone(), client.clone(), gone.clone());
            tokio::spawn(async move { d.report(c, g).await })
        };
        let renew_at = {
            let id = self.identity.read().unwrap_or_else(|p| p.into_inner());
            id.as_ref()
                .map(|i| i.issued_at + (i.expires_at - i.issued_at) / 2)
                .unwrap_or(0)
        };
        let mut pending: crate::sync::PendingSnapshot = None;
        let end = loop {
            let renew_in = Duration::from_secs((renew_at - writ_core::now_unix()).max(0) as u64);
            tokio::select! {
                msg = sync.message() => match msg {
                    Ok(Some(m)) => self.apply_sync(m, &mut pending),
                    Ok(None) => break SessionEnd::Failed("server closed the sync stream".into()),
                    Err(s) => break status_end(s),
                },
                msg = bundles.message() => match msg {
                    Ok(Some(m)) => self.apply_bundles(m),
                    Ok(None) => break SessionEnd::Failed("server closed the bundle stream".into()),
                    Err(s) => break status_end(s),
                },
                Some(why) = gone_rx.recv() => break SessionEnd::Gone(why),
                _ = tokio::time::sleep(renew_in) => {
                    match self.renew(client.clone()).await {
                        Ok(()) => break SessionEnd::Reconnect,
                        Err(e) => break e,
                    }
                }
            }
        };
        signer.abort();
        reporter.abort();
        end
    }

    async fn renew(&self, mut client: Node) -> Result<(), SessionEnd> {
        let key =
            PrivateKey::generate(KeyType::EcP256).map_err(|e| SessionEnd::Failed(e.to_string()))?;
        let csr = key
            .csr_der()
            .map_err(|e| SessionEnd::Failed(e.to_string()))?;
        let r = client
            .renew_agent(pb::RenewAgentRequest { csr })
            .await
            .map_err(status_end)?
            .into_inner();
        let svid = r
            .svid
            .ok_or_else(|| SessionEnd::Failed("empty renewal".into()))
            .and_then(|s| {
                node_client::agent_svid(s, self.td()).map_err(|e| SessionEnd::Failed(e.to_string()))
            })?;
        self.set_identity(&svid, key)
            .map_err(|e| SessionEnd::Failed(e.to_string()))?;
        tracing::info!(agent = %svid.spiffe_id, expires_at = svid.expires_at, "agent SVID renewed");
        Ok(())
    }
}
