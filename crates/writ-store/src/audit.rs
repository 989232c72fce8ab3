//! The audit journal's part of the store interface: append (atomically, chained, signed,
//! durable), scan by correlation ID, and read the checkpoints.

use writ_audit::{Checkpoint, NewRecord, Record};

/// Which records [`crate::Store::audit_scan`] visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditQuery<'a> {
    /// Every record, in order.
    All,
    /// Records about this SPIFFE ID.
    SpiffeId(&'a str),
    /// Records about this X509-SVID serial (lowercase hex).
    Serial(&'a str),
    /// Records about this JWT `jti`.
    Jti(&'a str),
    /// Records about this entry.
    Entry(&'a str),
    /// Records about this task.
    Task(&'a str),
}

impl AuditQuery<'_> {
    /// Whether `r` is a record this query selects.
    pub(crate) fn matches(&self, r: &Record) -> bool {
        let f = |v: &Option<String>, want: &str| v.as_deref() == Some(want);
        match *self {
            AuditQuery::All => true,
            AuditQuery::SpiffeId(v) => f(&r.spiffe_id, v),
            AuditQuery::Serial(v) => f(&r.serial, v),
            AuditQuery::Jti(v) => f(&r.jti, v),
            AuditQuery::Entry(v) => f(&r.entry_id, v),
            AuditQuery::Task(v) => f(&r.task_id, v),
        }
    }

    /// The index tag and value, for indexed queries.
    pub(crate) fn indexed(&self) -> Option<(u8, &str)> {
        match *self {
            AuditQuery::All => None,
            AuditQuery::SpiffeId(v) => Some((b's', v)),
            AuditQuery::Serial(v) => Some((b'n', v)),
            AuditQuery::Jti(v) => Some((b'j', v)),
            AuditQuery::Entry(v) => Some((b'e', v)),
            AuditQuery::Task(v) => Some((b't', v)),
        }
    }
}

/// Signs the new head of the journal (`seq`, `hash`, `time_ms`) with the audit key.
pub type CheckpointSigner<'a> = &'a (dyn Fn(u64, &str, i64) -> Result<Checkpoint, String> + Sync);

/// A batch to append: the records and the time they are stamped with.
#[derive(Debug, Clone)]
pub struct AuditBatch {
    /// The records, in order.
    pub records: Vec<NewRecord>,
    /// Unix milliseconds.
    pub now_ms: i64,
}
