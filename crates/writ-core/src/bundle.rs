//! Trust bundles and the SPIFFE bundle format (spiffe-requirements.md sections 2, 3 and 6).
//!
//! A [`Bundle`] holds one trust domain's X.509 authorities (CA certificates, DER) and JWT
//! authorities (public keys by `kid`). It converts to and from the SPIFFE bundle JSON: an RFC 7517
//! JWK Set with `spiffe_sequence` and `spiffe_refresh_hint`, where X.509 authorities are keys with
//! `use = x509-svid` and exactly one certificate in `x5c`, and JWT authorities are keys with
//! `use = jwt-svid` and a `kid`. Keys with an unknown `use` or `kty` are skipped, as the standard
//! asks. Bundles of different trust domains are never merged: each is its own value.
//!
//! Invariant: whatever [`Bundle::from_json`] or [`Bundle::from_x509_pem`] accepts,
//! [`Bundle::to_json`] can write, and parsing that output gives the same bundle. Parsing
//! therefore refuses every X.509 authority whose key has no JWK form here (EC P-256/P-384/P-521
//! by named curve, RSA, and Ed25519 as `kty` `OKP` per RFC 8037); one such bundle stored by the
//! server would otherwise fail every later serialization of the federated set, and with it every
//! agent's bundle stream. Parsing is also bounded: at most [`MAX_BUNDLE_BYTES`] of input,
//! [`MAX_BUNDLE_KEYS`] keys and [`MAX_KID_LEN`] bytes of `kid`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::id::TrustDomain;
use crate::pem;

/// Largest bundle document (JSON or PEM) accepted, in bytes.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Most keys (JSON) or certificates (PEM) in one bundle.
pub const MAX_BUNDLE_KEYS: usize = 256;

/// Longest `kid` accepted, in bytes.
pub const MAX_KID_LEN: usize = 256;

const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";
const OID_ED25519: &str = "1.3.101.112";

/// Why a bundle or key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The document is not JSON or not a JWK Set.
    #[error("bundle is not a valid JWK set: {0}")]
    Json(String),
    /// An `x509-svid` key without exactly one certificate in `x5c`.
    #[error("x509-svid key {index} must hold exactly one certificate in x5c")]
    X5cCount {
        /// Position of the key in `keys`.
        index: usize,
    },
    /// A certificate that does not parse.
    #[error("certificate {index} in the bundle is not valid DER X.509: {reason}")]
    BadCertificate {
        /// Position of the key or PEM block.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A `jwt-svid` key without `kid`.
    #[error("jwt-svid key {index} has no kid")]
    MissingKid {
        /// Position of the key in `keys`.
        index: usize,
    },
    /// Two JWT keys with one `kid`.
    #[error("jwt-svid key id `{0}` appears twice")]
    DuplicateKid(String),
    /// A key whose parameters are missing or malformed.
    #[error("key {index} is malformed: {reason}")]
    BadKey {
        /// Position of the key in `keys`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A public key of a type writ does not handle.
    #[error("unsupported public key type: {0}")]
    UnsupportedKey(String),
    /// A CA certificate whose key the bundle format here cannot express.
    #[error("certificate {index} in the bundle has a key that cannot be published: {reason}")]
    UnsupportedAuthorityKey {
        /// Position of the key or PEM block.
        index: usize,
        /// What the key is.
        reason: String,
    },
    /// More than [`MAX_BUNDLE_BYTES`], [`MAX_BUNDLE_KEYS`] or [`MAX_KID_LEN`].
    #[error("bundle is too large: {0}")]
    TooLarge(String),
    /// PEM input problem.
    #[error(transparent)]
    Pem(#[from] pem::PemError),
}

/// A public key in JWK terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublicJwk {
    /// An elliptic-curve key (`crv` is `P-256`, `P-384` or `P-521`).
    Ec {
        /// Curve name.
        crv: String,
        /// X coordinate, big-endian, fixed width.
        x: Vec<u8>,
        /// Y coordinate, big-endian, fixed width.
        y: Vec<u8>,
    },
    /// An RSA key.
    Rsa {
        /// Modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
    },
    /// An octet key pair (RFC 8037); `crv` is `Ed25519`.
    Okp {
        /// Curve name.
        crv: String,
        /// The public key bytes.
        x: Vec<u8>,
    },
}

impl PublicJwk {
    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, BundleError> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| BundleError::UnsupportedKey(e.to_string()))?;
        Self::from_spki(&spki)
    }

    /// The JWK form of a certificate's key. The EC curve is taken from the named-curve
    /// parameter (never guessed from the point length, which other curves share).
    fn from_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<Self, BundleError> {
        let alg = spki.algorithm.algorithm.to_id_string();
        let params = spki.algorithm.parameters.as_ref();
        match spki.parsed() {
            Ok(PublicKey::EC(point)) => {
                let curve = params
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let (crv, len) = match curve.as_str() {
                    OID_P256 => ("P-256", 65),
                    OID_P384 => ("P-384", 97),
                    OID_P521 => ("P-521", 133),
                    _ => {
                        return Err(BundleError::UnsupportedKey(format!(
                            "EC curve `{}` ({curve})",
                            oid_name(&curve)
                        )))
                    }
                };
                if point.data().len() != len {
                    return Err(BundleError::UnsupportedKey(format!(
                        "{crv} point of {} bytes",
                        point.data().len()
                    )));
                }
                Self::from_ec_point(point.data())
            }
            Ok(PublicKey::RSA(rsa)) => {
                let (n, e) = (strip_zeros(rsa.modulus), strip_zeros(rsa.exponent));
                if n.is_empty() || e.is_empty() {
                    return Err(BundleError::UnsupportedKey("RSA key of zero".into()));
                }
                Ok(PublicJwk::Rsa {
                    n: n.to_vec(),
                    e: e.to_vec(),
                })
            }
            Ok(PublicKey::Unknown(x)) if alg == OID_ED25519 && params.is_none() => {
                if x.len() != 32 {
                    return Err(BundleError::UnsupportedKey(format!(
                        "Ed25519 key of {} bytes",
                        x.len()
                    )));
                }
                Ok(PublicJwk::Okp {
                    crv: "Ed25519".into(),
                    x: x.to_vec(),
                })
            }
            Ok(_) => Err(BundleError::UnsupportedKey(format!(
                "algorithm `{}` ({alg})",
                oid_name(&alg)
            ))),
            Err(e) => Err(BundleError::UnsupportedKey(format!("`{alg}`: {e}"))),
        }
    }

    /// Reads an uncompressed EC point (`04 || x || y`); the curve follows from its length.
    pub fn from_ec_point(p: &[u8]) -> Result<Self, BundleError> {
        let crv = match p.len() {
            65 => "P-256",
            97 => "P-384",
            133 => "P-521",
            n => {
                return Err(BundleError::UnsupportedKey(format!(
                    "EC point of `{n}` bytes"
                )))
            }
        };
        if p[0] != 4 {
            return Err(BundleError::UnsupportedKey("compressed EC point".into()));
        }
        let half = (p.len() - 1) / 2;
        Ok(PublicJwk::Ec {
            crv: crv.to_owned(),
            x: p[1..1 + half].to_vec(),
            y: p[1 + half..].to_vec(),
        })
    }

    /// The uncompressed EC point, for EC keys.
    pub fn ec_point(&self) -> Option<Vec<u8>> {
        match self {
            PublicJwk::Ec { x, y, .. } => {
                let mut p = Vec::with_capacity(1 + x.len() + y.len());
                p.push(4);
                p.extend_from_slice(x);
                p.extend_from_slice(y);
                Some(p)
            }
            PublicJwk::Rsa { .. } | PublicJwk::Okp { .. } => None,
        }
    }

    /// The JWK members of this key (`kty` and the key parameters), as a JSON object.
    pub fn to_jwk_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        self.write_params(&mut m);
        m
    }

    /// Reads the key of a JWK object; `Ok(None)` for a `kty` writ does not know.
    pub fn from_jwk_map(m: &Map<String, Value>) -> Result<Option<Self>, BundleError> {
        Self::read_params(0, m)
    }

    fn write_params(&self, m: &mut Map<String, Value>) {
        match self {
            PublicJwk::Ec { crv, x, y } => {
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), crv.clone().into());
                m.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
                m.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
            }
            PublicJwk::Rsa { n, e } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), URL_SAFE_NO_PAD.encode(n).into());
                m.insert("e".into(), URL_SAFE_NO_PAD.encode(e).into());
            }
            PublicJwk::Okp { crv, x } => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), crv.clone().into());
                m.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
            }
        }
    }

    /// Whether writ knows the JWK's `kty` (a missing `kty` is an error).
    fn known_kty(index: usize, m: &Map<String, Value>) -> Result<bool, BundleError> {
        match m.get("kty").and_then(Value::as_str) {
            Some(kty) => Ok(matches!(kty, "EC" | "RSA" | "OKP")),
            None => Err(BundleError::BadKey {
                index,
                reason: "missing `kty`".into(),
            }),
        }
    }

    /// Reads the key parameters of a JWK; `Ok(None)` for a `kty` writ does not know (skipped).
    fn read_params(index: usize, m: &Map<String, Value>) -> Result<Option<Self>, BundleError> {
        let bad = |reason: &str| BundleError::BadKey {
            index,
            reason: reason.to_owned(),
        };
        let field = |name: &str| -> Result<Vec<u8>, BundleError> {
            let s = m
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("missing `{name}`")))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| bad(&format!("`{name}` is not base64url")))
        };
        match m.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                let crv = m
                    .get("crv")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing `crv`"))?;
                let width = match crv {
                    "P-256" => 32,
                    "P-384" => 48,
                    "P-521" => 66,
                    _ => return Err(bad(&format!("unsupported curve `{crv}`"))),
                };
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != width || y.len() != width {
                    return Err(bad("coordinate length does not match the curve"));
                }
                Ok(Some(PublicJwk::Ec {
                    crv: crv.to_owned(),
                    x,
                    y,
                }))
            }
            Some("RSA") => {
                let (n, e) = (field("n")?, field("e")?);
                if n.is_empty() || e.is_empty() {
                    return Err(bad("empty `n` or `e`"));
                }
                Ok(Some(PublicJwk::Rsa { n, e }))
            }
            Some("OKP") => {
                let crv = m
                    .get("crv")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing `crv`"))?;
                if crv != "Ed25519" {
                    return Err(bad(&format!("unsupported curve `{crv}`")));
                }
                let x = field("x")?;
                if x.len() != 32 {
                    return Err(bad("Ed25519 `x` is not 32 bytes"));
                }
                Ok(Some(PublicJwk::Okp {
                    crv: crv.to_owned(),
                    x,
                }))
            }
            Some(_) => Ok(None),
            None => Err(bad("missing `kty`")),
        }
    }
}

/// A readable name for key algorithm and curve OIDs that error messages mention.
fn oid_name(oid: &str) -> &'static str {
    match oid {
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        OID_ED25519 => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.10040.4.1" => "DSA",
        "1.3.132.0.10" => "secp256k1",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        "" => "none",
        _ => "unknown",
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// A JWT signing authority: a public key and its key ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtAuthority {
    /// The `kid` that JWT-SVID headers name.
    pub key_id: String,
    /// The public key.
    pub public_key: PublicJwk,
}

/// One trust domain's bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Whose bundle this is.
    pub trust_domain: TrustDomain,
    /// CA certificates (DER) that X509-SVIDs of this trust domain chain to.
    pub x509_authorities: Vec<Vec<u8>>,
    /// Keys that JWT-SVIDs of this trust domain are signed with.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`: grows on every content change.
    pub sequence: u64,
    /// `spiffe_refresh_hint` in seconds.
    pub refresh_hint: Option<u64>,
}

impl Bundle {
    /// An empty bundle (every SVID of the trust domain is invalid against it).
    pub fn new(trust_domain: TrustDomain) -> Self {
        Bundle {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// Builds a bundle of X.509 authorities from PEM text (e.g. a bootstrap bundle file).
    /// Every certificate's key must have a JWK form (see the module doc).
    pub fn from_x509_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, BundleError> {
        if text.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(format!(
                "`{}` bytes of PEM (at most {MAX_BUNDLE_BYTES})",
                text.len()
            )));
        }
        let certs = pem::decode_label(text, "CERTIFICATE")?;
        if certs.len() > MAX_BUNDLE_KEYS {
            return Err(BundleError::TooLarge(format!(
                "`{}` certificates (at most {MAX_BUNDLE_KEYS})",
                certs.len()
            )));
        }
        for (index, der) in certs.iter().enumerate() {
            authority_key(index, der)?;
        }
        let mut b = Bundle::new(trust_domain);
        b.x509_authorities = certs;
        Ok(b)
    }

    /// The X.509 authorities as concatenated PEM.
    pub fn x509_pem(&self) -> String {
        pem::encode_many(
            "CERTIFICATE",
            self.x509_authorities.iter().map(Vec::as_slice),
        )
    }

    /// The X.509 authorities as concatenated DER (the Workload API encoding).
    pub fn x509_der_concat(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// Looks up a JWT authority by key ID.
    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == kid)
    }

    /// Whether the content (not the sequence) differs from `other`.
    pub fn same_content(&self, other: &Bundle) -> bool {
        self.trust_domain == other.trust_domain
            && self.x509_authorities == other.x509_authorities
            && self.jwt_authorities == other.jwt_authorities
    }

    /// The SPIFFE bundle JSON document with both kinds of keys.
    pub fn to_json(&self) -> Result<String, BundleError> {
        self.to_json_filtered(true, true)
    }

    /// The JWT part only (the Workload API's JWT bundle encoding: a JWK Set).
    pub fn jwt_jwks_json(&self) -> Result<String, BundleError> {
        self.to_json_filtered(false, true)
    }

    /// The keys that sign WIT-SVIDs, as a JWK Set with `use` `wit-svid` (the Workload API's
    /// WIT bundle encoding). writ signs WIT-SVIDs with its JWT authorities (the `typ` header
    /// tells the two apart), so these are the JWT keys under the WIT `use`. They are not put
    /// in the SPIFFE bundle document: clients that do not know the `wit-svid` use refuse a
    /// bundle that holds it.
    pub fn wit_jwks_json(&self) -> Result<String, BundleError> {
        let keys: Vec<Value> = self
            .jwt_authorities
            .iter()
            .map(|a| {
                let mut m = Map::new();
                m.insert("use".into(), "wit-svid".into());
                a.public_key.write_params(&mut m);
                m.insert("kid".into(), a.key_id.clone().into());
                Value::Object(m)
            })
            .collect();
        serde_json::to_string(&json!({ "keys": keys }))
            .map_err(|e| BundleError::Json(e.to_string()))
    }

    fn to_json_filtered(&self, x509: bool, jwt: bool) -> Result<String, BundleError> {
        let mut keys = Vec::new();
        if x509 {
            for (index, der) in self.x509_authorities.iter().enumerate() {
                let mut m = Map::new();
                m.insert("use".into(), "x509-svid".into());
                authority_key(index, der)?.write_params(&mut m);
                m.insert("x5c".into(), json!([STANDARD.encode(der)]));
                keys.push(Value::Object(m));
            }
        }
        if jwt {
            for a in &self.jwt_authorities {
                let mut m = Map::new();
                m.insert("use".into(), "jwt-svid".into());
                a.public_key.write_params(&mut m);
                m.insert("kid".into(), a.key_id.clone().into());
                keys.push(Value::Object(m));
            }
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        doc.insert("spiffe_sequence".into(), self.sequence.into());
        if let Some(h) = self.refresh_hint {
            doc.insert("spiffe_refresh_hint".into(), h.into());
        }
        serde_json::to_string_pretty(&Value::Object(doc))
            .map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Parses a SPIFFE bundle JSON document for `trust_domain`.
    pub fn from_json(trust_domain: TrustDomain, doc: &[u8]) -> Result<Self, BundleError> {
        if doc.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(format!(
                "`{}` bytes of JSON (at most {MAX_BUNDLE_BYTES})",
                doc.len()
            )));
        }
        let v: Value = serde_json::from_slice(doc).map_err(|e| BundleError::Json(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| BundleError::Json("top level is not an object".into()))?;
        let keys = obj
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| BundleError::Json("missing `keys` array".into()))?;
        if keys.len() > MAX_BUNDLE_KEYS {
            return Err(BundleError::TooLarge(format!(
                "`{}` keys (at most {MAX_BUNDLE_KEYS})",
                keys.len()
            )));
        }
        let mut b = Bundle::new(trust_domain);
        b.sequence = match obj.get("spiffe_sequence") {
            None => 0,
            Some(s) => s.as_u64().ok_or_else(|| {
                BundleError::Json("`spiffe_sequence` is not a whole number".into())
            })?,
        };
        b.refresh_hint = match obj.get("spiffe_refresh_hint") {
            None => None,
            Some(s) => Some(s.as_u64().ok_or_else(|| {
                BundleError::Json("`spiffe_refresh_hint` is not a whole number".into())
            })?),
        };
        for (index, key) in keys.iter().enumerate() {
            let m = key.as_object().ok_or_else(|| BundleError::BadKey {
                index,
                reason: "not an object".into(),
            })?;
            match m.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    // An unknown `kty` is ignored, as for any key: the certificate is not taken
                    // (it used to be, unchecked, and could then not be written back out).
                    if !PublicJwk::known_kty(index, m)? {
                        continue;
                    }
                    let x5c = m.get("x5c").and_then(Value::as_array);
                    let [cert] = x5c.map(Vec::as_slice).unwrap_or_default() else {
                        return Err(BundleError::X5cCount { index });
                    };
                    let der = cert
                        .as_str()
                        .and_then(|s| STANDARD.decode(s).ok())
                        .ok_or_else(|| BundleError::BadKey {
                            index,
                            reason: "x5c entry is not base64".into(),
                        })?;
                    // The JWK parameters must describe the certificate's key, in the one form
                    // to_json writes for it.
                    let cert_key = authority_key(index, &der)?;
                    if PublicJwk::read_params(index, m)? != Some(cert_key) {
                        return Err(BundleError::BadKey {
                            index,
                            reason: "key parameters do not match the x5c certificate".into(),
                        });
                    }
                    b.x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let kid = m
                        .get("kid")
                        .and_then(Value::as_str)
                        .filter(|k| !k.is_empty())
                        .ok_or(BundleError::MissingKid { index })?;
                    if kid.len() > MAX_KID_LEN {
                        return Err(BundleError::TooLarge(format!(
                            "kid of `{}` bytes in key {index} (at most {MAX_KID_LEN})",
                            kid.len()
                        )));
                    }
                    let Some(public_key) = PublicJwk::read_params(index, m)? else {
                        continue;
                    };
                    if b.jwt_authority(kid).is_some() {
                        return Err(BundleError::DuplicateKid(kid.to_owned()));
                    }
                    b.jwt_authorities.push(JwtAuthority {
                        key_id: kid.to_owned(),
                        public_key,
                    });
                }
                // Unknown or missing `use`: ignored, per the bundle standard.
                _ => {}
            }
        }
        Ok(b)
    }
}

/// Splits concatenated DER certificates (the Workload API's encoding of chains and bundles, and
/// the x509pop payload), refusing more than `max` or anything that does not parse.
pub fn split_der_certs(data: &[u8], max: usize) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if out.len() == max {
            return Err(BundleError::BadCertificate {
                index: out.len(),
                reason: format!("more than {max} certificates"),
            });
        }
        let (r, _) = X509Certificate::from_der(rest).map_err(|e| BundleError::BadCertificate {
            index: out.len(),
            reason: e.to_string(),
        })?;
        out.push(rest[..rest.len() - r.len()].to_vec());
        rest = r;
    }
    Ok(out)
}

/// Parses a CA certificate and returns the JWK form of its key: exactly what `to_json` needs to
/// write it, so parse-time acceptance and serialization agree.
fn authority_key(index: usize, der: &[u8]) -> Result<PublicJwk, BundleError> {
    let cert = check_cert(index, der)?;
    PublicJwk::from_spki(cert.public_key()).map_err(|e| BundleError::UnsupportedAuthorityKey {
        index,
        reason: match e {
            BundleError::UnsupportedKey(r) => r,
            other => other.to_string(),
        },
    })
}

fn check_cert(index: usize, der: &[u8]) -> Result<X509Certificate<'_>, BundleError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(BundleError::BadCertificate {
            index,
            reason: "trailing bytes".into(),
        }),
        Err(e) => Err(BundleError::BadCertificate {
            index,
            reason: e.to_string(),
        }),
    }
}
