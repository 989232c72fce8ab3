//! The sled implementation of [`Store`].
//!
//! Trees: `entries` (id -> JSON), `idx_spiffe`, `idx_parent`, `idx_selector` (key `<value>\0<id>`,
//! empty value), `revlog` (revision, big-endian u64 -> JSON [`Change`]), `meta` (`rev`, `ca`),
//! `nodes`, `tokens`, `bundles`. SPIFFE IDs and selectors cannot contain NUL, so `\0` separates
//! the indexed value from the entry ID and a prefix scan on `<value>\0` finds exactly the matches.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use writ_core::{AttestedNode, Bundle, Entry, JoinToken, Selector, SpiffeId, Task, TrustDomain};

use crate::{Change, ChangeKind, EntryFilter, NodeUpdate, Store, StoreError};

const REV_KEY: &[u8] = b"rev";
/// The revocation list (serials and `jti`s revoked and not yet expired), JSON.
const REVOCATIONS_KEY: &[u8] = b"revocations";
const CA_KEY: &[u8] = b"ca";
/// Run-time federation relationships, JSON.
const FEDERATIONS_KEY: &[u8] = b"federations";

/// The embedded sled datastore.
pub struct SledStore {
    db: sled::Db,
    entries: Tree,
    idx_spiffe: Tree,
    idx_parent: Tree,
    idx_selector: Tree,
    revlog: Tree,
    pub(crate) meta: Tree,
    nodes: Tree,
    tokens: Tree,
    bundles: Tree,
    tasks: Tree,
    /// The audit journal (segment files in `<dir>/journal`, not sled: see `sled_audit.rs`).
    pub(crate) journal: crate::journal::Journal,
    /// Task records were written since the last flush: the next audit append flushes sled
    /// first (see [`Store::put_task`]).
    pub(crate) tasks_dirty: std::sync::atomic::AtomicBool,
    /// Held while an audit append flushes for `tasks_dirty`.
    pub(crate) tasks_flush: Mutex<()>,
    /// Serialises entry writes (uniqueness check + revision numbering).
    write_lock: Mutex<()>,
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.into()))
}

/// An entry as stored: its JSON without the top-level fields that hold their default (empty
/// text and lists, `false`, `0`, `null`), which decoding restores (every optional field of
/// [`Entry`] is `#[serde(default)]` with the zero value). A typical entry is ~240 bytes
/// instead of ~400, on disk and in sled's page cache, which holds every page the start-up
/// listing read (see `CACHE_BYTES`).
fn enc_entry(e: &Entry) -> Result<Vec<u8>, StoreError> {
    // The fields that may be left out, each only when it holds its zero value. A list of what
    // may go (not of what must stay), so a field added later is stored until it is listed.
    const DROPPABLE: [&str; 15] = [
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "dns_names",
        "hint",
        "admin",
        "downstream",
        "federates_with",
        "expires_at",
        "owner",
        "purpose",
        "break_glass",
        "break_glass_reason",
        "delegate",
        "created_at",
        "revision",
    ];
    let mut v = serde_json::to_value(e).map_err(|e| StoreError::Corrupt(e.into()))?;
    if let serde_json::Value::Object(m) = &mut v {
        m.retain(|k, x| {
            !DROPPABLE.contains(&k.as_str())
                || !match x {
                    serde_json::Value::Null => true,
                    serde_json::Value::Bool(b) => !*b,
                    // `expires_at: 0` is an instant (long past), not "never" (`null`).
                    serde_json::Value::Number(n) => k != "expires_at" && n.as_u64() == Some(0),
                    serde_json::Value::String(s) => s.is_empty(),
                    serde_json::Value::Array(a) => a.is_empty(),
                    serde_json::Value::Object(_) => false,
                }
        });
    }
    enc(&v)
}

pub(crate) fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.into()))
}

fn idx_key(value: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 1 + id.len());
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn idx_prefix(value: &str) -> Vec<u8> {
    let mut k = value.as_bytes().to_vec();
    k.push(0);
    k
}

type Tx = ConflictableTransactionError<StoreError>;

pub(crate) fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e.into()),
    }
}

/// sled's page cache. Its default (1 GiB) let the start-up scan of every entry keep each page
/// it read, on top of the server's own index, which already holds every entry decoded. sled
/// settles cache accesses per shard in queues of 64 (256 shards), so a small store keeps every
/// page it read whatever the cap; a large one keeps the cap plus those queues (measured with
/// heaptrack and `writ-bench scale`: docs/benchmarks.md). What the server reads from the store
/// after start (admin listings a page at a time, uniqueness checks, the revision log) is small
/// and falls through to the OS page cache.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

impl SledStore {
    /// Opens (creating if needed) the datastore in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, crate::journal::SEGMENT_BYTES)
    }

    /// [`SledStore::open`] with the audit journal's segments sealed at `segment_bytes` (small
    /// values exercise sealing in tests; the default suits production).
    pub fn open_with(dir: impl AsRef<Path>, segment_bytes: u64) -> Result<Self, StoreError> {
        // sled's flusher thread can hold the file lock for a moment after the previous handle
        // in this process was dropped (a restart in place, tests): retry briefly on a lock
        // error; a lock another process holds still fails after the retries.
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new()
                .path(dir.as_ref())
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(CACHE_BYTES)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if attempt < 30 && e.to_string().contains("could not acquire lock") =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(StoreError::Open {
                        path: dir.as_ref().display().to_string(),
                        source: e.into(),
                    })
                }
            }
        };
        let t = |n: &str| db.open_tree(n);
        let meta = t("meta")?;
        let journal = crate::sled_audit::open_journal(&db, &meta, dir.as_ref(), segment_bytes)?;
        Ok(SledStore {
            entries: t("entries")?,
            idx_spiffe: t("idx_spiffe")?,
            idx_parent: t("idx_parent")?,
            idx_selector: t("idx_selector")?,
            revlog: t("revlog")?,
            meta,
            nodes: t("nodes")?,
            tokens: t("tokens")?,
            bundles: t("bundles")?,
            tasks: t("tasks")?,
            journal,
            tasks_dirty: std::sync::atomic::AtomicBool::new(false),
            tasks_flush: Mutex::new(()),
            db,
            write_lock: Mutex::new(()),
        })
    }

    /// Makes everything written so far durable (fsync).
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded state is in sled, not behind the mutex, so a poisoned lock is still usable.
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ids_with_prefix(tree: &Tree, value: &str) -> Result<Vec<String>, StoreError> {
        let prefix = idx_prefix(value);
        let mut out = Vec::new();
        for kv in tree.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|e| StoreError::Corrupt(e.into()))?;
            out.push(id.to_owned());
        }
        Ok(out)
    }

    fn entries_for_ids(&self, ids: Vec<String>) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.get_entry(&id)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Writes each `(old, new, kind)` with consecutive revisions in one atomic transaction (removing
    /// `old`'s index keys), then flushes.
    fn write_entries(
        &self,
        items: Vec<(Option<Entry>, Entry, ChangeKind)>,
    ) -> Result<Vec<Entry>, StoreError> {
        let now = writ_core::now_unix();
        let trees = (
            &self.entries,
            &self.idx_spiffe,
            &self.idx_parent,
            &self.idx_selector,
            &self.revlog,
            &self.meta,
        );
        let result = trees
            .transaction(|(entries, spiffe, parent, selector, revlog, meta)| {
                let mut out = Vec::with_capacity(items.len());
                let mut rev = current_revision(meta)?;
                for (old, new, kind) in &items {
                    rev += 1;
                    let mut new = new.clone();
                    new.revision = rev;
                    if let Some(o) = old {
                        remove_index(o, spiffe, parent, selector)?;
                    }
                    if *kind == ChangeKind::Deleted {
                        entries.remove(new.id.as_bytes())?;
                    } else {
                        entries.insert(new.id.as_bytes(), enc_entry(&new).map_err(Tx::Abort)?)?;
                        spiffe.insert(idx_key(new.spiffe_id.as_str(), &new.id), &[])?;
                        parent.insert(idx_key(new.parent_id.as_str(), &new.id), &[])?;
                        for s in &new.selectors {
                            selector.insert(idx_key(&s.to_string(), &new.id), &[])?;
                        }
                    }
                    let previous = if *kind == ChangeKind::Updated {
                        old.clone()
                    } else {
                        None
                    };
                    let change = Change {
                        revision: rev,
                        kind: *kind,
                        entry: new.clone(),
                        previous,
                        at: now,
                    };
                    revlog.insert(&rev.to_be_bytes(), enc(&change).map_err(Tx::Abort)?)?;
                    out.push(new);
                }
                meta.insert(REV_KEY, &rev.to_be_bytes())?;
                Ok(out)
            })
            .map_err(tx_err)?;
        self.flush()?;
        Ok(result)
    }

    fn write_entry(
        &self,
        old: Option<&Entry>,
        new: Entry,
        kind: ChangeKind,
    ) -> Result<Entry, StoreError> {
        let mut v = self.write_entries(vec![(old.cloned(), new, kind)])?;
        v.pop().ok_or_else(|| StoreError::Db("empty write".into()))
    }

    /// Refuses `entry` if its ID or its (SPIFFE ID, parent, selectors) is taken in the store or
    /// by an earlier entry of the same batch.
    /// Refuses an entry whose ID exists, or that repeats an existing registration (same SPIFFE
    /// ID, parent and selector set), in the store or earlier in the same batch. The batch is
    /// checked through hash sets so a bulk create stays linear in its size.
    fn check_new(&self, entry: &Entry, batch: &BatchSeen) -> Result<(), StoreError> {
        let exists = |id: &str| StoreError::AlreadyExists {
            kind: "entry",
            id: id.to_owned(),
        };
        if batch.ids.contains(&entry.id) || self.entries.contains_key(entry.id.as_bytes())? {
            return Err(exists(&entry.id));
        }
        if let Some(id) = batch.registrations.get(&registration(entry)) {
            return Err(exists(id));
        }
        if let Some(e) = self
            .entries_by_spiffe_id(&entry.spiffe_id)?
            .iter()
            .find(|e| {
                e.parent_id == entry.parent_id && same_selectors(&e.selectors, &entry.selectors)
            })
        {
            return Err(exists(&e.id));
        }
        Ok(())
    }
}

/// IDs and registrations already in a batch being created.
#[derive(Default)]
struct BatchSeen {
    ids: HashSet<String>,
    registrations: HashMap<(SpiffeId, SpiffeId, Vec<Selector>), String>,
}

/// What makes two entries the same registration: SPIFFE ID, parent, and the selector set.
fn registration(e: &Entry) -> (SpiffeId, SpiffeId, Vec<Selector>) {
    let mut sels = e.selectors.clone();
    sels.sort();
    sels.dedup();
    (e.spiffe_id.clone(), e.parent_id.clone(), sels)
}

fn current_revision(meta: &TransactionalTree) -> Result<u64, Tx> {
    match meta.get(REV_KEY)? {
        Some(v) => {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| Tx::Abort(StoreError::Corrupt("revision counter".into())))?;
            Ok(u64::from_be_bytes(b))
        }
        None => Ok(0),
    }
}

fn remove_index(
    e: &Entry,
    spiffe: &TransactionalTree,
    parent: &TransactionalTree,
    selector: &TransactionalTree,
) -> Result<(), Tx> {
    spiffe.remove(idx_key(e.spiffe_id.as_str(), &e.id))?;
    parent.remove(idx_key(e.parent_id.as_str(), &e.id))?;
    for s in &e.selectors {
        selector.remove(idx_key(&s.to_string(), &e.id))?;
    }
    Ok(())
}

fn same_selectors(a: &[Selector], b: &[Selector]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

impl Store for SledStore {
    fn create_entry(&self, entry: Entry) -> Result<Entry, StoreError> {
        let mut v = self.create_entries(vec![entry])?;
        v.pop().ok_or_else(|| StoreError::Db("empty write".into()))
    }

    fn create_entries(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError> {
        let _g = self.lock();
        let now = writ_core::now_unix();
        let mut batch: Vec<Entry> = Vec::with_capacity(entries.len());
        let mut seen = BatchSeen::default();
        for mut entry in entries {
            if entry.id.is_empty() {
                entry.id = uuid::Uuid::new_v4().to_string();
            }
            self.check_new(&entry, &seen)?;
            seen.ids.insert(entry.id.clone());
            seen.registrations
                .insert(registration(&entry), entry.id.clone());
            if entry.created_at == 0 {
                entry.created_at = now;
            }
            batch.push(entry);
        }
        self.write_entries(
            batch
                .into_iter()
                .map(|e| (None, e, ChangeKind::Created))
                .collect(),
        )
    }

    fn update_entry(&self, mut entry: Entry) -> Result<Entry, StoreError> {
        let _g = self.lock();
        let old = self
            .get_entry(&entry.id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "entry",
                id: entry.id.clone(),
            })?;
        for e in self.entries_by_spiffe_id(&entry.spiffe_id)? {
            if e.id != entry.id
                && e.parent_id == entry.parent_id
                && same_selectors(&e.selectors, &entry.selectors)
            {
                return Err(StoreError::AlreadyExists {
                    kind: "entry",
                    id: e.id,
                });
            }
        }
        entry.created_at = old.created_at;
        self.write_entry(Some(&old), entry, ChangeKind::Updated)
    }

    fn delete_entry(&self, id: &str) -> Result<Entry, StoreError> {
        let _g = self.lock();
        let old = self.get_entry(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "entry",
            id: id.to_owned(),
        })?;
        self.write_entry(Some(&old), old.clone(), ChangeKind::Deleted)
    }

    fn get_entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        self.entries
            .get(id.as_bytes())?
            .map(|v| dec(&v))
            .transpose()
    }

    fn list_entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.entries.iter().values().map(|v| dec(&v?)).collect()
    }

    fn entries_by_spiffe_id(&self, id: &SpiffeId) -> Result<Vec<Entry>, StoreError> {
        self.entries_for_ids(Self::ids_with_prefix(&self.idx_spiffe, id.as_str())?)
    }

    fn entries_by_parent(&self, parent: &SpiffeId) -> Result<Vec<Entry>, StoreError> {
        self.entries_for_ids(Self::ids_with_prefix(&self.idx_parent, parent.as_str())?)
    }

    fn entries_by_selector(&self, selector: &Selector) -> Result<Vec<Entry>, StoreError> {
        self.entries_for_ids(Self::ids_with_prefix(
            &self.idx_selector,
            &selector.to_string(),
        )?)
    }

    fn scan_entries(
        &self,
        filter: EntryFilter<'_>,
        after: &str,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        let (tree, value) = match filter {
            EntryFilter::All => {
                // Entry keys are the IDs: start just past `after`.
                let mut start = after.as_bytes().to_vec();
                if !after.is_empty() {
                    start.push(0);
                }
                for kv in self.entries.range(start..) {
                    if !visit(dec(&kv?.1)?) {
                        break;
                    }
                }
                return Ok(());
            }
            EntryFilter::SpiffeId(id) => (&self.idx_spiffe, id.to_string()),
            EntryFilter::Parent(id) => (&self.idx_parent, id.to_string()),
            EntryFilter::Selector(s) => (&self.idx_selector, s.to_string()),
        };
        // Index keys are `<value>\0<id>`, so within the prefix they are in ID order.
        let prefix = idx_prefix(&value);
        let mut start = idx_key(&value, after);
        if !after.is_empty() {
            start.push(0);
        }
        for kv in tree.range(start..) {
            let (k, _) = kv?;
            let Some(id) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let id = std::str::from_utf8(id).map_err(|e| StoreError::Corrupt(e.into()))?;
            if let Some(e) = self.get_entry(id)? {
                if !visit(e) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn revision(&self) -> Result<u64, StoreError> {
        match self.meta.get(REV_KEY)? {
            Some(v) => {
                Ok(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt("revision counter".into())
                })?))
            }
            None => Ok(0),
        }
    }

    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        if let Some(first) = self.revlog.first()? {
            let oldest = u64::from_be_bytes(
                first
                    .0
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("revision key".into()))?,
            );
            // `after + 1` must still be in the log (or be in the future).
            if after + 1 < oldest {
                return Err(StoreError::RevisionCompacted {
                    requested: after,
                    oldest,
                });
            }
        }
        let start = after.saturating_add(1).to_be_bytes();
        self.revlog
            .range(start..)
            .take(limit)
            .map(|kv| dec(&kv?.1))
            .collect()
    }

    fn compact_log(&self, upto: u64) -> Result<(), StoreError> {
        let end = upto.saturating_add(1).to_be_bytes();
        let keys: Vec<_> = self.revlog.range(..end).keys().collect::<Result<_, _>>()?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.revlog.apply_batch(batch)?;
        self.flush()
    }

    fn put_node(&self, node: AttestedNode) -> Result<AttestedNode, StoreError> {
        self.nodes
            .insert(node.spiffe_id.as_str().as_bytes(), enc(&node)?)?;
        self.flush()?;
        Ok(node)
    }

    fn update_node(
        &self,
        id: &SpiffeId,
        decide: &mut dyn FnMut(Option<&AttestedNode>) -> NodeUpdate,
    ) -> Result<Option<AttestedNode>, StoreError> {
        let key = id.as_str().as_bytes();
        // Compare-and-swap on the record's bytes: a write that landed between our read and our
        // swap makes the swap fail, and the decision is taken again on what is there now.
        loop {
            let old_bytes = self.nodes.get(key)?;
            let old: Option<AttestedNode> = old_bytes.as_deref().map(dec).transpose()?;
            let (new_bytes, after) = match decide(old.as_ref()) {
                NodeUpdate::Keep => return Ok(old),
                NodeUpdate::Delete => (None, None),
                NodeUpdate::Put(n) => (Some(enc(&n)?), Some(n)),
            };
            match self.nodes.compare_and_swap(key, old_bytes, new_bytes)? {
                Ok(()) => {
                    self.flush()?;
                    return Ok(after);
                }
                Err(_) => continue,
            }
        }
    }

    fn get_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, StoreError> {
        self.nodes
            .get(id.as_str().as_bytes())?
            .map(|v| dec(&v))
            .transpose()
    }

    fn list_nodes(&self) -> Result<Vec<AttestedNode>, StoreError> {
        self.nodes.iter().values().map(|v| dec(&v?)).collect()
    }

    fn delete_node(&self, id: &SpiffeId) -> Result<AttestedNode, StoreError> {
        let old =
            self.nodes
                .remove(id.as_str().as_bytes())?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "node",
                    id: id.to_string(),
                })?;
        self.flush()?;
        dec(&old)
    }

    fn create_join_token(&self, token: JoinToken) -> Result<(), StoreError> {
        let prev = self.tokens.compare_and_swap(
            token.token.as_bytes(),
            None as Option<&[u8]>,
            Some(enc(&token)?),
        )?;
        if prev.is_err() {
            return Err(StoreError::AlreadyExists {
                kind: "join token",
                id: "(redacted)".into(),
            });
        }
        self.flush()
    }

    fn consume_join_token(&self, token: &str, now: i64) -> Result<JoinToken, StoreError> {
        // remove() is atomic: of two concurrent callers only one gets the value.
        let v = self
            .tokens
            .remove(token.as_bytes())?
            .ok_or(StoreError::TokenInvalid)?;
        self.flush()?;
        let t: JoinToken = dec(&v)?;
        if t.expires_at <= now {
            return Err(StoreError::TokenExpired);
        }
        Ok(t)
    }

    fn prune_join_tokens(&self, now: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.tokens.iter() {
            let (k, v) = kv?;
            let t: JoinToken = dec(&v)?;
            if t.expires_at <= now {
                self.tokens.remove(k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    fn put_bundle(&self, bundle: &Bundle) -> Result<(), StoreError> {
        self.bundles
            .insert(bundle.trust_domain.as_str().as_bytes(), enc(bundle)?)?;
        self.flush()
    }

    fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, StoreError> {
        self.bundles
            .get(td.as_str().as_bytes())?
            .map(|v| dec(&v))
            .transpose()
    }

    fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError> {
        self.bundles.iter().values().map(|v| dec(&v?)).collect()
    }

    fn delete_bundle(&self, td: &TrustDomain) -> Result<(), StoreError> {
        self.bundles
            .remove(td.as_str().as_bytes())?
            .ok_or_else(|| StoreError::NotFound {
                kind: "bundle",
                id: td.to_string(),
            })?;
        self.flush()
    }

    fn append_audit(
        &self,
        batch: crate::AuditBatch,
        sign: crate::CheckpointSigner<'_>,
    ) -> Result<Vec<writ_audit::Record>, StoreError> {
        self.audit_append(batch, sign)
    }

    fn audit_scan(
        &self,
        query: crate::AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Result<writ_audit::Record, (u64, String)>) -> bool,
    ) -> Result<(), StoreError> {
        self.audit_visit(query, after, visit)
    }

    fn audit_checkpoints(&self) -> Result<Vec<writ_audit::Checkpoint>, StoreError> {
        self.audit_cps()
    }

    fn audit_head(&self) -> Result<(u64, String), StoreError> {
        self.audit_head_read()
    }

    fn put_ca_journal(&self, journal: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(CA_KEY, journal)?;
        self.flush()
    }

    fn get_ca_journal(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(CA_KEY)?.map(|v| v.to_vec()))
    }

    fn put_revocations(&self, list: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(REVOCATIONS_KEY, list)?;
        self.flush()
    }

    fn get_revocations(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(REVOCATIONS_KEY)?.map(|v| v.to_vec()))
    }

    fn put_task(&self, task: &Task) -> Result<(), StoreError> {
        self.tasks.insert(task.id.as_bytes(), enc(task)?)?;
        self.tasks_dirty
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn list_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.tasks.iter().values().map(|v| dec(&v?)).collect()
    }

    fn put_federations(&self, list: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(FEDERATIONS_KEY, list)?;
        self.flush()
    }

    fn get_federations(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(FEDERATIONS_KEY)?.map(|v| v.to_vec()))
    }

    fn delete_tasks(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for id in ids {
            b.remove(id.as_bytes());
        }
        self.tasks.apply_batch(b)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: "e1".into(),
            ..Entry::new(
                SpiffeId::parse("spiffe://td/w").unwrap(),
                SpiffeId::parse("spiffe://td/node").unwrap(),
                vec![Selector::parse("unix:uid:0").unwrap()],
            )
        }
    }

    /// Every combination of set and default fields round-trips (a deterministic sample).
    #[test]
    fn stored_entries_round_trip_whatever_is_set() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut bit = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x & 1 == 1
        };
        for i in 0..500 {
            let mut e = entry();
            if bit() {
                e.x509_svid_ttl = i;
            }
            if bit() {
                e.jwt_svid_ttl = i;
            }
            if bit() {
                e.dns_names = vec![format!("h{i}.example")];
            }
            if bit() {
                e.hint = format!("h{i}");
            }
            e.admin = bit();
            e.downstream = bit();
            if bit() {
                e.federates_with = vec![TrustDomain::new("other.org").unwrap()];
            }
            e.expires_at = match (bit(), bit()) {
                (true, true) => Some(0),
                (true, false) => Some(i as i64),
                _ => None,
            };
            if bit() {
                e.owner = "o".into();
            }
            if bit() {
                e.purpose = "p".into();
            }
            e.break_glass = bit();
            if bit() {
                e.break_glass_reason = "r".into();
            }
            if bit() {
                e.delegate = Some(Box::new(writ_core::entry::Delegation {
                    max_ttl: i,
                    max_active: 0,
                    audiences: vec![],
                }));
            }
            if bit() {
                e.created_at = i as i64;
            }
            if bit() {
                e.revision = i;
            }
            assert_eq!(
                dec::<Entry>(&enc_entry(&e).unwrap()).unwrap(),
                e,
                "case {i}"
            );
        }
    }

    /// The compact stored form decodes to exactly the entry, whichever fields hold defaults,
    /// and `expires_at: 0` (an instant) never turns into "never expires".
    #[test]
    fn stored_entry_round_trips() {
        let plain = entry();
        let bytes = enc_entry(&plain).unwrap();
        assert_eq!(dec::<Entry>(&bytes).unwrap(), plain);
        assert!(
            bytes.len() < enc(&plain).unwrap().len() / 2 + 60,
            "defaults left out"
        );

        let mut at_zero = entry();
        at_zero.expires_at = Some(0);
        assert_eq!(
            dec::<Entry>(&enc_entry(&at_zero).unwrap()).unwrap(),
            at_zero
        );

        let mut full = entry();
        full.x509_svid_ttl = 60;
        full.jwt_svid_ttl = 30;
        full.dns_names = vec!["a.example".into()];
        full.hint = "h".into();
        full.admin = true;
        full.downstream = true;
        full.federates_with = vec![TrustDomain::new("other.org").unwrap()];
        full.expires_at = Some(1_900_000_000);
        full.owner = "team".into();
        full.purpose = "why".into();
        full.break_glass = true;
        full.break_glass_reason = "incident".into();
        full.delegate = Some(Box::new(writ_core::entry::Delegation {
            max_ttl: 600,
            max_active: 0,
            audiences: vec![],
        }));
        full.created_at = 5;
        full.revision = 7;
        assert_eq!(dec::<Entry>(&enc_entry(&full).unwrap()).unwrap(), full);
    }
}
