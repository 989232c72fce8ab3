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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use writ_core::{AttestedNode, Entry, Selector, SpiffeId};
use writ_store::{Change, ChangeKind};

/// Entries by ID with the lookups authorisation needs.
#[derive(Debug, Default)]
pub struct EntryIndex {
    revision: u64,
    by_id: HashMap<String, Arc<Entry>>,
    by_parent: HashMap<SpiffeId, HashSet<String>>,
    alias_by_selector: HashMap<Selector, HashSet<String>>,
}

impl EntryIndex {
    /// Builds the index from all entries as of `revision`.
    pub fn new(entries: Vec<Entry>, revision: u64) -> Self {
        let mut idx = EntryIndex {
            revision,
            ..Default::default()
        };
        for e in entries {
            idx.insert(Arc::new(e));
        }
        idx
    }

    /// The revision the index reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.by_id.get(id)
    }

    fn insert(&mut self, e: Arc<Entry>) {
        self.by_parent
            .entry(e.parent_id.clone())
            .or_default()
            .insert(e.id.clone());
        if e.is_node_alias() {
            for s in &e.selectors {
                self.alias_by_selector
                    .entry(s.clone())
                    .or_default()
                    .insert(e.id.clone());
            }
        }
        self.by_id.insert(e.id.clone(), e);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Entry>> {
        let e = self.by_id.remove(id)?;
        if let Some(set) = self.by_parent.get_mut(&e.parent_id) {
            set.remove(id);
            if set.is_empty() {
                self.by_parent.remove(&e.parent_id);
            }
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
    pub fn apply(&mut self, c: &Change) -> Option<Arc<Entry>> {
        let old = self.remove(&c.entry.id);
        if c.kind != ChangeKind::Deleted {
            self.insert(Arc::new(c.entry.clone()));
        }
        self.revision = self.revision.max(c.revision);
        old
    }

    /// The identities an agent acts as: its ID, aliases and matching node alias entries.
    pub fn identities(&self, node: &AttestedNode, now: i64) -> Vec<SpiffeId> {
        let mut ids = vec![node.spiffe_id.clone()];
        ids.extend(node.aliases.iter().cloned());
        let mut seen = HashSet::new();
        for s in &node.selectors {
            for id in self.alias_by_selector.get(s).into_iter().flatten() {
                if !seen.insert(id) {
                    continue;
                }
                if let Some(e) = self.by_id.get(id) {
                    if !e.is_expired(now)
                        && writ_core::selector::is_subset(&e.selectors, &node.selectors)
                    {
                        ids.push(e.spiffe_id.clone());
                    }
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Every unexpired entry reachable from `identities` through parent links.
    pub fn authorized(&self, identities: &[SpiffeId], now: i64) -> Vec<Arc<Entry>> {
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
            for eid in self.by_parent.get(parent).into_iter().flatten() {
                let Some(e) = self.by_id.get(eid) else {
                    continue;
                };
                if e.is_expired(now) || e.is_node_alias() || !seen_entries.insert(eid) {
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

    /// Whether a change to `entry` could alter the authorised set of an agent whose identities
    /// and authorised SPIFFE IDs are `ids` and whose entries are `entry_ids`.
    pub fn touches<V>(
        entry: &Entry,
        ids: &HashSet<SpiffeId>,
        entry_ids: &HashMap<String, V>,
    ) -> bool {
        entry.is_node_alias() || entry_ids.contains_key(&entry.id) || ids.contains(&entry.parent_id)
    }
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
            spiffe_id: id(spiffe),
            parent_id: id(parent),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: vec![],
            hint: String::new(),
            admin: false,
            downstream: false,
            federates_with: vec![],
            expires_at: None,
            owner: String::new(),
            purpose: String::new(),
            created_at: 0,
            revision: 1,
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
        idx.apply(&Change {
            revision: 3,
            kind: ChangeKind::Deleted,
            entry: moved,
            previous: None,
            at: 0,
        });
        assert!(idx.is_empty());
        assert_eq!(idx.revision(), 3);
    }
}
