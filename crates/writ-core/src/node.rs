//! Attested nodes and join tokens: what the server remembers about agents.

use serde::{Deserialize, Serialize};

use crate::id::SpiffeId;
use crate::selector::Selector;

/// An agent that has attested. Evicting a node deletes this record (the agent must attest again);
/// banning keeps it with `banned = true` so the same identity cannot come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The node attestor that vouched for it (`join_token`, `x509pop`).
    pub attestor: String,
    /// Node selectors from attestation; node alias entries match on these.
    pub selectors: Vec<Selector>,
    /// Serial (hex) of the agent SVID currently valid for this node; a renewal replaces it.
    pub cert_serial: String,
    /// Expiry of that SVID (unix seconds).
    pub cert_not_after: i64,
    /// Serial of the previous SVID, still accepted until the agent first uses the new one.
    #[serde(default)]
    pub prev_cert_serial: String,
    /// Other IDs the agent is known by (the join token's `spiffe_id`), usable as entry parents.
    #[serde(default)]
    pub aliases: Vec<SpiffeId>,
    /// Banned: every call is refused and the node cannot re-attest.
    #[serde(default)]
    pub banned: bool,
    /// First attestation (unix seconds).
    pub created_at: i64,
    /// Store revision of the last change.
    #[serde(default)]
    pub revision: u64,
}

/// A single-use join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The secret value.
    pub token: String,
    /// Node alias the attesting agent is also known by, if any.
    pub spiffe_id: Option<SpiffeId>,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}
