//! The `join_token` attestor: the payload is a single-use token made by `writ token generate`.
//! The agent becomes `spiffe://<td>/writ/agent/join_token/<token>`; the token's `spiffe_id`, if
//! any, becomes an alias. The token is consumed whatever the outcome.

use std::sync::Arc;

use writ_core::TrustDomain;
use writ_store::{Store, StoreError};

use super::{agent_id, AttestError, Attested, NodeAttestor, Step};

/// Attests agents by join token.
pub struct JoinTokenAttestor {
    td: TrustDomain,
    store: Arc<dyn Store>,
}

impl JoinTokenAttestor {
    /// An attestor that consumes tokens from `store`.
    pub fn new(td: TrustDomain, store: Arc<dyn Store>) -> Self {
        JoinTokenAttestor { td, store }
    }
}

impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError> {
        let token = std::str::from_utf8(payload)
            .map_err(|_| AttestError::Malformed("join token is not UTF-8".into()))?;
        // Tokens are UUIDs: refuse anything else before touching the store.
        if token.len() != 36 || !token.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(AttestError::Malformed(
                "join token has the wrong form".into(),
            ));
        }
        let t = self
            .store
            .consume_join_token(token, now)
            .map_err(|e| match e {
                StoreError::TokenInvalid | StoreError::TokenExpired => {
                    AttestError::Refused(e.to_string())
                }
                other => AttestError::Internal(other.to_string()),
            })?;
        Ok(Step::Done(Attested {
            agent_id: agent_id(&self.td, "join_token", token)?,
            selectors: Vec::new(),
            aliases: t.spiffe_id.into_iter().collect(),
            can_reattest: false,
        }))
    }
}
