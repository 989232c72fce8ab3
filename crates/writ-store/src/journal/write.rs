//! Appending: a group (one append's records and its checkpoint) is built and written under
//! the writer lock, then made durable under the sync lock, where one `fdatasync` covers every
//! group written before it started. A second append builds and writes its group while the
//! first waits for the disk, so appends in flight share syncs instead of queueing behind them.
//!
//! Invariants: groups are published to readers in the order they were written, and only after
//! an `fdatasync` that started after their `write` returned; a failed `fdatasync` stops the
//! journal (see `Journal::failed`). Lock order: writer, then sync, then pending, then state.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use writ_audit::{Chain, Record};

use super::frame::{self, Kind};
use super::{index, seg_path, sync_dir, ActiveSeg, Journal, JournalError, SealedSeg, Segment};
use crate::audit::{AuditBatch, CheckpointSigner};

/// The writer's side of the open segment.
pub(super) struct Writer {
    pub(super) file: Arc<File>,
    /// Bytes written (durable or not).
    pub(super) len: u64,
    /// The head after every group written (durable or not): the next group chains from it.
    pub(super) head: (u64, String),
    pub(super) next_group: u64,
    /// The time of the newest group written (unix ms).
    pub(super) last_ms: i64,
}

/// The sync side: the file groups are pending in, and the newest group published.
pub(super) struct Syncer {
    pub(super) file: Arc<File>,
    pub(super) published: u64,
}

/// A group written, waiting for an `fdatasync` to publish it.
pub(super) struct Pending {
    id: u64,
    /// Record frame offsets in the segment.
    offsets: Vec<u64>,
    keys: Vec<(u64, u32)>,
    head: Option<(u64, String)>,
    cp_at: Option<u64>,
    /// Segment bytes once it is written.
    len: u64,
}

/// One append's frames, built before the write.
#[derive(Default)]
pub struct Group {
    buf: Vec<u8>,
    /// Each record frame's offset in `buf`.
    offsets: Vec<u64>,
    /// (index hash, record number in the group).
    keys: Vec<(u64, u32)>,
    /// Where the checkpoint frame starts in `buf`.
    cp_at: Option<u64>,
    /// The journal's head after this group, when known (an import reopens instead).
    head: Option<(u64, String)>,
    /// The group's time (unix ms).
    time_ms: i64,
}

impl Group {
    /// Adds a record (its JSON) and its index hashes.
    pub fn record(
        &mut self,
        json: &[u8],
        keys: impl Iterator<Item = u64>,
    ) -> Result<(), JournalError> {
        let i = self.offsets.len() as u32;
        let at = self.buf.len() as u64;
        frame::encode(&mut self.buf, Kind::Record, json).map_err(too_large)?;
        self.offsets.push(at);
        self.keys.extend(keys.map(|k| (k, i)));
        Ok(())
    }

    /// Adds the checkpoint that ends the group.
    pub fn checkpoint(&mut self, json: &[u8]) -> Result<(), JournalError> {
        let at = self.buf.len() as u64;
        frame::encode(&mut self.buf, Kind::Checkpoint, json).map_err(too_large)?;
        self.cp_at = Some(at);
        Ok(())
    }
}

/// The index hashes of a record's JSON (none when it does not decode: it is still copied, and
/// the verifier names it).
pub fn keys_of(json: &[u8]) -> Vec<u64> {
    serde_json::from_slice::<Record>(json)
        .map(|r| index::record_keys(&r).collect())
        .unwrap_or_default()
}

impl Journal {
    /// Appends `batch` (see [`crate::Store::append_audit`]).
    pub fn append(
        &self,
        batch: AuditBatch,
        sign: CheckpointSigner<'_>,
    ) -> Result<Vec<Record>, JournalError> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let (id, records) = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            self.roll_if_full(&mut w)?;
            // Taken before the lock by the caller: never let a later record carry an earlier time.
            let now_ms = batch.now_ms.max(w.last_ms);
            let mut chain = Chain::resume(w.head.0, w.head.1.clone());
            let encoded = chain.append_encoded(batch.records, now_ms);
            let cp = sign(chain.seq, &chain.hash, now_ms).map_err(JournalError::Other)?;
            let mut g = Group {
                buf: Vec::with_capacity(
                    encoded.iter().map(|(_, j)| j.len() + 16).sum::<usize>() + 512,
                ),
                offsets: Vec::with_capacity(encoded.len()),
                keys: Vec::with_capacity(encoded.len() * 3),
                ..Group::default()
            };
            for (r, json) in &encoded {
                g.record(json, index::record_keys(r))?;
            }
            g.checkpoint(
                &serde_json::to_vec(&cp).map_err(|e| JournalError::Other(e.to_string()))?,
            )?;
            g.head = Some((chain.seq, chain.hash));
            g.time_ms = now_ms;
            let id = self.write(&mut w, g)?;
            (id, encoded.into_iter().map(|(r, _)| r).collect())
        };
        self.sync_upto(id)?;
        Ok(records)
    }

    /// Writes a group at the end of the open segment (not yet durable) and queues it.
    fn write(&self, w: &mut Writer, g: Group) -> Result<u64, JournalError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        if let Err(e) = w.file.write_all_at(&g.buf, w.len) {
            // Nothing of this group was acknowledged: drop whatever part reached the file so
            // the next append starts where this one did (if even that fails, the next open
            // keeps it aside as an interrupted append).
            let _ = w.file.set_len(w.len);
            return Err(JournalError::io(&self.dir, e));
        }
        let base = w.len;
        w.len += g.buf.len() as u64;
        if let Some(h) = &g.head {
            w.head = h.clone();
        }
        w.last_ms = w.last_ms.max(g.time_ms);
        let id = w.next_group;
        w.next_group += 1;
        let p = Pending {
            id,
            offsets: g.offsets.iter().map(|o| base + o).collect(),
            keys: g.keys,
            head: g.head,
            cp_at: g.cp_at.map(|o| base + o),
            len: w.len,
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(p);
        Ok(id)
    }

    /// Returns once group `id` is durable and published, syncing if no one else has.
    fn sync_upto(&self, id: u64) -> Result<(), JournalError> {
        let mut s = self.syncer.lock().unwrap_or_else(|p| p.into_inner());
        if s.published >= id {
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        // Every group queued now was written before this sync starts: it covers them all.
        let last = match self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .back()
        {
            Some(p) => p.id,
            None => return Ok(()),
        };
        if let Err(e) = s.file.sync_data() {
            self.failed.store(true, Ordering::Release);
            tracing::error!(error = %e, "audit journal: fdatasync failed; appends stop until a restart");
            return Err(JournalError::io(&self.dir, e));
        }
        let ready: Vec<Pending> = {
            let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.iter().take_while(|p| p.id <= last).count();
            q.drain(..n).collect()
        };
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        for p in ready {
            let a = &mut st.active;
            let base = a.offsets.len() as u32;
            a.offsets.extend(p.offsets);
            for (k, i) in p.keys {
                a.index.add(k, base + i);
            }
            a.len = p.len;
            if p.cp_at.is_some() {
                a.last_cp = p.cp_at;
            }
            if let Some(h) = p.head {
                st.head = h;
            }
        }
        s.published = last;
        Ok(())
    }

    /// Seals the open segment once it is full (every group in it durable first).
    fn roll_if_full(&self, w: &mut Writer) -> Result<(), JournalError> {
        if w.len < self.limit {
            return Ok(());
        }
        self.sync_upto(w.next_group - 1)?;
        if let Err(e) = self.seal(w) {
            // What is written is durable; the segment just grows until sealing works.
            tracing::error!(error = %e, "could not seal the audit journal's segment");
        }
        Ok(())
    }

    /// Seals the open segment (its index to a file) and starts the next one. Every group
    /// written must be published.
    pub(super) fn seal(&self, w: &mut Writer) -> Result<(), JournalError> {
        let seg = {
            let st = self.state();
            let a = &st.active;
            let idx_path = a.seg.path.with_extension("idx");
            index::Sealed::write(
                &idx_path,
                a.seg.first,
                a.len,
                a.last_cp,
                &a.offsets,
                &a.index,
            )?;
            a.seg.clone()
        };
        let idx = index::Sealed::open(&seg.path.with_extension("idx"), seg.first, w.len)?
            .ok_or_else(|| JournalError::Other("a just written index does not read back".into()))?;
        let next_first = w.head.0.checked_add(1).ok_or_else(|| {
            JournalError::Other("the journal's head is at the largest record number".into())
        })?;
        let path = seg_path(&self.dir, next_first);
        let (file, log) = new_segment(&path)?;
        let file = Arc::new(file);
        self.syncer.lock().unwrap_or_else(|p| p.into_inner()).file = file.clone();
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(
            &mut st.active,
            ActiveSeg {
                seg: Arc::new(Segment {
                    first: next_first,
                    path,
                    log,
                }),
                offsets: Vec::new(),
                index: index::Active::default(),
                len: 0,
                last_cp: None,
            },
        );
        st.sealed.push(Arc::new(SealedSeg {
            seg: old.seg,
            idx,
            len: old.len,
        }));
        drop(st);
        w.file = file;
        w.len = 0;
        Ok(())
    }

    /// Writes an existing journal (another store's, as record and checkpoint JSON exactly as
    /// stored there) into this empty one, group by group, syncing once at the end. Records are
    /// copied byte for byte, so what the verifier would have said about them still holds.
    pub fn import(
        &self,
        groups: impl Iterator<Item = Result<Group, JournalError>>,
    ) -> Result<(), JournalError> {
        let mut last = 0;
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            for g in groups {
                self.roll_if_full(&mut w)?;
                // Numbered by place: an import does not track hashes, only how far it got.
                let g = g?;
                let n = g.offsets.len() as u64;
                w.head.0 += n;
                last = self.write(&mut w, g)?;
            }
        }
        self.sync_upto(last)
    }
}

/// Creates the next segment's file (an empty one left by an earlier attempt is taken over;
/// anything else there is never overwritten), durably; removed again if that fails.
fn new_segment(path: &std::path::Path) -> Result<(File, File), JournalError> {
    let open = |create: bool| {
        std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(create)
            .mode(0o600)
            .open(path)
    };
    let file = match open(true) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match open(false) {
            Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(0) => f,
            _ => return Err(JournalError::io(path, e)),
        },
        Err(e) => return Err(JournalError::io(path, e)),
    };
    let made = file
        .sync_all()
        .map_err(|e| JournalError::io(path, e))
        .and_then(|()| sync_dir(path))
        .and_then(|()| File::open(path).map_err(|e| JournalError::io(path, e)));
    match made {
        Ok(log) => Ok((file, log)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn too_large(e: frame::TooLarge) -> JournalError {
    JournalError::Other(e.to_string())
}

fn stopped() -> JournalError {
    JournalError::Other(
        "an earlier fdatasync failed; the journal takes no appends until the server restarts"
            .into(),
    )
}
