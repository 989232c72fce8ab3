//! X509-SVID minting checked line by line against spiffe-requirements.md section 2, with
//! rustls-webpki and (when installed) `openssl verify` as independent verifiers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use std::time::Duration;

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use writ_ca::x509::{build_ca_cert, csr_public_key};
use writ_ca::{CaError, DiskUpstreamAuthority, KeyType, PrivateKey, SvidRequest, X509Authority};
use writ_core::{SpiffeId, TrustDomain};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const NOW: i64 = 1_800_000_000;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn root_ca(kt: KeyType, ttl: i64) -> (X509Authority, Vec<u8>, PrivateKey) {
    let key = PrivateKey::generate(kt).unwrap();
    let (cert, chain) = build_ca_cert(&td(), &key, ttl, NOW, None).unwrap();
    assert!(chain.is_empty());
    (
        X509Authority::new(td(), cert.clone(), &key, chain).unwrap(),
        cert,
        key,
    )
}

fn spki(kp: &KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    kp.subject_public_key_info()
}

fn webpki_verify(chain: &[Vec<u8>], roots: &[Vec<u8>], at: i64) -> Result<(), webpki::Error> {
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_slice()))
                .unwrap()
                .to_owned()
        })
        .collect();
    let leaf = CertificateDer::from(chain[0].as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let inter: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            UnixTime::since_unix_epoch(Duration::from_secs(at as u64)),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

/// Checks every line of section 2 on a leaf, returning the parsed NotAfter.
fn check_leaf_rules(der: &[u8], id: &SpiffeId, dns: &[&str], ca_der: &[u8]) -> i64 {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    let mut uris = vec![];
    let mut dnss = vec![];
    let (mut ku_ok, mut eku_ok, mut bc_ok, mut ski, mut aki) = (false, false, false, None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        GeneralName::DNSName(d) => dnss.push(d.to_string()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
                // Subject is not empty, so the SAN may be non-critical; if it were empty it
                // would have to be critical.
                if cert.subject().iter_attributes().count() == 0 {
                    assert!(ext.critical);
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "keyUsage must be critical");
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
                ku_ok = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                eku_ok = true;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca);
                assert!(ext.critical);
                bc_ok = true;
            }
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                aki = k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => {}
        }
    }
    assert_eq!(
        uris,
        vec![id.to_string()],
        "exactly one URI SAN, the SPIFFE ID"
    );
    assert_eq!(dnss, dns);
    assert!(ku_ok && eku_ok && bc_ok);
    assert!(ski.is_some(), "SKI present");
    let ca_ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    assert_eq!(aki, ca_ski, "AKI names the CA's SKI");
    assert_eq!(cert.issuer(), ca.subject());
    // Serial: positive, 128 bits of randomness.
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16);
    assert!(serial[0] & 0x80 == 0);
    // NotBefore backdated, never before the CA's.
    let nb = cert.validity().not_before.timestamp();
    assert!((NOW - 60..NOW).contains(&nb) && nb >= ca.validity().not_before.timestamp());
    cert.validity().not_after.timestamp()
}

#[test]
fn minted_svid_meets_every_rule_and_verifies() {
    for kt in [KeyType::EcP256, KeyType::EcP384] {
        let (ca, ca_der, _) = root_ca(kt, 3600);
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/web").unwrap();
        let subject = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let dns = vec!["web.example.org".to_string()];
        let svid = ca
            .mint(&SvidRequest {
                spiffe_id: &id,
                public_key_spki: &spki(&subject),
                ttl_secs: 600,
                dns_names: &dns,
                now: NOW,
            })
            .unwrap();
        assert_eq!(svid.chain.len(), 2);
        assert_eq!(svid.chain[0], svid.cert_der);
        assert_eq!(svid.not_after, NOW + 600);
        let na = check_leaf_rules(&svid.cert_der, &id, &["web.example.org"], &ca_der);
        assert_eq!(na, NOW + 600);
        webpki_verify(&[svid.cert_der.clone()], &[ca_der.clone()], NOW + 1).unwrap();
        // Expired SVIDs do not verify.
        assert!(webpki_verify(&[svid.cert_der.clone()], &[ca_der.clone()], NOW + 601).is_err());
        // The CA certificate itself: cA=true, keyCertSign, SPIFFE ID without a path.
        let (_, c) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(c.is_ca());
        let ku = c.key_usage().unwrap().unwrap();
        assert!(ku.value.key_cert_sign());
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert!(matches!(
            san.value.general_names[0],
            GeneralName::URI("spiffe://example.org")
        ));
        // writ's own validator agrees.
        let mut b = writ_core::Bundle::new(td());
        b.x509_authorities = vec![ca_der.clone()];
        assert_eq!(
            writ_ca::verify_x509_svid(&svid.chain, &b, NOW + 1).unwrap(),
            id
        );
    }
}

#[test]
fn ttl_is_capped_by_the_ca() {
    let (ca, ca_der, _) = root_ca(KeyType::EcP256, 100);
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let svid = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &spki(&k),
            ttl_secs: 100_000,
            dns_names: &[],
            now: NOW,
        })
        .unwrap();
    assert_eq!(svid.not_after, ca.not_after());
    assert_eq!(
        check_leaf_rules(&svid.cert_der, &id, &[], &ca_der),
        NOW + 100
    );
    // Serials differ between mints.
    let again = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &spki(&k),
            ttl_secs: 10,
            dns_names: &[],
            now: NOW,
        })
        .unwrap();
    assert_ne!(again.serial_hex, svid.serial_hex);
    // An expired CA refuses to sign.
    let err = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &spki(&k),
            ttl_secs: 10,
            dns_names: &[],
            now: NOW + 100,
        })
        .unwrap_err();
    assert!(matches!(err, CaError::CaExpired));
}

#[test]
fn mints_from_csr_and_ignores_csr_names() {
    let (ca, ca_der, _) = root_ca(KeyType::EcP256, 3600);
    let k = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = CertificateParams::new(vec!["evil.example".to_string()])
        .unwrap()
        .serialize_request(&k)
        .unwrap();
    let id = SpiffeId::parse("spiffe://example.org/db").unwrap();
    let svid = ca.mint_from_csr(csr.der(), &id, 60, &[], NOW).unwrap();
    check_leaf_rules(&svid.cert_der, &id, &[], &ca_der);
    webpki_verify(&svid.chain[..1], &[ca_der], NOW).unwrap();
    assert_eq!(csr_public_key(csr.der()).unwrap(), spki(&k));
}

#[test]
fn bad_csrs_and_keys_are_refused() {
    let (ca, _, ca_key) = root_ca(KeyType::EcP256, 3600);
    let id = SpiffeId::parse("spiffe://example.org/db").unwrap();
    // Garbage.
    assert!(matches!(
        ca.mint_from_csr(b"not a csr", &id, 60, &[], NOW),
        Err(CaError::BadCsr(_))
    ));
    // Bad signature: flip a bit in the signature (the last bytes of the DER).
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&k)
        .unwrap();
    let mut der = csr.der().to_vec();
    let n = der.len();
    der[n - 3] ^= 0x01;
    let err = ca.mint_from_csr(&der, &id, 60, &[], NOW).unwrap_err();
    assert!(
        matches!(err, CaError::CsrSignature | CaError::BadCsr(_)),
        "{err}"
    );
    // Trailing bytes.
    let mut der = csr.der().to_vec();
    der.push(0);
    assert!(matches!(
        ca.mint_from_csr(&der, &id, 60, &[], NOW),
        Err(CaError::BadCsr(_))
    ));
    // Wrong key type (Ed25519 is not one writ issues for).
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&ed)
        .unwrap();
    let err = ca.mint_from_csr(csr.der(), &id, 60, &[], NOW).unwrap_err();
    assert!(matches!(err, CaError::BadPublicKey(_)), "{err}");
    // The CA's own key.
    let err = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &ca_key.public_key_spki().unwrap(),
            ttl_secs: 60,
            dns_names: &[],
            now: NOW,
        })
        .unwrap_err();
    assert!(matches!(err, CaError::CaKeyReuse));
    // Foreign trust domain, no path, zero TTL, bad DNS name, garbage SPKI.
    let good = spki(&k);
    for (sid, ttl, dns, key) in [
        ("spiffe://other.org/db", 60, vec![], good.clone()),
        ("spiffe://example.org", 60, vec![], good.clone()),
        ("spiffe://example.org/db", 0, vec![], good.clone()),
        (
            "spiffe://example.org/db",
            60,
            vec!["bad_name!".to_string()],
            good.clone(),
        ),
        ("spiffe://example.org/db", 60, vec![], vec![1, 2, 3]),
    ] {
        let sid = SpiffeId::parse(sid).unwrap();
        let r = ca.mint(&SvidRequest {
            spiffe_id: &sid,
            public_key_spki: &key,
            ttl_secs: ttl,
            dns_names: &dns,
            now: NOW,
        });
        let err = r.unwrap_err();
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn intermediate_under_upstream_ca_chains_to_the_operator_root() {
    // The operator's root, made in code.
    let root_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (root_der, _) = build_ca_cert(
        &TrustDomain::new("corp.example").unwrap(),
        &root_key,
        86_400 * 365,
        NOW - 1000,
        None,
    )
    .unwrap();
    let up =
        DiskUpstreamAuthority::from_der(vec![root_der.clone()], root_key, vec![root_der.clone()])
            .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (cert, chain) = build_ca_cert(&td(), &key, 3600, NOW, Some(&up)).unwrap();
    assert!(
        chain.is_empty(),
        "the upstream root is in the bundle, not the chain"
    );
    let ca = X509Authority::new(td(), cert.clone(), &key, chain).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let svid = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &spki(&k),
            ttl_secs: 60,
            dns_names: &[],
            now: NOW,
        })
        .unwrap();
    assert_eq!(svid.chain.len(), 2);
    webpki_verify(&svid.chain, &[root_der.clone()], NOW).unwrap();
    // Without the intermediate the leaf does not verify against the root.
    assert!(webpki_verify(&svid.chain[..1], &[root_der.clone()], NOW).is_err());
    // A key that does not match the upstream certificate is refused.
    let other = PrivateKey::generate(KeyType::EcP256).unwrap();
    assert!(
        DiskUpstreamAuthority::from_der(vec![root_der.clone()], other, vec![root_der]).is_err()
    );
}

#[test]
fn openssl_verifies_svids_with_the_bundle() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed; .ci/run installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let now = writ_core::now_unix();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca_der, _) = build_ca_cert(&td(), &key, 3600, now, None).unwrap();
    let ca = X509Authority::new(td(), ca_der.clone(), &key, vec![]).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/svc").unwrap();
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let svid = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &spki(&k),
            ttl_secs: 60,
            dns_names: &[],
            now,
        })
        .unwrap();
    std::fs::write(
        dir.path().join("bundle.pem"),
        writ_core::pem::encode("CERTIFICATE", &ca_der),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("svid.pem"),
        writ_core::pem::encode("CERTIFICATE", &svid.cert_der),
    )
    .unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(dir.path().join("bundle.pem"))
            .arg(dir.path().join("svid.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A different CA's bundle fails.
    let key2 = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (other, _) = build_ca_cert(&td(), &key2, 3600, now, None).unwrap();
    std::fs::write(
        dir.path().join("other.pem"),
        writ_core::pem::encode("CERTIFICATE", &other),
    )
    .unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.path().join("other.pem"))
        .arg(dir.path().join("svid.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
