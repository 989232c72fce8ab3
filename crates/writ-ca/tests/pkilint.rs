//! Every kind of certificate writ issues, linted by an independent RFC 5280 linter: pkilint
//! (`lint_pkix_cert` for each certificate, `lint_pkix_signer_signee_cert_chain` for each
//! issuer/subject pair). Any ERROR or FATAL finding fails the test; WARNINGs are printed.
//!
//! One finding is a known false positive and is not counted: `pkix.invalid_uri_syntax` on a
//! `spiffe://` URI SAN. pkilint checks URIs with the `validators` package, whose `url()` accepts
//! only a fixed list of schemes (http, https, ftp, ...); a SPIFFE ID is valid RFC 3986 syntax and
//! is the whole point of an SVID. The test checks that every such finding names a SPIFFE ID that
//! writ's own parser accepts. Single-label (`localhost`) and wildcard DNS SANs are flagged by
//! pkilint's strict RFC 1034 check; writ allows them on request, so they are not used here.
//!
//! pkilint is a Python package: `.ci/run` installs it into a venv and sets `WRIT_PKILINT` to that
//! venv's `bin` directory. Without `WRIT_PKILINT` each test prints a skip line and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{KeyPair, PublicKeyData, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use writ_ca::x509::build_ca_cert;
use writ_ca::{
    DiskUpstreamAuthority, KeyType, PrivateKey, SvidRequest, UpstreamAuthority, X509Authority,
};
use writ_core::{SpiffeId, TrustDomain};

const NOW: i64 = 1_800_000_000;

/// The directory holding pkilint's commands, from `WRIT_PKILINT` (the venv's `bin` directory,
/// or the path of `lint_pkix_cert` itself).
fn pkilint_dir(test: &str) -> Option<PathBuf> {
    let Some(v) = std::env::var_os("WRIT_PKILINT") else {
        // Written to stderr directly (not `eprintln!`) so the skip shows without --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: WRIT_PKILINT is not set (pkilint not installed; see .ci/run)"
        );
        return None;
    };
    let p = PathBuf::from(v);
    if p.is_dir() {
        Some(p)
    } else {
        Some(p.parent().expect("WRIT_PKILINT has a parent").to_path_buf())
    }
}

fn pem(der: &[u8]) -> String {
    writ_core::pem::encode("CERTIFICATE", der)
}

/// Runs one pkilint command over the given certificates (written as PEM files) and returns its
/// findings at WARNING and above, one `SEVERITY,code,...` line each.
fn run_lint(dir: &Path, cmd: &str, certs: &[&[u8]]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        let p = tmp.path().join(format!("c{i}.pem"));
        std::fs::write(&p, pem(c)).unwrap();
        paths.push(p);
    }
    let out = Command::new(dir.join(cmd))
        .args(["lint", "-s", "WARNING", "-f", "CSV"])
        .args(&paths)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", dir.join(cmd).display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Traceback") && !stderr.contains("Failed to load"),
        "{cmd} failed to run: {stderr}"
    );
    // CSV: a header line, then one line per finding; the severity is the second column.
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lints `certs` (each alone) and `pairs` (issuer, subject); fails on any ERROR or FATAL.
fn lint_all(dir: &Path, what: &str, certs: &[(&str, &[u8])], pairs: &[(&str, &[u8], &[u8])]) {
    let mut bad = Vec::new();
    let mut report = |name: &str, findings: Vec<String>| {
        for f in findings {
            if spiffe_uri_false_positive(&f) {
                println!("pkilint {what} {name}: known false positive (see module doc): {f}");
                continue;
            }
            println!("pkilint {what} {name}: {f}");
            if f.contains("ERROR") || f.contains("FATAL") {
                bad.push(format!("{name}: {f}"));
            }
        }
    };
    for (name, der) in certs {
        report(name, run_lint(dir, "lint_pkix_cert", &[der]));
    }
    for (name, issuer, subject) in pairs {
        report(
            name,
            run_lint(
                dir,
                "lint_pkix_signer_signee_cert_chain",
                &[issuer, subject],
            ),
        );
    }
    assert!(bad.is_empty(), "pkilint ERROR/FATAL findings:\n{bad:#?}");
}

/// Whether a finding is pkilint's scheme-list complaint about a valid SPIFFE ID URI SAN.
fn spiffe_uri_false_positive(finding: &str) -> bool {
    let Some((_, rest)) = finding.split_once("Invalid URI syntax: \"\"") else {
        return false;
    };
    let uri = rest.split('"').next().unwrap_or_default();
    finding.contains(",ERROR,pkix.invalid_uri_syntax,") && SpiffeId::parse(uri).is_ok()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn leaf(ca: &X509Authority, path: &str, kp: &KeyPair, dns: &[String]) -> Vec<u8> {
    let id = SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap();
    ca.mint(&SvidRequest {
        spiffe_id: &id,
        public_key_spki: &kp.subject_public_key_info(),
        ttl_secs: 3600,
        dns_names: dns,
        now: NOW,
    })
    .unwrap()
    .cert_der
}

#[test]
fn self_signed_ca_and_its_svids_pass_pkilint() {
    let Some(dir) = pkilint_dir("self_signed_ca_and_its_svids_pass_pkilint") else {
        return;
    };
    for kt in [KeyType::EcP256, KeyType::EcP384] {
        let key = PrivateKey::generate(kt).unwrap();
        let (ca_der, chain) = build_ca_cert(&td(), &key, 86_400, NOW, None).unwrap();
        let ca = X509Authority::new(td(), ca_der.clone(), &key, chain).unwrap();
        let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let plain = leaf(&ca, "/workload", &p256, &[]);
        let dns = vec![
            "api.example.org".to_owned(),
            "api.prod.svc.local".to_owned(),
        ];
        let with_dns = leaf(&ca, "/ns/prod/sa/api", &p384, &dns);
        // The server's own SVID and agent SVIDs are minted by the same code path.
        let server = leaf(&ca, "/writ/server", &p256, &[]);
        let agent = leaf(&ca, "/writ/agent/join_token/abc", &p256, &[]);
        lint_all(
            &dir,
            kt.name(),
            &[
                ("ca", &ca_der),
                ("svid", &plain),
                ("svid-dns", &with_dns),
                ("server-svid", &server),
                ("agent-svid", &agent),
            ],
            &[
                ("ca->svid", &ca_der, &plain),
                ("ca->svid-dns", &ca_der, &with_dns),
            ],
        );
    }
}

#[test]
fn rsa_subject_key_svid_passes_pkilint() {
    let Some(dir) = pkilint_dir("rsa_subject_key_svid_passes_pkilint") else {
        return;
    };
    // rcgen/ring cannot generate RSA keys; the `openssl` command makes one for the subject.
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("rsa.pem");
    let spki = tmp.path().join("rsa.der");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&spki)
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP rsa_subject_key_svid_passes_pkilint: `openssl` could not make an RSA key"
        );
        return;
    }
    let spki = std::fs::read(spki).unwrap();
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca_der, chain) = build_ca_cert(&td(), &ca_key, 86_400, NOW, None).unwrap();
    let ca = X509Authority::new(td(), ca_der.clone(), &ca_key, chain).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/rsa").unwrap();
    let svid = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &spki,
            ttl_secs: 3600,
            dns_names: &["rsa.example.org".to_owned()],
            now: NOW,
        })
        .unwrap()
        .cert_der;
    lint_all(
        &dir,
        "rsa",
        &[("svid-rsa", &svid)],
        &[("ca->svid-rsa", &ca_der, &svid)],
    );
}

#[test]
fn intermediate_under_upstream_ca_passes_pkilint() {
    let Some(dir) = pkilint_dir("intermediate_under_upstream_ca_passes_pkilint") else {
        return;
    };
    // The operator's root (made by writ's own CA code, as `writ` would for a test upstream).
    let root_key = PrivateKey::generate(KeyType::EcP384).unwrap();
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
    let (inter_der, chain) = build_ca_cert(&td(), &key, 86_400, NOW, Some(&up)).unwrap();
    let ca = X509Authority::new(td(), inter_der.clone(), &key, chain).unwrap();
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let plain = leaf(&ca, "/w", &kp, &[]);
    let with_dns = leaf(&ca, "/w", &kp, &["w.example.org".to_owned()]);
    lint_all(
        &dir,
        "upstream",
        &[
            ("root", &root_der),
            ("intermediate", &inter_der),
            ("svid", &plain),
            ("svid-dns", &with_dns),
        ],
        &[
            ("root->intermediate", &root_der, &inter_der),
            ("intermediate->svid", &inter_der, &plain),
            ("intermediate->svid-dns", &inter_der, &with_dns),
        ],
    );
}

#[test]
fn intermediate_under_an_openssl_root_passes_pkilint() {
    let Some(dir) = pkilint_dir("intermediate_under_an_openssl_root_passes_pkilint") else {
        return;
    };
    // An operator root as `openssl` makes it, with PrintableString (C) and UTF8String
    // attributes: the intermediate's issuer name must repeat the root's subject exactly.
    let tmp = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(tmp.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-pkeyopt",
        "ec_param_enc:named_curve",
        "-out",
        "root.key",
    ]) && openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-subj",
        "/C=US/O=Corp/CN=Corp Root CA",
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "root.pem",
    ]);
    if !ok {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP intermediate_under_an_openssl_root_passes_pkilint: `openssl` failed"
        );
        return;
    }
    let now = writ_core::now_unix();
    let up = DiskUpstreamAuthority::load(
        &tmp.path().join("root.pem"),
        &tmp.path().join("root.key"),
        None,
    )
    .unwrap();
    let root_der = up.bundle()[0].clone();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (inter_der, chain) = build_ca_cert(&td(), &key, 86_400, now, Some(&up)).unwrap();
    let ca = X509Authority::new(td(), inter_der.clone(), &key, chain).unwrap();
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let svid = ca
        .mint(&SvidRequest {
            spiffe_id: &id,
            public_key_spki: &kp.subject_public_key_info(),
            ttl_secs: 3600,
            dns_names: &[],
            now,
        })
        .unwrap()
        .cert_der;
    lint_all(
        &dir,
        "openssl-upstream",
        &[("intermediate", &inter_der), ("svid", &svid)],
        &[
            ("root->intermediate", &root_der, &inter_der),
            ("intermediate->svid", &inter_der, &svid),
        ],
    );
}

/// Runs without pkilint: every DN attribute writ writes has the ASN.1 string type X.520 gives
/// it (serialNumber: PrintableString only; O and CN: a DirectoryString, UTF8String here).
#[test]
fn dn_attribute_string_types_follow_x520() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca_der, chain) = build_ca_cert(&td(), &key, 86_400, NOW, None).unwrap();
    let ca = X509Authority::new(td(), ca_der.clone(), &key, chain).unwrap();
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let svid = leaf(&ca, "/w", &kp, &[]);
    for der in [&ca_der, &svid] {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        for name in [cert.subject(), cert.issuer()] {
            for attr in name.iter_attributes() {
                let oid = attr.attr_type().to_id_string();
                let tag = attr.attr_value().tag();
                let want = match oid.as_str() {
                    "2.5.4.5" => x509_parser::der_parser::asn1_rs::Tag::PrintableString,
                    "2.5.4.3" | "2.5.4.10" => x509_parser::der_parser::asn1_rs::Tag::Utf8String,
                    other => panic!("unexpected DN attribute `{other}`"),
                };
                assert_eq!(tag, want, "attribute {oid} in {name}");
            }
        }
    }
}
