//! End-to-end tests of `writ server run` through the real binary: the operator CLI over the
//! admin socket, an agent client (writ-agent's node client) over real TLS, and the attacks of
//! the security review replayed against the real processes. Issued SVIDs are checked with
//! rustls-webpki against the bundle `writ bundle show` prints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod attestation;
mod authorization;
mod bundles;
mod entries;
mod governance;
mod hardening;
mod policy;
mod sshpop;
mod support;
mod sync;
