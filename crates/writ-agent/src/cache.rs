//! What the agent holds for workloads: the entries it may serve (kept in step with the server's
//! push stream), an X509-SVID per servable entry (keys made here, never sent anywhere), and the
//! bundles. Every change bumps a generation counter that Workload API streams watch.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use writ_core::{selector::is_subset, Bundle, Entry, EntryById, Selector, SpiffeId};

/// What every SVID one CA signed has in common: the chain above the leaf (the CA's certificate
/// and any upstream ones) and the CA's key ID. Held once and shared (`Cache::issuer`), not
/// copied into each of thousands of SVIDs (~0.5 KiB each).
#[derive(Debug, PartialEq, Eq)]
pub struct Issuer {
    /// The certificates above the leaf, nearest first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The issuing CA's key ID (hex, the leaf's authority key identifier): for taints.
    pub key_id: String,
}

/// An X509-SVID held for an entry.
///
/// The leaf, the private key and the serial live in one exact-size allocation: the cache holds
/// thousands of these for hours, and three separate buffers cost three allocation headers and
/// their rounding (~100 bytes an SVID, measured with `writ-bench agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSvid {
    /// The entry's revision when the SVID was requested (a newer entry revision means re-sign).
    pub entry_revision: u64,
    /// The identity (shares the entry's text).
    pub spiffe_id: SpiffeId,
    /// Leaf certificate (DER), then the PKCS#8 private key, then the serial (hex).
    der: Box<[u8]>,
    leaf_len: u32,
    key_len: u32,
    /// The rest of the chain and the issuing CA's key ID, shared with the CA's other SVIDs.
    pub issuer: Arc<Issuer>,
    /// When it was issued (unix seconds).
    pub issued_at: i64,
    /// NotAfter (unix seconds).
    pub expires_at: i64,
    /// When to rotate: half of the lifetime, minus up to a tenth of it at random, so a fleet
    /// that got SVIDs at the same moment does not come back at the same moment.
    pub rotate_at: i64,
}

/// What a signed SVID is made of, before it is packed into a [`CachedSvid`].
#[derive(Debug)]
pub struct NewSvid<'a> {
    /// See [`CachedSvid::entry_revision`].
    pub entry_revision: u64,
    /// See [`CachedSvid::spiffe_id`].
    pub spiffe_id: SpiffeId,
    /// The leaf certificate (DER).
    pub leaf: &'a [u8],
    /// PKCS#8 DER private key.
    pub key_pkcs8: &'a [u8],
    /// Serial number of the leaf, lowercase hex (as the server's revocation list names it).
    pub serial: &'a str,
    /// See [`CachedSvid::issuer`].
    pub issuer: Arc<Issuer>,
    /// See [`CachedSvid::issued_at`].
    pub issued_at: i64,
    /// See [`CachedSvid::expires_at`].
    pub expires_at: i64,
    /// See [`CachedSvid::rotate_at`].
    pub rotate_at: i64,
}

impl CachedSvid {
    /// Packs a signed SVID.
    pub fn new(n: NewSvid<'_>) -> Self {
        let mut der = Vec::with_capacity(n.leaf.len() + n.key_pkcs8.len() + n.serial.len());
        der.extend_from_slice(n.leaf);
        der.extend_from_slice(n.key_pkcs8);
        der.extend_from_slice(n.serial.as_bytes());
        CachedSvid {
            entry_revision: n.entry_revision,
            spiffe_id: n.spiffe_id,
            der: der.into_boxed_slice(),
            leaf_len: u32::try_from(n.leaf.len()).unwrap_or(u32::MAX),
            key_len: u32::try_from(n.key_pkcs8.len()).unwrap_or(u32::MAX),
            issuer: n.issuer,
            issued_at: n.issued_at,
            expires_at: n.expires_at,
            rotate_at: n.rotate_at,
        }
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        self.der.get(..self.leaf_len as usize).unwrap_or_default()
    }

    /// The PKCS#8 DER private key.
    pub fn key_pkcs8(&self) -> &[u8] {
        let at = self.leaf_len as usize;
        self.der
            .get(at..at + self.key_len as usize)
            .unwrap_or_default()
    }

    /// Serial number of the leaf, lowercase hex (as the server's revocation list names it).
    pub fn serial(&self) -> &str {
        let at = self.leaf_len as usize + self.key_len as usize;
        std::str::from_utf8(self.der.get(at..).unwrap_or_default()).unwrap_or_default()
    }

    /// The chain as the Workload API sends it: DER certificates, leaf first, concatenated.
    pub fn chain_der(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.leaf().len() + self.issuer.chain.iter().map(Vec::len).sum::<usize>(),
        );
        out.extend_from_slice(self.leaf());
        for c in &self.issuer.chain {
            out.extend_from_slice(c);
        }
        out
    }
}

/// The agent's cache.
#[derive(Debug)]
pub struct Cache {
    /// Last entry revision applied.
    pub revision: u64,
    /// Whether a full snapshot has been received (resume is possible).
    pub synced: bool,
    /// Entries by ID (changed only through the methods below, which keep the lookups in step).
    /// Each entry is held once; the lookups point at it.
    entries: HashSet<EntryById>,
    /// Entries by their smallest selector: an entry can only match a workload that has all
    /// its selectors, so looking up the workload's selectors finds every candidate, in time
    /// that follows the workload's selectors and not the agent's entries.
    /// Keyed by the selector's hash (seeded per process, `selector_hash`), not a copy of it:
    /// two selectors sharing a hash only add a candidate that `matching` then rejects (it
    /// checks every candidate's selectors). Most selectors index one entry, held inline.
    by_selector: HashMap<u64, Bucket, foldhash::fast::RandomState>,
    selector_hash: foldhash::fast::RandomState,
    /// Entries without selectors (candidates for every workload).
    unselected: HashSet<EntryById>,
    /// The issuers of the cached SVIDs (a handful: the CAs of the last rotations).
    issuers: Vec<Arc<Issuer>>,
    /// How many entries have each SPIFFE ID (an entry parented to one is nested, not servable).
    spiffe_ids: HashMap<SpiffeId, usize>,
    /// How many entries use each selector kind (`unix:sha256`, ...): attestors skip expensive
    /// selectors (hashing a binary) that no entry asks for.
    kinds: HashMap<String, usize>,
    /// SVIDs by entry ID.
    /// Boxed: the table then holds a pointer, not the whole record, in each of its slots
    /// (hash tables keep a third or more of their slots empty).
    pub svids: HashMap<Box<str>, Box<CachedSvid>>,
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

/// The entries indexed under one selector: one inline (the common case), or a set.
#[derive(Debug)]
enum Bucket {
    One(EntryById),
    Many(HashSet<EntryById>),
}

impl Bucket {
    fn insert(&mut self, e: EntryById) {
        match self {
            Bucket::One(first) if *first == e => *first = e,
            Bucket::One(first) => {
                let first = first.clone();
                *self = Bucket::Many(HashSet::from([first, e]));
            }
            Bucket::Many(set) => {
                set.replace(e);
            }
        }
    }

    /// Removes entry `id`; returns whether the bucket is now empty.
    fn remove(&mut self, id: &str) -> bool {
        match self {
            Bucket::One(e) => e.0.id == id,
            Bucket::Many(set) => {
                set.remove(id);
                set.is_empty()
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &EntryById> {
        let (one, many) = match self {
            Bucket::One(e) => (Some(e), None),
            Bucket::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl Cache {
    /// An empty cache trusting `own_bundle`.
    pub fn new(own_bundle: Bundle) -> Self {
        Cache {
            revision: 0,
            synced: false,
            entries: HashSet::new(),
            by_selector: HashMap::default(),
            selector_hash: foldhash::fast::RandomState::default(),
            unselected: HashSet::new(),
            issuers: Vec::new(),
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
            if x509.contains(&s.issuer.key_id) && s.rotate_at > now {
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
        self.svids.retain(|_, s| !serials.contains(s.serial()));
        let changed = self.svids.len() != before || self.crl != crl;
        self.crl = crl;
        self.revoked_serials = serials;
        self.revoked_jwts = jwts;
        changed
    }

    /// The entry with this ID.
    pub fn entry(&self, id: &str) -> Option<&Arc<Entry>> {
        self.entries.get(id).map(|e| &e.0)
    }

    /// Every entry, in no order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> + '_ {
        self.entries.iter().map(|e| &e.0)
    }

    /// How many entries the agent holds.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The shared [`Issuer`] for an SVID's chain above the leaf: the one already held when the
    /// same CA signed other cached SVIDs, else a new one (issuers no SVID uses are dropped).
    pub fn issuer(&mut self, chain: Vec<Vec<u8>>, key_id: String) -> Arc<Issuer> {
        if let Some(i) = self
            .issuers
            .iter()
            .find(|i| i.key_id == key_id && i.chain == chain)
        {
            return i.clone();
        }
        self.issuers.retain(|i| Arc::strong_count(i) > 1);
        let i = Arc::new(Issuer { chain, key_id });
        self.issuers.push(i.clone());
        i
    }

    /// Replaces every entry (a snapshot; one entry per ID). The entries arrive already in
    /// their final allocation, so a snapshot leaves no large table of copies behind.
    pub fn replace_entries(&mut self, entries: impl IntoIterator<Item = Arc<Entry>>) {
        self.entries.clear();
        self.by_selector.clear();
        self.unselected.clear();
        self.spiffe_ids.clear();
        self.kinds.clear();
        for e in entries {
            self.insert(e);
        }
    }

    /// Adds or replaces one entry.
    pub fn upsert_entry(&mut self, e: Entry) {
        self.insert(Arc::new(e));
    }

    fn insert(&mut self, mut e: Arc<Entry>) {
        self.remove_entry(&e.id);
        // Most entries share a parent (this agent or one of its aliases): share its text.
        if let (Some(p), Some(mine)) = (
            self.entries
                .iter()
                .next()
                .map(|x| &x.0.parent_id)
                .filter(|p| **p == e.parent_id),
            Arc::get_mut(&mut e),
        ) {
            mine.parent_id = p.clone();
        }
        let e = EntryById(e);
        match e.0.selectors.iter().min() {
            Some(s) => {
                let h = self.selector_hash.hash_one(s);
                match self.by_selector.get_mut(&h) {
                    Some(b) => b.insert(e.clone()),
                    None => {
                        self.by_selector.insert(h, Bucket::One(e.clone()));
                    }
                }
            }
            None => {
                self.unselected.insert(e.clone());
            }
        }
        *self.spiffe_ids.entry(e.0.spiffe_id.clone()).or_default() += 1;
        for k in selector_kinds(&e.0) {
            *self.kinds.entry(k).or_default() += 1;
        }
        self.entries.insert(e);
    }

    /// Removes one entry, if present.
    pub fn remove_entry(&mut self, id: &str) {
        let Some(EntryById(e)) = self.entries.take(id) else {
            return;
        };
        match e.selectors.iter().min() {
            Some(s) => {
                let h = self.selector_hash.hash_one(s);
                if let Some(b) = self.by_selector.get_mut(&h) {
                    if b.remove(id) {
                        self.by_selector.remove(&h);
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
        self.servable_shared(now).map(|e| &**e).collect()
    }

    /// [`Cache::servable`], as the shared entries themselves (cloning one is a pointer copy).
    pub fn servable_shared(&self, now: i64) -> impl Iterator<Item = &Arc<Entry>> + '_ {
        self.entries
            .iter()
            .map(|e| &e.0)
            .filter(move |e| self.is_servable(e, now))
    }

    /// The entries matching a workload's selectors, in a stable order (by SPIFFE ID, then ID):
    /// the first is the default identity.
    pub fn matching(&self, selectors: &[Selector], now: i64) -> Vec<&Entry> {
        let mut m: Vec<&Entry> = selectors
            .iter()
            .filter_map(|s| self.by_selector.get(&self.selector_hash.hash_one(s)))
            .flat_map(Bucket::iter)
            .chain(&self.unselected)
            .map(|e| &*e.0)
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
        self.svids.retain(|id, _| entries.contains(&**id));
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
        let ids: HashSet<&SpiffeId> = c.entries().map(|e| &e.spiffe_id).collect();
        let mut m: Vec<&Entry> = c
            .entries()
            .map(|e| &**e)
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
        let all: HashMap<String, Entry> =
            c.entries().map(|e| (e.id.clone(), (**e).clone())).collect();
        c.replace_entries(all.values().cloned().map(Arc::new));
        let again: HashMap<String, Entry> =
            c.entries().map(|e| (e.id.clone(), (**e).clone())).collect();
        assert_eq!(again, all);
        c.replace_entries(Vec::new());
        assert!(c.by_selector.is_empty() && c.unselected.is_empty() && c.spiffe_ids.is_empty());
    }
}
