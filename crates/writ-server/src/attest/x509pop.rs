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

use std::path::Path;
use std::time::Duration;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, UnixTime};
use writ_core::{Selector, TrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{agent_id, AttestError, Attested, Challenge, NodeAttestor, Step};

/// Most certificates accepted in a node chain.
pub const MAX_CHAIN: usize = 8;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Attests agents by x509 proof of possession.
pub struct X509PopAttestor {
    td: TrustDomain,
    roots: Vec<Vec<u8>>,
}

impl X509PopAttestor {
    /// Reads the CA bundle (PEM).
    pub fn load(td: TrustDomain, path: &Path) -> Result<Self, AttestError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AttestError::Internal(format!(
                "cannot read x509pop ca_bundle `{}`: {e}",
                path.display()
            ))
        })?;
        let roots = writ_core::pem::decode_label(&text, "CERTIFICATE").map_err(|e| {
            AttestError::Internal(format!("x509pop ca_bundle `{}`: {e}", path.display()))
        })?;
        Ok(Self::new(td, roots))
    }

    /// An attestor trusting `roots` (DER).
    pub fn new(td: TrustDomain, roots: Vec<Vec<u8>>) -> Self {
        X509PopAttestor { td, roots }
    }
}

/// Splits the payload into DER certificates.
pub fn split_chain(payload: &[u8]) -> Result<Vec<Vec<u8>>, AttestError> {
    if payload.is_empty() {
        return Err(AttestError::Malformed("empty certificate chain".into()));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(AttestError::Malformed("certificate chain too large".into()));
    }
    writ_core::bundle::split_der_certs(payload, MAX_CHAIN)
        .map_err(|e| AttestError::Malformed(e.to_string()))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(digest(&SHA256, b).as_ref())
}

impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &'static str {
        "x509pop"
    }

    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError> {
        let chain = split_chain(payload)?;
        let anchors: Vec<_> = self
            .roots
            .iter()
            .filter_map(|r| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_slice()))
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        let leaf_der = CertificateDer::from(chain[0].as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| AttestError::Malformed(format!("leaf certificate: {e}")))?;
        let inter: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            AttestError::Refused(format!(
                "node certificate does not chain to the x509pop CA bundle: {e}"
            ))
        })?;

        let (_, leaf) = X509Certificate::from_der(&chain[0])
            .map_err(|e| AttestError::Malformed(e.to_string()))?;
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
        for c in &chain[1..] {
            push("ca:fingerprint", sha256_hex(c));
        }
        // The root that issued the top of the presented chain.
        let top_issuer = match chain.last().map(|c| X509Certificate::from_der(c)) {
            Some(Ok((_, top))) => top.issuer().as_raw().to_vec(),
            _ => Vec::new(),
        };
        for r in &self.roots {
            if let Ok((_, rc)) = X509Certificate::from_der(r) {
                if rc.subject().as_raw() == top_issuer.as_slice() {
                    push("ca:fingerprint", sha256_hex(r));
                }
            }
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
                _ => {
                    return Err(AttestError::Refused(
                        "node key must be EC P-256, P-384 or RSA".into(),
                    ))
                }
            };
        let mut nonce = vec![0u8; writ_proto::X509POP_NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| AttestError::Internal("random number generator failed".into()))?;
        let attested = Attested {
            agent_id: agent_id(&self.td, "x509pop", &sha256_hex(&chain[0]))?,
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
            .map_err(|_| {
                AttestError::Refused("challenge signature does not verify with the node key".into())
            })?;
        Ok(self.attested)
    }
}

/// Agent side: signs a challenge with the node key (ECDSA, ASN.1 signature).
pub fn sign_challenge(
    key: &writ_ca::PrivateKey,
    nonce: &[u8],
) -> Result<Vec<u8>, writ_ca::CaError> {
    let mut msg = writ_proto::X509POP_CONTEXT.to_vec();
    msg.extend_from_slice(nonce);
    key.sign_asn1(&msg)
}
