//! writ-store: the server's datastore.
//!
//! [`Store`] is the interface the server uses; [`SledStore`] is the embedded implementation (one
//! server), [`PgStore`] the PostgreSQL one (several servers sharing one trust domain; their
//! changes reach each other as [`Notice`]s).
//! What it holds: registration entries (with lookups by ID, SPIFFE ID, parent ID and selector),
//! attested nodes, single-use join tokens, the trust domain's own and federated bundles, the CA
//! rotation journal, the **entry revision log** and the **audit journal** (hash-chained records
//! with signed checkpoints, see `writ-audit`).
//!
//! Invariants:
//! - Every entry change gets the next revision number and a record in the revision log, in the
//!   same atomic transaction as the change itself; the log is readable from any revision that has
//!   not been compacted away. It feeds incremental sync to agents and the audit journal.
//! - Every write method returns only after the data is flushed to disk: what the store
//!   acknowledged survives `kill -9`.
//! - Entry writes are serialised by one lock, so uniqueness checks and revision numbering cannot
//!   race.

mod audit;
pub mod journal;
mod pg;
mod sled_audit;
mod sled_store;

use serde::{Deserialize, Serialize};
use writ_core::{AttestedNode, Bundle, Entry, JoinToken, Selector, SpiffeId, Task, TrustDomain};

pub use audit::{AuditBatch, AuditQuery, CheckpointSigner};
pub use pg::{PgSettings, PgStore};
pub use sled_store::SledStore;
pub use writ_audit::{Checkpoint, NewRecord, Record};

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
    /// The database cannot be opened (another process holds it, say).
    #[error("datastore: cannot open `{path}`: {source}")]
    Open {
        /// The datastore directory.
        path: String,
        /// The backend's error.
        source: BoxError,
    },
    /// The database failed.
    #[error("datastore: {0}")]
    Db(#[source] BoxError),
    /// The database cannot be reached (down, restarting, connection cut): nothing was
    /// changed by the failed call; retrying later may succeed.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not decode.
    #[error("datastore record is corrupt: {0}")]
    Corrupt(#[source] BoxError),
}

/// A backend's own error, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.into())
    }
}

/// A change another server (or this one) committed to a shared store. A hint: the store is the
/// record, and [`Notice::Resync`] means notices may have been missed (read everything again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Entries changed: read the revision log from the revision you have.
    Entries,
    /// This node's record changed (banned, evicted, renewed).
    Node(String),
    /// This trust domain's bundle changed.
    Bundle(String),
    /// The revocation list changed.
    Revocations,
    /// The run-time federation relationships changed.
    Federations,
    /// A server's share of the trust domain's authorities changed.
    Authorities,
    /// Notices may have been lost (the listening connection was re-established).
    Resync,
}

/// Computes the own bundle from every server's authority share and the stored bundle; `None`
/// keeps the stored one (see [`Store::update_own_bundle`]).
pub type MakeBundle<'a> = &'a mut dyn FnMut(Vec<Bundle>, Option<&Bundle>) -> Option<Bundle>;

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

/// What [`Store::update_node`] does with a node record once its closure has looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUpdate {
    /// Write this record (insert or replace).
    Put(AttestedNode),
    /// Delete the record.
    Delete,
    /// Leave the record as it is (the closure refused, or there is nothing to do).
    Keep,
}

/// Which entries [`Store::scan_entries`] visits.
#[derive(Debug, Clone, Copy)]
pub enum EntryFilter<'a> {
    /// Every entry.
    All,
    /// Entries granting this SPIFFE ID.
    SpiffeId(&'a SpiffeId),
    /// Entries with this parent.
    Parent(&'a SpiffeId),
    /// Entries having this selector.
    Selector(&'a Selector),
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
    /// Visits the entries `filter` selects whose ID is greater than `after` ("" for all), in ID
    /// order, until `visit` returns false. Reads only what it visits (plus index keys), so a
    /// paged listing costs its page, not the whole registry.
    fn scan_entries(
        &self,
        filter: EntryFilter<'_>,
        after: &str,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError>;

    /// The latest revision (0 when nothing was ever written).
    fn revision(&self) -> Result<u64, StoreError>;
    /// Changes with revision > `after`, oldest first, at most `limit`.
    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// Drops log records with revision <= `upto`.
    fn compact_log(&self, upto: u64) -> Result<(), StoreError>;

    /// Inserts or replaces a node record.
    fn put_node(&self, node: AttestedNode) -> Result<AttestedNode, StoreError>;
    /// Reads node `id`, hands the record (or `None`) to `decide`, and applies its decision,
    /// atomically with respect to every other node write: if the record changed in between,
    /// `decide` is called again with the new record. So a decision made on a record (renewal,
    /// ban, attestation) can never overwrite a change it did not see. Returns the record as it
    /// is after the call. `decide` must not block; it may be called more than once.
    fn update_node(
        &self,
        id: &SpiffeId,
        decide: &mut dyn FnMut(Option<&AttestedNode>) -> NodeUpdate,
    ) -> Result<Option<AttestedNode>, StoreError>;
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

    /// Appends `batch` after the journal's head in one atomic write: numbers, chains and hashes
    /// the records, signs the new head with `sign` (stored with them), and returns once all of
    /// it is durable. Appends are serialised by the store, so the chain stays linear.
    fn append_audit(
        &self,
        batch: AuditBatch,
        sign: CheckpointSigner<'_>,
    ) -> Result<Vec<Record>, StoreError>;
    /// Visits the records `query` selects with `seq > after`, in order, until `visit` returns
    /// false. A record that does not decode is visited as `Err((seq, reason))`.
    fn audit_scan(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Result<Record, (u64, String)>) -> bool,
    ) -> Result<(), StoreError>;
    /// Every checkpoint, oldest first.
    fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
    /// The number and hash of the newest record (`0` and the genesis hash when empty).
    fn audit_head(&self) -> Result<(u64, String), StoreError>;

    /// Stores the CA journal (opaque bytes to the store).
    fn put_ca_journal(&self, journal: &[u8]) -> Result<(), StoreError>;
    /// The CA journal, if one was stored.
    fn get_ca_journal(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores the revocation list (opaque bytes to the store), durably before returning.
    fn put_revocations(&self, list: &[u8]) -> Result<(), StoreError>;
    /// The revocation list, if one was stored.
    fn get_revocations(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Creates or replaces a task record. Durable with the next audit append (one flush of
    /// the same store): task records are always followed by their journal records, so this
    /// saves one fsync per task without acknowledging anything that is not durable.
    fn put_task(&self, task: &Task) -> Result<(), StoreError>;
    /// Every task record kept.
    fn list_tasks(&self) -> Result<Vec<Task>, StoreError>;
    /// Forgets task records (long ended or expired), durably.
    fn delete_tasks(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Stores the run-time federation relationships (opaque bytes), durably.
    fn put_federations(&self, list: &[u8]) -> Result<(), StoreError>;
    /// The run-time federation relationships, if stored.
    fn get_federations(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether other servers share this store (their changes then arrive through
    /// [`Store::subscribe`], and the server must not assume it made every change).
    fn shared(&self) -> bool {
        false
    }
    /// Notices of changes any server committed, this one included (shared stores only).
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }
    /// Stores this server's share of the trust domain's authorities (its CAs' roots and JWT
    /// keys, as a bundle) and recomputes the trust domain's bundle, atomically with respect to
    /// every other server doing the same: `make(shares, stored)` gets every server's share
    /// (this one's included) and the stored bundle, and returns the bundle to store, or `None`
    /// to keep the stored one. Returns the bundle in force afterwards. The published bundle is
    /// the union of the shares: each server signs with its own CA, and every server's SVIDs
    /// must verify everywhere. A store for one server has one share.
    fn update_own_bundle(
        &self,
        share: &Bundle,
        make: MakeBundle<'_>,
    ) -> Result<Option<Bundle>, StoreError> {
        let stored = self.get_bundle(&share.trust_domain)?;
        match make(vec![share.clone()], stored.as_ref()) {
            Some(b) => {
                self.put_bundle(&b)?;
                Ok(Some(b))
            }
            None => Ok(stored),
        }
    }

    /// Reads the revocation list, hands it to `merge`, and stores what `merge` returns,
    /// atomically with respect to every other server's update (so two servers revoking at once
    /// both stay revoked). Returns what was stored. One server's callers serialise themselves.
    fn update_revocations(
        &self,
        merge: &mut dyn FnMut(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let next = merge(self.get_revocations()?.as_deref());
        self.put_revocations(&next)?;
        Ok(next)
    }
}
