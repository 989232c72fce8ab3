//! writ-agent: the node agent.
//!
//! - [`node_client`]: the TLS channel to the server (server authenticated by SPIFFE ID) and the
//!   attestation exchange (`join_token`, `x509pop`).

pub mod node_client;
