//! writ-agent: the node agent.
//!
//! Data flow, one file a step:
//! - [`config`]: the agent's TOML config; each plugin reads its own table.
//! - `node_attest/`: node attestation plugins, agent side (`join_token`, `x509pop`, `sshpop`).
//! - `node_client`: the TLS channel to the server (server authenticated by SPIFFE ID) and the
//!   attestation exchange.
//! - `state`: what the agent knows (identity, trust bundle, the workload view).
//! - `failover`: the servers of `server_address` (every address of every name), round robin
//!   from a random start, failing over when one goes away.
//! - `session`: attest or resume, one mTLS session at a time, renewal, fail over or reconnect
//!   with backoff.
//! - `sync`: entries and bundles from the server into the cache.
//! - `signer`: an X509-SVID for every servable entry, rotation with jitter.
//! - `view`: [`view::WorkloadView`], all the Workload API reads (cache, change signal, JWTs).
//! - `jwt`, `jwt_cache`: JWT-SVID minting, the bounded cache, the limits on audiences.
//! - `conn`: accepting Workload API connections: caps, back-off, attestation bound to the
//!   connection.
//! - `workload_attest/`: workload attestation plugins (`unix`, from `SO_PEERCRED` and `/proc`).
//! - `workload_api/`: the SPIFFE Workload API.
//! - `deliveries`: which process received or validated which SVID, logged durably and
//!   reported to the server's audit journal.
//! - `persist`: the agent identity and bundle on disk.
//! - [`run`]: start-up and shutdown.
//!
//! Invariants: workload keys are made here and never leave the node except to the workload;
//! an SVID is only served to a caller whose kernel-attested selectors include all of the
//! entry's; attestation fails closed.

pub mod cache;
pub mod config;
pub(crate) mod conn;
pub(crate) mod deliveries;
pub(crate) mod failover;
pub(crate) mod jwt;
pub(crate) mod jwt_batch;
pub(crate) mod jwt_cache;
pub mod node_attest;
pub mod node_client;
pub(crate) mod persist;
mod plugin;
pub mod run;
pub(crate) mod session;
pub(crate) mod signer;
pub mod state;
pub(crate) mod sync;
pub mod view;
pub(crate) mod wit;
pub(crate) mod workload_api;
pub(crate) mod workload_attest;

pub use config::AgentConfig;
pub use run::{start, RunningAgent};

/// Entry points for fuzz targets and benchmarks only; not a stable API.
#[doc(hidden)]
pub mod internal {
    pub use crate::workload_attest::{own_ids, parse_start_ticks};
}
