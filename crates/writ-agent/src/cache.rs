//! What the agent holds for workloads: the entries it may serve (kept in step with the server's
//! push stream), an X509-SVID per servable entry (keys made here, never sent anywhere), and the
//! bundles. Every change bumps a generation counter that Workload API streams watch.

use std::collections::{HashMap, HashSet};

use writ_core::{selector::is_subset, Bundle, Entry, Selector, SpiffeId};

/// An X509-SVID held for an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSvid {
    /// The entry's revision when the SVID was requested (a newer entry revision means re-sign).
    pub entry_revision: u64,
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// Chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER private key.
    pub key_pkcs8: Vec<u8>,
    /// When it was issued (unix seconds).
    pub issued_at: i64,
    /// NotAfter (unix seconds).
    pub expires_at: i64,
    /// When to rotate: half of the lifetime, minus up to a tenth of it at random, so a fleet
    /// that got SVIDs at the same moment does not come back at the same moment.
    pub rotate_at: i64,
}

/// The agent's cache.
#[derive(Debug)]
pub struct Cache {
    /// Last entry revision applied.
    pub revision: u64,
    /// Whether a full snapshot has been received (resume is possible).
    pub synced: bool,
    /// Entries by ID.
    pub entries: HashMap<String, Entry>,
    /// SVIDs by entry ID.
    pub svids: HashMap<String, CachedSvid>,
    /// Own trust domain bundle.
    pub own_bundle: Bundle,
    /// Federated bundles.
    pub federated: Vec<Bundle>,
}

impl Cache {
    /// An empty cache trusting `own_bundle`.
    pub fn new(own_bundle: Bundle) -> Self {
        Cache {
            revision: 0,
            synced: false,
            entries: HashMap::new(),
            svids: HashMap::new(),
            own_bundle,
            federated: Vec::new(),
        }
    }

    /// Entries served to workloads: those whose parent is not another entry in the set (entries
    /// nested under a workload entry are for a downstream agent running as that workload).
    pub fn servable(&self, now: i64) -> Vec<&Entry> {
        let ids: HashSet<&SpiffeId> = self.entries.values().map(|e| &e.spiffe_id).collect();
        self.entries
            .values()
            .filter(|e| !e.is_expired(now) && !ids.contains(&e.parent_id))
            .collect()
    }

    /// The entries matching a workload's selectors, in a stable order (by SPIFFE ID, then ID):
    /// the first is the default identity.
    pub fn matching(&self, selectors: &[Selector], now: i64) -> Vec<&Entry> {
        let mut m: Vec<&Entry> = self
            .servable(now)
            .into_iter()
            .filter(|e| is_subset(&e.selectors, selectors))
            .collect();
        m.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then(a.id.cmp(&b.id)));
        m
    }

    /// Drops SVIDs whose entries are gone.
    pub fn prune(&mut self) {
        let entries = &self.entries;
        self.svids.retain(|id, _| entries.contains_key(id));
    }

    /// The bundle of a trust domain (own or federated).
    pub fn bundle_for(&self, td: &str) -> Option<&Bundle> {
        if self.own_bundle.trust_domain.as_str() == td {
            return Some(&self.own_bundle);
        }
        self.federated
            .iter()
            .find(|b| b.trust_domain.as_str() == td)
    }
}
