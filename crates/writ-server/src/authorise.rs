//! Authorisation: which entries an agent may have SVIDs for, asked of the entry index.
//!
//! The rule itself lives in [`crate::index`]; this file applies it to a call: before signing
//! (every entry asked for must be authorised), and again after signing, because signing runs
//! without the index lock and an entry can be deleted, changed or withdrawn meanwhile.

use std::sync::Arc;

use writ_core::{AttestedNode, Entry, SpiffeId};
use writ_proto::v1 as pb;

use crate::signing::SignError;
use crate::state::{unpoison, ServerState};

impl ServerState {
    /// The entries `ids` if `node` may have SVIDs for every one of them (in request order), or
    /// the first one it may not. Cost follows the entries asked about, not the agent's set.
    pub(crate) fn authorized_for(
        &self,
        node: &AttestedNode,
        ids: &[&str],
    ) -> Result<Vec<Arc<Entry>>, SignError> {
        let now = writ_core::now_unix();
        let idx = self.index.read().unwrap_or_else(unpoison);
        let identities = idx.identities(node, now);
        ids.iter()
            .map(|id| {
                idx.authorizes(&identities, id, now)
                    .ok_or_else(|| SignError::NotAuthorised {
                        agent: node.spiffe_id.clone(),
                        entry: (*id).to_owned(),
                    })
            })
            .collect()
    }

    /// Re-checks, after signing and before the response is produced, what was authorised
    /// before signing: the node must still be known and unbanned, else the whole call is
    /// refused; then, per entry, whether it is still authorised for `node` and unchanged
    /// (same revision). Signing runs without the index lock, so a delete, an update or a
    /// withdrawn node alias can land meanwhile; what fails this check must not be handed out.
    pub(crate) fn still_authorised(
        &self,
        node: &AttestedNode,
        entries: &[Arc<Entry>],
    ) -> Result<Vec<bool>, SignError> {
        let id = &node.spiffe_id;
        match self.store.get_node(id)? {
            Some(n) if !n.banned => {}
            _ => return Err(SignError::NodeGone(id.clone())),
        }
        let now = writ_core::now_unix();
        let idx = self.index.read().unwrap_or_else(unpoison);
        let identities = idx.identities(node, now);
        Ok(entries
            .iter()
            .map(|e| {
                idx.authorizes(&identities, &e.id, now)
                    .is_some_and(|cur| cur.revision == e.revision)
            })
            .collect())
    }

    /// [`ServerState::still_authorised`] applied to signed results (in the order of
    /// `entries`): a result whose entry fails it loses its SVID and carries an error instead.
    pub(crate) fn withdraw_unauthorised(
        &self,
        node: &AttestedNode,
        entries: &[Arc<Entry>],
        results: &mut [pb::SignX509Result],
    ) -> Result<(), SignError> {
        let ok = self.still_authorised(node, entries)?;
        for ((e, r), ok) in entries.iter().zip(results.iter_mut()).zip(ok) {
            if !ok && r.error.is_empty() {
                r.cert_chain.clear();
                r.expires_at = 0;
                r.error = format!(
                    "entry `{}` was deleted, changed or withdrawn from this agent while it was signed; not issued",
                    e.id
                );
                tracing::info!(agent = %node.spiffe_id, entry = %e.id, "signed SVID withheld: entry changed during signing");
            }
        }
        Ok(())
    }

    /// Under one index lock: the index revision, `node`'s identities and the entries it may
    /// serve now.
    pub(crate) fn authorized(&self, node: &AttestedNode) -> (u64, Vec<SpiffeId>, Vec<Arc<Entry>>) {
        let now = writ_core::now_unix();
        let idx = self.index.read().unwrap_or_else(unpoison);
        let ids = idx.identities(node, now);
        let mut set = idx.authorized(&ids, now);
        let revision = idx.revision();
        drop(idx);
        // What policy denies is not sent: the agent drops it and its workloads lose it.
        if let Some(cur) = self.policy.current() {
            set.retain(|e| self.policy_permits_entry(&cur, e, node));
        }
        (revision, ids, set)
    }
}
