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
    /// Serial number of the leaf, lowercase hex (as the server's revocation list names it).
    pub serial: String,
    /// The leaf's authority key identifier (hex): which CA signed it, for taints.
    pub issuer_key_id: String,
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
    /// Entries by ID (changed only through the methods below, which keep the lookups in step).
    entries: HashMap<String, Entry>,
    /// Entry IDs by the entry's smallest selector: an entry can only match a workload that has
    /// all its selectors, so looking up the workload's selectors finds every candidate, in time
    /// that follows the workload's selectors and not the agent's entries.
    by_selector: HashMap<Selector, HashSet<String>>,
    /// Entries without selectors (candidates for every workload).
    unselected: HashSet<String>,
    /// How many entries have each SPIFFE ID (an entry parented to one is nested, not servable).
    spiffe_ids: HashMap<SpiffeId, usize>,
    /// How many entries use each selector kind (`unix:sha256`, ...): attestors skip expensive
    /// selectors (hashing a binary) that no entry asks for.
    kinds: HashMap<String, usize>,
    /// SVIDs by entry ID.
    pub svids: HashMap<String, CachedSvid>,
    /// Own trust domain bundle.
    pub own_bundle: Bundle,
    /// Federated bundles.
    pub federated: Vec<Bundle>,
    /// The server CA's current CRL (DER), served in the Workload API's `crl` fields.
    pub crl: Vec<u8>,
    /// Serials the server revoked (not yet expired): never served, dropped when they arrive.
    pub revoked_serials: HashSet<String>,
    /// JWT-SVID `jti`s the server revoked, with their expiry: `ValidateJWTSVID` refuses them.
    pub revoked_jwts: HashMap<String, i64>,
    /// Subject key identifiers of tainted CAs: SVIDs they signed are re-signed at once.
    pub tainted_x509: HashSet<String>,
    /// kids of tainted JWT keys.
    pub tainted_jwt: HashSet<String>,
}

impl Cache {
    /// An empty cache trusting `own_bundle`.
    pub fn new(own_bundle: Bundle) -> Self {
        Cache {
            revision: 0,
            synced: false,
            entries: HashMap::new(),
            by_selector: HashMap::new(),
            unselected: HashSet::new(),
            spiffe_ids: HashMap::new(),
            kinds: HashMap::new(),
            svids: HashMap::new(),
            own_bundle,
            federated: Vec::new(),
            crl: Vec::new(),
            revoked_serials: HashSet::new(),
            revoked_jwts: HashMap::new(),
            tainted_x509: HashSet::new(),
            tainted_jwt: HashSet::new(),
        }
    }

    /// Installs the tainted authorities: every SVID a tainted CA signed becomes due within
    /// `jitter(life)` seconds (so a fleet does not come back at one instant). Returns how many
    /// SVIDs were made due.
    pub fn apply_taints(
        &mut self,
        x509: HashSet<String>,
        jwt: HashSet<String>,
        now: i64,
        mut jitter: impl FnMut(i64) -> i64,
    ) -> usize {
        let mut due = 0;
        for s in self.svids.values_mut() {
            if x509.contains(&s.issuer_key_id) && s.rotate_at > now {
                let life = (s.expires_at - now).max(1);
                s.rotate_at = now + jitter(life);
                due += 1;
            }
        }
        self.tainted_x509 = x509;
        self.tainted_jwt = jwt;
        due
    }

    /// Installs the server's revocation state; SVIDs with a revoked serial are dropped at once
    /// (the signer then makes new ones where the entry still stands). Returns whether anything
    /// workloads can see changed.
    pub fn apply_revocations(
        &mut self,
        crl: Vec<u8>,
        serials: HashSet<String>,
        jwts: HashMap<String, i64>,
    ) -> bool {
        let before = self.svids.len();
        self.svids.retain(|_, s| !serials.contains(&s.serial));
        let changed = self.svids.len() != before || self.crl != crl;
        self.crl = crl;
        self.revoked_serials = serials;
        self.revoked_jwts = jwts;
        changed
    }

    /// Entries by ID.
    pub fn entries(&self) -> &HashMap<String, Entry> {
        &self.entries
    }

    /// Replaces every entry (a snapshot).
    pub fn replace_entries(&mut self, entries: HashMap<String, Entry>) {
        self.entries.clear();
        self.by_selector.clear();
        self.unselected.clear();
        self.spiffe_ids.clear();
        self.kinds.clear();
        for (_, e) in entries {
            self.upsert_entry(e);
        }
    }

    /// Adds or replaces one entry.
    pub fn upsert_entry(&mut self, e: Entry) {
        self.remove_entry(&e.id);
        match e.selectors.iter().min() {
            Some(s) => {
                self.by_selector
                    .entry(s.clone())
                    .or_default()
                    .insert(e.id.clone());
            }
            None => {
                self.unselected.insert(e.id.clone());
            }
        }
        *self.spiffe_ids.entry(e.spiffe_id.clone()).or_default() += 1;
        for k in selector_kinds(&e) {
            *self.kinds.entry(k).or_default() += 1;
        }
        self.entries.insert(e.id.clone(), e);
    }

    /// Removes one entry, if present.
    pub fn remove_entry(&mut self, id: &str) {
        let Some(e) = self.entries.remove(id) else {
            return;
        };
        match e.selectors.iter().min() {
            Some(s) => {
                if let Some(set) = self.by_selector.get_mut(s) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_selector.remove(s);
                    }
                }
            }
            None => {
                self.unselected.remove(id);
            }
        }
        if let Some(n) = self.spiffe_ids.get_mut(&e.spiffe_id) {
            *n -= 1;
            if *n == 0 {
                self.spiffe_ids.remove(&e.spiffe_id);
            }
        }
        for k in selector_kinds(&e) {
            if let Some(n) = self.kinds.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.kinds.remove(&k);
                }
            }
        }
    }

    /// Whether any entry has a selector of this kind (`unix:sha256` for `unix:sha256:<hex>`).
    pub fn uses_selector_kind(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    fn is_servable(&self, e: &Entry, now: i64) -> bool {
        !e.is_expired(now) && !self.spiffe_ids.contains_key(&e.parent_id)
    }

    /// Entries served to workloads: those whose parent is not another entry in the set (entries
    /// nested under a workload entry are for a downstream agent running as that workload).
    pub fn servable(&self, now: i64) -> Vec<&Entry> {
        self.entries
            .values()
            .filter(|e| self.is_servable(e, now))
            .collect()
    }

    /// The entries matching a workload's selectors, in a stable order (by SPIFFE ID, then ID):
    /// the first is the default identity.
    pub fn matching(&self, selectors: &[Selector], now: i64) -> Vec<&Entry> {
        let mut m: Vec<&Entry> = selectors
            .iter()
            .filter_map(|s| self.by_selector.get(s))
            .flatten()
            .chain(&self.unselected)
            .filter_map(|id| self.entries.get(id))
            .filter(|e| self.is_servable(e, now) && is_subset(&e.selectors, selectors))
            .collect();
        m.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then(a.id.cmp(&b.id)));
        // A workload's selector list may repeat a selector.
        m.dedup_by(|a, b| a.id == b.id);
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

/// The distinct kinds (`type:first-part-of-value`) of an entry's selectors.
fn selector_kinds(e: &Entry) -> HashSet<String> {
    e.selectors
        .iter()
        .map(|s| {
            let v = s.value();
            let head = v.split_once(':').map_or(v, |(h, _)| h);
            format!("{}:{head}", s.kind())
        })
        .collect()
}

/// The serial of a DER certificate as lowercase hex (empty if it does not parse).
pub fn leaf_serial(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .map(|(_, c)| hex::encode(c.raw_serial()))
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use writ_core::TrustDomain;

    fn entry(i: u64, spiffe: &str, parent: &str, sels: &[String]) -> Entry {
        Entry {
            id: format!("e{i}"),
            expires_at: if i % 7 == 0 { Some(50) } else { None },
            revision: i,
            ..Entry::new(
                SpiffeId::parse(spiffe).unwrap(),
                SpiffeId::parse(parent).unwrap(),
                sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            )
        }
    }

    /// The definition: servable entries all of whose selectors the workload has.
    fn brute<'a>(c: &'a Cache, ws: &[Selector], now: i64) -> Vec<&'a str> {
        let ids: HashSet<&SpiffeId> = c.entries.values().map(|e| &e.spiffe_id).collect();
        let mut m: Vec<&Entry> = c
            .entries
            .values()
            .filter(|e| !e.is_expired(now) && !ids.contains(&e.parent_id))
            .filter(|e| is_subset(&e.selectors, ws))
            .collect();
        m.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then(a.id.cmp(&b.id)));
        m.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn selector_lookup_agrees_with_the_definition() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let td = TrustDomain::new("td").unwrap();
        let mut c = Cache::new(Bundle::new(td));
        let pool: Vec<String> = (0..6).map(|i| format!("unix:uid:{i}")).collect();
        for step in 0..3000u64 {
            let i = rnd(60);
            if rnd(4) == 0 {
                c.remove_entry(&format!("e{i}"));
            } else {
                let sels: Vec<String> =
                    (0..rnd(3)).map(|_| pool[rnd(6) as usize].clone()).collect();
                let parent = if rnd(5) == 0 {
                    format!("spiffe://td/w/{}", rnd(60))
                } else {
                    "spiffe://td/agent".to_owned()
                };
                c.upsert_entry(entry(
                    i,
                    &format!("spiffe://td/w/{}", rnd(60)),
                    &parent,
                    &sels,
                ));
            }
            let ws: Vec<Selector> = (0..rnd(5))
                .map(|_| Selector::parse(&pool[rnd(6) as usize]).unwrap())
                .collect();
            for now in [10, 100] {
                let got: Vec<&str> = c.matching(&ws, now).iter().map(|e| e.id.as_str()).collect();
                assert_eq!(got, brute(&c, &ws, now), "step {step}");
            }
        }
        let all: HashMap<String, Entry> = c.entries.clone();
        c.replace_entries(all.clone());
        assert_eq!(c.entries, all);
        c.replace_entries(HashMap::new());
        assert!(c.by_selector.is_empty() && c.unselected.is_empty() && c.spiffe_ids.is_empty());
    }
}
