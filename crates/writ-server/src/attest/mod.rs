//! Node attestation: the [`NodeAttestor`] trait and its implementations, one module each.
//!
//! An attestor turns the agent's payload into an [`Attested`] result, possibly after a
//! challenge-response round ([`Step::Challenge`]). Adding an attestor is one module here and one
//! line in [`Attestors::from_config`].

pub mod join_token;
pub mod x509pop;

use std::collections::HashMap;
use std::sync::Arc;

use writ_core::{Selector, SpiffeId, TrustDomain};
use writ_store::Store;

/// Why attestation failed. Messages are safe to return to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The payload is malformed.
    #[error("attestation data is malformed: {0}")]
    Malformed(String),
    /// The evidence does not prove anything (bad token, bad chain, bad signature).
    #[error("attestation refused: {0}")]
    Refused(String),
    /// The server failed.
    #[error("attestation failed on the server: {0}")]
    Internal(String),
}

/// What attestation established.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The agent's SPIFFE ID.
    pub agent_id: SpiffeId,
    /// Node selectors.
    pub selectors: Vec<Selector>,
    /// Extra IDs the agent is known by.
    pub aliases: Vec<SpiffeId>,
    /// Whether the same node may attest again while its record exists (x509pop: yes, the
    /// evidence can be presented again; join_token: no, tokens are single use).
    pub can_reattest: bool,
}

/// A pending challenge: verifies the agent's response.
pub trait Challenge: Send {
    /// Checks the response and finishes attestation.
    fn verify(self: Box<Self>, response: &[u8]) -> Result<Attested, AttestError>;
}

/// The outcome of the first attestation step.
pub enum Step {
    /// Attestation is complete.
    Done(Attested),
    /// The agent must answer `challenge`; `pending` checks the answer.
    Challenge {
        /// Bytes sent to the agent.
        challenge: Vec<u8>,
        /// Verifier of the response.
        pending: Box<dyn Challenge>,
    },
}

/// A server-side node attestor.
pub trait NodeAttestor: Send + Sync {
    /// The name agents use (`join_token`, `x509pop`).
    fn name(&self) -> &'static str;
    /// First step with the agent's payload.
    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError>;
}

/// The enabled attestors by name.
#[derive(Clone, Default)]
pub struct Attestors {
    by_name: HashMap<&'static str, Arc<dyn NodeAttestor>>,
}

impl Attestors {
    /// Builds the attestors the config enables.
    pub fn from_config(
        cfg: &crate::config::ServerConfig,
        store: Arc<dyn Store>,
    ) -> Result<Self, AttestError> {
        let mut a = Attestors::default();
        if cfg.join_token {
            a.add(Arc::new(join_token::JoinTokenAttestor::new(
                cfg.trust_domain.clone(),
                store,
            )));
        }
        if let Some(path) = &cfg.x509pop_ca_bundle {
            a.add(Arc::new(x509pop::X509PopAttestor::load(
                cfg.trust_domain.clone(),
                path,
            )?));
        }
        Ok(a)
    }

    /// Registers an attestor.
    pub fn add(&mut self, a: Arc<dyn NodeAttestor>) {
        self.by_name.insert(a.name(), a);
    }

    /// The attestor called `name`, if enabled.
    pub fn get(&self, name: &str) -> Option<Arc<dyn NodeAttestor>> {
        self.by_name.get(name).cloned()
    }
}

/// `spiffe://<td>/writ/agent/<attestor>/<id>`, refusing anything non-canonical.
pub fn agent_id(td: &TrustDomain, attestor: &str, id: &str) -> Result<SpiffeId, AttestError> {
    td.id(&format!("/writ/agent/{attestor}/{id}"))
        .map_err(|e| AttestError::Malformed(format!("agent id: {e}")))
}
