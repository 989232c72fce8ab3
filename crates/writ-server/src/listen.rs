//! The two listeners and the gRPC servers on them: agents over TLS on `listen`, operators on the
//! private admin socket.
//!
//! Invariants: a listener takes a connection slot *before* accepting, so at the cap new
//! connections wait in the kernel's backlog; TLS handshakes run in their own tasks and are cut
//! off after [`HANDSHAKE_TIMEOUT`]; agent connections silent for [`IDLE_TIMEOUT`] are closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use writ_proto::v1::admin_server::AdminServer;
use writ_proto::v1::node_server::NodeServer;
use writ_tls::socket::bind_private;
use writ_tls::{any_id, SpiffeClientVerifier};

use crate::conn::{AcceptBackoff, Guarded};
use crate::grpc::admin::AdminApi;
use crate::grpc::edge::Edge;
use crate::grpc::node::NodeApi;
use crate::run::ServerError;
use crate::state::ServerState;

/// Largest gRPC message the server accepts.
pub(crate) const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Most concurrent HTTP/2 streams one agent connection may hold (SETTINGS_MAX_CONCURRENT_STREAMS;
/// streams over it are refused). An agent holds a sync stream, a bundle stream, two signing
/// batches, a renewal and one JWT mint per waiting workload call; its HTTP/2 client queues
/// requests past the limit instead of failing. Without a cap one connection held 5,000 streams.
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// The same for the admin socket (one CLI command is one or a few calls).
pub(crate) const MAX_ADMIN_STREAMS_PER_CONNECTION: u32 = 64;

/// How long a TLS handshake may take before the connection is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An agent connection from which nothing was read for this long is closed. Live peers are
/// never that quiet: the server pings every 30 s and a peer must answer.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Most connections open at once on the admin socket.
pub(crate) const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long an HTTP/2 keepalive ping may go unanswered before the connection is closed (pings
/// go every 30 s): a peer that vanished without closing frees its descriptor.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running listener: its accept loop and its gRPC server.
pub(crate) struct Listener {
    /// The accept loop (aborted at shutdown).
    pub(crate) accept: JoinHandle<()>,
    /// The gRPC server (drains at shutdown).
    pub(crate) serve: JoinHandle<Result<(), ServerError>>,
}

async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Serves `writ.v1.Node` to agents over TLS on `listener` until `stop` turns true.
pub(crate) fn serve_agents(
    state: &Arc<ServerState>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> Result<Listener, ServerError> {
    let tls = writ_tls::server_config(
        state.server_tls.clone(),
        SpiffeClientVerifier::new(state.trust.clone(), any_id(), true),
    )?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (conn_tx, conn_rx) = mpsc::channel(64);
    // At most `max_agent_connections` open (a permit is taken before accepting, so at the cap
    // new connections wait in the kernel's backlog); accept errors back off (see `conn`).
    let slots = Arc::new(Semaphore::new(state.cfg.max_agent_connections));
    let accept = tokio::spawn(async move {
        let mut backoff = AcceptBackoff::new("agent TLS");
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => {
                    backoff.succeeded();
                    c
                }
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            };
            // gRPC frames are small; without this, Nagle + delayed ACK add ~40 ms to replies.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = conn_tx.clone();
            // Handshakes run in their own tasks so a slow client cannot stall the accept loop,
            // and are cut off after a few seconds so one that never completes frees its slot.
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let conn = Guarded::new(s, permit, Some(IDLE_TIMEOUT));
                        let _ = tx.send(Ok::<_, std::io::Error>(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    let edge = Edge::node(state);
    let svc = NodeServer::new(NodeApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let serve = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .layer(edge)
            .add_service(svc)
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), until_stopped(stop))
            .await
            .map_err(ServerError::from)
    });
    Ok(Listener { accept, serve })
}

/// Serves `writ.v1.Admin` on the private admin socket until `stop` turns true.
pub(crate) fn serve_admin(
    state: &Arc<ServerState>,
    stop: watch::Receiver<bool>,
) -> Result<Listener, ServerError> {
    let listener = bind_private(&state.cfg.admin_socket)?;
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let accept = tokio::spawn(async move {
        let mut backoff = AcceptBackoff::new("admin socket");
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((s, _)) => {
                    backoff.succeeded();
                    // Operator calls can run long without the client sending anything, so
                    // no idle cut-off here (the socket is private to the server's user).
                    let conn = Guarded::new(s, permit, None);
                    if tx.send(Ok::<_, std::io::Error>(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => backoff.failed(&e).await,
            }
        }
    });
    let edge = Edge::admin(state);
    let svc = AdminServer::new(AdminApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(64 * 1024 * 1024);
    let serve = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_ADMIN_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(edge)
            .add_service(svc)
            .serve_with_incoming_shutdown(ReceiverStream::new(rx), until_stopped(stop))
            .await
            .map_err(ServerError::from)
    });
    Ok(Listener { accept, serve })
}
