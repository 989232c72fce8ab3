//! The `writ` command line: the command tree of contract.md, usage errors, the CLI reference in
//! docs/cli.md, and the deploy/ files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod deploy;
mod reference;
mod support;
