//! writ-proto: Rust types and gRPC stubs generated from `proto/` at build time by protox (a
//! pure-Rust protobuf compiler) and tonic-prost-build, so building needs no system `protoc`.
//!
//! - [`workload`]: the standard SPIFFE Workload API (no proto package; gRPC paths are
//!   `/SpiffeWorkloadAPI/<Method>`), exactly as published, never extended.
//! - [`v1`]: writ's own agent <-> server (`writ.v1.Node`) and operator (`writ.v1.Admin`)
//!   protocols. A breaking change gets a new package version (`writ.v2`).

/// The SPIFFE Workload API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// writ's agent and admin protocols, version 1.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/writ.v1.rs"));
}

/// Task identities on the Workload API socket (`writ.task.v1.Tasks`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod task {
    include!(concat!(env!("OUT_DIR"), "/writ.task.v1.rs"));
}

/// Conversions between writ-core types and `writ.v1` messages.
pub mod convert;

/// The metadata key every Workload API request must carry, with value `true`.
pub const WORKLOAD_HEADER: &str = "workload.spiffe.io";

/// What an agent signs to answer an x509pop challenge: this context string, then the server's
/// nonce. The context keeps the signature from being usable for anything else.
pub const X509POP_CONTEXT: &[u8] = b"writ x509pop challenge v1\0";

/// What an sshpop agent signs with its host key, followed by the server's nonce.
pub const SSHPOP_CONTEXT: &[u8] = b"writ sshpop challenge v1\0";

/// Length of the x509pop challenge nonce.
pub const X509POP_NONCE_LEN: usize = 32;
