//! The gRPC edge: the two services, thin translations between protobuf messages and the
//! server's flows.
//!
//! - [`node`]: `writ.v1.Node`, agent-facing, over TLS.
//! - [`admin`]: `writ.v1.Admin`, operators, on the private Unix socket; [`governance`] holds its
//!   audit, revocation and policy methods.
//! - [`edge`]: the tower layer both go through: refusal metrics, agent authentication, the
//!   attestation rate limit.
//! - [`status`]: the one mapping from the flows' typed errors to gRPC statuses.

pub(crate) mod admin;
pub(crate) mod edge;
pub(crate) mod federation;
pub(crate) mod governance;
pub(crate) mod node;
pub(crate) mod status;
