//! Agent SVIDs after attestation: renewal with the current SVID only.
//!
//! Invariant: the node record's serials change only in one compare-and-swap that re-checks the
//! record it read; a ban, an eviction or another renewal that landed meanwhile wins.

use writ_ca::MintedSvid;
use writ_core::AttestedNode;
use writ_store::{NodeUpdate, StoreError};

use crate::auth::{AuthError, Caller};
use crate::signing::SignError;
use crate::state::ServerState;

/// Why an agent SVID was not renewed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    /// The agent may not renew (see [`AuthError`]).
    #[error(transparent)]
    Refused(#[from] AuthError),
    /// The CSR was refused or signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServerState {
    /// Renews the SVID of the authenticated `caller` for the key of `csr`. Only the current
    /// SVID renews: the previous one is accepted for calls until the agent uses the new one,
    /// but a stolen older SVID must not mint a successor (and so lock the current one out).
    pub(crate) fn renew_agent(
        &self,
        caller: &Caller,
        csr: &[u8],
    ) -> Result<(AttestedNode, MintedSvid), RenewError> {
        let node = &caller.node;
        let presented = caller.serial.as_str();
        if presented != node.cert_serial {
            return Err(AuthError::RenewWithPrevious(node.spiffe_id.clone()).into());
        }
        let svid = self.mint_from_csr(csr, &node.spiffe_id, self.cfg.agent_svid_ttl, &[])?;
        // Swap the serials only if the record is still the one authenticated: a ban, an
        // eviction or another renewal that landed meanwhile wins, and this SVID is discarded.
        let mut refusal = None;
        let node = self.store.update_node(&node.spiffe_id, &mut |cur| {
            refusal = None;
            match cur {
                None => {
                    refusal = Some(AuthError::Evicted(node.spiffe_id.clone()));
                    NodeUpdate::Keep
                }
                Some(n) if n.banned => {
                    refusal = Some(AuthError::Banned(n.spiffe_id.clone()));
                    NodeUpdate::Keep
                }
                Some(n) if n.cert_serial != presented => {
                    refusal = Some(AuthError::NotCurrent(n.spiffe_id.clone()));
                    NodeUpdate::Keep
                }
                Some(n) => NodeUpdate::Put(AttestedNode {
                    prev_cert_serial: presented.to_owned(),
                    cert_serial: svid.serial_hex.clone(),
                    cert_not_after: svid.not_after,
                    ..n.clone()
                }),
            }
        })?;
        if let Some(r) = refusal {
            return Err(r.into());
        }
        let node = node.ok_or(AuthError::Vanished)?;
        tracing::debug!(agent = %node.spiffe_id, "agent SVID renewed");
        Ok((node, svid))
    }
}
