//! Reading records back: one by its place (indexed queries), or every record in order from a
//! place (streamed through a buffer). Every record read is checked: its frame's checksum, its
//! JSON, and that it carries the number its place gives it.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use writ_audit::{Checkpoint, Record};

use super::frame::{self, Kind};
use super::{index, Journal, JournalError, Segment};
use crate::audit::AuditQuery;

/// A record or why record `seq` cannot be read.
pub(crate) type Item = Result<Record, (u64, String)>;

/// The record at byte `off` of `seg`, which must be record `seq`.
pub(super) fn record_at(seg: &Segment, off: u64, seq: u64) -> Result<Record, String> {
    let (head, payload) = frame_at(seg, off)?;
    decode_record(head, &payload, seq)
}

/// The checkpoint at byte `off` of `seg`.
pub(super) fn checkpoint_at(seg: &Segment, off: u64) -> Result<Checkpoint, String> {
    let (head, payload) = frame_at(seg, off)?;
    if head.kind != Kind::Checkpoint || !head.check(&payload) {
        return Err("not an intact checkpoint frame".into());
    }
    serde_json::from_slice(&payload).map_err(|e| e.to_string())
}

fn frame_at(seg: &Segment, off: u64) -> Result<(frame::Header, Vec<u8>), String> {
    let mut h = [0u8; frame::HEADER];
    seg.log
        .read_exact_at(&mut h, off)
        .map_err(|e| format!("reading {}: {e}", seg.path.display()))?;
    let head = frame::header(&h).ok_or("its frame header is damaged")?;
    let mut payload = vec![0u8; head.len as usize];
    seg.log
        .read_exact_at(&mut payload, off + frame::HEADER as u64)
        .map_err(|e| format!("reading {}: {e}", seg.path.display()))?;
    Ok((head, payload))
}

fn decode_record(head: frame::Header, payload: &[u8], seq: u64) -> Result<Record, String> {
    if head.kind != Kind::Record {
        return Err("its place holds a checkpoint: records were removed or moved".into());
    }
    if !head.check(payload) {
        return Err("its frame is damaged (checksum mismatch)".into());
    }
    let r: Record = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    // A record at another's place was moved: say so rather than let the verifier guess
    // between a gap and a reorder.
    if r.seq != seq {
        return Err(format!(
            "it holds record {}: records were swapped or moved",
            r.seq
        ));
    }
    Ok(r)
}

/// Reads a segment's frames in order from an offset, a buffer at a time.
struct Stream<'a> {
    seg: &'a Segment,
    buf: Vec<u8>,
    at: usize,
    /// File offset of `buf[0]`.
    base: u64,
    end: u64,
}

impl<'a> Stream<'a> {
    const CHUNK: usize = 256 * 1024;

    fn new(seg: &'a Segment, from: u64, end: u64) -> Self {
        Stream {
            seg,
            buf: Vec::new(),
            at: 0,
            base: from,
            end,
        }
    }

    /// The next frame: `Ok(None)` at the end, `Err` when the bytes there are not a frame
    /// (the rest of the segment cannot be walked).
    fn next(&mut self) -> Result<Option<(frame::Header, &[u8])>, String> {
        let pos = self.base + self.at as u64;
        if pos >= self.end {
            return Ok(None);
        }
        if self.buf.len() - self.at < frame::HEADER {
            self.refill(frame::HEADER)?;
        }
        let h: [u8; frame::HEADER] = self.buf[self.at..self.at + frame::HEADER]
            .try_into()
            .map_err(|_| "short read")?;
        let head = frame::header(&h).ok_or_else(|| format!("no frame at byte {pos}"))?;
        let len = head.frame_len() as usize;
        if self.buf.len() - self.at < len {
            self.refill(len)?;
        }
        let payload = &self.buf[self.at + frame::HEADER..self.at + len];
        self.at += len;
        Ok(Some((head, payload)))
    }

    /// Keeps the unread bytes and reads more, so at least `need` are buffered.
    fn refill(&mut self, need: usize) -> Result<(), String> {
        self.buf.drain(..self.at);
        self.base += self.at as u64;
        self.at = 0;
        let have = self.buf.len();
        let want = need.max(Self::CHUNK).min((self.end - self.base) as usize);
        if want < need {
            return Err(format!(
                "{} ends inside a frame at byte {}",
                self.seg.path.display(),
                self.base
            ));
        }
        self.buf.resize(want, 0);
        self.seg
            .log
            .read_exact_at(&mut self.buf[have..], self.base + have as u64)
            .map_err(|e| format!("reading {}: {e}", self.seg.path.display()))
    }
}

/// One segment as a reader sees it at one moment.
struct View {
    seg: Arc<Segment>,
    sealed: Option<Arc<super::SealedSeg>>,
    /// Records the reader may see.
    records: u64,
    /// Durable bytes the reader may read.
    end: u64,
    /// For the open segment: its offsets (all) or the hits of an indexed query.
    offsets: Vec<(u32, u64)>,
}

impl Journal {
    /// Every checkpoint, oldest first (reads every segment).
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, JournalError> {
        let views = self.views(None, 0);
        let mut out = Vec::new();
        for v in &views {
            let mut s = Stream::new(&v.seg, 0, v.end);
            loop {
                let offset = s.base + s.at as u64;
                let frame = s.next().map_err(|reason| JournalError::Damaged {
                    path: v.seg.path.display().to_string(),
                    offset,
                    reason,
                })?;
                let Some((h, payload)) = frame else { break };
                if h.kind == Kind::Checkpoint && h.check(payload) {
                    out.push(
                        serde_json::from_slice(payload)
                            .map_err(|e| JournalError::Other(format!("checkpoint: {e}")))?,
                    );
                }
            }
        }
        Ok(out)
    }

    /// What readers may see now: each segment with records past `after`, and for the open
    /// segment the places a query needs (`hash`: an indexed query; `None`: every record).
    fn views(&self, hash: Option<u64>, after: u64) -> Vec<View> {
        let st = self.state();
        let mut out = Vec::new();
        for s in &st.sealed {
            if s.seg.first + s.idx.records > after + 1 {
                out.push(View {
                    seg: s.seg.clone(),
                    sealed: Some(s.clone()),
                    records: s.idx.records,
                    end: s.len,
                    offsets: Vec::new(),
                });
            }
        }
        let a = &st.active;
        let wanted = |p: u32| a.seg.first + u64::from(p) > after;
        let offsets = match hash {
            Some(h) => a
                .index
                .positions(h)
                .into_iter()
                .filter(|&p| wanted(p))
                .filter_map(|p| a.offsets.get(p as usize).map(|&o| (p, o)))
                .collect(),
            None => a
                .offsets
                .iter()
                .enumerate()
                .map(|(p, &o)| (p as u32, o))
                .filter(|&(p, _)| wanted(p))
                .take(1)
                .collect(),
        };
        out.push(View {
            seg: a.seg.clone(),
            sealed: None,
            records: a.offsets.len() as u64,
            end: a.len,
            offsets,
        });
        out
    }

    /// Visits the records `query` selects with `seq > after`, in order, until `visit` says
    /// stop (see [`crate::Store::audit_scan`]).
    pub fn visit(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<(), JournalError> {
        let hash = query.indexed().map(|(tag, v)| index::key(tag, v));
        for v in self.views(hash, after) {
            let more = match hash {
                Some(h) => visit_indexed(&v, h, after, query, visit),
                None => visit_all(&v, after, visit),
            }
            .map_err(|e| JournalError::io(&v.seg.path, e))?;
            if !more {
                break;
            }
        }
        Ok(())
    }
}

/// The hits of an indexed query in one segment; `Ok(false)` when `visit` said stop.
fn visit_indexed(
    v: &View,
    hash: u64,
    after: u64,
    query: AuditQuery<'_>,
    visit: &mut dyn FnMut(Item) -> bool,
) -> std::io::Result<bool> {
    let first = v.seg.first;
    let hits: Vec<(u32, u64)> = match &v.sealed {
        Some(s) => s
            .idx
            .positions(hash)?
            .into_iter()
            // A position past the segment's records is a damaged index, not a record.
            .filter(|&p| u64::from(p) < s.idx.records && first + u64::from(p) > after)
            .map(|p| Ok((p, s.idx.offset(u64::from(p))?)))
            .collect::<std::io::Result<_>>()?,
        None => v.offsets.clone(),
    };
    for (p, off) in hits {
        let seq = first + u64::from(p);
        let item = match record_at(&v.seg, off, seq) {
            // A hash two values share: not this query's record.
            Ok(r) if !query.matches(&r) => continue,
            Ok(r) => Ok(r),
            Err(reason) => Err((seq, reason)),
        };
        if !visit(item) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every record of one segment with `seq > after`, streamed; `Ok(false)` when `visit` said
/// stop or the segment cannot be walked further (reported as the next record's error).
fn visit_all(v: &View, after: u64, visit: &mut dyn FnMut(Item) -> bool) -> std::io::Result<bool> {
    let first = v.seg.first;
    let skip = after.saturating_sub(first - 1).min(v.records);
    if skip >= v.records {
        return Ok(true);
    }
    let from = match &v.sealed {
        Some(s) => s.idx.offset(skip)?,
        None => match v.offsets.first() {
            Some(&(_, o)) => o,
            None => return Ok(true),
        },
    };
    let mut s = Stream::new(&v.seg, from, v.end);
    let mut seq = first + skip;
    while seq < first + v.records {
        let item = match s.next() {
            Ok(Some((h, _))) if h.kind == Kind::Checkpoint => continue,
            Ok(Some((h, payload))) => decode_record(h, payload, seq).map_err(|e| (seq, e)),
            Ok(None) => Err((seq, "the segment ends before it".to_owned())),
            Err(e) => {
                visit(Err((seq, e)));
                return Ok(false);
            }
        };
        let walked = !matches!(&item, Err((_, e)) if e.starts_with("the segment ends"));
        if !visit(item) || !walked {
            return Ok(false);
        }
        seq += 1;
    }
    Ok(true)
}
