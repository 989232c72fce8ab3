//! Entries and bundles from the server into the cache: the sync stream (a snapshot in pages,
//! then each change as it commits) and the bundle watch stream.
//!
//! Invariants: a snapshot replaces the cache only when its last page has arrived, so workloads
//! never see half a snapshot; every change is announced through the [`WorkloadView`] and wakes
//! the signer; any change to an entry drops its cached JWT-SVIDs (a renamed entry must not
//! serve a token with the old `sub`); malformed entries and bundles from the server are logged
//! and skipped, never applied.
//!
//! [`WorkloadView`]: crate::view::WorkloadView

use std::collections::HashSet;
use std::sync::Arc;

use writ_core::{Bundle, EntryById, TrustDomain};
use writ_proto::v1 as pb;

use crate::state::AgentState;

/// Snapshot pages received so far: the snapshot's revision and its entries.
pub(crate) type PendingSnapshot = Option<(u64, HashSet<EntryById>)>;

impl AgentState {
    /// Applies one message of the sync stream.
    pub(crate) fn apply_sync(&self, m: pb::SyncEntriesResponse, pending: &mut PendingSnapshot) {
        use pb::sync_entries_response::Event;
        let conv = |e: &pb::Entry| match writ_proto::convert::entry_from_pb(e) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::warn!(entry = %e.id, error = %err, "ignoring malformed entry from server");
                None
            }
        };
        match m.event {
            Some(Event::Snapshot(page)) => {
                if page.unchanged {
                    self.view.update(|c| {
                        c.revision = page.revision;
                        c.synced = true;
                        ((), false)
                    });
                    return;
                }
                let (_, set) = pending.get_or_insert_with(|| (page.revision, HashSet::new()));
                for e in page.entries.iter().filter_map(conv) {
                    set.replace(EntryById(Arc::new(e)));
                }
                if page.last {
                    let (_, set) = pending.take().unwrap_or_default();
                    self.view.update(|c| {
                        c.replace_entries(set.into_iter().map(|e| e.0));
                        c.revision = page.revision;
                        c.synced = true;
                        c.prune();
                        tracing::info!(
                            entries = c.entry_count(),
                            revision = c.revision,
                            "entry snapshot received"
                        );
                        self.view.jwt.retain(|k| {
                            c.entry(&k.entry_id)
                                .is_some_and(|e| e.spiffe_id == k.spiffe_id)
                        });
                        ((), true)
                    });
                    self.sign_now.notify_one();
                }
            }
            Some(Event::Change(ch)) => {
                self.view.update(|c| {
                    for e in ch.upserts.iter().filter_map(conv) {
                        c.upsert_entry(e);
                    }
                    for id in &ch.removed_ids {
                        c.remove_entry(id);
                    }
                    c.revision = c.revision.max(ch.revision);
                    c.prune();
                    ((), true)
                });
                tracing::debug!(
                    upserts = ch.upserts.len(),
                    removed = ch.removed_ids.len(),
                    revision = ch.revision,
                    "entries changed"
                );
                let changed: HashSet<&str> = ch
                    .upserts
                    .iter()
                    .map(|e| e.id.as_str())
                    .chain(ch.removed_ids.iter().map(String::as_str))
                    .collect();
                if !changed.is_empty() {
                    self.view
                        .jwt
                        .retain(|k| !changed.contains(k.entry_id.as_str()));
                }
                self.sign_now.notify_one();
            }
            None => {}
        }
    }

    /// Applies one message of the bundle watch stream.
    pub(crate) fn apply_bundles(&self, m: pb::WatchBundlesResponse) {
        if let Some(own) = m.own.as_ref() {
            match Bundle::from_json(self.td().clone(), &own.spiffe_bundle_json) {
                Ok(b) if b.trust_domain == *self.td() => self.set_own_bundle(b),
                Ok(_) => tracing::warn!("server sent a bundle for another trust domain as its own"),
                Err(e) => tracing::warn!(error = %e, "ignoring malformed bundle from server"),
            }
        }
        let mut fed = Vec::new();
        for b in &m.federated {
            match TrustDomain::new(&b.trust_domain)
                .map_err(|e| e.to_string())
                .and_then(|td| {
                    Bundle::from_json(td, &b.spiffe_bundle_json).map_err(|e| e.to_string())
                }) {
                Ok(b) => fed.push(b),
                Err(e) => tracing::warn!(error = %e, "ignoring malformed federated bundle"),
            }
        }
        let serials: std::collections::HashSet<String> = m.revoked_serials.into_iter().collect();
        let jwts: std::collections::HashMap<String, i64> = m
            .revoked_jwts
            .into_iter()
            .map(|j| (j.jti, j.expires_at))
            .collect();
        let tainted_x509: std::collections::HashSet<String> = m.tainted_x509.into_iter().collect();
        let tainted_jwt: std::collections::HashSet<String> =
            m.tainted_jwt_kids.into_iter().collect();
        let jwts_changed = {
            let c = self.view.read();
            c.revoked_jwts != jwts || c.tainted_jwt != tainted_jwt
        };
        let now = writ_core::now_unix();
        // A taint makes the SVIDs it concerns due within a few seconds, spread at random.
        let retaint = self.view.update(|c| {
            let n = c.apply_taints(tainted_x509, tainted_jwt, now, |life| {
                self.random_below((life / 10).clamp(1, 5) as u64) as i64
            });
            (n, false)
        });
        if retaint > 0 {
            tracing::warn!(
                svids = retaint,
                "SVIDs signed by a tainted CA are re-signed now"
            );
            self.sign_now.notify_one();
        }
        let (changed, visible) = self.view.update(|c| {
            let changed = c.federated != fed;
            if changed {
                c.federated = fed;
            }
            let revoked = c.apply_revocations(m.crl, serials, jwts);
            ((changed, changed || revoked), changed || revoked)
        });
        if jwts_changed {
            // A revoked token must not be handed out again from the cache.
            self.view.jwt.retain(|_| false);
        }
        if changed {
            self.refresh_trust();
        }
        if visible {
            // Dropped SVIDs of entries that still stand are signed again at once.
            self.sign_now.notify_one();
            tracing::info!("revocations applied");
        }
    }

    /// Installs a new own bundle (persisted, trusted for the server connection, served).
    pub(crate) fn set_own_bundle(&self, b: Bundle) {
        let changed = self.view.update(|c| {
            let changed = !(c.own_bundle.same_content(&b) && c.own_bundle.sequence == b.sequence);
            if changed {
                c.own_bundle = b.clone();
            }
            (changed, changed)
        });
        if changed {
            if let Err(e) = self.store.save_bundle(&b) {
                tracing::warn!(error = %e, "cannot persist bundle");
            }
            self.refresh_trust();
        }
    }

    /// The bundles the server's certificate is checked against: own and federated.
    fn refresh_trust(&self) {
        let c = self.view.read();
        let mut all = vec![c.own_bundle.clone()];
        all.extend(c.federated.iter().cloned());
        self.trust.set(all);
    }
}
