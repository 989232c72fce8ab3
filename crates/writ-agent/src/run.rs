//! Starting and stopping the agent: bind the Workload API socket (public) and the admin socket
//! (private, in another directory), start the session loop, serve.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use writ_core::Bundle;
use writ_proto::v1 as pb;
use writ_proto::v1::agent_admin_server::{AgentAdmin, AgentAdminServer};
use writ_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use writ_tls::socket::{bind, Access};

use crate::config::AgentConfig;
use crate::conn::{accept_loop, workload_incoming, Attestation};
use crate::state::{AgentError, AgentState};
use crate::view::WorkloadView;
use crate::workload_api::{TasksApi, WorkloadApi};
use crate::workload_attest::KindFilter;
use writ_proto::task::tasks_server::TasksServer;

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
        let (agent_id, expires) = self.state.identity_summary().unwrap_or_default();
        let c = self.state.view.read();
        let now = writ_core::now_unix();
        let earliest = c.svids.values().map(|s| s.expires_at).min().unwrap_or(0);
        let without = c
            .servable(now)
            .iter()
            .filter(|e| {
                c.svids
                    .get(e.id.as_str())
                    .is_none_or(|s| s.expires_at <= now)
            })
            .count() as u64;
        Ok(Response::new(pb::AgentHealthResponse {
            earliest_svid_expiry: earliest,
            entries_without_svid: without,
            agent_id,
            connected: self.state.view.is_connected(),
            entries: c.entry_count() as u64,
            svids: c.svids.len() as u64,
            agent_svid_expires_at: expires,
            revision: c.revision,
            deliveries_pending: self.state.view.deliveries.pending() as u64,
            deliveries_dropped: self.state.view.deliveries.dropped(),
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
    let attestors = crate::workload_attest::build(&cfg.workload_attestors)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let node_attestor: Arc<dyn crate::node_attest::NodeAttestorClient> = Arc::from(
        cfg.node_attestor
            .build()
            .map_err(|e| AgentError::Config(e.to_string()))?,
    );
    raise_nofile_limit();
    let limits = cfg.workload_limits;
    let state = AgentState::new(cfg, bootstrap, node_attestor)?;
    let kinds_view = state.view.clone();
    let attestation = Arc::new(Attestation {
        attestors,
        kinds: Arc::new(move || -> Box<dyn KindFilter + Send> {
            Box::new(CacheKinds(kinds_view.clone()))
        }),
    });
    let (stop, stop_rx) = watch::channel(false);
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = vec![
        tokio::spawn(state.clone().run()),
        tokio::spawn(state.view.deliveries.clone().run_writer()),
    ];
    let wl = SpiffeWorkloadApiServer::new(WorkloadApi::new(state.view.clone()))
        .max_decoding_message_size(64 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    // Task identities share the socket (and the kernel attestation) but not the SPIFFE
    // service: `writ.task.v1.Tasks` is writ's own.
    let task_api = TasksServer::new(TasksApi::new(state.view.clone()))
        .max_decoding_message_size(64 * 1024)
        .max_encoding_message_size(4 * 1024 * 1024);
    let rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(32)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(wl)
            .add_service(task_api)
            .serve_with_incoming_shutdown(
                workload_incoming(workload_listener, limits, attestation),
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
                accept_loop(admin_listener, "agent admin", Some),
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
        self.state.view.notify();
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

/// The selector kinds the agent's cached entries use, read when a connection is attested.
struct CacheKinds(Arc<WorkloadView>);

impl KindFilter for CacheKinds {
    fn wants(&self, kind: &str) -> bool {
        self.0.read().uses_selector_kind(kind)
    }
}

/// Raises the soft limit on open descriptors to the hard limit: every workload connection and
/// every stream to the server is a descriptor, and the usual soft limit (1024) is far below
/// what the connection caps allow. (Go raises it the same way at start.)
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!(error = %e, "cannot raise the open-file limit");
        }
    }
}
