//! The task flow: task identities started by a workload, through its agent, for one task
//! (`<the workload's SPIFFE ID>/task/<id>`), ended by it, by their TTL, or with the identity
//! that started them.
//!
//! Start: the agent must be authorised for the caller's entry now; the entry must allow
//! delegation; the task asks for no more than the entry's delegation (TTL, audiences, running
//! tasks) and, for a sub-task, no more than its parent task (TTL, audiences) and never reaches
//! past the identity that started it (the agent's `not_after`); policy decides `start_task`;
//! then the credentials are signed, the task is stored and journalled (`task.started`,
//! `x509.issued`, `jwt.issued`, all carrying the task ID and the parent entry; one fsync makes
//! both durable) before anything is returned.
//!
//! End: the task and every sub-task under it are marked ended (durably), what they hold is
//! revoked through the revocation flow (deny-list, CRL, pushed to every agent), and
//! `task.ended` is journalled. A sweeper ends, the same way, tasks whose starting identity is
//! gone: entry deleted or expired, agent banned or evicted, or the entry withdrawn from it.
//!
//! Invariants: a task's `expires_at` never exceeds its entry's expiry, its parent task's, or
//! the starting workload's SVID's; its audiences are a subset of what it could have; an ended
//! task is never revived.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SecureRandom;
use writ_audit::{kinds, Actor, NewRecord};
use writ_ca::MintedSvid;
use writ_core::task::{check_purpose, MAX_TASK_DEPTH};
use writ_core::{AttestedNode, Entry, SpiffeId, Task};
use writ_proto::v1 as pb;

use crate::revoke::{RevokeError, Target};
use crate::signing::{MintedJwt, SignError};
use crate::state::ServerState;

/// Ended and expired tasks are kept (for `ListTasks` and `show`) this long, then forgotten.
const KEEP_ENDED: i64 = 24 * 3600;
/// How often the sweeper looks for tasks whose starting identity is gone, besides on every
/// entry change.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Most tasks one `ListTasks` answer carries.
const MAX_LIST: usize = 1000;

/// Why a task was not started or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    /// Malformed or over-wide request.
    #[error("{0}")]
    Invalid(String),
    /// The entry does not allow delegation.
    #[error("identity `{0}` may not start tasks: its entry has no delegation (writ entry update --delegate ...)")]
    NoDelegation(String),
    /// Too many running tasks.
    #[error("entry `{entry}` already has {active} running tasks (max_active {max})")]
    TooMany {
        /// The entry.
        entry: String,
        /// Running now.
        active: usize,
        /// Allowed.
        max: u32,
    },
    /// No such task for this caller.
    #[error("no task `{0}` of this workload")]
    NotFound(String),
    /// Not running any more.
    #[error("task `{id}` is {state}")]
    NotActive {
        /// The task.
        id: String,
        /// `ended` or `expired`.
        state: &'static str,
    },
    /// Tasks need the journal: it is how what a task holds is found and revoked.
    #[error("tasks need the audit journal (it is how a task's credentials are found and revoked); it is disabled by [audit] enabled = false")]
    NoJournal,
    /// Authorisation, policy, signing, store or journal.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// Revocation at the end.
    #[error(transparent)]
    Revoke(#[from] RevokeError),
}

impl From<writ_store::StoreError> for TaskError {
    fn from(e: writ_store::StoreError) -> Self {
        TaskError::Sign(SignError::Store(e))
    }
}

impl From<crate::audit::AuditError> for TaskError {
    fn from(e: crate::audit::AuditError) -> Self {
        TaskError::Sign(SignError::Audit(e))
    }
}

/// The tasks the server knows (running, and ended or expired in the last [`KEEP_ENDED`]).
#[derive(Debug, Default)]
pub(crate) struct TaskBook {
    tasks: tokio::sync::Mutex<HashMap<String, Task>>,
}

impl TaskBook {
    /// The book as stored.
    pub(crate) fn new(tasks: Vec<Task>) -> Self {
        TaskBook {
            tasks: tokio::sync::Mutex::new(tasks.into_iter().map(|t| (t.id.clone(), t)).collect()),
        }
    }
}

/// What a task was issued: X509-SVID, JWT-SVID, WIT-SVID, each if asked for.
type Issued = (
    Option<MintedSvid>,
    Option<MintedJwt>,
    Option<crate::wit::MintedWit>,
);

/// What a started task returns.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) task: Task,
    pub(crate) svid: Option<MintedSvid>,
    pub(crate) jwt: Option<MintedJwt>,
    pub(crate) wit: Option<crate::wit::MintedWit>,
}

fn new_task_id() -> Result<String, TaskError> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| TaskError::Invalid("no randomness for a task ID".into()))?;
    Ok(hex::encode(b))
}

impl ServerState {
    /// Starts a task for the workload of `node` holding `req.entry_id`.
    pub(crate) async fn start_task(
        &self,
        node: &AttestedNode,
        req: pb::StartTaskRequest,
    ) -> Result<Started, TaskError> {
        if !self.cfg.audit_enabled {
            return Err(TaskError::NoJournal);
        }
        check_purpose(&req.purpose).map_err(TaskError::Invalid)?;
        let entry = self
            .authorized_for(node, &[req.entry_id.as_str()])?
            .pop()
            .ok_or_else(|| {
                TaskError::Sign(SignError::NotAuthorised {
                    agent: node.spiffe_id.clone(),
                    entry: req.entry_id.clone(),
                })
            })?;
        let Some(deleg) = entry.delegate.clone() else {
            return Err(TaskError::NoDelegation(entry.spiffe_id.to_string()));
        };
        if req.ttl < 0 {
            return Err(TaskError::Invalid("ttl must not be negative".into()));
        }
        let now = writ_core::now_unix();
        let mut book = self.tasks.tasks.lock().await;
        // What the task may have: the entry's delegation, narrowed by the parent task.
        let mut cap_end = now + deleg.max_ttl as i64;
        let mut may_audiences = deleg.audiences.clone();
        let mut owner = entry.spiffe_id.clone();
        let mut parent_task = None;
        if !req.parent_task_id.is_empty() {
            let p = book
                .get(&req.parent_task_id)
                .filter(|p| p.entry_id == entry.id && p.agent == node.spiffe_id)
                .ok_or_else(|| TaskError::NotFound(req.parent_task_id.clone()))?;
            let state = p.state(now);
            if state != writ_core::TaskState::Active {
                return Err(TaskError::NotActive {
                    id: p.id.clone(),
                    state: state.as_str(),
                });
            }
            if p.depth() >= MAX_TASK_DEPTH {
                return Err(TaskError::Invalid(format!(
                    "task `{}` is {MAX_TASK_DEPTH} deep: no further sub-tasks",
                    p.id
                )));
            }
            cap_end = cap_end.min(p.expires_at);
            may_audiences.retain(|a| p.audiences.contains(a));
            owner = p.spiffe_id.clone();
            parent_task = Some(p.id.clone());
        }
        if let Some(e) = entry.expires_at {
            cap_end = cap_end.min(e);
        }
        if req.not_after > 0 {
            cap_end = cap_end.min(req.not_after);
        }
        let cap = cap_end - now;
        if cap <= 0 {
            return Err(TaskError::Invalid(
                "the identity starting the task has no lifetime left to give".into(),
            ));
        }
        let ttl = if req.ttl == 0 { cap } else { req.ttl };
        if ttl > cap {
            return Err(TaskError::Invalid(format!(
                "ttl {ttl}s is longer than the {cap}s this task may have (the entry's max_ttl, its parent task and the starting identity's own expiry)"
            )));
        }
        let audiences = if req.audiences.is_empty() {
            may_audiences.clone()
        } else {
            if let Some(a) = req.audiences.iter().find(|a| !may_audiences.contains(a)) {
                return Err(TaskError::Invalid(format!(
                    "audience `{a}` is not one this task may have (allowed: {may_audiences:?})"
                )));
            }
            let mut a = req.audiences.clone();
            a.sort();
            a.dedup();
            a
        };
        if req.jwt && audiences.is_empty() {
            return Err(TaskError::Invalid(
                "a JWT-SVID needs an audience, and this task may have none (the entry's delegation lists no audiences)".into(),
            ));
        }
        let active = book
            .values()
            .filter(|t| t.entry_id == entry.id && t.state(now) == writ_core::TaskState::Active)
            .count();
        if active >= deleg.max_active as usize {
            return Err(TaskError::TooMany {
                entry: entry.id.clone(),
                active,
                max: deleg.max_active,
            });
        }
        let id = new_task_id()?;
        let spiffe_id = SpiffeId::parse(&format!("{owner}/task/{id}"))
            .map_err(|e| TaskError::Invalid(format!("task identity: {e}")))?;
        let actor = Actor::agent(node.spiffe_id.as_str());
        let decision = writ_policy::MintRequest {
            action: writ_policy::Action::StartTask,
            principal: crate::policy::workload(&entry, node),
            spiffe_id: spiffe_id.to_string(),
            ttl,
            audiences: audiences.clone(),
            now,
            purpose: req.purpose.clone(),
        };
        if let Err(d) = self.decide(&decision, &entry.id) {
            drop(book);
            let rec = self
                .denial_record(actor, &decision, &d)
                .task(id.clone())
                .entry(entry.id.clone());
            self.audit.note(vec![rec]).await;
            return Err(SignError::Denied(d).into());
        }
        let task = Task {
            id: id.clone(),
            spiffe_id: spiffe_id.clone(),
            owner,
            entry_id: entry.id.clone(),
            parent_task_id: parent_task,
            agent: node.spiffe_id.clone(),
            purpose: req.purpose.clone(),
            audiences,
            created_at: now,
            expires_at: now + ttl,
            ended_at: None,
            end_reason: String::new(),
        };
        // The task holds its place (max_active) from here; signing and the fsyncs run without
        // the lock, and a failure gives the place back.
        book.insert(id.clone(), task.clone());
        drop(book);
        let issued = self.issue_task(node, &entry, &task, &req).await;
        let (svid, jwt, wit) = match issued {
            Ok(x) => x,
            Err(e) => {
                self.tasks.tasks.lock().await.remove(&id);
                return Err(e);
            }
        };
        tracing::info!(task = %task.id, spiffe_id = %task.spiffe_id, ttl, purpose = %task.purpose, "task started");
        Ok(Started {
            task,
            svid,
            jwt,
            wit,
        })
    }

    /// Signs what a started task asked for, re-checks authorisation, stores the task and
    /// journals its start and issuance (durable before it returns).
    async fn issue_task(
        &self,
        node: &AttestedNode,
        entry: &Arc<Entry>,
        task: &Task,
        req: &pb::StartTaskRequest,
    ) -> Result<Issued, TaskError> {
        let (id, spiffe_id, ttl) = (&task.id, &task.spiffe_id, task.expires_at - task.created_at);
        let actor = Actor::agent(node.spiffe_id.as_str());
        let svid = if req.csr.is_empty() {
            None
        } else {
            Some(self.mint_from_csr(&req.csr, spiffe_id, ttl, &[])?)
        };
        let jwt = if req.jwt {
            Some(self.mint_jwt(spiffe_id, &task.audiences, ttl)?)
        } else {
            None
        };
        let wit = if req.wit_public_key.is_empty() {
            None
        } else {
            let cnf = crate::wit::cnf_key(&req.wit_public_key)?;
            Some(self.mint_wit(spiffe_id, &cnf, ttl)?)
        };
        // Still authorised now (not deleted, changed or withdrawn while signing)?
        if !self
            .still_authorised(node, std::slice::from_ref(entry))?
            .iter()
            .all(|ok| *ok)
        {
            return Err(SignError::Withdrawn {
                entry: entry.id.clone(),
                agent: node.spiffe_id.clone(),
            }
            .into());
        }
        self.store.put_task(task)?;
        let mut recs = vec![started_record(actor.clone(), task)];
        if let Some(s) = &svid {
            recs.push(
                crate::audit::events::x509_issued(actor.clone(), entry, &s.serial_hex, s.not_after)
                    .spiffe_id(spiffe_id)
                    .task(id.clone()),
            );
        }
        if let Some(j) = &jwt {
            recs.push(
                crate::audit::events::jwt_issued(
                    actor.clone(),
                    spiffe_id.as_str(),
                    Some(&entry.id),
                    &j.jti,
                    &task.audiences,
                    j.exp,
                )
                .task(id.clone()),
            );
        }
        if let Some(w) = &wit {
            recs.push(
                crate::audit::events::wit_issued(
                    actor,
                    spiffe_id.as_str(),
                    &entry.id,
                    &w.jti,
                    w.exp,
                )
                .task(id.clone()),
            );
        }
        self.audit.record(recs).await?;
        Ok((svid, jwt, wit))
    }

    /// Ends task `task_id` of entry `entry_id` for the agent `node`; returns it and how many
    /// credentials were revoked (its sub-tasks' included).
    pub(crate) async fn end_task(
        &self,
        node: &AttestedNode,
        entry_id: &str,
        task_id: &str,
        reason: &str,
    ) -> Result<(Task, usize), TaskError> {
        let reason = if reason.trim().is_empty() {
            "task ended by its owner"
        } else {
            reason.trim()
        };
        if reason.len() > 256 || reason.chars().any(char::is_control) {
            return Err(TaskError::Invalid(
                "reason is longer than 256 bytes or has control characters".into(),
            ));
        }
        {
            let book = self.tasks.tasks.lock().await;
            let t = book
                .get(task_id)
                .filter(|t| t.entry_id == entry_id && t.agent == node.spiffe_id)
                .ok_or_else(|| TaskError::NotFound(task_id.to_owned()))?;
            let state = t.state(writ_core::now_unix());
            if state != writ_core::TaskState::Active {
                return Err(TaskError::NotActive {
                    id: t.id.clone(),
                    state: state.as_str(),
                });
            }
        }
        let actor = Actor::agent(node.spiffe_id.as_str());
        self.end_tasks(&[task_id.to_owned()], reason, actor)
            .await?
            .pop()
            .ok_or_else(|| TaskError::NotFound(task_id.to_owned()))
    }

    /// Ends each task of `ids` that is still active, with its sub-tasks: marks them ended
    /// (durably), revokes what they hold, journals `task.ended`. Returns the named tasks as
    /// ended, with the credentials revoked under each.
    async fn end_tasks(
        &self,
        ids: &[String],
        reason: &str,
        actor: Actor,
    ) -> Result<Vec<(Task, usize)>, TaskError> {
        let now = writ_core::now_unix();
        let mut out = Vec::new();
        for id in ids {
            // The task and every task under it, marked ended under the lock.
            let ended: Vec<Task> = {
                let mut book = self.tasks.tasks.lock().await;
                let Some(root) = book.get(id) else { continue };
                let prefix = format!("{}/", root.spiffe_id);
                let mut family: Vec<String> = book
                    .values()
                    .filter(|t| {
                        (t.id == *id || t.spiffe_id.as_str().starts_with(&prefix))
                            && t.ended_at.is_none()
                    })
                    .map(|t| t.id.clone())
                    .collect();
                family.sort();
                let mut ended = Vec::new();
                for fid in family {
                    let Some(t) = book.get_mut(&fid) else {
                        continue;
                    };
                    let mut next = t.clone();
                    next.ended_at = Some(now);
                    next.end_reason = reason.to_owned();
                    self.store.put_task(&next)?;
                    *t = next.clone();
                    ended.push(next);
                }
                ended
            };
            let mut revoked_here = 0;
            let mut recs = Vec::new();
            for t in &ended {
                let n = match self
                    .revoke_x509(
                        Target::Task(t.id.clone()),
                        &format!("cessation_of_operation (task ended: {reason})"),
                        actor.clone(),
                    )
                    .await
                {
                    Ok(r) => r.len(),
                    Err(RevokeError::NothingOutstanding(_)) => 0,
                    Err(e) => return Err(e.into()),
                };
                revoked_here += n;
                recs.push(
                    NewRecord::new(kinds::TASK_ENDED, actor.clone())
                        .spiffe_id(&t.spiffe_id)
                        .entry(t.entry_id.clone())
                        .task(t.id.clone())
                        .detail("reason", reason.to_owned())
                        .detail("revoked", n as u64),
                );
            }
            self.audit.record(recs).await?;
            if let Some(t) = ended.into_iter().find(|t| t.id == *id) {
                tracing::info!(task = %t.id, revoked = revoked_here, reason, "task ended");
                out.push((t, revoked_here));
            }
        }
        Ok(out)
    }

    /// The tasks of `entry_ids` started through `node`, newest first.
    pub(crate) async fn list_tasks(&self, node: &AttestedNode, entry_ids: &[String]) -> Vec<Task> {
        let book = self.tasks.tasks.lock().await;
        let mut v: Vec<Task> = book
            .values()
            .filter(|t| t.agent == node.spiffe_id && entry_ids.contains(&t.entry_id))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        v.truncate(MAX_LIST);
        v
    }

    /// Ends the running tasks whose starting identity is gone, and forgets tasks ended or
    /// expired more than [`KEEP_ENDED`] ago.
    pub(crate) async fn sweep_tasks(&self) -> Result<(), TaskError> {
        let now = writ_core::now_unix();
        let (running, stale): (Vec<Task>, Vec<String>) = {
            let book = self.tasks.tasks.lock().await;
            let running = book
                .values()
                .filter(|t| t.state(now) == writ_core::TaskState::Active)
                .cloned()
                .collect();
            let stale = book
                .values()
                .filter(|t| t.ended_at.unwrap_or(t.expires_at) + KEEP_ENDED < now)
                .map(|t| t.id.clone())
                .collect();
            (running, stale)
        };
        let mut lost = Vec::new();
        let mut nodes: HashMap<SpiffeId, Option<AttestedNode>> = HashMap::new();
        for t in running {
            let node = match nodes.get(&t.agent) {
                Some(n) => n.clone(),
                None => {
                    let n = self.store.get_node(&t.agent)?.filter(|n| !n.banned);
                    nodes.insert(t.agent.clone(), n.clone());
                    n
                }
            };
            let held = node.is_some_and(|n| {
                self.authorized_for(&n, &[t.entry_id.as_str()])
                    .is_ok_and(|v| v.iter().any(|e: &Arc<Entry>| e.id == t.entry_id))
            });
            if !held {
                lost.push(t.id);
            }
        }
        if !lost.is_empty() {
            self.end_tasks(
                &lost,
                "the identity that started it is gone (entry deleted, expired or withdrawn, or its agent banned or evicted)",
                Actor::server(),
            )
            .await?;
        }
        if !stale.is_empty() {
            self.store.delete_tasks(&stale)?;
            let mut book = self.tasks.tasks.lock().await;
            for id in &stale {
                book.remove(id);
            }
        }
        Ok(())
    }
}

/// `task.started`: everything fixed at creation.
fn started_record(actor: Actor, t: &Task) -> NewRecord {
    let mut r = NewRecord::new(kinds::TASK_STARTED, actor)
        .spiffe_id(&t.spiffe_id)
        .entry(t.entry_id.clone())
        .task(t.id.clone())
        .detail("owner", t.owner.to_string())
        .detail("purpose", t.purpose.clone())
        .detail("audiences", t.audiences.clone())
        .detail("created_at", t.created_at)
        .detail("expires_at", t.expires_at);
    if let Some(p) = &t.parent_task_id {
        r = r.detail("parent_task_id", p.clone());
    }
    r
}

/// Ends tasks whose starting identity is gone: on every entry or node change, and every
/// [`SWEEP_EVERY`] (expiry of entries happens without an event).
pub(crate) async fn sweep_loop(state: Arc<ServerState>) {
    let mut events = state.events.subscribe();
    loop {
        let wake = tokio::time::sleep(SWEEP_EVERY);
        tokio::select! {
            _ = wake => {}
            ev = events.recv() => match ev {
                Ok(crate::state::Event::Shutdown) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                _ => {}
            },
        }
        if let Err(e) = state.sweep_tasks().await {
            tracing::error!(error = %e, "task sweep failed");
        }
    }
}
