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
/// Most entries one `ListTasks` asks about.
const MAX_LIST_ENTRIES: usize = 64;
/// Task starts pause while the revocation list holds this many credentials. Every ended task
/// adds its credentials to the list (until they expire), and the list is pushed whole to every
/// agent: a workload starting and ending tasks in a loop must not be able to grow it past
/// what one push carries (about 60 bytes an entry, well under the 4 MiB message limit).
pub(crate) const MAX_REVOKED_FOR_TASKS: usize = 20_000;

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
    /// The revocation list is too long for more tasks now.
    #[error("task starts are paused: {0} revoked credentials are outstanding (at most {MAX_REVOKED_FOR_TASKS}); they leave the list as they expire")]
    Paused(usize),
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
        let outstanding = {
            let b = self.bundles.borrow();
            b.revocations.serials.len() + b.revocations.jwts.len()
        };
        if outstanding >= MAX_REVOKED_FOR_TASKS {
            return Err(TaskError::Paused(outstanding));
        }
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
            revoked: false,
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
                if let Err(d) = self.store.delete_tasks(std::slice::from_ref(&id)) {
                    tracing::warn!(task = %id, error = %d, "could not drop a task that failed to start");
                }
                return Err(e);
            }
        };
        self.refuse_if_ended(&id, Actor::agent(node.spiffe_id.as_str()))
            .await?;
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
        // Credentials end when the task does (not a signing delay later).
        let (id, spiffe_id) = (&task.id, &task.spiffe_id);
        let ttl = task.expires_at - writ_core::now_unix();
        if ttl <= 0 {
            return Err(TaskError::Invalid(
                "the task's lifetime ran out while it was being started".into(),
            ));
        }
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
                // A failure here leaves the task ended but not `revoked`: the sweeper retries.
                let n = self.revoke_task(t, actor.clone()).await?;
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

    /// After a task's credentials were issued and journalled: was it ended (by its owner, its
    /// parent's end or the sweeper) meanwhile? Then that end's revocation may have run before
    /// the credentials were in the journal: revoke them now, keep the ended record (issuing
    /// wrote the active one over it), and refuse, so nothing is handed out.
    async fn refuse_if_ended(&self, id: &str, actor: Actor) -> Result<(), TaskError> {
        let ended = self
            .tasks
            .tasks
            .lock()
            .await
            .get(id)
            .filter(|t| t.ended_at.is_some())
            .cloned();
        if let Some(t) = ended {
            self.store.put_task(&t)?;
            self.revoke_task(&t, actor).await?;
            return Err(TaskError::NotActive {
                id: id.to_owned(),
                state: "ended",
            });
        }
        Ok(())
    }

    /// Revokes everything issued under `t` (idempotent) and marks it `revoked`; returns how
    /// many credentials this call revoked.
    async fn revoke_task(&self, t: &Task, actor: Actor) -> Result<usize, TaskError> {
        let n = match self
            .revoke_x509(
                Target::Task(t.id.clone()),
                &format!("cessation_of_operation (task ended: {})", t.end_reason),
                actor,
            )
            .await
        {
            Ok(r) => r.len(),
            Err(RevokeError::NothingOutstanding(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut book = self.tasks.tasks.lock().await;
        if let Some(b) = book.get_mut(&t.id) {
            b.revoked = true;
            // Not flushed: after a crash the sweeper revokes again, which changes nothing.
            self.store.put_task(b)?;
        }
        Ok(n)
    }

    /// The tasks of `entry_ids` started through `node`, newest first.
    pub(crate) async fn list_tasks(
        &self,
        node: &AttestedNode,
        entry_ids: &[String],
    ) -> Result<Vec<Task>, TaskError> {
        if entry_ids.len() > MAX_LIST_ENTRIES {
            return Err(TaskError::Invalid(format!(
                "at most {MAX_LIST_ENTRIES} entries per ListTasks"
            )));
        }
        let book = self.tasks.tasks.lock().await;
        let mut v: Vec<Task> = book
            .values()
            .filter(|t| t.agent == node.spiffe_id && entry_ids.contains(&t.entry_id))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        v.truncate(MAX_LIST);
        Ok(v)
    }

    /// Ends the running tasks whose starting identity is gone, and forgets tasks ended or
    /// expired more than [`KEEP_ENDED`] ago.
    pub(crate) async fn sweep_tasks(&self) -> Result<(), TaskError> {
        let now = writ_core::now_unix();
        let (running, stale, unrevoked): (Vec<Task>, Vec<String>, Vec<Task>) = {
            let book = self.tasks.tasks.lock().await;
            let running = book
                .values()
                .filter(|t| t.state(now) == writ_core::TaskState::Active)
                .cloned()
                .collect();
            // Ended, but their revocation did not complete (a store or journal failure, or a
            // crash): try again. A moment's grace lets an end in progress finish first.
            let unrevoked = book
                .values()
                .filter(|t| !t.revoked && t.ended_at.is_some_and(|e| e + 2 < now))
                .cloned()
                .collect();
            let stale = book
                .values()
                .filter(|t| t.ended_at.unwrap_or(t.expires_at) + KEEP_ENDED < now)
                .map(|t| t.id.clone())
                .collect();
            (running, stale, unrevoked)
        };
        for t in unrevoked {
            self.revoke_task(&t, Actor::server()).await?;
        }
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
            // Still held, and still within what the entry delegates now (a delegation
            // withdrawn or narrowed ends the tasks it no longer covers).
            let held = node.is_some_and(|n| {
                self.authorized_for(&n, &[t.entry_id.as_str()])
                    .is_ok_and(|v| {
                        v.iter().any(|e: &Arc<Entry>| {
                            e.id == t.entry_id
                                && e.delegate.as_ref().is_some_and(|d| {
                                    t.expires_at - t.created_at <= d.max_ttl as i64
                                        && t.audiences.iter().all(|a| d.audiences.contains(a))
                                })
                        })
                    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;
    use writ_core::{Delegation, Selector, TrustDomain};

    /// Review finding H1: a task ended while it was being started (its owner's EndTask, its
    /// parent's end, the sweeper) had its end's revocation run before its credentials were
    /// journalled, so they were never revoked and were handed out. The interleaving is forced
    /// here: the task holds its place, is ended (revoking nothing yet), then issued. The
    /// start must then revoke what was issued and refuse; before the fix it returned the
    /// credentials, on no deny-list.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_ended_while_it_starts_hands_out_nothing_unrevoked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::ServerConfig::parse(&format!(
            "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n",
            dir.path().join("run/admin.sock").display(),
            dir.path().join("data").display(),
        ))
        .unwrap();
        let srv = crate::start(cfg).await.unwrap();
        let st = srv.state.clone();
        let td = TrustDomain::new("example.org").unwrap();
        let node = AttestedNode {
            spiffe_id: td.id("/writ/agent/join_token/t").unwrap(),
            attestor: "join_token".into(),
            selectors: Vec::new(),
            cert_serial: "01".into(),
            cert_not_after: i64::MAX,
            prev_cert_serial: String::new(),
            aliases: Vec::new(),
            banned: false,
            created_at: 0,
            revision: 0,
        };
        st.store.put_node(node.clone()).unwrap();
        let mut e = Entry::new(
            td.id("/orchestrator").unwrap(),
            node.spiffe_id.clone(),
            vec![Selector::parse("unix:uid:1").unwrap()],
        );
        e.delegate = Some(Box::new(Delegation {
            max_ttl: 600,
            max_active: 10,
            audiences: vec!["tool".into()],
        }));
        let e = Arc::new(st.create_entry(e).await.unwrap());
        let now = writ_core::now_unix();
        let id = new_task_id().unwrap();
        let task = Task {
            id: id.clone(),
            spiffe_id: SpiffeId::parse(&format!("{}/task/{id}", e.spiffe_id)).unwrap(),
            owner: e.spiffe_id.clone(),
            entry_id: e.id.clone(),
            parent_task_id: None,
            agent: node.spiffe_id.clone(),
            purpose: "race".into(),
            audiences: vec!["tool".into()],
            created_at: now,
            expires_at: now + 300,
            ended_at: None,
            end_reason: String::new(),
            revoked: false,
        };
        st.tasks.tasks.lock().await.insert(id.clone(), task.clone());
        let ended = st
            .end_tasks(std::slice::from_ref(&id), "owner ended it", Actor::server())
            .await
            .unwrap();
        assert_eq!(ended[0].1, 0, "nothing was issued yet");
        let req = pb::StartTaskRequest {
            jwt: true,
            ..Default::default()
        };
        let (_, jwt, _) = st.issue_task(&node, &e, &task, &req).await.unwrap();
        let jti = jwt.unwrap().jti;
        let err = st
            .refuse_if_ended(&id, Actor::agent(node.spiffe_id.as_str()))
            .await
            .unwrap_err();
        assert!(matches!(err, TaskError::NotActive { .. }), "{err}");
        let (list, _) = st.revocation_snapshot().await;
        assert!(
            list.jwt.contains_key(&jti),
            "the racing credential is revoked"
        );
        let stored = st.store.list_tasks().unwrap();
        assert!(
            stored.iter().all(|t| t.ended_at.is_some()),
            "the ended record is kept"
        );
        srv.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
