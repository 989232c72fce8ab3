//! Certificate revocation lists (RFC 5280 section 5), signed by the CA that issued the
//! certificates they list.
//!
//! Invariants: a CRL carries `thisUpdate`, `nextUpdate` (bounded: at most [`MAX_CRL_LIFETIME`]
//! after `thisUpdate`), a CRL number (monotonic, chosen by the caller) and the issuer's
//! authority key identifier; each entry carries its serial, revocation date and reason code.
//! Entries whose certificate has expired are left out by the caller (a serial may leave the
//! CRL once its not-after has passed).

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::CaError;
use crate::x509::X509Authority;

/// Longest time between `thisUpdate` and `nextUpdate`.
pub const MAX_CRL_LIFETIME: i64 = 7 * 24 * 3600;

/// Why a certificate was revoked (RFC 5280 CRLReason), as operators name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The key leaked.
    KeyCompromise,
    /// The issuing CA's key leaked.
    CaCompromise,
    /// The subject changed (owner, purpose).
    AffiliationChanged,
    /// Replaced by another certificate.
    Superseded,
    /// No longer needed (entry deleted, task ended).
    CessationOfOperation,
    /// The subject's privileges were withdrawn (node banned, policy).
    PrivilegeWithdrawn,
}

impl Reason {
    /// Parses an operator's reason code (`key_compromise`, ...); anything else is
    /// `unspecified` with the text kept by the caller.
    pub fn parse(s: &str) -> Self {
        match s {
            "key_compromise" | "keyCompromise" => Reason::KeyCompromise,
            "ca_compromise" | "cACompromise" => Reason::CaCompromise,
            "affiliation_changed" | "affiliationChanged" => Reason::AffiliationChanged,
            "superseded" => Reason::Superseded,
            "cessation_of_operation" | "cessationOfOperation" => Reason::CessationOfOperation,
            "privilege_withdrawn" | "privilegeWithdrawn" => Reason::PrivilegeWithdrawn,
            _ => Reason::Unspecified,
        }
    }

    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number (big-endian bytes, as in the certificate).
    pub serial: Vec<u8>,
    /// When it was revoked (unix seconds).
    pub revoked_at: i64,
    /// Why.
    pub reason: Reason,
}

fn at(t: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| CaError::BadCertificate(format!("time {t} out of range: {e}")))
}

impl X509Authority {
    /// A CRL of `revoked` signed by this CA, number `number`, valid from `this_update` until
    /// `next_update` (capped at [`MAX_CRL_LIFETIME`] and at the CA's own expiry), DER.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<Vec<u8>, CaError> {
        let next = next_update
            .min(this_update + MAX_CRL_LIFETIME)
            .min(self.not_after())
            .max(this_update + 1);
        let params = CertificateRevocationListParams {
            this_update: at(this_update)?,
            next_update: at(next)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&r.serial),
                        revocation_time: at(r.revoked_at)?,
                        reason_code: Some(r.reason.rcgen()),
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, CaError>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(self.issuer())?.der().to_vec())
    }
}
