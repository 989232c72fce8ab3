//! Reading a whole segment at open: where its records are, their index, where the journal
//! ends, and what to do with bytes past that end.
//!
//! The journal ends after the segment's last intact checkpoint frame. What follows it can only
//! be an append a crash cut short (records without their checkpoint, a frame cut off): that
//! tail is moved aside into a file of its own, never deleted, and the segment truncated. A
//! damaged frame *followed by an intact one* is not a crash (an append writes once, so a crash
//! cuts the end off): such a frame stays where it is, as an unreadable record the verifier
//! names. And if intact frames follow damage that cannot be stepped over (a broken header), the
//! journal refuses to open rather than cut evidence off.

use std::path::Path;

use writ_audit::Record;

use super::frame::{self, Kind};
use super::index::{self, Active};
use super::JournalError;

/// What a segment holds, up to its last checkpoint.
pub(crate) struct Scanned {
    /// Offset of each record frame (position = record number - first).
    pub(crate) offsets: Vec<u64>,
    /// The index of those records.
    pub(crate) index: Active,
    /// Bytes up to and including the last checkpoint frame.
    pub(crate) end: u64,
    /// Where the last checkpoint frame starts.
    pub(crate) last_cp: Option<u64>,
    /// Whether bytes follow `end`.
    pub(crate) tail: bool,
}

/// Scans segment bytes `b`.
pub(crate) fn scan(path: &Path, b: &[u8]) -> Result<Scanned, JournalError> {
    let mut offsets = Vec::new();
    let mut keys: Vec<Vec<u64>> = Vec::new();
    let mut end = 0usize;
    let mut kept = 0usize;
    let mut last_cp = None;
    let mut p = 0usize;
    let mut damage = None;
    while p < b.len() {
        let Some(h) = b
            .get(p..p + frame::HEADER)
            .and_then(|h| frame::header(h.try_into().ok()?))
        else {
            damage = Some(p);
            break;
        };
        let next = p + h.frame_len() as usize;
        let payload = b.get(p + frame::HEADER..next);
        let intact = payload.is_some_and(|pl| h.check(pl));
        if !intact {
            let Some(_) = payload else {
                // Cut off inside the frame: the end of what a crash let reach the disk.
                damage = Some(p);
                break;
            };
            // Whole but failing its checksum: a crash does not do that (a write cut short
            // ends inside a frame), so this is damage. Left in place when an intact frame
            // follows (the verifier names the record); at the end, nothing tells whether it
            // was an acknowledged append, so nothing is cut: refuse.
            if next >= b.len() || frame::decode(&b[next..]).is_none() {
                return Err(JournalError::Damaged {
                    path: path.display().to_string(),
                    offset: p as u64,
                    reason: "a whole frame fails its checksum and nothing intact follows it: \
                             this is damage, not an append cut short; restore the segment from \
                             a backup (the server will not cut records off)"
                        .into(),
                });
            }
        }
        match h.kind {
            Kind::Record => {
                offsets.push(p as u64);
                // Indexed even when damaged, if it still decodes: queries then find it and
                // report it unreadable instead of leaving it out.
                let r = payload.and_then(|pl| serde_json::from_slice::<Record>(pl).ok());
                keys.push(
                    r.map(|r| index::record_keys(&r).collect())
                        .unwrap_or_default(),
                );
            }
            Kind::Checkpoint if intact => {
                end = next;
                last_cp = Some(p as u64);
                kept = offsets.len();
            }
            Kind::Checkpoint => {}
        }
        p = next;
    }
    if let Some(at) = damage {
        // Past damage only a crash's leftovers may follow: an intact frame there means the
        // segment was damaged, not cut short.
        let intact_after = (at + 1..=b.len().saturating_sub(frame::HEADER))
            .filter(|&i| b[i..].starts_with(&frame::MAGIC))
            .find(|&i| frame::decode(&b[i..]).is_some());
        if let Some(i) = intact_after {
            return Err(JournalError::Damaged {
                path: path.display().to_string(),
                offset: at as u64,
                reason: format!(
                    "intact frames follow at byte {i}: this is damage, not an append cut short; \
                     restore the segment from a backup (the server will not cut records off)"
                ),
            });
        }
    }
    offsets.truncate(kept);
    let mut index = Active::default();
    for (pos, ks) in keys.iter().take(kept).enumerate() {
        for &k in ks {
            index.add(k, pos as u32);
        }
    }
    Ok(Scanned {
        offsets,
        index,
        end: end as u64,
        last_cp,
        tail: end < b.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_audit::{Actor, Chain, NewRecord};

    fn segment(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut chain = Chain::default();
        let mut b = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            let r = chain.append(
                NewRecord::new("x509.issued", Actor::server()).serial(format!("{i:04x}")),
                1,
            );
            frame::encode(&mut b, Kind::Record, &serde_json::to_vec(&r).unwrap()).unwrap();
            frame::encode(&mut b, Kind::Checkpoint, b"{}").unwrap();
            ends.push(b.len());
        }
        (b, ends)
    }

    #[test]
    fn a_cut_off_end_is_a_tail_damage_in_place_is_kept_and_damage_before_intact_frames_refuses() {
        let p = Path::new("seg");
        let (b, ends) = segment(4);
        let s = scan(p, &b).unwrap();
        assert_eq!((s.offsets.len(), s.end, s.tail), (4, b.len() as u64, false));
        // Cut anywhere inside the last append: the journal ends at the one before.
        for cut in ends[2] + 1..ends[3] {
            let s = scan(p, &b[..cut]).unwrap();
            assert_eq!(
                (s.offsets.len(), s.end, s.tail),
                (3, ends[2] as u64, true),
                "{cut}"
            );
        }
        // A payload byte of record 2 flipped: kept in place, still 4 records, nothing cut.
        let mut d = b.clone();
        d[ends[0] + frame::HEADER + 5] ^= 1;
        let s = scan(p, &d).unwrap();
        assert_eq!((s.offsets.len(), s.tail), (4, false));
        // The last checkpoint whole but damaged: refused, not taken for a crash's leftovers.
        let mut d = b.clone();
        let last = d.len() - 1;
        d[last] ^= 1;
        let e = scan(p, &d).err().unwrap().to_string();
        assert!(e.contains("fails its checksum"), "{e}");
        // Its header broken, with intact frames after it: refused.
        let mut d = b.clone();
        d[ends[0]] ^= 1;
        let e = scan(p, &d).err().unwrap().to_string();
        assert!(e.contains("not an append cut short"), "{e}");
    }
}
