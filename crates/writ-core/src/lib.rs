//! writ-core: the vocabulary of writ, with no I/O.
//!
//! - [`SpiffeId`] and [`TrustDomain`]: parsed once, canonical by construction; every rule of the
//!   SPIFFE ID standard is enforced by the parser and nothing is ever normalised.
//! - [`Selector`]: `type:value` facts about nodes and workloads.
//! - [`Entry`]: a registration entry with its governance record (`owner`, `purpose`,
//!   `expires_at`).
//! - [`AttestedNode`], [`JoinToken`]: what the server remembers about agents.
//! - [`Bundle`]: one trust domain's X.509 and JWT authorities, and the SPIFFE bundle JSON format.
//!
//! Everything that comes from outside (IDs, selectors, bundles, PEM) turns into a typed error
//! with a message naming the offending value; nothing here panics on input.
//!
//! ```
//! use writ_core::{Selector, SpiffeId, TrustDomain};
//!
//! let id = SpiffeId::parse("spiffe://example.org/ns/prod/web").unwrap();
//! assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
//! assert_eq!(id.path(), "/ns/prod/web");
//!
//! // Rejected, never normalised (the root of CVE-2021-27099 elsewhere):
//! let err = SpiffeId::parse("spiffe://example.org/a/../b").unwrap_err();
//! assert!(err.to_string().contains("`..`"));
//!
//! // Selector values may contain ':'.
//! let s = Selector::parse("x509pop:subject:cn:node-1").unwrap();
//! assert_eq!((s.kind(), s.value()), ("x509pop", "subject:cn:node-1"));
//! ```

pub mod bundle;
pub mod config;
pub mod duration;
pub mod entry;
pub mod id;
pub mod node;
pub mod pem;
pub mod selector;
pub mod task;

pub use bundle::{Bundle, BundleError, JwtAuthority, PublicJwk};
pub use duration::{format_duration, parse_duration, DurationError};
pub use entry::{is_reserved_id, server_id, Delegation, Entry, EntryById, EntryError};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use node::{AttestedNode, JoinToken};
pub use selector::{Selector, SelectorError};
pub use task::{is_task_id, Task, TaskState};

/// Current time as unix seconds.
///
/// Lives here because every crate needs the same notion of "now" as an `i64`; a clock before 1970
/// reads as 0.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
