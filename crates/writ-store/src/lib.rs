//! writ-store: the server's datastore.
//!
//! [`Store`] is the interface the server uses; [`SledStore`] is the embedded implementation.
//! What it holds: registration entries (with lookups by ID, SPIFFE ID, parent ID and selector),
//! attested nodes, single-use join tokens, the trust domain's own and federated bundles, the CA
//! rotation journal, and the **entry revision log**.
//!
//! Invariants:
//! - Every entry change gets the next revision number and a record in the revision log, in the
//!   same atomic transaction as the change itself; the log is readable from any revision that has
//!   not been compacted away. It feeds incremental sync to agents and the audit journal.
//! - Every write method returns only after the data is flushed to disk: what the store
//!   acknowledged survives `kill -9`.
//! - Entry writes are serialised by one lock, so uniqueness checks and revision numbering cannot
//!   race.

mod sled_store;

use serde::{Deserialize, Serialize};
use writ_core::{AttestedNode, Bundle, Entry, JoinToken, Selector, SpiffeId, TrustDomain};

pub use sled_store::SledStore;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such record.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// What kind of record.
        kind: &'static str,
        /// Its key.
        id: String,
    },
    /// A record with that key or content exists.
    #[error("{kind} `{id}` already exists")]
    AlreadyExists {
        /// What kind of record.
        kind: &'static str,
        /// The existing record's key.
        id: String,
    },
    /// The join token is unknown or already used.
    #[error("join token is unknown or already used")]
    TokenInvalid,
    /// The join token expired (it is consumed anyway).
    #[error("join token expired")]
    TokenExpired,
    /// The requested revision was compacted away; resync from a snapshot.
    #[error(
        "revision {requested} is older than the oldest kept ({oldest}); a full resync is needed"
    )]
    RevisionCompacted {
        /// What was asked for.
        requested: u64,
        /// The oldest revision still in the log.
        oldest: u64,
    },
    /// The database failed.
    #[error("datastore: {0}")]
    Db(String),
    /// A stored record does not decode.
    #[error("datastore record is corrupt: {0}")]
    Corrupt(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// What happened to an entry at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The entry was created.
    Created,
    /// The entry was updated.
    Updated,
    /// The entry was deleted.
    Deleted,
}

/// One record of the revision log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The revision of this change.
    pub revision: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The entry after the change (for a deletion: as it was when deleted).
    pub entry: Entry,
    /// For an update, the entry as it was before (so readers of the log can tell whom the old
    /// version concerned, e.g. an entry moved away from an agent).
    #[serde(default)]
    pub previous: Option<Entry>,
    /// When (unix seconds).
    pub at: i64,
}

/// The server's datastore.
pub trait Store: Send + Sync {
    /// Creates an entry. Its `id` is assigned when empty; `revision` is always assigned.
    /// Refuses an entry with the same SPIFFE ID, parent and selectors as an existing one.
    fn create_entry(&self, entry: Entry) -> Result<Entry, StoreError>;
    /// Creates several entries atomically (all or none), with consecutive revisions and one
    /// flush: bulk registration costs one fsync, not one per entry.
    fn create_entries(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError>;
    /// Replaces an existing entry (matched by `id`); `created_at` is kept.
    fn update_entry(&self, entry: Entry) -> Result<Entry, StoreError>;
    /// Deletes an entry and returns it as it was.
    fn delete_entry(&self, id: &str) -> Result<Entry, StoreError>;
    /// One entry by ID.
    fn get_entry(&self, id: &str) -> Result<Option<Entry>, StoreError>;
    /// Every entry.
    fn list_entries(&self) -> Result<Vec<Entry>, StoreError>;
    /// Entries granting `id`.
    fn entries_by_spiffe_id(&self, id: &SpiffeId) -> Result<Vec<Entry>, StoreError>;
    /// Entries whose parent is `parent`.
    fn entries_by_parent(&self, parent: &SpiffeId) -> Result<Vec<Entry>, StoreError>;
    /// Entries that have `selector` among theirs.
    fn entries_by_selector(&self, selector: &Selector) -> Result<Vec<Entry>, StoreError>;

    /// The latest revision (0 when nothing was ever written).
    fn revision(&self) -> Result<u64, StoreError>;
    /// Changes with revision > `after`, oldest first, at most `limit`.
    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// Drops log records with revision <= `upto`.
    fn compact_log(&self, upto: u64) -> Result<(), StoreError>;

    /// Inserts or replaces a node record.
    fn put_node(&self, node: AttestedNode) -> Result<AttestedNode, StoreError>;
    /// One node.
    fn get_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, StoreError>;
    /// Every node.
    fn list_nodes(&self) -> Result<Vec<AttestedNode>, StoreError>;
    /// Deletes a node record (eviction).
    fn delete_node(&self, id: &SpiffeId) -> Result<AttestedNode, StoreError>;

    /// Stores a new join token.
    fn create_join_token(&self, token: JoinToken) -> Result<(), StoreError>;
    /// Uses up a token: it is removed whatever the outcome, so it can never be used twice.
    fn consume_join_token(&self, token: &str, now: i64) -> Result<JoinToken, StoreError>;
    /// Removes expired tokens; returns how many.
    fn prune_join_tokens(&self, now: i64) -> Result<usize, StoreError>;

    /// Inserts or replaces a bundle (own or federated).
    fn put_bundle(&self, bundle: &Bundle) -> Result<(), StoreError>;
    /// One bundle.
    fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, StoreError>;
    /// Every bundle.
    fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError>;
    /// Deletes a bundle.
    fn delete_bundle(&self, td: &TrustDomain) -> Result<(), StoreError>;

    /// Stores the CA journal (opaque bytes to the store).
    fn put_ca_journal(&self, journal: &[u8]) -> Result<(), StoreError>;
    /// The CA journal, if one was stored.
    fn get_ca_journal(&self) -> Result<Option<Vec<u8>>, StoreError>;
}
