//! Delivery records from agents: which workload process received which SVID, and which
//! JWT-SVIDs workloads validated. Each event is checked against the journal before it is
//! recorded: an agent may report deliveries only of credentials issued to it (so a rogue node
//! cannot write records about other nodes' SVIDs), and validations only of `jti`s this server
//! issued.

use writ_audit::{kinds, Actor, NewRecord, Record};
use writ_core::AttestedNode;
use writ_proto::v1 as pb;
use writ_store::AuditQuery;

use crate::audit::AuditError;
use crate::state::ServerState;

/// Most events in one report.
pub(crate) const MAX_REPORT: usize = 1000;
/// Longest string field of an event.
const MAX_FIELD: usize = 2048;

/// Why a report was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    /// Too many events.
    #[error("a report holds at most {MAX_REPORT} events, not {0}")]
    TooMany(usize),
    /// The journal failed (the agent keeps the batch and retries).
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl ServerState {
    /// Journals the acceptable events of `node`'s report; returns (recorded, refused).
    pub(crate) async fn record_deliveries(
        &self,
        node: &AttestedNode,
        events: Vec<pb::Delivery>,
    ) -> Result<(u32, u32), ReportError> {
        if events.len() > MAX_REPORT {
            return Err(ReportError::TooMany(events.len()));
        }
        let agent = node.spiffe_id.to_string();
        let mut records = Vec::new();
        let mut refused = 0u32;
        for d in events {
            match self.delivery_record(&agent, d) {
                Some(r) => records.push(r),
                None => refused += 1,
            }
        }
        if refused > 0 {
            tracing::warn!(agent = %agent, refused, "delivery records refused: not issued to this agent or malformed");
        }
        let n = records.len() as u32;
        self.audit.record(records).await?;
        Ok((n, refused))
    }

    fn delivery_record(&self, agent: &str, d: pb::Delivery) -> Option<NewRecord> {
        let fields = [&d.serial, &d.jti, &d.spiffe_id, &d.exe];
        if fields.iter().any(|f| f.len() > MAX_FIELD)
            || d.audience.len() > 16
            || d.audience.iter().any(|a| a.len() > 512)
        {
            return None;
        }
        let issued_to = |r: &Record| r.actor.id.as_deref() == Some(agent);
        let found = |q: AuditQuery<'_>, kind: &str, own: bool| {
            self.audit
                .scan(q, 0, 1, &|r: &Record| {
                    crate::revoke::token_kind_matches(kind, &r.kind) && (!own || issued_to(r))
                })
                .map(|v| v.into_iter().next())
                .ok()
                .flatten()
        };
        let (kind, issued) = match d.kind.as_str() {
            "svid.delivered" if !d.serial.is_empty() && d.jti.is_empty() => (
                kinds::SVID_DELIVERED,
                found(AuditQuery::Serial(&d.serial), kinds::X509_ISSUED, true)?,
            ),
            "svid.delivered" if !d.jti.is_empty() && d.serial.is_empty() => (
                kinds::SVID_DELIVERED,
                found(AuditQuery::Jti(&d.jti), kinds::JWT_ISSUED, true)?,
            ),
            "jwt.validated" if !d.jti.is_empty() => (
                kinds::JWT_VALIDATED,
                found(AuditQuery::Jti(&d.jti), kinds::JWT_ISSUED, false)?,
            ),
            _ => return None,
        };
        let actor = Actor {
            kind: "workload".into(),
            uid: Some(d.uid),
            id: Some(agent.to_owned()),
            pid: Some(d.pid),
            exe: (!d.exe.is_empty()).then_some(d.exe),
            selectors: Vec::new(),
        };
        // The identity is the one the journal issued, not what the agent says.
        let mut r = NewRecord::new(kind, actor)
            .detail("agent", agent)
            .detail("at_ms", d.at_ms);
        if let Some(id) = issued.spiffe_id {
            r = r.spiffe_id(id);
        }
        if let Some(e) = issued.entry_id {
            r = r.entry(e);
        }
        if !d.serial.is_empty() {
            r = r.serial(d.serial);
        }
        if !d.jti.is_empty() {
            r = r.jti(d.jti);
        }
        if !d.audience.is_empty() {
            r = r.detail("audience", d.audience);
        }
        Some(r)
    }
}
