//! `writ.task.v1.Tasks` on the Workload API socket: a workload starts, ends and lists task
//! identities of its own (see `writ-server`'s task flow for the rules the server enforces).
//!
//! The caller is identified exactly as for the Workload API (kernel attestation bound to the
//! connection). The agent picks the caller's entry that allows delegation, caps the task at the
//! caller's own X509-SVID expiry, makes the task's key here (the private key never leaves this
//! machine but to the caller), and asks the server. It never waits long: with no server
//! session StartTask fails at once with Unavailable, and a server that does not answer within
//! [`TASK_DEADLINE`] gets the same.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use writ_core::{Entry, SpiffeId};
use writ_proto::convert::task_info;
use writ_proto::task as tk;
use writ_proto::task::tasks_server::Tasks;
use writ_proto::v1 as pb;

use super::{caller, delivery, jti_of, Caller};
use crate::cache::leaf_serial;
use crate::view::WorkloadView;

/// The longest a task call waits for the server.
pub(crate) const TASK_DEADLINE: Duration = Duration::from_secs(3);

/// The task service.
pub(crate) struct TasksApi {
    view: Arc<WorkloadView>,
}

impl std::fmt::Debug for TasksApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TasksApi")
    }
}

/// What a workload wants for a task.
struct Want {
    x509: bool,
    jwt: bool,
    wit: bool,
}

fn parse_want(want: &[String]) -> Result<Want, Status> {
    let mut w = Want {
        x509: want.is_empty(),
        jwt: false,
        wit: false,
    };
    for x in want.iter().flat_map(|x| x.split(',')).map(str::trim) {
        match x {
            "x509" => w.x509 = true,
            "jwt" => w.jwt = true,
            "wit" => w.wit = true,
            "" => {}
            other => {
                return Err(Status::invalid_argument(format!(
                    "want: `{other}` is not one of x509, jwt, wit"
                )))
            }
        }
    }
    Ok(w)
}

/// The server's refusal as the workload should see it: its own mistakes and refusals keep
/// their code; anything else means the server could not do it now.
fn from_server(s: Status) -> Status {
    match s.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::Unimplemented => s,
        _ => Status::unavailable(format!("task server: {}", s.message())),
    }
}

impl TasksApi {
    /// A service over the agent state.
    pub(crate) fn new(view: Arc<WorkloadView>) -> Self {
        TasksApi { view }
    }

    /// The caller's entries that allow delegation (optionally only those granting `want`).
    fn delegating(&self, c: &Caller, want: Option<&SpiffeId>) -> Vec<Entry> {
        let cache = self.view.read();
        let mut v: Vec<Entry> = cache
            .matching(&c.selectors, writ_core::now_unix())
            .into_iter()
            .filter(|e| e.delegate.is_some() && want.is_none_or(|w| &e.spiffe_id == w))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.spiffe_id.as_str().cmp(b.spiffe_id.as_str()));
        v
    }

    fn node(&self) -> Result<crate::node_client::Node, Status> {
        self.view.jwt.client().ok_or_else(|| {
            Status::unavailable("the agent is not connected to its server: no task can start now")
        })
    }
}

async fn deadline<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(TASK_DEADLINE, f)
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "the server did not answer within {}s",
                TASK_DEADLINE.as_secs()
            ))
        })?
        .map(tonic::Response::into_inner)
        .map_err(from_server)
}

#[tonic::async_trait]
impl Tasks for TasksApi {
    async fn start_task(
        &self,
        req: Request<tk::StartTaskRequest>,
    ) -> Result<Response<tk::StartTaskResponse>, Status> {
        let c = caller(&req).await?;
        let r = req.into_inner();
        let want = parse_want(&r.want)?;
        let wanted = if r.spiffe_id.is_empty() {
            None
        } else {
            Some(
                SpiffeId::parse(&r.spiffe_id)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
            )
        };
        let mut entries = self.delegating(&c, wanted.as_ref());
        let entry = match entries.len() {
            0 => {
                return Err(Status::permission_denied(
                    "no identity of this workload may start tasks (no matching entry has --delegate)",
                ))
            }
            1 => entries.remove(0),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "this workload has several identities that may start tasks; name one with spiffe_id ({})",
                    entries
                        .iter()
                        .map(|e| e.spiffe_id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        // A task never outlives the identity that starts it.
        let not_after = self
            .view
            .read()
            .svids
            .get(entry.id.as_str())
            .map(|s| s.expires_at)
            .filter(|t| *t > writ_core::now_unix())
            .ok_or_else(|| {
                Status::unavailable("this workload's own SVID is not issued yet; try again")
            })?;
        let mut node = self.node()?;
        let key = if want.x509 {
            Some(
                tokio::task::spawn_blocking(|| {
                    writ_ca::PrivateKey::generate(writ_ca::KeyType::EcP256)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?,
            )
        } else {
            None
        };
        let csr = match &key {
            Some(k) => k.csr_der().map_err(|e| Status::internal(e.to_string()))?,
            None => Vec::new(),
        };
        let wit_key = if want.wit {
            Some(
                writ_ca::PrivateKey::generate(writ_ca::KeyType::EcP256)
                    .map_err(|e| Status::internal(e.to_string()))?,
            )
        } else {
            None
        };
        let wit_public_key = match &wit_key {
            Some(k) => k
                .public_point()
                .map_err(|e| Status::internal(e.to_string()))?,
            None => Vec::new(),
        };
        let resp = deadline(node.start_task(pb::StartTaskRequest {
            entry_id: entry.id.clone(),
            parent_task_id: r.parent_task_id,
            purpose: r.purpose,
            ttl: r.ttl,
            audiences: r.audiences,
            csr,
            jwt: want.jwt,
            not_after,
            wit_public_key,
        }))
        .await?;
        let task = resp
            .task
            .ok_or_else(|| Status::unavailable("the server answered without a task"))?;
        if let Some(leaf) = resp.cert_chain.first() {
            self.view.deliveries.record(delivery(
                &c.identity.caller,
                "svid.delivered",
                leaf_serial(leaf),
                String::new(),
                &task.spiffe_id,
                Vec::new(),
            ));
        }
        for token in [&resp.jwt, &resp.wit] {
            if let Some(jti) = jti_of(token) {
                self.view.deliveries.record(delivery(
                    &c.identity.caller,
                    "svid.delivered",
                    String::new(),
                    jti,
                    &task.spiffe_id,
                    Vec::new(),
                ));
            }
        }
        let wit_svid_key = match (&wit_key, resp.wit.is_empty()) {
            (Some(k), false) => {
                writ_ca::wit::private_jwk(k).map_err(|e| Status::internal(e.to_string()))?
            }
            _ => String::new(),
        };
        let bundle = self.view.read().own_bundle.x509_der_concat();
        Ok(Response::new(tk::StartTaskResponse {
            task: Some(task_info(&task)),
            x509_svid: resp.cert_chain.concat(),
            x509_svid_key: key.map(|k| k.pkcs8_der().to_vec()).unwrap_or_default(),
            bundle: if want.x509 { bundle } else { Vec::new() },
            jwt_svid: resp.jwt,
            wit_svid: resp.wit,
            wit_svid_key,
        }))
    }

    async fn end_task(
        &self,
        req: Request<tk::EndTaskRequest>,
    ) -> Result<Response<tk::EndTaskResponse>, Status> {
        let c = caller(&req).await?;
        let r = req.into_inner();
        if !writ_core::is_task_id(&r.task_id) {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a task ID (32 lowercase hex digits)",
                r.task_id
            )));
        }
        let entries = self.delegating(&c, None);
        if entries.is_empty() {
            return Err(Status::permission_denied(
                "no identity of this workload may start (or end) tasks",
            ));
        }
        let mut node = self.node()?;
        let mut last = Status::not_found(format!("no task `{}` of this workload", r.task_id));
        for e in entries {
            match deadline(node.end_task(pb::EndTaskRequest {
                entry_id: e.id.clone(),
                task_id: r.task_id.clone(),
                reason: r.reason.clone(),
            }))
            .await
            {
                Ok(resp) => {
                    return Ok(Response::new(tk::EndTaskResponse {
                        task: resp.task.as_ref().map(task_info),
                        revoked: resp.revoked,
                    }))
                }
                Err(s) if s.code() == Code::NotFound => last = s,
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    async fn validate_wit(
        &self,
        req: Request<tk::ValidateWitRequest>,
    ) -> Result<Response<tk::ValidateWitResponse>, Status> {
        // Open to any local process, like ValidateJWTSVID: checking needs no identity.
        super::check_header(req.metadata())?;
        let r = req.get_ref();
        if r.audience.is_empty() || r.audience.len() > 2048 {
            return Err(Status::invalid_argument("audience must be 1 to 2048 bytes"));
        }
        let now = writ_core::now_unix();
        // Signatures are checked under the view's read lock only; the replay cache's lock is
        // held just for the insert.
        let checked = {
            let c = self.view.read();
            let keys = |td: &writ_core::TrustDomain, kid: &str| {
                c.bundle_for(td.as_str())
                    .and_then(|b| b.jwt_authority(kid))
                    .map(|a| a.public_key.clone())
            };
            let checked = writ_ca::wit::verify_wpt(&r.wit_svid, &r.wpt, &r.audience, now, keys)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            // A revoked WIT must not even use up a proof's jti.
            if let Some(jti) = checked.wit.claims.get("jti").and_then(|j| j.as_str()) {
                if c.revoked_jwts.contains_key(jti) {
                    return Err(Status::invalid_argument(format!(
                        "WIT-SVID `{jti}` has been revoked"
                    )));
                }
            }
            checked
        };
        {
            let mut replay = self
                .view
                .wpt_replay
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            writ_ca::wit::record_wpt(&checked, now, &mut replay)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if let (Some(info), Some(jti)) = (
            req.extensions().get::<crate::conn::WorkloadConnInfo>(),
            checked.wit.claims.get("jti").and_then(|j| j.as_str()),
        ) {
            self.view.deliveries.record(delivery(
                &info.identity.caller,
                "jwt.validated",
                String::new(),
                jti.to_owned(),
                checked.wit.spiffe_id.as_str(),
                vec![r.audience.clone()],
            ));
        }
        Ok(Response::new(tk::ValidateWitResponse {
            spiffe_id: checked.wit.spiffe_id.to_string(),
            claims_json: serde_json::Value::Object(checked.wit.claims).to_string(),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<tk::ListTasksRequest>,
    ) -> Result<Response<tk::ListTasksResponse>, Status> {
        let c = caller(&req).await?;
        let entry_ids: Vec<String> = self
            .delegating(&c, None)
            .into_iter()
            .map(|e| e.id)
            .collect();
        if entry_ids.is_empty() {
            return Ok(Response::new(tk::ListTasksResponse { tasks: Vec::new() }));
        }
        let mut node = self.node()?;
        let resp = deadline(node.list_tasks(pb::ListTasksRequest { entry_ids })).await?;
        Ok(Response::new(tk::ListTasksResponse {
            tasks: resp.tasks.iter().map(task_info).collect(),
        }))
    }
}
