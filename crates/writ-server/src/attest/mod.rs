//! Node attestation, server side: the [`NodeAttestor`] trait, the exchange on the wire
//! ([`flow`]) and the catalog of attestors, one module each.
//!
//! An attestor turns the agent's payload into an [`Attested`] result, possibly after a
//! challenge-response round ([`Step::Challenge`]). Each reads its own `[node_attestor.<name>]`
//! table. Adding an attestor is one module here (its settings, its `PLUGIN` and the trait) and
//! one line in [`CATALOG`]; the agent has its own catalog in `writ-agent`.

pub(crate) mod flow;
pub(crate) mod join_token;
pub(crate) mod sshpop;
pub(crate) mod x509pop;

use std::collections::HashMap;
use std::sync::Arc;

use writ_core::config::ConfigError;
use writ_core::{IdError, Selector, SpiffeId, TrustDomain};
use writ_store::Store;

use crate::plugin::{find, Plugin, PluginConfig};

/// An attestor's own error, kept as the source of an [`AttestError`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an attestor did not attest: how the agent is answered, and the attestor's own typed
/// error as the source. Messages are safe to return to the agent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttestError {
    /// The payload or answer is malformed.
    #[error("attestation data is malformed: {0}")]
    Malformed(#[source] BoxError),
    /// The evidence does not prove anything (bad token, bad chain, bad signature).
    #[error("attestation refused: {0}")]
    Refused(#[source] BoxError),
    /// The server failed.
    #[error("attestation failed on the server: {0}")]
    Internal(#[source] BoxError),
}

/// What attestation established.
#[derive(Debug, Clone)]
pub(crate) struct Attested {
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
pub(crate) trait Challenge: Send {
    /// Checks the response and finishes attestation.
    fn verify(self: Box<Self>, response: &[u8]) -> Result<Attested, AttestError>;
}

/// The outcome of the first attestation step.
pub(crate) enum Step {
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
pub(crate) trait NodeAttestor: Send + Sync {
    /// The name agents use (`join_token`, `x509pop`).
    fn name(&self) -> &'static str;
    /// First step with the agent's payload.
    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError>;
}

/// What attestors are built from, besides their tables.
pub(crate) struct Ctx {
    /// The server's trust domain (agent IDs are in it).
    pub(crate) trust_domain: TrustDomain,
    /// The datastore (join tokens live there).
    pub(crate) store: Arc<dyn Store>,
}

/// Builds an attestor from its table.
pub(crate) type Build = fn(&Ctx, &toml::Table) -> Result<Arc<dyn NodeAttestor>, ConfigError>;

/// Every node attestor the server knows.
pub(crate) const CATALOG: &[Plugin<Build>] = &[join_token::PLUGIN, x509pop::PLUGIN, sshpop::PLUGIN];

/// The enabled attestors by name.
#[derive(Clone, Default)]
pub(crate) struct Attestors {
    by_name: HashMap<&'static str, Arc<dyn NodeAttestor>>,
}

impl Attestors {
    /// Builds the attestors `configured` (their files are read now).
    pub(crate) fn build(configured: &[PluginConfig], ctx: &Ctx) -> Result<Self, ConfigError> {
        let mut a = Attestors::default();
        for c in configured {
            let built = (find("node_attestor", CATALOG, c)?.build)(ctx, &c.table)?;
            a.by_name.insert(built.name(), built);
        }
        Ok(a)
    }

    /// The attestor called `name`, if enabled.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn NodeAttestor>> {
        self.by_name.get(name).cloned()
    }
}

/// `spiffe://<td>/writ/agent/<attestor>/<id>`, refusing anything non-canonical.
pub(crate) fn agent_id(td: &TrustDomain, attestor: &str, id: &str) -> Result<SpiffeId, IdError> {
    td.id(&format!("/writ/agent/{attestor}/{id}"))
}
