//! writ-server: the issuing server.
//!
//! - [`config`]: the TOML config of contract.md.
//! - [`attest`]: node attestors (`join_token`, `x509pop`) behind the [`attest::NodeAttestor`]
//!   trait.
//! - [`index`]: the in-memory entry index and the authorisation rule (which entries an agent may
//!   serve), in time proportional to the agent's entries.
//! - [`node_api`]: the agent-facing `writ.v1.Node` service over TLS: attestation, agent SVID
//!   renewal, push sync of entries, batch X509-SVID signing, JWT-SVID minting, bundle watch.
//! - [`admin_api`]: the operator `writ.v1.Admin` service on a private Unix socket.
//! - [`run`]: start-up, background loops (CA rotation, server SVID rotation) and shutdown.
//!
//! Invariants: every entry write is durable before it is acknowledged and reaches the index and
//! the sync streams in revision order; an agent only ever gets SVIDs for entries in the
//! authorised set computed here; every mTLS call re-checks that the agent is known, not banned and
//! presents its current SVID.

pub mod admin_api;
pub mod attest;
pub mod client;
pub mod config;
pub mod index;
pub mod metrics;
pub mod node_api;
pub mod run;
pub mod state;

pub use config::{ConfigError, ServerConfig};
pub use run::{start, RunningServer, ServerError};
