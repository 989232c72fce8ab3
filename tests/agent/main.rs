//! End-to-end tests of `writ agent run` with a real server: the Workload API as independent
//! clients (the `spiffe` crate, py-spiffe) see it, the Workload API rules of
//! spiffe-requirements.md section 4, stream updates, restarts and outages, and the attacks of the
//! security review replayed against the real processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod attestation;
mod hardening;
mod interop;
mod lifecycle;
mod streams;
mod support;
mod workload_api;
