//! What the server's flows share, and nothing else: the config, the datastore, the CA, the entry
//! index, the event broadcast, the published bundles and the counters. Each flow adds its
//! operations in its own file (`registry`, `auth`, `bundles`, `signing`, `agent_svid`).
//!
//! Invariant: the index, the broadcast and the published bundles only ever change through those
//! flows, in the order their files document (store first, then index, then broadcast).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{broadcast, watch};
use writ_ca::CaManager;
use writ_core::{server_id, Bundle, SpiffeId};
use writ_store::{Change, Store};
use writ_tls::{SharedBundle, SvidResolver};

use crate::attest::Attestors;
use crate::audit::AuditLog;
use crate::bundles::BundleSet;
use crate::config::ServerConfig;
use crate::index::EntryIndex;
use crate::metrics::Metrics;
use crate::revoke::{RevocationList, Revocations};

/// Something sync streams must react to.
#[derive(Debug, Clone)]
pub enum Event {
    /// An entry change committed at `revision`.
    Entry(Arc<Change>),
    /// A node was evicted or banned: its streams end.
    NodeGone(SpiffeId),
    /// The server is stopping: streams end with Unavailable.
    Shutdown,
    /// A new policy set is in force: every agent's authorised set is filtered again.
    PolicyChanged,
    /// Node notices may have been missed (shared store): every stream reads its node record
    /// again and ends if the node was banned or evicted meanwhile.
    CheckNodes,
}

/// Why a server stream (entry sync, bundle watch) ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamEnd {
    /// The agent was evicted or banned.
    #[error("agent was evicted or banned")]
    NodeGone,
    /// The server is stopping.
    #[error("server is shutting down")]
    Shutdown,
    /// The agent closed the stream.
    #[error("agent went away")]
    AgentGone,
    /// The agent holds a revision this server has not reached (a shared store it cannot read
    /// right now): it should use another server.
    #[error("this server has not caught up with revision {0} yet")]
    Behind(u64),
}

/// Everything the server's flows share.
pub struct ServerState {
    /// Validated config.
    pub cfg: ServerConfig,
    /// Datastore.
    pub(crate) store: Arc<dyn Store>,
    /// The CA and its rotation journal.
    pub(crate) ca: RwLock<CaManager>,
    /// In-memory entry index.
    pub(crate) index: RwLock<EntryIndex>,
    /// Serialises entry writes so index updates and broadcasts follow revision order.
    pub(crate) write_lock: tokio::sync::Mutex<()>,
    /// Entry changes and node removals, for sync streams.
    pub(crate) events: broadcast::Sender<Event>,
    /// Current bundles, for bundle watchers (and `writ dev`, which bootstraps its agent).
    pub bundles: watch::Sender<BundleSet>,
    /// Bundles the TLS verifier trusts (own + federated).
    pub(crate) trust: SharedBundle,
    /// The server's own TLS certificate (its SVID), swapped on rotation.
    pub(crate) server_tls: Arc<SvidResolver>,
    /// Validity window of the current server SVID.
    pub(crate) server_svid_window: Mutex<(i64, i64)>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Enabled node attestors.
    pub(crate) attestors: Attestors,
    /// The audit journal.
    pub(crate) audit: AuditLog,
    /// Revoked credentials (durable list; published with the bundles).
    pub(crate) revocations: Revocations,
    /// The Cedar policy set in force (`[policy]`), if any.
    pub(crate) policy: crate::policy::Policies,
    /// Task identities, running and recently ended.
    pub(crate) tasks: crate::tasks::TaskBook,
    /// Federation relationships in force.
    pub(crate) federations: crate::federation::manage::Federations,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").finish_non_exhaustive()
    }
}

/// What [`ServerState::new`] assembles (built by `run`).
pub(crate) struct Parts {
    pub(crate) cfg: ServerConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ca: CaManager,
    pub(crate) index: EntryIndex,
    pub(crate) own: Bundle,
    pub(crate) federated: Vec<Bundle>,
    pub(crate) server_tls: Arc<SvidResolver>,
    pub(crate) server_svid_window: (i64, i64),
    pub(crate) attestors: Attestors,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) audit: AuditLog,
    pub(crate) revocations: RevocationList,
    pub(crate) policy: crate::policy::Policies,
    pub(crate) tasks: Vec<writ_core::Task>,
}

/// A poisoned lock still holds consistent data here (every critical section is a plain
/// replacement or a read), so a panic elsewhere must not take the server down with it.
pub(crate) fn unpoison<T>(p: std::sync::PoisonError<T>) -> T {
    p.into_inner()
}

impl ServerState {
    /// Assembles the state.
    pub(crate) fn new(p: Parts) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let mut trust_set = vec![p.own.clone()];
        trust_set.extend(p.federated.iter().cloned());
        let trust = SharedBundle::new(trust_set);
        let (bundles, _) = watch::channel(BundleSet {
            own: p.own,
            federated: p.federated,
            revocations: Arc::default(),
            tainted: Arc::default(),
        });
        p.metrics
            .entries
            .store(p.index.len() as i64, Ordering::Relaxed);
        Arc::new(ServerState {
            cfg: p.cfg,
            store: p.store,
            ca: RwLock::new(p.ca),
            index: RwLock::new(p.index),
            write_lock: tokio::sync::Mutex::new(()),
            events,
            bundles,
            trust,
            server_tls: p.server_tls,
            server_svid_window: Mutex::new(p.server_svid_window),
            metrics: p.metrics,
            attestors: p.attestors,
            audit: p.audit,
            revocations: Revocations::new(p.revocations),
            policy: p.policy,
            tasks: crate::tasks::TaskBook::new(p.tasks),
            federations: Default::default(),
        })
    }

    /// The server's SPIFFE ID.
    pub fn server_id(&self) -> SpiffeId {
        server_id(&self.cfg.trust_domain)
    }
}
