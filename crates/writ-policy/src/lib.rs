//! writ-policy: policy-as-code for issuance. Cedar decides every mint.
//!
//! - [`schema`]: the Cedar schema of writ's decisions (shipped with writ, `writ policy schema`).
//! - [`PolicyBundle`]: policy files parsed, given stable ids, and validated against the schema
//!   as one unit: a set that fails anywhere is refused whole, naming file, line and policy.
//! - [`MintRequest`] -> [`Decision`]: one authorization request per issuance, built from the
//!   facts of that request; the decision carries the ids of the policies that decided it.
//!
//! Invariants: a bundle in force has passed strict validation against the schema; a request
//! that Cedar cannot evaluate (an error in a policy) is denied, never allowed; policy ids are
//! the `@id("...")` annotation when present, else `<file name>#<n>` (n counts from 0 in the
//! file), so a denial names something an operator can find.

mod bundle;
mod request;
pub mod schema;

pub use bundle::{policy_files, PolicyBundle, PolicyError, MAX_FILE_BYTES, MAX_POLICIES};
pub use request::{Action, Decision, MintRequest, Principal};
