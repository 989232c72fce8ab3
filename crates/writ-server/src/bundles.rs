//! The bundle flow: the own bundle follows the CA journal (a new sequence number on every
//! change), federated bundles come from operators, and both are published to bundle watchers and
//! to the TLS verifier at once.
//!
//! Invariant: the verifier trusts exactly the bundles watchers are told about.

use tokio::sync::{broadcast, watch};
use writ_core::{Bundle, SpiffeId, TrustDomain};
use writ_store::StoreError;

use crate::state::{unpoison, Event, ServerState, StreamEnd};

/// Why a bundle change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BundleError {
    /// The own trust domain cannot be federated.
    #[error("cannot set the server's own trust domain as a federated bundle")]
    OwnAsFederated,
    /// The own bundle follows the CA; it cannot be deleted.
    #[error("cannot delete the server's own bundle")]
    DeleteOwn,
    /// A bundle without X.509 or JWT authorities.
    #[error("bundle has no authorities")]
    NoAuthorities,
    /// The datastore refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The own bundle and the federated ones.
#[derive(Debug, Clone)]
pub struct BundleSet {
    /// The server's trust domain bundle.
    pub own: Bundle,
    /// Federated bundles.
    pub federated: Vec<Bundle>,
    /// The CRL and the revoked serials and `jti`s (see `revoke`).
    pub revocations: std::sync::Arc<crate::revoke::Published>,
    /// Tainted authorities (see `authority`).
    pub tainted: std::sync::Arc<crate::authority::Tainted>,
}

impl ServerState {
    /// Recomputes the own bundle from the CA; stores it with a new sequence if it changed.
    ///
    /// The bundle is the union of every server's authority share (one share on a store of its
    /// own; on a shared store each server has its own CA). The store recomputes it under a lock
    /// across servers with the stored bundle as the base, so servers never write two bundles
    /// of one sequence, and a difference in `refresh_hint` alone (servers configured with
    /// different CA TTLs) never makes them rewrite it back and forth.
    pub(crate) fn refresh_own_bundle(&self) -> Result<(), StoreError> {
        let td = self.cfg.trust_domain.clone();
        let (roots, jwt, ttl) = {
            let ca = self.ca.read().unwrap_or_else(unpoison);
            (ca.x509_roots(), ca.jwt_authorities(), self.cfg.ca_ttl)
        };
        let mut share = Bundle::new(td.clone());
        share.x509_authorities = roots;
        share.jwt_authorities = jwt;
        // Relying parties should look again well within a CA's prepare-to-activate window.
        let hint = Some((ttl / 12).clamp(5, 3600) as u64);
        let shared = self.store.shared();
        let published = self.bundles.borrow().own.clone();
        let now = writ_core::now_unix();
        let in_force = self
            .store
            .update_own_bundle(&share, &mut |shares, stored| {
                let mut next = crate::cluster::union_of(&td, shares, now);
                next.refresh_hint = hint;
                let base = match (shared, stored) {
                    (true, Some(s)) => s.clone(),
                    _ => published.clone(),
                };
                let same =
                    next.same_content(&base) && (shared || next.refresh_hint == base.refresh_hint);
                if same {
                    return None;
                }
                next.sequence = base.sequence.max(published.sequence) + 1;
                Some(next)
            })?;
        if let Some(b) = in_force {
            if b != published {
                self.publish_bundles(Some(b), None);
            }
        }
        Ok(())
    }

    /// Replaces the published bundles (own and/or federated).
    fn publish_bundles(&self, own: Option<Bundle>, federated: Option<Vec<Bundle>>) {
        self.bundles.send_modify(|b| {
            if let Some(o) = own {
                b.own = o;
            }
            if let Some(f) = federated {
                b.federated = f;
            }
        });
        let b = self.bundles.borrow().clone();
        let mut all = vec![b.own];
        all.extend(b.federated);
        self.trust.set(all);
    }

    /// Reloads federated bundles from the store and publishes them.
    pub(crate) fn reload_federated(&self) -> Result<(), StoreError> {
        let td = &self.cfg.trust_domain;
        let fed: Vec<Bundle> = self
            .store
            .list_bundles()?
            .into_iter()
            .filter(|b| &b.trust_domain != td)
            .collect();
        self.publish_bundles(None, Some(fed));
        Ok(())
    }

    /// Stores and publishes a federated bundle. A bundle with new content but a sequence not
    /// above the stored one gets the next sequence, so relying parties see it as newer.
    pub(crate) fn set_federated_bundle(&self, mut b: Bundle) -> Result<Bundle, BundleError> {
        if b.trust_domain == self.cfg.trust_domain {
            return Err(BundleError::OwnAsFederated);
        }
        if b.x509_authorities.is_empty() && b.jwt_authorities.is_empty() {
            return Err(BundleError::NoAuthorities);
        }
        if let Some(old) = self.store.get_bundle(&b.trust_domain)? {
            if b.sequence <= old.sequence && !b.same_content(&old) {
                b.sequence = old.sequence + 1;
            }
        }
        self.store.put_bundle(&b)?;
        self.reload_federated()?;
        tracing::info!(trust_domain = %b.trust_domain, "federated bundle set");
        Ok(b)
    }

    /// Deletes a federated bundle and publishes the rest.
    pub(crate) fn delete_federated_bundle(&self, td: &TrustDomain) -> Result<(), BundleError> {
        if *td == self.cfg.trust_domain {
            return Err(BundleError::DeleteOwn);
        }
        self.store.delete_bundle(td)?;
        self.reload_federated()?;
        Ok(())
    }
}

/// What a bundle watcher follows, subscribed when the call is accepted so that nothing
/// published after that is missed.
pub(crate) struct BundleWatch {
    node: SpiffeId,
    bundles: watch::Receiver<BundleSet>,
    events: broadcast::Receiver<Event>,
    started: bool,
}

impl ServerState {
    /// Subscribes a bundle watcher for agent `node`.
    pub(crate) fn watch_bundles(&self, node: SpiffeId) -> BundleWatch {
        BundleWatch {
            node,
            bundles: self.bundles.subscribe(),
            events: self.events.subscribe(),
            started: false,
        }
    }
}

impl BundleWatch {
    /// The bundles to send next: the current ones at once, then each change; the watch ends
    /// when the agent is evicted or banned or the server stops.
    pub(crate) async fn next(&mut self) -> Result<BundleSet, StreamEnd> {
        if !self.started {
            self.started = true;
            return Ok(self.bundles.borrow_and_update().clone());
        }
        loop {
            tokio::select! {
                r = self.bundles.changed() => {
                    r.map_err(|_| StreamEnd::Shutdown)?;
                    return Ok(self.bundles.borrow_and_update().clone());
                }
                ev = self.events.recv() => match ev {
                    Ok(Event::NodeGone(id)) if id == self.node => return Err(StreamEnd::NodeGone),
                    Ok(Event::Shutdown) | Err(broadcast::error::RecvError::Closed) => {
                        return Err(StreamEnd::Shutdown)
                    }
                    _ => {}
                },
            }
        }
    }
}
