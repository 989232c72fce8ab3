//! Minting JWT-SVIDs for workloads: from the bounded cache ([`crate::jwt_cache`]) when a token
//! with more than half its life is there, else from the server, within the caller's rate.
//!
//! Invariant: a workload waits at most [`MINT_DEADLINE`] for the server; it never waits on a
//! server that accepted the connection but does not answer.

use std::sync::Mutex;
use std::time::Duration;

use writ_core::Entry;
use writ_proto::v1 as pb;

use crate::failover::ServerGone;
use crate::jwt_batch::Batcher;
use crate::jwt_cache::{JwtCache, Key, MintLimiter};
use crate::node_client::Node;

/// How long a JWT-SVID mint may take on the server before the workload is told Unavailable.
pub(crate) const MINT_DEADLINE: Duration = Duration::from_secs(10);

/// The JWT-SVID path of the Workload API.
#[derive(Debug, Default)]
pub(crate) struct JwtMinter {
    client: Mutex<Option<(Node, ServerGone)>>,
    /// Coalesces concurrent cache misses into `BatchMintJwt` calls (one per session).
    batcher: Mutex<Option<Batcher>>,
    cache: Mutex<JwtCache>,
    limiter: Mutex<MintLimiter>,
}

impl JwtMinter {
    /// The session's server connection and its gone signal (None while disconnected).
    pub(crate) fn set_client(&self, client: Option<(Node, ServerGone)>) {
        *self.batcher.lock().unwrap_or_else(|p| p.into_inner()) = client
            .as_ref()
            .map(|(node, gone)| Batcher::start(node.clone(), gone.clone()));
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// The session's server connection, if there is one now (shared with the task service).
    pub(crate) fn client(&self) -> Option<Node> {
        self.session().map(|(node, _)| node)
    }

    /// The connection with the signal of the session it belongs to, so that a call failing
    /// after its session ended cannot end the next one.
    pub(crate) fn session(&self) -> Option<(Node, ServerGone)> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps only the cached tokens `keep` approves.
    pub(crate) fn retain(&self, keep: impl Fn(&Key) -> bool) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(keep);
    }

    /// A JWT-SVID for `entry` and `audience` (already checked by
    /// [`crate::jwt_cache::check_audiences`]), from the cache while it has more than half its
    /// lifetime left, else freshly minted by the server if `uid` is within its rate.
    pub(crate) async fn mint(
        &self,
        entry: &Entry,
        audience: Vec<String>,
        uid: u32,
    ) -> Result<String, tonic::Status> {
        let key = Key {
            entry_id: entry.id.clone(),
            spiffe_id: entry.spiffe_id.clone(),
            audiences: audience,
        };
        let now = writ_core::now_unix();
        if let Some(t) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key, now)
        {
            return Ok(t);
        }
        if !self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(uid)
        {
            return Err(tonic::Status::resource_exhausted(format!(
                "too many new JWT-SVIDs for uid {uid}; try again shortly"
            )));
        }
        let batcher = self
            .batcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| tonic::Status::unavailable("agent is not connected to the server"))?;
        let r = batcher
            .mint(pb::MintJwtRequest {
                entry_id: entry.id.clone(),
                audience: key.audiences.clone(),
            })
            .await?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            r.token.clone(),
            now,
            r.expires_at,
            now,
        );
        Ok(r.token)
    }
}
