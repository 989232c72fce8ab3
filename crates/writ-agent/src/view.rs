//! [`WorkloadView`]: everything the Workload API reads, and nothing of the session loop.
//!
//! The session loop (sync, signer, bundle follower) writes the cache through
//! [`WorkloadView::update`], which signals every subscriber once the write lock is released;
//! Workload API streams wait on [`WorkloadView::subscribe`] and recompute their answer. Nobody
//! bumps a counter by hand: a change the view does not announce cannot be made.
//!
//! Invariant: a subscriber that wakes after an update sees the cache as that update left it
//! (the signal is sent after the write lock is dropped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use tokio::sync::watch;

use crate::cache::Cache;
use crate::jwt::JwtMinter;

/// The cache as workloads see it, the signal of its changes, and JWT-SVID minting.
#[derive(Debug)]
pub struct WorkloadView {
    cache: RwLock<Cache>,
    changes: watch::Sender<u64>,
    connected: AtomicBool,
    /// Mints JWT-SVIDs for workloads (cache, rate limits, the server connection).
    pub(crate) jwt: JwtMinter,
    /// What workloads received and validated, on its way to the server's audit journal.
    pub(crate) deliveries: std::sync::Arc<crate::deliveries::Deliveries>,
    /// WIT-SVIDs for workloads (cache, minting, refresh).
    pub(crate) wit: crate::wit::WitMinter,
    /// `jti`s of Workload Proof Tokens checked by `ValidateWIT`, until they expire.
    pub(crate) wpt_replay: std::sync::Mutex<writ_ca::wit::ReplayCache>,
}

impl WorkloadView {
    pub(crate) fn new(cache: Cache, deliveries: crate::deliveries::Deliveries) -> Self {
        WorkloadView {
            cache: RwLock::new(cache),
            changes: watch::channel(0).0,
            connected: AtomicBool::new(false),
            jwt: JwtMinter::default(),
            deliveries: std::sync::Arc::new(deliveries),
            wit: crate::wit::WitMinter::default(),
            wpt_replay: std::sync::Mutex::new(writ_ca::wit::ReplayCache::new(100_000)),
        }
    }

    /// Reads the cache.
    pub fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the cache; subscribers are told when `f` returns true.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Cache) -> (R, bool)) -> R {
        let (r, changed) = {
            let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        };
        if changed {
            self.notify();
        }
        r
    }

    /// Tells every subscriber to look again (also used at shutdown, to end streams).
    pub fn notify(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether the agent has a session with its server.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }
}
