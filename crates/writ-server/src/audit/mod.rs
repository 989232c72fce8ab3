//! The audit journal, server side: what the server records and how it is made durable.
//!
//! Flows call [`AuditLog::record`] with the records of what they just did and await it; it
//! returns once the records are in the datastore (fsync) with a signed checkpoint of the new
//! head. Issuance awaits it *before* an SVID leaves the server, so no SVID exists that the
//! journal does not name. Writes from all callers are grouped by one writer thread
//! (`writer.rs`): one transaction and one fsync per group, never one per SVID.
//!
//! The checkpoint key (`key.rs`) lives in the key manager, not in the datastore: someone who can
//! edit the datastore but not read the keys can neither re-sign an edited chain nor hide a
//! truncated tail. `verify` checks the journal against that key only.
//!
//! Invariant: records reach the store in the order `record` was called within one caller, and
//! every append ends at a checkpoint (the store writes both in one transaction).

pub(crate) mod events;
mod key;
mod writer;

use std::sync::Arc;

use writ_audit::{Actor, NewRecord, Record, Verifier, VerifyError, VerifyReport};
use writ_ca::KeyManager;
use writ_store::{AuditQuery, Store, StoreError};

pub(crate) use key::AuditKey;
use writer::Writer;

/// Why the journal could not take or give records.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The datastore failed.
    #[error("audit journal: {0}")]
    Store(#[from] StoreError),
    /// The audit key could not be made, read or used.
    #[error("audit key: {0}")]
    Key(String),
    /// The writer thread is gone (the server is stopping).
    #[error("audit journal is shut down")]
    Closed,
}

/// The server's audit journal.
pub(crate) struct AuditLog {
    store: Arc<dyn Store>,
    key: Arc<AuditKey>,
    writer: Option<Writer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("kid", &self.key.kid())
            .field("enabled", &self.writer.is_some())
            .finish()
    }
}

impl AuditLog {
    /// Opens the journal: loads (or on first start makes and journals) the audit key and starts
    /// the writer. With `enabled` false nothing is recorded (for measuring the journal's cost).
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        keys: &dyn KeyManager,
        enabled: bool,
    ) -> Result<Self, AuditError> {
        let (key, made) = AuditKey::load_or_make(keys)?;
        let key = Arc::new(key);
        let writer = enabled.then(|| Writer::start(store.clone(), key.clone()));
        let log = AuditLog { store, key, writer };
        // The first record of a key names it, so an exported journal carries its own keys. A
        // key that existed before this journal (a server moved onto a shared store) has never
        // signed a checkpoint in it: name it too, or the other servers could not vouch for it.
        let unknown_here = !made
            && log.store.shared()
            && !log
                .store
                .audit_checkpoints()?
                .iter()
                .any(|c| c.kid == log.key.kid());
        if (made || unknown_here) && enabled {
            log.record(vec![key_record(&log.key)]).await?;
        }
        Ok(log)
    }

    /// Makes `records` durable, in order, before returning. A no-op when disabled.
    pub(crate) async fn record(&self, records: Vec<NewRecord>) -> Result<(), AuditError> {
        match &self.writer {
            Some(w) if !records.is_empty() => w.append(records).await,
            _ => Ok(()),
        }
    }

    /// Records something that already happened (an entry write, a ban): a failure to journal
    /// it cannot undo it, so it is logged loudly instead of failing the caller.
    pub(crate) async fn note(&self, records: Vec<NewRecord>) {
        if let Err(e) = self.record(records).await {
            tracing::error!(error = %e, "could not write audit records");
        }
    }

    /// Records matching `query` with `seq > after`, oldest first, at most `limit`, that pass
    /// `keep`.
    pub(crate) fn scan(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        limit: usize,
        keep: &dyn Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, AuditError> {
        let mut out = Vec::new();
        let mut bad = None;
        self.store.audit_scan(query, after, &mut |r| match r {
            Ok(r) => {
                if keep(&r) {
                    out.push(r);
                }
                out.len() < limit
            }
            Err((seq, reason)) => {
                bad = Some(StoreError::Db(
                    format!("audit record {seq} cannot be read: {reason}").into(),
                ));
                false
            }
        })?;
        match bad {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// Verifies the whole journal against the audit key (blocking: reads every record).
    pub(crate) fn verify(&self) -> Result<Result<VerifyReport, VerifyError>, AuditError> {
        let checkpoints = self.store.audit_checkpoints()?;
        // Servers sharing a store each sign checkpoints with their own key; each key is named
        // by an `audit.key` record in the (hash-chained) journal itself, so a shared journal
        // trusts those, with this server's key pinned.
        let mut v = Verifier::new(
            &checkpoints,
            &[self.key.verifying_key()],
            self.store.shared(),
        );
        let mut failed = None;
        self.store.audit_scan(AuditQuery::All, 0, &mut |r| {
            if let Err(e) = v.push(r) {
                failed = Some(e);
                return false;
            }
            true
        })?;
        Ok(match failed {
            Some(e) => Err(e),
            None => v.finish(),
        })
    }
}

/// The `audit.key` record naming a checkpoint key.
fn key_record(key: &AuditKey) -> NewRecord {
    NewRecord::new(writ_audit::kinds::AUDIT_KEY, Actor::server())
        .detail("kid", key.kid())
        .detail("point", hex::encode(key.verifying_key().point))
}
