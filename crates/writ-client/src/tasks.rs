//! Task identities over the agent's socket (`writ.task.v1.Tasks`), typed.
//!
//! Errors keep the agent's gRPC code: Unavailable means the server cannot be reached now (the
//! agent answers at once, never hangs), PermissionDenied that the caller may not (no
//! delegation, or policy), InvalidArgument that it asked for more than it may.

use crate::proof::WitCredential;
use crate::workload::{connect_tasks, ClientError, TasksClient};
use writ_proto::task as tk;

/// Why a task call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The socket could not be reached.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The agent (or its server) refused.
    #[error("{}: {}", .0.code(), .0.message())]
    Refused(#[from] tonic::Status),
    /// The answer lacked something it must carry.
    #[error("the agent's answer is incomplete: {0}")]
    Incomplete(&'static str),
    /// The WIT-SVID key could not be read.
    #[error(transparent)]
    Key(#[from] writ_ca::CaError),
}

/// Which credentials a task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want(u8);

impl Want {
    /// An X509-SVID (with its key and the trust bundle).
    pub const X509: Want = Want(1);
    /// A JWT-SVID for the task's audiences.
    pub const JWT: Want = Want(2);
    /// A WIT-SVID bound to a key made for the task.
    pub const WIT: Want = Want(4);

    fn names(self) -> Vec<String> {
        [(1, "x509"), (2, "jwt"), (4, "wit")]
            .into_iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| n.to_owned())
            .collect()
    }
}

impl std::ops::BitOr for Want {
    type Output = Want;
    fn bitor(self, o: Want) -> Want {
        Want(self.0 | o.0)
    }
}

/// A started task and its credentials.
#[derive(Debug, Clone)]
pub struct StartedTask {
    /// ID, SPIFFE ID, owner, purpose, audiences, times, state.
    pub task: tk::TaskInfo,
    /// X509-SVID chain (DER, leaf first), its PKCS#8 key, the bundle (DER); empty if not asked.
    pub x509_svid: Vec<u8>,
    /// The X509-SVID's private key (PKCS#8 DER).
    pub x509_svid_key: Vec<u8>,
    /// The trust bundle's CA certificates (DER, concatenated).
    pub bundle: Vec<u8>,
    /// The JWT-SVID; empty if not asked.
    pub jwt_svid: String,
    /// The WIT-SVID with its key, if asked.
    pub wit: Option<WitCredential>,
}

/// The task service of one agent.
#[derive(Debug, Clone)]
pub struct Tasks {
    client: TasksClient,
}

impl Tasks {
    /// Connects to the agent at `addr` (`unix:///path`), or `SPIFFE_ENDPOINT_SOCKET`.
    pub async fn connect(addr: Option<&str>) -> Result<Self, TaskError> {
        Ok(Tasks {
            client: connect_tasks(addr).await?,
        })
    }

    /// Starts a task for `purpose`, for `ttl_secs` (0: as long as allowed), with JWT-SVID
    /// `audiences` (empty: all it may have).
    pub async fn start(
        &mut self,
        purpose: &str,
        ttl_secs: i64,
        audiences: &[&str],
        want: Want,
    ) -> Result<StartedTask, TaskError> {
        self.start_with(tk::StartTaskRequest {
            purpose: purpose.to_owned(),
            ttl: ttl_secs,
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            want: want.names(),
            ..Default::default()
        })
        .await
    }

    /// Starts a sub-task of the running task `parent` (it only narrows).
    pub async fn start_sub(
        &mut self,
        parent: &str,
        purpose: &str,
        ttl_secs: i64,
        want: Want,
    ) -> Result<StartedTask, TaskError> {
        self.start_with(tk::StartTaskRequest {
            purpose: purpose.to_owned(),
            ttl: ttl_secs,
            want: want.names(),
            parent_task_id: parent.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Starts a task from a full request.
    pub async fn start_with(
        &mut self,
        req: tk::StartTaskRequest,
    ) -> Result<StartedTask, TaskError> {
        let r = self.client.start_task(req).await?.into_inner();
        let wit = if r.wit_svid.is_empty() {
            None
        } else {
            Some(WitCredential::new(r.wit_svid, &r.wit_svid_key)?)
        };
        Ok(StartedTask {
            task: r.task.ok_or(TaskError::Incomplete("task"))?,
            x509_svid: r.x509_svid,
            x509_svid_key: r.x509_svid_key,
            bundle: r.bundle,
            jwt_svid: r.jwt_svid,
            wit,
        })
    }

    /// Ends task `id` (and its sub-tasks); returns it and how many credentials were revoked.
    pub async fn end(&mut self, id: &str, reason: &str) -> Result<(tk::TaskInfo, u32), TaskError> {
        let r = self
            .client
            .end_task(tk::EndTaskRequest {
                task_id: id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner();
        Ok((r.task.ok_or(TaskError::Incomplete("task"))?, r.revoked))
    }

    /// The caller's tasks (running, and ended in the last day).
    pub async fn list(&mut self) -> Result<Vec<tk::TaskInfo>, TaskError> {
        Ok(self
            .client
            .list_tasks(tk::ListTasksRequest {})
            .await?
            .into_inner()
            .tasks)
    }

    /// Has the agent check a WIT-SVID and its proof for `audience` (keys, revocation, replay);
    /// returns the SPIFFE ID that proved itself.
    pub async fn validate_wit(
        &mut self,
        wit: &str,
        wpt: &str,
        audience: &str,
    ) -> Result<String, TaskError> {
        Ok(self
            .client
            .validate_wit(tk::ValidateWitRequest {
                wit_svid: wit.to_owned(),
                wpt: wpt.to_owned(),
                audience: audience.to_owned(),
            })
            .await?
            .into_inner()
            .spiffe_id)
    }
}
