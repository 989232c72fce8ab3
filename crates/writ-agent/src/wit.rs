//! WIT-SVIDs for workloads: one per entry, with a key made here for it (the private key goes
//! to the workload as a JWK, the public point to the server for `cnf.jwk`), re-minted with a
//! fresh key at half its life and when the entry changes.
//!
//! Minting is asynchronous and never done on a Workload API stream: a stream asks
//! ([`WitMinter::want`]), shows what is cached, and is woken by [`WorkloadView::notify`] when a
//! new WIT-SVID arrives. One mint per entry is in flight at a time; a failed mint is retried by
//! the refresher after [`RETRY`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use writ_core::Entry;
use writ_proto::v1 as pb;

use crate::view::WorkloadView;

/// How often the refresher looks for WIT-SVIDs past half their life.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How long after a failed mint the entry is tried again.
const RETRY: i64 = 5;
/// How long one mint may take on the server.
const MINT_DEADLINE: Duration = Duration::from_secs(10);

/// One cached WIT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedWit {
    /// The entry's revision it was minted for.
    pub(crate) revision: u64,
    /// The token.
    pub(crate) token: String,
    /// The private key, as a JWK (JSON).
    pub(crate) key_jwk: String,
    /// When it was minted and when it expires (unix seconds).
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
}

impl CachedWit {
    fn usable(&self, now: i64) -> bool {
        self.expires_at > now
    }

    fn fresh(&self, e: &Entry, now: i64) -> bool {
        self.revision == e.revision && now < self.issued_at + (self.expires_at - self.issued_at) / 2
    }
}

/// The WIT-SVID cache and its minting.
#[derive(Debug, Default)]
pub(crate) struct WitMinter {
    cache: Mutex<HashMap<String, CachedWit>>,
    inflight: Mutex<HashSet<String>>,
    failed: Mutex<HashMap<String, i64>>,
    refresher: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WitMinter {
    /// The cached WIT-SVID for `e` if still valid; asks for a new one when there is none, it is
    /// past half its life, or the entry changed.
    pub(crate) fn want(&self, view: &Arc<WorkloadView>, e: &Entry) -> Option<CachedWit> {
        let now = writ_core::now_unix();
        let cached = lock(&self.cache).get(&e.id).cloned();
        if !cached.as_ref().is_some_and(|c| c.fresh(e, now)) {
            self.start(view, e.clone());
        }
        if !self.refresher.swap(true, Ordering::Relaxed) {
            tokio::spawn(refresh_loop(Arc::downgrade(view)));
        }
        cached.filter(|c| c.usable(now))
    }

    /// Starts a mint for `e` unless one is in flight or it failed a moment ago.
    fn start(&self, view: &Arc<WorkloadView>, e: Entry) {
        let now = writ_core::now_unix();
        if lock(&self.failed)
            .get(&e.id)
            .is_some_and(|t| now < t + RETRY)
        {
            return;
        }
        if !lock(&self.inflight).insert(e.id.clone()) {
            return;
        }
        let view = view.clone();
        tokio::spawn(async move {
            let r = mint(&view, &e).await;
            let w = &view.wit;
            lock(&w.inflight).remove(&e.id);
            match r {
                Ok(c) => {
                    lock(&w.failed).remove(&e.id);
                    lock(&w.cache).insert(e.id.clone(), c);
                    view.notify();
                }
                Err(s) => {
                    tracing::warn!(entry = %e.id, error = %s.message(), "WIT-SVID not minted");
                    lock(&w.failed).insert(e.id.clone(), writ_core::now_unix());
                }
            }
        });
    }
}

/// Makes a key and has the server sign a WIT-SVID for it.
async fn mint(view: &WorkloadView, e: &Entry) -> Result<CachedWit, tonic::Status> {
    let internal = |e: writ_ca::CaError| tonic::Status::internal(e.to_string());
    let key =
        tokio::task::spawn_blocking(|| writ_ca::PrivateKey::generate(writ_ca::KeyType::EcP256))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(internal)?;
    let (mut node, gone) = view
        .jwt
        .session()
        .ok_or_else(|| tonic::Status::unavailable("agent is not connected to the server"))?;
    let call = node.mint_wit(pb::MintWitRequest {
        entry_id: e.id.clone(),
        public_key: key.public_point().map_err(internal)?,
    });
    let r = tokio::time::timeout(MINT_DEADLINE, call)
        .await
        .map_err(|_| tonic::Status::unavailable("the server did not answer"))?
        .inspect_err(|s| gone.check("MintWit", s))?
        .into_inner();
    Ok(CachedWit {
        revision: e.revision,
        token: r.token,
        key_jwk: writ_ca::wit::private_jwk(&key).map_err(internal)?,
        issued_at: writ_core::now_unix(),
        expires_at: r.expires_at,
    })
}

/// Re-mints WIT-SVIDs past half their life, and forgets those of entries the agent no longer
/// holds. Ends with the view.
async fn refresh_loop(view: Weak<WorkloadView>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(view) = view.upgrade() else { return };
        let now = writ_core::now_unix();
        let stale: Vec<Entry> = {
            // Look up only the entries that have a WIT-SVID (not a copy of every entry), and
            // never hold both locks at once.
            let ids: HashSet<String> = lock(&view.wit.cache).keys().cloned().collect();
            let held: HashMap<String, Arc<Entry>> = {
                let c = view.read();
                ids.iter()
                    .filter_map(|id| c.entry(id).map(|e| (id.clone(), e.clone())))
                    .collect()
            };
            let mut cache = lock(&view.wit.cache);
            // Forget what was checked and found gone; a WIT-SVID minted meanwhile stays.
            cache.retain(|id, _| held.contains_key(id) || !ids.contains(id));
            cache
                .iter()
                .filter_map(|(id, c)| held.get(id).filter(|e| !c.fresh(e, now)))
                .map(|e| (**e).clone())
                .collect()
        };
        for e in stale {
            view.wit.start(&view, e);
        }
    }
}
