//! Errors of the CA crate.

/// What went wrong in key handling, minting or signing.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A key ID with characters other than `a-zA-Z0-9_-` (they become file names).
    #[error("key id `{0}` is invalid (allowed: a-z A-Z 0-9 _ -)")]
    BadKeyId(String),
    /// Unknown key type name in config.
    #[error("unknown key type `{0}` (expected ec-p256 or ec-p384)")]
    UnknownKeyType(String),
    /// Key material that ring refuses.
    #[error("private key is not a valid PKCS#8 EC P-256 or P-384 key: {0}")]
    BadPrivateKey(String),
    /// A public key of a type or size writ does not sign for.
    #[error("public key is not acceptable: {0}")]
    BadPublicKey(String),
    /// The CSR does not parse.
    #[error("CSR is not valid DER PKCS#10: {0}")]
    BadCsr(String),
    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify")]
    CsrSignature,
    /// The subject key is the CA's own key.
    #[error("subject public key is the CA's own key")]
    CaKeyReuse,
    /// The SPIFFE ID cannot go in an SVID of this CA.
    #[error("spiffe id `{id}` cannot be issued by this CA: {reason}")]
    BadSpiffeId {
        /// The ID.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// The TTL is zero.
    #[error("ttl must be greater than zero")]
    ZeroTtl,
    /// The CA has expired or is not yet valid.
    #[error("the signing CA is not valid at this time")]
    CaExpired,
    /// An upstream CA certificate or key that cannot be used.
    #[error("upstream authority: {0}")]
    Upstream(String),
    /// A DNS name rcgen will not encode.
    #[error("dns name `{0}` is invalid")]
    BadDnsName(String),
    /// Certificate generation failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Signing failed inside ring.
    #[error("signing failed")]
    Signing,
    /// Filesystem error in the disk key manager.
    #[error("key store i/o on `{path}`: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate that does not parse.
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    /// The rotation journal references a key that is gone.
    #[error("journal references key `{0}` which the key manager does not have")]
    MissingKey(String),
    /// The rotation journal could not be made durable; the step that produced it is not used.
    #[error("cannot persist the CA journal: {0}")]
    Persist(String),
    /// Bundle conversion failed.
    #[error(transparent)]
    Bundle(#[from] writ_core::BundleError),
    /// An operator's authority action does not apply to the journal as it is.
    #[error("{0}")]
    Authority(String),
}
