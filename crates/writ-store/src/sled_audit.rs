//! The embedded store's audit journal: segment files next to sled (see [`crate::journal`]),
//! and the one-time move of a journal kept in sled trees by earlier versions.
//!
//! Earlier versions kept the journal in sled: `audit` (seq -> record JSON), `audit_cp` (seq ->
//! checkpoint JSON), `audit_idx` (index keys) and the head under `audit_head` in `meta`. At
//! open such a journal is copied byte for byte into segments in a directory of its own, which
//! is renamed into place once durable (a crash before the rename redoes the copy). The old
//! trees are left as they were, unused: a copy to fall back on, dropped by a later release. A
//! head that does not decode stops the copy (the store does not open) rather than guess.

use std::path::Path;

use sled::Tree;
use writ_audit::Record;

use crate::audit::{AuditBatch, AuditQuery, CheckpointSigner};
use crate::journal::{self, Group, Journal, JournalError};
use crate::sled_store::SledStore;
use crate::StoreError;

const HEAD_KEY: &[u8] = b"audit_head";
const OLD_TREES: [&str; 3] = ["audit", "audit_cp", "audit_idx"];

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Damaged { .. } => StoreError::Corrupt(e.into()),
            _ => StoreError::Db(e.into()),
        }
    }
}

/// Opens the journal in `<dir>/journal`, first moving a journal earlier versions kept in sled.
pub(crate) fn open_journal(
    db: &sled::Db,
    meta: &Tree,
    dir: &Path,
    segment_bytes: u64,
) -> Result<Journal, StoreError> {
    let target = dir.join("journal");
    // Looked up without creating them: a store made by this version has none.
    let names = db.tree_names();
    let has = |n: &str| names.iter().any(|t| t.as_ref() == n.as_bytes());
    let old = meta.get(HEAD_KEY)?.is_some() || OLD_TREES.iter().any(|n| has(n));
    if old && !target.exists() {
        let head = match meta.get(HEAD_KEY)? {
            Some(b) => serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .ok_or_else(|| {
                    StoreError::Corrupt(
                        "the audit journal's head in sled (meta/audit_head) does not decode; \
                         it is not moved into segment files"
                            .into(),
                    )
                })?,
            None => 0,
        };
        let (records, cps) = (db.open_tree("audit")?, db.open_tree("audit_cp")?);
        let staging = dir.join("journal.migrating");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| JournalError::io(&staging, e))?;
        }
        let j = Journal::open(&staging, segment_bytes)?;
        j.import(old_groups(&records, &cps, head))?;
        drop(j);
        std::fs::rename(&staging, &target).map_err(|e| JournalError::io(&target, e))?;
        journal::sync_dir(&target)?;
        tracing::info!(
            records = head,
            "audit journal moved from sled into segment files (the sled trees are kept, unused)"
        );
    }
    Ok(Journal::open(&target, segment_bytes)?)
}

/// The old journal's appends: records up to each checkpoint, then the checkpoint. A record
/// missing from the tree is copied as an empty frame in its place (the verifier names it).
/// Checkpoints past the head (an append the old version's crash cut short before its head was
/// written) and records past it are not part of that journal and are not copied.
fn old_groups<'a>(
    records: &'a Tree,
    cps: &'a Tree,
    head: u64,
) -> impl Iterator<Item = Result<Group, JournalError>> + 'a {
    let db = |e: sled::Error| JournalError::Other(format!("reading the old journal: {e}"));
    let mut cp_iter = cps.iter();
    let mut next = 1u64;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let cp = match cp_iter.next() {
            Some(Ok((k, v))) => {
                let seq = k
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                (seq <= head).then_some((seq, v))
            }
            Some(Err(e)) => return Some(Err(db(e))),
            None => None,
        };
        let upto = cp.as_ref().map_or(head, |(s, _)| *s);
        if cp.is_none() {
            done = true;
            if next > head {
                return None;
            }
        }
        let mut g = Group::default();
        while next <= upto {
            let json = match records.get(next.to_be_bytes()) {
                Ok(v) => v.map(|v| v.to_vec()).unwrap_or_default(),
                Err(e) => return Some(Err(db(e))),
            };
            if let Err(e) = g.record(&json, journal::keys_of(&json).into_iter()) {
                return Some(Err(e));
            }
            next += 1;
        }
        if let Some((_, v)) = cp {
            if let Err(e) = g.checkpoint(&v) {
                return Some(Err(e));
            }
        }
        Some(Ok(g))
    })
}

impl SledStore {
    pub(crate) fn audit_head_read(&self) -> Result<(u64, String), StoreError> {
        Ok(self.journal.head())
    }

    pub(crate) fn audit_append(
        &self,
        batch: AuditBatch,
        sign: CheckpointSigner<'_>,
    ) -> Result<Vec<Record>, StoreError> {
        // Task records written since the last append become durable before the records that
        // follow them (see `Store::put_task`). Under a lock: an append that finds the flag
        // already taken must wait for the flush that took it, which covers its tasks too.
        {
            let _flushing = self.tasks_flush.lock().unwrap_or_else(|p| p.into_inner());
            if self
                .tasks_dirty
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                if let Err(e) = self.flush() {
                    self.tasks_dirty
                        .store(true, std::sync::atomic::Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(self.journal.append(batch, sign)?)
    }

    pub(crate) fn audit_visit(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Result<Record, (u64, String)>) -> bool,
    ) -> Result<(), StoreError> {
        Ok(self.journal.visit(query, after, visit)?)
    }

    pub(crate) fn audit_cps(&self) -> Result<Vec<writ_audit::Checkpoint>, StoreError> {
        Ok(self.journal.checkpoints()?)
    }
}
