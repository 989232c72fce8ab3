//! The `join_token` attestor: the payload is a single-use token made by `writ token generate`.
//! The agent becomes `spiffe://<td>/writ/agent/join_token/<token>`; the token's `spiffe_id`, if
//! any, becomes an alias. The token is consumed whatever the outcome.

use std::sync::Arc;

use serde::Deserialize;
use writ_core::config::ConfigError;
use writ_core::{IdError, TrustDomain};
use writ_store::{Store, StoreError};

use super::{agent_id, AttestError, Attested, Build, Ctx, NodeAttestor, Step};
use crate::plugin::{check, Plugin};

/// `[node_attestor.join_token]` has no settings (tokens come from `writ token generate`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {}

/// The catalog entry.
pub(super) const PLUGIN: Plugin<Build> = Plugin {
    name: "join_token",
    check: check::<Settings>,
    build,
};

fn build(ctx: &Ctx, _: &toml::Table) -> Result<Arc<dyn NodeAttestor>, ConfigError> {
    Ok(Arc::new(JoinTokenAttestor::new(
        ctx.trust_domain.clone(),
        ctx.store.clone(),
    )))
}

/// Why a join token was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinTokenError {
    /// Not UTF-8.
    #[error("join token is not UTF-8")]
    NotUtf8,
    /// Not a UUID.
    #[error("join token has the wrong form")]
    WrongForm,
    /// Unknown, used or expired; or the store failed.
    #[error(transparent)]
    Token(#[from] StoreError),
    /// The agent ID it makes is not valid.
    #[error("agent id: {0}")]
    AgentId(#[from] IdError),
}

impl From<JoinTokenError> for AttestError {
    fn from(e: JoinTokenError) -> Self {
        match e {
            JoinTokenError::Token(StoreError::TokenInvalid | StoreError::TokenExpired) => {
                AttestError::Refused(e.into())
            }
            JoinTokenError::Token(_) => AttestError::Internal(e.into()),
            _ => AttestError::Malformed(e.into()),
        }
    }
}

/// Attests agents by join token.
pub(crate) struct JoinTokenAttestor {
    td: TrustDomain,
    store: Arc<dyn Store>,
}

impl JoinTokenAttestor {
    /// An attestor that consumes tokens from `store`.
    pub(crate) fn new(td: TrustDomain, store: Arc<dyn Store>) -> Self {
        JoinTokenAttestor { td, store }
    }

    fn check(&self, payload: &[u8], now: i64) -> Result<Attested, JoinTokenError> {
        let token = std::str::from_utf8(payload).map_err(|_| JoinTokenError::NotUtf8)?;
        // Tokens are UUIDs: refuse anything else before touching the store.
        if token.len() != 36 || !token.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(JoinTokenError::WrongForm);
        }
        let t = self.store.consume_join_token(token, now)?;
        Ok(Attested {
            agent_id: agent_id(&self.td, "join_token", token)?,
            selectors: Vec::new(),
            aliases: t.spiffe_id.into_iter().collect(),
            can_reattest: false,
        })
    }
}

impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError> {
        Ok(Step::Done(self.check(payload, now)?))
    }
}
