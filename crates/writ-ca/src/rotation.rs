//! The CA rotation journal and the manager that follows it.
//!
//! The journal lists X.509 CAs and JWT signing keys, each *prepared*, *active* or *old*:
//! - at half of the active authority's lifetime a new one is **prepared**: it is published in the
//!   bundle at once but signs nothing yet, so every relying party learns it before it is used;
//! - at five sixths the prepared one becomes **active** and the previous one **old**; old ones
//!   stay in the bundle until they expire, because SVIDs they signed are still in use;
//! - when nothing valid is active (first start, or a server that was down past an expiry) a new
//!   authority is made active at once.
//!
//! The journal is plain data (serde): the server persists it in its store and hands it back on
//! start, so a restart resumes the same rotation. Keys live in the [`KeyManager`], under the
//! journal's key IDs.
//!
//! Durability invariant: a new journal is persisted (through the caller's `persist` hook)
//! *before* any authority it introduces can sign, and the keys it drops are destroyed only
//! *after* that. New keys are written durably by the key manager when they are made. So a crash
//! at any point leaves a persisted journal that names every authority that ever signed, with its
//! key; a failed persist leaves the manager on its previous journal and signers.

use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use writ_core::{JwtAuthority, PublicJwk, TrustDomain};

use crate::error::CaError;
use crate::jwt::JwtSigner;
use crate::keys::{KeyManager, KeyType};
use crate::x509::{build_ca_cert, UpstreamAuthority, X509Authority};

/// Where an authority is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Published in the bundle, not signing yet.
    Prepared,
    /// Signing.
    Active,
    /// Retired from signing, published until it expires.
    Old,
}

/// An X.509 CA in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509Slot {
    /// Key manager ID of the CA key.
    pub key_id: String,
    /// State.
    pub state: SlotState,
    /// CA certificate, DER.
    #[serde(with = "b64")]
    pub cert_der: Vec<u8>,
    /// Intermediates above it (upstream mode).
    #[serde(with = "b64vec", default)]
    pub upstream_chain: Vec<Vec<u8>>,
    /// NotBefore (unix seconds).
    pub not_before: i64,
    /// NotAfter (unix seconds).
    pub not_after: i64,
    /// Tainted by an operator: agents re-sign what it signed; it may then be revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tainted: bool,
}

/// A JWT signing key in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSlot {
    /// The `kid` published in the bundle.
    pub kid: String,
    /// Key manager ID of the key.
    pub key_id: String,
    /// State.
    pub state: SlotState,
    /// The public key.
    pub public_key: PublicJwk,
    /// Start of validity (unix seconds).
    pub not_before: i64,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// Tainted by an operator: agents drop tokens it signed; it may then be revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tainted: bool,
}

/// The whole journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaJournal {
    /// X.509 CAs, oldest first.
    pub x509: Vec<X509Slot>,
    /// JWT keys, oldest first.
    pub jwt: Vec<JwtSlot>,
    /// Counter for key IDs.
    pub next_key: u64,
}

/// CA settings.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Trust domain of the CA.
    pub trust_domain: TrustDomain,
    /// Key type of CA and JWT keys.
    pub key_type: KeyType,
    /// Lifetime of each X.509 CA (seconds).
    pub ca_ttl_secs: i64,
    /// Lifetime of each JWT key (seconds).
    pub jwt_key_ttl_secs: i64,
    /// `iss` claim for JWT-SVIDs, if any.
    pub jwt_issuer: Option<String>,
}

/// Runs the journal: holds the active authorities and rotates them on [`CaManager::tick`].
pub struct CaManager {
    pub(crate) config: CaConfig,
    pub(crate) keys: Arc<dyn KeyManager>,
    pub(crate) upstream: Option<Arc<dyn UpstreamAuthority>>,
    pub(crate) journal: CaJournal,
    pub(crate) x509_active: Arc<X509Authority>,
    pub(crate) jwt_active: Arc<JwtSigner>,
}

impl std::fmt::Debug for CaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaManager")
            .field("journal", &self.journal)
            .finish()
    }
}

trait Slot {
    fn state(&self) -> SlotState;
    fn set_state(&mut self, s: SlotState);
    fn window(&self) -> (i64, i64);
    fn key_id(&self) -> &str;
}

macro_rules! impl_slot {
    ($t:ty) => {
        impl Slot for $t {
            fn state(&self) -> SlotState {
                self.state
            }
            fn set_state(&mut self, s: SlotState) {
                self.state = s;
            }
            fn window(&self) -> (i64, i64) {
                (self.not_before, self.not_after)
            }
            fn key_id(&self) -> &str {
                &self.key_id
            }
        }
    };
}
impl_slot!(X509Slot);
impl_slot!(JwtSlot);

/// What one rotation step does to a slot list; `make` creates a new slot in a given state.
/// Returns whether anything changed. The keys of expired slots are added to `dropped`, to be
/// destroyed once the journal without them is persisted.
fn rotate<S: Slot>(
    slots: &mut Vec<S>,
    now: i64,
    dropped: &mut Vec<String>,
    mut make: impl FnMut(SlotState) -> Result<S, CaError>,
) -> Result<bool, CaError> {
    let mut changed = false;
    // Expired authorities leave the bundle; their keys go after the journal is persisted.
    let (expired, kept): (Vec<S>, Vec<S>) = slots.drain(..).partition(|s| s.window().1 <= now);
    *slots = kept;
    for s in expired {
        dropped.push(s.key_id().to_owned());
        changed = true;
    }
    let active = slots.iter().position(|s| s.state() == SlotState::Active);
    let prepared = slots.iter().position(|s| s.state() == SlotState::Prepared);
    let Some(a) = active else {
        // Nothing can sign: promote a prepared one, or make a new one active right away.
        match prepared {
            Some(p) => slots[p].set_state(SlotState::Active),
            None => slots.push(make(SlotState::Active)?),
        }
        return Ok(true);
    };
    let (nb, na) = slots[a].window();
    let life = (na - nb).max(1);
    if prepared.is_none() && now >= nb + life / 2 {
        slots.push(make(SlotState::Prepared)?);
        changed = true;
    }
    if now >= nb + life * 5 / 6 {
        if let Some(p) = slots.iter().position(|s| s.state() == SlotState::Prepared) {
            slots[a].set_state(SlotState::Old);
            slots[p].set_state(SlotState::Active);
            changed = true;
        }
    }
    Ok(changed)
}

/// Makes a journal durable (the server writes it to its store and flushes). Called with the
/// new journal before any authority it introduces is used.
pub type PersistJournal<'a> = &'a mut dyn FnMut(&CaJournal) -> Result<(), CaError>;

impl CaManager {
    /// Opens the manager from a persisted journal (or `None` on first start) and runs one
    /// rotation step at `now`. When the step changed the journal (first start, or a server that
    /// was down past an expiry), `persist` is called with it before the manager is returned.
    pub fn open(
        config: CaConfig,
        keys: Arc<dyn KeyManager>,
        upstream: Option<Arc<dyn UpstreamAuthority>>,
        journal: Option<CaJournal>,
        now: i64,
        persist: PersistJournal<'_>,
    ) -> Result<Self, CaError> {
        let mut journal = journal.unwrap_or_default();
        // Make sure there is something active before building the signers.
        let mut tmp = CaManagerParts {
            config: &config,
            keys: keys.as_ref(),
            upstream: upstream.as_deref(),
        };
        let mut dropped = Vec::new();
        if tmp.step(&mut journal, now, &mut dropped)? {
            persist(&journal)?;
        }
        let (x509_active, jwt_active) = tmp.load_active(&journal)?;
        destroy_keys(keys.as_ref(), &dropped);
        Ok(CaManager {
            config,
            keys,
            upstream,
            journal,
            x509_active,
            jwt_active,
        })
    }

    /// Runs one rotation step. When the journal changed, `persist` makes the new journal
    /// durable *before* the manager switches to it: a new authority (for instance one made
    /// active at once because nothing valid was active) cannot sign anything that a crash right
    /// after could orphan. If `persist` fails the manager keeps its previous journal and
    /// signers, and the error is returned. Returns true when the journal (and so the bundle)
    /// changed; the caller then publishes the new bundle.
    pub fn tick(&mut self, now: i64, persist: PersistJournal<'_>) -> Result<bool, CaError> {
        let mut journal = self.journal.clone();
        let mut parts = CaManagerParts {
            config: &self.config,
            keys: self.keys.as_ref(),
            upstream: self.upstream.as_deref(),
        };
        let mut dropped = Vec::new();
        if !parts.step(&mut journal, now, &mut dropped)? {
            return Ok(false);
        }
        let (x, j) = parts.load_active(&journal)?;
        persist(&journal)?;
        self.journal = journal;
        self.x509_active = x;
        self.jwt_active = j;
        destroy_keys(self.keys.as_ref(), &dropped);
        Ok(true)
    }

    /// The journal, to persist.
    pub fn journal(&self) -> &CaJournal {
        &self.journal
    }

    /// The CA that signs X509-SVIDs now.
    pub fn x509_authority(&self) -> Arc<X509Authority> {
        self.x509_active.clone()
    }

    /// The key that signs JWT-SVIDs now.
    pub fn jwt_signer(&self) -> Arc<JwtSigner> {
        self.jwt_active.clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// X.509 roots to publish: the upstream roots in upstream mode, else every CA in the
    /// journal (prepared, active and old).
    pub fn x509_roots(&self) -> Vec<Vec<u8>> {
        match &self.upstream {
            Some(u) => u.bundle().to_vec(),
            None => self
                .journal
                .x509
                .iter()
                .map(|s| s.cert_der.clone())
                .collect(),
        }
    }

    /// JWT keys to publish (prepared, active and old).
    pub fn jwt_authorities(&self) -> Vec<JwtAuthority> {
        self.journal
            .jwt
            .iter()
            .map(|s| JwtAuthority {
                key_id: s.kid.clone(),
                public_key: s.public_key.clone(),
            })
            .collect()
    }

    /// When the next rotation step is due (unix seconds): the earliest prepare, activate or
    /// expiry point of any slot.
    pub fn next_event(&self) -> i64 {
        let mut t = i64::MAX;
        let mut consider = |state: SlotState, nb: i64, na: i64, has_prepared: bool| {
            let life = (na - nb).max(1);
            t = t.min(na);
            if state == SlotState::Active {
                if !has_prepared {
                    t = t.min(nb + life / 2);
                }
                t = t.min(nb + life * 5 / 6);
            }
        };
        let xp = self
            .journal
            .x509
            .iter()
            .any(|s| s.state == SlotState::Prepared);
        for s in &self.journal.x509 {
            consider(s.state, s.not_before, s.not_after, xp);
        }
        let jp = self
            .journal
            .jwt
            .iter()
            .any(|s| s.state == SlotState::Prepared);
        for s in &self.journal.jwt {
            consider(s.state, s.not_before, s.not_after, jp);
        }
        t
    }
}

/// Destroys the keys of authorities a persisted journal no longer names. A failure leaves a
/// stray key file, which is logged and otherwise harmless.
pub(crate) fn destroy_keys(keys: &dyn KeyManager, ids: &[String]) {
    for id in ids {
        if let Err(e) = keys.delete(id) {
            tracing::warn!(key = %id, error = %e, "cannot destroy the key of an expired authority");
        }
    }
}

pub(crate) struct CaManagerParts<'a> {
    pub(crate) config: &'a CaConfig,
    pub(crate) keys: &'a dyn KeyManager,
    pub(crate) upstream: Option<&'a dyn UpstreamAuthority>,
}

impl CaManagerParts<'_> {
    fn step(
        &mut self,
        journal: &mut CaJournal,
        now: i64,
        dropped: &mut Vec<String>,
    ) -> Result<bool, CaError> {
        let mut next_key = journal.next_key;
        let x = rotate(&mut journal.x509, now, dropped, |state| {
            self.make_x509(&mut next_key, state, now)
        })?;
        let j = rotate(&mut journal.jwt, now, dropped, |state| {
            self.make_jwt(&mut next_key, state, now)
        })?;
        journal.next_key = next_key;
        Ok(x || j)
    }

    /// A new X.509 CA (key made and stored) in `state`.
    pub(crate) fn make_x509(
        &self,
        next_key: &mut u64,
        state: SlotState,
        now: i64,
    ) -> Result<X509Slot, CaError> {
        let cfg = self.config;
        *next_key += 1;
        let key_id = format!("x509-ca-{next_key}");
        let key = self.keys.generate(&key_id, cfg.key_type)?;
        let (cert_der, upstream_chain) =
            build_ca_cert(&cfg.trust_domain, &key, cfg.ca_ttl_secs, now, self.upstream)?;
        let (nb, na) = crate::x509::validity(&crate::x509::parse_cert(&cert_der)?);
        Ok(X509Slot {
            key_id,
            state,
            cert_der,
            upstream_chain,
            not_before: nb,
            not_after: na,
            tainted: false,
        })
    }

    /// A new JWT key (made and stored) in `state`.
    pub(crate) fn make_jwt(
        &self,
        next_key: &mut u64,
        state: SlotState,
        now: i64,
    ) -> Result<JwtSlot, CaError> {
        *next_key += 1;
        let key_id = format!("jwt-{next_key}");
        let key = self.keys.generate(&key_id, self.config.key_type)?;
        let mut kid = [0u8; 16];
        SystemRandom::new()
            .fill(&mut kid)
            .map_err(|_| CaError::Signing)?;
        let public_key = PublicJwk::from_ec_point(&key.public_point()?)?;
        Ok(JwtSlot {
            kid: hex::encode(kid),
            key_id,
            state,
            public_key,
            not_before: now,
            not_after: now + self.config.jwt_key_ttl_secs,
            tainted: false,
        })
    }

    pub(crate) fn load_active(
        &self,
        journal: &CaJournal,
    ) -> Result<(Arc<X509Authority>, Arc<JwtSigner>), CaError> {
        let xs = journal
            .x509
            .iter()
            .find(|s| s.state == SlotState::Active)
            .ok_or_else(|| CaError::MissingKey("active x509 CA".into()))?;
        let key = self
            .keys
            .get(&xs.key_id)?
            .ok_or_else(|| CaError::MissingKey(xs.key_id.clone()))?;
        let x = X509Authority::new(
            self.config.trust_domain.clone(),
            xs.cert_der.clone(),
            &key,
            xs.upstream_chain.clone(),
        )?;
        let js = journal
            .jwt
            .iter()
            .find(|s| s.state == SlotState::Active)
            .ok_or_else(|| CaError::MissingKey("active jwt key".into()))?;
        let jkey = self
            .keys
            .get(&js.key_id)?
            .ok_or_else(|| CaError::MissingKey(js.key_id.clone()))?;
        let j = JwtSigner::new(js.kid.clone(), &jkey, self.config.jwt_issuer.clone())?;
        Ok((Arc::new(x), Arc::new(j)))
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64vec {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| STANDARD.encode(x)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.into_iter()
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}
