//! Starting and stopping the agent: bind the Workload API socket (public) and the admin socket
//! (private, in another directory), start the session loop, serve.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use writ_core::Bundle;
use writ_proto::v1 as pb;
use writ_proto::v1::agent_admin_server::{AgentAdmin, AgentAdminServer};
use writ_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use writ_tls::socket::{bind, Access};

use crate::agent::{AgentError, AgentState};
use crate::attestor::{UnixAttestor, WorkloadAttestor};
use crate::config::AgentConfig;
use crate::workload_api::WorkloadApi;

/// A started agent.
pub struct RunningAgent {
    /// Shared state.
    pub state: Arc<AgentState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunningAgent")
    }
}

struct Admin {
    state: Arc<AgentState>,
}

#[tonic::async_trait]
impl AgentAdmin for Admin {
    async fn health(
        &self,
        _r: Request<pb::AgentHealthRequest>,
    ) -> Result<Response<pb::AgentHealthResponse>, Status> {
        let (agent_id, expires) = {
            let id = self
                .state
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner());
            id.as_ref()
                .map(|i| (i.spiffe_id.to_string(), i.expires_at))
                .unwrap_or_default()
        };
        let c = self.state.cache.read().unwrap_or_else(|p| p.into_inner());
        let now = writ_core::now_unix();
        let earliest = c.svids.values().map(|s| s.expires_at).min().unwrap_or(0);
        let without = c
            .servable(now)
            .iter()
            .filter(|e| c.svids.get(&e.id).is_none_or(|s| s.expires_at <= now))
            .count() as u64;
        Ok(Response::new(pb::AgentHealthResponse {
            earliest_svid_expiry: earliest,
            entries_without_svid: without,
            agent_id,
            connected: self.state.connected.load(Ordering::Relaxed),
            entries: c.entries().len() as u64,
            svids: c.svids.len() as u64,
            agent_svid_expires_at: expires,
            revision: c.revision,
        }))
    }
}

/// Starts the agent. `bootstrap` is a trust bundle handed over in-process (`writ dev`); without
/// it the agent uses its persisted bundle or `trust_bundle_path`.
pub async fn start(
    cfg: AgentConfig,
    bootstrap: Option<Bundle>,
) -> Result<RunningAgent, AgentError> {
    let workload_listener =
        bind(&cfg.socket_path, Access::Public).map_err(|e| AgentError::Socket(e.to_string()))?;
    let admin_listener =
        bind(&cfg.admin_socket, Access::Private).map_err(|e| AgentError::Socket(e.to_string()))?;
    let attestors: Vec<Arc<dyn WorkloadAttestor>> =
        vec![Arc::new(UnixAttestor::new(cfg.unix_max_hash_bytes))];
    let state = AgentState::new(cfg, bootstrap)?;
    let (stop, stop_rx) = watch::channel(false);
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = vec![tokio::spawn(state.clone().run())];
    let wl = SpiffeWorkloadApiServer::new(WorkloadApi::new(state.clone(), attestors))
        .max_decoding_message_size(64 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(32)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(wl)
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(UnixListenerStream::new(workload_listener), |c| {
                    c.map(crate::authority::AuthorityFix::new)
                }),
                shutdown(rx),
            )
            .await
        {
            tracing::error!(error = %e, "Workload API server failed");
        }
    }));
    let admin = AgentAdminServer::new(Admin {
        state: state.clone(),
    });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(admin)
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(admin_listener),
                shutdown(stop_rx),
            )
            .await
        {
            tracing::error!(error = %e, "agent admin server failed");
        }
    }));
    tracing::info!(socket = %state.cfg.socket_path.display(), "Workload API listening");
    Ok(RunningAgent { state, stop, tasks })
}

impl RunningAgent {
    /// Stops serving, ends streams (at most `grace` for in-flight calls) and removes the sockets.
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!("agent shutting down");
        let _ = self.stop.send(true);
        // Ending the session loop drops every stream's sender; streams then finish.
        if let Some(first) = self.tasks.first() {
            first.abort();
        }
        self.state.generation.send_modify(|g| *g += 1);
        for t in self.tasks.into_iter().skip(1) {
            let abort = t.abort_handle();
            if tokio::time::timeout(grace, t).await.is_err() {
                abort.abort();
            }
        }
        let _ = std::fs::remove_file(&self.state.cfg.socket_path);
        let _ = std::fs::remove_file(&self.state.cfg.admin_socket);
    }
}
