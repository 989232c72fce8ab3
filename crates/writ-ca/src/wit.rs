//! WIT-SVIDs and Workload Proof Tokens (spiffe-requirements.md section 9; IETF
//! draft-ietf-wimse-workload-creds and draft-ietf-wimse-wpt).
//!
//! A WIT-SVID is a JWT (`typ` `wit+jwt`) that binds a SPIFFE ID (`sub`) to a key the workload
//! holds (`cnf.jwk`); it carries no `aud`. Alone it proves nothing: with each request the
//! workload sends a Workload Proof Token (`typ` `wpt+jwt`) signed with that key, for one
//! audience (`aud`), short-lived (`exp`), unique (`jti`, checked against a replay cache) and
//! tied to the WIT (`wth` = base64url SHA-256 of the WIT).
//!
//! The checker ([`check_wpt`]) verifies the WIT against the trust domain's keys, then the WPT
//! against `cnf.jwk`, then `aud`, `exp`, `wth` and the replay cache, in that order, and refuses
//! on the first failure.
//!
//! Invariants: only ES256 and ES384 are signed or accepted for the `cnf` key here (ES256 is the
//! one the draft makes mandatory); a WPT valid for longer than [`MAX_WPT_TTL`] is refused; the
//! replay cache never grows past its capacity (when full it refuses, it does not forget
//! unexpired `jti`s).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};
use writ_core::{PublicJwk, SpiffeId, TrustDomain};

use crate::error::CaError;
use crate::jwt::{JwtError, JwtSigner, LEEWAY_SECS, MAX_TOKEN_LEN};
use crate::keys::{KeyType, PrivateKey};

/// Longest lifetime a WPT may have (the draft: seconds to about a minute).
pub const MAX_WPT_TTL: i64 = 300;
/// Shortest `jti` accepted in a WPT (128 bits in base64url is 22 characters).
pub const MIN_JTI_LEN: usize = 22;

/// Why a WIT-SVID or WPT is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitError {
    /// A JWT-level failure (shape, algorithm, signature, times, unknown key).
    #[error("{which}: {err}")]
    Jwt {
        /// `WIT-SVID` or `WPT`.
        which: &'static str,
        /// What failed.
        err: JwtError,
    },
    /// Wrong `typ`.
    #[error("{which}: `typ` must be `{want}`")]
    Typ {
        /// `WIT-SVID` or `WPT`.
        which: &'static str,
        /// The required value.
        want: &'static str,
    },
    /// A WIT-SVID with an `aud` claim.
    #[error("WIT-SVID: must not carry `aud`")]
    WitAudience,
    /// No usable `cnf.jwk`.
    #[error("WIT-SVID: `cnf.jwk` is missing or not an EC P-256/P-384 key")]
    BadCnf,
    /// WPT `aud` is not the checker's.
    #[error("WPT: `aud` is not `{0}`")]
    WrongAudience(String),
    /// WPT lives too long.
    #[error("WPT: `exp` is more than {MAX_WPT_TTL}s away")]
    TooLong,
    /// WPT `jti` missing or short.
    #[error("WPT: `jti` is missing or shorter than 128 bits")]
    BadJti,
    /// WPT `wth` does not match the WIT sent with it.
    #[error("WPT: `wth` does not match the WIT-SVID")]
    WrongWth,
    /// The `jti` was seen before.
    #[error("WPT: `jti` `{0}` was already used (replay)")]
    Replay(String),
    /// The replay cache (or this holder's share of it) is full of unexpired `jti`s.
    #[error("WPT: replay cache is full for this identity; refusing rather than forgetting")]
    CacheFull,
}

fn jwt(which: &'static str) -> impl Fn(JwtError) -> WitError {
    move |err| WitError::Jwt { which, err }
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn jwk_alg(k: &PublicJwk) -> Option<&'static str> {
    match k {
        PublicJwk::Ec { crv, .. } if crv == "P-256" => Some("ES256"),
        PublicJwk::Ec { crv, .. } if crv == "P-384" => Some("ES384"),
        _ => None,
    }
}

impl JwtSigner {
    /// Signs a WIT-SVID for `sub` bound to `cnf` (the workload's public key), valid for
    /// `ttl_secs` from `now`. Returns the token, its `exp` and its `jti`.
    pub fn sign_wit(
        &self,
        sub: &SpiffeId,
        cnf: &PublicJwk,
        ttl_secs: i64,
        now: i64,
    ) -> Result<(String, i64, String), CaError> {
        if ttl_secs <= 0 {
            return Err(CaError::ZeroTtl);
        }
        let alg = jwk_alg(cnf).ok_or_else(|| {
            CaError::BadPublicKey("a WIT-SVID key must be EC P-256 or P-384".into())
        })?;
        let mut jwk = cnf.to_jwk_map();
        jwk.insert("alg".into(), alg.into());
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| CaError::Signing)?;
        let jti = hex::encode(jti);
        let exp = now + ttl_secs;
        let header = json!({"alg": self.alg(), "kid": self.kid(), "typ": "wit+jwt"});
        let claims = json!({
            "sub": sub.as_str(),
            "exp": exp,
            "iat": now,
            "jti": jti,
            "cnf": {"jwk": Value::Object(jwk)},
        });
        let input = format!("{}.{}", b64json(&header), b64json(&claims));
        let sig = self.sign_bytes(input.as_bytes())?;
        Ok((format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)), exp, jti))
    }
}

/// A WIT-SVID that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedWit {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// The workload's key (`cnf.jwk`).
    pub cnf: PublicJwk,
    /// All claims.
    pub claims: Map<String, Value>,
}

/// Verifies a WIT-SVID at `now` against the WIT keys `keys_for` returns for the subject's
/// trust domain (a JWK Set's keys, looked up by `kid`).
pub fn validate_wit(
    token: &str,
    now: i64,
    keys_for: impl Fn(&TrustDomain, &str) -> Option<PublicJwk>,
) -> Result<ValidatedWit, WitError> {
    let w = "WIT-SVID";
    let (header, claims, input, sig) = crate::jwt::parts(token).map_err(jwt(w))?;
    if header.get("typ").and_then(Value::as_str) != Some("wit+jwt") {
        return Err(WitError::Typ {
            which: w,
            want: "wit+jwt",
        });
    }
    let alg = crate::jwt::allowed_alg(&header).map_err(jwt(w))?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(JwtError::MissingKid)
        .map_err(jwt(w))?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| SpiffeId::parse(s).ok())
        .ok_or(JwtError::BadSubject)
        .map_err(jwt(w))?;
    let key = keys_for(&sub.trust_domain(), kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.to_owned()))
        .map_err(jwt(w))?;
    crate::jwt::verify_signature(alg, kid, &key, input.as_bytes(), &sig).map_err(jwt(w))?;
    crate::jwt::check_claim_times(&claims, now).map_err(jwt(w))?;
    if claims.contains_key("aud") {
        return Err(WitError::WitAudience);
    }
    let cnf = claims
        .get("cnf")
        .and_then(|c| c.get("jwk"))
        .and_then(Value::as_object)
        .and_then(|m| PublicJwk::from_jwk_map(m).ok().flatten())
        .filter(|k| jwk_alg(k).is_some())
        .ok_or(WitError::BadCnf)?;
    Ok(ValidatedWit {
        spiffe_id: sub,
        cnf,
        claims,
    })
}

/// `wth`: base64url SHA-256 of the WIT-SVID's compact form.
pub fn wit_hash(wit: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, wit.as_bytes()))
}

/// Makes a WPT for `audience` with the WIT's key (`key`, the private half of `cnf.jwk`),
/// valid `ttl_secs` (at most [`MAX_WPT_TTL`]) from `now`.
pub fn make_wpt(
    wit: &str,
    key: &PrivateKey,
    audience: &str,
    ttl_secs: i64,
    now: i64,
) -> Result<String, CaError> {
    if ttl_secs <= 0 || ttl_secs > MAX_WPT_TTL {
        return Err(CaError::ZeroTtl);
    }
    let mut jti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| CaError::Signing)?;
    let header = json!({"alg": key.key_type().jws_alg(), "typ": "wpt+jwt"});
    let claims = json!({
        "aud": audience,
        "exp": now + ttl_secs,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "wth": wit_hash(wit),
    });
    let input = format!("{}.{}", b64json(&header), b64json(&claims));
    let pair = key.ring_fixed_key_pair()?;
    let sig = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| CaError::Signing)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
}

/// `jti`s seen, until they expire. Bounded: when full of unexpired `jti`s it refuses. Each
/// holder may fill at most a tenth of it, so one workload minting proofs as fast as it can
/// locks out only itself, not every other caller of the checker. The holder is the WIT
/// subject's root identity ([`holder_of`]: a task counts against the workload that started
/// it, or one could start ten tasks to fill the cache), kept as a hash, not a copy.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<String, (i64, u64)>,
    per_holder: HashMap<u64, usize>,
    capacity: usize,
}

/// The identity a WIT subject's proofs count against: the subject without any `/task/...`
/// suffix (tasks and sub-tasks share their starting workload's share).
pub fn holder_of(sub: &str) -> &str {
    sub.find("/task/").map_or(sub, |i| &sub[..i])
}

fn holder_hash(holder: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    if holder.is_empty() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    holder.hash(&mut h);
    h.finish() | 1
}

impl ReplayCache {
    /// A cache of at most `capacity` unexpired `jti`s.
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashMap::new(),
            per_holder: HashMap::new(),
            capacity,
        }
    }

    /// Records `jti` (valid until `exp`) with no holder named; refuses one seen before.
    pub fn check_and_insert(&mut self, jti: &str, exp: i64, now: i64) -> Result<(), WitError> {
        self.check_and_insert_for("", jti, exp, now)
    }

    /// Records `jti` of `holder` (valid until `exp`); refuses one seen before, and a holder
    /// over its share.
    pub fn check_and_insert_for(
        &mut self,
        holder: &str,
        jti: &str,
        exp: i64,
        now: i64,
    ) -> Result<(), WitError> {
        if self.seen.contains_key(jti) {
            return Err(WitError::Replay(jti.to_owned()));
        }
        let h = holder_hash(holder);
        let share = (self.capacity / 10).max(1);
        let full = |c: &Self| {
            c.seen.len() >= c.capacity
                || (h != 0 && c.per_holder.get(&h).copied().unwrap_or(0) >= share)
        };
        if full(self) {
            let per = &mut self.per_holder;
            self.seen.retain(|_, (e, hh)| {
                let keep = *e + LEEWAY_SECS >= now;
                if !keep {
                    if let Some(n) = per.get_mut(hh) {
                        *n = n.saturating_sub(1);
                    }
                }
                keep
            });
            per.retain(|_, n| *n > 0);
            if full(self) {
                return Err(WitError::CacheFull);
            }
        }
        self.seen.insert(jti.to_owned(), (exp, h));
        if h != 0 {
            *self.per_holder.entry(h).or_default() += 1;
        }
        Ok(())
    }

    /// `jti`s held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// What a WPT check proved: who sent the request.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedWpt {
    /// The WIT-SVID.
    pub wit: ValidatedWit,
    /// The WPT's `jti`.
    pub jti: String,
    /// The WPT's `exp`.
    pub exp: i64,
}

/// Checks a request's `Workload-Identity-Token` (`wit`) and `Workload-Proof-Token` (`wpt`)
/// for `audience` at `now`: the WIT against the trust domain's keys, the WPT against the WIT's
/// `cnf.jwk`, then `aud`, `exp` (present, in the future, at most [`MAX_WPT_TTL`] away), `jti`
/// (128 bits or more, never seen), and `wth`.
pub fn check_wpt(
    wit: &str,
    wpt: &str,
    audience: &str,
    now: i64,
    keys_for: impl Fn(&TrustDomain, &str) -> Option<PublicJwk>,
    replay: &mut ReplayCache,
) -> Result<CheckedWpt, WitError> {
    let c = verify_wpt(wit, wpt, audience, now, keys_for)?;
    record_wpt(&c, now, replay)?;
    Ok(c)
}

/// Records a verified proof's `jti` in `replay` (refusing a replay, or a holder over its
/// share). Split from [`verify_wpt`] so the signature checks run without the cache's lock.
pub fn record_wpt(c: &CheckedWpt, now: i64, replay: &mut ReplayCache) -> Result<(), WitError> {
    replay.check_and_insert_for(holder_of(c.wit.spiffe_id.as_str()), &c.jti, c.exp, now)
}

/// Everything [`check_wpt`] checks but the replay cache.
pub fn verify_wpt(
    wit: &str,
    wpt: &str,
    audience: &str,
    now: i64,
    keys_for: impl Fn(&TrustDomain, &str) -> Option<PublicJwk>,
) -> Result<CheckedWpt, WitError> {
    let v = validate_wit(wit, now, keys_for)?;
    let w = "WPT";
    if wpt.len() > MAX_TOKEN_LEN {
        return Err(WitError::Jwt {
            which: w,
            err: JwtError::TooLarge,
        });
    }
    let (header, claims, input, sig) = crate::jwt::parts(wpt).map_err(jwt(w))?;
    if header.get("typ").and_then(Value::as_str) != Some("wpt+jwt") {
        return Err(WitError::Typ {
            which: w,
            want: "wpt+jwt",
        });
    }
    let alg = crate::jwt::allowed_alg(&header).map_err(jwt(w))?;
    if Some(alg) != jwk_alg(&v.cnf) {
        return Err(WitError::Jwt {
            which: w,
            err: JwtError::KeyMismatch("cnf".into(), alg.to_owned()),
        });
    }
    crate::jwt::verify_signature(alg, "cnf", &v.cnf, input.as_bytes(), &sig).map_err(jwt(w))?;
    if claims.get("aud").and_then(Value::as_str) != Some(audience) {
        return Err(WitError::WrongAudience(audience.to_owned()));
    }
    crate::jwt::check_claim_times(&claims, now).map_err(jwt(w))?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtError::MissingExp)
        .map_err(jwt(w))?;
    if exp > now + MAX_WPT_TTL {
        return Err(WitError::TooLong);
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| j.len() >= MIN_JTI_LEN && j.len() <= 256)
        .ok_or(WitError::BadJti)?;
    if claims.get("wth").and_then(Value::as_str) != Some(wit_hash(wit).as_str()) {
        return Err(WitError::WrongWth);
    }
    Ok(CheckedWpt {
        jti: jti.to_owned(),
        exp,
        wit: v,
    })
}

/// A P-256 key for a WIT-SVID as a private JWK (what `FetchWITSVID` returns in
/// `wit_svid_key`): `kty`, `crv`, `x`, `y`, `d`, `alg`.
pub fn private_jwk(key: &PrivateKey) -> Result<String, CaError> {
    let public = PublicJwk::from_ec_point(&key.public_point()?)
        .map_err(|e| CaError::BadPublicKey(e.to_string()))?;
    let mut m = public.to_jwk_map();
    m.insert("d".into(), URL_SAFE_NO_PAD.encode(key.ec_scalar()?).into());
    m.insert("alg".into(), key.key_type().jws_alg().into());
    Ok(Value::Object(m).to_string())
}

/// The private key of a private JWK made by [`private_jwk`] (or any EC P-256/P-384 JWK).
pub fn key_from_private_jwk(jwk: &str) -> Result<PrivateKey, CaError> {
    let bad = |r: &str| CaError::BadPublicKey(format!("private JWK: {r}"));
    let v: Value = serde_json::from_str(jwk).map_err(|_| bad("not JSON"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| bad(&format!("`{k}` missing or not base64url")))
    };
    let kt = match v.get("crv").and_then(Value::as_str) {
        Some("P-256") => KeyType::EcP256,
        Some("P-384") => KeyType::EcP384,
        _ => return Err(bad("`crv` must be P-256 or P-384")),
    };
    let (x, y, d) = (field("x")?, field("y")?, field("d")?);
    let mut point = vec![4u8];
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    PrivateKey::from_ec_parts(kt, &d, &point)
}
