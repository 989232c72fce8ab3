//! Bundle parsing and serialization agree on every key type: CA certificates made by the
//! `openssl` command (an independent producer) with keys writ can publish (Ed25519 as RFC 8037
//! `OKP`, EC by named curve) and keys it cannot (Ed448, brainpool and secp256k1 curves, whose
//! 65-byte points a length-based guess took for P-256). Whatever parses must write back out and
//! parse to the same bundle; what cannot be written is refused at parse time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use writ_core::bundle::{MAX_BUNDLE_BYTES, MAX_BUNDLE_KEYS, MAX_KID_LEN};
use writ_core::{Bundle, BundleError, TrustDomain};

fn td() -> TrustDomain {
    TrustDomain::new("other.org").unwrap()
}

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A self-signed CA made by `openssl`: (certificate DER, raw public key bytes of the SPKI).
/// `genpkey` names the key: `ed25519`, `ed448`, or `ec:<curve>`.
fn openssl_ca(key: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let made = match key.strip_prefix("ec:") {
        Some(curve) => openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
                "-pkeyopt",
                "ec_param_enc:named_curve",
                "-out",
                "k.pem",
            ],
        ),
        None => openssl(d, &["genpkey", "-algorithm", key, "-out", "k.pem"]),
    };
    let ok =
        made && openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "k.pem",
                "-subj",
                "/CN=other CA",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-outform",
                "DER",
                "-out",
                "c.der",
            ],
        ) && openssl(
            d,
            &[
                "pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "p.der",
            ],
        );
    if !ok {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: `openssl` could not make a {key} CA (is it installed?)"
        );
        return None;
    }
    let cert = std::fs::read(d.join("c.der")).unwrap();
    let spki = std::fs::read(d.join("p.der")).unwrap();
    // The raw key is the BIT STRING at the end of the SPKI: for Ed25519 the last 32 bytes.
    Some((cert, spki))
}

fn x5c(cert: &[u8]) -> Value {
    json!([STANDARD.encode(cert)])
}

/// Parse, write, parse again: the two bundles are equal and the second write is identical.
fn assert_round_trip(b: &Bundle) -> String {
    let out = b.to_json().expect("a parsed bundle must serialize");
    let back = Bundle::from_json(td(), out.as_bytes()).expect("its output must parse");
    assert_eq!(&back, b);
    assert_eq!(back.to_json().unwrap(), out);
    out
}

#[test]
fn ed25519_ca_from_openssl_is_published_as_okp() {
    let Some((cert, spki)) = openssl_ca("ed25519") else {
        return;
    };
    let x = &spki[spki.len() - 32..];
    // As RFC 8037 writes it.
    let doc = json!({"keys": [{
        "use": "x509-svid", "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(x), "x5c": x5c(&cert),
    }], "spiffe_sequence": 3});
    let b = Bundle::from_json(td(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(b.x509_authorities, vec![cert.clone()]);
    let out: Value = serde_json::from_str(&assert_round_trip(&b)).unwrap();
    assert_eq!(out["keys"][0]["kty"], "OKP");
    assert_eq!(out["keys"][0]["crv"], "Ed25519");
    assert_eq!(out["keys"][0]["x"], URL_SAFE_NO_PAD.encode(x));
    // The same CA as PEM.
    let pem = writ_core::pem::encode("CERTIFICATE", &cert);
    let p = Bundle::from_x509_pem(td(), &pem).unwrap();
    assert_eq!(p.x509_authorities, vec![cert.clone()]);
    assert_round_trip(&p);
    // OKP parameters that do not match the certificate are refused.
    let mut wrong = x.to_vec();
    wrong[0] ^= 1;
    let doc = json!({"keys": [{
        "use": "x509-svid", "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(&wrong), "x5c": x5c(&cert),
    }]});
    assert!(matches!(
        Bundle::from_json(td(), doc.to_string().as_bytes()),
        Err(BundleError::BadKey { .. })
    ));
    // An OKP JWT authority round-trips too.
    let doc = json!({"keys": [{
        "use": "jwt-svid", "kid": "ed", "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(x),
    }]});
    let j = Bundle::from_json(td(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(j.jwt_authorities.len(), 1);
    assert_round_trip(&j);
}

#[test]
fn cas_whose_keys_cannot_be_published_are_refused_at_parse_time() {
    for key in [
        "ed448",
        "ec:brainpoolP256r1",
        "ec:secp256k1",
        "ec:brainpoolP384r1",
    ] {
        let Some((cert, spki)) = openssl_ca(key) else {
            return;
        };
        // PEM: refused, naming the problem.
        let pem = writ_core::pem::encode("CERTIFICATE", &cert);
        let err = Bundle::from_x509_pem(td(), &pem).unwrap_err();
        assert!(
            matches!(err, BundleError::UnsupportedAuthorityKey { index: 0, .. }),
            "{key}: {err:?}"
        );
        assert!(err.to_string().contains("cannot be published"), "{err}");
        // JSON claiming a supported key type for it: refused. For the 65-byte curves this is
        // the P-256 lie the old length-based guess believed.
        let raw = &spki[spki.len().saturating_sub(65)..];
        let claims = [
            json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([0u8; 32])}),
            json!({"kty": "EC", "crv": "P-256",
                   "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                   "y": URL_SAFE_NO_PAD.encode(&raw[33..])}),
            json!({"kty": "OKP", "crv": "Ed448", "x": URL_SAFE_NO_PAD.encode([0u8; 57])}),
        ];
        for mut k in claims {
            k["use"] = "x509-svid".into();
            k["x5c"] = x5c(&cert);
            let doc = json!({ "keys": [k] }).to_string();
            let r = Bundle::from_json(td(), doc.as_bytes());
            assert!(
                matches!(
                    r,
                    Err(BundleError::UnsupportedAuthorityKey { .. } | BundleError::BadKey { .. })
                ),
                "{key} {doc}: {r:?}"
            );
        }
        // An unknown `kty` is ignored, as the standard asks: the certificate is not taken.
        let doc = json!({"keys": [{"use": "x509-svid", "kty": "foo", "x5c": x5c(&cert)}]});
        let b = Bundle::from_json(td(), doc.to_string().as_bytes()).unwrap();
        assert!(b.x509_authorities.is_empty(), "{key}");
        assert_round_trip(&b);
    }
}

#[test]
fn bundle_input_is_bounded() {
    // Too many keys.
    let keys: Vec<Value> = (0..=MAX_BUNDLE_KEYS)
        .map(|i| json!({"use": "wit-svid", "kty": "x", "kid": i.to_string()}))
        .collect();
    let doc = json!({ "keys": keys }).to_string();
    assert!(matches!(
        Bundle::from_json(td(), doc.as_bytes()),
        Err(BundleError::TooLarge(_))
    ));
    // Too many bytes.
    let doc = format!(r#"{{"keys":[],"pad":"{}"}}"#, "a".repeat(MAX_BUNDLE_BYTES));
    assert!(matches!(
        Bundle::from_json(td(), doc.as_bytes()),
        Err(BundleError::TooLarge(_))
    ));
    assert!(matches!(
        Bundle::from_x509_pem(td(), &" ".repeat(MAX_BUNDLE_BYTES + 1)),
        Err(BundleError::TooLarge(_))
    ));
    // A kid longer than the limit.
    let doc = json!({"keys": [{
        "use": "jwt-svid", "kid": "k".repeat(MAX_KID_LEN + 1), "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode([1u8; 32]),
    }]});
    assert!(matches!(
        Bundle::from_json(td(), doc.to_string().as_bytes()),
        Err(BundleError::TooLarge(_))
    ));
}

#[test]
fn ignored_keys_and_duplicates_stay_consistent() {
    // Unknown `use` and unknown `kty` on a JWT key are skipped; the result writes and reads back.
    let doc = json!({"keys": [
        {"use": "wit-svid", "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
        {"use": "jwt-svid", "kid": "a", "kty": "oct", "k": "AAAA"},
        {"use": "jwt-svid", "kid": "a", "kty": "OKP", "crv": "Ed25519",
         "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
    ]});
    let b = Bundle::from_json(td(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(b.jwt_authorities.len(), 1);
    assert_round_trip(&b);
    // Two usable keys with one kid: refused (a validator could not tell them apart).
    let k = json!({"use": "jwt-svid", "kid": "a", "kty": "OKP", "crv": "Ed25519",
                   "x": URL_SAFE_NO_PAD.encode([1u8; 32])});
    let doc = json!({ "keys": [k, k] }).to_string();
    assert!(matches!(
        Bundle::from_json(td(), doc.as_bytes()),
        Err(BundleError::DuplicateKid(_))
    ));
    // OKP parameters of the wrong size or curve.
    for k in [
        json!({"use": "jwt-svid", "kid": "a", "kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        json!({"use": "jwt-svid", "kid": "a", "kty": "OKP", "crv": "X25519",
               "x": URL_SAFE_NO_PAD.encode([1u8; 32])}),
        json!({"use": "jwt-svid", "kid": "a", "kty": "OKP", "x": URL_SAFE_NO_PAD.encode([1u8; 32])}),
        json!({"use": "jwt-svid", "kid": "a", "kty": "RSA", "n": "", "e": "AQAB"}),
    ] {
        let doc = json!({ "keys": [k] }).to_string();
        assert!(
            matches!(
                Bundle::from_json(td(), doc.as_bytes()),
                Err(BundleError::BadKey { .. })
            ),
            "{doc}"
        );
    }
}
