//! WIT-SVIDs and Workload Proof Tokens for applications (the rules are in `writ-ca::wit`).
//!
//! A workload holding a [`WitCredential`] sends, with each request, the WIT-SVID
//! (`Workload-Identity-Token`) and a fresh proof for the target (`Workload-Proof-Token`). A
//! service that receives them checks both with a [`ProofChecker`] (against the trust domain's
//! WIT keys from `FetchWITBundles`), or asks its agent (`Tasks::validate_wit`, which also knows
//! revocations).

use std::collections::HashMap;

use writ_ca::wit::{check_wpt, key_from_private_jwk, make_wpt, CheckedWpt, ReplayCache, WitError};
use writ_ca::{CaError, PrivateKey};
use writ_core::PublicJwk;

pub use writ_ca::wit::{MAX_WPT_TTL, MIN_JTI_LEN};

/// A WIT-SVID and the private key it is bound to.
#[derive(Clone)]
pub struct WitCredential {
    /// The WIT-SVID (compact JWS).
    pub wit_svid: String,
    key: PrivateKey,
}

impl std::fmt::Debug for WitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WitCredential(..)")
    }
}

impl WitCredential {
    /// From a WIT-SVID and its private key as a JWK (what `FetchWITSVID` and `StartTask`
    /// return).
    pub fn new(wit_svid: String, key_jwk: &str) -> Result<Self, CaError> {
        Ok(WitCredential {
            wit_svid,
            key: key_from_private_jwk(key_jwk)?,
        })
    }

    /// A proof for `audience`, valid `ttl_secs` (at most [`MAX_WPT_TTL`]) from now.
    pub fn proof(&self, audience: &str, ttl_secs: i64) -> Result<String, CaError> {
        make_wpt(
            &self.wit_svid,
            &self.key,
            audience,
            ttl_secs,
            writ_core::now_unix(),
        )
    }
}

/// Checks WIT-SVID + proof pairs for one audience, with its own replay cache.
#[derive(Debug)]
pub struct ProofChecker {
    audience: String,
    /// WIT keys by trust domain name, then `kid`.
    keys: HashMap<String, HashMap<String, PublicJwk>>,
    replay: ReplayCache,
}

impl ProofChecker {
    /// A checker for `audience` remembering up to `replay_capacity` unexpired `jti`s.
    pub fn new(audience: impl Into<String>, replay_capacity: usize) -> Self {
        ProofChecker {
            audience: audience.into(),
            keys: HashMap::new(),
            replay: ReplayCache::new(replay_capacity),
        }
    }

    /// Sets the WIT keys of trust domain `td` from a JWK Set (a `FetchWITBundles` value);
    /// keys without a `kid`, of an unknown type, or of another `use` are skipped.
    pub fn set_bundle(&mut self, td: &str, jwks: &str) -> Result<usize, String> {
        let v: serde_json::Value =
            serde_json::from_str(jwks).map_err(|e| format!("WIT bundle: {e}"))?;
        let mut m = HashMap::new();
        for k in v
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("WIT bundle: no `keys` array")?
        {
            let Some(obj) = k.as_object() else { continue };
            if obj.get("use").and_then(|u| u.as_str()) != Some("wit-svid") {
                continue;
            }
            let (Some(kid), Ok(Some(key))) = (
                obj.get("kid").and_then(|k| k.as_str()),
                PublicJwk::from_jwk_map(obj),
            ) else {
                continue;
            };
            m.insert(kid.to_owned(), key);
        }
        let n = m.len();
        self.keys
            .insert(td.trim_start_matches("spiffe://").to_owned(), m);
        Ok(n)
    }

    /// Checks one request's tokens now.
    pub fn check(&mut self, wit: &str, wpt: &str) -> Result<CheckedWpt, WitError> {
        let keys = &self.keys;
        check_wpt(
            wit,
            wpt,
            &self.audience,
            writ_core::now_unix(),
            |td, kid| keys.get(td.as_str()).and_then(|m| m.get(kid)).cloned(),
            &mut self.replay,
        )
    }
}
