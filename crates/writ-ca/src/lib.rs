//! writ-ca: keys, the X.509 CA with rotation, X509-SVID minting, JWT-SVID signing and validation.
//!
//! - [`keys`]: key generation with ring (EC P-256 by default, P-384), the [`KeyManager`] trait,
//!   a disk manager (PKCS#8 PEM files, 0600, atomic writes) and an in-memory one.
//! - [`x509`]: CA certificates (self-signed, or an intermediate under an operator's CA read from
//!   disk) and minting X509-SVIDs from a public key or a CSR.
//! - [`rotation`]: the prepared / active / old journal for X.509 CAs and JWT keys.
//! - [`jwt`]: JWT-SVID signing (ES256/ES384) and validation.
//! - [`wit`]: WIT-SVID signing and validation, Workload Proof Tokens and their replay cache.
//!
//! ```
//! use writ_ca::{x509::build_ca_cert, KeyType, PrivateKey, SvidRequest, X509Authority};
//! use writ_core::{SpiffeId, TrustDomain};
//!
//! let td = TrustDomain::new("example.org").unwrap();
//! let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
//! let now = writ_core::now_unix();
//! let (ca_cert, chain) = build_ca_cert(&td, &ca_key, 3600, now, None).unwrap();
//! let ca = X509Authority::new(td, ca_cert, &ca_key, chain).unwrap();
//!
//! let workload_key = PrivateKey::generate(KeyType::EcP256).unwrap();
//! let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
//! let svid = ca
//!     .mint_from_csr(&workload_key.csr_der().unwrap(), &id, 600, &[], now)
//!     .unwrap();
//! assert_eq!(svid.not_after, now + 600);
//! ```
//!
//! Invariants: an SVID never outlives the CA that signed it; a prepared CA is in the bundle before
//! it signs anything; the CA's own key is never certified as a leaf; CSR signatures are verified
//! before their key is used.

pub mod authority;
pub mod crl;
pub mod error;
pub mod jwt;
pub mod keys;
pub mod rotation;
pub mod ssh;
pub mod svid;
pub mod wit;
pub mod x509;

pub use authority::{AuthorityInfo, AuthorityKind};
pub use crl::{Reason, Revoked};
pub use error::CaError;
pub use jwt::{JwtError, JwtSigner, ValidatedJwt};
pub use keys::{DiskKeyManager, KeyManager, KeyType, MemoryKeyManager, PrivateKey};
pub use rotation::{CaConfig, CaJournal, CaManager, PersistJournal, SlotState};
pub use svid::{verify_x509_svid, SvidError};
pub use x509::{DiskUpstreamAuthority, MintedSvid, SvidRequest, UpstreamAuthority, X509Authority};
