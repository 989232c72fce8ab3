//! Records: what happened, to which identity, done by whom, chained by hash.

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Record kinds (dotted names, contract.md). Free-form kinds are allowed; these are the ones
/// writ writes.
pub mod kinds {
    /// The audit key that signs checkpoints (its public JWK in `details`).
    pub const AUDIT_KEY: &str = "audit.key";
    /// A node attested.
    pub const NODE_ATTESTED: &str = "node.attested";
    /// A node renewed its agent SVID.
    pub const NODE_RENEWED: &str = "node.renewed";
    /// A node was evicted.
    pub const NODE_EVICTED: &str = "node.evicted";
    /// A node was banned.
    pub const NODE_BANNED: &str = "node.banned";
    /// An entry was created.
    pub const ENTRY_CREATED: &str = "entry.created";
    /// An entry was updated (`details.changes` holds the diff).
    pub const ENTRY_UPDATED: &str = "entry.updated";
    /// An entry was deleted.
    pub const ENTRY_DELETED: &str = "entry.deleted";
    /// An entry passed its `expires_at`.
    pub const ENTRY_EXPIRED: &str = "entry.expired";
    /// An X509-SVID was signed.
    pub const X509_ISSUED: &str = "x509.issued";
    /// A JWT-SVID was signed.
    pub const JWT_ISSUED: &str = "jwt.issued";
    /// A WIT-SVID was signed.
    pub const WIT_ISSUED: &str = "wit.issued";
    /// An agent handed an SVID to a process.
    pub const SVID_DELIVERED: &str = "svid.delivered";
    /// A JWT-SVID was checked through `ValidateJWTSVID`.
    pub const JWT_VALIDATED: &str = "jwt.validated";
    /// An SVID (serial or `jti`) was revoked.
    pub const SVID_REVOKED: &str = "svid.revoked";
    /// A CA or JWT key was prepared.
    pub const AUTHORITY_PREPARED: &str = "authority.prepared";
    /// A CA or JWT key became active.
    pub const AUTHORITY_ACTIVATED: &str = "authority.activated";
    /// A CA or JWT key was tainted.
    pub const AUTHORITY_TAINTED: &str = "authority.tainted";
    /// A CA or JWT key was revoked (removed from the bundle).
    pub const AUTHORITY_REVOKED: &str = "authority.revoked";
    /// An issuance under a break-glass entry.
    pub const BREAK_GLASS_USED: &str = "break_glass.used";
    /// A policy denied an issuance.
    pub const POLICY_DENIED: &str = "policy.denied";
    /// A task started.
    pub const TASK_STARTED: &str = "task.started";
    /// A task ended.
    pub const TASK_ENDED: &str = "task.ended";
    /// Any other operator action (`details.method`).
    pub const ADMIN_ACTION: &str = "admin.action";
    /// A federated trust domain's bundle changed (fetched from its endpoint).
    pub const BUNDLE_UPDATED: &str = "bundle.updated";
}

/// Who did it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `operator`, `agent`, `workload` or `server`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Operator or workload UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Agent SPIFFE ID (for agents, and the agent that served a workload), or an admin SVID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Workload PID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Workload executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Workload selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<String>,
}

impl Actor {
    /// An operator on the admin socket.
    pub fn operator(uid: u32) -> Self {
        Actor {
            kind: "operator".into(),
            uid: Some(uid),
            ..Actor::default()
        }
    }

    /// An agent, by SPIFFE ID.
    pub fn agent(id: impl Into<String>) -> Self {
        Actor {
            kind: "agent".into(),
            id: Some(id.into()),
            ..Actor::default()
        }
    }

    /// The server itself (rotation, expiry).
    pub fn server() -> Self {
        Actor {
            kind: "server".into(),
            ..Actor::default()
        }
    }
}

/// What the caller of the journal supplies; the chain adds `seq`, `time` and the hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRecord {
    /// Dotted kind ([`kinds`]).
    pub kind: String,
    /// Who did it.
    pub actor: Actor,
    /// The identity concerned.
    pub spiffe_id: Option<String>,
    /// The entry concerned.
    pub entry_id: Option<String>,
    /// X509-SVID serial (hex).
    pub serial: Option<String>,
    /// JWT-SVID `jti`.
    pub jti: Option<String>,
    /// Task ID.
    pub task_id: Option<String>,
    /// Anything else, as a JSON object.
    pub details: Map<String, Value>,
}

impl NewRecord {
    /// A record of `kind` by `actor` with no correlation IDs yet.
    pub fn new(kind: &str, actor: Actor) -> Self {
        NewRecord {
            kind: kind.to_owned(),
            actor,
            spiffe_id: None,
            entry_id: None,
            serial: None,
            jti: None,
            task_id: None,
            details: Map::new(),
        }
    }

    /// Sets the SPIFFE ID.
    pub fn spiffe_id(mut self, id: impl ToString) -> Self {
        self.spiffe_id = Some(id.to_string());
        self
    }

    /// Sets the entry ID.
    pub fn entry(mut self, id: impl Into<String>) -> Self {
        self.entry_id = Some(id.into());
        self
    }

    /// Sets the serial.
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    /// Sets the `jti`.
    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    /// Sets the task ID.
    pub fn task(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }

    /// Adds a detail.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// One journal record (the contract's JSON shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the journal, from 1.
    pub seq: u64,
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Dotted kind.
    pub kind: String,
    /// Who did it.
    pub actor: Actor,
    /// The identity concerned.
    pub spiffe_id: Option<String>,
    /// The entry concerned.
    pub entry_id: Option<String>,
    /// X509-SVID serial (hex).
    pub serial: Option<String>,
    /// JWT-SVID `jti`.
    pub jti: Option<String>,
    /// Task ID.
    pub task_id: Option<String>,
    /// Anything else.
    pub details: Map<String, Value>,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// SHA-256 of this record's canonical form (hex).
    pub hash: String,
}

/// The fields a record's hash covers, in this order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time: &'a str,
    kind: &'a str,
    actor: &'a Actor,
    spiffe_id: &'a Option<String>,
    entry_id: &'a Option<String>,
    serial: &'a Option<String>,
    jti: &'a Option<String>,
    task_id: &'a Option<String>,
    details: &'a Map<String, Value>,
    prev_hash: &'a str,
}

impl Record {
    /// The bytes the hash covers: every field but `hash`, as compact JSON in declaration order
    /// (serde_json maps are sorted by key, so `details` is canonical too).
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&Canonical {
            seq: self.seq,
            time: &self.time,
            kind: &self.kind,
            actor: &self.actor,
            spiffe_id: &self.spiffe_id,
            entry_id: &self.entry_id,
            serial: &self.serial,
            jti: &self.jti,
            task_id: &self.task_id,
            details: &self.details,
            prev_hash: &self.prev_hash,
        })
        .unwrap_or_default()
    }

    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        hex_lower(digest(&SHA256, &self.canonical()).as_ref())
    }

    /// Whether `hash` matches the contents.
    pub fn hash_ok(&self) -> bool {
        self.compute_hash() == self.hash
    }
}

/// The head of a journal: appends records with consecutive numbers and chained hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Number of the last record (0 when empty).
    pub seq: u64,
    /// Hash of the last record ([`GENESIS`] when empty).
    pub hash: String,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

impl Chain {
    /// Continues after `seq` with hash `hash`.
    pub fn resume(seq: u64, hash: String) -> Self {
        Chain { seq, hash }
    }

    /// Appends one record at `now_ms` (unix milliseconds).
    pub fn append(&mut self, r: NewRecord, now_ms: i64) -> Record {
        self.next(r, rfc3339_ms(now_ms)).0
    }

    /// Appends `records` at `now_ms`, returning each with its JSON (exactly
    /// `serde_json::to_vec(&record)`), for a journal that stores them. Costs about half of
    /// [`Chain::append`] then encoding: the JSON is the canonical form the hash was computed
    /// over with the hash added (`Record` is `Canonical` plus `hash`, in the same order), and
    /// the time is formatted once.
    pub fn append_encoded(
        &mut self,
        records: Vec<NewRecord>,
        now_ms: i64,
    ) -> Vec<(Record, Vec<u8>)> {
        let time = rfc3339_ms(now_ms);
        records
            .into_iter()
            .map(|r| self.next(r, time.clone()))
            .collect()
    }

    /// The next record and its JSON.
    fn next(&mut self, r: NewRecord, time: String) -> (Record, Vec<u8>) {
        let mut rec = Record {
            seq: self.seq + 1,
            time,
            kind: r.kind,
            actor: r.actor,
            spiffe_id: r.spiffe_id,
            entry_id: r.entry_id,
            serial: r.serial,
            jti: r.jti,
            task_id: r.task_id,
            details: r.details,
            prev_hash: std::mem::take(&mut self.hash),
            hash: String::new(),
        };
        let mut json = rec.canonical();
        rec.hash = hex_lower(digest(&SHA256, &json).as_ref());
        // `{...,"prev_hash":"…"}` -> `{...,"prev_hash":"…","hash":"…"}`
        json.pop();
        json.extend_from_slice(b",\"hash\":\"");
        json.extend_from_slice(rec.hash.as_bytes());
        json.extend_from_slice(b"\"}");
        self.seq = rec.seq;
        self.hash = rec.hash.clone();
        (rec, json)
    }
}

/// Lowercase hex (the `hex` crate builds its string a `char` at a time; this is on the
/// journal's hot path, twice a record).
fn hex_lower(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for &x in b {
        out.push(DIGITS[usize::from(x >> 4)] as char);
        out.push(DIGITS[usize::from(x & 0xf)] as char);
    }
    out
}

/// `2026-11-22T10:00:00.123Z` for unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => String::from("1970-01-01T00:00:00.000Z"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chained_and_hashed() {
        let mut c = Chain::default();
        let a = c.append(NewRecord::new(kinds::ENTRY_CREATED, Actor::operator(0)), 0);
        let b = c.append(
            NewRecord::new(kinds::X509_ISSUED, Actor::agent("spiffe://td/writ/agent/x"))
                .serial("0a")
                .detail("not_after", 5),
            1_700_000_000_123,
        );
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(b.prev_hash, a.hash);
        assert!(a.hash_ok() && b.hash_ok());
        assert_eq!(b.time, "2023-11-14T22:13:20.123Z");
        // JSON round trip keeps the hash valid.
        let back: Record = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert!(back.hash_ok());
        let mut edited = back.clone();
        edited.serial = Some("0b".into());
        assert!(!edited.hash_ok());
    }

    #[test]
    fn encoded_appends_are_the_records_json_and_the_same_chain() {
        let make = |i: u64| {
            let mut r = NewRecord::new(
                kinds::JWT_ISSUED,
                Actor::agent("spiffe://td/writ/agent/\"q\""),
            );
            if i % 2 == 0 {
                r = r
                    .spiffe_id(format!("spiffe://td/w/{i}"))
                    .jti(format!("j{i}"));
            }
            if i % 3 == 0 {
                r = r.serial("0a").task("t\u{e9}").entry("e");
            }
            r.detail("aud", vec!["db", "\\x"]).detail("n", i)
        };
        let (mut a, mut b) = (Chain::default(), Chain::default());
        let plain: Vec<Record> = (0..7)
            .map(|i| a.append(make(i), 1_700_000_000_123))
            .collect();
        let encoded = b.append_encoded((0..7).map(make).collect(), 1_700_000_000_123);
        assert_eq!(a, b);
        for (p, (r, json)) in plain.iter().zip(&encoded) {
            assert_eq!(p, r);
            assert_eq!(json, &serde_json::to_vec(r).unwrap());
            assert!(r.hash_ok());
        }
        assert_eq!(hex_lower(&[0, 0x9f, 0xff]), hex::encode([0, 0x9f, 0xff]));
    }
}
