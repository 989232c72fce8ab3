//! The registry flow: entry writes, node eviction and bans, join tokens.
//!
//! An entry write goes store (one transaction, fsync) -> index -> broadcast, under one lock, so
//! every sync stream sees changes in revision order and nothing is published that is not durable.
//! Node records change only through the store's compare-and-swap (`update_node`). Listing
//! walks the most selective store index in ID order and stops when a page is full (see
//! [`crate::paging`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use writ_core::{AttestedNode, Entry, EntryError, Selector, SpiffeId};
use writ_proto::convert::entry_to_pb;
use writ_proto::v1 as pb;
use writ_store::{Change, ChangeKind, EntryFilter, NodeUpdate, StoreError};

use crate::paging::{field_len, Pager, PAGE_BYTES, PAGE_ENTRIES};
use crate::state::{unpoison, Event, ServerState};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The entry breaks a validation rule.
    #[error(transparent)]
    Invalid(#[from] EntryError),
    /// The entry names itself as parent.
    #[error("entry `{0}` cannot be its own parent")]
    OwnParent(SpiffeId),
    /// No such entry.
    #[error("entry `{0}` not found")]
    EntryNotFound(String),
    /// No such node.
    #[error("node `{0}` not found")]
    NodeNotFound(SpiffeId),
    /// The entry breaks a `[governance]` rule.
    #[error(transparent)]
    Governance(#[from] crate::governance::GovernanceError),
    /// The datastore refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// Whether the entry exists already (same SPIFFE ID, parent and selectors).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, RegistryError::Store(StoreError::AlreadyExists { .. }))
    }
}

/// What an entry listing matches; empty criteria match everything.
#[derive(Debug, Default)]
pub(crate) struct EntryQuery {
    pub(crate) spiffe_id: Option<SpiffeId>,
    pub(crate) parent_id: Option<SpiffeId>,
    pub(crate) selector: Option<Selector>,
}

impl EntryQuery {
    fn matches(&self, e: &Entry) -> bool {
        self.spiffe_id.as_ref().is_none_or(|i| &e.spiffe_id == i)
            && self.parent_id.as_ref().is_none_or(|p| &e.parent_id == p)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| e.selectors.contains(s))
    }
}

impl ServerState {
    fn check_entry(&self, e: &mut Entry) -> Result<(), RegistryError> {
        e.validate(&self.cfg.trust_domain)?;
        self.cfg.governance.apply(e, writ_core::now_unix())?;
        if e.break_glass {
            self.metrics.break_glass.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(spiffe_id = %e.spiffe_id, reason = %e.break_glass_reason, expires_at = ?e.expires_at, "BREAK-GLASS entry");
        }
        if e.parent_id == e.spiffe_id {
            return Err(RegistryError::OwnParent(e.spiffe_id.clone()));
        }
        Ok(())
    }

    /// Applies a committed change to the index and broadcasts it. For an update, the event
    /// carries the entry as it was before (`previous`), so sync streams can tell that the change
    /// concerns an agent the old version concerned (an entry moved away, a node alias turned
    /// into a plain entry), as the revision log does for resuming agents.
    pub(crate) fn publish(&self, mut change: Change) {
        {
            let mut idx = self.index.write().unwrap_or_else(unpoison);
            let old = idx.apply(&change);
            if change.kind == ChangeKind::Updated && change.previous.is_none() {
                change.previous = old.map(|o| (*o).clone());
            }
            self.metrics
                .entries
                .store(idx.len() as i64, Ordering::Relaxed);
        }
        // No receivers is fine: nobody is syncing.
        let _ = self.events.send(Event::Entry(Arc::new(change)));
    }

    /// Publishes a change this server just committed (the caller holds `write_lock`). On a
    /// shared store, other servers may have committed revisions just below it that this
    /// server has not applied yet: it catches up through the log instead, so the index and
    /// the streams still see every revision once and in order.
    /// The write is durable whatever happens here: a failed read of the log is logged and
    /// left to the follower (`cluster`), which catches up on its next notice or tick.
    fn committed(&self, change: Change) {
        if !self.store.shared() {
            return self.publish(change);
        }
        if let Err(e) = self.catch_up_locked() {
            tracing::warn!(error = %e, revision = change.revision, "committed, but could not read the revision log yet; the follower will apply it");
        }
    }

    /// Validates and creates an entry.
    pub async fn create_entry(&self, mut e: Entry) -> Result<Entry, RegistryError> {
        self.check_entry(&mut e)?;
        e.id = String::new();
        e.created_at = writ_core::now_unix();
        let _g = self.write_lock.lock().await;
        let created = self.store.create_entry(e)?;
        self.committed(Change {
            revision: created.revision,
            kind: ChangeKind::Created,
            entry: created.clone(),
            previous: None,
            at: created.created_at,
        });
        tracing::info!(entry = %created.id, spiffe_id = %created.spiffe_id, parent = %created.parent_id, owner = %created.owner, "entry created");
        Ok(created)
    }

    /// Validates and creates several entries, all or none.
    pub async fn create_entries(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, RegistryError> {
        let now = writ_core::now_unix();
        let mut batch = Vec::with_capacity(entries.len());
        for mut e in entries {
            self.check_entry(&mut e)?;
            e.id = String::new();
            e.created_at = now;
            batch.push(e);
        }
        let _g = self.write_lock.lock().await;
        let created = self.store.create_entries(batch)?;
        for e in &created {
            self.committed(Change {
                revision: e.revision,
                kind: ChangeKind::Created,
                entry: e.clone(),
                previous: None,
                at: now,
            });
        }
        tracing::info!(count = created.len(), "entries created in bulk");
        Ok(created)
    }

    /// Validates and replaces an entry.
    pub async fn update_entry(&self, mut e: Entry) -> Result<Entry, RegistryError> {
        self.check_entry(&mut e)?;
        let _g = self.write_lock.lock().await;
        let updated = self.store.update_entry(e)?;
        self.committed(Change {
            revision: updated.revision,
            kind: ChangeKind::Updated,
            entry: updated.clone(),
            previous: None,
            at: writ_core::now_unix(),
        });
        tracing::info!(entry = %updated.id, spiffe_id = %updated.spiffe_id, "entry updated");
        Ok(updated)
    }

    /// Deletes an entry.
    pub async fn delete_entry(&self, id: &str) -> Result<Entry, RegistryError> {
        let _g = self.write_lock.lock().await;
        let deleted = self.store.delete_entry(id)?;
        self.committed(Change {
            revision: deleted.revision,
            kind: ChangeKind::Deleted,
            entry: deleted.clone(),
            previous: None,
            at: writ_core::now_unix(),
        });
        tracing::info!(entry = %deleted.id, spiffe_id = %deleted.spiffe_id, "entry deleted");
        Ok(deleted)
    }

    /// Deletes the entries `ids`, after checking that every one exists, so a typo deletes
    /// nothing. Returns the IDs deleted.
    pub(crate) async fn delete_entries(
        &self,
        ids: &[String],
    ) -> Result<Vec<String>, RegistryError> {
        for id in ids {
            if self.store.get_entry(id)?.is_none() {
                return Err(RegistryError::EntryNotFound(id.clone()));
            }
        }
        let mut deleted = Vec::with_capacity(ids.len());
        for id in ids {
            deleted.push(self.delete_entry(id).await?.id);
        }
        Ok(deleted)
    }

    /// One entry.
    pub(crate) fn get_entry(&self, id: &str) -> Result<Entry, RegistryError> {
        self.store
            .get_entry(id)?
            .ok_or_else(|| RegistryError::EntryNotFound(id.to_owned()))
    }

    /// One page of the entries `q` matches, in ID order after `page_token`, of at most
    /// `page_size` entries (0: the default, capped at [`PAGE_ENTRIES`]) and [`PAGE_BYTES`]; the
    /// token of the next page is empty on the last.
    pub(crate) fn list_entries(
        &self,
        q: &EntryQuery,
        page_token: &str,
        page_size: usize,
    ) -> Result<(Vec<pb::Entry>, String), RegistryError> {
        let filter = match (&q.spiffe_id, &q.parent_id, &q.selector) {
            (Some(id), _, _) => EntryFilter::SpiffeId(id),
            (None, Some(p), _) => EntryFilter::Parent(p),
            (None, None, Some(s)) => EntryFilter::Selector(s),
            (None, None, None) => EntryFilter::All,
        };
        let size = match page_size {
            0 => PAGE_ENTRIES,
            n => n.min(PAGE_ENTRIES),
        };
        let mut pager = Pager::new(size, PAGE_BYTES);
        let mut page = Vec::new();
        let mut more = false;
        self.store.scan_entries(filter, page_token, &mut |e| {
            if !q.matches(&e) {
                return true;
            }
            let p = entry_to_pb(&e);
            let len = field_len(&p);
            if !pager.fits(len) {
                more = true;
                return false;
            }
            pager.add(len);
            page.push(p);
            true
        })?;
        let next = match page.last() {
            Some(last) if more => last.id.clone(),
            _ => String::new(),
        };
        Ok((page, next))
    }

    /// One node.
    pub(crate) fn get_node(&self, id: &SpiffeId) -> Result<AttestedNode, RegistryError> {
        self.store
            .get_node(id)?
            .ok_or_else(|| RegistryError::NodeNotFound(id.clone()))
    }

    /// Evicts (deletes) a node and ends its streams.
    pub fn evict_node(&self, id: &SpiffeId) -> Result<AttestedNode, RegistryError> {
        let n = self.store.delete_node(id)?;
        let _ = self.events.send(Event::NodeGone(id.clone()));
        tracing::info!(node = %id, "node evicted");
        Ok(n)
    }

    /// Bans a node and ends its streams. The flag is set in one atomic read-modify-write of the
    /// node record, so a renewal or attestation racing it cannot write the record back unbanned.
    pub fn ban_node(&self, id: &SpiffeId) -> Result<AttestedNode, RegistryError> {
        let n = self
            .store
            .update_node(id, &mut |cur| match cur {
                Some(n) => NodeUpdate::Put(AttestedNode {
                    banned: true,
                    ..n.clone()
                }),
                None => NodeUpdate::Keep,
            })?
            .ok_or_else(|| RegistryError::NodeNotFound(id.clone()))?;
        let _ = self.events.send(Event::NodeGone(id.clone()));
        tracing::info!(node = %id, "node banned");
        Ok(n)
    }

    /// Makes a single-use join token; `alias` becomes a second ID of the agent that uses it.
    pub fn create_join_token(
        &self,
        alias: Option<SpiffeId>,
        ttl: i64,
    ) -> Result<writ_core::JoinToken, RegistryError> {
        let t = writ_core::JoinToken {
            token: uuid::Uuid::new_v4().to_string(),
            spiffe_id: alias,
            expires_at: writ_core::now_unix() + ttl,
        };
        self.store.create_join_token(t.clone())?;
        tracing::info!(alias = ?t.spiffe_id.as_ref().map(|a| a.to_string()), "join token created");
        Ok(t)
    }
}
