//! The in-memory entry index and the authorisation rule.
//!
//! The index mirrors the store's entries (loaded at start, then updated with every committed
//! change, in revision order) with two lookups: children by parent ID, and node alias entries by
//! node selector. With them, the set of entries an agent may serve is computed in time
//! proportional to that set, not to all entries:
//!
//! 1. the agent's identities: its own ID, its aliases (join token `spiffe_id`), and the SPIFFE IDs
//!    of node alias entries whose selectors are all among the node's selectors;
//! 2. every unexpired entry whose parent is one of those identities, then, breadth first, every
//!    entry whose parent is the SPIFFE ID of an entry already in the set (nested entries).

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use writ_core::{AttestedNode, Entry, EntryById as ById, Selector, SpiffeId};
use writ_store::{Change, ChangeKind};

/// The entries sharing one hash of a SPIFFE ID.
#[derive(Debug)]
enum Bucket {
    One(Arc<Entry>),
    Many(Vec<Arc<Entry>>),
}

/// Runs `f`, which blocks for seconds (loading the index), telling a multi-thread runtime so
/// that the worker's other tasks move elsewhere; anywhere else it just runs `f`.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The index's hasher: foldhash with a random seed per process, several times faster than
/// SipHash on short IDs (SipHash was a quarter of loading a million entries). foldhash is
/// only minimally resistant to deliberate collisions; the keys here are server-made entry
/// IDs and IDs and selectors written by administrators, not text agents or workloads choose.
type Fast = foldhash::fast::RandomState;

/// A hasher for keys that are already hashes (`by_spiffe`): the key is used as it is.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Entries by ID with the lookups authorisation needs.
///
/// Memory: each entry is held once (`Arc<Entry>`); the lookups hold pointers to it, and entries
/// with the same parent share that parent ID's text (interned on insert). About 0.7 KiB an
/// entry with one selector (docs/benchmarks.md, `writ-bench scale`).
#[derive(Debug, Default)]
pub(crate) struct EntryIndex {
    revision: u64,
    by_id: HashSet<ById, Fast>,
    by_parent: HashMap<SpiffeId, HashSet<ById, Fast>, Fast>,
    /// Entries by a hash of their SPIFFE ID (the key is not stored again; lookups compare the
    /// ID). Most IDs have one entry, which costs no allocation: ~40 bytes an entry.
    by_spiffe: HashMap<u64, Bucket, BuildHasherDefault<PreHashed>>,
    hasher: Fast,
    alias_by_selector: HashMap<Selector, HashSet<ById, Fast>, Fast>,
}

impl EntryIndex {
    /// Builds the index from all entries as of `revision`.
    pub(crate) fn new(entries: Vec<Entry>, revision: u64) -> Self {
        let mut idx = EntryIndex {
            revision,
            ..Default::default()
        };
        for e in entries {
            idx.insert(e);
        }
        idx
    }

    /// Builds the index from the store's entries as of `revision`, streamed (never all
    /// decoded at once, so the peak is the index itself, not twice it). Reading and decoding
    /// run on a second thread, indexing on this one: the two halves cost about the same, so a
    /// million entries load in about half the time (docs/benchmarks.md, `scale`).
    pub(crate) fn load(
        store: &dyn writ_store::Store,
        revision: u64,
    ) -> Result<Self, writ_store::StoreError> {
        const BATCH: usize = 1024;
        let mut idx = Self::new(Vec::new(), revision);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Entry>>(8);
        blocking(|| {
            std::thread::scope(|s| {
                let reader = s.spawn(move || {
                    let mut batch = Vec::with_capacity(BATCH);
                    let read = store.scan_entries(writ_store::EntryFilter::All, "", &mut |e| {
                        batch.push(e);
                        // A closed channel means the indexing side is gone: stop reading.
                        batch.len() < BATCH
                            || tx
                                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                                .is_ok()
                    });
                    if !batch.is_empty() {
                        let _ = tx.send(batch);
                    }
                    read
                });
                for batch in rx {
                    for e in batch {
                        idx.insert(e);
                    }
                }
                reader.join().unwrap_or_else(|_| {
                    Err(writ_store::StoreError::Unavailable(
                        "the thread reading the entries failed".into(),
                    ))
                })
            })
        })?;
        Ok(idx)
    }

    /// The revision the index reflects.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// Entries whose `expires_at` has passed (still stored, no longer served).
    pub(crate) fn expired(&self, now: i64) -> Vec<Arc<Entry>> {
        self.by_id
            .iter()
            .filter(|e| e.0.expires_at.is_some_and(|t| t <= now))
            .map(|e| e.0.clone())
            .collect()
    }

    /// Whether an entry with this ID is indexed.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains(id)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.by_id.get(id).map(|e| &e.0)
    }

    fn insert(&mut self, mut e: Entry) {
        // Share the parent's text with the entries already under it (most entries have one of
        // a few parents: their agent or node alias).
        // A JSON decoder does not know a list's length up front and grows it by doubling: one
        // selector would keep room for four (144 bytes of nothing, per entry).
        e.selectors.shrink_to_fit();
        e.dns_names.shrink_to_fit();
        e.federates_with.shrink_to_fit();
        // One lookup of the parent: share its text with the entries already under it (most
        // entries have one of a few parents: their agent or node alias), then join them.
        let siblings = match self.by_parent.entry(e.parent_id.clone()) {
            Slot::Occupied(o) => {
                e.parent_id = o.key().clone();
                o.into_mut()
            }
            Slot::Vacant(v) => v.insert(HashSet::default()),
        };
        let e = Arc::new(e);
        siblings.insert(ById(e.clone()));
        let h = self.hasher.hash_one(e.spiffe_id.as_str());
        match self.by_spiffe.entry(h) {
            Slot::Vacant(v) => {
                v.insert(Bucket::One(e.clone()));
            }
            Slot::Occupied(mut o) => {
                let b = o.get_mut();
                *b = match std::mem::replace(b, Bucket::Many(Vec::new())) {
                    Bucket::One(first) => Bucket::Many(vec![first, e.clone()]),
                    Bucket::Many(mut v) => {
                        v.push(e.clone());
                        Bucket::Many(v)
                    }
                };
            }
        }
        if e.is_node_alias() {
            for s in &e.selectors {
                self.alias_by_selector
                    .entry(s.clone())
                    .or_default()
                    .insert(ById(e.clone()));
            }
        }
        self.by_id.replace(ById(e));
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Entry>> {
        let e = self.by_id.take(id)?.0;
        if let Some(set) = self.by_parent.get_mut(&e.parent_id) {
            set.remove(id);
            if set.is_empty() {
                self.by_parent.remove(&e.parent_id);
            }
        }
        let h = self.hasher.hash_one(e.spiffe_id.as_str());
        match self.by_spiffe.remove(&h) {
            Some(Bucket::Many(mut v)) => {
                v.retain(|x| x.id != id);
                match v.len() {
                    0 => {}
                    1 => {
                        self.by_spiffe.insert(h, Bucket::One(v.remove(0)));
                    }
                    _ => {
                        self.by_spiffe.insert(h, Bucket::Many(v));
                    }
                }
            }
            Some(Bucket::One(x)) if x.id != id => {
                self.by_spiffe.insert(h, Bucket::One(x));
            }
            _ => {}
        }
        if e.is_node_alias() {
            for s in &e.selectors {
                if let Some(set) = self.alias_by_selector.get_mut(s) {
                    set.remove(id);
                    if set.is_empty() {
                        self.alias_by_selector.remove(s);
                    }
                }
            }
        }
        Some(e)
    }

    /// Applies a committed change; returns the entry as it was before, if any.
    pub(crate) fn apply(&mut self, c: &Change) -> Option<Arc<Entry>> {
        let old = self.remove(&c.entry.id);
        if c.kind != ChangeKind::Deleted {
            self.insert(c.entry.clone());
        }
        self.revision = self.revision.max(c.revision);
        old
    }

    /// The identities an agent acts as: its ID, aliases and matching node alias entries.
    pub(crate) fn identities(&self, node: &AttestedNode, now: i64) -> Vec<SpiffeId> {
        let mut ids = vec![node.spiffe_id.clone()];
        ids.extend(node.aliases.iter().cloned());
        let mut seen = HashSet::new();
        for s in &node.selectors {
            for ById(e) in self.alias_by_selector.get(s).into_iter().flatten() {
                if !seen.insert(e.id.as_str()) {
                    continue;
                }
                if !e.is_expired(now)
                    && writ_core::selector::is_subset(&e.selectors, &node.selectors)
                {
                    ids.push(e.spiffe_id.clone());
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Every unexpired entry reachable from `identities` through parent links.
    pub(crate) fn authorized(&self, identities: &[SpiffeId], now: i64) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        let mut seen_ids: HashSet<&SpiffeId> = HashSet::new();
        let mut seen_entries: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&SpiffeId> = VecDeque::new();
        for id in identities {
            if seen_ids.insert(id) {
                queue.push_back(id);
            }
        }
        while let Some(parent) = queue.pop_front() {
            for ById(e) in self.by_parent.get(parent).into_iter().flatten() {
                if !servable(e, now) || !seen_entries.insert(e.id.as_str()) {
                    continue;
                }
                out.push(e.clone());
                if seen_ids.insert(&e.spiffe_id) {
                    queue.push_back(&e.spiffe_id);
                }
            }
        }
        out
    }

    /// The entry `id` if it is in the set [`EntryIndex::authorized`] would return for
    /// `identities`, found by walking up its parent links instead of building the whole set:
    /// time proportional to the entry's ancestry, not to the agent's entries.
    pub(crate) fn authorizes(
        &self,
        identities: &[SpiffeId],
        id: &str,
        now: i64,
    ) -> Option<Arc<Entry>> {
        let entry = self.get(id).filter(|e| servable(e, now))?;
        // Breadth first over parent IDs; an ID is reachable when it is one of the identities, or
        // the SPIFFE ID of a servable entry whose own parent is reachable.
        let mut seen: HashSet<&SpiffeId> = HashSet::new();
        let mut queue: VecDeque<&SpiffeId> = VecDeque::from([&entry.parent_id]);
        while let Some(parent) = queue.pop_front() {
            if !seen.insert(parent) {
                continue;
            }
            if identities.contains(parent) {
                return Some(entry.clone());
            }
            let bucket = self.by_spiffe.get(&self.hasher.hash_one(parent.as_str()));
            let found = match bucket {
                Some(Bucket::One(e)) => std::slice::from_ref(e),
                Some(Bucket::Many(v)) => v.as_slice(),
                None => &[],
            };
            for p in found {
                if p.spiffe_id == *parent && servable(p, now) {
                    queue.push_back(&p.parent_id);
                }
            }
        }
        None
    }

    /// Whether a change to `entry` could alter the authorised set of an agent whose identities
    /// and authorised SPIFFE IDs are `ids` and whose entries are `entry_ids`.
    pub(crate) fn touches<V>(
        entry: &Entry,
        ids: &HashSet<SpiffeId>,
        entry_ids: &HashMap<String, V>,
    ) -> bool {
        entry.is_node_alias() || entry_ids.contains_key(&entry.id) || ids.contains(&entry.parent_id)
    }
}

/// Whether an entry can be served at `now`: not expired, not a node alias, and not for an ID
/// reserved for writ itself (the API refuses such entries; this also keeps any that predate that
/// check from ever being issued, as an SVID for the server's ID would impersonate the server).
fn servable(e: &Entry, now: i64) -> bool {
    !e.is_expired(now) && !e.is_node_alias() && !writ_core::is_reserved_id(&e.spiffe_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn entry(eid: &str, spiffe: &str, parent: &str, sels: &[&str]) -> Entry {
        Entry {
            id: eid.into(),
            revision: 1,
            ..Entry::new(
                id(spiffe),
                id(parent),
                sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            )
        }
    }

    fn node(sels: &[&str]) -> AttestedNode {
        AttestedNode {
            spiffe_id: id("spiffe://td/writ/agent/x509pop/abc"),
            attestor: "x509pop".into(),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            cert_serial: String::new(),
            cert_not_after: 0,
            prev_cert_serial: String::new(),
            aliases: vec![id("spiffe://td/node/token-alias")],
            banned: false,
            created_at: 0,
            revision: 0,
        }
    }

    #[test]
    fn authorised_set_follows_parents_aliases_and_nesting() {
        let agent = "spiffe://td/writ/agent/x509pop/abc";
        let mut expired = entry("e6", "spiffe://td/old", agent, &["unix:uid:6"]);
        expired.expires_at = Some(10);
        let idx = EntryIndex::new(
            vec![
                entry("e1", "spiffe://td/web", agent, &["unix:uid:1"]),
                entry(
                    "e2",
                    "spiffe://td/web/child",
                    "spiffe://td/web",
                    &["unix:uid:2"],
                ),
                entry(
                    "alias",
                    "spiffe://td/cluster/a",
                    "spiffe://td/writ/server",
                    &["x509pop:subject:cn:node1"],
                ),
                entry(
                    "e3",
                    "spiffe://td/db",
                    "spiffe://td/cluster/a",
                    &["unix:uid:3"],
                ),
                entry(
                    "e4",
                    "spiffe://td/tok",
                    "spiffe://td/node/token-alias",
                    &["unix:uid:4"],
                ),
                entry(
                    "e5",
                    "spiffe://td/other",
                    "spiffe://td/writ/agent/x509pop/zzz",
                    &["unix:uid:5"],
                ),
                expired,
            ],
            7,
        );
        let n = node(&["x509pop:subject:cn:node1", "x509pop:ca:fingerprint:ff"]);
        let ids = idx.identities(&n, 100);
        assert!(ids.contains(&id("spiffe://td/cluster/a")));
        let mut got: Vec<String> = idx
            .authorized(&ids, 100)
            .iter()
            .map(|e| e.id.clone())
            .collect();
        got.sort();
        assert_eq!(got, ["e1", "e2", "e3", "e4"]);
        // A node without the alias selector does not get e3.
        let n2 = node(&["x509pop:subject:cn:node2"]);
        let mut got: Vec<String> = idx
            .authorized(&idx.identities(&n2, 100), 100)
            .iter()
            .map(|e| e.id.clone())
            .collect();
        got.sort();
        assert_eq!(got, ["e1", "e2", "e4"]);
        // Before its expiry e6 is served.
        assert_eq!(idx.authorized(&idx.identities(&n, 5), 5).len(), 5);
    }

    #[test]
    fn authorizes_agrees_with_the_authorised_set() {
        // Random forests of entries (parents drawn from identities, other entries' SPIFFE IDs
        // and strangers; some expired, some node aliases, cycles possible): for every entry the
        // upward walk must agree with the downward set.
        let mut x = 0x2545_f491_u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let ids = [id("spiffe://td/agent"), id("spiffe://td/alias")];
        for round in 0..200 {
            let n = 1 + rnd(40);
            let mut entries = Vec::new();
            for i in 0..n {
                let parent = match rnd(4) {
                    0 => ids[rnd(2) as usize].to_string(),
                    1 => "spiffe://td/stranger".to_owned(),
                    _ => format!("spiffe://td/w/{}", rnd(n)),
                };
                let spiffe = if rnd(8) == 0 {
                    "spiffe://td/w/0".to_owned()
                } else {
                    format!("spiffe://td/w/{i}")
                };
                let mut e = entry(&format!("e{i}"), &spiffe, &parent, &["unix:uid:1"]);
                if rnd(6) == 0 {
                    e.expires_at = Some(50);
                }
                if rnd(10) == 0 {
                    e.parent_id = id("spiffe://td/writ/server");
                }
                entries.push(e);
            }
            let idx = EntryIndex::new(entries, 1);
            for now in [10, 100] {
                let set: HashSet<String> = idx
                    .authorized(&ids, now)
                    .iter()
                    .map(|e| e.id.clone())
                    .collect();
                for i in 0..n {
                    let eid = format!("e{i}");
                    assert_eq!(
                        idx.authorizes(&ids, &eid, now).is_some(),
                        set.contains(&eid),
                        "round {round}, entry {eid}, now {now}"
                    );
                }
            }
        }
    }

    #[test]
    fn reserved_ids_are_never_servable() {
        // An entry for the server's ID (or an agent's) that predates the API check is never
        // issued, by the set or by the upward walk.
        let agent = "spiffe://td/writ/agent/x509pop/abc";
        let idx = EntryIndex::new(
            vec![
                entry("srv", "spiffe://td/writ/server/x", agent, &["unix:uid:1"]),
                entry(
                    "ag",
                    "spiffe://td/writ/agent/join_token/t",
                    agent,
                    &["unix:uid:1"],
                ),
                entry("ok", "spiffe://td/web", agent, &["unix:uid:1"]),
            ],
            1,
        );
        let ids = [id(agent)];
        let set: Vec<String> = idx
            .authorized(&ids, 0)
            .iter()
            .map(|e| e.id.clone())
            .collect();
        assert_eq!(set, ["ok"]);
        assert!(idx.authorizes(&ids, "srv", 0).is_none());
        assert!(idx.authorizes(&ids, "ag", 0).is_none());
    }

    #[test]
    fn apply_keeps_lookups_in_step() {
        let agent = "spiffe://td/writ/agent/x509pop/abc";
        let mut idx = EntryIndex::new(vec![], 0);
        let e = entry("e1", "spiffe://td/web", agent, &["unix:uid:1"]);
        idx.apply(&Change {
            revision: 1,
            kind: ChangeKind::Created,
            entry: e.clone(),
            previous: None,
            at: 0,
        });
        assert_eq!(idx.authorized(&[id(agent)], 0).len(), 1);
        assert!(idx.authorizes(&[id(agent)], "e1", 0).is_some());
        let mut moved = e.clone();
        moved.parent_id = id("spiffe://td/elsewhere");
        let old = idx.apply(&Change {
            revision: 2,
            kind: ChangeKind::Updated,
            entry: moved.clone(),
            previous: None,
            at: 0,
        });
        assert_eq!(old.unwrap().parent_id, id(agent));
        assert!(idx.authorized(&[id(agent)], 0).is_empty());
        assert!(idx.authorizes(&[id(agent)], "e1", 0).is_none());
        idx.apply(&Change {
            revision: 3,
            kind: ChangeKind::Deleted,
            entry: moved,
            previous: None,
            at: 0,
        });
        assert_eq!(idx.len(), 0);
        assert!(idx.by_parent.is_empty() && idx.by_spiffe.is_empty());
        assert_eq!(idx.revision(), 3);
    }
}
