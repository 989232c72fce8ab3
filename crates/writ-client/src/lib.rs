//! writ-client: what a workload or an orchestrator links to talk to its writ agent.
//!
//! - [`workload`]: the SPIFFE Workload API client (any SPIFFE agent) and the raw
//!   `writ.task.v1.Tasks` client, on the agent's Unix socket.
//! - [`tasks`]: task identities, typed: start one for a job, hand its credentials to tools,
//!   end it (everything it holds is revoked at once).
//! - [`proof`]: WIT-SVIDs and Workload Proof Tokens: a credential that makes a fresh proof per
//!   request, and a checker with its replay cache for services that receive them.
//!
//! ```no_run
//! # async fn run() -> Result<(), writ_client::tasks::TaskError> {
//! use writ_client::tasks::{Tasks, Want};
//!
//! let mut tasks = Tasks::connect(None).await?; // SPIFFE_ENDPOINT_SOCKET
//! let t = tasks
//!     .start("summarise ticket 42", 300, &["https://tool.example"], Want::JWT | Want::WIT)
//!     .await?;
//! let proof = t.wit.as_ref().unwrap().proof("https://tool.example", 30)?;
//! // ... call the tool with t.jwt_svid, or with the WIT-SVID and `proof` ...
//! tasks.end(&t.task.id, "done").await?;
//! # Ok(()) }
//! ```

pub mod proof;
pub mod tasks;
pub mod workload;
