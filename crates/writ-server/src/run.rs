//! Starting and stopping the server: open the datastore and CA, bind the agent-facing TLS
//! listener and the private admin socket, run the background loops (CA rotation, server SVID
//! rotation, token pruning), and drain on shutdown.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use writ_ca::{
    CaConfig, CaJournal, CaManager, DiskKeyManager, KeyManager, PrivateKey, SvidRequest,
    UpstreamAuthority,
};
use writ_core::{server_id, Bundle};
use writ_proto::v1::admin_server::AdminServer;
use writ_proto::v1::node_server::NodeServer;
use writ_store::{SledStore, Store};
use writ_tls::{any_id, SpiffeClientVerifier, SvidResolver};

use crate::admin_api::AdminApi;
use crate::attest::{AttestError, Attestors};
use crate::config::ServerConfig;
use crate::index::EntryIndex;
use crate::metrics::Metrics;
use crate::node_api::NodeApi;
use crate::state::{Event, ServerState};
use writ_tls::socket::{bind_private, SocketError};

/// Largest gRPC message the server accepts.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

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
    Journal(String),
    /// Admin socket problem.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Attestor setup failed.
    #[error(transparent)]
    Attest(#[from] AttestError),
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
    /// Other startup failure.
    #[error("{0}")]
    Other(String),
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
                Ok(Err(e)) => result = Err(ServerError::Other(format!("server task failed: {e}"))),
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
    let store: Arc<dyn Store> = Arc::new(SledStore::open(cfg.data_dir.join("datastore"))?);
    let keys: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::open(cfg.data_dir.join("keys"))?);
    let upstream = match &cfg.upstream {
        Some(u) => Some(UpstreamAuthority::load(
            &u.cert,
            &u.key,
            u.bundle.as_deref(),
        )?),
        None => None,
    };
    let journal: Option<CaJournal> = match store.get_ca_journal()? {
        Some(b) => {
            Some(serde_json::from_slice(&b).map_err(|e| ServerError::Journal(e.to_string()))?)
        }
        None => None,
    };
    let now = writ_core::now_unix();
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
    )?;
    store.put_ca_journal(
        &serde_json::to_vec(ca.journal()).map_err(|e| ServerError::Journal(e.to_string()))?,
    )?;

    let own = store
        .get_bundle(&cfg.trust_domain)?
        .unwrap_or_else(|| Bundle::new(cfg.trust_domain.clone()));
    let federated: Vec<Bundle> = store
        .list_bundles()?
        .into_iter()
        .filter(|b| b.trust_domain != cfg.trust_domain)
        .collect();
    let index = EntryIndex::new(store.list_entries()?, store.revision()?);

    // The server's own SVID, for the agent-facing TLS listener.
    let (server_chain, server_key, window) = mint_server_svid(&ca, &cfg)?;
    let server_tls = SvidResolver::new(&server_chain, server_key.pkcs8_der())?;
    let attestors = Attestors::from_config(&cfg, store.clone())?;
    let metrics = Arc::new(Metrics::default());
    let state = ServerState::new(
        cfg.clone(),
        store,
        ca,
        index,
        own,
        federated,
        server_tls,
        window,
        attestors,
        metrics,
    );
    state
        .refresh_own_bundle()
        .map_err(|s| ServerError::Other(s.message().to_owned()))?;

    let (stop, stop_rx) = watch::channel(false);
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    // Agent-facing TLS listener.
    let tls = writ_tls::server_config(
        state.server_tls.clone(),
        SpiffeClientVerifier::new(state.trust.clone(), any_id(), true),
    )?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io(format!("cannot listen on `{}`", cfg.listen)))?;
    let listen_addr = listener.local_addr().map_err(io("listener address"))?;
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let accept_task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            // gRPC frames are small; without this, Nagle + delayed ACK add ~40 ms to replies.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = conn_tx.clone();
            // Handshakes run in their own tasks so a slow client cannot stall the accept loop.
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    let node_svc = NodeServer::new(NodeApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let node_task = tokio::spawn({
        let rx = stop_rx.clone();
        async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(node_svc)
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown(rx))
                .await
                .map_err(ServerError::from)
        }
    });

    // Operator API on the private socket.
    let admin_listener = bind_private(&cfg.admin_socket)?;
    let admin_svc = AdminServer::new(AdminApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(64 * 1024 * 1024);
    let admin_task = tokio::spawn({
        let rx = stop_rx.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(admin_svc)
                .serve_with_incoming_shutdown(UnixListenerStream::new(admin_listener), shutdown(rx))
                .await
                .map_err(ServerError::from)
        }
    });

    let mut background = vec![accept_task];
    background.push(tokio::spawn(ca_loop(state.clone())));
    background.push(tokio::spawn(server_svid_loop(state.clone())));
    background.push(tokio::spawn(token_prune_loop(state.clone())));
    if let Some(addr) = cfg.metrics_listen {
        let m = state.metrics.clone();
        background.push(tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        }));
    }
    state.metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(listen = %listen_addr, admin_socket = %cfg.admin_socket.display(), trust_domain = %cfg.trust_domain, "server ready");
    Ok(RunningServer {
        state,
        listen_addr,
        stop,
        tasks: vec![node_task, admin_task],
        background,
    })
}

/// A chain, its key, and its validity window.
type ServerSvid = (Vec<Vec<u8>>, PrivateKey, (i64, i64));

fn mint_server_svid(ca: &CaManager, cfg: &ServerConfig) -> Result<ServerSvid, ServerError> {
    let key = PrivateKey::generate(writ_ca::KeyType::EcP256)?;
    let now = writ_core::now_unix();
    let svid = ca.x509_authority().mint(&SvidRequest {
        spiffe_id: &server_id(&cfg.trust_domain),
        public_key_spki: &key.public_key_spki()?,
        ttl_secs: cfg.agent_svid_ttl,
        dns_names: &[],
        now,
    })?;
    Ok((svid.chain, key, (now, svid.not_after)))
}

/// Runs CA rotation steps when they are due; persists the journal and republishes the bundle.
async fn ca_loop(state: Arc<ServerState>) {
    loop {
        let next = state
            .ca
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .next_event();
        let wait = (next - writ_core::now_unix()).clamp(1, 30);
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        let changed = {
            let mut ca = state.ca.write().unwrap_or_else(|p| p.into_inner());
            match ca.tick(writ_core::now_unix()) {
                Ok(true) => serde_json::to_vec(ca.journal()).ok(),
                Ok(false) => None,
                Err(e) => {
                    tracing::error!(error = %e, "CA rotation step failed");
                    None
                }
            }
        };
        if let Some(journal) = changed {
            if let Err(e) = state.store.put_ca_journal(&journal) {
                tracing::error!(error = %e, "cannot persist CA journal");
            }
            state.metrics.ca_rotations.fetch_add(1, Ordering::Relaxed);
            if let Err(s) = state.refresh_own_bundle() {
                tracing::error!(error = %s.message(), "cannot publish bundle");
            }
            tracing::info!("CA journal advanced; bundle republished");
        }
    }
}

/// Renews the server's own SVID at half of its lifetime (and when the signing CA changed).
async fn server_svid_loop(state: Arc<ServerState>) {
    loop {
        let (start, end) = *state
            .server_svid_expiry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let half = start + (end - start) / 2;
        let wait = (half - writ_core::now_unix()).clamp(1, 30);
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        if writ_core::now_unix() < half {
            continue;
        }
        let minted = {
            let ca = state.ca.read().unwrap_or_else(|p| p.into_inner());
            mint_server_svid(&ca, &state.cfg)
        };
        match minted {
            Ok((chain, key, window)) => match state.server_tls.update(&chain, key.pkcs8_der()) {
                Ok(()) => {
                    *state
                        .server_svid_expiry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = window;
                    state.metrics.x509_signed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(expires_at = window.1, "server SVID rotated");
                }
                Err(e) => tracing::error!(error = %e, "cannot install new server SVID"),
            },
            Err(e) => tracing::error!(error = %e, "cannot mint server SVID"),
        }
    }
}

async fn token_prune_loop(state: Arc<ServerState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(300)).await;
        match state.store.prune_join_tokens(writ_core::now_unix()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "expired join tokens removed"),
            Err(e) => tracing::warn!(error = %e, "cannot prune join tokens"),
        }
    }
}
