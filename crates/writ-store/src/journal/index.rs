//! Finding a correlation ID's records without reading the journal: the open segment's index in
//! memory, a sealed segment's in an index file next to it.
//!
//! Keys are the 64-bit FNV-1a hash of `<tag><value>` (tags as in [`crate::audit`]): stable
//! across processes and versions, which a file needs. Two values may share a hash, so every
//! hit is read and checked against the query ([`crate::AuditQuery::matches`]); a collision
//! costs one extra read, never a wrong answer.
//!
//! Index file (little-endian): `magic (8) | first seq | records | pairs | log bytes | offset
//! of the last checkpoint frame (u64::MAX: none) |
//! offsets[records] | pairs[pairs] (hash u64, position u32), sorted | fence[ceil(pairs /
//! FENCE)] (the hash of every FENCE-th pair) | crc32 of all before`. Only the header and the
//! fence are kept in memory (~1/100 of the file); a lookup reads one run of pairs.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use writ_audit::Record;

use super::JournalError;

const MAGIC: [u8; 8] = *b"WJIDX001";
const HEAD: usize = 8 + 8 * 5;
const PAIR: usize = 12;
/// Pairs per fence post: one lookup reads about this many pairs (1.5 KiB).
const FENCE: usize = 128;

/// The index hash of one correlation ID.
pub(crate) fn key(tag: u8, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(tag).chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The index hashes of a record.
pub(crate) fn record_keys(r: &Record) -> impl Iterator<Item = u64> + '_ {
    [
        (b's', &r.spiffe_id),
        (b'n', &r.serial),
        (b'j', &r.jti),
        (b'e', &r.entry_id),
        (b't', &r.task_id),
    ]
    .into_iter()
    .filter_map(|(tag, v)| v.as_deref().map(|v| key(tag, v)))
}

/// The open segment's index: for each hash its positions (record number within the segment),
/// as chains through one array so a hash seen once costs one slot and one map entry.
#[derive(Default)]
pub(crate) struct Active {
    /// hash -> index in `links` of its newest position (foldhash, seeded per process: the
    /// FNV keys are not secret, so the table's own hash must be).
    newest: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// (position, index of the previous link of the same hash or `u32::MAX`).
    links: Vec<(u32, u32)>,
}

impl Active {
    pub(crate) fn add(&mut self, hash: u64, pos: u32) {
        let at = u32::try_from(self.links.len()).unwrap_or(u32::MAX);
        let prev = self.newest.insert(hash, at).unwrap_or(u32::MAX);
        self.links.push((pos, prev));
    }

    /// Positions indexed under `hash`, ascending.
    pub(crate) fn positions(&self, hash: u64) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = self.newest.get(&hash).copied().unwrap_or(u32::MAX);
        while let Some(&(pos, prev)) = self.links.get(at as usize) {
            out.push(pos);
            at = prev;
        }
        out.reverse();
        out
    }

    /// Every (hash, position), sorted: the sealed file's pairs.
    fn sorted_pairs(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::with_capacity(self.links.len());
        for (&hash, &newest) in &self.newest {
            let mut at = newest;
            while let Some(&(pos, prev)) = self.links.get(at as usize) {
                out.push((hash, pos));
                at = prev;
            }
        }
        out.sort_unstable();
        out
    }
}

/// A sealed segment's index, opened.
pub(crate) struct Sealed {
    file: File,
    pub(crate) records: u64,
    /// Where the segment's last checkpoint frame starts.
    pub(crate) last_cp: Option<u64>,
    pairs: u64,
    fence: Vec<u64>,
}

impl Sealed {
    /// Writes the index of a sealed segment (`offsets` of its records, `active` its index) to
    /// `path` durably: a temporary file, fsync, rename, then the directory.
    pub(crate) fn write(
        path: &Path,
        first_seq: u64,
        log_len: u64,
        last_cp: Option<u64>,
        offsets: &[u64],
        active: &Active,
    ) -> Result<(), JournalError> {
        let pairs = active.sorted_pairs();
        let mut b = Vec::with_capacity(HEAD + offsets.len() * 8 + pairs.len() * (PAIR + 1));
        b.extend_from_slice(&MAGIC);
        let cp = last_cp.unwrap_or(u64::MAX);
        for v in [
            first_seq,
            offsets.len() as u64,
            pairs.len() as u64,
            log_len,
            cp,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for o in offsets {
            b.extend_from_slice(&o.to_le_bytes());
        }
        for (h, p) in &pairs {
            b.extend_from_slice(&h.to_le_bytes());
            b.extend_from_slice(&p.to_le_bytes());
        }
        for chunk in pairs.chunks(FENCE) {
            b.extend_from_slice(&chunk[0].0.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = path.with_extension("idx.tmp");
        let mut f = super::create_file(&tmp)?;
        f.write_all(&b).map_err(|e| JournalError::io(&tmp, e))?;
        f.sync_all().map_err(|e| JournalError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| JournalError::io(path, e))?;
        super::sync_dir(path)
    }

    /// Opens a sealed index, checking it belongs to the segment that starts at `first_seq`
    /// and is `log_len` bytes; `Ok(None)` when it does not (or is damaged): the caller rebuilds
    /// it from the segment.
    pub(crate) fn open(
        path: &Path,
        first_seq: u64,
        log_len: u64,
    ) -> Result<Option<Sealed>, JournalError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::io(path, e)),
        };
        let size = file
            .metadata()
            .map_err(|e| JournalError::io(path, e))?
            .len();
        let mut head = [0u8; HEAD];
        if size < HEAD as u64 + 4 || file.read_exact_at(&mut head, 0).is_err() {
            return Ok(None);
        }
        let field = |i: usize| {
            u64::from_le_bytes(head[8 + i * 8..16 + i * 8].try_into().unwrap_or_default())
        };
        let (first, records, pairs, len, cp) = (field(0), field(1), field(2), field(3), field(4));
        let fences = pairs.div_ceil(FENCE as u64);
        let expect = (HEAD as u64)
            .checked_add(records.saturating_mul(8))
            .and_then(|v| v.checked_add(pairs.saturating_mul(PAIR as u64)))
            .and_then(|v| v.checked_add(fences.saturating_mul(8)))
            .and_then(|v| v.checked_add(4));
        if head[..8] != MAGIC || first != first_seq || len != log_len || expect != Some(size) {
            return Ok(None);
        }
        // The whole file is checked once at open (it is small next to its segment).
        let mut all = vec![0u8; size as usize];
        file.read_exact_at(&mut all, 0)
            .map_err(|e| JournalError::io(path, e))?;
        let (body, crc) = all.split_at(all.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Ok(None);
        }
        let fence_at = (size - 4 - fences * 8) as usize;
        let fence = body[fence_at..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok(Some(Sealed {
            file,
            records,
            last_cp: (cp != u64::MAX).then_some(cp),
            pairs,
            fence,
        }))
    }

    /// The byte offset in the segment of the record at `pos`.
    pub(crate) fn offset(&self, pos: u64) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, HEAD as u64 + pos * 8)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Positions indexed under `hash`, ascending.
    pub(crate) fn positions(&self, hash: u64) -> std::io::Result<Vec<u32>> {
        // The first fence block that can hold `hash`: the one before the first post above it
        // (a run of equal hashes may start in the block before a post equal to it).
        let block = self.fence.partition_point(|&h| h < hash).saturating_sub(1);
        let pairs_at = HEAD as u64 + self.records * 8;
        let mut out = Vec::new();
        let mut i = (block * FENCE) as u64;
        let mut buf = vec![0u8; FENCE * PAIR];
        while i < self.pairs {
            let n = (self.pairs - i).min(FENCE as u64) as usize;
            let b = &mut buf[..n * PAIR];
            self.file.read_exact_at(b, pairs_at + i * PAIR as u64)?;
            for p in b.chunks_exact(PAIR) {
                let h = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                if h > hash {
                    return Ok(out);
                }
                if h == hash {
                    out.push(u32::from_le_bytes(p[8..].try_into().unwrap_or_default()));
                }
            }
            i += n as u64;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_lookups_match_the_active_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Active::default();
        // Runs of equal hashes longer than a fence block and straddling block edges.
        let mut n = 0u32;
        for h in 0..50u64 {
            for _ in 0..(h * 7 % 300) {
                a.add(h * 1_000_003, n);
                n += 1;
            }
        }
        let offsets: Vec<u64> = (0..u64::from(n)).map(|i| i * 10).collect();
        let p = dir.path().join("x.idx");
        Sealed::write(&p, 5, 77, Some(9), &offsets, &a).unwrap();
        assert!(
            Sealed::open(&p, 6, 77).unwrap().is_none(),
            "another segment"
        );
        assert!(Sealed::open(&p, 5, 78).unwrap().is_none(), "another length");
        let s = Sealed::open(&p, 5, 77).unwrap().unwrap();
        for h in 0..52u64 {
            assert_eq!(
                s.positions(h * 1_000_003).unwrap(),
                a.positions(h * 1_000_003),
                "{h}"
            );
        }
        assert_eq!(s.offset(3).unwrap(), 30);
        assert_eq!(s.last_cp, Some(9));
        // A damaged file is not used.
        let mut b = std::fs::read(&p).unwrap();
        b[60] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(Sealed::open(&p, 5, 77).unwrap().is_none());
    }
}
