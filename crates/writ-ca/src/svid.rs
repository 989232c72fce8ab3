//! X509-SVID validation: RFC 5280 path validation against one trust domain's bundle (done by
//! rustls-webpki) plus the SPIFFE leaf rules that path validation does not know about.
//!
//! Used by the server for agent SVIDs and by the agent for its own bootstrap checks. The chain is
//! validated only against the bundle of the leaf's own trust domain; bundles are never merged.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use writ_core::{Bundle, SpiffeId};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::x509::{parse_cert, serial_hex, validity};

/// Why an X509-SVID is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificate given.
    #[error("empty certificate chain")]
    Empty,
    /// A certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    /// Not exactly one URI SAN, or it is not a SPIFFE ID with a path.
    #[error("leaf must carry exactly one URI SAN holding a SPIFFE ID with a path: {0}")]
    BadUriSan(String),
    /// The leaf is a CA.
    #[error("leaf certificate has cA=true")]
    LeafIsCa,
    /// keyUsage missing, without digitalSignature, or with keyCertSign/cRLSign.
    #[error("leaf keyUsage is not acceptable: {0}")]
    BadKeyUsage(&'static str),
    /// The leaf's trust domain is not the bundle's.
    #[error("leaf trust domain `{leaf}` does not match bundle trust domain `{bundle}`")]
    WrongTrustDomain {
        /// Leaf trust domain.
        leaf: String,
        /// Bundle trust domain.
        bundle: String,
    },
    /// Path validation failed (bad signature, unknown issuer, expired...).
    #[error("certificate chain does not verify: {0}")]
    Path(String),
}

/// Validates an X509-SVID chain (leaf first, then intermediates) against `bundle` at `now`
/// (unix seconds) and returns the SPIFFE ID.
pub fn verify_x509_svid(
    chain: &[Vec<u8>],
    bundle: &Bundle,
    now: i64,
) -> Result<SpiffeId, SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::Empty)?;
    let id = check_leaf(leaf_der)?;
    if !id.is_member_of(&bundle.trust_domain) {
        return Err(SvidError::WrongTrustDomain {
            leaf: id.trust_domain_str().to_owned(),
            bundle: bundle.trust_domain.to_string(),
        });
    }
    let anchors = bundle
        .x509_authorities
        .iter()
        .filter_map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .ok()
                .map(|a| a.to_owned())
        })
        .collect::<Vec<_>>();
    let leaf = CertificateDer::from(leaf_der.as_slice());
    let ee =
        webpki::EndEntityCert::try_from(&leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| SvidError::Path(e.to_string()))?;
    Ok(id)
}

/// What a leaf X509-SVID says, read in one parse: see [`parse_leaf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSvid {
    /// The SPIFFE ID (the one URI SAN).
    pub spiffe_id: SpiffeId,
    /// Serial number, lowercase hex of its DER bytes (as [`crate::MintedSvid::serial_hex`]).
    pub serial_hex: String,
    /// NotBefore (unix seconds).
    pub not_before: i64,
    /// NotAfter (unix seconds).
    pub not_after: i64,
}

/// Checks the SPIFFE rules on a leaf certificate and returns its SPIFFE ID.
pub fn check_leaf(der: &[u8]) -> Result<SpiffeId, SvidError> {
    parse_leaf(der).map(|l| l.spiffe_id)
}

/// Checks the SPIFFE rules on a leaf certificate (one URI SAN holding a SPIFFE ID with a path,
/// cA=false, keyUsage with digitalSignature and without keyCertSign or cRLSign) and returns
/// what it says, parsing it once. Path validation is not done here ([`verify_x509_svid`]).
pub fn parse_leaf(der: &[u8]) -> Result<LeafSvid, SvidError> {
    let cert = parse_cert(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let mut uris = Vec::new();
    let mut key_usage = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uris.push(u.to_string());
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(SvidError::LeafIsCa),
            ParsedExtension::KeyUsage(ku) => key_usage = Some((ext.critical, *ku)),
            _ => {}
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(SvidError::BadUriSan(format!("{} URI SANs", uris.len())));
    };
    let id = SpiffeId::parse_workload(uri).map_err(|e| SvidError::BadUriSan(e.to_string()))?;
    let Some((_critical, ku)) = key_usage else {
        return Err(SvidError::BadKeyUsage("missing"));
    };
    if !ku.digital_signature() {
        return Err(SvidError::BadKeyUsage("digitalSignature not set"));
    }
    if ku.key_cert_sign() || ku.crl_sign() {
        return Err(SvidError::BadKeyUsage(
            "keyCertSign or cRLSign set on a leaf",
        ));
    }
    let (not_before, not_after) = validity(&cert);
    Ok(LeafSvid {
        spiffe_id: id,
        serial_hex: serial_hex(&cert),
        not_before,
        not_after,
    })
}
