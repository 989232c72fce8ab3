//! JSON shapes of contract.md and the human-readable forms of the same data.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use writ_core::{AttestedNode, Entry};

/// Unix seconds as RFC 3339 (UTC).
pub(crate) fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// RFC 3339 to unix seconds.
pub(crate) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|d| d.unix_timestamp())
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

/// The contract's entry object.
pub(crate) fn entry_json(e: &Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id.to_string(),
        "parent_id": e.parent_id.to_string(),
        "selectors": e.selectors.iter().map(|s| json!({"type": s.kind(), "value": s.value()})).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "dns_names": e.dns_names,
        "hint": e.hint,
        "admin": e.admin,
        "downstream": e.downstream,
        "federates_with": e.federates_with.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "expires_at": e.expires_at.map(rfc3339),
        "owner": e.owner,
        "purpose": e.purpose,
        "break_glass": e.break_glass,
        "break_glass_reason": e.break_glass_reason,
        "delegate": e.delegate.as_ref().map(|d| json!({
            "max_ttl": d.max_ttl,
            "max_active": d.max_active,
            "audiences": d.audiences,
        })),
        "created_at": rfc3339(e.created_at),
        "revision": e.revision,
    })
}

/// Human form of an entry.
pub(crate) fn entry_text(e: &Entry) -> String {
    let mut s = format!(
        "Entry ID      : {}\nSPIFFE ID     : {}\nParent ID     : {}\n",
        e.id, e.spiffe_id, e.parent_id
    );
    for sel in &e.selectors {
        s += &format!("Selector      : {sel}\n");
    }
    let ttl = |v: u64| {
        if v == 0 {
            "default".to_owned()
        } else {
            format!("{v}s")
        }
    };
    s += &format!(
        "X509-SVID TTL : {}\nJWT-SVID TTL  : {}\n",
        ttl(e.x509_svid_ttl),
        ttl(e.jwt_svid_ttl)
    );
    for d in &e.dns_names {
        s += &format!("DNS name      : {d}\n");
    }
    if !e.hint.is_empty() {
        s += &format!("Hint          : {}\n", e.hint);
    }
    if e.admin {
        s += "Admin         : true\n";
    }
    if e.downstream {
        s += "Downstream    : true\n";
    }
    for f in &e.federates_with {
        s += &format!("Federates with: {f}\n");
    }
    if let Some(t) = e.expires_at {
        s += &format!("Expires at    : {}\n", rfc3339(t));
    }
    if !e.owner.is_empty() {
        s += &format!("Owner         : {}\n", e.owner);
    }
    if !e.purpose.is_empty() {
        s += &format!("Purpose       : {}\n", e.purpose);
    }
    if e.break_glass {
        s += &format!("BREAK-GLASS   : {}\n", e.break_glass_reason);
    }
    if let Some(d) = &e.delegate {
        s += &format!(
            "Delegate      : max_ttl={}s,max_active={},audiences={}\n",
            d.max_ttl,
            d.max_active,
            d.audiences.join("|")
        );
    }
    s += &format!(
        "Created at    : {}\nRevision      : {}\n",
        rfc3339(e.created_at),
        e.revision
    );
    s
}

/// The node object.
pub(crate) fn node_json(n: &AttestedNode) -> Value {
    json!({
        "spiffe_id": n.spiffe_id.to_string(),
        "attestor": n.attestor,
        "selectors": n.selectors.iter().map(|s| json!({"type": s.kind(), "value": s.value()})).collect::<Vec<_>>(),
        "cert_serial": n.cert_serial,
        "cert_expires_at": rfc3339(n.cert_not_after),
        "banned": n.banned,
        "created_at": rfc3339(n.created_at),
    })
}

/// Human form of a node.
pub(crate) fn node_text(n: &AttestedNode) -> String {
    let mut s = format!(
        "SPIFFE ID     : {}\nAttestor      : {}\nSVID serial   : {}\nSVID expires  : {}\nBanned        : {}\n",
        n.spiffe_id,
        n.attestor,
        n.cert_serial,
        rfc3339(n.cert_not_after),
        n.banned
    );
    for sel in &n.selectors {
        s += &format!("Selector      : {sel}\n");
    }
    s
}

/// Writes to stdout; a closed pipe (`writ ... | head`) is not an error worth a panic.
pub(crate) fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
}
