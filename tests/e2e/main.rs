//! Cross-process scenarios: CA rotation, several agents, re-attestation, crash durability, the
//! mTLS example, the quick start and the audit journal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod agent_tasks_example;
mod audit;
mod authority;
mod durability;
mod federation;
mod ha;
mod mtls_example;
mod nodes;
mod oidc;
mod quickstart;
mod revocation;
mod rotation;
mod support;
mod tasks;
mod wit;
