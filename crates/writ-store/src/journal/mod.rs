//! The audit journal as append-only segment files (`<datastore>/journal/seg-<first seq>.log`),
//! for the embedded store.
//!
//! One append is one `write` of its record frames and its checkpoint frame ([`frame`]), then
//! an `fdatasync` shared with every append written before it started ([`write`]): the cost of
//! a record is its JSON and a checksum, not a database insert (four sled inserts a record
//! before, ~59 us; see docs/benchmarks.md). A segment is sealed
//! when it passes its size limit: its index is written to `seg-<first seq>.idx` ([`index`])
//! and a new segment starts. The open segment's index is in memory and rebuilt at open by
//! reading the segment ([`scan`]).
//!
//! Invariants:
//! - Record `first + i` is the `i`-th record frame of the segment named `first`; a reader
//!   checks the record's own number and reports a mismatch (moved or removed records).
//! - Readers see an append only after an `fdatasync` that started after its `write` returned
//!   (the in-memory state is published then, in write order), so nothing unacknowledged is
//!   ever read.
//! - Appends are chained and written in one order under the writer lock; the journal as read
//!   always ends at a checkpoint; bytes past the last one at open are an interrupted append,
//!   kept aside.
//! - Segment files are 0600 in a 0700 directory.

pub mod frame;
mod index;
mod read;
mod scan;
mod write;

pub use write::{keys_of, Group};

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use writ_audit::GENESIS;

/// A segment is sealed once it holds at least this many bytes (~100,000 records).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What can go wrong with the journal's files.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("audit journal: {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A segment is damaged in a way a crash cannot explain.
    #[error("audit journal: {path} is damaged at byte {offset}: {reason}")]
    Damaged {
        /// The segment.
        path: String,
        /// Where.
        offset: u64,
        /// What was found.
        reason: String,
    },
    /// Encoding or signing a record or checkpoint failed.
    #[error("audit journal: {0}")]
    Other(String),
}

impl JournalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Creates a new file for writing, 0600.
pub(crate) fn create_file(path: &Path) -> Result<File, JournalError> {
    std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| JournalError::io(path, e))
}

/// Makes a file's creation or rename in its directory durable.
pub(crate) fn sync_dir(file: &Path) -> Result<(), JournalError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("seg-{first:020}.log"))
}

/// A segment's log, open for reading.
struct Segment {
    first: u64,
    path: PathBuf,
    log: File,
}

/// A sealed segment: its log and its index file.
struct SealedSeg {
    seg: Arc<Segment>,
    idx: index::Sealed,
    /// Bytes of its log.
    len: u64,
}

/// The open segment as readers see it (published after each `fdatasync`).
struct ActiveSeg {
    seg: Arc<Segment>,
    offsets: Vec<u64>,
    index: index::Active,
    /// Durable bytes.
    len: u64,
    /// Where its last checkpoint frame starts.
    last_cp: Option<u64>,
}

struct State {
    head: (u64, String),
    sealed: Vec<Arc<SealedSeg>>,
    active: ActiveSeg,
}

/// The journal in its directory.
pub struct Journal {
    dir: PathBuf,
    limit: u64,
    writer: Mutex<write::Writer>,
    /// Groups written and not yet durable, oldest first.
    pending: Mutex<std::collections::VecDeque<write::Pending>>,
    syncer: Mutex<write::Syncer>,
    /// An `fdatasync` failed: what was written since is in an unknown state, so nothing more
    /// is appended until a restart reads the segment again (as PostgreSQL does).
    failed: std::sync::atomic::AtomicBool,
    state: RwLock<State>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, sealing segments at `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> Result<Journal, JournalError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| JournalError::io(dir, e))?;
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
            let e = e.map_err(|e| JournalError::io(dir, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Only the names this journal writes (20 digits, from 1): `seg-5.log` would
            // otherwise be a second name for `seg-00000000000000000005.log`.
            if let Some(first) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .filter(|n| n.len() == 20 && n.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > 0)
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        if firsts.is_empty() {
            let path = seg_path(dir, 1);
            create_file(&path)?
                .sync_all()
                .map_err(|e| JournalError::io(&path, e))?;
            sync_dir(&path)?;
            firsts.push(1);
        }
        let (last, older) = firsts.split_last().unwrap_or((&1, &[]));
        let mut sealed = Vec::with_capacity(older.len());
        for &first in older {
            sealed.push(Arc::new(open_sealed(dir, first)?));
        }
        let path = seg_path(dir, *last);
        // The writer's handle (appends go through `write_all_at`, readers have their own).
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| JournalError::io(&path, e))?;
        let s = scan::scan(&path, &bytes)?;
        if s.tail {
            set_tail_aside(&path, &file, &bytes[s.end as usize..], s.end)?;
        }
        drop(bytes);
        let seg = Arc::new(Segment {
            first: *last,
            path: path.clone(),
            log: File::open(&path).map_err(|e| JournalError::io(&path, e))?,
        });
        let active = ActiveSeg {
            seg,
            offsets: s.offsets,
            index: s.index,
            len: s.end,
            last_cp: s.last_cp,
        };
        let head = head_of(&sealed, &active)?;
        let next_place = active.seg.first + active.offsets.len() as u64;
        let consistent = head.0.checked_add(1) == Some(next_place);
        let file = Arc::new(file);
        let j = Journal {
            dir: dir.to_path_buf(),
            limit,
            writer: Mutex::new(write::Writer {
                file: file.clone(),
                len: s.end,
                head: head.clone(),
                next_group: 1,
                last_ms: 0,
            }),
            pending: Mutex::default(),
            syncer: Mutex::new(write::Syncer { file, published: 0 }),
            failed: std::sync::atomic::AtomicBool::new(false),
            state: RwLock::new(State {
                head,
                sealed,
                active,
            }),
        };
        if !consistent {
            // Records were removed or added behind the journal's back (its last checkpoint
            // names another number than the segment's places give): leave that segment as it
            // is for the verifier to name, and number what comes next in a segment of its own.
            tracing::error!(
                segment = %path.display(),
                checkpoint_head = j.head().0,
                places = next_place - 1,
                "audit journal: the segment's records do not match its last checkpoint; \
                 run `writ audit verify`; new records go to a new segment"
            );
            let mut w = j.writer.lock().unwrap_or_else(|p| p.into_inner());
            j.seal(&mut w)?;
        }
        Ok(j)
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The number and hash of the newest record.
    pub fn head(&self) -> (u64, String) {
        self.state().head.clone()
    }
}

/// Opens a sealed segment, rebuilding its index file if it is missing or does not match (a
/// crash while sealing).
fn open_sealed(dir: &Path, first: u64) -> Result<SealedSeg, JournalError> {
    let path = seg_path(dir, first);
    let log = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
    let len = log
        .metadata()
        .map_err(|e| JournalError::io(&path, e))?
        .len();
    let idx_path = path.with_extension("idx");
    let idx = match index::Sealed::open(&idx_path, first, len)? {
        Some(i) => i,
        None => {
            tracing::warn!(segment = %path.display(), "rebuilding the audit segment's index");
            let bytes = std::fs::read(&path).map_err(|e| JournalError::io(&path, e))?;
            let s = scan::scan(&path, &bytes)?;
            index::Sealed::write(&idx_path, first, len, s.last_cp, &s.offsets, &s.index)?;
            index::Sealed::open(&idx_path, first, len)?.ok_or_else(|| {
                JournalError::Other(format!(
                    "{}: rebuilt index does not read back",
                    idx_path.display()
                ))
            })?
        }
    };
    Ok(SealedSeg {
        seg: Arc::new(Segment { first, path, log }),
        idx,
        len,
    })
}

/// Keeps the bytes past the journal's end (an interrupted append) in a file of their own, then
/// cuts the segment there.
fn set_tail_aside(path: &Path, file: &File, tail: &[u8], end: u64) -> Result<(), JournalError> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = path.with_extension(format!("log.tail-{ms}"));
    let mut f = create_file(&aside)?;
    std::io::Write::write_all(&mut f, tail).map_err(|e| JournalError::io(&aside, e))?;
    f.sync_all().map_err(|e| JournalError::io(&aside, e))?;
    sync_dir(&aside)?;
    file.set_len(end)
        .and_then(|()| file.sync_all())
        .map_err(|e| JournalError::io(path, e))?;
    tracing::warn!(
        segment = %path.display(),
        bytes = tail.len(),
        kept_in = %aside.display(),
        "audit journal: an append a crash cut short was not acknowledged; its bytes are kept aside"
    );
    Ok(())
}

/// The journal's head: what its newest checkpoint signed (the open segment's, else the newest
/// sealed segment's), or nothing yet. As the head kept in sled was, it is the writer's own
/// record of how far the chain went, whatever happened to the records since.
fn head_of(sealed: &[Arc<SealedSeg>], active: &ActiveSeg) -> Result<(u64, String), JournalError> {
    let at = match active.last_cp {
        Some(off) => Some((&*active.seg, off)),
        None => sealed
            .last()
            .and_then(|s| s.idx.last_cp.map(|off| (&*s.seg, off))),
    };
    let Some((seg, off)) = at else {
        return Ok((0, GENESIS.to_owned()));
    };
    read::checkpoint_at(seg, off)
        .map(|c| (c.seq, c.hash))
        .map_err(|reason| JournalError::Damaged {
            path: seg.path.display().to_string(),
            offset: off,
            reason: format!("the newest checkpoint cannot be read: {reason}"),
        })
}
