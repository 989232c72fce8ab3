//! CRLs checked by independent verifiers: `openssl crl -verify`, `openssl verify -crl_check`,
//! and rustls-webpki with the CRL as a revocation source.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use rustls_pki_types::{CertificateDer, UnixTime};
use writ_ca::x509::build_ca_cert;
use writ_ca::{KeyType, PrivateKey, Reason, Revoked, SvidRequest, X509Authority};
use writ_core::{SpiffeId, TrustDomain};
use x509_parser::prelude::FromDer;

fn now() -> i64 {
    writ_core::now_unix()
}

fn setup() -> (X509Authority, Vec<u8>, Vec<u8>, Vec<u8>, String) {
    let td = TrustDomain::new("example.org").unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (cert, _) = build_ca_cert(&td, &key, 3600, now() - 60, None).unwrap();
    let ca = X509Authority::new(td, cert.clone(), &key, Vec::new()).unwrap();
    let mint = |path: &str| {
        let k = PrivateKey::generate(KeyType::EcP256).unwrap();
        ca.mint(&SvidRequest {
            spiffe_id: &SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap(),
            public_key_spki: &k.public_key_spki().unwrap(),
            ttl_secs: 600,
            dns_names: &[],
            now: now(),
        })
        .unwrap()
    };
    let bad = mint("revoked");
    let good = mint("fine");
    (ca, cert, bad.cert_der, good.cert_der, bad.serial_hex)
}

fn pem(label: &str, der: &[u8]) -> String {
    writ_core::pem::encode(label, der)
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn openssl_accepts_the_crl_and_rejects_the_revoked_certificate() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed; .ci/run installs it");
        return;
    }
    let (ca, ca_der, bad, good, serial) = setup();
    let crl = ca
        .crl(
            &[Revoked {
                serial: hex::decode(&serial).unwrap(),
                revoked_at: now(),
                reason: Reason::KeyCompromise,
            }],
            7,
            now(),
            now() + 600,
        )
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ca.pem"), pem("CERTIFICATE", &ca_der)).unwrap();
    std::fs::write(d.path().join("crl.pem"), pem("X509 CRL", &crl)).unwrap();
    std::fs::write(d.path().join("bad.pem"), pem("CERTIFICATE", &bad)).unwrap();
    std::fs::write(d.path().join("good.pem"), pem("CERTIFICATE", &good)).unwrap();
    let (ok, out) = openssl(
        &[
            "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout", "-text",
        ],
        d.path(),
    );
    assert!(ok && out.contains("verify OK"), "{out}");
    assert!(out.contains("CRL Number") && out.contains("7"), "{out}");
    assert!(out.contains("Key Compromise"), "{out}");
    assert!(out.to_uppercase().contains(&serial.to_uppercase()), "{out}");
    let verify = |leaf: &str| {
        openssl(
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "ca.pem",
                "-CRLfile",
                "crl.pem",
                "-purpose",
                "sslclient",
                leaf,
            ],
            d.path(),
        )
    };
    let (ok, out) = verify("good.pem");
    assert!(ok, "{out}");
    let (ok, out) = verify("bad.pem");
    assert!(!ok && out.contains("revoked"), "{out}");
    // A CRL signed by another CA does not verify against this one.
    let (other, ..) = setup();
    let foreign = other.crl(&[], 1, now(), now() + 60).unwrap();
    std::fs::write(d.path().join("foreign.pem"), pem("X509 CRL", &foreign)).unwrap();
    let (_, out) = openssl(
        &["crl", "-in", "foreign.pem", "-CAfile", "ca.pem", "-noout"],
        d.path(),
    );
    assert!(!out.contains("verify OK"), "{out}");
}

#[test]
fn webpki_refuses_the_revoked_certificate_with_the_crl() {
    let (ca, ca_der, bad, good, serial) = setup();
    let crl = ca
        .crl(
            &[Revoked {
                serial: hex::decode(&serial).unwrap(),
                revoked_at: now(),
                reason: Reason::CessationOfOperation,
            }],
            1,
            now(),
            now() + 600,
        )
        .unwrap();
    let crl = webpki::OwnedCertRevocationList::from_der(&crl).unwrap();
    let crls = [&webpki::CertRevocationList::from(crl)];
    let anchor = webpki::anchor_from_trusted_cert(&CertificateDer::from(ca_der.as_slice()))
        .unwrap()
        .to_owned();
    let check = |leaf: &[u8]| {
        let der = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        let opts = webpki::RevocationOptionsBuilder::new(&crls)
            .unwrap()
            .build();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            Some(opts),
            None,
        )
        .map(|_| ())
    };
    assert!(check(&good).is_ok());
    assert_eq!(check(&bad), Err(webpki::Error::CertRevoked));
}

#[test]
fn next_update_is_bounded() {
    let (ca, ..) = setup();
    let crl = ca.crl(&[], 1, now(), now() + 365 * 24 * 3600).unwrap();
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).unwrap();
    let next = parsed.next_update().unwrap().timestamp();
    assert!(next <= now() + writ_ca::crl::MAX_CRL_LIFETIME + 5);
}
