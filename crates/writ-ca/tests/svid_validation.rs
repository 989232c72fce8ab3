//! Negative X509-SVID fixtures, generated in code: each broken certificate must be refused by
//! `verify_x509_svid` with the right reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use writ_ca::{verify_x509_svid, SvidError};
use writ_core::{Bundle, TrustDomain};

const NOW: i64 = 1_800_000_000;

struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    der: Vec<u8>,
}

fn ca() -> TestCa {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "test ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 1000).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 100_000).unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    TestCa { key, params, der }
}

fn good_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 10).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 600).unwrap();
    p
}

fn sign(ca: &TestCa, p: &CertificateParams) -> Vec<u8> {
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    p.signed_by(&k, &issuer).unwrap().der().to_vec()
}

fn bundle(ca: &TestCa) -> Bundle {
    let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
    b.x509_authorities = vec![ca.der.clone()];
    b
}

#[test]
fn good_fixture_passes() {
    let ca = ca();
    let leaf = sign(&ca, &good_params(&["spiffe://example.org/w"]));
    assert_eq!(
        verify_x509_svid(&[leaf], &bundle(&ca), NOW)
            .unwrap()
            .as_str(),
        "spiffe://example.org/w"
    );
}

#[test]
fn broken_fixtures_are_refused() {
    let ca = ca();
    let b = bundle(&ca);
    let check = |p: CertificateParams, at: i64, want: fn(&SvidError) -> bool| {
        let leaf = sign(&ca, &p);
        let err = verify_x509_svid(&[leaf], &b, at).unwrap_err();
        assert!(want(&err), "unexpected error {err:?}");
    };
    // CA flag on a leaf.
    let mut p = good_params(&["spiffe://example.org/w"]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    check(p, NOW, |e| matches!(e, SvidError::LeafIsCa));
    // Missing keyUsage.
    let mut p = good_params(&["spiffe://example.org/w"]);
    p.key_usages.clear();
    check(p, NOW, |e| matches!(e, SvidError::BadKeyUsage(_)));
    // keyCertSign on a leaf.
    let mut p = good_params(&["spiffe://example.org/w"]);
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    check(p, NOW, |e| matches!(e, SvidError::BadKeyUsage(_)));
    // Expired, and not yet valid.
    check(good_params(&["spiffe://example.org/w"]), NOW + 601, |e| {
        matches!(e, SvidError::Path(_))
    });
    check(good_params(&["spiffe://example.org/w"]), NOW - 100, |e| {
        matches!(e, SvidError::Path(_))
    });
    // Two URI SANs, none, a non-canonical one, and one without a path.
    check(
        good_params(&["spiffe://example.org/a", "spiffe://example.org/b"]),
        NOW,
        |e| matches!(e, SvidError::BadUriSan(_)),
    );
    check(good_params(&[]), NOW, |e| {
        matches!(e, SvidError::BadUriSan(_))
    });
    check(good_params(&["spiffe://example.org/a/../b"]), NOW, |e| {
        matches!(e, SvidError::BadUriSan(_))
    });
    check(good_params(&["spiffe://example.org"]), NOW, |e| {
        matches!(e, SvidError::BadUriSan(_))
    });
    // Another trust domain.
    check(good_params(&["spiffe://other.org/w"]), NOW, |e| {
        matches!(e, SvidError::WrongTrustDomain { .. })
    });
    // Signed by a CA that is not in the bundle.
    let other = self::ca();
    let leaf = sign(&other, &good_params(&["spiffe://example.org/w"]));
    assert!(matches!(
        verify_x509_svid(&[leaf], &b, NOW),
        Err(SvidError::Path(_))
    ));
    // Garbage and empty chains.
    assert!(matches!(
        verify_x509_svid(&[vec![1, 2, 3]], &b, NOW),
        Err(SvidError::Malformed(_))
    ));
    assert!(matches!(
        verify_x509_svid(&[], &b, NOW),
        Err(SvidError::Empty)
    ));
    // An empty bundle means every SVID is invalid.
    let leaf = sign(&ca, &good_params(&["spiffe://example.org/w"]));
    let empty = Bundle::new(TrustDomain::new("example.org").unwrap());
    assert!(matches!(
        verify_x509_svid(&[leaf], &empty, NOW),
        Err(SvidError::Path(_))
    ));
}
