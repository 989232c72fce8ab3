//! Minting micro-benchmark: raw ring P-256 signatures/s, raw rcgen+ring leaf signing/s, and
//! X509-SVID mints/s through writ-ca, measured in the same run, with ratios.
//!
//! `cargo bench -p writ-ca --bench mint` (set `WRIT_BENCH_SECS` to change the time per row;
//! `WRIT_BENCH_SECS=0.2` is the smoke mode CI uses).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use writ_ca::x509::build_ca_cert;
use writ_ca::{KeyType, PrivateKey, SvidRequest, X509Authority};
use writ_core::{SpiffeId, TrustDomain};

fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    // Warm up, then count iterations for `secs`.
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..10 {
            f();
        }
        n += 10;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("WRIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let now = writ_core::now_unix();
    let td = TrustDomain::new("example.org").unwrap();
    let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
    let subject = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let spki = {
        use rcgen::PublicKeyData;
        subject.subject_public_key_info()
    };

    // 1. Raw ring: one ECDSA P-256 signature over a TBS-sized message.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 400];
    let ring_rate = rate(secs, || {
        black_box(kp.sign(&rng, black_box(&msg)).unwrap());
    });

    // 2. Raw rcgen + ring: a leaf with the same extensions, signed by a CA issuer, no checks.
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca_der, _) = build_ca_cert(&td, &ca_key, 86_400, now, None).unwrap();
    let issuer =
        Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key.rcgen_key_pair().unwrap())
            .unwrap();
    let rcgen_rate = rate(secs, || {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "writ");
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into().unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(now + 3600).unwrap();
        black_box(p.signed_by(&subject, &issuer).unwrap());
    });

    // 3. writ-ca: the full mint path (key checks, serial, capping, chain).
    let ca = X509Authority::new(td.clone(), ca_der.clone(), &ca_key, vec![]).unwrap();
    let writ_rate = rate(secs, || {
        black_box(
            ca.mint(&SvidRequest {
                spiffe_id: &id,
                public_key_spki: &spki,
                ttl_secs: 3600,
                dns_names: &[],
                now,
            })
            .unwrap(),
        );
    });

    // 4. writ-ca from a CSR (adds CSR parsing and signature verification).
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&subject)
        .unwrap();
    let csr_rate = rate(secs, || {
        black_box(ca.mint_from_csr(csr.der(), &id, 3600, &[], now).unwrap());
    });

    println!("| what | ops/s | vs raw ring sign | vs raw rcgen leaf |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [
        ("raw ring ECDSA P-256 sign (400 B)", ring_rate),
        ("raw rcgen+ring leaf signing", rcgen_rate),
        ("writ-ca X509-SVID mint (public key)", writ_rate),
        ("writ-ca X509-SVID mint (CSR, verified)", csr_rate),
    ] {
        println!(
            "| {name} | {r:.0} | {:.2} | {:.2} |",
            r / ring_rate,
            r / rcgen_rate
        );
    }
    println!();
    println!(
        "writ-ca mint / raw rcgen leaf = {:.0}% (goal >= 70%)",
        100.0 * writ_rate / rcgen_rate
    );
}
