//! writ-server: the issuing server.
//!
//! Data flow, one file a step:
//! - [`config`]: the TOML config of contract.md; `plugin`: what plugin catalogs share (each
//!   plugin reads its own `[<kind>.<name>]` table); `plugins`: the datastore, key manager and
//!   upstream authority catalogs.
//! - `run`: start-up (datastore, CA, state) and shutdown; `listen`: the agent TLS listener and
//!   the admin socket with their gRPC servers; `conn`: accept loops that back off, connection
//!   caps, idle cut-off; `background`: CA rotation, the server's own SVID, token pruning.
//! - `grpc/`: the edge. `node` (`writ.v1.Node`, agents) and `admin` (`writ.v1.Admin`,
//!   operators) translate messages and call the flows below.
//! - `attest/`: node attestation: the exchange (`flow`) and the attestors (`join_token`,
//!   `x509pop`); `rate_limit`: attestations per source address.
//! - `audit/`: the audit journal (group-committed writes, the checkpoint key, verify).
//! - `authority`: authority rotation on demand (prepare, activate, taint, revoke).
//! - `auth`: who is calling (an agent's current SVID, every mTLS call).
//! - `governance`: owner, purpose and lifetime rules at entry creation; break-glass limits.
//! - `registry`: entry writes (store, index, broadcast), node eviction and bans, join tokens.
//! - `index`: the in-memory entry index and the authorisation rule; `authorise`: the rule
//!   applied before and after signing.
//! - `policy`: the Cedar policy set in force, reloads, the decision every mint asks for.
//! - `signing`: the signing queue, X509-SVIDs and JWT-SVIDs; `agent_svid`: agent renewal.
//! - `sync`: the entry sync stream (paged snapshot, then pushed changes); `paging`: page
//!   limits (count and encoded size).
//! - `deliveries`: delivery and validation records reported by agents, checked and journalled.
//! - `revoke`: revocation of X509-SVIDs and JWT-SVIDs, the CRL, what agents are told.
//! - `bundles`: the own and federated bundles, published to watchers and the TLS verifier.
//! - `metrics`: counters and the `/metrics`, `/live`, `/ready` endpoint.
//! - [`client`]: the admin API client (used by the CLI).
//!
//! Invariants: every entry write is durable before it is acknowledged and reaches the index and
//! the sync streams in revision order; an agent only ever gets SVIDs for entries in the
//! authorised set computed here; every mTLS call re-checks that the agent is known, not banned and
//! presents its current SVID.

pub(crate) mod agent_svid;
pub(crate) mod attest;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod authorise;
pub(crate) mod authority;
pub(crate) mod background;
pub mod bundles;
pub mod client;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod conn;
pub(crate) mod deliveries;
pub mod federation;
pub(crate) mod governance;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod index;
pub(crate) mod listen;
pub(crate) mod metrics;
pub mod oidc;
pub(crate) mod paging;
pub(crate) mod plugin;
pub(crate) mod plugins;
pub(crate) mod policy;
pub(crate) mod rate_limit;
pub(crate) mod registry;
pub(crate) mod revoke;
pub mod run;
pub(crate) mod signing;
pub mod state;
pub(crate) mod sync;
pub(crate) mod tasks;
pub(crate) mod wit;

pub use audit::AuditError;
pub use bundles::BundleSet;
pub use config::{ConfigError, ServerConfig};
pub use governance::{Governance, GovernanceError};
pub use policy::PolicySource;
pub use registry::RegistryError;
pub use run::{start, RunningServer, ServerError};
pub use state::ServerState;

/// Entry points for tests, fuzz targets and benchmarks only; not a stable API.
#[doc(hidden)]
pub mod internal {
    pub use crate::attest::x509pop::fingerprint;

    use crate::attest::{x509pop::X509PopAttestor, Challenge, NodeAttestor, Step};
    use writ_core::{Selector, SpiffeId, TrustDomain};

    /// x509pop attestation's two steps on fixed roots, for the fuzz target (the attestor types
    /// stay crate-private).
    pub struct X509PopProbe(X509PopAttestor);

    /// The challenge of an accepted chain, waiting for the node key's answer.
    pub struct X509PopPending(Box<dyn Challenge>);

    impl X509PopProbe {
        /// An attestor trusting `roots` (DER) for agents of `td`.
        pub fn new(td: TrustDomain, roots: Vec<Vec<u8>>) -> Self {
            Self(X509PopAttestor::new(td, roots))
        }

        /// The first step: `Ok(Some((nonce, pending)))` when the chain is accepted,
        /// `Ok(None)` if the attestor (wrongly) attested without a challenge, `Err` if refused.
        pub fn start(
            &self,
            payload: &[u8],
            now: i64,
        ) -> Result<Option<(Vec<u8>, X509PopPending)>, String> {
            match self.0.start(payload, now).map_err(|e| e.to_string())? {
                Step::Challenge { challenge, pending } => {
                    Ok(Some((challenge, X509PopPending(pending))))
                }
                Step::Done(_) => Ok(None),
            }
        }
    }

    impl X509PopPending {
        /// Checks the answer: the attested agent ID and node selectors, or why not.
        pub fn verify(self, answer: &[u8]) -> Result<(SpiffeId, Vec<Selector>), String> {
            let a = self.0.verify(answer).map_err(|e| e.to_string())?;
            Ok((a.agent_id, a.selectors))
        }
    }
}
