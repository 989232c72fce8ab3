//! Policy-as-code at every mint: the Cedar policy set in force (`[policy]`), reloaded on
//! `SIGHUP` and when a file changes, and the decision each issuance asks for.
//!
//! With no `[policy]` every matching entry is issued as before. With one, every X509-SVID and
//! JWT-SVID issuance (agent batches, agent JWTs, operator mints) is one Cedar request
//! (`writ-policy`); a denial is PermissionDenied naming the deciding policies, journalled
//! (`policy.denied`), counted (`writ_policy_denied_total`) and logged once per entry and
//! minute. The entries sent to agents are filtered by the same decision (`mint_x509`), so a
//! reload that denies an identity withdraws it from its agent at once and the workload's
//! stream ends with PermissionDenied.
//!
//! Invariants: a reload swaps the whole set atomically and only after it parsed and validated;
//! a set that fails leaves the previous one in force and says why (file, line, policy).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use writ_audit::{kinds, Actor, NewRecord};
use writ_core::{AttestedNode, Entry};
use writ_policy::{Action, Decision, MintRequest, PolicyBundle, PolicyError, Principal};

use crate::state::{unpoison, Event, ServerState};

/// `[policy]`: files and/or a directory of `*.cedar` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// Files, in order.
    pub files: Vec<PathBuf>,
    /// A directory whose `*.cedar` files are loaded (name order).
    pub dir: Option<PathBuf>,
}

/// The set in force and where it came from.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) bundle: PolicyBundle,
    pub(crate) loaded_at: i64,
    stamps: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

/// The server's policy state.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    source: Option<PolicySource>,
    current: RwLock<Option<Arc<Loaded>>>,
    /// Last denial log line per entry (or operator), to log once per minute.
    last_logged: Mutex<HashMap<String, i64>>,
}

fn stamps(files: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok();
            (
                f.clone(),
                m.as_ref().and_then(|m| m.modified().ok()),
                m.map_or(0, |m| m.len()),
            )
        })
        .collect()
}

fn load(source: &PolicySource) -> Result<Loaded, PolicyError> {
    let files = writ_policy::policy_files(&source.files, source.dir.as_deref())?;
    let bundle = PolicyBundle::load(&files)?;
    Ok(Loaded {
        stamps: stamps(&files),
        bundle,
        loaded_at: writ_core::now_unix(),
    })
}

impl Policies {
    /// Loads the configured set (start-up: a bad set stops the server).
    pub(crate) fn open(source: Option<PolicySource>) -> Result<Self, PolicyError> {
        let current = match &source {
            Some(s) => Some(Arc::new(load(s)?)),
            None => None,
        };
        Ok(Policies {
            source,
            current: RwLock::new(current),
            last_logged: Mutex::new(HashMap::new()),
        })
    }

    /// The set in force, if policies are configured.
    pub(crate) fn current(&self) -> Option<Arc<Loaded>> {
        self.current.read().unwrap_or_else(unpoison).clone()
    }

    /// Whether a file of the set in force (or the directory's file list) changed.
    fn changed_on_disk(&self) -> bool {
        let (Some(source), Some(cur)) = (&self.source, self.current()) else {
            return false;
        };
        let files =
            writ_policy::policy_files(&source.files, source.dir.as_deref()).unwrap_or_default();
        stamps(&files) != cur.stamps
    }
}

/// The principal for `entry` served through `node`.
pub(crate) fn workload(entry: &Entry, node: &AttestedNode) -> Principal {
    Principal::Workload {
        entry_id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.to_string(),
        parent_id: entry.parent_id.to_string(),
        selectors: entry.selectors.iter().map(|s| s.to_string()).collect(),
        owner: entry.owner.clone(),
        purpose: entry.purpose.clone(),
        expires_at: entry.expires_at,
        break_glass: entry.break_glass,
        break_glass_reason: entry.break_glass_reason.clone(),
        node_id: node.spiffe_id.to_string(),
        node_attestor: node.attestor.clone(),
        node_selectors: node.selectors.iter().map(|s| s.to_string()).collect(),
    }
}

/// A denial: the deciding policies (forbids, or none when no permit applied) and errors, and
/// the `policy.denied` record for the caller to journal.
#[derive(Debug, Clone, thiserror::Error)]
#[error("denied by policy ({})", describe(.0))]
pub(crate) struct Denied(pub(crate) Decision, pub(crate) Option<Box<NewRecord>>);

impl Denied {
    /// Attaches the journal record.
    pub(crate) fn with_record(mut self, r: NewRecord) -> Self {
        self.1 = Some(Box::new(r));
        self
    }
}

fn describe(d: &Decision) -> String {
    let mut s = if d.policies.is_empty() {
        "no policy permits it".to_owned()
    } else {
        format!("forbidden by {}", d.policies.join(", "))
    };
    if !d.errors.is_empty() {
        s.push_str(&format!("; errors: {}", d.errors.join("; ")));
    }
    s
}

impl ServerState {
    /// Decides `req` under the set in force (allowed when no policy is configured). A denial
    /// is counted and logged (once per `key` and minute); journalling is the caller's, with
    /// [`ServerState::denial_record`], so it lands with the request's other records.
    pub(crate) fn decide(&self, req: &MintRequest, key: &str) -> Result<(), Denied> {
        let Some(cur) = self.policy.current() else {
            return Ok(());
        };
        let d = req.decide(&cur.bundle);
        if d.allowed {
            return Ok(());
        }
        self.metrics.policy_denied.fetch_add(1, Ordering::Relaxed);
        let now = writ_core::now_unix();
        let log = {
            let mut last = self.policy.last_logged.lock().unwrap_or_else(unpoison);
            if last.len() > 100_000 {
                last.clear();
            }
            match last.get(key) {
                Some(t) if now - t < 60 => false,
                _ => {
                    last.insert(key.to_owned(), now);
                    true
                }
            }
        };
        if log {
            tracing::warn!(key, spiffe_id = %req.spiffe_id, action = req.action.name(), policies = ?d.policies, errors = ?d.errors, "issuance denied by policy");
        }
        Err(Denied(d, None))
    }

    /// The `policy.denied` record of a denial.
    pub(crate) fn denial_record(&self, actor: Actor, req: &MintRequest, d: &Denied) -> NewRecord {
        let mut r = NewRecord::new(kinds::POLICY_DENIED, actor)
            .spiffe_id(&req.spiffe_id)
            .detail("action", req.action.name())
            .detail("policies", d.0.policies.clone())
            .detail("errors", d.0.errors.clone())
            .detail("ttl", req.ttl);
        if !req.audiences.is_empty() {
            r = r.detail("audience", req.audiences.clone());
        }
        if let Principal::Workload { entry_id, .. } = &req.principal {
            r = r.entry(entry_id.clone());
        }
        r
    }

    /// Whether the set in force lets `node` be issued X509-SVIDs of `entry` (what agents are
    /// sent). No policy: yes. Not counted or logged: this is a filter, not a request.
    pub(crate) fn policy_permits_entry(
        &self,
        cur: &Loaded,
        entry: &Entry,
        node: &AttestedNode,
    ) -> bool {
        let req = MintRequest {
            action: Action::MintX509,
            principal: workload(entry, node),
            spiffe_id: entry.spiffe_id.to_string(),
            ttl: self.x509_ttl(entry),
            audiences: Vec::new(),
            now: writ_core::now_unix(),
            purpose: String::new(),
        };
        req.decide(&cur.bundle).allowed
    }

    /// The X509-SVID lifetime an entry gets.
    pub(crate) fn x509_ttl(&self, e: &Entry) -> i64 {
        if e.x509_svid_ttl > 0 {
            e.x509_svid_ttl as i64
        } else {
            self.cfg.default_x509_svid_ttl
        }
    }

    /// Reloads the configured set. `Ok(true)` when a new set is in force; on error the
    /// previous set stays and the error says why.
    pub(crate) fn reload_policy(&self) -> Result<bool, PolicyError> {
        let Some(source) = &self.policy.source else {
            return Ok(false);
        };
        let next = load(source)?;
        let same = self
            .policy
            .current()
            .is_some_and(|c| c.bundle.hash() == next.bundle.hash());
        let hash = next.bundle.hash().to_owned();
        let n = next.bundle.len();
        *self.policy.current.write().unwrap_or_else(unpoison) = Some(Arc::new(next));
        if same {
            return Ok(false);
        }
        tracing::info!(policies = n, hash = %hash, "policy set reloaded");
        // Every agent's authorised set is filtered by policy: have every sync stream look again.
        let _ = self.events.send(Event::PolicyChanged);
        Ok(true)
    }
}

/// Reloads on `SIGHUP` and when a policy file changes (checked every 2 s).
pub(crate) async fn reload_loop(state: Arc<ServerState>) {
    if state.policy.source.is_none() {
        return;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let by_signal = tokio::select! {
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => false,
        };
        if !by_signal && !state.policy.changed_on_disk() {
            continue;
        }
        if let Err(e) = state.reload_policy() {
            tracing::error!(error = %e, "policy reload refused; the previous set stays in force");
            // Remember the broken files' stamps so the error is logged once per change.
            if let Some(cur) = state.policy.current() {
                let files = state
                    .policy
                    .source
                    .as_ref()
                    .and_then(|s| writ_policy::policy_files(&s.files, s.dir.as_deref()).ok())
                    .unwrap_or_default();
                let again = Loaded {
                    bundle: cur.bundle.clone(),
                    loaded_at: cur.loaded_at,
                    stamps: stamps(&files),
                };
                *state.policy.current.write().unwrap_or_else(unpoison) = Some(Arc::new(again));
            }
        }
    }
}

/// What `writ policy check --request` sends.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckRequest {
    action: Action,
    spiffe_id: String,
    #[serde(default)]
    entry_id: Option<String>,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    now: Option<i64>,
    #[serde(default)]
    purpose: String,
}

impl ServerState {
    /// Builds the request `writ policy check` describes: the principal from the entry (and its
    /// node, when named) or the operator `uid`.
    pub(crate) fn check_request(&self, json: &str, caller_uid: u32) -> Result<MintRequest, String> {
        let c: CheckRequest =
            serde_json::from_str(json).map_err(|e| format!("request is not valid: {e}"))?;
        let principal = match &c.entry_id {
            Some(id) => {
                let e = self.get_entry(id).map_err(|e| format!("entry_id: {e}"))?;
                let node = match &c.node_id {
                    Some(n) => {
                        let nid =
                            writ_core::SpiffeId::parse(n).map_err(|e| format!("node_id: {e}"))?;
                        self.get_node(&nid).map_err(|e| format!("node_id: {e}"))?
                    }
                    None => AttestedNode {
                        spiffe_id: e.parent_id.clone(),
                        attestor: String::new(),
                        selectors: Vec::new(),
                        cert_serial: String::new(),
                        cert_not_after: 0,
                        prev_cert_serial: String::new(),
                        aliases: Vec::new(),
                        banned: false,
                        created_at: 0,
                        revision: 0,
                    },
                };
                workload(&e, &node)
            }
            None => Principal::Operator {
                uid: c.uid.unwrap_or(caller_uid),
            },
        };
        Ok(MintRequest {
            action: c.action,
            principal,
            spiffe_id: c.spiffe_id,
            ttl: c.ttl.unwrap_or(self.cfg.default_x509_svid_ttl),
            audiences: c.audiences,
            now: c.now.unwrap_or_else(writ_core::now_unix),
            purpose: c.purpose,
        })
    }
}
