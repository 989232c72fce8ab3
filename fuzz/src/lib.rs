//! Fixtures shared by the fuzz targets and the seed generator (`examples/gen_seeds.rs`).
//!
//! The keys below are test keys made once for fuzzing and used nowhere else. They are fixed so
//! that committed seeds (JWTs signed with the JWT key, node chains issued by the x509pop CA for
//! the node key) stay valid for the targets across runs: the fuzzer starts past the signature
//! and chain checks instead of never reaching them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use writ_core::{Bundle, JwtAuthority, TrustDomain};

/// The time every target validates at (2027-01-15): inside every fixture's validity.
pub const NOW: i64 = 1_800_000_000;

/// The trust domain of every fixture.
pub const TD: &str = "example.org";

/// `kid` of the JWT key.
pub const JWT_KID: &str = "fuzz-kid";

/// The JWT-SVID signing key (P-256, PKCS#8).
pub const JWT_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgoePoVkMkWAmxklBK
6akX6T21ZjxVMesKV7J6v0o+HnihRANCAASUJTp9Bf15xZxP6gnBdYlSUCmSP0GS
7hZhAqdgPhzjwv09Zzr0nKpFEIrg/2qb7daUt51BJFYmZ7tNFwD+sYUo
-----END PRIVATE KEY-----
";

/// The x509pop node CA key (P-256, PKCS#8).
pub const NODE_CA_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgOIQ2LSk3RaZvOL8t
bzmyuHDz1BW52STNnvsi9/iAW6GhRANCAAQ1et/vZkoN4G35drF6IPqnxY0XsUhI
TmvDVlPSzBpijaY3rllMg/qP/xWdSsCNqaIWnSZtSakOge1HMTS+gUNY
-----END PRIVATE KEY-----
";

/// The node key the seed chains certify (P-256, PKCS#8): the x509pop target answers the
/// challenge with it whenever a chain it accepts certifies this key.
pub const NODE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWyFpJigeavUZrzaC
zN8WGerK+T+w/i0ERuYyZZ8UXIqhRANCAAT5a0TrLwa+On20DZStJmNlOZZJoLz5
fZNczmFJ9JpRZBrqp7h17yKxL1Os5ugkBp5O0CwX5B0aLrvg8DVaNdLZ
-----END PRIVATE KEY-----
";

pub fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

/// The JWT signing key.
pub fn jwt_key() -> &'static writ_ca::PrivateKey {
    static K: OnceLock<writ_ca::PrivateKey> = OnceLock::new();
    K.get_or_init(|| writ_ca::PrivateKey::from_pem(JWT_KEY_PEM).unwrap())
}

/// The JWT signer (`kid` [`JWT_KID`], issuer set).
pub fn jwt_signer() -> writ_ca::JwtSigner {
    writ_ca::JwtSigner::new(
        JWT_KID.into(),
        jwt_key(),
        Some("https://issuer.example".into()),
    )
    .unwrap()
}

/// The bundle of [`TD`] holding the JWT key.
pub fn jwt_bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let mut b = Bundle::new(td());
        b.jwt_authorities = vec![JwtAuthority {
            key_id: JWT_KID.into(),
            public_key: jwt_signer().public_jwk().clone(),
        }];
        b
    })
}

fn date(y: i32) -> time::OffsetDateTime {
    time::Date::from_calendar_date(y, time::Month::January, 1)
        .unwrap()
        .midnight()
        .assume_utc()
}

/// Params of the node CA: fixed name, serial and validity, so that any build of it (the
/// signature differs each time) is the issuer the seed chains name.
pub fn node_ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "writ fuzz");
    dn.push(DnType::CommonName, "node CA");
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from(vec![0x42; 8]));
    p.not_before = date(2020);
    p.not_after = date(2100);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The node CA certificate (DER) and its key.
pub fn node_ca() -> &'static (Vec<u8>, KeyPair) {
    static CA: OnceLock<(Vec<u8>, KeyPair)> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::from_pem(NODE_CA_KEY_PEM).unwrap();
        let der = node_ca_params().self_signed(&key).unwrap().der().to_vec();
        (der, key)
    })
}

/// The node key.
pub fn node_key() -> &'static writ_ca::PrivateKey {
    static K: OnceLock<writ_ca::PrivateKey> = OnceLock::new();
    K.get_or_init(|| writ_ca::PrivateKey::from_pem(NODE_KEY_PEM).unwrap())
}
