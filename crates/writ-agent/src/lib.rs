//! writ-agent: the node agent.
//!
//! - [`config`]: the agent's TOML config.
//! - [`node_client`]: the TLS channel to the server (server authenticated by SPIFFE ID) and the
//!   attestation exchange (`join_token`, `x509pop`).
//! - [`agent`]: the session loop: attest or resume, push sync of entries, SVID signing and
//!   rotation with jitter, bundle following, agent SVID renewal, reconnect with backoff.
//! - [`cache`]: entries, workload SVIDs and bundles held for workloads.
//! - [`attestor`]: workload attestation (the `unix` attestor, from `SO_PEERCRED` and `/proc`).
//! - [`workload_api`]: the SPIFFE Workload API.
//! - [`workload_client`]: a client for it (used by `writ svid`, `writ jwt`, `writ helper`).
//! - [`persist`]: the agent identity and bundle on disk.
//! - [`run`]: start-up and shutdown.
//!
//! Invariants: workload keys are made here and never leave the node except to the workload;
//! an SVID is only served to a caller whose kernel-attested selectors include all of the
//! entry's; attestation fails closed.

pub mod agent;
pub mod attestor;
pub mod authority;
pub mod cache;
pub mod config;
pub mod hpack;
pub mod node_client;
pub mod persist;
pub mod run;
pub mod workload_api;
pub mod workload_client;

pub use config::AgentConfig;
pub use run::{start, RunningAgent};
