//! Conversions between writ-core types and the protobuf messages of `writ.v1`.
//!
//! Incoming messages are untrusted: every ID and selector is parsed, and a bad one is an
//! `InvalidArgument` status naming the field.

use crate::v1 as pb;
use tonic::Status;
use writ_core::{AttestedNode, Bundle, Delegation, Entry, Selector, SpiffeId, Task, TrustDomain};

/// An `InvalidArgument` naming the field.
pub fn invalid(field: &str, err: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {err}"))
}

/// Parses a SPIFFE ID field.
pub fn parse_id(field: &str, s: &str) -> Result<SpiffeId, Status> {
    SpiffeId::parse(s).map_err(|e| invalid(field, e))
}

/// Core entry -> proto.
pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(selector_to_pb).collect(),
        x509_svid_ttl: e.x509_svid_ttl as i64,
        jwt_svid_ttl: e.jwt_svid_ttl as i64,
        dns_names: e.dns_names.clone(),
        hint: e.hint.clone(),
        admin: e.admin,
        downstream: e.downstream,
        federates_with: e.federates_with.iter().map(|t| t.to_string()).collect(),
        expires_at: e.expires_at.unwrap_or(0),
        owner: e.owner.clone(),
        purpose: e.purpose.clone(),
        break_glass: e.break_glass,
        break_glass_reason: e.break_glass_reason.clone(),
        delegate: e.delegate.as_ref().map(|d| pb::Delegation {
            max_ttl: d.max_ttl as i64,
            max_active: d.max_active,
            audiences: d.audiences.clone(),
        }),
        created_at: e.created_at,
        revision: e.revision,
    }
}

/// Collects fallible items into a vector of exactly their number (`collect::<Result<Vec>>`
/// cannot know the length and leaves room for four: 144 wasted bytes for one selector, in
/// every entry an agent or server holds).
fn exact<T, E>(items: impl ExactSizeIterator<Item = Result<T, E>>) -> Result<Vec<T>, E> {
    let mut v = Vec::with_capacity(items.len());
    for i in items {
        v.push(i?);
    }
    Ok(v)
}

/// Proto entry -> core (fields parsed, not yet validated against the trust domain).
pub fn entry_from_pb(p: &pb::Entry) -> Result<Entry, Status> {
    let ttl = |field: &str, v: i64| -> Result<u64, Status> {
        u64::try_from(v).map_err(|_| invalid(field, "must not be negative"))
    };
    Ok(Entry {
        id: p.id.clone(),
        spiffe_id: parse_id("spiffe_id", &p.spiffe_id)?,
        parent_id: parse_id("parent_id", &p.parent_id)?,
        selectors: exact(p.selectors.iter().map(selector_from_pb))?,
        x509_svid_ttl: ttl("x509_svid_ttl", p.x509_svid_ttl)?,
        jwt_svid_ttl: ttl("jwt_svid_ttl", p.jwt_svid_ttl)?,
        dns_names: p.dns_names.clone(),
        hint: p.hint.clone(),
        admin: p.admin,
        downstream: p.downstream,
        federates_with: p
            .federates_with
            .iter()
            .map(|t| TrustDomain::new(t).map_err(|e| invalid("federates_with", e)))
            .collect::<Result<_, _>>()?,
        expires_at: (p.expires_at != 0).then_some(p.expires_at),
        owner: p.owner.clone(),
        purpose: p.purpose.clone(),
        break_glass: p.break_glass,
        break_glass_reason: p.break_glass_reason.clone(),
        delegate: p
            .delegate
            .as_ref()
            .map(|d| -> Result<Box<Delegation>, Status> {
                Ok(Box::new(Delegation {
                    max_ttl: ttl("delegate.max_ttl", d.max_ttl)?,
                    max_active: d.max_active,
                    audiences: d.audiences.clone(),
                }))
            })
            .transpose()?,
        created_at: p.created_at,
        revision: p.revision,
    })
}

/// Core selector -> proto.
pub fn selector_to_pb(s: &Selector) -> pb::Selector {
    pb::Selector {
        r#type: s.kind().to_owned(),
        value: s.value().to_owned(),
    }
}

/// Proto selector -> core.
pub fn selector_from_pb(s: &pb::Selector) -> Result<Selector, Status> {
    Selector::new(&s.r#type, &s.value).map_err(|e| invalid("selector", e))
}

/// Core node -> proto.
pub fn node_to_pb(n: &AttestedNode) -> pb::AttestedNode {
    pb::AttestedNode {
        spiffe_id: n.spiffe_id.to_string(),
        attestor: n.attestor.clone(),
        selectors: n.selectors.iter().map(selector_to_pb).collect(),
        cert_serial: n.cert_serial.clone(),
        cert_not_after: n.cert_not_after,
        banned: n.banned,
        created_at: n.created_at,
    }
}

/// Proto node -> core (for clients).
pub fn node_from_pb(p: &pb::AttestedNode) -> Result<AttestedNode, Status> {
    Ok(AttestedNode {
        spiffe_id: parse_id("spiffe_id", &p.spiffe_id)?,
        attestor: p.attestor.clone(),
        selectors: exact(p.selectors.iter().map(selector_from_pb))?,
        cert_serial: p.cert_serial.clone(),
        cert_not_after: p.cert_not_after,
        prev_cert_serial: String::new(),
        banned: p.banned,
        created_at: p.created_at,
        revision: 0,
        aliases: Vec::new(),
    })
}

/// Core bundle -> proto (SPIFFE bundle JSON inside).
pub fn bundle_to_pb(b: &Bundle) -> Result<pb::Bundle, Status> {
    Ok(pb::Bundle {
        trust_domain: b.trust_domain.to_string(),
        spiffe_bundle_json: b
            .to_json()
            .map_err(|e| Status::internal(e.to_string()))?
            .into_bytes(),
    })
}

/// Proto bundle -> core.
pub fn bundle_from_pb(p: &pb::Bundle) -> Result<Bundle, Status> {
    let td = TrustDomain::new(&p.trust_domain).map_err(|e| invalid("trust_domain", e))?;
    Bundle::from_json(td, &p.spiffe_bundle_json).map_err(|e| invalid("bundle", e))
}

/// Core task -> proto, with its state at `now`.
pub fn task_to_pb(t: &Task, now: i64) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        spiffe_id: t.spiffe_id.to_string(),
        owner: t.owner.to_string(),
        entry_id: t.entry_id.clone(),
        parent_task_id: t.parent_task_id.clone().unwrap_or_default(),
        agent: t.agent.to_string(),
        purpose: t.purpose.clone(),
        audiences: t.audiences.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        ended_at: t.ended_at.unwrap_or(0),
        end_reason: t.end_reason.clone(),
        state: t.state(now).as_str().to_owned(),
    }
}

/// Node-protocol task -> Workload-socket task (what a workload may see of it).
pub fn task_info(t: &pb::Task) -> crate::task::TaskInfo {
    crate::task::TaskInfo {
        id: t.id.clone(),
        spiffe_id: t.spiffe_id.clone(),
        owner: t.owner.clone(),
        parent_task_id: t.parent_task_id.clone(),
        purpose: t.purpose.clone(),
        audiences: t.audiences.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        ended_at: t.ended_at,
        end_reason: t.end_reason.clone(),
        state: t.state.clone(),
    }
}
