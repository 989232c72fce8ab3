//! Several servers on one shared store (PostgreSQL): how this server learns what the others
//! committed and feeds it into the same flows as its own changes.
//!
//! - **Entries**: the revision log is the record. [`ServerState::catch_up`] applies every change
//!   after the index's revision, in order, to the index and the sync streams. Own writes go
//!   through it too when the store is shared (see `registry`), so a change another server
//!   committed just before ours is never skipped.
//! - **Nodes**: a ban or eviction on any server ends that agent's streams here as well (the
//!   node record is read on every call, so new calls are refused without a notice; after
//!   notices may have been lost, every stream re-reads its node record).
//! - **Bundles**: the own bundle is the union of every server's authority share; a share or a
//!   bundle changed elsewhere is re-read and published. Federated bundles are re-read.
//! - **Revocations**: the stored list is merged into ours and re-published (and written back
//!   when two servers' revocations crossed, so none is lost).
//!
//! Invariant: notices are hints. The loop also catches up on a timer and after every
//! reconnect ([`Notice::Resync`]), so a lost notification delays a change, never loses it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use writ_core::{Bundle, JwtAuthority};
use writ_store::{Notice, StoreError};

use crate::index::EntryIndex;
use crate::state::{unpoison, Event, ServerState};

/// How often a server looks at the revision log without a notice.
const POLL: Duration = Duration::from_secs(5);
/// Changes read per round trip while catching up.
const BATCH: usize = 1000;

impl ServerState {
    /// Applies every committed entry change after the index's revision. The caller holds
    /// `write_lock` (so changes are applied and broadcast once, in revision order).
    pub(crate) fn catch_up_locked(&self) -> Result<(), StoreError> {
        loop {
            let after = self.index.read().unwrap_or_else(unpoison).revision();
            let changes = match self.store.changes_since(after, BATCH) {
                Ok(c) => c,
                Err(StoreError::RevisionCompacted { .. }) => {
                    // Too far behind for the log: rebuild from the entries, then make every
                    // stream compute its agent's set again.
                    // The revision before the listing (see `run`): the loop then replays
                    // whatever was committed meanwhile.
                    let revision = self.store.revision()?;
                    let fresh = EntryIndex::load(self.store.as_ref(), revision)?;
                    *self.index.write().unwrap_or_else(unpoison) = fresh;
                    let _ = self.events.send(Event::PolicyChanged);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let n = changes.len();
            for c in changes {
                self.publish(c);
            }
            if n < BATCH {
                return Ok(());
            }
        }
    }

    /// [`ServerState::catch_up_locked`], taking the write lock.
    pub(crate) async fn catch_up(&self) -> Result<(), StoreError> {
        let _g = self.write_lock.lock().await;
        self.catch_up_locked()
    }

    /// A node record changed on some server: end its streams here if it is gone or banned.
    fn node_changed(&self, id: &str) -> Result<(), StoreError> {
        let Ok(sid) = writ_core::SpiffeId::parse(id) else {
            return Ok(());
        };
        match self.store.get_node(&sid)? {
            Some(n) if !n.banned => {}
            _ => {
                let _ = self.events.send(Event::NodeGone(sid));
            }
        }
        Ok(())
    }

    /// Everything a notice may have been about, for [`Notice::Resync`] and the timer.
    async fn resync(&self) -> Result<(), StoreError> {
        let _ = self.events.send(Event::CheckNodes);
        self.catch_up().await?;
        self.refresh_own_bundle()?;
        self.reload_federated()?;
        if let Err(e) = self.merge_stored_revocations().await {
            tracing::warn!(error = %e, "could not merge the stored revocation list");
        }
        Ok(())
    }

    async fn on_notice(&self, n: Notice) -> Result<(), StoreError> {
        match n {
            Notice::Entries => self.catch_up().await,
            Notice::Node(id) => self.node_changed(&id),
            Notice::Bundle(td) if td == self.cfg.trust_domain.as_str() => self.refresh_own_bundle(),
            Notice::Bundle(_) => self.reload_federated(),
            Notice::Authorities => self.refresh_own_bundle(),
            Notice::Revocations => {
                if let Err(e) = self.merge_stored_revocations().await {
                    tracing::warn!(error = %e, "could not merge the stored revocation list");
                }
                Ok(())
            }
            // Relationships are fetched by the server they were made on; the bundles they
            // fetch arrive here as bundle notices.
            Notice::Federations => Ok(()),
            Notice::Resync => self.resync().await,
        }
    }
}

/// Follows the other servers' changes until the server stops (shared stores only).
pub(crate) async fn follow_loop(st: Arc<ServerState>) {
    let Some(mut notices) = st.store.subscribe() else {
        return;
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            n = notices.recv() => match n {
                Ok(n) => st.on_notice(n).await,
                // Too many at once: what they said is in the store.
                Err(RecvError::Lagged(_)) => st.resync().await,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => st.catch_up().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not apply another server's change; retrying on the next notice or in 5 s");
        }
    }
}

/// The own bundle from every server's share: X.509 roots by content, JWT keys by `kid`, in
/// share order (so every server computes the same bundle from the same shares). A share whose
/// X.509 roots have all expired is a server that is gone (a live server keeps a current CA):
/// it is left out, JWT keys included.
pub(crate) fn union_of(td: &writ_core::TrustDomain, shares: Vec<Bundle>, now: i64) -> Bundle {
    let mut out = Bundle::new(td.clone());
    for s in shares {
        let live: Vec<Vec<u8>> = s
            .x509_authorities
            .into_iter()
            .filter(|der| not_after(der).is_none_or(|t| t > now))
            .collect();
        if live.is_empty() {
            continue;
        }
        for der in live {
            if !out.x509_authorities.contains(&der) {
                out.x509_authorities.push(der);
            }
        }
        for k in s.jwt_authorities {
            if !out
                .jwt_authorities
                .iter()
                .any(|j: &JwtAuthority| j.key_id == k.key_id)
            {
                out.jwt_authorities.push(k);
            }
        }
    }
    out
}

/// A certificate's `notAfter` (unix seconds), if it parses.
fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}
