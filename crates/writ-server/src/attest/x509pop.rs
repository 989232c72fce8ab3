//! The `x509pop` attestor: proof of possession of a node key whose certificate chains to the
//! configured CA bundle.
//!
//! Payload: the node certificate chain, DER certificates concatenated, leaf first. The server
//! checks the chain (rustls-webpki, client-auth usage if the leaf has an EKU), then sends a
//! fresh 32-byte nonce; the agent signs [`writ_proto::X509POP_CONTEXT`] followed by the nonce
//! with the node key; the server verifies with the leaf's public key. A nonce lives only in
//! its own attestation stream, so a recorded answer is useless later.
//!
//! Agent ID: `x509pop/<sha256 of the leaf DER, hex>`. Selectors: `subject:cn:<CN>`,
//! `san:dns:<name>`, `san:uri:<uri>`, and `ca:fingerprint:<sha256 hex>` for each CA certificate
//! in the path (intermediates and the root).
//!
//! Invariant: `ca:fingerprint` selectors come only from the path rustls-webpki actually
//! verified, leaf to trust anchor: the intermediates it used and the configured root it ended
//! at. Certificates the agent sent but the path builder did not need are never verified, so
//! they say nothing (a node could append another cluster's public intermediate, or a
//! self-made certificate naming another root as issuer, to match that cluster's node aliases).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use std::time::Duration;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use writ_core::config::{invalid, ConfigError};
use writ_core::{Selector, TrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{agent_id, AttestError, Attested, Build, Challenge, Ctx, NodeAttestor, Step};
use crate::plugin::{check, settings, Plugin};

/// `[node_attestor.x509pop]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The CA bundle (PEM) node certificates must chain to.
    ca_bundle: PathBuf,
}

/// The catalog entry.
pub(super) const PLUGIN: Plugin<Build> = Plugin {
    name: "x509pop",
    check: check::<Settings>,
    build,
};

fn build(ctx: &Ctx, table: &toml::Table) -> Result<Arc<dyn NodeAttestor>, ConfigError> {
    let s: Settings = settings("node_attestor.x509pop", table)?;
    Ok(Arc::new(X509PopAttestor::load(
        ctx.trust_domain.clone(),
        &s.ca_bundle,
    )?))
}

/// Why x509pop evidence was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum X509PopError {
    /// No certificate at all.
    #[error("empty certificate chain")]
    Empty,
    /// Over [`MAX_PAYLOAD`].
    #[error("certificate chain too large")]
    TooLarge,
    /// Not a sequence of DER certificates (or more than [`MAX_CHAIN`]).
    #[error(transparent)]
    Split(#[from] writ_core::BundleError),
    /// The leaf does not parse.
    #[error("leaf certificate: {0}")]
    Leaf(#[source] webpki::Error),
    /// Path validation to the configured CA bundle failed.
    #[error("node certificate does not chain to the x509pop CA bundle: {0}")]
    Untrusted(#[source] webpki::Error),
    /// The leaf does not parse (x509-parser, for names and key).
    #[error(transparent)]
    Parse(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// A key type the challenge cannot be verified with.
    #[error("node key must be EC P-256, P-384 or RSA")]
    KeyType,
    /// The challenge answer does not verify.
    #[error("challenge signature does not verify with the node key")]
    Signature,
    /// The agent ID it makes is not valid.
    #[error("agent id: {0}")]
    AgentId(#[from] writ_core::IdError),
    /// The verified path ends at an anchor that is not one of ours (cannot happen).
    #[error("verified path ends at an unknown trust anchor")]
    UnknownAnchor,
    /// No randomness for the nonce.
    #[error("random number generator failed")]
    Random,
}

impl From<X509PopError> for AttestError {
    fn from(e: X509PopError) -> Self {
        use X509PopError as E;
        match e {
            E::Untrusted(_) | E::KeyType | E::Signature => AttestError::Refused(e.into()),
            E::UnknownAnchor | E::Random => AttestError::Internal(e.into()),
            _ => AttestError::Malformed(e.into()),
        }
    }
}

/// Most certificates accepted in a node chain.
pub(crate) const MAX_CHAIN: usize = 8;
/// Largest payload accepted.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

/// Attests agents by x509 proof of possession.
pub(crate) struct X509PopAttestor {
    td: TrustDomain,
    /// Trust anchors built from the CA bundle, in bundle order.
    anchors: Vec<TrustAnchor<'static>>,
    /// The DER of the root each anchor came from (same order), to fingerprint the anchor a
    /// verified path ended at.
    roots: Vec<Vec<u8>>,
}

impl X509PopAttestor {
    /// Reads the CA bundle (PEM).
    pub(crate) fn load(td: TrustDomain, path: &Path) -> Result<Self, ConfigError> {
        let bad = |e: &dyn std::fmt::Display| {
            invalid(
                "node_attestor.x509pop",
                format!("cannot read ca_bundle `{}`: {e}", path.display()),
            )
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
        let roots = writ_core::pem::decode_label(&text, "CERTIFICATE").map_err(|e| bad(&e))?;
        Ok(Self::new(td, roots))
    }

    /// An attestor trusting `roots` (DER). Certificates that are not usable as trust anchors
    /// are skipped (with a warning): they could never end a verified path.
    pub(crate) fn new(td: TrustDomain, roots: Vec<Vec<u8>>) -> Self {
        let mut anchors = Vec::with_capacity(roots.len());
        let mut kept = Vec::with_capacity(roots.len());
        for r in roots {
            match webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_slice())) {
                Ok(a) => {
                    anchors.push(a.to_owned());
                    kept.push(r);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "x509pop ca_bundle: skipping a certificate that is not a usable trust anchor")
                }
            }
        }
        X509PopAttestor {
            td,
            anchors,
            roots: kept,
        }
    }
}

/// Splits the payload into DER certificates.
pub(crate) fn split_chain(payload: &[u8]) -> Result<Vec<Vec<u8>>, X509PopError> {
    if payload.is_empty() {
        return Err(X509PopError::Empty);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(X509PopError::TooLarge);
    }
    Ok(writ_core::bundle::split_der_certs(payload, MAX_CHAIN)?)
}

/// The `ca:fingerprint` selector value of a DER certificate: its SHA-256, hex.
pub fn fingerprint(b: &[u8]) -> String {
    hex::encode(digest(&SHA256, b).as_ref())
}

impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &'static str {
        "x509pop"
    }

    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError> {
        Ok(self.check(payload, now)?)
    }
}

impl X509PopAttestor {
    fn check(&self, payload: &[u8], now: i64) -> Result<Step, X509PopError> {
        let chain = split_chain(payload)?;
        let leaf_der = CertificateDer::from(chain[0].as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(X509PopError::Leaf)?;
        let inter: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &inter,
                UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(X509PopError::Untrusted)?;
        // Fingerprints of the verified path only: the intermediates used, then the anchor's
        // root as configured (the anchor is one of `self.anchors`, found by identity).
        let mut path_cas: Vec<String> = path
            .intermediate_certificates()
            .map(|c| fingerprint(c.der().as_ref()))
            .collect();
        let anchor = path.anchor();
        let root = self
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, anchor))
            .and_then(|i| self.roots.get(i))
            .ok_or(X509PopError::UnknownAnchor)?;
        path_cas.push(fingerprint(root));

        let (_, leaf) = X509Certificate::from_der(&chain[0])?;
        let mut selectors = Vec::new();
        let mut push = |kind: &str, value: String| {
            if let Ok(s) = Selector::new("x509pop", &format!("{kind}:{value}")) {
                selectors.push(s);
            }
        };
        for cn in leaf.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                push("subject:cn", s.to_owned());
            }
        }
        if let Ok(Some(san)) = leaf.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => push("san:dns", (*d).to_owned()),
                    GeneralName::URI(u) => push("san:uri", (*u).to_owned()),
                    _ => {}
                }
            }
        }
        for f in path_cas {
            push("ca:fingerprint", f);
        }
        let (alg, key): (&'static dyn signature::VerificationAlgorithm, Vec<u8>) =
            match leaf.public_key().parsed() {
                Ok(PublicKey::EC(p)) if p.data().len() == 65 => {
                    (&signature::ECDSA_P256_SHA256_ASN1, p.data().to_vec())
                }
                Ok(PublicKey::EC(p)) if p.data().len() == 97 => {
                    (&signature::ECDSA_P384_SHA384_ASN1, p.data().to_vec())
                }
                Ok(PublicKey::RSA(_)) => (
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    leaf.public_key().subject_public_key.data.to_vec(),
                ),
                _ => return Err(X509PopError::KeyType),
            };
        let mut nonce = vec![0u8; writ_proto::X509POP_NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| X509PopError::Random)?;
        let attested = Attested {
            agent_id: agent_id(&self.td, "x509pop", &fingerprint(&chain[0]))?,
            selectors,
            aliases: Vec::new(),
            can_reattest: true,
        };
        Ok(Step::Challenge {
            challenge: nonce.clone(),
            pending: Box::new(PopChallenge {
                nonce,
                alg,
                key,
                attested,
            }),
        })
    }
}

struct PopChallenge {
    nonce: Vec<u8>,
    alg: &'static dyn signature::VerificationAlgorithm,
    key: Vec<u8>,
    attested: Attested,
}

impl Challenge for PopChallenge {
    fn verify(self: Box<Self>, response: &[u8]) -> Result<Attested, AttestError> {
        let mut msg = writ_proto::X509POP_CONTEXT.to_vec();
        msg.extend_from_slice(&self.nonce);
        UnparsedPublicKey::new(self.alg, &self.key)
            .verify(&msg, response)
            .map_err(|_| X509PopError::Signature)?;
        Ok(self.attested)
    }
}
