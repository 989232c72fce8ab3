//! [`AgentState`]: what the agent knows, shared by the session loop ([`crate::session`]), the
//! entry and bundle sync ([`crate::sync`]), the signer ([`crate::signer`]) and the admin API.
//! Workloads see only its [`WorkloadView`].
//!
//! Invariants: the agent's identity is on disk (0600) before it is used; a change of identity
//! makes the next session take a fresh snapshot (a new identity may be authorised for other
//! entries).

use std::sync::{Arc, RwLock};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;
use writ_ca::PrivateKey;
use writ_core::{Bundle, TrustDomain};
use writ_tls::{SharedBundle, SvidResolver};

use crate::cache::Cache;
use crate::config::AgentConfig;
use crate::node_attest::NodeAttestorClient;
use crate::node_client::AgentSvid;
use crate::persist::{self, Identity};
use crate::view::WorkloadView;

/// Agent failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Config problem found at start.
    #[error("{0}")]
    Config(String),
    /// Persisted data problem.
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] writ_tls::TlsError),
    /// Key generation.
    #[error(transparent)]
    Ca(#[from] writ_ca::CaError),
    /// Socket setup.
    #[error("{0}")]
    Socket(String),
}

/// Shared agent state.
pub struct AgentState {
    /// Validated config.
    pub cfg: AgentConfig,
    /// What workloads see: the cache, its change signal, JWT minting.
    pub view: Arc<WorkloadView>,
    /// The agent's identity, once attested.
    pub(crate) identity: RwLock<Option<Identity>>,
    /// Bundles the server's certificate is checked against.
    pub(crate) trust: SharedBundle,
    /// How this node proves what it is.
    pub(crate) node_attestor: Arc<dyn NodeAttestorClient>,
    pub(crate) resolver: RwLock<Option<Arc<SvidResolver>>>,
    pub(crate) store: persist::Store,
    /// Wakes the signer (new entries to sign).
    pub(crate) sign_now: Notify,
    rng: SystemRandom,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState").finish_non_exhaustive()
    }
}

impl AgentState {
    /// Builds the state: persisted identity and bundle if present, else the bootstrap bundle.
    pub fn new(
        cfg: AgentConfig,
        bootstrap: Option<Bundle>,
        node_attestor: Arc<dyn NodeAttestorClient>,
    ) -> Result<Arc<Self>, AgentError> {
        let store = persist::Store::open(&cfg.data_dir)?;
        let td = cfg.trust_domain.clone();
        let bundle = match store.load_bundle(&td)? {
            Some(b) => b,
            None => match bootstrap {
                Some(b) => b,
                None => load_bootstrap(&cfg)?,
            },
        };
        let identity = store.load_identity(writ_core::now_unix())?;
        let resolver = match &identity {
            Some(id) => Some(SvidResolver::new(&id.chain, id.key.pkcs8_der())?),
            None => None,
        };
        if let Some(id) = &identity {
            tracing::info!(agent = %id.spiffe_id, "resuming persisted agent identity");
        }
        Ok(Arc::new(AgentState {
            trust: SharedBundle::new(vec![bundle.clone()]),
            view: Arc::new(WorkloadView::new(
                Cache::new(bundle),
                crate::deliveries::Deliveries::open(Some(cfg.data_dir.join("deliveries.jsonl"))),
            )),
            identity: RwLock::new(identity),
            node_attestor,
            resolver: RwLock::new(resolver),
            store,
            sign_now: Notify::new(),
            rng: SystemRandom::new(),
            cfg,
        }))
    }

    /// The trust domain.
    pub fn td(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    /// A uniformly random number below `n` (0 when `n` is 0), for jitter.
    pub(crate) fn random_below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut b = [0u8; 8];
        let _ = self.rng.fill(&mut b);
        u64::from_le_bytes(b) % n
    }

    /// The agent SPIFFE ID and its expiry, once attested.
    pub fn identity_summary(&self) -> Option<(String, i64)> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|i| (i.spiffe_id.to_string(), i.expires_at))
    }

    /// Persists and installs a new agent SVID (after attestation or renewal).
    pub(crate) fn set_identity(&self, svid: &AgentSvid, key: PrivateKey) -> Result<(), AgentError> {
        let (_, issued_at, expires_at) = persist::leaf_info(&svid.chain[0]).ok_or_else(|| {
            AgentError::Config("server sent an agent SVID that is not an X509-SVID".into())
        })?;
        let id = Identity {
            spiffe_id: svid.spiffe_id.clone(),
            chain: svid.chain.clone(),
            key,
            issued_at,
            expires_at,
        };
        self.store.save_identity(&id)?;
        let mut r = self.resolver.write().unwrap_or_else(|p| p.into_inner());
        match r.as_ref() {
            Some(res) => res.update(&id.chain, id.key.pkcs8_der())?,
            None => *r = Some(SvidResolver::new(&id.chain, id.key.pkcs8_der())?),
        }
        let changed_id = {
            let mut cur = self.identity.write().unwrap_or_else(|p| p.into_inner());
            let changed = cur.as_ref().map(|c| &c.spiffe_id) != Some(&id.spiffe_id);
            *cur = Some(id);
            changed
        };
        if changed_id {
            // A new identity may be authorised for other entries: never resume the old stream.
            self.view.update(|c| {
                c.synced = false;
                ((), false)
            });
        }
        self.set_own_bundle(svid.bundle.clone());
        Ok(())
    }

    /// Forgets the agent identity (evicted, or expired while disconnected).
    pub(crate) fn forget_identity(&self) {
        self.store.clear_identity();
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The bootstrap bundle from `trust_bundle_path`, for a first start.
fn load_bootstrap(cfg: &AgentConfig) -> Result<Bundle, AgentError> {
    let path = cfg.trust_bundle_path.as_ref().ok_or_else(|| {
        AgentError::Config(
            "config key `trust_bundle_path`: needed for the first start (no bundle in data_dir yet)"
                .into(),
        )
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        AgentError::Config(format!(
            "config key `trust_bundle_path`: cannot read `{}`: {e}",
            path.display()
        ))
    })?;
    Bundle::from_x509_pem(cfg.trust_domain.clone(), &text)
        .map_err(|e| AgentError::Config(format!("config key `trust_bundle_path`: {e}")))
}
