//! Registration entries: who may receive which SPIFFE ID, and the governance record kept with it.
//!
//! An entry says: a workload matching all of `selectors`, running under `parent_id` (an agent, a
//! node alias, or another workload entry for nested issuance), receives `spiffe_id`. Node alias
//! entries have the server's ID as parent and node selectors; any agent whose node selectors
//! include them is also known by the alias `spiffe_id`.

use serde::{Deserialize, Serialize};

use crate::id::{IdError, SpiffeId, TrustDomain};
use crate::selector::Selector;

/// Longest `hint` accepted.
pub const MAX_HINT_LEN: usize = 256;
/// Longest `owner` / `purpose` accepted.
pub const MAX_META_LEN: usize = 1024;
/// Most selectors on one entry.
pub const MAX_SELECTORS: usize = 64;
/// Most DNS names on one entry.
pub const MAX_DNS_NAMES: usize = 64;
/// Most federated trust domains on one entry. With the other limits this keeps an entry near
/// 100 KB at most, so any single entry fits in a sync message (an unbounded list could make one
/// entry larger than the 4 MiB message limit, and no page could carry it).
pub const MAX_FEDERATES_WITH: usize = 64;

/// The server's own SPIFFE ID in a trust domain (`spiffe://<td>/writ/server`).
pub fn server_id(td: &TrustDomain) -> SpiffeId {
    // The path is a constant made only of allowed characters, so this cannot fail for a valid td.
    #[allow(clippy::expect_used)]
    td.id("/writ/server").expect("constant path is valid")
}

/// Whether `id` is reserved for writ's own identities: the server (`/writ/server`), agents
/// (`/writ/agent/...`) and anything else under `/writ`. Entries, operator-minted SVIDs and join
/// token aliases may not name such an ID (an entry may still use an agent ID as its parent):
/// an SVID for the server's ID would let its holder impersonate the server to every agent, and
/// an alias equal to an agent's ID would hand that agent's entries to another node.
pub fn is_reserved_id(id: &SpiffeId) -> bool {
    let p = id.path();
    p == "/writ" || p.starts_with("/writ/")
}

/// A registration entry, in the shape of contract.md's entry object (TTLs in seconds, times as
/// unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Opaque unique ID (a UUID).
    pub id: String,
    /// The identity this entry grants.
    pub spiffe_id: SpiffeId,
    /// Who may receive it: an agent, a node alias, a workload entry, or the server (node alias).
    pub parent_id: SpiffeId,
    /// All of these must match the caller.
    pub selectors: Vec<Selector>,
    /// X509-SVID lifetime in seconds; 0 means the server default.
    #[serde(default)]
    pub x509_svid_ttl: u64,
    /// JWT-SVID lifetime in seconds; 0 means the server default.
    #[serde(default)]
    pub jwt_svid_ttl: u64,
    /// DNS SANs added to the X509-SVID.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Workload API hint (tells a workload with several SVIDs which is which).
    #[serde(default)]
    pub hint: String,
    /// May use the admin API.
    #[serde(default)]
    pub admin: bool,
    /// A downstream (nested) server: may hold a CA signed by this one.
    #[serde(default)]
    pub downstream: bool,
    /// Federated trust domains whose bundles the workload also receives.
    #[serde(default)]
    pub federates_with: Vec<TrustDomain>,
    /// After this instant (unix seconds) the entry is not served.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Who owns the identity (team, person, ticket).
    #[serde(default)]
    pub owner: String,
    /// Why the identity exists.
    #[serde(default)]
    pub purpose: String,
    /// Created under break-glass: passes governance checks, must carry a reason, is capped
    /// at a short lifetime, and every issuance under it is journalled as break-glass use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// Why break-glass was used (required when `break_glass`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub break_glass_reason: String,
    /// Whether, and how far, a workload holding this identity may start task identities
    /// (`<spiffe_id>/task/<id>`) through its agent. None: it may not. Boxed: few entries
    /// delegate, and every entry would otherwise carry its 40 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Box<Delegation>>,
    /// When the entry was created (unix seconds).
    #[serde(default)]
    pub created_at: i64,
    /// The store revision of the entry's last change.
    #[serde(default)]
    pub revision: u64,
}

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A bad ID.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The SPIFFE ID is not in the server's trust domain.
    #[error("spiffe id `{id}` is not in trust domain `{td}`")]
    ForeignId {
        /// The offending ID.
        id: String,
        /// The server's trust domain.
        td: String,
    },
    /// The entry's own ID has no path or is reserved for writ itself.
    #[error("spiffe id `{0}` is reserved for writ itself (paths under `/writ`) or has no path")]
    ReservedId(String),
    /// No selectors.
    #[error("an entry needs at least one selector")]
    NoSelectors,
    /// Too many selectors or DNS names.
    #[error("too many {what} ({n}, at most {max})")]
    TooMany {
        /// What there are too many of.
        what: &'static str,
        /// How many there are.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// A DNS name that is not a valid host name.
    #[error("dns name `{0}` is invalid")]
    BadDnsName(String),
    /// A text field over its limit or with control characters.
    #[error("{0} is too long or contains control characters")]
    BadText(&'static str),
    /// A TTL over ten years.
    #[error("{0} ttl is too large")]
    BadTtl(&'static str),
    /// A federated trust domain equal to our own.
    #[error("federates_with names the server's own trust domain `{0}`")]
    SelfFederation(String),
    /// A delegation setting out of range.
    #[error("delegate: {0}")]
    BadDelegation(String),
}

/// Most audiences a delegation may list.
pub const MAX_DELEGATE_AUDIENCES: usize = 32;
/// Longest task lifetime a delegation may allow (one day: tasks are short by design).
pub const MAX_TASK_TTL: u64 = 86_400;
/// Most tasks one entry may allow at once.
pub const MAX_TASKS_PER_ENTRY: u32 = 100_000;

/// What a workload holding an entry may hand to task identities (contract:
/// `--delegate max_ttl=DUR,max_active=N,audiences=a|b`). Every task is narrower than this and
/// than the identity that starts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// Longest task lifetime, seconds.
    pub max_ttl: u64,
    /// Most tasks running at once under the entry (over all its agents).
    pub max_active: u32,
    /// The JWT-SVID audiences tasks may ask for; empty: tasks get no JWT-SVIDs.
    #[serde(default)]
    pub audiences: Vec<String>,
}

impl Delegation {
    /// Parses `max_ttl=10m,max_active=100,audiences=a|b` (every key optional but `max_ttl`;
    /// `max_active` defaults to 100).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut d = Delegation {
            max_ttl: 0,
            max_active: 100,
            audiences: Vec::new(),
        };
        let mut seen_ttl = false;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            match k.trim() {
                "max_ttl" => {
                    d.max_ttl = crate::duration::parse_duration(v.trim())
                        .map_err(|e| format!("max_ttl: {e}"))?
                        .as_secs();
                    seen_ttl = true;
                }
                "max_active" => {
                    d.max_active = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("max_active: `{v}` is not a whole number"))?;
                }
                "audiences" => {
                    d.audiences = v
                        .split('|')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                other => {
                    return Err(format!(
                        "unknown key `{other}` (expected max_ttl, max_active, audiences)"
                    ))
                }
            }
        }
        if !seen_ttl {
            return Err("max_ttl is required (e.g. max_ttl=10m)".into());
        }
        d.validate()?;
        Ok(d)
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_ttl == 0 || self.max_ttl > MAX_TASK_TTL {
            return Err(format!(
                "max_ttl must be between 1s and {MAX_TASK_TTL}s, not {}s",
                self.max_ttl
            ));
        }
        if self.max_active == 0 || self.max_active > MAX_TASKS_PER_ENTRY {
            return Err(format!(
                "max_active must be between 1 and {MAX_TASKS_PER_ENTRY}, not {}",
                self.max_active
            ));
        }
        if self.audiences.len() > MAX_DELEGATE_AUDIENCES {
            return Err(format!(
                "too many audiences ({}, at most {MAX_DELEGATE_AUDIENCES})",
                self.audiences.len()
            ));
        }
        for a in &self.audiences {
            if a.is_empty() || a.len() > 1024 || a.chars().any(|c| c.is_control() || c == '|') {
                return Err(format!(
                    "audience `{a}` is empty, too long or has control characters"
                ));
            }
        }
        Ok(())
    }
}

const MAX_TTL: u64 = 10 * 365 * 86_400;

/// A shared entry in a set keyed by its ID: the set finds it by `&str` without holding the ID
/// a second time (an 8-byte slot instead of a `String` key and its allocation). The indexes
/// of the server and the agent hold every entry once and point at it from each lookup.
#[derive(Debug, Clone)]
pub struct EntryById(pub std::sync::Arc<Entry>);

impl std::hash::Hash for EntryById {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // Exactly as the `str` it borrows as (the `Borrow` contract).
        self.0.id.as_str().hash(h)
    }
}

impl PartialEq for EntryById {
    fn eq(&self, o: &Self) -> bool {
        self.0.id == o.0.id
    }
}

impl Eq for EntryById {}

impl std::borrow::Borrow<str> for EntryById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl Entry {
    /// An entry granting `spiffe_id` to `parent_id` for callers with `selectors`; everything
    /// else empty or the server default (no ID yet: the store assigns one).
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Entry {
            id: String::new(),
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: Vec::new(),
            hint: String::new(),
            admin: false,
            downstream: false,
            federates_with: Vec::new(),
            expires_at: None,
            owner: String::new(),
            purpose: String::new(),
            break_glass: false,
            break_glass_reason: String::new(),
            delegate: None,
            created_at: 0,
            revision: 0,
        }
    }

    /// Whether this is a node alias entry (parented to the server).
    pub fn is_node_alias(&self) -> bool {
        self.parent_id.path() == "/writ/server"
    }

    /// Whether the entry has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Checks every field against the rules of trust domain `td`. Called before anything is written.
    pub fn validate(&self, td: &TrustDomain) -> Result<(), EntryError> {
        for id in [&self.spiffe_id, &self.parent_id] {
            if !id.is_member_of(td) {
                return Err(EntryError::ForeignId {
                    id: id.to_string(),
                    td: td.to_string(),
                });
            }
        }
        let path = self.spiffe_id.path();
        if path.is_empty() || is_reserved_id(&self.spiffe_id) {
            return Err(EntryError::ReservedId(self.spiffe_id.to_string()));
        }
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        check_count("selectors", self.selectors.len(), MAX_SELECTORS)?;
        check_count("dns names", self.dns_names.len(), MAX_DNS_NAMES)?;
        check_count(
            "federated trust domains",
            self.federates_with.len(),
            MAX_FEDERATES_WITH,
        )?;
        for name in &self.dns_names {
            if !is_dns_name(name) {
                return Err(EntryError::BadDnsName(name.clone()));
            }
        }
        check_text("hint", &self.hint, MAX_HINT_LEN)?;
        check_text("owner", &self.owner, MAX_META_LEN)?;
        check_text("purpose", &self.purpose, MAX_META_LEN)?;
        check_text("break_glass_reason", &self.break_glass_reason, MAX_META_LEN)?;
        if self.x509_svid_ttl > MAX_TTL {
            return Err(EntryError::BadTtl("x509"));
        }
        if self.jwt_svid_ttl > MAX_TTL {
            return Err(EntryError::BadTtl("jwt"));
        }
        if let Some(f) = self.federates_with.iter().find(|f| *f == td) {
            return Err(EntryError::SelfFederation(f.to_string()));
        }
        if let Some(d) = &self.delegate {
            d.validate().map_err(EntryError::BadDelegation)?;
        }
        Ok(())
    }
}

fn check_count(what: &'static str, n: usize, max: usize) -> Result<(), EntryError> {
    if n > max {
        return Err(EntryError::TooMany { what, n, max });
    }
    Ok(())
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), EntryError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(EntryError::BadText(what));
    }
    Ok(())
}

/// A host name per RFC 1123 (LDH labels of 1-63 bytes, at most 253 bytes), optionally with a
/// leading `*.` wildcard label.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: "e1".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/writ/agent/join_token/x").unwrap(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: vec!["web.example.org".into()],
            hint: String::new(),
            admin: false,
            downstream: false,
            federates_with: vec![],
            expires_at: Some(100),
            owner: "team-a".into(),
            purpose: "serves the web".into(),
            break_glass: false,
            break_glass_reason: String::new(),
            delegate: None,
            created_at: 1,
            revision: 3,
        }
    }

    #[test]
    fn validates() {
        let td = TrustDomain::new("example.org").unwrap();
        entry().validate(&td).unwrap();
        let other = TrustDomain::new("other.org").unwrap();
        assert!(matches!(
            entry().validate(&other),
            Err(EntryError::ForeignId { .. })
        ));
        let mut e = entry();
        e.selectors.clear();
        assert_eq!(e.validate(&td), Err(EntryError::NoSelectors));
        let mut e = entry();
        e.dns_names = vec!["bad_name".into()];
        assert!(matches!(e.validate(&td), Err(EntryError::BadDnsName(_))));
        for reserved in [
            server_id(&td),
            td.id("/writ/agent/join_token/x").unwrap(),
            td.id("/writ").unwrap(),
        ] {
            let mut e = entry();
            e.spiffe_id = reserved;
            assert!(matches!(e.validate(&td), Err(EntryError::ReservedId(_))));
        }
        // Agent IDs stay usable as parents, and `/writer` is not under `/writ`.
        let mut e = entry();
        e.spiffe_id = td.id("/writer").unwrap();
        e.validate(&td).unwrap();
        let mut e = entry();
        e.federates_with = (0..65)
            .map(|i| TrustDomain::new(&format!("td{i}.org")).unwrap())
            .collect();
        assert!(matches!(e.validate(&td), Err(EntryError::TooMany { .. })));
        let mut e = entry();
        e.federates_with = vec![td.clone()];
        assert!(matches!(
            e.validate(&td),
            Err(EntryError::SelfFederation(_))
        ));
        let mut e = entry();
        e.hint = "a\nb".into();
        assert_eq!(e.validate(&td), Err(EntryError::BadText("hint")));
    }

    #[test]
    fn expiry_and_alias() {
        let e = entry();
        assert!(!e.is_expired(99));
        assert!(e.is_expired(100));
        assert!(!e.is_node_alias());
        let mut a = entry();
        a.parent_id = server_id(&TrustDomain::new("example.org").unwrap());
        assert!(a.is_node_alias());
    }

    #[test]
    fn json_round_trip_has_contract_fields() {
        let e = entry();
        let v = serde_json::to_value(&e).unwrap();
        for k in [
            "id",
            "spiffe_id",
            "parent_id",
            "selectors",
            "x509_svid_ttl",
            "jwt_svid_ttl",
            "dns_names",
            "hint",
            "admin",
            "downstream",
            "federates_with",
            "expires_at",
            "owner",
            "purpose",
            "created_at",
            "revision",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        let back: Entry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("a.b-c.example"));
        assert!(is_dns_name("*.example.org"));
        assert!(!is_dns_name("-a.example"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name(&"a".repeat(64)));
    }
}
