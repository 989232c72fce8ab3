//! The X.509 CA: building CA certificates (self-signed root or intermediate under an upstream CA)
//! and minting X509-SVIDs that meet spiffe-requirements.md section 2.
//!
//! Every leaf has exactly one URI SAN (the SPIFFE ID, which must have a path), critical keyUsage
//! with digitalSignature only (plus keyEncipherment for RSA subject keys), EKU serverAuth and
//! clientAuth, critical basicConstraints cA=false, SKI and AKI, a random positive 128-bit serial,
//! NotBefore backdated a little for clock skew, and NotAfter capped at the CA's own NotAfter.
//! Only the subject public key is taken from a CSR: names come from the registration entry.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use writ_core::{SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::error::CaError;
use crate::keys::PrivateKey;

/// How far NotBefore is set in the past, for clocks that run a little behind.
pub const BACKDATE_SECS: i64 = 10;

/// An authority above writ's CA: the plug point behind the server's
/// `[upstream_authority.<name>]` tables. It signs each CA certificate writ makes (so writ's CA
/// is an intermediate under it) and names the roots relying parties trust.
pub trait UpstreamAuthority: Send + Sync {
    /// Signs writ's CA certificate `params` for the key `subject`, lowering NotAfter to its own
    /// if needed (an intermediate never outlives its issuer). Returns the certificate (DER) and
    /// the certificates between it and a published root, upper ones last (empty when the
    /// issuer is itself a published root).
    fn sign_ca(
        &self,
        params: CertificateParams,
        subject: &rcgen::KeyPair,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), CaError>;

    /// The roots to publish in the trust bundle.
    fn bundle(&self) -> &[Vec<u8>];
}

/// An operator CA read from files (the `disk` upstream authority).
pub struct DiskUpstreamAuthority {
    cert_der: Vec<u8>,
    /// Certificates between the upstream CA and the root (from the cert file, after the first).
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
    /// Roots published in the trust bundle.
    bundle: Vec<Vec<u8>>,
    /// The upstream CA's own NotAfter.
    not_after: i64,
}

impl DiskUpstreamAuthority {
    /// Reads the upstream CA from PEM files. `cert` holds the upstream CA certificate first and
    /// optionally its chain; `bundle` holds the roots to publish (default: the last certificate of
    /// `cert`, which is then a root).
    pub fn load(cert: &Path, key: &Path, bundle: Option<&Path>) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| CaError::Upstream(format!("cannot read `{}`: {e}", p.display())))
        };
        let certs = writ_core::pem::decode_label(&read(cert)?, "CERTIFICATE")
            .map_err(|e| CaError::Upstream(format!("`{}`: {e}", cert.display())))?;
        let key = PrivateKey::from_pem(&read(key)?)
            .map_err(|e| CaError::Upstream(format!("`{}`: {e}", key.display())))?;
        let bundle = match bundle {
            Some(b) => writ_core::pem::decode_label(&read(b)?, "CERTIFICATE")
                .map_err(|e| CaError::Upstream(format!("`{}`: {e}", b.display())))?,
            None => certs.last().cloned().into_iter().collect(),
        };
        Self::from_der(certs, key, bundle)
    }

    /// Builds an upstream authority from DER certificates (upstream CA first) and its key.
    pub fn from_der(
        certs: Vec<Vec<u8>>,
        key: PrivateKey,
        bundle: Vec<Vec<u8>>,
    ) -> Result<Self, CaError> {
        let mut certs = certs.into_iter();
        let cert_der = certs
            .next()
            .ok_or_else(|| CaError::Upstream("no certificate".into()))?;
        let parsed = parse_cert(&cert_der)?;
        if !parsed.is_ca() {
            return Err(CaError::Upstream(
                "upstream certificate is not a CA (cA=false)".into(),
            ));
        }
        if spki_key_bytes(&key.public_key_spki()?)?
            != parsed.public_key().subject_public_key.data.to_vec()
        {
            return Err(CaError::Upstream(
                "upstream key does not match its certificate".into(),
            ));
        }
        let not_after = validity(&parsed).1;
        let chain = certs.filter(|c| !bundle.contains(c)).collect();
        Ok(DiskUpstreamAuthority {
            cert_der,
            chain,
            key,
            bundle,
            not_after,
        })
    }
}

impl UpstreamAuthority for DiskUpstreamAuthority {
    fn sign_ca(
        &self,
        mut params: CertificateParams,
        subject: &rcgen::KeyPair,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), CaError> {
        params.not_after = params.not_after.min(ts(self.not_after)?);
        let issuer = Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            self.key.rcgen_key_pair()?,
        )?;
        let cert = params.signed_by(subject, &issuer)?;
        let mut chain = Vec::new();
        if !self.bundle.contains(&self.cert_der) {
            chain.push(self.cert_der.clone());
        }
        chain.extend(self.chain.iter().cloned());
        Ok((cert.der().to_vec(), chain))
    }

    fn bundle(&self) -> &[Vec<u8>] {
        &self.bundle
    }
}

/// Builds a new CA certificate for `key`: self-signed, or signed by `upstream`.
/// Returns the certificate and the intermediates above it (empty when self-signed, and the
/// upstream CA itself when it is not one of the bundle roots).
pub fn build_ca_cert(
    td: &TrustDomain,
    key: &PrivateKey,
    ttl_secs: i64,
    now: i64,
    upstream: Option<&dyn UpstreamAuthority>,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), CaError> {
    if ttl_secs <= 0 {
        return Err(CaError::ZeroTtl);
    }
    let rng = SystemRandom::new();
    let serial = random_serial(&rng)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "writ");
    dn.push(DnType::CommonName, "writ CA");
    // A unique attribute per CA keeps issuer names distinct across rotations. X.520 defines
    // serialNumber (2.5.4.5) as a PrintableString (not a DirectoryString): a UTF8String there is
    // an encoding error that strict parsers (pkilint: FATAL) refuse. Hex is printable.
    let serial_hex = hex::encode(&serial[..8]);
    let serial_attr = rcgen::string::PrintableString::try_from(serial_hex.as_str())
        .map_err(|_| CaError::BadCertificate(format!("`{serial_hex}` is not a PrintableString")))?;
    dn.push(
        DnType::CustomDnType(vec![2, 5, 4, 5]),
        DnValue::PrintableString(serial_attr),
    );
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from(serial.to_vec()));
    p.not_before = ts(now - BACKDATE_SECS)?;
    let not_after = now + ttl_secs;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(td.id_string().try_into().map_err(|_| {
        CaError::BadSpiffeId {
            id: td.id_string(),
            reason: "not IA5",
        }
    })?)];
    p.use_authority_key_identifier_extension = upstream.is_some();
    let subject = key.rcgen_key_pair()?;
    p.not_after = ts(not_after)?;
    match upstream {
        None => Ok((p.self_signed(&subject)?.der().to_vec(), Vec::new())),
        Some(up) => up.sign_ca(p, &subject),
    }
}

/// What to put in an X509-SVID.
#[derive(Debug, Clone)]
pub struct SvidRequest<'a> {
    /// The identity (must be in the CA's trust domain and have a path).
    pub spiffe_id: &'a SpiffeId,
    /// DER SubjectPublicKeyInfo of the subject key.
    pub public_key_spki: &'a [u8],
    /// Requested lifetime in seconds (capped by the CA's NotAfter).
    pub ttl_secs: i64,
    /// Extra DNS SANs.
    pub dns_names: &'a [String],
    /// Issue time (unix seconds).
    pub now: i64,
}

/// A signed X509-SVID.
#[derive(Debug, Clone)]
pub struct MintedSvid {
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The leaf followed by the intermediates up to (not including) the bundle root.
    pub chain: Vec<Vec<u8>>,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// NotAfter (unix seconds).
    pub not_after: i64,
}

/// A CA certificate with its key, ready to sign.
pub struct X509Authority {
    trust_domain: TrustDomain,
    cert_der: Vec<u8>,
    upstream_chain: Vec<Vec<u8>>,
    issuer: Issuer<'static, rcgen::KeyPair>,
    key_bytes: Vec<u8>,
    not_before: i64,
    not_after: i64,
    rng: SystemRandom,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl X509Authority {
    /// Loads a CA from its certificate and key, checking that they belong together.
    pub fn new(
        trust_domain: TrustDomain,
        cert_der: Vec<u8>,
        key: &PrivateKey,
        upstream_chain: Vec<Vec<u8>>,
    ) -> Result<Self, CaError> {
        let (not_before, not_after, cert_key) = {
            let c = parse_cert(&cert_der)?;
            if !c.is_ca() {
                return Err(CaError::BadCertificate(
                    "CA certificate has cA=false".into(),
                ));
            }
            let (nb, na) = validity(&c);
            (nb, na, c.public_key().subject_public_key.data.to_vec())
        };
        let key_bytes = spki_key_bytes(&key.public_key_spki()?)?;
        if key_bytes != cert_key {
            return Err(CaError::BadCertificate(
                "CA key does not match its certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(
            &CertificateDer::from(cert_der.as_slice()),
            key.rcgen_key_pair()?,
        )?;
        Ok(X509Authority {
            trust_domain,
            cert_der,
            upstream_chain,
            issuer,
            key_bytes,
            not_before,
            not_after,
            rng: SystemRandom::new(),
        })
    }

    /// The issuer (certificate and key) for signing CRLs.
    pub(crate) fn issuer(&self) -> &Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Intermediates above this CA (empty for a self-signed root).
    pub fn upstream_chain(&self) -> &[Vec<u8>] {
        &self.upstream_chain
    }

    /// NotAfter of the CA (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// NotBefore of the CA (unix seconds).
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// Signs an X509-SVID for `req.public_key_spki`.
    pub fn mint(&self, req: &SvidRequest<'_>) -> Result<MintedSvid, CaError> {
        if !req.spiffe_id.is_member_of(&self.trust_domain) {
            return Err(CaError::BadSpiffeId {
                id: req.spiffe_id.to_string(),
                reason: "not in the CA's trust domain",
            });
        }
        if req.spiffe_id.path().is_empty() {
            return Err(CaError::BadSpiffeId {
                id: req.spiffe_id.to_string(),
                reason: "an X509-SVID id needs a path",
            });
        }
        if req.ttl_secs <= 0 {
            return Err(CaError::ZeroTtl);
        }
        if req.now >= self.not_after || req.now + BACKDATE_SECS < self.not_before {
            return Err(CaError::CaExpired);
        }
        let spki = SubjectPublicKeyInfo::from_der(req.public_key_spki)
            .map_err(|e| CaError::BadPublicKey(e.to_string()))?;
        let is_rsa = check_subject_key(req.public_key_spki)?;
        if spki_key_bytes(req.public_key_spki)? == self.key_bytes {
            return Err(CaError::CaKeyReuse);
        }

        let serial = random_serial(&self.rng)?;
        let serial_hex = hex::encode(serial);
        let not_after = (req.now + req.ttl_secs).min(self.not_after);
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "writ");
        p.distinguished_name = dn;
        p.serial_number = Some(SerialNumber::from(serial.to_vec()));
        p.not_before = ts((req.now - BACKDATE_SECS).max(self.not_before))?;
        p.not_after = ts(not_after)?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = if is_rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let mut sans = Vec::with_capacity(1 + req.dns_names.len());
        sans.push(SanType::URI(req.spiffe_id.as_str().try_into().map_err(
            |_| CaError::BadSpiffeId {
                id: req.spiffe_id.to_string(),
                reason: "not IA5",
            },
        )?));
        for d in req.dns_names {
            if !writ_core::entry::is_dns_name(d) {
                return Err(CaError::BadDnsName(d.clone()));
            }
            sans.push(SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|_| CaError::BadDnsName(d.clone()))?,
            ));
        }
        p.subject_alt_names = sans;
        let cert = p.signed_by(&spki, &self.issuer)?;
        let cert_der = cert.der().to_vec();
        let mut chain = Vec::with_capacity(2 + self.upstream_chain.len());
        chain.push(cert_der.clone());
        chain.push(self.cert_der.clone());
        chain.extend(self.upstream_chain.iter().cloned());
        Ok(MintedSvid {
            cert_der,
            chain,
            serial_hex,
            not_after,
        })
    }

    /// Signs an X509-SVID for the key in a PKCS#10 CSR after verifying the CSR's signature.
    /// Names in the CSR are ignored: the identity comes from `spiffe_id`.
    pub fn mint_from_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl_secs: i64,
        dns_names: &[String],
        now: i64,
    ) -> Result<MintedSvid, CaError> {
        let spki = csr_public_key(csr_der)?;
        self.mint(&SvidRequest {
            spiffe_id,
            public_key_spki: &spki,
            ttl_secs,
            dns_names,
            now,
        })
    }
}

/// Parses a CSR, verifies its self-signature and returns its DER SubjectPublicKeyInfo.
pub fn csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>, CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|e| CaError::BadCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr("trailing bytes".into()));
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// Checks the subject key is one writ signs for (EC P-256/P-384, RSA 2048-8192); returns
/// whether it is RSA.
fn check_subject_key(spki_der: &[u8]) -> Result<bool, CaError> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| CaError::BadPublicKey(e.to_string()))?;
    match spki.parsed() {
        Ok(PublicKey::EC(p)) if matches!(p.data().len(), 65 | 97) => Ok(false),
        Ok(PublicKey::EC(_)) => Err(CaError::BadPublicKey(
            "EC curve must be P-256 or P-384".into(),
        )),
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if (2048..=8192).contains(&bits) {
                Ok(true)
            } else {
                Err(CaError::BadPublicKey(format!(
                    "RSA key of {bits} bits (need 2048-8192)"
                )))
            }
        }
        Ok(_) => Err(CaError::BadPublicKey(format!(
            "unsupported key algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        ))),
        Err(e) => Err(CaError::BadPublicKey(e.to_string())),
    }
}

/// The raw subject public key bits of a DER SubjectPublicKeyInfo.
fn spki_key_bytes(spki_der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| CaError::BadPublicKey(e.to_string()))?;
    Ok(spki.subject_public_key.data.to_vec())
}

/// NotBefore and NotAfter of a parsed certificate (unix seconds): the one place certificate
/// dates are read.
pub(crate) fn validity(c: &X509Certificate<'_>) -> (i64, i64) {
    (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    )
}

/// The serial number of a parsed certificate as writ records it: its DER bytes, lowercase hex
/// (the form of [`MintedSvid::serial_hex`]).
pub(crate) fn serial_hex(c: &X509Certificate<'_>) -> String {
    hex::encode(c.raw_serial())
}

pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        Ok(_) => Err(CaError::BadCertificate("trailing bytes".into())),
        Err(e) => Err(CaError::BadCertificate(e.to_string())),
    }
}

/// A random positive 128-bit serial (RFC 5280: positive, at most 20 octets).
fn random_serial(rng: &SystemRandom) -> Result<[u8; 16], CaError> {
    let mut s = [0u8; 16];
    rng.fill(&mut s).map_err(|_| CaError::Signing)?;
    // Clear the top bit so the INTEGER is positive, set the next so the encoding keeps 16 octets.
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s)
}

fn ts(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CaError::CaExpired)
}
