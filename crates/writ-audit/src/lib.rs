//! writ-audit: one tamper-evident record of every identity's lifecycle.
//!
//! The journal is a sequence of [`Record`]s, numbered from 1 without gaps. Each record carries
//! the SHA-256 of its own canonical form and the hash of the record before it, so editing,
//! removing or reordering any record breaks the chain at that point. The head of the chain is
//! signed after every append by a dedicated audit key ([`Checkpoint`]); a journal whose tail
//! was cut off no longer reaches its newest checkpoint, which [`verify`] reports.
//!
//! This crate holds the data and the rules only (no I/O): the store appends and reads records,
//! the server decides what to record, and `writ audit verify` runs [`verify`] over what the
//! store returns.
//!
//! Invariants:
//! - A record's hash covers every field but the hash itself, in a fixed order
//!   ([`Record::canonical`]); `details` objects serialise with sorted keys.
//! - `prev_hash` of record 1 is [`GENESIS`]; of record n it is the hash of record n-1.
//! - A checkpoint signs `(seq, hash, time)` of the head under a context string, with an ES256
//!   key named by `kid`; only keys the verifier was given are trusted.
//!
//! ```
//! use writ_audit::{Actor, Chain, NewRecord};
//! let mut chain = Chain::default();
//! let r = chain.append(NewRecord::new("entry.created", Actor::operator(1000)), 1_700_000_000_000);
//! assert_eq!(r.seq, 1);
//! assert!(r.hash_ok());
//! ```

mod checkpoint;
mod record;
mod verify;

pub use checkpoint::{Checkpoint, CheckpointError, VerifyingKey, CHECKPOINT_CONTEXT};
pub use record::{kinds, rfc3339_ms, Actor, Chain, NewRecord, Record, GENESIS};
pub use verify::{verify, Verifier, VerifyError, VerifyReport};
