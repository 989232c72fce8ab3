//! Authority rotation on demand (as SPIRE 1.11 has it): show the X.509 CAs and JWT keys of the
//! journal; prepare a new one now; activate the prepared one now; taint an old one (agents
//! re-sign, or drop tokens of, what it signed); revoke a tainted one (it leaves the bundle and
//! its key is destroyed).
//!
//! Invariants: every action goes through the same persist hook as a rotation step (the journal
//! is durable before the manager uses it); the active authority can be neither tainted nor
//! revoked; only a tainted authority can be revoked, so relying parties are told to move away
//! before it disappears from the bundle.

use ring::digest::{digest, SHA256};
use serde::Serialize;

use crate::error::CaError;
use crate::rotation::{
    destroy_keys, CaJournal, CaManager, CaManagerParts, PersistJournal, SlotState,
};

/// Which kind of authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityKind {
    /// X.509 CAs.
    X509,
    /// JWT signing keys.
    Jwt,
}

/// One authority as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorityInfo {
    /// Which kind.
    pub kind: AuthorityKind,
    /// Key manager ID (what taint and revoke name).
    pub key_id: String,
    /// `prepared`, `active` or `old`.
    pub state: SlotState,
    /// Tainted by an operator.
    pub tainted: bool,
    /// X.509: the subject key identifier (hex), what leaves' authority key identifier names;
    /// JWT: the `kid`.
    pub public_id: String,
    /// Validity start (unix seconds).
    pub not_before: i64,
    /// Validity end (unix seconds).
    pub not_after: i64,
}

/// The subject key identifier of a DER certificate, hex (empty if absent).
pub fn subject_key_id(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    let Ok((_, c)) = X509Certificate::from_der(der) else {
        return String::new();
    };
    for e in c.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(k) = e.parsed_extension() {
            return hex::encode(k.0);
        }
    }
    // rcgen names keys by a hash of the key when no SKI is set; keep a stable fallback.
    hex::encode(&digest(&SHA256, c.public_key().raw).as_ref()[..20])
}

/// The authority key identifier of a DER certificate (the issuer's SKI), hex.
pub fn authority_key_id(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    let Ok((_, c)) = X509Certificate::from_der(der) else {
        return String::new();
    };
    for e in c.extensions() {
        if let ParsedExtension::AuthorityKeyIdentifier(a) = e.parsed_extension() {
            if let Some(k) = &a.key_identifier {
                return hex::encode(k.0);
            }
        }
    }
    String::new()
}

fn refuse(msg: impl Into<String>) -> CaError {
    CaError::Authority(msg.into())
}

impl CaManager {
    /// The authorities of `kind`, oldest first.
    pub fn authorities(&self, kind: AuthorityKind) -> Vec<AuthorityInfo> {
        match kind {
            AuthorityKind::X509 => self
                .journal
                .x509
                .iter()
                .map(|s| AuthorityInfo {
                    kind,
                    key_id: s.key_id.clone(),
                    state: s.state,
                    tainted: s.tainted,
                    public_id: subject_key_id(&s.cert_der),
                    not_before: s.not_before,
                    not_after: s.not_after,
                })
                .collect(),
            AuthorityKind::Jwt => self
                .journal
                .jwt
                .iter()
                .map(|s| AuthorityInfo {
                    kind,
                    key_id: s.key_id.clone(),
                    state: s.state,
                    tainted: s.tainted,
                    public_id: s.kid.clone(),
                    not_before: s.not_before,
                    not_after: s.not_after,
                })
                .collect(),
        }
    }

    /// Subject key identifiers of tainted X.509 CAs; `kid`s of tainted JWT keys.
    pub fn tainted(&self) -> (Vec<String>, Vec<String>) {
        (
            self.authorities(AuthorityKind::X509)
                .into_iter()
                .filter(|a| a.tainted)
                .map(|a| a.public_id)
                .collect(),
            self.authorities(AuthorityKind::Jwt)
                .into_iter()
                .filter(|a| a.tainted)
                .map(|a| a.public_id)
                .collect(),
        )
    }

    /// Applies `change` to a copy of the journal, persists it, then switches to it (reloading
    /// the signers, destroying `dropped` keys). Returns the authority `pick` names afterwards.
    fn apply(
        &mut self,
        kind: AuthorityKind,
        persist: PersistJournal<'_>,
        change: impl FnOnce(
            &CaManagerParts<'_>,
            &mut CaJournal,
        ) -> Result<(String, Vec<String>), CaError>,
    ) -> Result<AuthorityInfo, CaError> {
        let mut journal = self.journal.clone();
        let parts = CaManagerParts {
            config: &self.config,
            keys: self.keys.as_ref(),
            upstream: self.upstream.as_deref(),
        };
        let (key_id, dropped) = change(&parts, &mut journal)?;
        let (x, j) = parts.load_active(&journal)?;
        persist(&journal)?;
        self.journal = journal;
        self.x509_active = x;
        self.jwt_active = j;
        destroy_keys(self.keys.as_ref(), &dropped);
        Ok(self
            .authorities(kind)
            .into_iter()
            .find(|a| a.key_id == key_id)
            .unwrap_or(AuthorityInfo {
                kind,
                key_id,
                state: SlotState::Old,
                tainted: true,
                public_id: String::new(),
                not_before: 0,
                not_after: 0,
            }))
    }

    /// Makes a prepared authority now (published in the bundle at once, not signing yet).
    pub fn prepare_now(
        &mut self,
        kind: AuthorityKind,
        now: i64,
        persist: PersistJournal<'_>,
    ) -> Result<AuthorityInfo, CaError> {
        self.apply(kind, persist, |parts, j| {
            let mut next = j.next_key;
            let id = match kind {
                AuthorityKind::X509 => {
                    if j.x509.iter().any(|s| s.state == SlotState::Prepared) {
                        return Err(refuse(
                            "an X.509 authority is already prepared; activate it first",
                        ));
                    }
                    let s = parts.make_x509(&mut next, SlotState::Prepared, now)?;
                    let id = s.key_id.clone();
                    j.x509.push(s);
                    id
                }
                AuthorityKind::Jwt => {
                    if j.jwt.iter().any(|s| s.state == SlotState::Prepared) {
                        return Err(refuse("a JWT key is already prepared; activate it first"));
                    }
                    let s = parts.make_jwt(&mut next, SlotState::Prepared, now)?;
                    let id = s.key_id.clone();
                    j.jwt.push(s);
                    id
                }
            };
            j.next_key = next;
            Ok((id, Vec::new()))
        })
    }

    /// Activates the prepared authority now; the active one becomes old (still published).
    pub fn activate_now(
        &mut self,
        kind: AuthorityKind,
        persist: PersistJournal<'_>,
    ) -> Result<AuthorityInfo, CaError> {
        self.apply(kind, persist, |_, j| {
            fn swap<S>(
                slots: &mut [S],
                state: impl Fn(&S) -> SlotState,
                set: impl Fn(&mut S, SlotState),
                key: impl Fn(&S) -> String,
            ) -> Result<String, CaError> {
                let p = slots
                    .iter()
                    .position(|s| state(s) == SlotState::Prepared)
                    .ok_or_else(|| refuse("nothing is prepared; run prepare first"))?;
                for s in slots.iter_mut() {
                    if state(s) == SlotState::Active {
                        set(s, SlotState::Old);
                    }
                }
                set(&mut slots[p], SlotState::Active);
                Ok(key(&slots[p]))
            }
            let id = match kind {
                AuthorityKind::X509 => swap(
                    &mut j.x509,
                    |s| s.state,
                    |s, v| s.state = v,
                    |s| s.key_id.clone(),
                )?,
                AuthorityKind::Jwt => swap(
                    &mut j.jwt,
                    |s| s.state,
                    |s, v| s.state = v,
                    |s| s.key_id.clone(),
                )?,
            };
            Ok((id, Vec::new()))
        })
    }

    /// Taints an old authority: relying parties and agents move off what it signed.
    pub fn taint(
        &mut self,
        kind: AuthorityKind,
        key_id: &str,
        persist: PersistJournal<'_>,
    ) -> Result<AuthorityInfo, CaError> {
        self.apply(kind, persist, |_, j| {
            let (state, tainted) = match kind {
                AuthorityKind::X509 => j
                    .x509
                    .iter_mut()
                    .find(|s| s.key_id == key_id)
                    .map(|s| (s.state, &mut s.tainted)),
                AuthorityKind::Jwt => j
                    .jwt
                    .iter_mut()
                    .find(|s| s.key_id == key_id)
                    .map(|s| (s.state, &mut s.tainted)),
            }
            .ok_or_else(|| refuse(format!("no authority `{key_id}` in the journal")))?;
            if state != SlotState::Old {
                return Err(refuse(format!(
                    "authority `{key_id}` is {state:?}; only an old authority can be tainted (activate another one first)"
                )));
            }
            if *tainted {
                return Err(refuse(format!("authority `{key_id}` is already tainted")));
            }
            *tainted = true;
            Ok((key_id.to_owned(), Vec::new()))
        })
    }

    /// Revokes a tainted authority: it leaves the journal and the bundle, its key is destroyed.
    pub fn revoke_authority(
        &mut self,
        kind: AuthorityKind,
        key_id: &str,
        persist: PersistJournal<'_>,
    ) -> Result<AuthorityInfo, CaError> {
        self.apply(kind, persist, |_, j| {
            let tainted = match kind {
                AuthorityKind::X509 => j
                    .x509
                    .iter()
                    .find(|s| s.key_id == key_id)
                    .map(|s| s.tainted),
                AuthorityKind::Jwt => j.jwt.iter().find(|s| s.key_id == key_id).map(|s| s.tainted),
            }
            .ok_or_else(|| refuse(format!("no authority `{key_id}` in the journal")))?;
            if !tainted {
                return Err(refuse(format!(
                    "authority `{key_id}` is not tainted; taint it first so agents move off it"
                )));
            }
            j.x509.retain(|s| s.key_id != key_id);
            j.jwt.retain(|s| s.key_id != key_id);
            Ok((key_id.to_owned(), vec![key_id.to_owned()]))
        })
    }
}
