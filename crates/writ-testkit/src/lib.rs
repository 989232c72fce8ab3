//! writ-testkit: what the test suites and the benchmark share to run the real `writ`
//! processes: spawning a server and agents in temporary directories, running the CLI against
//! them, PKI checks with an independent verifier, process measurements, and polling with
//! deadlines instead of sleeping.
//!
//! Test code: panics are how failures are reported here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent;
mod pki;
mod poll;
mod postgres;
mod process;
mod run;
mod server;

pub use agent::TestAgent;
pub use pki::{webpki_verify, webpki_verify_with_crls};
pub use poll::{eventually, free_port};
pub use postgres::{PgCluster, PG_PASSWORD};
pub use process::{cpu_ticks, my_uid, rss_kib, writ_bin};
pub use run::{cli, Run};
pub use server::{ServerOpts, TestServer};
