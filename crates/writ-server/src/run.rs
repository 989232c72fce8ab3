//! Starting and stopping the server: build the plugins the config names (datastore, key
//! manager, upstream authority, node attestors), open the CA, assemble the state, start the
//! listeners (see [`crate::listen`]) and the background loops (see [`crate::background`]), and
//! drain on shutdown.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writ_ca::{CaConfig, CaJournal, CaManager};
use writ_core::Bundle;
use writ_tls::socket::SocketError;
use writ_tls::SvidResolver;

use crate::attest::{self, Attestors};
use crate::audit::AuditLog;
use crate::background::{self, mint_server_svid, persist_journal};
use crate::config::ServerConfig;
use crate::index::EntryIndex;
use crate::listen;
use crate::metrics::Metrics;
use crate::plugins;
use crate::revoke::RevocationList;
use crate::state::{Event, Parts, ServerState};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Datastore failure.
    #[error(transparent)]
    Store(#[from] writ_store::StoreError),
    /// CA failure.
    #[error(transparent)]
    Ca(#[from] writ_ca::CaError),
    /// The stored CA journal does not decode.
    #[error("CA journal in the datastore is corrupt: {0}")]
    Journal(#[source] serde_json::Error),
    /// Admin socket problem.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A plugin's config table is not usable (a file it names cannot be read, say).
    #[error(transparent)]
    Config(#[from] writ_core::config::ConfigError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] writ_tls::TlsError),
    /// Listening failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The policy set does not load (file, line and policy named).
    #[error(transparent)]
    Policy(#[from] writ_policy::PolicyError),
    /// The stored revocation list is unreadable.
    #[error("revocation list: {0}")]
    Revocations(String),
    /// The audit journal could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A started server.
pub struct RunningServer {
    /// Shared state (for embedding: `writ dev` registers entries through it).
    pub state: Arc<ServerState>,
    /// The agent-facing address actually bound (useful with port 0).
    pub listen_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), ServerError>>>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("listen_addr", &self.listen_addr)
            .finish()
    }
}

impl RunningServer {
    /// Stops accepting, ends streams, waits (at most `grace`) for in-flight calls, and flushes.
    pub async fn shutdown(self, grace: Duration) -> Result<(), ServerError> {
        tracing::info!("server shutting down");
        let _ = self.stop.send(true);
        let _ = self.state.events.send(Event::Shutdown);
        for b in &self.background {
            b.abort();
        }
        let mut result = Ok(());
        for t in self.tasks {
            match tokio::time::timeout(grace, t).await {
                Ok(Ok(Err(e))) => result = Err(e),
                Ok(Err(e)) => result = Err(e.into()),
                Err(_) => tracing::warn!("in-flight calls did not finish within the grace period"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        let _ = std::fs::remove_file(&self.state.cfg.admin_socket);
        result
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// Starts the server described by `cfg`.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(io(format!(
        "cannot create data_dir `{}`",
        cfg.data_dir.display()
    )))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700)).map_err(io(
        format!("cannot restrict data_dir `{}`", cfg.data_dir.display()),
    ))?;
    let opening = std::time::Instant::now();
    let store = plugins::store(&cfg)?;
    tracing::info!(ms = opening.elapsed().as_millis() as u64, "datastore open");
    let keys = plugins::key_manager(&cfg)?;
    let upstream = plugins::upstream_authority(&cfg)?;
    let audit = AuditLog::open(store.clone(), keys.as_ref(), cfg.audit_enabled).await?;
    let journal: Option<CaJournal> = match store.get_ca_journal()? {
        Some(b) => Some(serde_json::from_slice(&b).map_err(ServerError::Journal)?),
        None => None,
    };
    let journal_before = journal.clone().unwrap_or_default();
    let now = writ_core::now_unix();
    // A journal the step changed (first start, or an expired active CA replaced) is durable
    // before the new authority signs anything, starting with the server's own SVID below.
    let ca = CaManager::open(
        CaConfig {
            trust_domain: cfg.trust_domain.clone(),
            key_type: cfg.ca_key_type,
            ca_ttl_secs: cfg.ca_ttl,
            jwt_key_ttl_secs: cfg.ca_ttl,
            jwt_issuer: cfg.jwt_issuer.clone(),
        },
        keys,
        upstream,
        journal,
        now,
        &mut |j| persist_journal(store.as_ref(), j),
    )?;

    // First start, or a server down past an expiry: the authorities made or activated now.
    audit
        .note(crate::audit::events::authority_changes(
            &journal_before,
            ca.journal(),
        ))
        .await;

    let own = store
        .get_bundle(&cfg.trust_domain)?
        .unwrap_or_else(|| Bundle::new(cfg.trust_domain.clone()));
    let federated: Vec<Bundle> = store
        .list_bundles()?
        .into_iter()
        .filter(|b| b.trust_domain != cfg.trust_domain)
        .collect();
    // The revision first, then the entries: on a shared store another server may commit in
    // between, and an index must never claim a revision it lacks (the follower replays the log
    // from this revision; applying a change the listing already has is harmless).
    let revision = store.revision()?;
    let loading = std::time::Instant::now();
    let index = EntryIndex::load(store.as_ref(), revision)?;
    tracing::info!(
        entries = index.len(),
        ms = loading.elapsed().as_millis() as u64,
        "entry index loaded"
    );
    let policy = crate::policy::Policies::open(cfg.policy.clone())?;
    let revocations = RevocationList::load(store.as_ref())
        .map_err(|e| ServerError::Revocations(e.to_string()))?;

    // The server's own SVID, for the agent-facing TLS listener.
    let (server_chain, server_key, window) = mint_server_svid(&ca, &cfg)?;
    let server_tls = SvidResolver::new(&server_chain, server_key.pkcs8_der())?;
    let attestors = Attestors::build(
        &cfg.node_attestors,
        &attest::Ctx {
            trust_domain: cfg.trust_domain.clone(),
            store: store.clone(),
        },
    )?;
    let tasks = store.list_tasks()?;
    let state = ServerState::new(Parts {
        cfg: cfg.clone(),
        store,
        ca,
        index,
        own,
        federated,
        server_tls,
        server_svid_window: window,
        attestors,
        metrics: Arc::new(Metrics::default()),
        audit,
        revocations,
        policy,
        tasks,
    });
    state.publish_tainted();
    if let Err(e) = state.refresh_revocations().await {
        tracing::error!(error = %e, "could not sign the CRL; revoked serials are still sent to agents");
    }
    state.refresh_own_bundle()?;

    let (stop, stop_rx) = watch::channel(false);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io(format!("cannot listen on `{}`", cfg.listen)))?;
    let listen_addr = listener.local_addr().map_err(io("listener address"))?;
    let agents = listen::serve_agents(&state, listener, stop_rx.clone())?;
    let admin = listen::serve_admin(&state, stop_rx)?;

    let mut background = vec![
        agents.accept,
        admin.accept,
        tokio::spawn(background::ca_loop(state.clone())),
        tokio::spawn(background::server_svid_loop(state.clone())),
        tokio::spawn(background::token_prune_loop(state.clone())),
        tokio::spawn(background::crl_loop(state.clone())),
        tokio::spawn(background::expiry_loop(state.clone())),
        tokio::spawn(crate::policy::reload_loop(state.clone())),
        tokio::spawn(crate::tasks::sweep_loop(state.clone())),
        tokio::spawn(crate::cluster::follow_loop(state.clone())),
    ];
    if let Some(addr) = cfg.metrics_listen {
        let m = state.metrics.clone();
        background.push(tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        }));
    }
    if let Some(e) = cfg.federation.bundle_endpoint.clone() {
        let st = state.clone();
        background.push(tokio::spawn(async move {
            let addr = e.listen;
            if let Err(e) = crate::federation::endpoint::serve(e, st).await {
                tracing::error!(%addr, error = %e, "federation bundle endpoint failed");
            }
        }));
    }
    if let Err(e) = state.start_federations().await {
        tracing::error!(error = %e, "federation relationships not started");
    }
    if let Some(o) = cfg.oidc.clone() {
        let st = state.clone();
        background.push(tokio::spawn(async move {
            let addr = o.listen;
            if let Err(e) = crate::oidc::serve(o, st).await {
                tracing::error!(%addr, error = %e, "OIDC discovery endpoint failed");
            }
        }));
    }
    state.metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(listen = %listen_addr, admin_socket = %cfg.admin_socket.display(), trust_domain = %cfg.trust_domain, "server ready");
    Ok(RunningServer {
        state,
        listen_addr,
        stop,
        tasks: vec![agents.serve, admin.serve],
        background,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use writ_ca::{KeyType, PrivateKey};

    /// `[ca.upstream]` (contract.md, docs/operations.md) and `[upstream_authority.disk]` both
    /// make the server's CA an intermediate under the operator's CA, whose root is published.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_disk_upstream_authority_works_under_both_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let td = writ_core::TrustDomain::new("example.org").unwrap();
        let root_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let now = writ_core::now_unix();
        let (root, _) = writ_ca::x509::build_ca_cert(&td, &root_key, 86_400, now, None).unwrap();
        let cert = dir.path().join("up.pem");
        let key = dir.path().join("up.key");
        std::fs::write(&cert, writ_core::pem::encode("CERTIFICATE", &root)).unwrap();
        std::fs::write(&key, root_key.to_pem()).unwrap();
        for (i, table) in ["[ca.upstream]", "[upstream_authority.disk]"]
            .iter()
            .enumerate()
        {
            let d = dir.path().join(i.to_string());
            let cfg = ServerConfig::parse(&format!(
                "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n{table}\ncert = \"{}\"\nkey = \"{}\"\n",
                d.join("run/admin.sock").display(),
                d.join("data").display(),
                cert.display(),
                key.display(),
            ))
            .unwrap();
            let srv = start(cfg).await.unwrap();
            let published = srv.state.bundles.borrow().own.x509_authorities.clone();
            assert_eq!(published, vec![root.clone()], "{table}");
            let ca = srv.state.ca.read().unwrap().x509_authority();
            assert_ne!(
                ca.cert_der(),
                root.as_slice(),
                "{table}: writ's CA is not the root"
            );
            srv.shutdown(Duration::from_secs(5)).await.unwrap();
        }
    }
}
