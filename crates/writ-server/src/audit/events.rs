//! The records of each lifecycle event, built in one place so every path that issues, changes
//! or removes something journals it the same way (same kind, same correlation fields).

use serde_json::{Map, Value};
use writ_audit::{kinds, Actor, NewRecord};
use writ_ca::{CaJournal, SlotState};
use writ_core::{AttestedNode, Entry};

/// An X509-SVID issued under `entry` (serial lowercase hex, `not_after` unix seconds).
pub(crate) fn x509_issued(actor: Actor, entry: &Entry, serial: &str, not_after: i64) -> NewRecord {
    NewRecord::new(kinds::X509_ISSUED, actor)
        .spiffe_id(&entry.spiffe_id)
        .entry(entry.id.clone())
        .serial(serial)
        .detail("not_after", not_after)
}

/// An X509-SVID minted by an operator for an ID (no entry).
pub(crate) fn x509_minted(actor: Actor, id: &str, serial: &str, not_after: i64) -> NewRecord {
    NewRecord::new(kinds::X509_ISSUED, actor)
        .spiffe_id(id)
        .serial(serial)
        .detail("not_after", not_after)
        .detail("minted_by_operator", true)
}

/// A JWT-SVID issued for `id` (under `entry` when an agent asked).
pub(crate) fn jwt_issued(
    actor: Actor,
    id: &str,
    entry: Option<&str>,
    jti: &str,
    audience: &[String],
    exp: i64,
) -> NewRecord {
    let mut r = NewRecord::new(kinds::JWT_ISSUED, actor)
        .spiffe_id(id)
        .jti(jti)
        .detail("audience", audience.to_vec())
        .detail("exp", exp);
    if let Some(e) = entry {
        r = r.entry(e);
    } else {
        r = r.detail("minted_by_operator", true);
    }
    r
}

/// A WIT-SVID issued for `id` under `entry` (`exp` unix seconds).
pub(crate) fn wit_issued(actor: Actor, id: &str, entry: &str, jti: &str, exp: i64) -> NewRecord {
    NewRecord::new(kinds::WIT_ISSUED, actor)
        .spiffe_id(id)
        .entry(entry)
        .jti(jti)
        .detail("exp", exp)
}

/// An entry created.
pub(crate) fn entry_created(actor: Actor, e: &Entry) -> NewRecord {
    NewRecord::new(kinds::ENTRY_CREATED, actor)
        .spiffe_id(&e.spiffe_id)
        .entry(e.id.clone())
        .detail("entry", to_value(e))
}

/// An entry changed from `old` to `new`; `details.changes` holds each changed field as
/// `{"from": .., "to": ..}`.
pub(crate) fn entry_updated(actor: Actor, old: &Entry, new: &Entry) -> NewRecord {
    let (Value::Object(a), Value::Object(b)) = (to_value(old), to_value(new)) else {
        return NewRecord::new(kinds::ENTRY_UPDATED, actor).entry(new.id.clone());
    };
    let mut changes = Map::new();
    for (k, to) in &b {
        let from = a.get(k).cloned().unwrap_or(Value::Null);
        if &from != to {
            changes.insert(k.clone(), serde_json::json!({"from": from, "to": to}));
        }
    }
    for (k, from) in &a {
        if !b.contains_key(k) {
            changes.insert(
                k.clone(),
                serde_json::json!({"from": from, "to": Value::Null}),
            );
        }
    }
    NewRecord::new(kinds::ENTRY_UPDATED, actor)
        .spiffe_id(&new.spiffe_id)
        .entry(new.id.clone())
        .detail("changes", Value::Object(changes))
}

/// An entry deleted.
pub(crate) fn entry_deleted(actor: Actor, e: &Entry) -> NewRecord {
    NewRecord::new(kinds::ENTRY_DELETED, actor)
        .spiffe_id(&e.spiffe_id)
        .entry(e.id.clone())
}

/// A node attested (first time or again).
pub(crate) fn node_attested(n: &AttestedNode) -> NewRecord {
    NewRecord::new(kinds::NODE_ATTESTED, Actor::agent(n.spiffe_id.as_str()))
        .spiffe_id(&n.spiffe_id)
        .serial(n.cert_serial.clone())
        .detail("attestor", n.attestor.clone())
        .detail(
            "selectors",
            n.selectors
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .detail("not_after", n.cert_not_after)
}

/// A node renewed its SVID.
pub(crate) fn node_renewed(n: &AttestedNode) -> NewRecord {
    NewRecord::new(kinds::NODE_RENEWED, Actor::agent(n.spiffe_id.as_str()))
        .spiffe_id(&n.spiffe_id)
        .serial(n.cert_serial.clone())
        .detail("not_after", n.cert_not_after)
}

/// A node evicted (`banned` false) or banned by an operator.
pub(crate) fn node_removed(actor: Actor, n: &AttestedNode, banned: bool) -> NewRecord {
    let kind = if banned {
        kinds::NODE_BANNED
    } else {
        kinds::NODE_EVICTED
    };
    NewRecord::new(kind, actor).spiffe_id(&n.spiffe_id)
}

/// Another operator action (join tokens, bundles), named by the admin method.
pub(crate) fn admin_action(actor: Actor, method: &str) -> NewRecord {
    NewRecord::new(kinds::ADMIN_ACTION, actor).detail("method", method)
}

fn to_value(e: &Entry) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// Break-glass used: an entry created under it, or an SVID (`serial`) or JWT-SVID (`jti`)
/// issued under such an entry. Recorded next to the ordinary record, so a query for
/// `break_glass.used` lists every use.
pub(crate) fn break_glass_used(
    actor: Actor,
    e: &Entry,
    serial: Option<&str>,
    jti: Option<&str>,
) -> NewRecord {
    let mut r = NewRecord::new(kinds::BREAK_GLASS_USED, actor)
        .spiffe_id(&e.spiffe_id)
        .entry(e.id.clone())
        .detail("reason", e.break_glass_reason.clone());
    if let Some(s) = serial {
        r = r.serial(s);
    }
    if let Some(j) = jti {
        r = r.jti(j);
    }
    r
}

/// The authority changes between two CA journals: each X.509 CA or JWT key that appeared as
/// prepared (or active, on a first start) or became active.
pub(crate) fn authority_changes(old: &CaJournal, new: &CaJournal) -> Vec<NewRecord> {
    let mut out = Vec::new();
    let mut note = |what: &str,
                    key_id: &str,
                    was: Option<SlotState>,
                    now: SlotState,
                    extra: (&str, String)| {
        let kind = match (was, now) {
            (None, SlotState::Prepared) => kinds::AUTHORITY_PREPARED,
            (Some(SlotState::Prepared) | None, SlotState::Active) => kinds::AUTHORITY_ACTIVATED,
            _ => return,
        };
        out.push(
            NewRecord::new(kind, Actor::server())
                .detail("authority", what)
                .detail("key_id", key_id)
                .detail(extra.0, extra.1),
        );
    };
    for s in &new.x509 {
        let was = old
            .x509
            .iter()
            .find(|o| o.key_id == s.key_id)
            .map(|o| o.state);
        note(
            "x509",
            &s.key_id,
            was,
            s.state,
            ("not_after", s.not_after.to_string()),
        );
    }
    for s in &new.jwt {
        let was = old
            .jwt
            .iter()
            .find(|o| o.key_id == s.key_id)
            .map(|o| o.state);
        note("jwt", &s.key_id, was, s.state, ("kid", s.kid.clone()));
    }
    out
}
