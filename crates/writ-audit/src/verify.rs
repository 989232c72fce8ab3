//! Verifying a journal: every record's hash, every link, every checkpoint, and that the newest
//! checkpoint is the end of the journal. The first problem found is reported with the record
//! number it concerns.

use std::collections::HashMap;

use crate::checkpoint::{Checkpoint, CheckpointError, VerifyingKey};
use crate::record::{kinds, Record, GENESIS};

/// What is wrong with a journal, naming the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A record's contents do not match its hash.
    #[error("record {0} was edited: its contents do not match its hash")]
    Edited(u64),
    /// A record number is missing.
    #[error("record {missing} is missing: record {before} is followed by record {after}")]
    Missing {
        /// The first missing number.
        missing: u64,
        /// The record before the gap.
        before: u64,
        /// The record after the gap.
        after: u64,
    },
    /// Records appear in the wrong order (swapped or moved).
    #[error("record {found} appears where record {expected} should be: records were reordered")]
    OutOfOrder {
        /// The number expected at this position.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// A record's `prev_hash` is not the previous record's hash.
    #[error("record {0} does not follow from record {prev}: the chain is broken", prev = .0 - 1)]
    BrokenLink(u64),
    /// The journal ends before its newest signed checkpoint.
    #[error(
        "the journal ends at record {end} but a signed checkpoint covers up to record {signed}: \
         records were removed from the tail"
    )]
    Truncated {
        /// Last record present.
        end: u64,
        /// Newest checkpoint.
        signed: u64,
    },
    /// Records after the newest checkpoint: appended without the audit key.
    #[error("records {from} to {to} are not covered by a signed checkpoint")]
    Unsigned {
        /// First unsigned record.
        from: u64,
        /// Last record.
        to: u64,
    },
    /// A checkpoint names a hash other than its record's.
    #[error("the checkpoint at record {0} does not match that record's hash")]
    CheckpointMismatch(u64),
    /// A checkpoint does not verify.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A record cannot be read at all.
    #[error("record {seq} cannot be read: {reason}")]
    Unreadable {
        /// Its position.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Hash of the last record.
    pub head_hash: String,
    /// Audit keys the checkpoints were signed with.
    pub keys: Vec<String>,
}

/// Verifies `records` (in stored order) against `checkpoints`.
///
/// Checkpoint keys: `pinned` ones are always trusted; with `trust_journal_keys`, a key that an
/// `audit.key` record of the chain introduces is trusted once a checkpoint signed by an
/// already trusted key covers that record (the trusted key's signature over the chain vouches
/// for the record, and so for the key). Checkpoints of a key not yet vouched for wait until
/// it is; any still waiting at the end fail. So several servers sharing one journal each
/// verify all of it with only their own key pinned, while someone who can write the
/// database but holds no trusted key cannot rewrite the chain under a key of their own.
pub fn verify(
    records: impl IntoIterator<Item = Result<Record, (u64, String)>>,
    checkpoints: &[Checkpoint],
    pinned: &[VerifyingKey],
    trust_journal_keys: bool,
) -> Result<VerifyReport, VerifyError> {
    let mut v = Verifier::new(checkpoints, pinned, trust_journal_keys);
    for r in records {
        v.push(r)?;
    }
    v.finish()
}

/// [`verify`] one record at a time, so a journal of millions of records is checked in
/// constant memory (besides the checkpoints).
#[derive(Debug)]
pub struct Verifier {
    by_seq: HashMap<u64, Checkpoint>,
    newest: u64,
    keys: Vec<VerifyingKey>,
    trust_journal_keys: bool,
    /// Keys `audit.key` records introduced, with the record's number, not yet vouched for.
    pending_keys: Vec<(u64, VerifyingKey)>,
    /// Checkpoints (their record's hash already matched) waiting for their key.
    deferred: Vec<Checkpoint>,
    report: VerifyReport,
    last_signed: u64,
}

impl Verifier {
    /// A verifier of a journal with these checkpoints and keys (see [`verify`]).
    pub fn new(
        checkpoints: &[Checkpoint],
        pinned: &[VerifyingKey],
        trust_journal_keys: bool,
    ) -> Self {
        Verifier {
            by_seq: checkpoints.iter().map(|c| (c.seq, c.clone())).collect(),
            newest: checkpoints.iter().map(|c| c.seq).max().unwrap_or(0),
            keys: pinned.to_vec(),
            trust_journal_keys,
            pending_keys: Vec::new(),
            deferred: Vec::new(),
            report: VerifyReport {
                head_hash: GENESIS.to_owned(),
                ..VerifyReport::default()
            },
            last_signed: 0,
        }
    }

    /// Checks the next record in stored order.
    pub fn push(&mut self, r: Result<Record, (u64, String)>) -> Result<(), VerifyError> {
        let expected = self.report.records + 1;
        let r = r.map_err(|(seq, reason)| VerifyError::Unreadable { seq, reason })?;
        if r.seq != expected {
            return Err(if r.seq > expected {
                VerifyError::Missing {
                    missing: expected,
                    before: expected - 1,
                    after: r.seq,
                }
            } else {
                VerifyError::OutOfOrder {
                    expected,
                    found: r.seq,
                }
            });
        }
        if !r.hash_ok() {
            return Err(VerifyError::Edited(r.seq));
        }
        if r.prev_hash != self.report.head_hash {
            return Err(VerifyError::BrokenLink(r.seq));
        }
        if self.trust_journal_keys && r.kind == kinds::AUDIT_KEY {
            if let Some(k) = key_of(&r) {
                self.pending_keys.push((r.seq, k));
            }
        }
        if let Some(c) = self.by_seq.get(&r.seq).cloned() {
            if c.hash != r.hash {
                return Err(VerifyError::CheckpointMismatch(r.seq));
            }
            let trusted = self.keys.iter().any(|k| k.kid == c.kid);
            let pending = self.pending_keys.iter().any(|(_, k)| k.kid == c.kid);
            if !trusted && pending {
                self.deferred.push(c);
            } else {
                self.signed(&c)?;
                self.vouch()?;
            }
            self.last_signed = r.seq;
        }
        self.report.records = r.seq;
        self.report.head_hash = r.hash;
        Ok(())
    }

    /// Verifies `c` against the trusted keys and counts it; journal keys introduced up to its
    /// record are vouched for by it.
    fn signed(&mut self, c: &Checkpoint) -> Result<(), VerifyError> {
        c.verify(&self.keys)?;
        self.report.checkpoints += 1;
        if !self.report.keys.contains(&c.kid) {
            self.report.keys.push(c.kid.clone());
        }
        let (vouched, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_keys)
            .into_iter()
            .partition(|(seq, _)| *seq <= c.seq);
        self.pending_keys = rest;
        self.keys.extend(vouched.into_iter().map(|(_, k)| k));
        Ok(())
    }

    /// Verifies the deferred checkpoints whose keys became trusted, until none does.
    fn vouch(&mut self) -> Result<(), VerifyError> {
        loop {
            let Some(i) = self
                .deferred
                .iter()
                .position(|c| self.keys.iter().any(|k| k.kid == c.kid))
            else {
                return Ok(());
            };
            let c = self.deferred.swap_remove(i);
            self.signed(&c)?;
        }
    }

    /// Ends the journal: the newest checkpoint must be its last record.
    pub fn finish(self) -> Result<VerifyReport, VerifyError> {
        // A checkpoint whose key no trusted checkpoint vouched for: refused as an unknown key.
        if let Some(c) = self.deferred.first() {
            c.verify(&self.keys)?;
        }
        if self.newest > self.report.records {
            return Err(VerifyError::Truncated {
                end: self.report.records,
                signed: self.newest,
            });
        }
        if self.last_signed < self.report.records {
            return Err(VerifyError::Unsigned {
                from: self.last_signed + 1,
                to: self.report.records,
            });
        }
        Ok(self.report)
    }
}

/// The verifying key an `audit.key` record introduces (`details.kid`, `details.point` hex).
fn key_of(r: &Record) -> Option<VerifyingKey> {
    let kid = r.details.get("kid")?.as_str()?.to_owned();
    let point = hex::decode(r.details.get("point")?.as_str()?).ok()?;
    Some(VerifyingKey { kid, point })
}
