//! JWT-SVID signing and validation (spiffe-requirements.md section 3).
//!
//! Tokens are JWS compact serialization with a header of exactly `alg`, `kid` and `typ` (`JWT`),
//! and claims `sub`, `aud`, `exp`, `iat` and, when configured, `iss`. Validation refuses `none`,
//! every HMAC algorithm and anything not in the SPIFFE list; it needs `exp` (in the future), an
//! `aud` containing the validator's audience, and a signature by a key of the subject's trust
//! domain bundle, found by `kid`.
//!
//! Claims are read strictly: `aud` is a non-empty string or an array of non-empty strings (any
//! other member refuses the whole token, never a partial match); `exp`, `nbf` and `iat` are JSON
//! numbers when present. Clocks of the signer and validator may differ by up to
//! [`LEEWAY_SECS`]: a token stays valid that long after `exp`, is accepted that long before
//! `nbf`, and may carry an `iat` up to that far in the future (a later `iat` is refused: the token
//! was minted by a clock too far ahead, or forged to outlive its issuer's rotation).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{json, Map, Value};
use writ_core::{Bundle, PublicJwk, SpiffeId, TrustDomain};

use crate::error::CaError;
use crate::keys::{KeyType, PrivateKey};

/// Largest token accepted for validation, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew tolerated between signer and validator, in seconds, for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 30;

/// A JWT signing key with its `kid`.
pub struct JwtSigner {
    kid: String,
    key_type: KeyType,
    key: EcdsaKeyPair,
    public: PublicJwk,
    rng: SystemRandom,
    issuer: Option<String>,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtSigner({})", self.kid)
    }
}

impl JwtSigner {
    /// Wraps `key` as signer `kid`; `issuer` becomes the `iss` claim when set.
    pub fn new(kid: String, key: &PrivateKey, issuer: Option<String>) -> Result<Self, CaError> {
        let ring_key = key.ring_fixed_key_pair()?;
        let public = PublicJwk::from_ec_point(&key.public_point()?)?;
        Ok(JwtSigner {
            kid,
            key_type: key.key_type(),
            key: ring_key,
            public,
            rng: SystemRandom::new(),
            issuer,
        })
    }

    /// The key ID.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, for the bundle.
    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        self.key_type.jws_alg()
    }

    /// A fixed-width JWS signature over `input`.
    pub(crate) fn sign_bytes(&self, input: &[u8]) -> Result<Vec<u8>, CaError> {
        Ok(self
            .key
            .sign(&self.rng, input)
            .map_err(|_| CaError::Signing)?
            .as_ref()
            .to_vec())
    }

    /// Signs a JWT-SVID for `sub` and `audience`, valid for `ttl_secs` from `now`.
    /// Returns the token and its `exp`.
    pub fn sign(
        &self,
        sub: &SpiffeId,
        audience: &[String],
        ttl_secs: i64,
        now: i64,
    ) -> Result<(String, i64), CaError> {
        self.sign_with_jti(sub, audience, ttl_secs, now)
            .map(|(token, exp, _)| (token, exp))
    }

    /// As [`JwtSigner::sign`], also returning the token's `jti` (128 random bits, hex): the
    /// handle the audit journal and revocation use for this one token.
    pub fn sign_with_jti(
        &self,
        sub: &SpiffeId,
        audience: &[String],
        ttl_secs: i64,
        now: i64,
    ) -> Result<(String, i64, String), CaError> {
        if ttl_secs <= 0 {
            return Err(CaError::ZeroTtl);
        }
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::BadSpiffeId {
                id: sub.to_string(),
                reason: "a JWT-SVID needs at least one non-empty audience",
            });
        }
        let exp = now + ttl_secs;
        let header = json!({"alg": self.key_type.jws_alg(), "kid": self.kid, "typ": "JWT"});
        let aud: Value = if audience.len() == 1 {
            audience[0].clone().into()
        } else {
            audience.to_vec().into()
        };
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.as_str().into());
        claims.insert("aud".into(), aud);
        claims.insert("exp".into(), exp.into());
        claims.insert("iat".into(), now.into());
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| CaError::Signing)?;
        let jti = hex::encode(jti);
        claims.insert("jti".into(), jti.clone().into());
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| CaError::Signing)?;
        Ok((
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())),
            exp,
            jti,
        ))
    }
}

/// Why a JWT-SVID is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// Token over [`MAX_TOKEN_LEN`].
    #[error("token is too large")]
    TooLarge,
    /// `alg` is `none`, HMAC, or not one SPIFFE allows.
    #[error("algorithm `{0}` is not allowed")]
    BadAlgorithm(String),
    /// An allowed algorithm ring cannot check (ES512).
    #[error("algorithm `{0}` is not supported by this validator")]
    UnsupportedAlgorithm(String),
    /// A header field other than `alg`, `kid`, `typ`, or a bad `typ`.
    #[error("header field `{0}` is not allowed")]
    BadHeader(String),
    /// No `kid`.
    #[error("header has no `kid`")]
    MissingKid,
    /// `sub` missing or not a SPIFFE ID.
    #[error("`sub` is missing or not a valid SPIFFE ID")]
    BadSubject,
    /// No bundle for the subject's trust domain.
    #[error("no bundle for trust domain `{0}`")]
    NoBundle(String),
    /// The `kid` is not in the bundle.
    #[error("key id `{0}` is not in the trust domain's bundle")]
    UnknownKid(String),
    /// Key type and algorithm disagree.
    #[error("key `{0}` cannot be used with algorithm `{1}`")]
    KeyMismatch(String, String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` missing.
    #[error("`exp` claim is missing")]
    MissingExp,
    /// `exp`, `nbf` or `iat` present but not a JSON number.
    #[error("`{claim}` claim `{value}` is not a number")]
    BadTimeClaim {
        /// Which claim.
        claim: &'static str,
        /// Its JSON value.
        value: String,
    },
    /// `exp` in the past (beyond [`LEEWAY_SECS`]).
    #[error("token expired at {0}")]
    Expired(i64),
    /// `nbf` in the future (beyond [`LEEWAY_SECS`]).
    #[error("token is not valid before {0}")]
    NotYetValid(i64),
    /// `iat` in the future (beyond [`LEEWAY_SECS`]).
    #[error("token issued at {0}, in the future")]
    IssuedInFuture(i64),
    /// `aud` missing or empty.
    #[error("`aud` claim is missing or empty")]
    MissingAudience,
    /// `aud` (or one of its members) is not a non-empty string.
    #[error("`aud` value `{0}` is not a non-empty string")]
    BadAudience(String),
    /// `aud` lacks the validator's audience.
    #[error("audience `{0}` is not in the token's `aud`")]
    WrongAudience(String),
}

/// A JWT-SVID that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The subject.
    pub spiffe_id: SpiffeId,
    /// All claims.
    pub claims: Map<String, Value>,
}

/// Reads the `sub` of a token without checking anything else (to pick the bundle).
pub fn peek_subject(token: &str) -> Result<SpiffeId, JwtError> {
    let parts = split(token)?;
    let claims = decode_json(parts[1])?;
    subject(&claims)
}

fn split(token: &str) -> Result<[&str; 3], JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(c), Some(s), None) => Ok([h, c, s]),
        _ => Err(JwtError::Malformed("expected three dot-separated parts")),
    }
}

fn decode_json(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("part is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed("part is not a JSON object")),
    }
}

fn subject(claims: &Map<String, Value>) -> Result<SpiffeId, JwtError> {
    claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| SpiffeId::parse(s).ok())
        .ok_or(JwtError::BadSubject)
}

/// Validates a JWT-SVID for `audience` at `now` against the bundles `bundle_for` returns.
pub fn validate(
    token: &str,
    audience: &str,
    now: i64,
    bundle_for: impl Fn(&TrustDomain) -> Option<Bundle>,
) -> Result<ValidatedJwt, JwtError> {
    let [h, c, s] = split(token)?;
    let header = decode_json(h)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("header has no `alg`"))?;
    const ALLOWED: [&str; 9] = [
        "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
    ];
    if !ALLOWED.contains(&alg) {
        return Err(JwtError::BadAlgorithm(alg.to_owned()));
    }
    for k in header.keys() {
        if !matches!(k.as_str(), "alg" | "kid" | "typ") {
            return Err(JwtError::BadHeader(k.clone()));
        }
    }
    if let Some(t) = header.get("typ") {
        if !matches!(t.as_str(), Some("JWT" | "JOSE")) {
            return Err(JwtError::BadHeader("typ".into()));
        }
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(JwtError::MissingKid)?;
    let claims = decode_json(c)?;
    let sub = subject(&claims)?;
    let td = sub.trust_domain();
    let bundle = bundle_for(&td).ok_or_else(|| JwtError::NoBundle(td.to_string()))?;
    let authority = bundle
        .jwt_authority(kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.to_owned()))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    verify_sig(
        alg,
        kid,
        &authority.public_key,
        signing_input.as_bytes(),
        &sig,
    )?;

    check_times(&claims, now)?;
    let auds = audiences(&claims)?;
    if !auds.contains(&audience) {
        return Err(JwtError::WrongAudience(audience.to_owned()));
    }
    Ok(ValidatedJwt {
        spiffe_id: sub,
        claims,
    })
}

/// A compact JWS split and decoded: header, claims, the signing input and the signature.
pub(crate) type Parts = (Map<String, Value>, Map<String, Value>, String, Vec<u8>);

/// Splits and decodes a compact JWS (size-checked).
pub(crate) fn parts(token: &str) -> Result<Parts, JwtError> {
    let [h, c, s] = split(token)?;
    let header = decode_json(h)?;
    let claims = decode_json(c)?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    Ok((
        header,
        claims,
        token[..h.len() + 1 + c.len()].to_owned(),
        sig,
    ))
}

const ALLOWED_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// The header's `alg` if it is one SPIFFE allows (never `none` or HMAC).
pub(crate) fn allowed_alg(header: &Map<String, Value>) -> Result<&'static str, JwtError> {
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("header has no `alg`"))?;
    ALLOWED_ALGS
        .iter()
        .find(|a| **a == alg)
        .copied()
        .ok_or_else(|| JwtError::BadAlgorithm(alg.to_owned()))
}

/// [`verify_sig`] for the WIT module.
pub(crate) fn verify_signature(
    alg: &str,
    kid: &str,
    key: &PublicJwk,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), JwtError> {
    verify_sig(alg, kid, key, msg, sig)
}

/// [`check_times`] for the WIT module.
pub(crate) fn check_claim_times(claims: &Map<String, Value>, now: i64) -> Result<(), JwtError> {
    check_times(claims, now)
}

/// A NumericDate claim: `None` when absent, refused when not a JSON number. Fractions are
/// allowed (RFC 7519) and rounded down; out-of-range values saturate.
fn time_claim(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(t) => Ok(Some(t.floor() as i64)),
            None => Err(JwtError::BadTimeClaim {
                claim,
                value: v.to_string(),
            }),
        },
    }
}

/// `exp` (required), `nbf` and `iat` against `now`, each with [`LEEWAY_SECS`] of skew.
fn check_times(claims: &Map<String, Value>, now: i64) -> Result<(), JwtError> {
    let exp = time_claim(claims, "exp")?.ok_or(JwtError::MissingExp)?;
    let nbf = time_claim(claims, "nbf")?;
    let iat = time_claim(claims, "iat")?;
    if exp <= now.saturating_sub(LEEWAY_SECS) {
        return Err(JwtError::Expired(exp));
    }
    if let Some(nbf) = nbf {
        if nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::NotYetValid(nbf));
        }
    }
    if let Some(iat) = iat {
        if iat > now.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::IssuedInFuture(iat));
        }
    }
    Ok(())
}

/// The `aud` values: a non-empty string, or a non-empty array of non-empty strings. Anything
/// else refuses the token (a member of another type is never skipped).
fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, JwtError> {
    fn member(v: &Value) -> Result<&str, JwtError> {
        match v {
            Value::String(a) if !a.is_empty() => Ok(a.as_str()),
            other => Err(JwtError::BadAudience(other.to_string())),
        }
    }
    match claims.get("aud") {
        None => Err(JwtError::MissingAudience),
        Some(Value::Array(a)) if a.is_empty() => Err(JwtError::MissingAudience),
        Some(Value::Array(a)) => a.iter().map(member).collect(),
        Some(v) => Ok(vec![member(v)?]),
    }
}

fn verify_sig(
    alg: &str,
    kid: &str,
    key: &PublicJwk,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), JwtError> {
    let mismatch = || JwtError::KeyMismatch(kid.to_owned(), alg.to_owned());
    match (alg, key) {
        ("ES256" | "ES384", PublicJwk::Ec { crv, .. }) => {
            let (want, algo): (&str, &'static dyn signature::VerificationAlgorithm) =
                if alg == "ES256" {
                    ("P-256", &signature::ECDSA_P256_SHA256_FIXED)
                } else {
                    ("P-384", &signature::ECDSA_P384_SHA384_FIXED)
                };
            if crv != want {
                return Err(mismatch());
            }
            let point = key.ec_point().ok_or_else(mismatch)?;
            UnparsedPublicKey::new(algo, point)
                .verify(msg, sig)
                .map_err(|_| JwtError::BadSignature)
        }
        ("ES512", _) => Err(JwtError::UnsupportedAlgorithm(alg.to_owned())),
        (_, PublicJwk::Rsa { n, e }) if alg.starts_with("RS") || alg.starts_with("PS") => {
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .map_err(|_| JwtError::BadSignature)
        }
        _ => Err(mismatch()),
    }
}
