//! The agent's session loop: attest (or resume a persisted identity), open an mTLS session with
//! the server, and inside it run the entry sync and bundle streams ([`crate::sync`]), the signer
//! ([`crate::signer`]) and the agent SVID renewal. When the server is unreachable the cache keeps
//! serving; the loop reconnects with exponential backoff (250 ms to 30 s) and full jitter.
//! PermissionDenied from the server means the identity is gone (evicted or banned): it is
//! forgotten and the agent attests again (x509pop can; a used join token cannot, and the log
//! says so).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use writ_ca::{KeyType, PrivateKey};
use writ_core::Entry;
use writ_proto::v1 as pb;

use crate::node_client::{self, Node, NodeClientError};
use crate::state::AgentState;

/// How a session ended.
enum SessionEnd {
    /// Reconnect at once (e.g. after renewing the agent SVID).
    Reconnect,
    /// The server no longer knows us: forget the identity.
    Evicted(String),
    /// Transient failure: back off.
    Failed(String),
}

fn status_end(s: tonic::Status) -> SessionEnd {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            SessionEnd::Evicted(s.message().to_owned())
        }
        _ => SessionEnd::Failed(format!("{}: {}", s.code(), s.message())),
    }
}

impl AgentState {
    async fn attest(&self) -> Result<(), String> {
        let mut client = node_client::connect(
            &self.cfg.server_address,
            self.td(),
            self.trust.clone(),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        let key = PrivateKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
        let svid = node_client::attest(&mut client, self.td(), &*self.node_attestor, &key)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(agent = %svid.spiffe_id, expires_at = svid.expires_at, "attested");
        self.set_identity(&svid, key).map_err(|e| e.to_string())
    }

    /// Runs forever: attest/resume, session, backoff.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
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
            if !have_identity {
                if let Err(e) = self.attest().await {
                    tracing::warn!(error = %e, "attestation failed");
                    backoff = self.sleep_backoff(backoff).await;
                    continue;
                }
            }
            let end = self.clone().session(&mut backoff).await;
            self.view.set_connected(false);
            self.view.jwt.set_client(None);
            match end {
                SessionEnd::Reconnect => continue,
                SessionEnd::Evicted(why) => {
                    tracing::warn!(reason = %why, "server refused the agent identity; attesting again");
                    self.forget_identity();
                    backoff = self.sleep_backoff(backoff).await;
                }
                SessionEnd::Failed(why) => {
                    tracing::warn!(reason = %why, "server session ended; serving from cache and reconnecting");
                    backoff = self.sleep_backoff(backoff).await;
                }
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

    async fn session(self: Arc<Self>, backoff: &mut Duration) -> SessionEnd {
        let resolver = self
            .resolver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(resolver) = resolver else {
            return SessionEnd::Evicted("no identity".into());
        };
        let client = match node_client::connect(
            &self.cfg.server_address,
            self.td(),
            self.trust.clone(),
            Some(resolver),
        )
        .await
        {
            Ok(c) => c,
            Err(NodeClientError::Status(s)) => return status_end(s),
            Err(e) => return SessionEnd::Failed(e.to_string()),
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
        self.view.jwt.set_client(Some(client.clone()));
        self.view.set_connected(true);
        *backoff = Duration::from_millis(250);
        tracing::info!(server = %self.cfg.server_address, resume_after = after, "connected to server");

        let signer = tokio::spawn(self.clone().signer(client.clone()));
        let reporter = {
            let (d, c) = (self.view.deliveries.clone(), client.clone());
            tokio::spawn(async move { d.report(c).await })
        };
        let renew_at = {
            let id = self.identity.read().unwrap_or_else(|p| p.into_inner());
            id.as_ref()
                .map(|i| i.issued_at + (i.expires_at - i.issued_at) / 2)
                .unwrap_or(0)
        };
        let mut pending: Option<(u64, HashMap<String, Entry>)> = None;
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
