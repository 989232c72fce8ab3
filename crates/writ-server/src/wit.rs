//! WIT-SVIDs: signed by the active JWT key (the `wit+jwt` type keeps them apart from
//! JWT-SVIDs), bound to a key the agent made for the workload (`cnf.jwk`), for an entry the
//! agent is authorised for, decided by policy (`mint_wit`) and journalled (`wit.issued`)
//! before the token leaves the server. Revoked by `jti` like a JWT-SVID.

use std::sync::Arc;

use writ_core::{AttestedNode, Entry, PublicJwk, SpiffeId};

use crate::signing::SignError;
use crate::state::{unpoison, ServerState};

/// A signed WIT-SVID.
#[derive(Debug, Clone)]
pub(crate) struct MintedWit {
    pub(crate) token: String,
    pub(crate) exp: i64,
    pub(crate) jti: String,
}

/// The `cnf` key from an uncompressed P-256 point sent by an agent.
pub(crate) fn cnf_key(point: &[u8]) -> Result<PublicJwk, SignError> {
    match PublicJwk::from_ec_point(point) {
        Ok(k @ PublicJwk::Ec { .. }) if point.len() == 65 => Ok(k),
        _ => Err(SignError::Ca(writ_ca::CaError::BadPublicKey(
            "a WIT-SVID key must be an uncompressed P-256 point (65 bytes)".into(),
        ))),
    }
}

impl ServerState {
    /// Signs a WIT-SVID for `id` bound to `cnf`.
    pub(crate) fn mint_wit(
        &self,
        id: &SpiffeId,
        cnf: &PublicJwk,
        ttl: i64,
    ) -> Result<MintedWit, SignError> {
        let signer = self.ca.read().unwrap_or_else(unpoison).jwt_signer();
        let (token, exp, jti) = signer.sign_wit(id, cnf, ttl, writ_core::now_unix())?;
        Ok(MintedWit { token, exp, jti })
    }

    /// A WIT-SVID of entry `entry_id` for `node` bound to `point` (see
    /// [`ServerState::mint_token_for`]).
    pub(crate) fn mint_wit_for(
        &self,
        node: &AttestedNode,
        entry_id: &str,
        point: &[u8],
    ) -> Result<(MintedWit, Arc<Entry>), SignError> {
        let cnf = cnf_key(point)?;
        self.mint_token_for(
            node,
            entry_id,
            writ_policy::Action::MintWit,
            &[],
            |e, ttl| self.mint_wit(&e.spiffe_id, &cnf, ttl),
        )
    }
}
