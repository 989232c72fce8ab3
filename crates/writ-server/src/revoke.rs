//! The revocation flow: revoking X509-SVIDs (by serial, SPIFFE ID or entry) and JWT-SVIDs (by
//! `jti`), keeping the list durable, and publishing it: a CRL signed by the active CA, and the
//! revoked serials and `jti`s that agents act on (they drop revoked SVIDs at once, and their
//! `ValidateJWTSVID` refuses revoked tokens).
//!
//! What was issued is known from the audit journal (`x509.issued`, `jwt.issued`): a serial or
//! `jti` the journal never saw is refused as unknown, and revoking by SPIFFE ID or entry takes
//! every outstanding (unexpired) credential it lists.
//!
//! Invariants: a revocation is durable (store, fsync) before it is acknowledged or published;
//! entries leave the list once the credential has expired (it is no longer valid anyway); a
//! CRL's number only grows (it is the signing time in milliseconds, kept above the last one);
//! a CRL is re-signed well before its `nextUpdate` and whenever the active CA changes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use writ_audit::{kinds, Actor, NewRecord, Record};
use writ_ca::crl::{Reason, Revoked as CrlEntry};
use writ_store::{AuditQuery, StoreError};

use crate::audit::AuditError;
use crate::state::{unpoison, ServerState};

/// How long a CRL is valid (`nextUpdate - thisUpdate`); it is re-signed at half that.
pub(crate) const CRL_LIFETIME: i64 = 3600;
/// Longest reason text.
const MAX_REASON: usize = 1024;
/// Most credentials one revoke call may take (a SPIFFE ID with more is refused whole).
const MAX_PER_CALL: usize = 100_000;

/// Why a revocation was refused. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RevokeError {
    /// No reason, or an oversized one.
    #[error("a reason is required (1 to {MAX_REASON} bytes)")]
    BadReason,
    /// The request named nothing, or more than one thing.
    #[error("name exactly one of serial, spiffe_id, entry_id")]
    BadTarget,
    /// The journal is off, so writ cannot know what it issued.
    #[error("revocation needs the audit journal (it is how writ knows what it issued); it is disabled by [audit] enabled = false")]
    NoJournal,
    /// The journal never saw this serial or `jti`.
    #[error("no {what} `{id}` was issued by this server")]
    Unknown {
        /// `X509-SVID serial` or `JWT-SVID jti`.
        what: &'static str,
        /// The value.
        id: String,
    },
    /// It expired already: there is nothing to revoke.
    #[error("{what} `{id}` expired already")]
    Expired {
        /// What.
        what: &'static str,
        /// The value.
        id: String,
    },
    /// Already revoked.
    #[error("{what} `{id}` is already revoked ({reason})")]
    AlreadyRevoked {
        /// What.
        what: &'static str,
        /// The value.
        id: String,
        /// The reason it was revoked with.
        reason: String,
    },
    /// A SPIFFE ID or entry without outstanding credentials.
    #[error("no outstanding unrevoked X509-SVIDs for {0}")]
    NothingOutstanding(String),
    /// Too many credentials for one call.
    #[error("{0} outstanding credentials is over the limit of {MAX_PER_CALL} for one call")]
    TooMany(usize),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Signing the CRL failed.
    #[error("signing the CRL: {0}")]
    Ca(#[from] writ_ca::CaError),
    /// The stored list does not decode.
    #[error("the stored revocation list is corrupt: {0}")]
    Corrupt(String),
}

/// One revoked credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Revoked {
    /// Its SPIFFE ID.
    pub(crate) spiffe_id: String,
    /// When it expires (unix seconds); it leaves the list after.
    pub(crate) expires_at: i64,
    /// When it was revoked.
    pub(crate) revoked_at: i64,
    /// The operator's reason.
    pub(crate) reason: String,
    /// The CRL reason code.
    pub(crate) code: Reason,
}

/// The durable list: serial (lowercase hex) or `jti` -> revocation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RevocationList {
    /// Revoked X509-SVIDs.
    pub(crate) x509: BTreeMap<String, Revoked>,
    /// Revoked JWT-SVIDs.
    pub(crate) jwt: BTreeMap<String, Revoked>,
}

impl RevocationList {
    /// Reads the stored list (empty when none).
    pub(crate) fn load(store: &dyn writ_store::Store) -> Result<Self, RevokeError> {
        match store.get_revocations()? {
            None => Ok(RevocationList::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| RevokeError::Corrupt(e.to_string())),
        }
    }

    /// Adds what `other` has and this list lacks; true when something was added.
    fn merge(&mut self, other: &RevocationList) -> bool {
        let mut added = false;
        for (mine, theirs) in [(&mut self.x509, &other.x509), (&mut self.jwt, &other.jwt)] {
            for (k, v) in theirs {
                if !mine.contains_key(k) {
                    mine.insert(k.clone(), v.clone());
                    added = true;
                }
            }
        }
        added
    }

    fn prune(&mut self, now: i64) {
        self.x509.retain(|_, r| r.expires_at > now);
        self.jwt.retain(|_, r| r.expires_at > now);
    }
}

/// What is published with the bundles: to agents (serials, `jti`s) and to workloads (the CRL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// CRL of the active CA, DER (empty until the first is signed).
    pub crl: Vec<u8>,
    /// Revoked serials (lowercase hex).
    pub serials: Vec<String>,
    /// Revoked `jti`s with their expiry.
    pub jwts: Vec<(String, i64)>,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One X509-SVID.
    Serial(String),
    /// Every outstanding X509-SVID of a SPIFFE ID.
    SpiffeId(String),
    /// Every outstanding X509-SVID (and JWT-SVID) of an entry.
    Entry(String),
    /// Those of an entry issued to one agent (a banned node's).
    EntryOfAgent {
        /// The entry.
        entry: String,
        /// The agent's SPIFFE ID.
        agent: String,
    },
    /// Everything issued to a task (X509-SVIDs and JWT-SVIDs).
    Task(String),
}

/// The revocation state the server holds.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    list: tokio::sync::Mutex<RevocationList>,
    last_crl_number: AtomicU64,
}

impl Revocations {
    /// From the stored list.
    pub(crate) fn new(list: RevocationList) -> Self {
        Revocations {
            list: tokio::sync::Mutex::new(list),
            last_crl_number: AtomicU64::new(0),
        }
    }
}

/// An issued credential found in the journal.
struct Issued {
    id: String,
    spiffe_id: String,
    expires_at: i64,
}

fn check_reason(reason: &str) -> Result<(), RevokeError> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(RevokeError::BadReason);
    }
    Ok(())
}

/// Whether a record of kind `got` is a credential of kind `want`: WIT-SVIDs are tokens
/// named by `jti` like JWT-SVIDs, revoked, reported and validated the same way.
pub(crate) fn token_kind_matches(want: &str, got: &str) -> bool {
    want == got || (want == kinds::JWT_ISSUED && got == kinds::WIT_ISSUED)
}

impl ServerState {
    /// Issued credentials of `kind` the journal lists for `query`.
    fn issued(&self, query: AuditQuery<'_>, kind: &str) -> Result<Vec<Issued>, RevokeError> {
        self.issued_to(query, kind, None)
    }

    /// [`ServerState::issued`], only what was issued to `agent` when given.
    fn issued_to(
        &self,
        query: AuditQuery<'_>,
        kind: &str,
        agent: Option<&str>,
    ) -> Result<Vec<Issued>, RevokeError> {
        if !self.cfg.audit_enabled {
            return Err(RevokeError::NoJournal);
        }
        let keep = |r: &Record| {
            token_kind_matches(kind, &r.kind)
                && agent.is_none_or(|a| r.actor.id.as_deref() == Some(a))
        };
        let recs = self.audit.scan(query, 0, MAX_PER_CALL + 1, &keep)?;
        Ok(recs
            .into_iter()
            .filter_map(|r| {
                let (id, exp) = if kind == kinds::X509_ISSUED {
                    (r.serial?, r.details.get("not_after")?.as_i64()?)
                } else {
                    (r.jti?, r.details.get("exp")?.as_i64()?)
                };
                Some(Issued {
                    id,
                    spiffe_id: r.spiffe_id.unwrap_or_default(),
                    expires_at: exp,
                })
            })
            .collect())
    }

    /// Revokes X509-SVIDs (and, for an entry, its JWT-SVIDs too); returns what was revoked.
    pub(crate) async fn revoke_x509(
        &self,
        target: Target,
        reason: &str,
        actor: Actor,
    ) -> Result<Vec<(String, Revoked)>, RevokeError> {
        check_reason(reason)?;
        let now = writ_core::now_unix();
        let (issued, jwts, single) = match &target {
            Target::Serial(s) => {
                let s = s.to_ascii_lowercase();
                (
                    self.issued(AuditQuery::Serial(&s), kinds::X509_ISSUED)?,
                    Vec::new(),
                    Some(s),
                )
            }
            Target::SpiffeId(id) => (
                self.issued(AuditQuery::SpiffeId(id), kinds::X509_ISSUED)?,
                Vec::new(),
                None,
            ),
            Target::Entry(e) => (
                self.issued(AuditQuery::Entry(e), kinds::X509_ISSUED)?,
                self.issued(AuditQuery::Entry(e), kinds::JWT_ISSUED)?,
                None,
            ),
            Target::EntryOfAgent { entry, agent } => (
                self.issued_to(AuditQuery::Entry(entry), kinds::X509_ISSUED, Some(agent))?,
                self.issued_to(AuditQuery::Entry(entry), kinds::JWT_ISSUED, Some(agent))?,
                None,
            ),
            Target::Task(t) => (
                self.issued(AuditQuery::Task(t), kinds::X509_ISSUED)?,
                self.issued(AuditQuery::Task(t), kinds::JWT_ISSUED)?,
                None,
            ),
        };
        if let Some(s) = &single {
            if issued.is_empty() {
                return Err(RevokeError::Unknown {
                    what: "X509-SVID serial",
                    id: s.clone(),
                });
            }
            if issued.iter().all(|i| i.expires_at <= now) {
                return Err(RevokeError::Expired {
                    what: "X509-SVID serial",
                    id: s.clone(),
                });
            }
        }
        if issued.len() + jwts.len() > MAX_PER_CALL {
            return Err(RevokeError::TooMany(issued.len() + jwts.len()));
        }
        let code = Reason::parse(reason.trim());
        let mut list = self.revocations.list.lock().await;
        if let Some(s) = &single {
            if let Some(r) = list.x509.get(s) {
                return Err(RevokeError::AlreadyRevoked {
                    what: "X509-SVID serial",
                    id: s.clone(),
                    reason: r.reason.clone(),
                });
            }
        }
        let mut next = list.clone();
        next.prune(now);
        let mut out = Vec::new();
        let mut add = |map: &mut BTreeMap<String, Revoked>, i: Issued, kind: &'static str| {
            if i.expires_at <= now || map.contains_key(&i.id) {
                return;
            }
            let r = Revoked {
                spiffe_id: i.spiffe_id,
                expires_at: i.expires_at,
                revoked_at: now,
                reason: reason.trim().to_owned(),
                code,
            };
            map.insert(i.id.clone(), r.clone());
            out.push((kind, i.id, r));
        };
        for i in issued {
            add(&mut next.x509, i, "x509");
        }
        for i in jwts {
            add(&mut next.jwt, i, "jwt");
        }
        if out.is_empty() {
            let what = match &target {
                Target::Serial(s) => format!("serial `{s}`"),
                Target::SpiffeId(id) => format!("`{id}`"),
                Target::Entry(e) => format!("entry `{e}`"),
                Target::EntryOfAgent { entry, agent } => {
                    format!("entry `{entry}` on agent `{agent}`")
                }
                Target::Task(t) => format!("task `{t}`"),
            };
            return Err(RevokeError::NothingOutstanding(what));
        }
        self.commit(&mut list, next, &out, &actor).await?;
        Ok(out.into_iter().map(|(_, id, r)| (id, r)).collect())
    }

    /// Revokes one JWT-SVID by `jti`.
    pub(crate) async fn revoke_jwt(
        &self,
        jti: &str,
        reason: &str,
        actor: Actor,
    ) -> Result<(String, Revoked), RevokeError> {
        check_reason(reason)?;
        let now = writ_core::now_unix();
        let issued = self.issued(AuditQuery::Jti(jti), kinds::JWT_ISSUED)?;
        let Some(i) = issued.into_iter().max_by_key(|i| i.expires_at) else {
            return Err(RevokeError::Unknown {
                what: "JWT-SVID jti",
                id: jti.to_owned(),
            });
        };
        if i.expires_at <= now {
            return Err(RevokeError::Expired {
                what: "JWT-SVID jti",
                id: jti.to_owned(),
            });
        }
        let mut list = self.revocations.list.lock().await;
        if let Some(r) = list.jwt.get(jti) {
            return Err(RevokeError::AlreadyRevoked {
                what: "JWT-SVID jti",
                id: jti.to_owned(),
                reason: r.reason.clone(),
            });
        }
        let mut next = list.clone();
        next.prune(now);
        let r = Revoked {
            spiffe_id: i.spiffe_id,
            expires_at: i.expires_at,
            revoked_at: now,
            reason: reason.trim().to_owned(),
            code: Reason::parse(reason.trim()),
        };
        next.jwt.insert(jti.to_owned(), r.clone());
        let out = [("jwt", jti.to_owned(), r.clone())];
        self.commit(&mut list, next, &out, &actor).await?;
        Ok((jti.to_owned(), r))
    }

    /// Makes `next` durable, journals each revocation, then swaps it in and publishes.
    async fn commit(
        &self,
        list: &mut RevocationList,
        next: RevocationList,
        revoked: &[(&'static str, String, Revoked)],
        actor: &Actor,
    ) -> Result<(), RevokeError> {
        // Merged with the stored list under the store's lock: another server may have revoked
        // something since we last read it, and both must stay revoked.
        let next = self.store_merged(next)?;
        *list = next;
        let published = self.sign_published(list)?;
        self.publish_revocations(published);
        let records = revoked
            .iter()
            .map(|(kind, id, r)| {
                let rec = NewRecord::new(kinds::SVID_REVOKED, actor.clone())
                    .spiffe_id(&r.spiffe_id)
                    .detail("reason", r.reason.clone())
                    .detail("expires_at", r.expires_at);
                if *kind == "x509" {
                    rec.serial(id.clone())
                } else {
                    rec.jti(id.clone())
                }
            })
            .collect();
        self.audit.record(records).await?;
        self.metrics
            .revoked
            .fetch_add(revoked.len() as u64, Ordering::Relaxed);
        tracing::warn!(count = revoked.len(), "credentials revoked");
        Ok(())
    }

    /// A fresh CRL (and lists) for `list`, signed by the active CA now.
    fn sign_published(&self, list: &RevocationList) -> Result<Published, RevokeError> {
        let now = writ_core::now_unix();
        let entries = list
            .x509
            .iter()
            .filter(|(_, r)| r.expires_at > now)
            .filter_map(|(serial, r)| {
                Some(CrlEntry {
                    serial: hex::decode(serial).ok()?,
                    revoked_at: r.revoked_at,
                    reason: r.code,
                })
            })
            .collect::<Vec<_>>();
        let number = {
            let t = (now as u64).saturating_mul(1000);
            let prev = self.revocations.last_crl_number.load(Ordering::Relaxed);
            let n = t.max(prev + 1);
            self.revocations.last_crl_number.store(n, Ordering::Relaxed);
            n
        };
        let ca = self.ca.read().unwrap_or_else(unpoison).x509_authority();
        let crl = ca.crl(&entries, number, now, now + CRL_LIFETIME)?;
        Ok(Published {
            crl,
            serials: list
                .x509
                .iter()
                .filter(|(_, r)| r.expires_at > now)
                .map(|(s, _)| s.clone())
                .collect(),
            jwts: list
                .jwt
                .iter()
                .filter(|(_, r)| r.expires_at > now)
                .map(|(j, r)| (j.clone(), r.expires_at))
                .collect(),
        })
    }

    fn publish_revocations(&self, p: Published) {
        let p = Arc::new(p);
        self.bundles.send_modify(|b| b.revocations = p);
    }

    /// Re-signs the CRL (and drops expired revocations): at start, periodically, and when the
    /// active CA changes.
    pub(crate) async fn refresh_revocations(&self) -> Result<(), RevokeError> {
        let list = self.revocations.list.lock().await;
        let published = self.sign_published(&list)?;
        self.publish_revocations(published);
        Ok(())
    }

    /// `list` merged with the stored list, stored (atomically across servers) and returned.
    fn store_merged(&self, list: RevocationList) -> Result<RevocationList, RevokeError> {
        let mut bad = None;
        let stored = self.store.update_revocations(&mut |cur| {
            let mut merged = list.clone();
            if let Some(b) = cur {
                match serde_json::from_slice::<RevocationList>(b) {
                    Ok(theirs) => {
                        merged.merge(&theirs);
                    }
                    Err(e) => bad = Some(e.to_string()),
                }
            }
            // Encoding a map of strings cannot fail; an empty list is the safe fallback.
            serde_json::to_vec(&merged).unwrap_or_else(|_| b"{}".to_vec())
        })?;
        if let Some(e) = bad {
            tracing::error!(error = %e, "the stored revocation list did not decode; replaced by this server's");
        }
        serde_json::from_slice(&stored).map_err(|e| RevokeError::Corrupt(e.to_string()))
    }

    /// Takes in what other servers revoked (shared stores): the stored list is merged into
    /// ours and published.
    pub(crate) async fn merge_stored_revocations(&self) -> Result<(), RevokeError> {
        let stored = RevocationList::load(self.store.as_ref())?;
        let mut list = self.revocations.list.lock().await;
        let mut merged = list.clone();
        if merged.merge(&stored) {
            *list = merged;
            let published = self.sign_published(&list)?;
            self.publish_revocations(published);
        }
        Ok(())
    }

    /// The list and current CRL, for `writ bundle show --crl` and `GetCrl`.
    pub(crate) async fn revocation_snapshot(&self) -> (RevocationList, Arc<Published>) {
        let list = self.revocations.list.lock().await.clone();
        (list, self.bundles.borrow().revocations.clone())
    }
}
