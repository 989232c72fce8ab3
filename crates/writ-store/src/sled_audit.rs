//! The audit journal in sled. Trees: `audit` (seq, 8 bytes big-endian -> record JSON),
//! `audit_cp` (seq -> checkpoint JSON), `audit_idx` (index keys, see `audit.rs`), and the head
//! (`seq`, `hash`) under `audit_head` in `meta`.
//!
//! Invariant: appends are serialised by the audit lock; an append is durable and visible once
//! the head names it (records, index keys and the checkpoint are written first, then the head,
//! then one flush). Records past the head (an append cut short by a crash) are removed before
//! the next append, and an index key whose record is missing or is another record is skipped,
//! so the journal as read always ends at a signed checkpoint.

use writ_audit::{Chain, Checkpoint, Record};

use crate::audit::{index_keys, index_prefix, AuditBatch, AuditQuery, CheckpointSigner};
use crate::sled_store::{dec, enc, SledStore};
use crate::StoreError;

const HEAD_KEY: &[u8] = b"audit_head";

#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

impl SledStore {
    pub(crate) fn audit_head_read(&self) -> Result<(u64, String), StoreError> {
        Ok(match self.meta.get(HEAD_KEY)? {
            Some(b) => {
                let h: Head = dec(&b)?;
                (h.seq, h.hash)
            }
            None => (0, writ_audit::GENESIS.to_owned()),
        })
    }

    pub(crate) fn audit_append(
        &self,
        batch: AuditBatch,
        sign: CheckpointSigner<'_>,
    ) -> Result<Vec<Record>, StoreError> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.audit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, hash) = self.audit_head_read()?;
        // Leftovers of an append a crash interrupted before its head was written.
        let past = (seq + 1).to_be_bytes();
        for k in self.audit.range(past..).keys() {
            self.audit.remove(k?)?;
        }
        for k in self.audit_cp.range(past..).keys() {
            self.audit_cp.remove(k?)?;
        }
        let mut chain = Chain::resume(seq, hash);
        let records: Vec<Record> = batch
            .records
            .into_iter()
            .map(|r| chain.append(r, batch.now_ms))
            .collect();
        let cp: Checkpoint =
            sign(chain.seq, &chain.hash, batch.now_ms).map_err(|e| StoreError::Db(e.into()))?;
        let encoded: Vec<(Record, Vec<u8>)> = records
            .iter()
            .map(|r| Ok((r.clone(), enc(r)?)))
            .collect::<Result<_, StoreError>>()?;
        let cp_bytes = enc(&cp)?;
        let head = enc(&Head {
            seq: chain.seq,
            hash: chain.hash.clone(),
        })?;
        // One atomic batch per tree, in an order a crash can interrupt anywhere: index keys
        // first (a key whose record is missing or is another record is skipped when read),
        // then the records, then the checkpoint, then the head. Until the head moves, the
        // append did not happen: records past the head are removed before the next append.
        // Per-tree batches cost a fraction of one sled transaction over four trees (about
        // 100 us a record with the transaction, dominated by it).
        let mut idx = sled::Batch::default();
        let mut recs = sled::Batch::default();
        for (r, bytes) in &encoded {
            for k in index_keys(r) {
                idx.insert(k, &[][..]);
            }
            recs.insert(&r.seq.to_be_bytes(), bytes.as_slice());
        }
        self.audit_idx.apply_batch(idx)?;
        self.audit.apply_batch(recs)?;
        self.audit_cp.insert(cp.seq.to_be_bytes(), cp_bytes)?;
        self.meta.insert(HEAD_KEY, head)?;
        self.flush()?;
        Ok(records)
    }

    pub(crate) fn audit_visit(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Result<Record, (u64, String)>) -> bool,
    ) -> Result<(), StoreError> {
        let start = (after.saturating_add(1)).to_be_bytes();
        let read = |k: &[u8], v: &[u8]| -> Result<Record, (u64, String)> {
            let seq = k.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
            let r: Record = serde_json::from_slice(v).map_err(|e| (seq, e.to_string()))?;
            // A record stored under another number was moved: say so rather than let the
            // verifier guess between a gap and a reorder.
            if r.seq != seq {
                return Err((
                    seq,
                    format!("it holds record {}: records were swapped or moved", r.seq),
                ));
            }
            Ok(r)
        };
        // Only what the head covers: anything past it is an append a crash cut short.
        let (head, _) = self.audit_head_read()?;
        let end = head.saturating_add(1).to_be_bytes();
        match query.indexed() {
            None => {
                for kv in self.audit.range(start..end) {
                    let (k, v) = kv?;
                    if !visit(read(&k, &v)) {
                        break;
                    }
                }
            }
            Some((tag, value)) => {
                let prefix = index_prefix(tag, value);
                let mut from = prefix.clone();
                from.extend_from_slice(&start);
                for kv in self.audit_idx.range(from..) {
                    let (k, _) = kv?;
                    if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                        break;
                    }
                    let seq_bytes = &k[prefix.len()..];
                    let seq = seq_bytes
                        .try_into()
                        .map(u64::from_be_bytes)
                        .unwrap_or(u64::MAX);
                    if seq > head {
                        break;
                    }
                    let item = match self.audit.get(seq_bytes)? {
                        // An index key left by an append a crash cut short may name a number
                        // since reused by another record: only records that match count.
                        Some(v) => match read(seq_bytes, &v) {
                            Ok(r) if !query.matches(&r) => continue,
                            other => other,
                        },
                        None => {
                            let seq = seq_bytes
                                .try_into()
                                .map(u64::from_be_bytes)
                                .unwrap_or(u64::MAX);
                            Err((seq, "indexed record is missing".to_owned()))
                        }
                    };
                    if !visit(item) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn audit_cps(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.audit_cp
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                dec(&v)
            })
            .collect()
    }
}
